//! Gemini generateContent ⇄ OpenAI chat: requests, whole answers and streams, both
//! ways.

use std::collections::{BTreeMap, HashMap, VecDeque};

use billing::Usage;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::chat::{
    self, ChatChunk, ChatCompletion, ChatRequest, ChatUsage, Choice, Content, Delta, FunctionCall,
    FunctionDef, FunctionDelta, Image, JsonSchema, Message, Part, ResponseFormat, Tool, ToolCall,
    ToolCallDelta, ToolChoice,
};
use super::{ConvertError, Events, Piece};

/// A generateContent request (the model is named in the path).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateRequest {
    pub contents: Vec<GContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "system_instruction")]
    pub system_instruction: Option<GContent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<GTool>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "tool_config")]
    pub tool_config: Option<ToolConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "generation_config")]
    pub generation_config: Option<GenerationConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "safety_settings")]
    pub safety_settings: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "cached_content")]
    pub cached_content: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct GContent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, deserialize_with = "chat::default_if_null")]
    pub parts: Vec<GPart>,
}

/// A part: exactly one of its data fields is set.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GPart {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thought: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "thought_signature")]
    pub thought_signature: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "inline_data")]
    pub inline_data: Option<Blob>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "file_data")]
    pub file_data: Option<FileData>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "function_call")]
    pub function_call: Option<GFunctionCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "function_response")]
    pub function_response: Option<GFunctionResponse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "executable_code")]
    pub executable_code: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "code_execution_result")]
    pub code_execution_result: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Blob {
    #[serde(default, alias = "mime_type")]
    pub mime_type: String,
    #[serde(default)]
    pub data: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileData {
    #[serde(default)]
    #[serde(alias = "mime_type")]
    pub mime_type: Option<String>,
    #[serde(default, alias = "file_uri")]
    pub file_uri: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct GFunctionCall {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub args: Value,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct GFunctionResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub name: String,
    #[serde(default)]
    pub response: Value,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GTool {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "function_declarations")]
    pub function_declarations: Option<Vec<FunctionDeclaration>>,
    /// Built-in tools (search, code execution, …) have no chat equivalent.
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionDeclaration {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "parameters_json_schema")]
    pub parameters_json_schema: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "function_calling_config")]
    pub function_calling_config: Option<FunctionCallingConfig>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionCallingConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "allowed_function_names")]
    pub allowed_function_names: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerationConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "top_p")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "top_k")]
    pub top_k: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "max_output_tokens")]
    pub max_output_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "stop_sequences")]
    pub stop_sequences: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "candidate_count")]
    pub candidate_count: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "response_mime_type")]
    pub response_mime_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "response_schema")]
    pub response_schema: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "response_json_schema")]
    pub response_json_schema: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "thinking_config")]
    pub thinking_config: Option<ThinkingConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "presence_penalty")]
    pub presence_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "frequency_penalty")]
    pub frequency_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "response_modalities")]
    pub response_modalities: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "response_logprobs")]
    pub response_logprobs: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ThinkingConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "thinking_budget")]
    pub thinking_budget: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "include_thoughts")]
    pub include_thoughts: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "thinking_level")]
    pub thinking_level: Option<String>,
}

/// A whole answer, or one stream chunk.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateResponse {
    #[serde(default, deserialize_with = "chat::default_if_null")]
    pub candidates: Vec<Candidate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "usage_metadata")]
    pub usage_metadata: Option<GUsage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "model_version")]
    pub model_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "response_id")]
    pub response_id: Option<String>,
    /// Set when the prompt itself was blocked (then there are no candidates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "prompt_feedback")]
    pub prompt_feedback: Option<Value>,
}

impl GenerateResponse {
    /// Every part's text (thoughts included) and function call, for counting tokens
    /// when no usage comes.
    pub fn texts(&self, mut push: impl FnMut(&str)) {
        for part in self.candidates.iter().flat_map(|c| &c.content.parts) {
            if let Some(t) = &part.text {
                push(t);
            }
            if let Some(call) = &part.function_call {
                push(&call.name);
                push(&call.args.to_string());
            }
        }
    }

    /// Why the prompt was blocked, if it was.
    fn blocked(&self) -> bool {
        self.candidates.is_empty()
            && self
                .prompt_feedback
                .as_ref()
                .and_then(|f| f.get("blockReason"))
                .is_some_and(|r| !r.is_null())
    }
}

