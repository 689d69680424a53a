//! OpenAI Responses ⇄ OpenAI chat: a `/v1/responses` client served by a channel that
//! speaks only chat (through the pivot, an Anthropic or Gemini channel too). Requests
//! go to chat; answers and streams come back as Responses objects and events.

use billing::Usage;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::chat::{
    self, ChatChunk, ChatCompletion, ChatRequest, ChatUsage, Content, FunctionCall, FunctionDef,
    Image, ImageUrl, JsonSchema, Message, Part, ResponseFormat, Tool, ToolCall,
};
use super::{ConvertError, Events, Piece};

/// A Responses request, as far as chat can express it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ResponsesRequest {
    #[serde(default)]
    pub model: String,
    pub input: Input,
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    pub max_output_tokens: Option<i64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default)]
    pub text: Option<Value>,
    #[serde(default)]
    pub reasoning: Option<Value>,
    #[serde(default)]
    pub previous_response_id: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Input {
    Text(String),
    Items(Vec<Value>),
}

impl Default for Input {
    fn default() -> Self {
        Input::Text(String::new())
    }
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// A Responses request as a chat request for `model`.
pub fn request_to_chat(req: ResponsesRequest, model: &str) -> Result<ChatRequest, ConvertError> {
    if req.previous_response_id.is_some() {
        return Err(ConvertError::new(
            "'previous_response_id' cannot be served for this model: send the whole conversation in 'input'",
        ));
    }
    let mut messages = Vec::new();
    if let Some(i) = req.instructions.filter(|i| !i.is_empty()) {
        messages.push(Message {
            role: "system".into(),
            content: Some(Content::Text(i)),
            ..Message::default()
        });
    }
    match req.input {
        Input::Text(text) => messages.push(Message {
            role: "user".into(),
            content: Some(Content::Text(text)),
            ..Message::default()
        }),
        Input::Items(items) => {
            for item in items {
                input_item(item, &mut messages)?;
            }
        }
    }
    let mut tools = Vec::new();
    for t in req.tools.unwrap_or_default() {
        match str_field(&t, "type") {
            Some("function") => tools.push(Tool {
                kind: "function".into(),
                function: FunctionDef {
                    name: str_field(&t, "name").unwrap_or_default().to_owned(),
                    description: str_field(&t, "description").map(str::to_owned),
                    parameters: t.get("parameters").cloned().filter(|p| !p.is_null()),
                    strict: t.get("strict").and_then(Value::as_bool),
                },
            }),
            other => {
                return Err(ConvertError::new(format!(
                    "the built-in tool '{}' cannot be expressed for this model",
                    other.unwrap_or("?")
                )));
            }
        }
    }
    let tool_choice = match req.tool_choice {
        None => None,
        Some(Value::String(s)) => Some(Value::String(s)),
        Some(v) if str_field(&v, "type") == Some("function") => Some(json!({
            "type": "function",
            "function": {"name": str_field(&v, "name").unwrap_or_default()},
        })),
        Some(_) => {
            return Err(ConvertError::new(
                "this tool_choice cannot be expressed for this model",
            ));
        }
    };
    let response_format = match req.text.as_ref().and_then(|t| t.get("format")) {
        None => None,
        Some(f) => match str_field(f, "type") {
            Some("text") | None => None,
            Some("json_object") => Some(ResponseFormat::JsonObject),
            Some("json_schema") => Some(ResponseFormat::JsonSchema {
                json_schema: JsonSchema {
                    name: str_field(f, "name").unwrap_or("response").to_owned(),
                    schema: f.get("schema").cloned(),
                    strict: f.get("strict").and_then(Value::as_bool),
                },
            }),
            Some(other) => {
                return Err(ConvertError::new(format!(
                    "text format '{other}' cannot be expressed for this model"
                )));
            }
        },
    };
    let stream = req.stream.unwrap_or(false);
    Ok(ChatRequest {
        model: model.to_owned(),
        messages,
        max_completion_tokens: req.max_output_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        stream: Some(stream),
        stream_options: stream.then(|| json!({"include_usage": true})),
        tools: (!tools.is_empty()).then_some(tools),
        tool_choice,
        parallel_tool_calls: req.parallel_tool_calls,
        response_format,
        reasoning_effort: req
            .reasoning
            .as_ref()
            .and_then(|r| str_field(r, "effort"))
            .map(str::to_owned),
        user: req.user,
        ..ChatRequest::default()
    })
}

fn input_item(item: Value, messages: &mut Vec<Message>) -> Result<(), ConvertError> {
    match str_field(&item, "type") {
        Some("function_call") => {
            let call = ToolCall {
                id: str_field(&item, "call_id").unwrap_or_default().to_owned(),
                kind: "function".into(),
                function: FunctionCall {
                    name: str_field(&item, "name").unwrap_or_default().to_owned(),
                    arguments: str_field(&item, "arguments").unwrap_or_default().to_owned(),
                },
            };
            // Calls made in one turn join one assistant message.
            match messages.last_mut() {
                Some(last) if last.role == "assistant" => {
                    last.tool_calls.get_or_insert_with(Vec::new).push(call);
                }
                _ => messages.push(Message {
                    role: "assistant".into(),
                    tool_calls: Some(vec![call]),
                    ..Message::default()
                }),
            }
        }
        Some("function_call_output") => {
            let output = match item.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            messages.push(Message {
                role: "tool".into(),
                content: Some(Content::Text(output)),
                tool_call_id: str_field(&item, "call_id").map(str::to_owned),
                ..Message::default()
            });
        }
        // The model's own reasoning from an earlier turn: only OpenAI can read it back.
        Some("reasoning") => {}
        Some("message") | None => {
            let role = str_field(&item, "role")
                .ok_or_else(|| ConvertError::new("an input item has no role"))?
                .to_owned();
            let content = match item.get("content") {
                Some(Value::String(s)) => Content::Text(s.clone()),
                Some(Value::Array(parts)) => {
                    let mut out = Vec::new();
                    for p in parts {
                        out.push(content_part(p)?);
                    }
                    Content::Parts(out)
                }
                _ => return Err(ConvertError::new("an input message has no content")),
            };
            let content = match (role.as_str(), content) {
                // Chat wants an assistant's earlier answer as plain text.
                ("assistant" | "system" | "developer", c) => Content::Text(c.text()),
                (_, c) => c,
            };
            messages.push(Message {
                role,
                content: Some(content),
                ..Message::default()
            });
        }
        Some(other) => {
            return Err(ConvertError::new(format!(
                "input items of type '{other}' cannot be expressed for this model"
            )));
        }
    }
    Ok(())
}

fn content_part(p: &Value) -> Result<Part, ConvertError> {
    match str_field(p, "type") {
        Some("input_text" | "output_text" | "text") => Ok(Part::Text {
            text: str_field(p, "text").unwrap_or_default().to_owned(),
        }),
        Some("refusal") => Ok(Part::Text {
            text: str_field(p, "refusal").unwrap_or_default().to_owned(),
        }),
        Some("input_image") => {
            let url = str_field(p, "image_url").ok_or_else(|| {
                ConvertError::new("images by file_id cannot be expressed for this model")
            })?;
            Image::from_url(url)?;
            Ok(Part::ImageUrl {
                image_url: ImageUrl {
                    url: url.to_owned(),
                    detail: str_field(p, "detail").map(str::to_owned),
                },
            })
        }
        other => Err(ConvertError::new(format!(
            "content of type '{}' cannot be expressed for this model",
            other.unwrap_or("?")
        ))),
    }
}

// ---- answers --------------------------------------------------------------------

/// The Responses API's `usage` object.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct ResponsesUsage {
    #[serde(default, deserialize_with = "chat::zero_if_null")]
    pub input_tokens: i64,
    #[serde(default, deserialize_with = "chat::default_if_null")]
    pub input_tokens_details: InputDetails,
    #[serde(default, deserialize_with = "chat::zero_if_null")]
    pub output_tokens: i64,
    #[serde(default, deserialize_with = "chat::default_if_null")]
    pub output_tokens_details: OutputDetails,
    #[serde(default, deserialize_with = "chat::zero_if_null")]
    pub total_tokens: i64,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct InputDetails {
    #[serde(default, deserialize_with = "chat::zero_if_null")]
    pub cached_tokens: i64,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct OutputDetails {
    #[serde(default, deserialize_with = "chat::zero_if_null")]
    pub reasoning_tokens: i64,
}

impl ResponsesUsage {
    /// What the relay charges for this report.
    pub fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.input_tokens,
            completion_tokens: self.output_tokens,
            cached_tokens: self.input_tokens_details.cached_tokens,
            reasoning_tokens: self.output_tokens_details.reasoning_tokens,
            ..Usage::default()
        }
    }
}

