//! Counting tokens locally, for when an upstream sends no usage report (or a stream is
//! cut): the model's BPE encoding from an offline tokenizer with bundled encodings,
//! loaded on first use only (most requests never need it).

use serde::Deserialize;
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
        billing::Usage {
            prompt_tokens: count_prompt(&self.model, &self.request),
            completion_tokens: count_text(&self.model, delivered),
            ..billing::Usage::default()
        }
    }
}

#[derive(Deserialize)]
struct Prompt {
    /// Anthropic's top-level system prompt (a string or text blocks).
    #[serde(default)]
    system: Option<Value>,
    #[serde(default)]
    messages: Vec<Message>,
    /// Embeddings' and moderations' input: a string or a list of strings.
    #[serde(default)]
    input: Option<Value>,
    /// Gemini's turns and system instruction (`parts` of text).
    #[serde(default)]
    contents: Vec<Value>,
    #[serde(default, rename = "systemInstruction")]
    system_instruction: Option<Value>,
    #[serde(default)]
    tools: Option<Value>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    role: String,
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    tool_calls: Option<Value>,
}

/// Tokens of a chat request's prompt, the way OpenAI counts them: three per message
/// plus its role, name and text; 85 per image (low detail); tool definitions and
/// calls as their JSON; three more to prime the reply.
pub fn count_prompt(model: &str, body: &[u8]) -> i64 {
    let Ok(prompt) = serde_json::from_slice::<Prompt>(body) else {
        return i64::try_from(body.len().div_ceil(4)).unwrap_or(i64::MAX);
    };
    let mut total = 3;
    match &prompt.system {
        Some(Value::String(s)) => total += count_text(model, s),
        Some(Value::Array(blocks)) => {
            for b in blocks {
                total += count_text(
                    model,
                    b.get("text").and_then(Value::as_str).unwrap_or_default(),
                );
            }
        }
        _ => {}
    }
    for turn in prompt
        .contents
        .iter()
        .chain(prompt.system_instruction.iter())
    {
        total += 3;
        let parts = turn.get("parts").and_then(Value::as_array);
        for p in parts.map(Vec::as_slice).unwrap_or_default() {
            match p.get("text").and_then(Value::as_str) {
                Some(t) => total += count_text(model, t),
                None if p.get("inlineData").is_some() || p.get("fileData").is_some() => {
                    total += 258
                }
                None => total += count_text(model, &p.to_string()),
            }
        }
    }
    match &prompt.input {
        Some(Value::String(s)) => total += count_text(model, s),
        Some(Value::Array(items)) => {
            for item in items {
                total += item.as_str().map_or(0, |s| count_text(model, s));
            }
        }
        _ => {}
    }
    for m in &prompt.messages {
        total += 3 + count_text(model, &m.role);
        if let Some(name) = &m.name {
            total += 1 + count_text(model, name);
        }
        match &m.content {
            Some(Value::String(s)) => total += count_text(model, s),
            Some(Value::Array(parts)) => {
                for p in parts {
                    match p.get("type").and_then(Value::as_str) {
                        Some("text") => {
                            total += count_text(
                                model,
                                p.get("text").and_then(Value::as_str).unwrap_or_default(),
                            )
                        }
                        Some("image_url" | "input_image" | "image") => total += 85,
                        _ => total += count_text(model, &p.to_string()),
                    }
                }
            }
            _ => {}
        }
        if let Some(calls) = &m.tool_calls {
            total += count_text(model, &calls.to_string());
        }
    }
    if let Some(tools) = &prompt.tools {
        total += count_text(model, &tools.to_string());
    }
    total
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