/// A tool-call id for a Gemini call that has none, unique across answers.
fn call_id(response_id: Option<&str>, n: usize) -> String {
    let tag: String = response_id
        .unwrap_or("gemini")
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(16)
        .collect();
    format!("call_{tag}_{n}")
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Candidate {
    #[serde(default, deserialize_with = "chat::default_if_null")]
    pub content: GContent,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "finish_reason")]
    pub finish_reason: Option<String>,
    #[serde(default, deserialize_with = "chat::zero_if_null")]
    pub index: i64,
}

/// `usageMetadata`: the prompt count includes cached tokens; thoughts are apart from
/// the candidates and billed as output; a tool-use prompt is billed as prompt.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GUsage {
    #[serde(default, deserialize_with = "chat::zero_if_null")]
    #[serde(alias = "prompt_token_count")]
    pub prompt_token_count: i64,
    /// Absent on a stream's early chunks, which count only the prompt: a count of the
    /// output is known only once this is present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(alias = "candidates_token_count")]
    pub candidates_token_count: Option<i64>,
    #[serde(default, deserialize_with = "chat::zero_if_null")]
    #[serde(alias = "total_token_count")]
    pub total_token_count: i64,
    #[serde(default, deserialize_with = "chat::zero_if_null")]
    #[serde(alias = "cached_content_token_count")]
    pub cached_content_token_count: i64,
    #[serde(default, deserialize_with = "chat::zero_if_null")]
    #[serde(alias = "thoughts_token_count")]
    pub thoughts_token_count: i64,
    #[serde(default, deserialize_with = "chat::zero_if_null")]
    #[serde(alias = "tool_use_prompt_token_count")]
    #[serde(skip_serializing_if = "is_zero")]
    pub tool_use_prompt_token_count: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl GUsage {
    /// What the relay charges for this report.
    pub fn usage(&self) -> Usage {
        let thoughts = self.thoughts_token_count;
        Usage {
            prompt_tokens: self
                .prompt_token_count
                .saturating_add(self.tool_use_prompt_token_count),
            completion_tokens: self
                .candidates_token_count
                .unwrap_or(0)
                .saturating_add(thoughts),
            cached_tokens: self.cached_content_token_count,
            reasoning_tokens: thoughts,
            ..Usage::default()
        }
    }

    /// Whether this report counts the output (a stream's last chunks), not only the
    /// prompt.
    pub fn counts_output(&self) -> bool {
        self.candidates_token_count.is_some()
    }

    pub fn to_chat(self) -> ChatUsage {
        ChatUsage::from(&self.usage())
    }

    pub fn from_chat(u: &ChatUsage) -> GUsage {
        GUsage::from(&u.usage())
    }
}

impl From<&Usage> for GUsage {
    fn from(u: &Usage) -> Self {
        GUsage {
            prompt_token_count: u.prompt_tokens,
            candidates_token_count: Some(u.completion_tokens.saturating_sub(u.reasoning_tokens)),
            total_token_count: u.prompt_tokens.saturating_add(u.completion_tokens),
            cached_content_token_count: u.cached_tokens,
            thoughts_token_count: u.reasoning_tokens,
            tool_use_prompt_token_count: 0,
        }
    }
}

/// OpenAI's finish reason for Gemini's (a stop with function calls is a tool stop).
pub fn finish_reason(reason: &str, called: bool) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter"
        }
        _ if called => "tool_calls",
        _ => "stop",
    }
}

/// Gemini's finish reason for OpenAI's.
pub fn gemini_finish(reason: &str) -> &'static str {
    match reason {
        "length" => "MAX_TOKENS",
        "content_filter" => "SAFETY",
        _ => "STOP",
    }
}

fn budget_for_effort(effort: &str) -> Result<i64, ConvertError> {
    match effort {
        "none" => Ok(0),
        "minimal" | "low" => Ok(1024),
        "medium" => Ok(8192),
        "high" => Ok(24576),
        other => Err(ConvertError::new(format!(
            "unknown reasoning_effort '{other}'"
        ))),
    }
}

// ---- requests -------------------------------------------------------------------