impl From<&Usage> for ResponsesUsage {
    fn from(u: &Usage) -> Self {
        ResponsesUsage {
            input_tokens: u.prompt_tokens,
            input_tokens_details: InputDetails {
                cached_tokens: u.cached_tokens,
            },
            output_tokens: u.completion_tokens,
            output_tokens_details: OutputDetails {
                reasoning_tokens: u.reasoning_tokens,
            },
            total_tokens: u.prompt_tokens.saturating_add(u.completion_tokens),
        }
    }
}

/// A Responses object as the relay reads it: a whole answer, or the `response` of a
/// stream's lifecycle events. Output items are many kinds and pass through as JSON.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ResponseObject {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub object: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub usage: Option<ResponsesUsage>,
    #[serde(default, deserialize_with = "chat::default_if_null")]
    pub output: Vec<Value>,
}

impl ResponseObject {
    /// The text of every output item (messages, reasoning summaries, call arguments).
    pub fn texts(&self, mut push: impl FnMut(&str)) {
        for item in &self.output {
            let parts = item.get("content").or_else(|| item.get("summary"));
            for part in parts.and_then(Value::as_array).into_iter().flatten() {
                if let Some(t) = part.get("text").and_then(Value::as_str) {
                    push(t);
                }
            }
            if let Some(a) = item.get("arguments").and_then(Value::as_str) {
                push(a);
            }
        }
    }
}

