//! Counting tokens locally, for when an upstream sends no usage report (or a stream is
//! cut): the model's BPE encoding from an offline tokenizer with bundled encodings,
//! loaded on first use only (most requests never need it).

use serde_json::Value;
use tiktoken_rs::CoreBPE;

/// The encoding OpenAI uses for `model`: o200k for the GPT-4o generation onwards,
/// cl100k for everything else (older OpenAI models, and a fair proxy for others).
fn encoding(model: &str) -> &'static CoreBPE {
    let m = model.to_ascii_lowercase();
    let o200k = [
        "gpt-4o",
        "chatgpt-4o",
        "gpt-4.1",
        "gpt-4.5",
        "gpt-5",
        "o1",
        "o3",
        "o4",
    ]
    .iter()
    .any(|p| m.starts_with(p));
    if o200k {
        tiktoken_rs::o200k_base_singleton()
    } else {
        tiktoken_rs::cl100k_base_singleton()
    }
}

/// Tokens in `text` for `model`.
pub fn count_text(model: &str, text: &str) -> i64 {
    if text.is_empty() {
        return 0;
    }
    i64::try_from(encoding(model).encode_ordinary(text).len()).unwrap_or(i64::MAX)
}

/// What a settlement counts with when the upstream reported no usage.
#[derive(Clone, Debug)]
pub struct Fallback {
    /// The model whose encoding counts.
    pub model: String,
    /// The client's request body (the prompt).
    pub request: bytes::Bytes,
}

impl Fallback {
    /// Usage counted locally: the request's prompt and the text delivered.
    pub fn usage(&self, delivered: &str) -> billing::Usage {
        self.with_output(count_text(&self.model, delivered))
    }

    /// Usage counted locally: the request's prompt, and output already counted.
    pub fn with_output(&self, completion_tokens: i64) -> billing::Usage {
        billing::Usage {
            prompt_tokens: count_prompt(&self.model, &self.request),
            completion_tokens,
            ..billing::Usage::default()
        }
    }
}

/// Tokens an image or file part may cost, at most, on any provider (OpenAI's largest
/// high-detail images and Anthropic's 1.15-megapixel images stay under it).
pub const MEDIA_BOUND: i64 = 2_500;
/// Tokens an image part counts when usage is counted locally (OpenAI low detail).
const IMAGE_TOKENS: i64 = 85;
/// Tokens a Gemini inline or file part counts locally (one image).
const GEMINI_MEDIA_TOKENS: i64 = 258;

/// Keys whose string values are not prompt text (names of things, not content).
const NOT_TEXT: &[&str] = &[
    "model",
    "type",
    "id",
    "call_id",
    "tool_call_id",
    "tool_use_id",
    "detail",
    "mime_type",
    "mimeType",
    "media_type",
    "format",
    "voice",
    "user",
    "service_tier",
    "reasoning_effort",
    "previous_response_id",
    "status",
    "cache_control",
    "stop",
    "signature",
];
/// Keys whose whole value (keys included) is read by the model as JSON: tool
/// definitions, schemas and call arguments given as objects.
const AS_JSON: &[&str] = &[
    "tools",
    "functions",
    "functionDeclarations",
    "function_declarations",
    "tool_choice",
    "response_format",
    "responseSchema",
    "response_schema",
    "args",
    "parameters",
    "input_schema",
    "schema",
];
/// Keys of a request that carry no prompt at all.
const NOT_PROMPT: &[&str] = &[
    "metadata",
    "stream_options",
    "generationConfig",
    "generation_config",
];

/// What a walk over a request found.
#[derive(Default)]
struct Walk {
    /// Strings to count as text.
    texts: Vec<String>,
    /// Objects read as JSON.
    json: Vec<String>,
    /// Image or file parts (by URL or inline data).
    media: i64,
    /// Turns (objects with a `role`, Gemini `contents` entries).
    turns: i64,
}