/// An OpenAI chat request as a generateContent request.
pub fn request_from_chat(req: ChatRequest) -> Result<GenerateRequest, ConvertError> {
    req.refuse_openai_only("Gemini")?;
    let max_output = req.max_output();
    let mut system = Vec::new();
    let mut contents: Vec<GContent> = Vec::new();
    // Gemini answers a function call by name: remember which name each call id had.
    let mut names: HashMap<String, String> = HashMap::new();
    for m in req.messages {
        match m.role.as_str() {
            "system" | "developer" => {
                if let Some(c) = m.content {
                    system.push(text_part(c.text()));
                }
            }
            "user" => {
                let parts = user_parts(m.content)?;
                push_content(&mut contents, "user", parts);
            }
            "assistant" => {
                let mut parts = Vec::new();
                if let Some(text) = m.content.map(|c| c.text()).filter(|t| !t.is_empty()) {
                    parts.push(text_part(text));
                }
                for (i, call) in m.tool_calls.unwrap_or_default().into_iter().enumerate() {
                    names.insert(call.id.clone(), call.function.name.clone());
                    parts.push(GPart {
                        function_call: Some(GFunctionCall {
                            id: Some(call.id),
                            name: call.function.name,
                            args: chat::parse_arguments(&call.function.arguments),
                        }),
                        // Gemini 3 wants the signature of its own calls back; a call
                        // made elsewhere has none, and this value tells it so.
                        thought_signature: (i == 0)
                            .then(|| "skip_thought_signature_validator".to_owned()),
                        ..GPart::default()
                    });
                }
                if !parts.is_empty() {
                    push_content(&mut contents, "model", parts);
                }
            }
            "tool" | "function" => {
                let id = m.tool_call_id.unwrap_or_default();
                let name = names
                    .get(&id)
                    .cloned()
                    .or(m.name)
                    .ok_or_else(|| ConvertError::new("a tool message answers no known call"))?;
                let text = m.content.map(|c| c.text()).unwrap_or_default();
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => json!({"result": text}),
                };
                let part = GPart {
                    function_response: Some(GFunctionResponse {
                        id: Some(id),
                        name,
                        response,
                    }),
                    ..GPart::default()
                };
                push_content(&mut contents, "user", vec![part]);
            }
            other => {
                return Err(ConvertError::new(format!("unknown message role '{other}'")));
            }
        }
    }
    let tools = req.tools.map(|tools| {
        vec![GTool {
            function_declarations: Some(
                tools
                    .into_iter()
                    .map(|t| FunctionDeclaration {
                        name: t.function.name,
                        description: t.function.description,
                        parameters: None,
                        parameters_json_schema: t.function.parameters,
                    })
                    .collect(),
            ),
            other: serde_json::Map::new(),
        }]
    });
    let tool_config = match req.tool_choice.as_ref() {
        None => None,
        Some(v) => {
            let (mode, allowed) = match ToolChoice::from_openai(v)? {
                ToolChoice::Auto => ("AUTO", None),
                ToolChoice::None => ("NONE", None),
                ToolChoice::Required => ("ANY", None),
                ToolChoice::Function(name) => ("ANY", Some(vec![name])),
            };
            Some(ToolConfig {
                function_calling_config: Some(FunctionCallingConfig {
                    mode: Some(mode.into()),
                    allowed_function_names: allowed,
                }),
            })
        }
    };
    let (mime, schema) = match req.response_format {
        None | Some(ResponseFormat::Text) => (None, None),
        Some(ResponseFormat::JsonObject) => (Some("application/json".to_owned()), None),
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            (Some("application/json".to_owned()), json_schema.schema)
        }
    };
    // Pro models cannot turn thinking off: "none" leaves them at their default.
    let pro = req.model.contains("pro");
    let thinking_config = match req.reasoning_effort.as_deref() {
        None => None,
        Some("none") if pro => None,
        Some(effort) => Some(ThinkingConfig {
            thinking_budget: Some(budget_for_effort(effort)?),
            include_thoughts: Some(effort != "none"),
            thinking_level: None,
        }),
    };
    let generation_config = GenerationConfig {
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        max_output_tokens: max_output,
        stop_sequences: req.stop.map(chat::Stop::into_vec),
        candidate_count: None,
        response_mime_type: mime,
        response_schema: None,
        response_json_schema: schema,
        thinking_config,
        seed: req.seed,
        presence_penalty: req.presence_penalty,
        frequency_penalty: req.frequency_penalty,
        response_modalities: None,
        response_logprobs: None,
    };
    Ok(GenerateRequest {
        contents,
        system_instruction: (!system.is_empty()).then_some(GContent {
            role: None,
            parts: system,
        }),
        tools,
        tool_config,
        generation_config: Some(generation_config),
        safety_settings: None,
        cached_content: None,
    })
}

