//! The Anthropic Messages protocol, as far as the relay needs to read it: usage and
//! stop reason from an answer, and from a stream of `message_start` /
//! `content_block_delta` / `message_delta` / `message_stop` events.

use billing::Usage;
use serde::Deserialize;
use serde_json::Value;

/// Anthropic's `usage` object. Cache reads and writes are reported apart from
/// `input_tokens`; all of them are prompt tokens.
#[derive(Debug, Default, Deserialize, Clone, Copy)]
pub struct AnthropicUsage {
    #[serde(default)]
    pub input_tokens: Option<i64>,
    #[serde(default)]
    pub output_tokens: Option<i64>,
    #[serde(default)]
    pub cache_creation_input_tokens: Option<i64>,
    #[serde(default)]
    pub cache_read_input_tokens: Option<i64>,
}

impl AnthropicUsage {
    /// Prompt tokens (input + cache reads + cache writes), the cache reads and the
    /// cache writes.
    pub fn prompt(&self) -> (i64, i64) {
        let read = self.cache_read_input_tokens.unwrap_or(0);
        let prompt = self
            .input_tokens
            .unwrap_or(0)
            .saturating_add(read)
            .saturating_add(self.cache_creation_input_tokens.unwrap_or(0));
        (prompt, read)
    }

    pub fn to_usage(&self) -> Usage {
        let (prompt, cached) = self.prompt();
        Usage {
            prompt_tokens: prompt,
            completion_tokens: self.output_tokens.unwrap_or(0),
            cached_tokens: cached,
            cache_write_tokens: self.cache_creation_input_tokens.unwrap_or(0).max(0),
            ..Usage::default()
        }
    }
}

/// What the relay reads of a complete Messages answer.
#[derive(Debug, Deserialize)]
pub struct MessageSummary {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub stop_reason: Option<String>,
    #[serde(default)]
    pub usage: Option<AnthropicUsage>,
    #[serde(default)]
    pub content: Option<Vec<Value>>,
}

impl MessageSummary {
    /// Parses a complete answer; `None` when it is not a message.
    pub fn parse(body: &[u8]) -> Option<Self> {
        let m: MessageSummary = serde_json::from_slice(body).ok()?;
        (m.kind.as_deref() == Some("message")).then_some(m)
    }

    /// The text of every content block (text, thinking, tool input).
    pub fn delivered_text(&self) -> String {
        let mut out = String::new();
        for block in self.content.as_deref().unwrap_or_default() {
            append_block_text(block, &mut out);
        }
        out
    }
}

fn append_block_text(block: &Value, out: &mut String) {
    for field in ["text", "thinking", "partial_json"] {
        if let Some(s) = block.get(field).and_then(Value::as_str) {
            out.push_str(s);
        }
    }
    if let Some(input) = block.get("input").filter(|v| !v.is_null()) {
        out.push_str(&input.to_string());
    }
}

/// Usage and state gathered from a Messages stream.
#[derive(Debug, Default)]
pub struct MessagesStream {
    /// From `message_start`: the prompt side.
    pub start: Option<AnthropicUsage>,
    /// From the last `message_delta`: cumulative output tokens.
    pub output_tokens: Option<i64>,
}

impl MessagesStream {
    /// Reads one event's JSON; returns (id, model, stop reason, text, done, error).
    pub fn observe(&mut self, data: &Value, delivered: &mut String) -> StreamFacts {
        let mut facts = StreamFacts::default();
        match data.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                let msg = data.get("message");
                facts.id = msg
                    .and_then(|m| m.get("id"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                facts.model = msg
                    .and_then(|m| m.get("model"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                if let Some(u) = msg.and_then(|m| m.get("usage")) {
                    self.start = serde_json::from_value(u.clone()).ok();
                }
            }
            Some("content_block_start") => {
                if let Some(block) = data.get("content_block") {
                    append_block_text(block, delivered);
                }
            }
            Some("content_block_delta") => {
                if let Some(delta) = data.get("delta") {
                    append_block_text(delta, delivered);
                }
            }
            Some("message_delta") => {
                facts.stop_reason = data
                    .pointer("/delta/stop_reason")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                if let Some(u) = data.get("usage") {
                    let u: AnthropicUsage = serde_json::from_value(u.clone()).unwrap_or_default();
                    if let Some(out) = u.output_tokens {
                        self.output_tokens = Some(out);
                    }
                    // Some upstreams report input here rather than in message_start.
                    if u.input_tokens.is_some_and(|n| n > 0) {
                        self.start = Some(u);
                    }
                }
            }
            Some("message_stop") => facts.done = true,
            Some("error") => facts.error = true,
            _ => {}
        }
        facts
    }

    /// The stream's usage once its output count is known.
    pub fn usage(&self) -> Option<Usage> {
        let out = self.output_tokens?;
        Some(Usage {
            completion_tokens: out,
            ..self.start.map(|s| s.to_usage()).unwrap_or_default()
        })
    }
}

/// What one Messages stream event told the relay.
#[derive(Debug, Default)]
pub struct StreamFacts {
    pub id: Option<String>,
    pub model: Option<String>,
    pub stop_reason: Option<String>,
    pub done: bool,
    pub error: bool,
}

/// Anthropic's `error.type` for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_complete_answer_gives_usage_with_cache_reads_as_cached_prompt_tokens() {
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","usage":{"input_tokens":10,"output_tokens":40,"cache_read_input_tokens":80,"cache_creation_input_tokens":5}}"#;
        let m = MessageSummary::parse(body).unwrap();
        let u = m.usage.unwrap().to_usage();
        assert_eq!(
            (u.prompt_tokens, u.cached_tokens, u.completion_tokens),
            (95, 80, 40)
        );
        assert_eq!(m.delivered_text(), "Hi");
        assert!(MessageSummary::parse(br#"{"type":"error","error":{}}"#).is_none());
    }

    #[test]
    fn a_stream_takes_input_from_message_start_and_output_from_the_last_message_delta() {
        let mut s = MessagesStream::default();
        let mut text = String::new();
        let f = s.observe(&json!({"type":"message_start","message":{"id":"msg_9","model":"claude-x","usage":{"input_tokens":12,"output_tokens":1}}}), &mut text);
        assert_eq!(f.id.as_deref(), Some("msg_9"));
        assert!(s.usage().is_none());
        s.observe(&json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}), &mut text);
        let f = s.observe(&json!({"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":30}}), &mut text);
        assert_eq!(f.stop_reason.as_deref(), Some("end_turn"));
        assert!(s.observe(&json!({"type":"message_stop"}), &mut text).done);
        let u = s.usage().unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (12, 30));
        assert_eq!(text, "Hello");
    }
}
