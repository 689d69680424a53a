//! Anthropic Messages ⇄ OpenAI chat: requests, whole answers and streams, both ways.

use std::collections::HashMap;

use billing::Usage;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::chat::{
    self, ChatChunk, ChatCompletion, ChatRequest, ChatUsage, Choice, Content, Delta, FunctionCall,
    FunctionDef, FunctionDelta, Image, Message, Part, ResponseFormat, Tool, ToolCall,
    ToolCallDelta, ToolChoice,
};
use super::{ConvertError, Events, Piece};

/// Output tokens Anthropic requires a request to name; used when the client set none.
pub const DEFAULT_MAX_TOKENS: i64 = 4096;
/// Anthropic's smallest thinking budget.
const MIN_THINKING_BUDGET: i64 = 1024;

/// A Messages request.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct MessagesRequest {
    #[serde(default)]
    pub model: String,
    pub messages: Vec<AMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<System>,
    #[serde(default)]
    pub max_tokens: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_sequences: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<ATool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<AToolChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thinking: Option<Thinking>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum System {
    Text(String),
    Blocks(Vec<Block>),
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct AMessage {
    pub role: String,
    pub content: AContent,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum AContent {
    Text(String),
    Blocks(Vec<Block>),
}

impl AContent {
    fn into_blocks(self) -> Vec<Block> {
        match self {
            AContent::Text(text) => vec![Block::Text { text }],
            AContent::Blocks(b) => b,
        }
    }
}

/// A content block.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Block {
    Text {
        text: String,
    },
    Image {
        source: ImageSource,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        content: Option<AContent>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        is_error: Option<bool>,
    },
    Thinking {
        thinking: String,
        #[serde(default)]
        signature: String,
    },
    RedactedThinking {
        data: String,
    },
    Document {
        source: Value,
    },
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ImageSource {
    Base64 { media_type: String, data: String },
    Url { url: String },
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ATool {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub input_schema: Value,
    /// Server tools (web search, …) carry a type and no schema.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct AToolChoice {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_parallel_tool_use: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Thinking {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_tokens: Option<i64>,
}

/// A whole Messages answer.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct MessageResponse {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub role: String,
    pub model: String,
    pub content: Vec<Block>,
    pub stop_reason: Option<String>,
    #[serde(default)]
    pub stop_sequence: Option<String>,
    pub usage: AUsage,
}

/// Anthropic's usage: input excludes cache reads and writes.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct AUsage {
    #[serde(default, deserialize_with = "chat::zero_if_null")]
    pub input_tokens: i64,
    #[serde(default, deserialize_with = "chat::zero_if_null")]
    pub output_tokens: i64,
    #[serde(default, deserialize_with = "chat::zero_if_null")]
    pub cache_creation_input_tokens: i64,
    #[serde(default, deserialize_with = "chat::zero_if_null")]
    pub cache_read_input_tokens: i64,
}

impl AUsage {
    /// What the relay charges for this report: cache reads and writes are prompt
    /// tokens, reported apart from `input_tokens`.
    pub fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self
                .input_tokens
                .saturating_add(self.cache_read_input_tokens)
                .saturating_add(self.cache_creation_input_tokens),
            completion_tokens: self.output_tokens,
            cached_tokens: self.cache_read_input_tokens,
            cache_write_tokens: self.cache_creation_input_tokens.max(0),
            ..Usage::default()
        }
    }

    /// Takes in a later report of the same stream (`message_delta`'s cumulative
    /// usage): each count it states above zero; a count left out keeps what was said
    /// before. Returns whether the report carried the output count.
    pub fn absorb(&mut self, later: &DeltaUsage) -> bool {
        if let Some(out) = later.output_tokens {
            self.output_tokens = out;
        }
        for (mine, theirs) in [
            (&mut self.input_tokens, later.input_tokens),
            (
                &mut self.cache_read_input_tokens,
                later.cache_read_input_tokens,
            ),
            (
                &mut self.cache_creation_input_tokens,
                later.cache_creation_input_tokens,
            ),
        ] {
            if let Some(n) = theirs.filter(|n| *n > 0) {
                *mine = n;
            }
        }
        later.output_tokens.is_some()
    }

    pub fn to_chat(self) -> ChatUsage {
        ChatUsage::from(&self.usage())
    }

    pub fn from_chat(u: &ChatUsage) -> AUsage {
        AUsage::from(&u.usage())
    }
}