fn text_part(text: String) -> GPart {
    GPart {
        text: Some(text),
        ..GPart::default()
    }
}

fn user_parts(content: Option<Content>) -> Result<Vec<GPart>, ConvertError> {
    let mut parts = Vec::new();
    for part in content.map(Content::into_parts).unwrap_or_default() {
        match part {
            Part::Text { text } if text.is_empty() => {}
            Part::Text { text } => parts.push(text_part(text)),
            Part::ImageUrl { image_url } => match Image::from_url(&image_url.url)? {
                Image::Inline { media_type, data } => parts.push(GPart {
                    inline_data: Some(Blob {
                        mime_type: media_type,
                        data,
                    }),
                    ..GPart::default()
                }),
                Image::Url(url) => parts.push(GPart {
                    file_data: Some(FileData {
                        mime_type: Some(mime_from_url(&url).to_owned()),
                        file_uri: url,
                    }),
                    ..GPart::default()
                }),
            },
            Part::InputAudio { input_audio } => {
                let data = input_audio.get("data").and_then(Value::as_str);
                let format = input_audio.get("format").and_then(Value::as_str);
                let (Some(data), Some(format)) = (data, format) else {
                    return Err(ConvertError::new("input_audio needs data and format"));
                };
                parts.push(GPart {
                    inline_data: Some(Blob {
                        mime_type: format!("audio/{format}"),
                        data: data.to_owned(),
                    }),
                    ..GPart::default()
                });
            }
            Part::File { .. } => {
                return Err(ConvertError::new(
                    "file parts cannot be expressed for a Gemini model",
                ));
            }
        }
    }
    if parts.is_empty() {
        return Err(ConvertError::new("a user message has no content"));
    }
    Ok(parts)
}

fn mime_from_url(url: &str) -> &'static str {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    if path.ends_with(".png") {
        "image/png"
    } else if path.ends_with(".webp") {
        "image/webp"
    } else if path.ends_with(".gif") {
        "image/gif"
    } else {
        "image/jpeg"
    }
}

fn push_content(contents: &mut Vec<GContent>, role: &str, parts: Vec<GPart>) {
    if let Some(last) = contents.last_mut()
        && last.role.as_deref() == Some(role)
    {
        last.parts.extend(parts);
        return;
    }
    contents.push(GContent {
        role: Some(role.to_owned()),
        parts,
    });
}