/// Whether a string is an image or file (inline data, or a reference) rather than
/// text the model reads. Only at the keys where the protocols put media, and inline
/// data only when it is base64 (an Anthropic text document's `data` is text).
fn is_media_string(key: &str, s: &str) -> bool {
    match key {
        "data" | "b64_json" | "file_data" => {
            let payload = s
                .strip_prefix("data:")
                .map_or(s, |r| r.split_once(',').map_or(r, |(_, d)| d));
            is_base64(payload)
        }
        "url" | "image_url" | "file_url" | "fileUri" | "file_uri" => {
            ["data:", "http://", "https://", "gs://"]
                .iter()
                .any(|p| s.starts_with(p))
        }
        "file_id" => !s.is_empty(),
        _ => false,
    }
}

fn is_base64(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_' | b'\n' | b'\r')
        })
}

fn walk(key: &str, v: &Value, out: &mut Walk) {
    match v {
        Value::String(s) => {
            if NOT_TEXT.contains(&key) {
                return;
            }
            if is_media_string(key, s) {
                out.media += 1;
            } else {
                out.texts.push(s.clone());
            }
        }
        Value::Array(items) => {
            for item in items {
                walk(key, item, out);
            }
        }
        Value::Object(map) => {
            if map.contains_key("role") || key == "contents" {
                out.turns += 1;
            }
            for (k, v) in map {
                if NOT_PROMPT.contains(&k.as_str()) {
                    continue;
                }
                let as_json = AS_JSON.contains(&k.as_str())
                    || (matches!(k.as_str(), "input" | "response") && v.is_object());
                if as_json && !v.is_string() {
                    out.json.push(v.to_string());
                    continue;
                }
                walk(k, v, out);
            }
        }
        _ => {}
    }
}

/// Tokens of a request's prompt, counted locally when the upstream reported none: every
/// piece of text the model reads, in any request shape (chat messages and their parts,
/// Responses `instructions` and typed input items, Anthropic `system` and content
/// blocks, Gemini `contents` and `systemInstruction`, tool definitions, calls and
/// results), three tokens a turn, and a fixed count per image.
pub fn count_prompt(model: &str, body: &[u8]) -> i64 {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return i64::try_from(body.len().div_ceil(4)).unwrap_or(i64::MAX);
    };
    let mut w = Walk::default();
    walk("", &value, &mut w);
    let gemini = value.get("contents").is_some();
    let per_media = if gemini {
        GEMINI_MEDIA_TOKENS
    } else {
        IMAGE_TOKENS
    };
    let text: i64 = w
        .texts
        .iter()
        .chain(&w.json)
        .map(|t| count_text(model, t))
        .sum();
    3_i64
        .saturating_add(w.turns.saturating_mul(3))
        .saturating_add(text)
        .saturating_add(w.media.saturating_mul(per_media))
}

