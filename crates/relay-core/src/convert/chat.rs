//! OpenAI chat completions as typed values: the pivot every conversion goes through.
//! Requests, whole answers and stream chunks, with only the fields the other protocols
//! can express or that must be refused when they cannot.

use billing::Usage;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ConvertError;

/// A chat completion request.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ChatRequest {
    #[serde(default)]
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modalities: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_bias: Option<Value>,
    /// Not an OpenAI field: Anthropic's and Gemini's top-k, carried so that an OpenAI
    /// channel can refuse it clearly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
}

impl ChatRequest {
    /// The output limit the client set, whichever field it used.
    pub fn max_output(&self) -> Option<i64> {
        self.max_completion_tokens.or(self.max_tokens)
    }

    /// Refuses what only OpenAI can do, for a channel of `target`'s protocol.
    pub fn refuse_openai_only(&self, target: &str) -> Result<(), ConvertError> {
        let refuse = |field: &str| {
            Err(ConvertError::new(format!(
                "'{field}' cannot be expressed for a {target} model"
            )))
        };
        if self.n.is_some_and(|n| n != 1) {
            return refuse("n");
        }
        if self.logprobs == Some(true) || self.top_logprobs.is_some() {
            return refuse("logprobs");
        }
        if self.audio.is_some()
            || self
                .modalities
                .as_ref()
                .is_some_and(|m| m.iter().any(|x| x != "text"))
        {
            return refuse("audio");
        }
        if self.logit_bias.as_ref().is_some_and(|b| !b.is_null()) {
            return refuse("logit_bias");
        }
        Ok(())
    }
}

/// `stop`: one string or several.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// One message of the conversation.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Message {
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// DeepSeek's (and others') reasoning text, on answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
}

/// A message's content: a string, or typed parts.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

impl Content {
    /// The parts, a plain string being one text part.
    pub fn into_parts(self) -> Vec<Part> {
        match self {
            Content::Text(text) => vec![Part::Text { text }],
            Content::Parts(parts) => parts,
        }
    }