/// A generateContent request as an OpenAI chat request for `model`.
pub fn request_to_chat(
    req: GenerateRequest,
    model: &str,
    stream: bool,
) -> Result<ChatRequest, ConvertError> {
    let mut messages = Vec::new();
    if let Some(system) = req.system_instruction {
        let text = system
            .parts
            .into_iter()
            .filter_map(|p| p.text)
            .collect::<Vec<_>>()
            .join("\n");
        messages.push(Message {
            role: "system".into(),
            content: Some(Content::Text(text)),
            ..Message::default()
        });
    }
    // Gemini's calls may have no id: give each one, and hand it to the response with
    // the same name that follows.
    let mut pending: HashMap<String, VecDeque<String>> = HashMap::new();
    let mut next_call = 0;
    for content in req.contents {
        let role = content.role.as_deref().unwrap_or("user");
        match role {
            "user" | "function" | "tool" => {
                let mut parts = Vec::new();
                for p in content.parts {
                    if let Some(r) = p.function_response {
                        let id =
                            r.id.filter(|id| !id.is_empty())
                                .or_else(|| pending.get_mut(&r.name).and_then(VecDeque::pop_front))
                                .unwrap_or_else(|| format!("call_{}", r.name));
                        messages.push(Message {
                            role: "tool".into(),
                            content: Some(Content::Text(r.response.to_string())),
                            tool_call_id: Some(id),
                            ..Message::default()
                        });
                    } else {
                        parts.push(part_to_chat(p)?);
                    }
                }
                if !parts.is_empty() {
                    let content = match parts.as_slice() {
                        [Part::Text { text }] => Content::Text(text.clone()),
                        _ => Content::Parts(parts),
                    };
                    messages.push(Message {
                        role: "user".into(),
                        content: Some(content),
                        ..Message::default()
                    });
                }
            }
            "model" => {
                let mut text = String::new();
                let mut calls = Vec::new();
                for p in content.parts {
                    if let Some(call) = p.function_call {
                        let id = call.id.filter(|id| !id.is_empty()).unwrap_or_else(|| {
                            next_call += 1;
                            format!("call_{next_call}")
                        });
                        pending
                            .entry(call.name.clone())
                            .or_default()
                            .push_back(id.clone());
                        calls.push(ToolCall {
                            id,
                            kind: "function".into(),
                            function: FunctionCall {
                                name: call.name,
                                arguments: call.args.to_string(),
                            },
                        });
                    } else if p.thought != Some(true)
                        && let Some(t) = p.text
                    {
                        text.push_str(&t);
                    }
                }
                messages.push(Message {
                    role: "assistant".into(),
                    content: (!text.is_empty() || calls.is_empty()).then_some(Content::Text(text)),
                    tool_calls: (!calls.is_empty()).then_some(calls),
                    ..Message::default()
                });
            }
            other => {
                return Err(ConvertError::new(format!("unknown content role '{other}'")));
            }
        }
    }
    let mut tools = Vec::new();
    for tool in req.tools.unwrap_or_default() {
        if let Some(name) = tool.other.keys().next() {
            return Err(ConvertError::new(format!(
                "the built-in tool '{name}' cannot be expressed for this model"
            )));
        }
        for f in tool.function_declarations.unwrap_or_default() {
            let parameters = f
                .parameters_json_schema
                .or(f.parameters.map(lowercase_types));
            tools.push(Tool {
                kind: "function".into(),
                function: FunctionDef {
                    name: f.name,
                    description: f.description,
                    parameters,
                    strict: None,
                },
            });
        }
    }
    let tool_choice = req
        .tool_config
        .and_then(|c| c.function_calling_config)
        .and_then(|c| {
            let choice = match c.mode.as_deref() {
                Some("NONE") => ToolChoice::None,
                Some("ANY") => match c.allowed_function_names.as_deref() {
                    Some([one]) => ToolChoice::Function(one.clone()),
                    _ => ToolChoice::Required,
                },
                Some("AUTO") => ToolChoice::Auto,
                _ => return None,
            };
            Some(choice.to_openai())
        });
    let config = req.generation_config.unwrap_or_default();
    if config.candidate_count.is_some_and(|n| n != 1) {
        return Err(ConvertError::new(
            "'candidateCount' above 1 cannot be expressed for this model",
        ));
    }
    if config
        .response_modalities
        .as_ref()
        .is_some_and(|m| m.iter().any(|x| !x.eq_ignore_ascii_case("text")))
    {
        return Err(ConvertError::new(
            "'responseModalities' other than TEXT cannot be expressed for this model",
        ));
    }
    let response_format = match config.response_mime_type.as_deref() {
        Some("application/json") => {
            let schema = config
                .response_json_schema
                .or(config.response_schema.map(lowercase_types));
            Some(match schema {
                Some(schema) => ResponseFormat::JsonSchema {
                    json_schema: JsonSchema {
                        name: "response".into(),
                        schema: Some(schema),
                        strict: None,
                    },
                },
                None => ResponseFormat::JsonObject,
            })
        }
        Some("text/plain") | None => None,
        Some(other) => {
            return Err(ConvertError::new(format!(
                "responseMimeType '{other}' cannot be expressed for this model"
            )));
        }
    };
    // A budget of -1 is "dynamic" (the model decides): no effort is named.
    let reasoning_effort = config.thinking_config.and_then(|t| {
        let effort = match (t.thinking_level.as_deref(), t.thinking_budget) {
            (Some(level), _) => match level.to_ascii_lowercase().as_str() {
                "minimal" => "minimal",
                "low" => "low",
                "medium" => "medium",
                _ => "high",
            },
            (None, Some(0)) => "none",
            (None, Some(b)) if b > 0 => super::anthropic_chat::effort_for_budget(b),
            _ => return None,
        };
        Some(effort.to_owned())
    });
    Ok(ChatRequest {
        model: model.to_owned(),
        messages,
        max_completion_tokens: config.max_output_tokens,
        temperature: config.temperature,
        top_p: config.top_p,
        top_k: config.top_k,
        stop: config.stop_sequences.map(chat::Stop::Many),
        stream: Some(stream),
        stream_options: stream.then(|| json!({"include_usage": true})),
        tools: (!tools.is_empty()).then_some(tools),
        tool_choice,
        response_format,
        reasoning_effort,
        seed: config.seed,
        presence_penalty: config.presence_penalty,
        frequency_penalty: config.frequency_penalty,
        ..ChatRequest::default()
    })
}