impl From<&Usage> for AUsage {
    fn from(u: &Usage) -> Self {
        AUsage {
            input_tokens: u
                .prompt_tokens
                .saturating_sub(u.cached_tokens)
                .saturating_sub(u.cache_write_tokens),
            output_tokens: u.completion_tokens,
            cache_creation_input_tokens: u.cache_write_tokens,
            cache_read_input_tokens: u.cached_tokens,
        }
    }
}

/// A whole Messages answer as the relay meters it, read leniently (a block of a kind
/// conversion does not know still counts): what conversion reads is
/// [`MessageResponse`].
#[derive(Debug, Default, Deserialize)]
pub struct MessageView {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub stop_reason: Option<String>,
    #[serde(default)]
    pub usage: Option<AUsage>,
    #[serde(default, deserialize_with = "chat::default_if_null")]
    pub content: Vec<StartBlock>,
}

impl MessageView {
    /// Parses a whole answer; `None` when it is not a message.
    pub fn parse(body: &[u8]) -> Option<Self> {
        let m: MessageView = serde_json::from_slice(body).ok()?;
        (m.kind.as_deref() == Some("message")).then_some(m)
    }
}

// ---- stream events --------------------------------------------------------------

/// One event of a Messages stream, decoded once for metering and conversion.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    MessageStart {
        message: StartMessage,
    },
    ContentBlockStart {
        #[serde(default, deserialize_with = "chat::zero_if_null")]
        index: i64,
        content_block: StartBlock,
    },
    ContentBlockDelta {
        #[serde(default, deserialize_with = "chat::zero_if_null")]
        index: i64,
        delta: BlockDelta,
    },
    MessageDelta {
        #[serde(default, deserialize_with = "chat::default_if_null")]
        delta: MessageDeltaBody,
        #[serde(default)]
        usage: Option<DeltaUsage>,
    },
    MessageStop,
    Error {
        #[serde(default, deserialize_with = "chat::default_if_null")]
        error: ErrorBody,
    },
    /// `ping`, `content_block_stop`, and whatever Anthropic adds later.
    #[serde(other)]
    Other,
}

/// The usage of a `message_delta`: cumulative counts, any of them left out or null.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct DeltaUsage {
    #[serde(default)]
    pub input_tokens: Option<i64>,
    #[serde(default)]
    pub output_tokens: Option<i64>,
    #[serde(default)]
    pub cache_creation_input_tokens: Option<i64>,
    #[serde(default)]
    pub cache_read_input_tokens: Option<i64>,
}

/// The message of `message_start` (empty content, the prompt's usage).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StartMessage {
    #[serde(default, deserialize_with = "chat::string_or_null")]
    pub id: String,
    #[serde(default, deserialize_with = "chat::string_or_null")]
    pub model: String,
    /// Left out by some upstreams: then the prompt is not known from the stream.
    #[serde(default)]
    pub usage: Option<AUsage>,
}

/// The block a `content_block_start` opens (text, thinking, tool use, or another
/// kind the relay passes through).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StartBlock {
    #[serde(rename = "type", default, deserialize_with = "chat::string_or_null")]
    pub kind: String,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub thinking: Option<String>,
    #[serde(default)]
    pub input: Option<Value>,
}

/// What a `content_block_delta` adds.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BlockDelta {
    TextDelta {
        #[serde(default, deserialize_with = "chat::string_or_null")]
        text: String,
    },
    ThinkingDelta {
        #[serde(default, deserialize_with = "chat::string_or_null")]
        thinking: String,
    },
    InputJsonDelta {
        #[serde(default, deserialize_with = "chat::string_or_null")]
        partial_json: String,
    },
    /// `signature_delta`, `citations_delta`: no text the model was paid to write.
    #[serde(other)]
    Other,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct MessageDeltaBody {
    #[serde(default)]
    pub stop_reason: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub message: Option<String>,
}

impl StartBlock {
    /// The text a block opens with (a tool's input counts as its JSON).
    pub fn texts(&self, mut push: impl FnMut(&str)) {
        for t in [&self.text, &self.thinking].into_iter().flatten() {
            push(t);
        }
        if let Some(input) = self.input.as_ref().filter(|v| !is_empty_input(v)) {
            push(&input.to_string());
        }
    }
}