    /// The text of every text part, joined.
    pub fn text(&self) -> String {
        match self {
            Content::Text(t) => t.clone(),
            Content::Parts(parts) => parts
                .iter()
                .filter_map(|p| match p {
                    Part::Text { text } => Some(text.as_str()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join(""),
        }
    }
}

/// A content part.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
    InputAudio { input_audio: Value },
    File { file: Value },
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ImageUrl {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// An image as the other protocols carry it: inline bytes or a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Image {
    Inline { media_type: String, data: String },
    Url(String),
}

impl Image {
    /// Reads a `data:` URL (inline base64) or keeps an `http(s)` URL.
    pub fn from_url(url: &str) -> Result<Image, ConvertError> {
        if let Some(rest) = url.strip_prefix("data:") {
            let (meta, data) = rest
                .split_once(',')
                .ok_or_else(|| ConvertError::new("an image data URL has no ','"))?;
            let media_type = meta
                .strip_suffix(";base64")
                .ok_or_else(|| ConvertError::new("an image data URL must be base64"))?;
            return Ok(Image::Inline {
                media_type: media_type.to_owned(),
                data: data.to_owned(),
            });
        }
        if url.starts_with("http://") || url.starts_with("https://") {
            return Ok(Image::Url(url.to_owned()));
        }
        Err(ConvertError::new(
            "an image URL must be http(s) or a base64 data: URL",
        ))
    }

    /// The image as an OpenAI `image_url` part.
    pub fn into_part(self) -> Part {
        let url = match self {
            Image::Inline { media_type, data } => format!("data:{media_type};base64,{data}"),
            Image::Url(url) => url,
        };
        Part::ImageUrl {
            image_url: ImageUrl { url, detail: None },
        }
    }
}

/// A tool call the assistant made.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    pub function: FunctionCall,
}

fn function_kind() -> String {
    "function".to_owned()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct FunctionCall {
    pub name: String,
    /// JSON text.
    #[serde(default)]
    pub arguments: String,
}

/// A tool the model may call.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Tool {
    #[serde(rename = "type", default = "function_kind")]
    pub kind: String,
    pub function: FunctionDef,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct FunctionDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// `response_format`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchema },
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct JsonSchema {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
}

/// How the model is told to use tools, in neutral terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    Function(String),
}

impl ToolChoice {
    /// Reads OpenAI's `tool_choice` (`"auto"`, `"none"`, `"required"` or a function).
    pub fn from_openai(v: &Value) -> Result<ToolChoice, ConvertError> {
        match v {
            Value::String(s) => match s.as_str() {
                "auto" => Ok(ToolChoice::Auto),
                "none" => Ok(ToolChoice::None),
                "required" => Ok(ToolChoice::Required),
                other => Err(ConvertError::new(format!("unknown tool_choice '{other}'"))),
            },
            Value::Object(_) => v
                .pointer("/function/name")
                .and_then(Value::as_str)
                .map(|n| ToolChoice::Function(n.to_owned()))
                .ok_or_else(|| ConvertError::new("tool_choice names no function")),
            _ => Err(ConvertError::new("tool_choice must be a string or object")),
        }
    }

    pub fn to_openai(&self) -> Value {
        match self {
            ToolChoice::Auto => Value::from("auto"),
            ToolChoice::None => Value::from("none"),
            ToolChoice::Required => Value::from("required"),
            ToolChoice::Function(name) => {
                serde_json::json!({"type": "function", "function": {"name": name}})
            }
        }
    }
}

/// A whole chat completion.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ChatCompletion {
    #[serde(default)]
    pub id: String,
    #[serde(default = "completion_object")]
    pub object: String,
    #[serde(default)]
    pub created: i64,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub choices: Vec<Choice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<ChatUsage>,
}

fn completion_object() -> String {
    "chat.completion".to_owned()
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Choice {
    #[serde(default)]
    pub index: i64,
    pub message: Message,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// OpenAI's usage with its details (cached prompt tokens, reasoning output tokens).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct ChatUsage {
    #[serde(default, deserialize_with = "zero_if_null")]
    pub prompt_tokens: i64,
    #[serde(default, deserialize_with = "zero_if_null")]
    pub completion_tokens: i64,
    #[serde(default, deserialize_with = "zero_if_null")]
    pub total_tokens: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens_details: Option<PromptTokensDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens_details: Option<CompletionTokensDetails>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct PromptTokensDetails {
    #[serde(default, deserialize_with = "zero_if_null")]
    pub cached_tokens: i64,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct CompletionTokensDetails {
    #[serde(default, deserialize_with = "zero_if_null")]
    pub reasoning_tokens: i64,
}

impl ChatUsage {
    /// What the relay charges for this report: the one reading of OpenAI's usage.
    pub fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            cached_tokens: self.cached(),
            reasoning_tokens: self.reasoning(),
            ..Usage::default()
        }
    }

    /// Usage from prompt (cached included), completion (reasoning included) counts.
    pub fn new(prompt: i64, completion: i64, cached: i64, reasoning: i64) -> ChatUsage {
        ChatUsage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt.saturating_add(completion),
            prompt_tokens_details: Some(PromptTokensDetails {
                cached_tokens: cached,
            }),
            completion_tokens_details: Some(CompletionTokensDetails {
                reasoning_tokens: reasoning,
            }),
        }
    }

    pub fn cached(&self) -> i64 {
        self.prompt_tokens_details.map_or(0, |d| d.cached_tokens)
    }

    pub fn reasoning(&self) -> i64 {
        self.completion_tokens_details
            .map_or(0, |d| d.reasoning_tokens)
    }
}

impl From<&Usage> for ChatUsage {
    fn from(u: &Usage) -> Self {
        ChatUsage::new(
            u.prompt_tokens,
            u.completion_tokens,
            u.cached_tokens,
            u.reasoning_tokens,
        )
    }
}

/// A whole chat (or legacy completions) answer as the relay meters it, read leniently
/// with the chunk's delta as its message: what conversion reads is [`ChatCompletion`].
#[derive(Debug, Default, Deserialize)]
pub struct CompletionView {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub usage: Option<ChatUsage>,
    #[serde(default)]
    pub choices: Option<Vec<ViewChoice>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ViewChoice {
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(default)]
    pub message: Option<Delta>,
    /// Legacy completions carry their text here.
    #[serde(default)]
    pub text: Option<String>,
}

impl CompletionView {
    /// The text of every choice (for counting when usage is missing).
    pub fn texts(&self, mut push: impl FnMut(&str)) {
        for c in self.choices.iter().flatten() {
            if let Some(m) = &c.message {
                m.texts(&mut push);
            }
            if let Some(t) = &c.text {
                push(t);
            }
        }
    }
}

/// One stream chunk. Read leniently (upstreams differ in what they leave null), since
/// the relay meters every chunk through this type.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ChatChunk {
    #[serde(default, deserialize_with = "string_or_null")]
    pub id: String,
    #[serde(default = "chunk_object", deserialize_with = "string_or_null")]
    pub object: String,
    #[serde(default, deserialize_with = "seconds")]
    pub created: i64,
    #[serde(default, deserialize_with = "string_or_null")]
    pub model: String,
    #[serde(default, deserialize_with = "default_if_null")]
    pub choices: Vec<ChunkChoice>,
    /// Present (possibly null) only on the usage chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<ChatUsage>,
}

