//! One upstream stream event, decoded once into its protocol's typed model and shared
//! by metering ([`crate::observe::StreamObserver`]) and conversion
//! ([`crate::convert::StreamConverter`]).

use serde::Deserialize;
use serde_json::Value;

use crate::convert::anthropic_chat::StreamEvent;
use crate::convert::chat::{ChatChunk, ChatUsage};
use crate::convert::gemini_chat::GenerateResponse;
use crate::convert::responses_chat::ResponsesEvent;
use crate::protocol::Protocol;

/// What one SSE event of an upstream said.
#[derive(Debug, Clone)]
pub enum Event {
    /// OpenAI's `[DONE]`.
    Done,
    /// A chat (or legacy completions) chunk.
    Chat(ChatChunk),
    /// A Messages stream event.
    Anthropic(StreamEvent),
    /// A `GenerateContentResponse` chunk.
    Gemini(GenerateResponse),
    /// A Responses stream event.
    Responses(ResponsesEvent),
    /// The upstream reported an error mid-stream; its message, redacted.
    Error(String),
    /// A chat chunk the typed model could not read: forwarded as it is, its usage (if
    /// it has one that reads) still counted.
    Opaque(Option<ChatUsage>),
    /// Nothing to read: an empty event, a comment, or data of no known shape.
    Other,
}

/// Decodes one event's `data` for an upstream speaking `proto`.
pub fn decode(proto: Protocol, data: &str) -> Event {
    let data = data.trim();
    if data.is_empty() {
        return Event::Other;
    }
    if data == "[DONE]" {
        return Event::Done;
    }
    match proto {
        Protocol::AnthropicMessages => match serde_json::from_str::<StreamEvent>(data) {
            Ok(StreamEvent::Error { error }) => Event::Error(crate::error::redact(
                error.message.as_deref().unwrap_or("the upstream failed"),
            )),
            Ok(event) => Event::Anthropic(event),
            Err(_) => error_of(data).map_or(Event::Other, Event::Error),
        },
        Protocol::GeminiGenerate => match serde_json::from_str::<GenerateResponse>(data) {
            Ok(r)
                if !r.candidates.is_empty()
                    || r.usage_metadata.is_some()
                    || r.prompt_feedback.is_some() =>
            {
                Event::Gemini(r)
            }
            _ => error_of(data).map_or(Event::Other, Event::Error),
        },
        Protocol::OpenAiResponses => match serde_json::from_str::<ResponsesEvent>(data) {
            Ok(e) if e.kind.is_empty() => error_of(data).map_or(Event::Responses(e), Event::Error),
            Ok(e) if e.kind == "error" => Event::Error(crate::error::redact(
                serde_json::from_str::<Value>(data)
                    .ok()
                    .as_ref()
                    .and_then(|v| v.get("message"))
                    .and_then(Value::as_str)
                    .unwrap_or("the upstream failed"),
            )),
            Ok(e) => Event::Responses(e),
            Err(_) => error_of(data).map_or(Event::Other, Event::Error),
        },
        _ => match serde_json::from_str::<ChatChunk>(data) {
            // An error payload reads as an empty chunk; OpenRouter's mid-stream error
            // comes with a choice finished as "error".
            Ok(chunk)
                if (chunk.choices.is_empty() && chunk.usage.is_none())
                    || chunk
                        .choices
                        .iter()
                        .any(|c| c.finish_reason.as_deref() == Some("error")) =>
            {
                error_of(data).map_or(Event::Chat(chunk), Event::Error)
            }
            Ok(chunk) => Event::Chat(chunk),
            Err(_) => {
                #[derive(Deserialize)]
                struct UsageOnly {
                    #[serde(default)]
                    usage: Option<ChatUsage>,
                }
                match serde_json::from_str::<UsageOnly>(data) {
                    Ok(u) => Event::Opaque(u.usage),
                    Err(_) => Event::Other,
                }
            }
        },
    }
}