fn is_empty_input(v: &Value) -> bool {
    v.is_null() || v.as_object().is_some_and(serde_json::Map::is_empty)
}

impl BlockDelta {
    pub fn text(&self) -> Option<&str> {
        match self {
            BlockDelta::TextDelta { text } => Some(text),
            BlockDelta::ThinkingDelta { thinking } => Some(thinking),
            BlockDelta::InputJsonDelta { partial_json } => Some(partial_json),
            BlockDelta::Other => None,
        }
    }
}

/// Anthropic's stop reason for OpenAI's finish reason.
pub fn stop_reason(finish: &str) -> &'static str {
    match finish {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// OpenAI's finish reason for Anthropic's stop reason.
pub fn finish_reason(stop: &str) -> &'static str {
    match stop {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        _ => "stop",
    }
}

fn budget_for_effort(effort: &str) -> Result<i64, ConvertError> {
    match effort {
        "minimal" | "low" => Ok(1024),
        "medium" => Ok(4096),
        "high" => Ok(16384),
        other => Err(ConvertError::new(format!(
            "unknown reasoning_effort '{other}'"
        ))),
    }
}

/// OpenAI's reasoning effort for a thinking budget.
pub fn effort_for_budget(budget: i64) -> &'static str {
    match budget {
        ..=2048 => "low",
        2049..=8192 => "medium",
        _ => "high",
    }
}

// ---- requests -------------------------------------------------------------------