fn part_to_chat(p: GPart) -> Result<Part, ConvertError> {
    if let Some(text) = p.text {
        return Ok(Part::Text { text });
    }
    if let Some(blob) = p.inline_data {
        if let Some(format) = blob.mime_type.strip_prefix("audio/") {
            return Ok(Part::InputAudio {
                input_audio: json!({"data": blob.data, "format": format}),
            });
        }
        if !blob.mime_type.starts_with("image/") {
            return Err(ConvertError::new(format!(
                "inline data of type '{}' cannot be expressed for this model",
                blob.mime_type
            )));
        }
        return Ok(Image::Inline {
            media_type: blob.mime_type,
            data: blob.data,
        }
        .into_part());
    }
    if let Some(file) = p.file_data {
        let image = file
            .mime_type
            .as_deref()
            .is_none_or(|m| m.starts_with("image/"));
        if !image || file.file_uri.contains("generativelanguage.googleapis.com") {
            return Err(ConvertError::new(
                "files uploaded to Google (or other than images) cannot be read by this model: send the image inline",
            ));
        }
        return Image::from_url(&file.file_uri).map(Image::into_part);
    }
    Err(ConvertError::new(
        "this part (function call, code) cannot stand in a user message for this model",
    ))
}

/// Gemini's OpenAPI schemas spell types in capitals (`OBJECT`); JSON Schema wants them
/// in lower case.
fn lowercase_types(mut v: Value) -> Value {
    match &mut v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if let (true, Value::String(s)) = (k == "type", &mut *child) {
                    *s = s.to_ascii_lowercase();
                } else {
                    *child = lowercase_types(std::mem::take(child));
                }
            }
        }
        Value::Array(items) => {
            for item in items.iter_mut() {
                *item = lowercase_types(std::mem::take(item));
            }
        }
        _ => {}
    }
    v
}

// ---- whole answers --------------------------------------------------------------

/// A Gemini answer as a chat completion.
pub fn response_to_chat(r: GenerateResponse) -> ChatCompletion {
    let blocked = r.blocked();
    let response_id = r.response_id.clone();
    let candidate = r.candidates.into_iter().next().unwrap_or_default();
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut calls = Vec::new();
    for p in candidate.content.parts {
        if let Some(call) = p.function_call {
            let id = call
                .id
                .unwrap_or_else(|| call_id(response_id.as_deref(), calls.len() + 1));
            calls.push(ToolCall {
                id,
                kind: "function".into(),
                function: FunctionCall {
                    name: call.name,
                    arguments: call.args.to_string(),
                },
            });
        } else if let Some(t) = p.text {
            if p.thought == Some(true) {
                reasoning.push_str(&t);
            } else {
                text.push_str(&t);
            }
        }
    }
    let finish = if blocked {
        Some("content_filter".to_owned())
    } else {
        candidate
            .finish_reason
            .as_deref()
            .map(|f| finish_reason(f, !calls.is_empty()).to_owned())
    };
    ChatCompletion {
        id: r.response_id.unwrap_or_else(|| "gemini".to_owned()),
        object: "chat.completion".into(),
        created: chat::now(),
        model: r.model_version.unwrap_or_default(),
        choices: vec![Choice {
            index: 0,
            message: Message {
                role: "assistant".into(),
                content: (!text.is_empty() || calls.is_empty()).then_some(Content::Text(text)),
                tool_calls: (!calls.is_empty()).then_some(calls),
                reasoning_content: (!reasoning.is_empty()).then_some(reasoning),
                ..Message::default()
            },
            finish_reason: finish,
        }],
        usage: r.usage_metadata.map(GUsage::to_chat),
    }
}

