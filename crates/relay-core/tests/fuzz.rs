//! No input panics the SSE framer or the converters: arbitrary bytes, and arbitrary
//! JSON built from the protocols' own field names so that it reaches deep code paths.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use relay_core::convert::{self, StreamConverter};
use relay_core::protocol::Protocol;
use relay_core::sse::SseFramer;
use serde_json::{Map, Value};

const PROTOCOLS: [Protocol; 3] = [
    Protocol::OpenAiChat,
    Protocol::AnthropicMessages,
    Protocol::GeminiGenerate,
];

/// Field names of all three protocols, so generated objects look like real ones.
const KEYS: &[&str] = &[
    "type",
    "model",
    "messages",
    "role",
    "content",
    "text",
    "image_url",
    "url",
    "tool_calls",
    "id",
    "function",
    "name",
    "arguments",
    "tool_call_id",
    "tools",
    "tool_choice",
    "system",
    "max_tokens",
    "stream",
    "index",
    "delta",
    "choices",
    "finish_reason",
    "usage",
    "prompt_tokens",
    "completion_tokens",
    "message",
    "content_block",
    "partial_json",
    "input",
    "tool_use_id",
    "stop_reason",
    "thinking",
    "budget_tokens",
    "source",
    "data",
    "media_type",
    "contents",
    "parts",
    "functionCall",
    "functionResponse",
    "args",
    "response",
    "candidates",
    "finishReason",
    "usageMetadata",
    "promptTokenCount",
    "candidatesTokenCount",
    "thought",
    "inlineData",
    "mimeType",
    "systemInstruction",
    "generationConfig",
    "functionDeclarations",
    "response_format",
    "json_schema",
    "schema",
    "error",
    "input_tokens",
    "output_tokens",
    "n",
    "reasoning_effort",
    "stop",
];

const WORDS: &[&str] = &[
    "user",
    "assistant",
    "system",
    "tool",
    "model",
    "text",
    "image_url",
    "tool_use",
    "tool_result",
    "message_start",
    "content_block_start",
    "content_block_delta",
    "text_delta",
    "input_json_delta",
    "thinking_delta",
    "message_delta",
    "message_stop",
    "function",
    "auto",
    "required",
    "none",
    "any",
    "STOP",
    "MAX_TOKENS",
    "stop",
    "length",
    "tool_calls",
    "json_schema",
    "json_object",
    "base64",
    "data:image/png;base64,AA==",
    "https://example.com/a.png",
    "{\"a\":1}",
    "{",
    "",
    "high",
    "chat.completion.chunk",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1.0e6f64..1.0e6).prop_map(Value::from),
        prop::sample::select(WORDS).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..7).prop_map(|kv| {
                let map: Map<String, Value> =
                    kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                Value::Object(map)
            }),
        ]
    })
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop::sample::select(PROTOCOLS.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_sse_framer_takes_any_bytes_in_any_pieces(bytes in prop::collection::vec(any::<u8>(), 0..512), cut in 1usize..64) {
        let mut framer = SseFramer::default();
        let mut total = 0;
        for piece in bytes.chunks(cut) {
            total += framer.push(piece).iter().map(|e| e.len()).sum::<usize>();
        }
        total += framer.finish().map_or(0, |r| r.len());
        // Nothing is lost or invented, except trailing blank space.
        prop_assert!(total <= bytes.len());
    }

    #[test]
    fn requests_of_any_shape_convert_or_fail_cleanly(body in json_value(), from in protocol(), to in protocol(), stream in any::<bool>()) {
        let raw = body.to_string();
        let _ = convert::request(from, to, raw.as_bytes(), "m", stream);
    }

    #[test]
    fn answers_of_any_shape_convert_or_fail_cleanly(body in json_value(), from in protocol(), to in protocol()) {
        let raw = body.to_string();
        let _ = convert::response(from, to, raw.as_bytes());
    }

    #[test]
    fn streams_of_any_events_convert_without_panicking(
        events in prop::collection::vec(json_value(), 0..12),
        from in protocol(),
        to in protocol(),
        usage in any::<bool>(),
    ) {
        let mut c = StreamConverter::new(from, to, usage);
        for e in &events {
            let ev = format!("data: {e}\n\n");
            for out in c.push_sse(ev.as_bytes()) {
                prop_assert!(out.ends_with(b"\n\n"));
            }
        }
        let _ = c.push_sse(b"data: [DONE]\n\n");
        let _ = c.finish();
    }

    #[test]
    fn raw_garbage_events_convert_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..256), from in protocol(), to in protocol()) {
        let mut c = StreamConverter::new(from, to, true);
        let _ = c.push_sse(&bytes);
        let _ = c.finish();
    }
}