/// One event of a Responses stream, as the relay reads it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ResponsesEvent {
    #[serde(rename = "type", default, deserialize_with = "chat::string_or_null")]
    pub kind: String,
    /// The text of a `*.delta` event.
    #[serde(default)]
    pub delta: Option<Value>,
    /// The response of a lifecycle event (`response.created` … `response.completed`).
    #[serde(default)]
    pub response: Option<ResponseObject>,
}

impl ResponsesEvent {
    /// The text a delta event adds (output text, call arguments, reasoning).
    pub fn delta_text(&self) -> Option<&str> {
        match self.kind.as_str() {
            "response.output_text.delta"
            | "response.function_call_arguments.delta"
            | "response.reasoning_summary_text.delta"
            | "response.reasoning_text.delta"
            | "response.refusal.delta" => self.delta.as_ref().and_then(Value::as_str),
            _ => None,
        }
    }

    /// Whether this event ends the response.
    pub fn is_final(&self) -> bool {
        matches!(
            self.kind.as_str(),
            "response.completed" | "response.incomplete" | "response.failed"
        )
    }
}

fn usage_json(u: &ChatUsage) -> Value {
    serde_json::to_value(ResponsesUsage::from(&u.usage())).unwrap_or(Value::Null)
}

/// The id the client sees is the upstream's own, so `/v1/generation?id=` finds it.
fn response_id(id: &str) -> String {
    id.to_owned()
}

/// (status, incomplete_details) for a chat finish reason.
fn status_for(finish: Option<&str>) -> (&'static str, Value) {
    match finish {
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

fn response_object(
    id: &str,
    model: &str,
    created: i64,
    status: &str,
    output: Vec<Value>,
    usage: Option<&ChatUsage>,
    incomplete: Value,
) -> Value {
    json!({
        "id": id,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": null,
        "incomplete_details": incomplete,
        "instructions": null,
        "max_output_tokens": null,
        "model": model,
        "output": output,
        "parallel_tool_calls": true,
        "previous_response_id": null,
        "reasoning": {"effort": null, "summary": null},
        "store": false,
        "temperature": null,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": null,
        "truncation": "disabled",
        "usage": usage.map(usage_json),
        "metadata": {},
    })
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "type": "message",
        "id": id,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    })
}

fn reasoning_item(id: &str, text: &str) -> Value {
    json!({"type": "reasoning", "id": id, "summary": [{"type": "summary_text", "text": text}]})
}

fn call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({
        "type": "function_call",
        "id": id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    })
}

