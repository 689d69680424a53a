//! The OpenAI chat protocol, as far as the relay needs to read it: the request's head
//! (model, stream, limits), the fewest body edits for the upstream, and usage from a
//! response or a stream of chunks.

use billing::Usage;
use bytes::Bytes;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Map, Value};

use crate::RelayError;
use crate::anthropic::MessagesStream;
use crate::protocol::Protocol;

/// What the relay reads of a chat request; the rest of the body passes through.
#[derive(Debug, Deserialize)]
pub struct ChatHead {
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    /// The Responses API's output limit.
    #[serde(default)]
    pub max_output_tokens: Option<i64>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub n: Option<i64>,
    /// Legacy completions: generated `best_of` times, billed for all.
    #[serde(default)]
    pub best_of: Option<i64>,
    /// The Responses API's `background`: refused, since a queued answer carries no
    /// usage and the relay does not serve background retrieval.
    #[serde(default)]
    background: Option<Value>,
    /// The protocol the body was read as (which output-limit fields it has).
    #[serde(skip)]
    proto: Protocol,
    #[serde(default)]
    messages: Option<IgnoredAny>,
    #[serde(default)]
    prompt: Option<IgnoredAny>,
    #[serde(default)]
    input: Option<IgnoredAny>,
}

/// OpenAI's ceiling on `n` and `best_of`.
const MAX_CHOICES: i64 = 128;

/// `stream_options` of a chat request.
#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

impl ChatHead {
    /// Parses and validates a chat request body.
    pub fn parse(body: &[u8]) -> Result<Self, RelayError> {
        Self::parse_for(Protocol::OpenAiChat, body)
    }

    /// Parses and validates a request body of `proto` (model and its required field).
    pub fn parse_for(proto: Protocol, body: &[u8]) -> Result<Self, RelayError> {
        let mut head: ChatHead = serde_json::from_slice(body).map_err(|e| {
            RelayError::InvalidRequest(format!("request body is not valid JSON: {e}"))
        })?;
        crate::ambiguity::check_json(body)?;
        if proto == Protocol::OpenAiModerations && head.model.as_deref().is_none_or(str::is_empty) {
            // OpenAI's default when a moderation request names no model.
            head.model = Some("omni-moderation-latest".to_owned());
        }
        if head.model.as_deref().is_none_or(str::is_empty) {
            return Err(RelayError::InvalidRequest("'model' is required".into()));
        }
        let present = match proto.required_field() {
            "prompt" => head.prompt.is_some(),
            "input" => head.input.is_some(),
            _ => head.messages.is_some(),
        };
        if !present {
            return Err(RelayError::InvalidRequest(format!(
                "'{}' is required",
                proto.required_field()
            )));
        }
        head.proto = proto;
        head.check_choices()?;
        head.check_background()?;
        Ok(head)
    }