/// An OpenAI chat request as a Messages request for `model`.
pub fn request_from_chat(req: ChatRequest, model: &str) -> Result<MessagesRequest, ConvertError> {
    req.refuse_openai_only("Anthropic")?;
    if let Some(ResponseFormat::JsonObject | ResponseFormat::JsonSchema { .. }) =
        &req.response_format
    {
        return Err(ConvertError::new(
            "'response_format' (structured output) cannot be expressed for an Anthropic model",
        ));
    }
    let max_tokens = req.max_output().unwrap_or(DEFAULT_MAX_TOKENS);
    let mut system: Vec<String> = Vec::new();
    let mut messages: Vec<AMessage> = Vec::new();
    for m in req.messages {
        match m.role.as_str() {
            "system" | "developer" => {
                if let Some(c) = m.content {
                    system.push(c.text());
                }
            }
            "user" => {
                let blocks = user_blocks(m.content)?;
                push_message(&mut messages, "user", blocks);
            }
            "assistant" => {
                let mut blocks = Vec::new();
                if let Some(c) = m.content {
                    let text = c.text();
                    if !text.is_empty() {
                        blocks.push(Block::Text { text });
                    }
                }
                for call in m.tool_calls.unwrap_or_default() {
                    blocks.push(Block::ToolUse {
                        id: call.id,
                        name: call.function.name,
                        input: chat::parse_arguments(&call.function.arguments),
                    });
                }
                if blocks.is_empty() {
                    continue;
                }
                push_message(&mut messages, "assistant", blocks);
            }
            "tool" | "function" => {
                let id = m
                    .tool_call_id
                    .ok_or_else(|| ConvertError::new("a tool message has no tool_call_id"))?;
                let text = m.content.map(|c| c.text()).unwrap_or_default();
                let block = Block::ToolResult {
                    tool_use_id: id,
                    content: Some(AContent::Text(text)),
                    is_error: None,
                };
                push_message(&mut messages, "user", vec![block]);
            }
            other => {
                return Err(ConvertError::new(format!("unknown message role '{other}'")));
            }
        }
    }
    // Anthropic refuses thinking with a forced tool, and in a tool loop whose last
    // assistant turn has no signed thinking block (which only Anthropic can make).
    let forced_tool = req
        .tool_choice
        .as_ref()
        .is_some_and(|c| c.as_str().is_none_or(|s| s == "required"));
    let in_tool_loop = messages
        .iter()
        .rev()
        .find(|m| m.role == "assistant")
        .is_some_and(|m| match &m.content {
            AContent::Blocks(b) => b.iter().any(|b| matches!(b, Block::ToolUse { .. })),
            AContent::Text(_) => false,
        });
    let effort = req
        .reasoning_effort
        .as_deref()
        .filter(|_| !forced_tool && !in_tool_loop);
    let thinking = match effort {
        None | Some("none") => None,
        Some(effort) => {
            // Anthropic wants the budget below max_tokens, and max_tokens is what the
            // request was held for: the budget shrinks to fit, never the limit grows.
            // Below Anthropic's minimum budget (1024) there is no room to think.
            let budget = budget_for_effort(effort)?.min(max_tokens - 1);
            (budget >= MIN_THINKING_BUDGET).then(|| Thinking {
                kind: "enabled".into(),
                budget_tokens: Some(budget),
            })
        }
    };
    let tools = req.tools.map(|tools| {
        tools
            .into_iter()
            .map(|t| ATool {
                name: t.function.name,
                description: t.function.description,
                input_schema: t
                    .function
                    .parameters
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                kind: None,
            })
            .collect::<Vec<_>>()
    });
    let mut tool_choice = match req.tool_choice.as_ref() {
        None => None,
        Some(v) => Some(match ToolChoice::from_openai(v)? {
            ToolChoice::Auto => AToolChoice {
                kind: "auto".into(),
                name: None,
                disable_parallel_tool_use: None,
            },
            ToolChoice::None => AToolChoice {
                kind: "none".into(),
                name: None,
                disable_parallel_tool_use: None,
            },
            ToolChoice::Required => AToolChoice {
                kind: "any".into(),
                name: None,
                disable_parallel_tool_use: None,
            },
            ToolChoice::Function(name) => AToolChoice {
                kind: "tool".into(),
                name: Some(name),
                disable_parallel_tool_use: None,
            },
        }),
    };
    if req.parallel_tool_calls == Some(false) && tools.is_some() {
        let choice = tool_choice.get_or_insert_with(|| AToolChoice {
            kind: "auto".into(),
            name: None,
            disable_parallel_tool_use: None,
        });
        choice.disable_parallel_tool_use = Some(true);
    }
    Ok(MessagesRequest {
        model: model.to_owned(),
        messages,
        system: (!system.is_empty()).then(|| System::Text(system.join("\n\n"))),
        max_tokens,
        // With thinking Anthropic takes no temperature but 1, no top_k, and top_p only
        // from 0.95; recent models refuse temperature and top_p together.
        temperature: req
            .temperature
            .map(|t| t.min(1.0))
            .filter(|t| thinking.is_none() || *t == 1.0),
        top_p: req
            .top_p
            .filter(|_| req.temperature.is_none())
            .filter(|p| thinking.is_none() || *p >= 0.95),
        top_k: req.top_k.filter(|_| thinking.is_none()),
        stop_sequences: req.stop.map(chat::Stop::into_vec),
        stream: req.stream,
        tools,
        tool_choice,
        thinking,
        metadata: req.user.map(|u| json!({"user_id": u})),
    })
}

fn user_blocks(content: Option<Content>) -> Result<Vec<Block>, ConvertError> {
    let mut blocks = Vec::new();
    for part in content.map(Content::into_parts).unwrap_or_default() {
        match part {
            Part::Text { text } if text.is_empty() => {}
            Part::Text { text } => blocks.push(Block::Text { text }),
            Part::ImageUrl { image_url } => {
                let source = match Image::from_url(&image_url.url)? {
                    Image::Inline { media_type, data } => ImageSource::Base64 { media_type, data },
                    Image::Url(url) => ImageSource::Url { url },
                };
                blocks.push(Block::Image { source });
            }
            Part::InputAudio { .. } => {
                return Err(ConvertError::new(
                    "audio input cannot be expressed for an Anthropic model",
                ));
            }
            Part::File { .. } => {
                return Err(ConvertError::new(
                    "file parts cannot be expressed for an Anthropic model",
                ));
            }
        }
    }
    if blocks.is_empty() {
        return Err(ConvertError::new("a user message has no content"));
    }
    Ok(blocks)
}