/// The most prompt tokens a request can be billed for, on any tokenizer, without
/// running one: a token covers at least one byte of text, so the request's text bytes
/// bound it, plus [`MEDIA_BOUND`] per image or file part. A body without media is
/// bounded by its length as it is (no parse); one with media is walked so that inline
/// image data counts as an image, not as text.
pub fn prompt_bound(body: &[u8]) -> i64 {
    let len = i64::try_from(body.len()).unwrap_or(i64::MAX);
    let has_media = [
        &b"image"[..],
        b"data:",
        b"inlineData",
        b"inline_data",
        b"fileData",
        b"file_data",
        b"input_file",
        b"\"document\"",
        b"input_audio",
    ]
    .iter()
    .any(|m| memchr::memmem::find(body, m).is_some());
    if !has_media {
        return len;
    }
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return len;
    };
    let mut w = Walk::default();
    walk("", &value, &mut w);
    let bytes: usize = w.texts.iter().chain(&w.json).map(String::len).sum();
    i64::try_from(bytes)
        .unwrap_or(i64::MAX)
        .saturating_add(w.turns.saturating_mul(4))
        .saturating_add(4)
        .saturating_add(w.media.saturating_mul(MEDIA_BOUND))
        .min(len.saturating_add(w.media.saturating_mul(MEDIA_BOUND)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_counted_with_the_models_encoding() {
        // "Hello world" is two tokens in both encodings.
        assert_eq!(count_text("gpt-4o-mini", "Hello world"), 2);
        assert_eq!(count_text("gpt-3.5-turbo", "Hello world"), 2);
        assert_eq!(count_text("gpt-4o", ""), 0);
        // Chinese text is counted, not guessed from bytes.
        let zh = count_text("gpt-4o", "你好，世界");
        assert!((2..=6).contains(&zh), "{zh}");
    }

    #[test]
    fn a_prompt_counts_messages_roles_text_and_images() {
        let body = br#"{"model":"gpt-4o","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Hello world"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}]}"#;
        let n = count_prompt("gpt-4o", body);
        // 3 priming + (3 + 1 role + 3 text) + (3 + 1 role + 2 text + 85 image) = 101.
        assert_eq!(n, 101);
    }
}

#[cfg(test)]
mod shapes {
    use super::*;

    /// About 3,000 words of English.
    fn long_text() -> String {
        "The quick brown fox jumps over the lazy dog near the river bank. ".repeat(250)
    }

    #[test]
    fn responses_instructions_and_typed_input_items_are_counted() {
        let text = long_text();
        let body = serde_json::json!({
            "model": "gpt-4o",
            "instructions": text,
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": text}]},
                {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{\"q\":\"fox\"}"},
                {"type": "function_call_output", "call_id": "c1", "output": text},
            ],
        });
        let n = count_prompt("gpt-4o", body.to_string().as_bytes());
        let one = count_text("gpt-4o", &text);
        assert!(one > 2_500, "{one}");
        assert!(n >= 3 * one, "{n} < 3 × {one}");
    }

    #[test]
    fn anthropic_system_blocks_tool_uses_and_results_are_counted() {
        let text = long_text();
        let body = serde_json::json!({
            "model": "claude-x",
            "system": [{"type": "text", "text": text}],
            "messages": [
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "lookup", "input": {"q": text}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": text}]}]},
            ],
        });
        let n = count_prompt("claude-x", body.to_string().as_bytes());
        assert!(n >= 3 * count_text("claude-x", &text), "{n}");
    }

    #[test]
    fn gemini_system_instruction_contents_and_function_responses_are_counted() {
        let text = long_text();
        let body = serde_json::json!({
            "systemInstruction": {"parts": [{"text": text}]},
            "contents": [
                {"role": "user", "parts": [{"text": text}, {"inlineData": {"mimeType": "image/png", "data": "AAAA"}}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "lookup", "response": {"result": text}}}]},
            ],
        });
        let n = count_prompt("gemini-2.0-flash", body.to_string().as_bytes());
        assert!(n >= 3 * count_text("gemini-2.0-flash", &text) + 258, "{n}");
    }

    #[test]
    fn the_hold_bound_is_never_below_the_local_count_and_images_are_not_text() {
        let text = long_text();
        for body in [
            serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}),
            serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "!@#$%^&*()_+{}|:<>?~`-=[]\\;',./ 1 2 3 4 5 6 7 8 9 0".repeat(200)}]}),
            serde_json::json!({"model": "gpt-4o", "instructions": text, "input": [{"role": "user", "content": [{"type": "input_text", "text": "你好，世界".repeat(300)}]}]}),
            // Text that looks like inline data where text goes is still text.
            serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": format!("data: {text}")}]}),
            serde_json::json!({"model": "claude", "messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": text}}]}]}),
        ] {
            let raw = body.to_string();
            assert!(prompt_bound(raw.as_bytes()) >= count_prompt("gpt-4o", raw.as_bytes()));
        }
        let image = serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{}", "A".repeat(1_000_000))}},
        ]}]});
        let bound = prompt_bound(image.to_string().as_bytes());
        assert!((MEDIA_BOUND..MEDIA_BOUND + 100).contains(&bound), "{bound}");
        let by_url = serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        ]}]});
        assert!(prompt_bound(by_url.to_string().as_bytes()) >= MEDIA_BOUND);
    }
}