/// A chat completion as a Responses object.
pub fn response_from_chat(c: ChatCompletion) -> Value {
    let id = response_id(&c.id);
    let choice = c.choices.into_iter().next().unwrap_or_default();
    let mut output = Vec::new();
    if let Some(r) = choice.message.reasoning_content.filter(|r| !r.is_empty()) {
        output.push(reasoning_item(&format!("rs_{id}"), &r));
    }
    let text = choice
        .message
        .content
        .map(|c| c.text())
        .or(choice.message.refusal)
        .unwrap_or_default();
    if !text.is_empty() {
        output.push(message_item(&format!("msg_{id}"), &text, "completed"));
    }
    for (i, call) in choice
        .message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        output.push(call_item(
            &format!("fc_{id}_{i}"),
            &call.id,
            &call.function.name,
            &call.function.arguments,
            "completed",
        ));
    }
    let (status, incomplete) = status_for(choice.finish_reason.as_deref());
    response_object(
        &id,
        &c.model,
        if c.created > 0 {
            c.created
        } else {
            chat::now()
        },
        status,
        output,
        c.usage.as_ref(),
        incomplete,
    )
}

// ---- streams --------------------------------------------------------------------

/// The output item being streamed.
#[derive(Debug)]
enum OpenItem {
    Reasoning {
        id: String,
        text: String,
    },
    Message {
        id: String,
        text: String,
    },
    Call {
        index: i64,
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
}

/// Chat chunks → Responses stream events.
#[derive(Debug, Default)]
pub struct ChatToResponses {
    seq: i64,
    id: String,
    model: String,
    created: i64,
    started: bool,
    open: Option<OpenItem>,
    output: Vec<Value>,
    finish: Option<String>,
    usage: Option<ChatUsage>,
    done: bool,
}

impl ChatToResponses {
    pub fn new() -> Self {
        Self::default()
    }

    fn emit(&mut self, kind: &str, mut data: Map<String, Value>, out: &mut Events) {
        data.insert("type".into(), Value::from(kind));
        data.insert("sequence_number".into(), Value::from(self.seq));
        self.seq += 1;
        out.event(kind, &Value::Object(data));
    }