/// Appends blocks, merging into the last message when it has the same role (Anthropic
/// wants user and assistant turns to alternate; tool results join the user turn).
fn push_message(messages: &mut Vec<AMessage>, role: &str, blocks: Vec<Block>) {
    if let Some(last) = messages.last_mut()
        && last.role == role
    {
        let mut merged =
            std::mem::replace(&mut last.content, AContent::Blocks(Vec::new())).into_blocks();
        merged.extend(blocks);
        last.content = AContent::Blocks(merged);
        return;
    }
    messages.push(AMessage {
        role: role.to_owned(),
        content: AContent::Blocks(blocks),
    });
}

/// A Messages request as an OpenAI chat request for `model`.
pub fn request_to_chat(req: MessagesRequest, model: &str) -> Result<ChatRequest, ConvertError> {
    let mut messages = Vec::new();
    match req.system {
        Some(System::Text(text)) => messages.push(text_message("system", text)),
        Some(System::Blocks(blocks)) => {
            let text = blocks
                .into_iter()
                .map(|b| match b {
                    Block::Text { text } => Ok(text),
                    _ => Err(ConvertError::new("a system prompt may only hold text")),
                })
                .collect::<Result<Vec<_>, _>>()?
                .join("\n");
            messages.push(text_message("system", text));
        }
        None => {}
    }
    for m in req.messages {
        match m.role.as_str() {
            "user" => user_to_chat(m.content, &mut messages)?,
            "assistant" => messages.push(assistant_to_chat(m.content)?),
            other => {
                return Err(ConvertError::new(format!("unknown message role '{other}'")));
            }
        }
    }
    let mut tools = Vec::new();
    for t in req.tools.unwrap_or_default() {
        if t.kind.as_deref().is_some_and(|k| k != "custom") {
            return Err(ConvertError::new(format!(
                "the server tool '{}' cannot be expressed for this model",
                t.name
            )));
        }
        tools.push(Tool {
            kind: "function".into(),
            function: FunctionDef {
                name: t.name,
                description: t.description,
                parameters: Some(t.input_schema),
                strict: None,
            },
        });
    }
    let (tool_choice, parallel) = match req.tool_choice {
        None => (None, None),
        Some(c) => {
            let choice = match c.kind.as_str() {
                "auto" => ToolChoice::Auto,
                "any" => ToolChoice::Required,
                "none" => ToolChoice::None,
                "tool" => ToolChoice::Function(c.name.unwrap_or_default()),
                other => {
                    return Err(ConvertError::new(format!("unknown tool_choice '{other}'")));
                }
            };
            (
                Some(choice.to_openai()),
                c.disable_parallel_tool_use.map(|d| !d),
            )
        }
    };
    let reasoning_effort = match req.thinking {
        Some(t) if t.kind == "enabled" => {
            Some(effort_for_budget(t.budget_tokens.unwrap_or(DEFAULT_MAX_TOKENS)).to_owned())
        }
        _ => None,
    };
    let stream = req.stream.unwrap_or(false);
    Ok(ChatRequest {
        model: model.to_owned(),
        messages,
        max_tokens: None,
        max_completion_tokens: Some(req.max_tokens).filter(|n| *n > 0),
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        stop: req.stop_sequences.map(chat::Stop::Many),
        stream: Some(stream),
        stream_options: stream.then(|| json!({"include_usage": true})),
        tools: (!tools.is_empty()).then_some(tools),
        tool_choice,
        parallel_tool_calls: parallel,
        reasoning_effort,
        user: req
            .metadata
            .as_ref()
            .and_then(|m| m.get("user_id"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        ..ChatRequest::default()
    })
}

fn text_message(role: &str, text: String) -> Message {
    Message {
        role: role.to_owned(),
        content: Some(Content::Text(text)),
        ..Message::default()
    }
}

fn user_to_chat(content: AContent, out: &mut Vec<Message>) -> Result<(), ConvertError> {
    let mut parts = Vec::new();
    for block in content.into_blocks() {
        match block {
            Block::Text { text } => parts.push(Part::Text { text }),
            Block::Image { source } => {
                let image = match source {
                    ImageSource::Base64 { media_type, data } => Image::Inline { media_type, data },
                    ImageSource::Url { url } => Image::Url(url),
                };
                parts.push(image.into_part());
            }
            Block::ToolResult {
                tool_use_id,
                content,
                is_error,
            } => {
                let mut text = match content {
                    None => String::new(),
                    Some(AContent::Text(t)) => t,
                    Some(AContent::Blocks(blocks)) => {
                        let mut t = String::new();
                        for b in blocks {
                            match b {
                                Block::Text { text } => t.push_str(&text),
                                _ => {
                                    return Err(ConvertError::new(
                                        "a tool result may only hold text for this model",
                                    ));
                                }
                            }
                        }
                        t
                    }
                };
                if is_error == Some(true) {
                    text = format!("Error: {text}");
                }
                out.push(Message {
                    role: "tool".into(),
                    content: Some(Content::Text(text)),
                    tool_call_id: Some(tool_use_id),
                    ..Message::default()
                });
            }
            Block::Document { .. } => {
                return Err(ConvertError::new(
                    "document blocks cannot be expressed for this model",
                ));
            }
            Block::ToolUse { .. } | Block::Thinking { .. } | Block::RedactedThinking { .. } => {
                return Err(ConvertError::new(
                    "a user message cannot hold tool_use or thinking blocks",
                ));
            }
        }
    }
    if !parts.is_empty() {
        let content = match parts.as_slice() {
            [Part::Text { text }] => Content::Text(text.clone()),
            _ => Content::Parts(parts),
        };
        out.push(Message {
            role: "user".into(),
            content: Some(content),
            ..Message::default()
        });
    }
    Ok(())
}

fn assistant_to_chat(content: AContent) -> Result<Message, ConvertError> {
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut calls = Vec::new();
    for block in content.into_blocks() {
        match block {
            Block::Text { text: t } => text.push_str(&t),
            Block::Thinking { thinking, .. } => reasoning.push_str(&thinking),
            Block::RedactedThinking { .. } => {}
            Block::ToolUse { id, name, input } => calls.push(ToolCall {
                id,
                kind: "function".into(),
                function: FunctionCall {
                    name,
                    arguments: input.to_string(),
                },
            }),
            _ => {
                return Err(ConvertError::new(
                    "an assistant message may only hold text, thinking and tool_use",
                ));
            }
        }
    }
    Ok(Message {
        role: "assistant".into(),
        content: (!text.is_empty() || calls.is_empty()).then_some(Content::Text(text)),
        tool_calls: (!calls.is_empty()).then_some(calls),
        reasoning_content: (!reasoning.is_empty()).then_some(reasoning),
        ..Message::default()
    })
}

// ---- whole answers --------------------------------------------------------------

/// A Messages answer as a chat completion.
pub fn response_to_chat(m: MessageResponse) -> ChatCompletion {
    let stop = m.stop_reason.as_deref().map(finish_reason);
    let message = assistant_to_chat(AContent::Blocks(m.content)).unwrap_or_default();
    ChatCompletion {
        id: m.id,
        object: "chat.completion".into(),
        created: chat::now(),
        model: m.model,
        choices: vec![Choice {
            index: 0,
            message,
            finish_reason: stop.map(str::to_owned),
        }],
        usage: Some(m.usage.to_chat()),
    }
}

/// A chat completion as a Messages answer.
pub fn response_from_chat(c: ChatCompletion) -> MessageResponse {
    let choice = c.choices.into_iter().next().unwrap_or_default();
    let mut content = Vec::new();
    if let Some(r) = choice.message.reasoning_content.filter(|r| !r.is_empty()) {
        content.push(Block::Thinking {
            thinking: r,
            signature: String::new(),
        });
    }
    let text = choice
        .message
        .content
        .map(|c| c.text())
        .or(choice.message.refusal)
        .unwrap_or_default();
    if !text.is_empty() {
        content.push(Block::Text { text });
    }
    for call in choice.message.tool_calls.unwrap_or_default() {
        content.push(Block::ToolUse {
            id: call.id,
            name: call.function.name,
            input: chat::parse_arguments(&call.function.arguments),
        });
    }
    MessageResponse {
        id: anthropic_id(&c.id),
        kind: "message".into(),
        role: "assistant".into(),
        model: c.model,
        content,
        stop_reason: Some(stop_reason(choice.finish_reason.as_deref().unwrap_or("stop")).into()),
        stop_sequence: None,
        usage: c.usage.as_ref().map(AUsage::from_chat).unwrap_or_default(),
    }
}

/// The id the client sees is the upstream's own, so `/v1/generation?id=` finds it.
fn anthropic_id(id: &str) -> String {
    id.to_owned()
}

// ---- streams --------------------------------------------------------------------

/// Messages stream events → chat chunks.
#[derive(Debug, Default)]
pub struct AnthropicToChat {
    id: String,
    model: String,
    created: i64,
    usage: AUsage,
    /// Content block index → tool call index.
    tools: HashMap<i64, i64>,
    finish: Option<String>,
    done: bool,
}

impl AnthropicToChat {
    pub fn new() -> Self {
        AnthropicToChat {
            created: chat::now(),
            ..Self::default()
        }
    }

    fn chunk(&self, delta: Delta) -> ChatChunk {
        ChatChunk::delta(&self.id, &self.model, self.created, delta)
    }

    /// Converts one decoded event.
    pub fn push(&mut self, event: &StreamEvent, out: &mut Vec<Piece>) {
        match event {
            StreamEvent::MessageStart { message } => {
                self.id.clone_from(&message.id);
                self.model.clone_from(&message.model);
                self.usage = message.usage.unwrap_or_default();
                out.push(Piece::Chunk(self.chunk(Delta {
                    role: Some("assistant".into()),
                    content: Some(String::new()),
                    ..Delta::default()
                })));
            }
            StreamEvent::ContentBlockStart {
                index,
                content_block: block,
            } => {
                if block.kind == "tool_use" {
                    let tool_index = i64::try_from(self.tools.len()).unwrap_or(0);
                    self.tools.insert(*index, tool_index);
                    out.push(Piece::Chunk(self.chunk(Delta {
                        tool_calls: Some(vec![ToolCallDelta {
                            index: tool_index,
                            id: block.id.clone(),
                            kind: Some("function".into()),
                            function: Some(FunctionDelta {
                                name: block.name.clone(),
                                arguments: Some(String::new()),
                            }),
                        }]),
                        ..Delta::default()
                    })));
                }
            }
            StreamEvent::ContentBlockDelta { index, delta } => match delta {
                BlockDelta::TextDelta { text } => out.push(Piece::Chunk(self.chunk(Delta {
                    content: Some(text.clone()),
                    ..Delta::default()
                }))),
                BlockDelta::ThinkingDelta { thinking } => {
                    out.push(Piece::Chunk(self.chunk(Delta {
                        reasoning_content: Some(thinking.clone()),
                        ..Delta::default()
                    })));
                }
                BlockDelta::InputJsonDelta { partial_json } => {
                    let tool_index = self.tools.get(index).copied().unwrap_or(0);
                    out.push(Piece::Chunk(self.chunk(Delta {
                        tool_calls: Some(vec![ToolCallDelta {
                            index: tool_index,
                            function: Some(FunctionDelta {
                                name: None,
                                arguments: Some(partial_json.clone()),
                            }),
                            ..ToolCallDelta::default()
                        }]),
                        ..Delta::default()
                    })));
                }
                BlockDelta::Other => {}
            },
            StreamEvent::MessageDelta { delta, usage } => {
                if let Some(u) = usage {
                    let _ = self.usage.absorb(u);
                }
                let stop = delta.stop_reason.as_deref();
                let finish = finish_reason(stop.unwrap_or("end_turn")).to_owned();
                self.finish = Some(finish.clone());
                let mut chunk = self.chunk(Delta::default());
                if let Some(c) = chunk.choices.first_mut() {
                    c.finish_reason = Some(finish);
                }
                out.push(Piece::Chunk(chunk));
            }
            StreamEvent::MessageStop => self.close(out),
            StreamEvent::Error { error } => {
                let message = error.message.as_deref().unwrap_or("the upstream failed");
                out.push(Piece::Error(crate::error::redact(message)));
            }
            StreamEvent::Other => {}
        }
    }

    fn close(&mut self, out: &mut Vec<Piece>) {
        if self.done {
            return;
        }
        self.done = true;
        let mut chunk = self.chunk(Delta::default());
        chunk.choices.clear();
        chunk.usage = Some(self.usage.to_chat());
        out.push(Piece::Chunk(chunk));
        out.push(Piece::Done);
    }

    /// The upstream ended: a stream that stopped properly but sent no
    /// `message_stop` still gets its last chunks.
    pub fn finish(&mut self, out: &mut Vec<Piece>) {
        if self.finish.is_some() {
            self.close(out);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Text,
    Thinking,
    Tool(i64),
}

/// Chat chunks → Messages stream events.
#[derive(Debug, Default)]
pub struct ChatToAnthropic {
    started: bool,
    /// The open content block and its index.
    open: Option<(Open, i64)>,
    next_index: i64,
    finish: Option<String>,
    usage: Option<ChatUsage>,
    done: bool,
}

impl ChatToAnthropic {
    pub fn new() -> Self {
        Self::default()
    }

    fn start(&mut self, chunk: &ChatChunk, out: &mut Events) {
        if self.started {
            return;
        }
        self.started = true;
        let message = json!({
            "id": anthropic_id(&chunk.id),
            "type": "message",
            "role": "assistant",
            "model": chunk.model,
            "content": [],
            "stop_reason": null,
            "stop_sequence": null,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        });
        out.event(
            "message_start",
            &json!({"type": "message_start", "message": message}),
        );
    }

    fn open(&mut self, kind: Open, block: Value, out: &mut Events) -> i64 {
        if let Some((open, index)) = self.open
            && open == kind
        {
            return index;
        }
        self.close_block(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((kind, index));
        out.event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
        index
    }

    fn close_block(&mut self, out: &mut Events) {
        if let Some((_, index)) = self.open.take() {
            out.event(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            );
        }
    }

    fn delta(index: i64, delta: Value, out: &mut Events) {
        out.event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
        );
    }

    /// Converts one piece of the pivot stream.
    pub fn push(&mut self, piece: Piece, out: &mut Events) {
        match piece {
            Piece::Chunk(chunk) => self.push_chunk(chunk, out),
            Piece::Done => self.finish(out),
            Piece::Error(message) => out.event(
                "error",
                &json!({"type": "error", "error": {"type": "api_error", "message": message}}),
            ),
        }
    }

    fn push_chunk(&mut self, chunk: ChatChunk, out: &mut Events) {
        self.start(&chunk, out);
        if let Some(u) = chunk.usage {
            self.usage = Some(u);
        }
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            let d = choice.delta;
            if let Some(r) = d.reasoning_content.filter(|r| !r.is_empty()) {
                let i = self.open(
                    Open::Thinking,
                    json!({"type": "thinking", "thinking": "", "signature": ""}),
                    out,
                );
                Self::delta(i, json!({"type": "thinking_delta", "thinking": r}), out);
            }
            if let Some(t) = d.content.or(d.refusal).filter(|t| !t.is_empty()) {
                let i = self.open(Open::Text, json!({"type": "text", "text": ""}), out);
                Self::delta(i, json!({"type": "text_delta", "text": t}), out);
            }
            for call in d.tool_calls.unwrap_or_default() {
                let f = call.function.unwrap_or_default();
                // Some upstreams repeat the id on every piece: a new block starts only
                // with a new index.
                let id = call.id.filter(|id| !id.is_empty());
                let i = match (self.open, id) {
                    (Some((Open::Tool(t), i)), _) if t == call.index => i,
                    (_, id) => {
                        // A new call: a block with its id and name.
                        self.close_block(out);
                        self.open(
                            Open::Tool(call.index),
                            json!({"type": "tool_use", "id": id.unwrap_or_default(), "name": f.name.clone().unwrap_or_default(), "input": {}}),
                            out,
                        )
                    }
                };
                if let Some(args) = f.arguments.filter(|a| !a.is_empty()) {
                    Self::delta(
                        i,
                        json!({"type": "input_json_delta", "partial_json": args}),
                        out,
                    );
                }
            }
            if let Some(f) = choice.finish_reason {
                self.finish = Some(f);
            }
        }
    }

    /// `[DONE]` or the end of the upstream: close the message.
    pub fn finish(&mut self, out: &mut Events) {
        if self.done || !self.started || (self.finish.is_none() && self.usage.is_none()) {
            return;
        }
        self.done = true;
        self.close_block(out);
        let usage = self
            .usage
            .as_ref()
            .map(AUsage::from_chat)
            .unwrap_or_default();
        let stop = stop_reason(self.finish.as_deref().unwrap_or("stop"));
        out.event(
            "message_delta",
            &json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": usage}),
        );
        out.event("message_stop", &json!({"type": "message_stop"}));
    }
}