/// A chat completion as a Gemini answer.
pub fn response_from_chat(c: ChatCompletion) -> GenerateResponse {
    let choice = c.choices.into_iter().next().unwrap_or_default();
    let mut parts = Vec::new();
    if let Some(r) = choice.message.reasoning_content.filter(|r| !r.is_empty()) {
        parts.push(GPart {
            text: Some(r),
            thought: Some(true),
            ..GPart::default()
        });
    }
    if let Some(t) = choice
        .message
        .content
        .map(|c| c.text())
        .or(choice.message.refusal)
        .filter(|t| !t.is_empty())
    {
        parts.push(text_part(t));
    }
    for call in choice.message.tool_calls.unwrap_or_default() {
        parts.push(function_call_part(
            call.id,
            call.function.name,
            &call.function.arguments,
        ));
    }
    GenerateResponse {
        candidates: vec![Candidate {
            content: GContent {
                role: Some("model".into()),
                parts,
            },
            finish_reason: Some(
                gemini_finish(choice.finish_reason.as_deref().unwrap_or("stop")).into(),
            ),
            index: 0,
        }],
        usage_metadata: c.usage.as_ref().map(GUsage::from_chat),
        model_version: Some(c.model),
        response_id: Some(c.id),
        prompt_feedback: None,
    }
}

fn function_call_part(id: String, name: String, arguments: &str) -> GPart {
    GPart {
        function_call: Some(GFunctionCall {
            id: Some(id),
            name,
            args: chat::parse_arguments(arguments),
        }),
        ..GPart::default()
    }
}

// ---- streams --------------------------------------------------------------------

/// Gemini stream chunks → chat chunks.
#[derive(Debug, Default)]
pub struct GeminiToChat {
    started: bool,
    id: String,
    model: String,
    created: i64,
    calls: i64,
    usage: Option<GUsage>,
    finish: Option<String>,
    done: bool,
}

impl GeminiToChat {
    pub fn new() -> Self {
        GeminiToChat {
            created: chat::now(),
            ..Self::default()
        }
    }

    fn chunk(&self, delta: Delta) -> ChatChunk {
        ChatChunk::delta(&self.id, &self.model, self.created, delta)
    }

    /// Converts one decoded chunk.
    pub fn push(&mut self, r: GenerateResponse, out: &mut Vec<Piece>) {
        if !self.started {
            self.started = true;
            self.id = r
                .response_id
                .as_deref()
                .map_or_else(|| "gemini".to_owned(), str::to_owned);
            self.model = r.model_version.clone().unwrap_or_default();
            out.push(Piece::Chunk(self.chunk(Delta {
                role: Some("assistant".into()),
                content: Some(String::new()),
                ..Delta::default()
            })));
        }
        if let Some(u) = r.usage_metadata {
            self.usage = Some(u);
        }
        if r.blocked() {
            // The prompt was refused before any output: the stream ends here.
            self.finish = Some("content_filter".to_owned());
            let mut chunk = self.chunk(Delta::default());
            if let Some(c) = chunk.choices.first_mut() {
                c.finish_reason = Some("content_filter".to_owned());
            }
            out.push(Piece::Chunk(chunk));
            return;
        }
        let response_id = r.response_id.clone();
        let Some(candidate) = r.candidates.into_iter().next() else {
            return;
        };
        for p in candidate.content.parts {
            if let Some(call) = p.function_call {
                let index = self.calls;
                self.calls += 1;
                out.push(Piece::Chunk(self.chunk(Delta {
                    tool_calls: Some(vec![ToolCallDelta {
                        index,
                        id: Some(call.id.unwrap_or_else(|| {
                            call_id(
                                response_id.as_deref(),
                                usize::try_from(index + 1).unwrap_or(0),
                            )
                        })),
                        kind: Some("function".into()),
                        function: Some(FunctionDelta {
                            name: Some(call.name),
                            arguments: Some(call.args.to_string()),
                        }),
                    }]),
                    ..Delta::default()
                })));
            } else if let Some(t) = p.text.filter(|t| !t.is_empty()) {
                let delta = if p.thought == Some(true) {
                    Delta {
                        reasoning_content: Some(t),
                        ..Delta::default()
                    }
                } else {
                    Delta {
                        content: Some(t),
                        ..Delta::default()
                    }
                };
                out.push(Piece::Chunk(self.chunk(delta)));
            }
        }
        if let Some(f) = candidate.finish_reason {
            let finish = finish_reason(&f, self.calls > 0).to_owned();
            self.finish = Some(finish.clone());
            let mut chunk = self.chunk(Delta::default());
            if let Some(c) = chunk.choices.first_mut() {
                c.finish_reason = Some(finish);
            }
            out.push(Piece::Chunk(chunk));
        }
    }