/// The message of an `{"error": …}` payload (an object with a message, or a string).
fn error_of(data: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Payload {
        error: Value,
    }
    let p: Payload = serde_json::from_str(data).ok()?;
    let message = match &p.error {
        Value::Null | Value::Bool(false) => return None,
        Value::String(s) => s.as_str(),
        Value::Object(o) => o
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("the upstream failed"),
        _ => "the upstream failed",
    };
    Some(crate::error::redact(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chat_chunk_with_nulls_and_a_float_created_still_reads() {
        let data = r#"{"id":null,"object":"chat.completion.chunk","created":1.7e9,"model":null,"choices":[{"index":null,"delta":{"role":"assistant","content":"Hi","reasoning":"hm"},"finish_reason":null}]}"#;
        let Event::Chat(chunk) = decode(Protocol::OpenAiChat, data) else {
            panic!("not a chunk")
        };
        assert_eq!(chunk.created, 1_700_000_000);
        assert_eq!(chunk.choices[0].delta.content.as_deref(), Some("Hi"));
        assert_eq!(chunk.choices[0].delta.reasoning.as_deref(), Some("hm"));
    }

    #[test]
    fn a_chunk_the_model_cannot_read_keeps_its_usage() {
        let data = r#"{"choices":[{"delta":{"tool_calls":"odd"}}],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#;
        let Event::Opaque(Some(u)) = decode(Protocol::OpenAiChat, data) else {
            panic!("not opaque")
        };
        assert_eq!((u.prompt_tokens, u.completion_tokens), (3, 4));
    }

    #[test]
    fn an_unnamed_error_on_a_responses_stream_and_openrouters_mid_stream_error_are_errors() {
        for (proto, data) in [
            (
                Protocol::OpenAiResponses,
                r#"{"error":{"message":"boom","type":"server_error"}}"#,
            ),
            (
                Protocol::OpenAiChat,
                r#"{"error":{"message":"boom"},"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}]}"#,
            ),
        ] {
            assert!(
                matches!(decode(proto, data), Event::Error(m) if m == "boom"),
                "{proto:?}"
            );
        }
        assert!(matches!(
            decode(Protocol::OpenAiChat, r#"{"error":500}"#),
            Event::Error(_)
        ));
    }

    #[test]
    fn errors_of_every_protocol_are_errors() {
        for (proto, data) in [
            (
                Protocol::OpenAiChat,
                r#"{"error":{"message":"boom","type":"server_error"}}"#,
            ),
            (
                Protocol::GeminiGenerate,
                r#"{"error":{"code":500,"message":"boom","status":"INTERNAL"}}"#,
            ),
            (
                Protocol::AnthropicMessages,
                r#"{"type":"error","error":{"type":"overloaded_error","message":"boom"}}"#,
            ),
            (
                Protocol::OpenAiResponses,
                r#"{"type":"error","code":"server_error","message":"boom","sequence_number":3}"#,
            ),
        ] {
            assert!(
                matches!(decode(proto, data), Event::Error(m) if m == "boom"),
                "{proto:?}"
            );
        }
    }

    #[test]
    fn anthropic_events_decode_into_their_variants() {
        let stop = decode(
            Protocol::AnthropicMessages,
            r#"{"type":"message_stop","extra":1}"#,
        );
        assert!(matches!(stop, Event::Anthropic(StreamEvent::MessageStop)));
        let ping = decode(Protocol::AnthropicMessages, r#"{"type":"ping"}"#);
        assert!(matches!(ping, Event::Anthropic(StreamEvent::Other)));
        let stop_block = decode(
            Protocol::AnthropicMessages,
            r#"{"type":"content_block_stop","index":0}"#,
        );
        assert!(matches!(stop_block, Event::Anthropic(StreamEvent::Other)));
        let sig = decode(
            Protocol::AnthropicMessages,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"x"}}"#,
        );
        assert!(matches!(
            sig,
            Event::Anthropic(StreamEvent::ContentBlockDelta { .. })
        ));
    }
}