    fn fields(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    fn output_index(&self) -> usize {
        self.output.len()
    }

    fn start(&mut self, chunk: &ChatChunk, out: &mut Events) {
        if self.started {
            return;
        }
        self.started = true;
        self.id = response_id(&chunk.id);
        self.model = chunk.model.clone();
        self.created = if chunk.created > 0 {
            chunk.created
        } else {
            chat::now()
        };
        let r = response_object(
            &self.id,
            &self.model,
            self.created,
            "in_progress",
            Vec::new(),
            None,
            Value::Null,
        );
        self.emit(
            "response.created",
            Self::fields(json!({"response": r})),
            out,
        );
        self.emit(
            "response.in_progress",
            Self::fields(json!({"response": r})),
            out,
        );
    }

    /// Closes the open item, emitting its `done` events.
    fn close(&mut self, out: &mut Events) {
        let Some(item) = self.open.take() else {
            return;
        };
        let index = self.output_index();
        let done = match item {
            OpenItem::Reasoning { id, text } => {
                self.emit(
                    "response.reasoning_summary_text.done",
                    Self::fields(json!({"item_id": id, "output_index": index, "summary_index": 0, "text": text})),
                    out,
                );
                self.emit(
                    "response.reasoning_summary_part.done",
                    Self::fields(json!({"item_id": id, "output_index": index, "summary_index": 0, "part": {"type": "summary_text", "text": text}})),
                    out,
                );
                reasoning_item(&id, &text)
            }
            OpenItem::Message { id, text } => {
                self.emit(
                    "response.output_text.done",
                    Self::fields(json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": []})),
                    out,
                );
                self.emit(
                    "response.content_part.done",
                    Self::fields(json!({"item_id": id, "output_index": index, "content_index": 0, "part": {"type": "output_text", "text": text, "annotations": []}})),
                    out,
                );
                message_item(&id, &text, "completed")
            }
            OpenItem::Call {
                id,
                call_id,
                name,
                arguments,
                ..
            } => {
                self.emit(
                    "response.function_call_arguments.done",
                    Self::fields(
                        json!({"item_id": id, "output_index": index, "arguments": arguments}),
                    ),
                    out,
                );
                call_item(&id, &call_id, &name, &arguments, "completed")
            }
        };
        self.emit(
            "response.output_item.done",
            Self::fields(json!({"output_index": index, "item": done})),
            out,
        );
        self.output.push(done);
    }

    fn open_reasoning(&mut self, out: &mut Events) {
        if matches!(self.open, Some(OpenItem::Reasoning { .. })) {
            return;
        }
        self.close(out);
        let index = self.output_index();
        let id = format!("rs_{}_{index}", self.id);
        self.emit(
            "response.output_item.added",
            Self::fields(json!({"output_index": index, "item": {"type": "reasoning", "id": id, "summary": []}})),
            out,
        );
        self.emit(
            "response.reasoning_summary_part.added",
            Self::fields(json!({"item_id": id, "output_index": index, "summary_index": 0, "part": {"type": "summary_text", "text": ""}})),
            out,
        );
        self.open = Some(OpenItem::Reasoning {
            id,
            text: String::new(),
        });
    }

    fn open_message(&mut self, out: &mut Events) {
        if matches!(self.open, Some(OpenItem::Message { .. })) {
            return;
        }
        self.close(out);
        let index = self.output_index();
        let id = format!("msg_{}_{index}", self.id);
        self.emit(
            "response.output_item.added",
            Self::fields(json!({"output_index": index, "item": {"type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": []}})),
            out,
        );
        self.emit(
            "response.content_part.added",
            Self::fields(json!({"item_id": id, "output_index": index, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}})),
            out,
        );
        self.open = Some(OpenItem::Message {
            id,
            text: String::new(),
        });
    }

    /// Converts one piece of the pivot stream.
    pub fn push(&mut self, piece: Piece, out: &mut Events) {
        match piece {
            Piece::Chunk(chunk) => self.push_chunk(chunk, out),
            Piece::Done => self.finish(out),
            Piece::Error(message) => {
                let mut data = Map::new();
                data.insert("code".into(), Value::from("upstream_error"));
                data.insert("message".into(), Value::from(message));
                data.insert("param".into(), Value::Null);
                self.emit("error", data, out);
            }
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
                self.open_reasoning(out);
                let index = self.output_index();
                if let Some(OpenItem::Reasoning { id, text }) = self.open.as_mut() {
                    text.push_str(&r);
                    let data = json!({"item_id": id.clone(), "output_index": index, "summary_index": 0, "delta": r});
                    self.emit(
                        "response.reasoning_summary_text.delta",
                        Self::fields(data),
                        out,
                    );
                }
            }
            if let Some(t) = d.content.or(d.refusal).filter(|t| !t.is_empty()) {
                self.open_message(out);
                let index = self.output_index();
                if let Some(OpenItem::Message { id, text }) = self.open.as_mut() {
                    text.push_str(&t);
                    let data = json!({"item_id": id.clone(), "output_index": index, "content_index": 0, "delta": t, "logprobs": []});
                    self.emit("response.output_text.delta", Self::fields(data), out);
                }
            }
            for call in d.tool_calls.unwrap_or_default() {
                let f = call.function.unwrap_or_default();
                let same = matches!(&self.open, Some(OpenItem::Call { index, .. }) if *index == call.index)
                    && call.id.is_none();
                if !same {
                    self.close(out);
                    let index = self.output_index();
                    let id = format!("fc_{}_{index}", self.id);
                    let call_id = call.id.clone().unwrap_or_default();
                    let name = f.name.clone().unwrap_or_default();
                    self.emit(
                        "response.output_item.added",
                        Self::fields(json!({"output_index": index, "item": call_item(&id, &call_id, &name, "", "in_progress")})),
                        out,
                    );
                    self.open = Some(OpenItem::Call {
                        index: call.index,
                        id,
                        call_id,
                        name,
                        arguments: String::new(),
                    });
                }
                if let Some(args) = f.arguments.filter(|a| !a.is_empty()) {
                    let index = self.output_index();
                    if let Some(OpenItem::Call { id, arguments, .. }) = self.open.as_mut() {
                        arguments.push_str(&args);
                        let data =
                            json!({"item_id": id.clone(), "output_index": index, "delta": args});
                        self.emit(
                            "response.function_call_arguments.delta",
                            Self::fields(data),
                            out,
                        );
                    }
                }
            }
            if let Some(f) = choice.finish_reason {
                self.finish = Some(f);
            }
        }
    }

    /// `[DONE]` or the end of the upstream: the items close and the response completes.
    pub fn finish(&mut self, out: &mut Events) {
        if self.done || !self.started || (self.finish.is_none() && self.usage.is_none()) {
            return;
        }
        self.done = true;
        self.close(out);
        let (status, incomplete) = status_for(self.finish.as_deref());
        let r = response_object(
            &self.id,
            &self.model,
            self.created,
            status,
            std::mem::take(&mut self.output),
            self.usage.as_ref(),
            incomplete,
        );
        let kind = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.emit(kind, Self::fields(json!({"response": r})), out);
    }
}