    /// A Responses request run in the background is refused: the upstream answers
    /// `queued` without usage and runs the whole job, which the relay could not charge.
    fn check_background(&self) -> Result<(), RelayError> {
        let background = self
            .background
            .as_ref()
            .is_some_and(|b| *b != Value::Bool(false));
        if self.proto == Protocol::OpenAiResponses && background {
            return Err(RelayError::InvalidRequest(
                "'background' is not supported: the gateway does not relay background responses"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Choices beyond OpenAI's own ceiling (128) are refused, not held for less.
    fn check_choices(&self) -> Result<(), RelayError> {
        for (name, value) in [("n", self.n), ("best_of", self.best_of)] {
            if value.is_some_and(|v| !(1..=MAX_CHOICES).contains(&v)) {
                return Err(RelayError::InvalidRequest(format!(
                    "'{name}' must be between 1 and {MAX_CHOICES}"
                )));
            }
        }
        Ok(())
    }

    /// How many answers the upstream generates (and bills): `n`, or `best_of` when
    /// larger.
    pub fn choices(&self) -> i64 {
        self.n.max(self.best_of).unwrap_or(1).clamp(1, MAX_CHOICES)
    }

    pub fn model(&self) -> &str {
        self.model.as_deref().unwrap_or_default()
    }

    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// Whether the client itself asked for the usage chunk of a stream.
    pub fn wants_stream_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// A Gemini request's head: the model and the method come from the path, the
    /// output limit from `generationConfig.maxOutputTokens`.
    pub fn gemini(body: &[u8], model: &str, stream: bool) -> Result<Self, RelayError> {
        // Google accepts snake_case as well; both spellings at once are refused
        // (serde's duplicate field), so the hold reads what the upstream will.
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Body {
            #[serde(default)]
            contents: Option<IgnoredAny>,
            /// Google's `GenerateContentRequest.model`, as `models/{model}`.
            #[serde(default)]
            model: Option<String>,
            #[serde(default, alias = "generation_config")]
            generation_config: Option<GenerationConfig>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct GenerationConfig {
            #[serde(default, alias = "max_output_tokens")]
            max_output_tokens: Option<i64>,
            #[serde(default, alias = "candidate_count")]
            candidate_count: Option<i64>,
        }
        let b: Body = serde_json::from_slice(body).map_err(|e| {
            RelayError::InvalidRequest(format!("request body is not valid JSON: {e}"))
        })?;
        crate::ambiguity::check_gemini(body)?;
        if let Some(named) = &b.model
            && named.strip_prefix("models/").unwrap_or(named) != model
        {
            return Err(RelayError::InvalidRequest(
                "the body's 'model' differs from the model in the path".into(),
            ));
        }
        if b.contents.is_none() {
            return Err(RelayError::InvalidRequest("'contents' is required".into()));
        }
        if model.is_empty() {
            return Err(RelayError::InvalidRequest(
                "the model is missing from the path".into(),
            ));
        }
        let config = b.generation_config;
        Ok(ChatHead {
            model: Some(model.to_owned()),
            stream: Some(stream),
            max_tokens: config.as_ref().and_then(|c| c.max_output_tokens),
            max_completion_tokens: None,
            max_output_tokens: None,
            stream_options: None,
            n: config.as_ref().and_then(|c| c.candidate_count),
            best_of: None,
            background: None,
            proto: Protocol::GeminiGenerate,
            messages: None,
            prompt: None,
            input: None,
        })
        .and_then(|head| head.check_choices().map(|()| head))
    }

    /// A form upload's head, from its `model` and `n` fields.
    pub fn form(content_type: Option<&str>, body: &[u8]) -> Result<Self, RelayError> {
        let boundary = crate::multipart::boundary(content_type.unwrap_or_default())?;
        let fields = crate::multipart::fields(body, &boundary)?;
        crate::ambiguity::check_form(&fields)?;
        let text = |name: &str| crate::multipart::text_field(body, &fields, name);
        let model = text("model")
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .ok_or_else(|| RelayError::InvalidRequest("'model' is required".into()))?;
        if !fields.iter().any(|f| f.filename.is_some()) {
            return Err(RelayError::InvalidRequest(
                "the form has no file to work on".into(),
            ));
        }
        let n =
            match text("n") {
                None => None,
                Some(n) => Some(n.trim().parse::<i64>().map_err(|_| {
                    RelayError::InvalidRequest("'n' must be a whole number".into())
                })?),
            };
        // A streamed transcription (SSE) would carry no usage the relay can meter.
        if text("stream").is_some_and(|s| s.trim().eq_ignore_ascii_case("true")) {
            return Err(RelayError::InvalidRequest(
                "'stream' is not supported on this endpoint".into(),
            ));
        }
        let head = ChatHead {
            model: Some(model.to_owned()),
            stream: None,
            max_tokens: None,
            max_completion_tokens: None,
            max_output_tokens: None,
            stream_options: None,
            n,
            best_of: None,
            background: None,
            proto: Protocol::OpenAiImageEdits,
            messages: None,
            prompt: None,
            input: None,
        };
        head.check_choices()?;
        Ok(head)
    }

    /// The most output tokens the client allows, if it said: the largest of its
    /// protocol's own limit fields (whichever one an upstream or a converter reads, it
    /// is covered); fields of other protocols do not count.
    pub fn max_output(&self) -> Option<i64> {
        let limit = match self.proto {
            Protocol::OpenAiChat => self.max_completion_tokens.max(self.max_tokens),
            Protocol::OpenAiResponses => self.max_output_tokens,
            _ => self.max_tokens,
        };
        limit.filter(|n| *n > 0)
    }
}

/// The body to send upstream: the client's bytes untouched when nothing must change,
/// else with the mapped model and (for streams) `stream_options.include_usage`.
pub fn upstream_body(
    proto: Protocol,
    raw: &Bytes,
    head: &ChatHead,
    upstream_model: &str,
) -> Result<Bytes, RelayError> {
    if proto == Protocol::GeminiGenerate {
        // The model is named in the path; the body goes as the client sent it.
        return Ok(raw.clone());
    }
    // Only OpenAI streams need asking for usage; Anthropic streams always carry it.
    let streams_usage = matches!(
        proto,
        Protocol::OpenAiChat | Protocol::OpenAiCompletions | Protocol::OpenAiFim
    );
    let need_usage = streams_usage && head.is_stream() && !head.wants_stream_usage();
    if upstream_model == head.model() && !need_usage {
        return Ok(raw.clone());
    }
    let mut obj: Map<String, Value> = serde_json::from_slice(raw).map_err(|e| {
        RelayError::InvalidRequest(format!("request body is not a JSON object: {e}"))
    })?;
    obj.insert("model".into(), Value::from(upstream_model));
    if need_usage {
        let opts = obj
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        if !opts.is_object() {
            *opts = Value::Object(Map::new());
        }
        if let Value::Object(o) = opts {
            o.insert("include_usage".into(), Value::Bool(true));
        }
    }
    serde_json::to_vec(&obj)
        .map(Bytes::from)
        .map_err(|_| RelayError::Internal)
}

/// OpenAI's `usage` object.
#[derive(Debug, Default, Deserialize)]
pub struct OpenAiUsage {
    #[serde(default)]
    pub prompt_tokens: i64,
    #[serde(default)]
    pub completion_tokens: i64,
    #[serde(default)]
    pub prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    pub completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Debug, Default, Deserialize)]
pub struct PromptDetails {
    #[serde(default)]
    pub cached_tokens: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
pub struct CompletionDetails {
    #[serde(default)]
    pub reasoning_tokens: Option<i64>,
}

impl From<&OpenAiUsage> for Usage {
    fn from(u: &OpenAiUsage) -> Self {
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            cached_tokens: u
                .prompt_tokens_details
                .as_ref()
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            reasoning_tokens: u
                .completion_tokens_details
                .as_ref()
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
            ..Usage::default()
        }
    }
}

/// The Responses API's `usage` object.
#[derive(Debug, Default, Deserialize)]
pub struct ResponsesUsage {
    #[serde(default)]
    pub input_tokens: i64,
    #[serde(default)]
    pub output_tokens: i64,
    #[serde(default)]
    pub input_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    pub output_tokens_details: Option<CompletionDetails>,
}

impl From<&ResponsesUsage> for Usage {
    fn from(u: &ResponsesUsage) -> Self {
        Usage {
            prompt_tokens: u.input_tokens,
            completion_tokens: u.output_tokens,
            cached_tokens: u
                .input_tokens_details
                .as_ref()
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            reasoning_tokens: u
                .output_tokens_details
                .as_ref()
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
            ..Usage::default()
        }
    }
}

/// What the relay reads of a Responses object (an answer, or the `response` of a
/// stream's lifecycle events).
#[derive(Debug, Default, Deserialize)]
pub struct ResponseSummary {
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
    #[serde(default)]
    pub output: Option<Vec<Value>>,
}

impl ResponseSummary {
    /// Parses a Responses object; `None` when it is not one.
    pub fn parse(body: &[u8]) -> Option<Self> {
        let r: ResponseSummary = serde_json::from_slice(body).ok()?;
        (r.object.as_deref() == Some("response")).then_some(r)
    }

    /// The text of every output item (messages, reasoning summaries, call arguments).
    pub fn delivered_text(&self) -> String {
        let mut out = String::new();
        for item in self.output.as_deref().unwrap_or_default() {
            for part in item
                .get("content")
                .or_else(|| item.get("summary"))
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                if let Some(t) = part.get("text").and_then(Value::as_str) {
                    out.push_str(t);
                }
            }
            if let Some(a) = item.get("arguments").and_then(Value::as_str) {
                out.push_str(a);
            }
        }
        out
    }
}

/// What the relay reads of a chat completion or of one stream chunk.
#[derive(Debug, Default, Deserialize)]
pub struct ChatSummary {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub usage: Option<OpenAiUsage>,
    #[serde(default)]
    pub choices: Option<Vec<ChoiceSummary>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ChoiceSummary {
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(default)]
    pub delta: Option<Delta>,
    #[serde(default)]
    pub message: Option<Delta>,
    /// Legacy completions carry their text here.
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct Delta {
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub reasoning_content: Option<String>,
    /// OpenRouter's and vLLM's name for the reasoning text.
    #[serde(default)]
    pub reasoning: Option<String>,
    /// Audio output (its transcript and data count as delivered).
    #[serde(default)]
    pub audio: Option<Value>,
    #[serde(default)]
    pub tool_calls: Option<Value>,
}

impl Delta {
    /// Appends the text this delta (or message) carries.
    pub fn append_text(&self, out: &mut String) {
        for part in [&self.content, &self.reasoning_content, &self.reasoning]
            .into_iter()
            .flatten()
        {
            out.push_str(part);
        }
        if let Some(audio) = &self.audio {
            // Audio's words, not its base64 data.
            let words = audio.get("transcript").and_then(Value::as_str);
            out.push_str(words.unwrap_or("[audio]"));
        }
        if let Some(calls) = &self.tool_calls {
            out.push_str(&calls.to_string());
        }
    }
}

impl ChatSummary {
    /// The text of every choice's message (for counting when usage is missing).
    pub fn delivered_text(&self) -> String {
        let mut out = String::new();
        for c in self.choices.as_deref().unwrap_or_default() {
            if let Some(m) = &c.message {
                m.append_text(&mut out);
            }
            if let Some(t) = &c.text {
                out.push_str(t);
            }
        }
        out
    }

    /// Parses a complete (non-stream) chat completion; `None` when it is not one.
    pub fn parse_completion(body: &[u8]) -> Option<Self> {
        let s: ChatSummary = serde_json::from_slice(body).ok()?;
        s.choices.is_some().then_some(s)
    }

    pub fn finish_reason(&self) -> Option<String> {
        self.choices
            .as_ref()?
            .iter()
            .find_map(|c| c.finish_reason.clone())
    }
}

/// Rough output tokens for text the upstream sent without a usage report
/// (about four bytes a token, rounded up).
pub fn estimate_tokens(bytes: usize) -> i64 {
    i64::try_from(bytes.div_ceil(4)).unwrap_or(i64::MAX)
}

/// What a stream event means to the relay.
#[derive(Debug, PartialEq, Eq)]
pub enum EventAction {
    /// Send it to the client.
    Forward,
    /// The usage-only chunk the client did not ask for: read it, do not send it.
    Swallow,
    /// `[DONE]`: send it; the stream is complete.
    Done,
}

/// Reads a chat stream event by event: id, finish reason, usage, and how much text
/// went by (for when no usage report comes).
#[derive(Debug, Default)]
pub struct StreamObserver {
    pub id: Option<String>,
    pub upstream_model: Option<String>,
    pub usage: Option<Usage>,
    pub finish_reason: Option<String>,
    /// The text that went by (content, reasoning, tool-call arguments), for counting
    /// tokens when no usage report comes.
    pub delivered: String,
    pub done: bool,
    pub events: usize,
    /// Which protocol's events these are.
    pub proto: Protocol,
    /// An upstream error event arrived.
    pub upstream_error: bool,
    anthropic: MessagesStream,
}

impl StreamObserver {
    /// Observes one event; `client_wants_usage` decides whether a usage-only chunk is
    /// forwarded.
    pub fn observe(&mut self, event: &[u8], client_wants_usage: bool) -> EventAction {
        self.events += 1;
        let data = crate::sse::event_data(event);
        let data = data.trim();
        if data == "[DONE]" {
            self.done = true;
            return EventAction::Done;
        }
        if data.is_empty() {
            return EventAction::Forward;
        }
        if self.proto == Protocol::AnthropicMessages {
            return self.observe_anthropic(data);
        }
        if self.proto == Protocol::GeminiGenerate {
            return self.observe_gemini(data);
        }
        if self.proto == Protocol::OpenAiResponses {
            return self.observe_responses(data);
        }
        let Ok(chunk) = serde_json::from_str::<ChatSummary>(data) else {
            return EventAction::Forward;
        };
        if self.id.is_none() {
            self.id = chunk.id.clone();
        }
        if self.upstream_model.is_none() {
            self.upstream_model = chunk.model.clone();
        }
        if let Some(f) = chunk.finish_reason() {
            self.finish_reason = Some(f);
        }
        let choices = chunk.choices.as_deref().unwrap_or_default();
        for c in choices {
            if let Some(d) = &c.delta {
                d.append_text(&mut self.delivered);
            }
            if let Some(t) = &c.text {
                self.delivered.push_str(t);
            }
        }
        if let Some(u) = &chunk.usage {
            self.usage = Some(Usage::from(u));
            if choices.is_empty() && !client_wants_usage {
                return EventAction::Swallow;
            }
        }
        EventAction::Forward
    }
}

impl StreamObserver {
    /// A fresh observer for `proto`'s events.
    pub fn new(proto: Protocol) -> Self {
        StreamObserver {
            proto,
            ..StreamObserver::default()
        }
    }

    fn observe_gemini(&mut self, data: &str) -> EventAction {
        let Some(chunk) = crate::gemini::GenerateSummary::parse(data.as_bytes()) else {
            if data.trim_start().starts_with("{\"error\"") {
                self.upstream_error = true;
            }
            return EventAction::Forward;
        };
        if self.id.is_none() {
            self.id = chunk.response_id.clone();
        }
        if self.upstream_model.is_none() {
            self.upstream_model = chunk.model_version.clone();
        }
        if let Some(f) = chunk.finish_reason() {
            self.finish_reason = Some(f);
        }
        chunk.append_text(&mut self.delivered);
        if let Some(u) = &chunk.usage_metadata
            && u.candidates_token_count.is_some()
        {
            self.usage = Some(Usage::from(u));
        }
        EventAction::Forward
    }

    /// A Responses stream: text deltas as they come, the whole response (with usage) on
    /// `response.completed`, `.incomplete` or `.failed`.
    fn observe_responses(&mut self, data: &str) -> EventAction {
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            return EventAction::Forward;
        };
        let kind = v.get("type").and_then(Value::as_str).unwrap_or_default();
        match kind {
            "response.output_text.delta"
            | "response.function_call_arguments.delta"
            | "response.reasoning_summary_text.delta"
            | "response.reasoning_text.delta" => {
                if let Some(d) = v.get("delta").and_then(Value::as_str) {
                    self.delivered.push_str(d);
                }
            }
            "error" => self.upstream_error = true,
            _ => {}
        }
        if let Some(r) = v
            .get("response")
            .and_then(|r| serde_json::from_value::<ResponseSummary>(r.clone()).ok())
        {
            if self.id.is_none() {
                self.id = r.id.clone();
            }
            if self.upstream_model.is_none() {
                self.upstream_model = r.model.clone();
            }
            if let Some(u) = &r.usage {
                self.usage = Some(Usage::from(u));
            }
            if matches!(
                kind,
                "response.completed" | "response.incomplete" | "response.failed"
            ) {
                self.finish_reason = r.status;
                self.done = true;
                return EventAction::Done;
            }
        }
        EventAction::Forward
    }

    fn observe_anthropic(&mut self, data: &str) -> EventAction {
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            return EventAction::Forward;
        };
        let facts = self.anthropic.observe(&v, &mut self.delivered);
        if self.id.is_none() {
            self.id = facts.id;
        }
        if self.upstream_model.is_none() {
            self.upstream_model = facts.model;
        }
        if facts.stop_reason.is_some() {
            self.finish_reason = facts.stop_reason;
        }
        if let Some(u) = self.anthropic.usage() {
            self.usage = Some(u);
        }
        if facts.error {
            self.upstream_error = true;
        }
        if facts.done {
            self.done = true;
            return EventAction::Done;
        }
        EventAction::Forward
    }

    /// Prompt usage known so far (Anthropic's `message_start`), for a stream that ends
    /// before its output count.
    pub fn partial_prompt(&self) -> Option<Usage> {
        self.anthropic.start.map(|s| s.to_usage())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_clients_own_protocols_limit_fields_count_and_the_largest_wins() {
        let chat = ChatHead::parse(
            br#"{"model":"m","messages":[],"max_tokens":64000,"max_completion_tokens":1,"max_output_tokens":1}"#,
        )
        .unwrap();
        assert_eq!(chat.max_output(), Some(64_000));
        // A Responses field on a chat body is no limit: the relay sets its own.
        let foreign =
            ChatHead::parse(br#"{"model":"m","messages":[],"max_output_tokens":1}"#).unwrap();
        assert_eq!(foreign.max_output(), None);
        let responses = ChatHead::parse_for(
            Protocol::OpenAiResponses,
            br#"{"model":"m","input":"x","max_output_tokens":9,"max_tokens":1}"#,
        )
        .unwrap();
        assert_eq!(responses.max_output(), Some(9));
        let messages = ChatHead::parse_for(
            Protocol::AnthropicMessages,
            br#"{"model":"m","messages":[],"max_tokens":32000,"max_completion_tokens":1}"#,
        )
        .unwrap();
        assert_eq!(messages.max_output(), Some(32_000));
    }

    #[test]
    fn best_of_counts_as_choices_and_more_than_128_is_refused() {
        let head = ChatHead::parse_for(
            Protocol::OpenAiCompletions,
            br#"{"model":"m","prompt":"x","best_of":20,"n":2}"#,
        )
        .unwrap();
        assert_eq!(head.choices(), 20);
        for body in [
            &br#"{"model":"m","messages":[],"n":129}"#[..],
            br#"{"model":"m","prompt":"x","best_of":500}"#,
            br#"{"model":"m","messages":[],"n":0}"#,
        ] {
            let proto = if body.windows(6).any(|w| w == b"prompt") {
                Protocol::OpenAiCompletions
            } else {
                Protocol::OpenAiChat
            };
            assert!(ChatHead::parse_for(proto, body).is_err());
        }
    }

    #[test]
    fn a_snake_case_gemini_body_is_held_for_its_candidates_and_limit() {
        let head = ChatHead::gemini(
            br#"{"contents":[],"generation_config":{"candidate_count":8,"max_output_tokens":500}}"#,
            "gemini-2.5-pro",
            false,
        )
        .unwrap();
        assert_eq!((head.choices(), head.max_output()), (8, Some(500)));
        // Both spellings at once: refused, not read one way here and another upstream.
        assert!(
            ChatHead::gemini(
                br#"{"contents":[],"generationConfig":{},"generation_config":{"candidate_count":8}}"#,
                "g",
                false
            )
            .is_err()
        );
    }

    #[test]
    fn reasoning_and_audio_deltas_are_output_that_was_delivered() {
        let mut out = String::new();
        let delta: Delta = serde_json::from_str(
            r#"{"reasoning":"thinking…","audio":{"id":"a","data":"UklGRg==","transcript":"hi"}}"#,
        )
        .unwrap();
        delta.append_text(&mut out);
        assert_eq!(out, "thinking…hi");
    }

    #[test]
    fn a_request_without_model_or_messages_names_the_missing_field() {
        let e = ChatHead::parse(br#"{"messages":[]}"#).unwrap_err();
        assert!(e.to_string().contains("'model'"));
        let e = ChatHead::parse(br#"{"model":"m"}"#).unwrap_err();
        assert!(e.to_string().contains("'messages'"));
        assert!(ChatHead::parse(b"{nope").is_err());
    }

    #[test]
    fn a_responses_request_in_the_background_is_refused_naming_the_field() {
        let parse = |body: &str| ChatHead::parse_for(Protocol::OpenAiResponses, body.as_bytes());
        let e = parse(r#"{"model":"m","input":"hi","background":true}"#).unwrap_err();
        assert!(e.to_string().contains("'background'"), "{e}");
        assert!(parse(r#"{"model":"m","input":"hi","background":"yes"}"#).is_err());
        assert!(parse(r#"{"model":"m","input":"hi","background":false}"#).is_ok());
        assert!(parse(r#"{"model":"m","input":"hi","background":null}"#).is_ok());
    }

    #[test]
    fn a_gemini_body_must_name_the_paths_model_if_it_names_one() {
        let body = |model: &str| {
            format!(
                r#"{{"contents":[],"model":"{model}","generationConfig":{{"maxOutputTokens":9}}}}"#
            )
        };
        let head = ChatHead::gemini(body("models/g-1").as_bytes(), "g-1", false).unwrap();
        assert_eq!((head.model(), head.max_output()), ("g-1", Some(9)));
        assert!(ChatHead::gemini(body("g-1").as_bytes(), "g-1", false).is_ok());
        let e = ChatHead::gemini(body("models/g-pro").as_bytes(), "g-1", false).unwrap_err();
        assert!(e.to_string().contains("'model'"), "{e}");
        let shadowed =
            br#"{"contents":[],"generationConfig":{"maxOutputTokens":9,"MaxOutputTokens":99}}"#;
        assert!(ChatHead::gemini(shadowed, "g-1", false).is_err());
    }

    #[test]
    fn the_body_passes_untouched_when_nothing_changes() {
        let raw = Bytes::from_static(br#"{"model":"m","messages":[]}"#);
        let head = ChatHead::parse(&raw).unwrap();
        assert_eq!(
            upstream_body(Protocol::OpenAiChat, &raw, &head, "m").unwrap(),
            raw
        );
    }

    #[test]
    fn mapping_and_stream_usage_are_the_only_edits() {
        let raw = Bytes::from_static(br#"{"model":"alias","messages":[{"role":"user","content":"hi"}],"stream":true,"temperature":0.5}"#);
        let head = ChatHead::parse(&raw).unwrap();
        let out: Value = serde_json::from_slice(
            &upstream_body(Protocol::OpenAiChat, &raw, &head, "real").unwrap(),
        )
        .unwrap();
        assert_eq!(out["model"], "real");
        assert_eq!(out["stream_options"]["include_usage"], true);
        assert_eq!(out["temperature"], 0.5);
        assert_eq!(out["messages"][0]["content"], "hi");
    }

    #[test]
    fn usage_with_cached_and_reasoning_details_is_read() {
        let body = br#"{"id":"chatcmpl-1","choices":[{"finish_reason":"stop"}],"usage":{"prompt_tokens":100,"completion_tokens":50,"prompt_tokens_details":{"cached_tokens":60},"completion_tokens_details":{"reasoning_tokens":20}}}"#;
        let s = ChatSummary::parse_completion(body).unwrap();
        let u = Usage::from(s.usage.as_ref().unwrap());
        assert_eq!(
            (
                u.prompt_tokens,
                u.completion_tokens,
                u.cached_tokens,
                u.reasoning_tokens
            ),
            (100, 50, 60, 20)
        );
        assert_eq!(s.finish_reason().as_deref(), Some("stop"));
    }

    #[test]
    fn the_usage_chunk_is_swallowed_only_when_the_client_did_not_ask_for_it() {
        let ev = b"data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n";
        let mut o = StreamObserver::default();
        assert_eq!(o.observe(ev, false), EventAction::Swallow);
        assert_eq!(o.usage.unwrap().completion_tokens, 4);
        let mut o = StreamObserver::default();
        assert_eq!(o.observe(ev, true), EventAction::Forward);
        assert_eq!(o.observe(b"data: [DONE]\n\n", true), EventAction::Done);
        assert!(o.done);
    }
}