fn chunk_object() -> String {
    "chat.completion.chunk".to_owned()
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ChunkChoice {
    #[serde(default, deserialize_with = "zero_if_null")]
    pub index: i64,
    #[serde(default, deserialize_with = "default_if_null")]
    pub delta: Delta,
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// Legacy completions stream their text here rather than in a delta.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// What one chunk adds to the message.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    /// OpenRouter's and vLLM's name for the reasoning text (read, never written: a
    /// decoder moves it to `reasoning_content`).
    #[serde(default, skip_serializing)]
    pub reasoning: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// Audio output: its transcript and data count as delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<Value>,
}

impl Delta {
    /// Appends the text this delta carries (for counting tokens when no usage comes):
    /// content, reasoning, refusal, an audio transcript, tool-call names and arguments.
    pub fn texts(&self, mut push: impl FnMut(&str)) {
        for part in [
            &self.content,
            &self.reasoning_content,
            &self.reasoning,
            &self.refusal,
        ]
        .into_iter()
        .flatten()
        {
            push(part);
        }
        if let Some(audio) = &self.audio {
            // Audio's words, not its base64 data.
            push(
                audio
                    .get("transcript")
                    .and_then(Value::as_str)
                    .unwrap_or("[audio]"),
            );
        }
        for call in self.tool_calls.iter().flatten() {
            if let Some(f) = &call.function {
                for part in [&f.name, &f.arguments].into_iter().flatten() {
                    push(part);
                }
            }
        }
    }
}

/// A piece of a tool call in a stream: the first piece has its id and name, the rest
/// add to the arguments.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ToolCallDelta {
    #[serde(default, deserialize_with = "zero_if_null")]
    pub index: i64,
    #[serde(
        default,
        deserialize_with = "text",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<String>,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionDelta>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct FunctionDelta {
    #[serde(
        default,
        deserialize_with = "text",
        skip_serializing_if = "Option::is_none"
    )]
    pub name: Option<String>,
    /// A string of JSON; an upstream that sends the object itself is read as its text.
    #[serde(
        default,
        deserialize_with = "text",
        skip_serializing_if = "Option::is_none"
    )]
    pub arguments: Option<String>,
}

impl ChatChunk {
    /// A chunk of one choice with `delta`.
    pub fn delta(id: &str, model: &str, created: i64, delta: Delta) -> ChatChunk {
        ChatChunk {
            id: id.to_owned(),
            object: chunk_object(),
            created,
            model: model.to_owned(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason: None,
                text: None,
            }],
            usage: None,
        }
    }
}

/// A string that some upstreams send as `null`: read as empty.
pub fn string_or_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Option::<String>::deserialize(d).map(Option::unwrap_or_default)
}

/// Text that some upstreams send as a number or an object: read as its JSON text.
pub fn text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Null => None,
        Value::String(s) => Some(s),
        other => Some(other.to_string()),
    })
}

/// A value that some upstreams send as `null`: read as its default.
pub fn default_if_null<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// `created` in seconds: an integer, or a float, string or null from some upstreams.
pub fn seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .unwrap_or(0),
        Value::String(s) => s.trim().parse().unwrap_or(0),
        _ => 0,
    })
}

/// A token count that some upstreams send as `null`: read as 0.
pub fn zero_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    Option::<i64>::deserialize(d).map(Option::unwrap_or_default)
}

/// Seconds since the epoch, for `created`.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Parses a tool call's JSON arguments (empty means none); anything else is kept as
/// a string under `_raw` rather than lost.
pub fn parse_arguments(arguments: &str) -> Value {
    if arguments.trim().is_empty() {
        return Value::Object(serde_json::Map::new());
    }
    serde_json::from_str(arguments).unwrap_or_else(|_| serde_json::json!({"_raw": arguments}))
}
