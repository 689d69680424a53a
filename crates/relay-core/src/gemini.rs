//! The Gemini generateContent protocol, as far as the relay needs to read it: usage
//! (`usageMetadata`), finish reason and text from an answer or a stream of answers.

use billing::Usage;
use serde::Deserialize;
use serde_json::Value;

/// Gemini's `usageMetadata`. Cached tokens are part of the prompt count; thoughts are
/// reported apart from the candidates and billed as output.
#[derive(Debug, Default, Deserialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
pub struct UsageMetadata {
    #[serde(default)]
    pub prompt_token_count: Option<i64>,
    #[serde(default)]
    pub candidates_token_count: Option<i64>,
    #[serde(default)]
    pub cached_content_token_count: Option<i64>,
    #[serde(default)]
    pub thoughts_token_count: Option<i64>,
    #[serde(default)]
    pub tool_use_prompt_token_count: Option<i64>,
}

impl From<&UsageMetadata> for Usage {
    fn from(u: &UsageMetadata) -> Self {
        let thoughts = u.thoughts_token_count.unwrap_or(0);
        Usage {
            prompt_tokens: u
                .prompt_token_count
                .unwrap_or(0)
                .saturating_add(u.tool_use_prompt_token_count.unwrap_or(0)),
            completion_tokens: u
                .candidates_token_count
                .unwrap_or(0)
                .saturating_add(thoughts),
            cached_tokens: u.cached_content_token_count.unwrap_or(0),
            reasoning_tokens: thoughts,
            ..Usage::default()
        }
    }
}

/// What the relay reads of a `GenerateContentResponse` (whole, or one stream chunk).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GenerateSummary {
    #[serde(default)]
    pub response_id: Option<String>,
    #[serde(default)]
    pub model_version: Option<String>,
    #[serde(default)]
    pub usage_metadata: Option<UsageMetadata>,
    #[serde(default)]
    pub candidates: Option<Vec<Value>>,
}

impl GenerateSummary {
    /// Parses an answer; `None` when it is neither candidates nor usage (an error).
    pub fn parse(body: &[u8]) -> Option<Self> {
        let s: GenerateSummary = serde_json::from_slice(body).ok()?;
        (s.candidates.is_some() || s.usage_metadata.is_some()).then_some(s)
    }

    /// The first finish reason among the candidates.
    pub fn finish_reason(&self) -> Option<String> {
        self.candidates.as_deref()?.iter().find_map(|c| {
            c.get("finishReason")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
    }

    /// Appends every part's text (thoughts and function calls included).
    pub fn append_text(&self, out: &mut String) {
        for c in self.candidates.as_deref().unwrap_or_default() {
            let parts = c.pointer("/content/parts").and_then(Value::as_array);
            for p in parts.map(Vec::as_slice).unwrap_or_default() {
                if let Some(t) = p.get("text").and_then(Value::as_str) {
                    out.push_str(t);
                }
                if let Some(call) = p.get("functionCall") {
                    out.push_str(&call.to_string());
                }
            }
        }
    }
}

/// Google's `error.status` for an HTTP status.
pub fn error_status(status: u16) -> &'static str {
    match status {
        400 | 413 | 422 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        402 => "FAILED_PRECONDITION",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 | 502 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thoughts_bill_as_output_and_cached_tokens_stay_in_the_prompt() {
        let body = br#"{"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":100,"candidatesTokenCount":30,"cachedContentTokenCount":80,"thoughtsTokenCount":50,"totalTokenCount":180},"modelVersion":"gemini-x-001","responseId":"r1"}"#;
        let s = GenerateSummary::parse(body).unwrap();
        let u = Usage::from(s.usage_metadata.as_ref().unwrap());
        assert_eq!(
            (
                u.prompt_tokens,
                u.cached_tokens,
                u.completion_tokens,
                u.reasoning_tokens
            ),
            (100, 80, 80, 50)
        );
        assert_eq!(s.finish_reason().as_deref(), Some("STOP"));
        let mut text = String::new();
        s.append_text(&mut text);
        assert_eq!(text, "Hi");
        assert!(GenerateSummary::parse(br#"{"error":{"code":400}}"#).is_none());
    }
}