    /// The upstream ended (Gemini streams have no end marker).
    pub fn finish(&mut self, out: &mut Vec<Piece>) {
        if self.done || self.finish.is_none() {
            return;
        }
        self.done = true;
        let mut chunk = self.chunk(Delta::default());
        chunk.choices.clear();
        chunk.usage = Some(self.usage.unwrap_or_default().to_chat());
        out.push(Piece::Chunk(chunk));
        out.push(Piece::Done);
    }
}

/// Chat chunks → Gemini stream chunks. Function calls go out whole, once their
/// arguments are complete.
#[derive(Debug, Default)]
pub struct ChatToGemini {
    id: String,
    model: String,
    calls: BTreeMap<i64, (String, String, String)>,
    finish: Option<String>,
    usage: Option<ChatUsage>,
    done: bool,
}

impl ChatToGemini {
    pub fn new() -> Self {
        Self::default()
    }

    fn emit(&self, parts: Vec<GPart>, finish: Option<String>, out: &mut Events) {
        let r = GenerateResponse {
            candidates: vec![Candidate {
                content: GContent {
                    role: Some("model".into()),
                    parts,
                },
                finish_reason: finish,
                index: 0,
            }],
            usage_metadata: self.usage.as_ref().map(GUsage::from_chat),
            model_version: Some(self.model.clone()),
            response_id: Some(self.id.clone()),
            prompt_feedback: None,
        };
        out.json(&r);
    }

    /// Converts one piece of the pivot stream.
    pub fn push(&mut self, piece: Piece, out: &mut Events) {
        match piece {
            Piece::Chunk(chunk) => self.push_chunk(chunk, out),
            Piece::Done => self.finish(out),
            Piece::Error(message) => out.json(
                &json!({"error": {"code": 502, "message": message, "status": "UNAVAILABLE"}}),
            ),
        }
    }

    fn push_chunk(&mut self, chunk: ChatChunk, out: &mut Events) {
        if self.id.is_empty() {
            self.id = chunk.id.clone();
            self.model = chunk.model.clone();
        }
        if let Some(u) = chunk.usage {
            self.usage = Some(u);
        }
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            let d = choice.delta;
            let mut parts = Vec::new();
            if let Some(r) = d.reasoning_content.filter(|r| !r.is_empty()) {
                parts.push(GPart {
                    text: Some(r),
                    thought: Some(true),
                    ..GPart::default()
                });
            }
            if let Some(t) = d.content.or(d.refusal).filter(|t| !t.is_empty()) {
                parts.push(text_part(t));
            }
            for call in d.tool_calls.unwrap_or_default() {
                let entry = self.calls.entry(call.index).or_default();
                if let Some(id) = call.id {
                    entry.0 = id;
                }
                if let Some(f) = call.function {
                    if let Some(name) = f.name {
                        entry.1 = name;
                    }
                    if let Some(args) = f.arguments {
                        entry.2.push_str(&args);
                    }
                }
            }
            if !parts.is_empty() {
                // Usage goes only on the last chunk.
                let usage = self.usage.take();
                self.emit(parts, None, out);
                self.usage = usage;
            }
            if let Some(f) = choice.finish_reason {
                self.finish = Some(f);
            }
        }
    }

    /// `[DONE]` or the end of the upstream: the calls, the finish reason and usage.
    pub fn finish(&mut self, out: &mut Events) {
        if self.done || (self.finish.is_none() && self.usage.is_none()) {
            return;
        }
        self.done = true;
        let parts: Vec<GPart> = std::mem::take(&mut self.calls)
            .into_values()
            .map(|(id, name, args)| function_call_part(id, name, &args))
            .collect();
        let parts = if parts.is_empty() {
            vec![text_part(String::new())]
        } else {
            parts
        };
        let finish = gemini_finish(self.finish.as_deref().unwrap_or("stop")).to_owned();
        self.emit(parts, Some(finish), out);
    }
}
