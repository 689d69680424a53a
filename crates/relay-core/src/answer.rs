//! What the relay reads of a whole (unstreamed) answer, through each protocol's model:
//! usage, id, model and finish reason, and the delivered text only when no usage came.

use billing::Usage;
use serde::Deserialize;
use serde_json::Value;

use crate::convert::anthropic_chat::MessageView;
use crate::convert::chat::{ChatUsage, CompletionView};
use crate::convert::gemini_chat::GenerateResponse;
use crate::convert::responses_chat::ResponseObject;
use crate::protocol::Protocol;

/// What the relay reads of a complete answer, whatever the protocol.
pub struct Completion {
    pub id: Option<String>,
    pub model: Option<String>,
    pub usage: Option<Usage>,
    pub finish_reason: Option<String>,
    /// The text delivered, gathered only when the answer reported no usage.
    pub delivered: String,
}

impl Completion {
    /// An answer that reported its usage: nothing delivered is kept.
    pub fn reported(
        usage: Usage,
        (id, model): (Option<String>, Option<String>),
        finish_reason: Option<String>,
    ) -> Self {
        Completion {
            id,
            model,
            usage: Some(usage),
            finish_reason,
            delivered: String::new(),
        }
    }

    fn new(usage: Option<Usage>, texts: impl FnOnce(&mut dyn FnMut(&str))) -> Self {
        let mut delivered = String::new();
        if usage.is_none() {
            texts(&mut |t| delivered.push_str(t));
        }
        Completion {
            id: None,
            model: None,
            usage,
            finish_reason: None,
            delivered,
        }
    }
}

/// Reads `body`, an answer of `proto` to the request `raw`; `None` when it is not one.
pub fn read(proto: Protocol, body: &[u8], raw: &[u8]) -> Option<Completion> {
    match proto {
        Protocol::OpenAiTranscriptions | Protocol::OpenAiTranslations => {
            let longest = crate::media::longest_seconds(raw);
            let (usage, text) = crate::media::transcription_usage(body, longest);
            let mut c = Completion::new(Some(usage), |_| {});
            c.delivered = text;
            Some(c)
        }
        // Audio comes back as bytes and is charged by its input.
        Protocol::OpenAiSpeech => None,
        Protocol::OpenAiEmbeddings => {
            #[derive(Deserialize)]
            struct Embeddings {
                data: Vec<serde::de::IgnoredAny>,
                usage: ChatUsage,
                #[serde(default)]
                model: Option<String>,
            }
            let e: Embeddings = serde_json::from_slice(body).ok()?;
            let _ = e.data;
            let usage = Usage {
                prompt_tokens: e.usage.prompt_tokens,
                ..Usage::default()
            };
            let mut c = Completion::new(Some(usage), |_| {});
            c.model = e.model;
            Some(c)
        }
        Protocol::OpenAiModerations => {
            // No usage report: the settlement counts the input locally.
            #[derive(Deserialize)]
            struct Moderation {
                results: Vec<serde::de::IgnoredAny>,
                #[serde(default)]
                id: Option<String>,
                #[serde(default)]
                model: Option<String>,
            }
            let m: Moderation = serde_json::from_slice(body).ok()?;
            let _ = m.results;
            let mut c = Completion::new(None, |_| {});
            (c.id, c.model) = (m.id, m.model);
            Some(c)
        }
        Protocol::OpenAiImages | Protocol::OpenAiImageEdits | Protocol::OpenAiImageVariations => {
            // Charged per image that came back with data; none usable costs nothing.
            let v: Value = serde_json::from_slice(body).ok()?;
            v.get("data")?.as_array()?;
            let images = billing::images::usable_images(&v);
            Some(Completion::new(
                Some(Usage {
                    images,
                    ..Usage::default()
                }),
                |_| {},
            ))
        }
        Protocol::OpenAiResponses => {
            let r: ResponseObject = serde_json::from_slice(body).ok()?;
            if r.object.as_deref() != Some("response") {
                return None;
            }
            let mut c = Completion::new(r.usage.map(|u| u.usage()), |push| r.texts(push));
            (c.id, c.model, c.finish_reason) = (r.id, r.model, r.status);
            Some(c)
        }
        Protocol::OpenAiChat | Protocol::OpenAiCompletions | Protocol::OpenAiFim => {
            let s: CompletionView = serde_json::from_slice(body).ok()?;
            s.choices.as_ref()?;
            let mut c = Completion::new(s.usage.map(|u| u.usage()), |push| s.texts(push));
            c.finish_reason = s
                .choices
                .iter()
                .flatten()
                .find_map(|c| c.finish_reason.clone());
            (c.id, c.model) = (s.id, s.model);
            Some(c)
        }
        Protocol::GeminiGenerate => {
            let g: GenerateResponse = serde_json::from_slice(body).ok()?;
            if g.candidates.is_empty() && g.usage_metadata.is_none() {
                return None;
            }
            let mut c = Completion::new(g.usage_metadata.map(|u| u.usage()), |push| g.texts(push));
            c.finish_reason = g.candidates.iter().find_map(|c| c.finish_reason.clone());
            (c.id, c.model) = (g.response_id, g.model_version);
            Some(c)
        }
        Protocol::AnthropicMessages => {
            let m = MessageView::parse(body)?;
            let mut c = Completion::new(m.usage.map(|u| u.usage()), |push| {
                for block in &m.content {
                    block.texts(&mut *push);
                }
            });
            (c.id, c.model, c.finish_reason) = (m.id, m.model, m.stop_reason);
            Some(c)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_converted_answer_is_metered_from_its_one_parse_exactly_as_the_metering_view_reads_it() {
        let answers: [(Protocol, &[u8]); 3] = [
            (
                Protocol::OpenAiChat,
                br#"{"id":"chatcmpl-9","object":"chat.completion","created":1,"model":"gpt-x","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"length"}],"usage":{"prompt_tokens":100,"completion_tokens":50,"prompt_tokens_details":{"cached_tokens":60},"completion_tokens_details":{"reasoning_tokens":20}}}"#,
            ),
            (
                Protocol::AnthropicMessages,
                br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":10,"output_tokens":40,"cache_read_input_tokens":80,"cache_creation_input_tokens":5}}"#,
            ),
            (
                Protocol::GeminiGenerate,
                br#"{"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":100,"candidatesTokenCount":30,"cachedContentTokenCount":80,"thoughtsTokenCount":50,"totalTokenCount":180},"modelVersion":"gemini-x-001","responseId":"r1"}"#,
            ),
        ];
        for (channel, body) in answers {
            let client = if channel == Protocol::OpenAiChat {
                Protocol::AnthropicMessages
            } else {
                Protocol::OpenAiChat
            };
            let (_, metered) = crate::convert::answer(channel, client, body).unwrap();
            let metered = metered.expect("usage was reported");
            let viewed = read(channel, body, b"").unwrap();
            assert_eq!(metered.usage, viewed.usage, "{channel:?}");
            assert_eq!(
                (&metered.id, &metered.model, &metered.finish_reason),
                (&viewed.id, &viewed.model, &viewed.finish_reason),
                "{channel:?}"
            );
            assert!(metered.delivered.is_empty());
        }
        // No usage: the meter counts the delivered text through the view.
        let bare = br#"{"id":"c","choices":[{"index":0,"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}]}"#;
        let (_, metered) =
            crate::convert::answer(Protocol::OpenAiChat, Protocol::AnthropicMessages, bare)
                .unwrap();
        assert!(metered.is_none());
        // Usage without choices is no chat answer: the meter does not take the typed
        // reading, and the view refuses it as before (the try fails over, uncharged).
        let error_with_usage = br#"{"error":{"message":"overloaded"},"usage":{"prompt_tokens":12,"completion_tokens":0}}"#;
        let (_, metered) = crate::convert::answer(
            Protocol::OpenAiChat,
            Protocol::AnthropicMessages,
            error_with_usage,
        )
        .unwrap();
        assert!(metered.is_none());
        assert!(read(Protocol::OpenAiChat, error_with_usage, b"").is_none());
        // Not an answer: refused, so the try fails over and nothing is charged.
        for (channel, body) in [
            (
                Protocol::AnthropicMessages,
                &br#"{"type":"error","error":{"type":"overloaded_error","message":"x"}}"#[..],
            ),
            (Protocol::GeminiGenerate, &br#"{"error":{"code":400}}"#[..]),
        ] {
            assert!(crate::convert::answer(channel, Protocol::OpenAiChat, body).is_err());
        }
    }

    #[test]
    fn usage_with_cached_and_reasoning_details_is_read_and_no_text_is_gathered() {
        let body = br#"{"id":"chatcmpl-1","choices":[{"message":{"role":"assistant","content":"Hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":100,"completion_tokens":50,"prompt_tokens_details":{"cached_tokens":60},"completion_tokens_details":{"reasoning_tokens":20}}}"#;
        let c = read(Protocol::OpenAiChat, body, b"").unwrap();
        let u = c.usage.unwrap();
        assert_eq!(
            (
                u.prompt_tokens,
                u.completion_tokens,
                u.cached_tokens,
                u.reasoning_tokens
            ),
            (100, 50, 60, 20)
        );
        assert_eq!(c.finish_reason.as_deref(), Some("stop"));
        assert!(c.delivered.is_empty());
    }

    #[test]
    fn an_answer_without_usage_gathers_its_text() {
        let body = br#"{"id":"chatcmpl-1","choices":[{"message":{"role":"assistant","content":"Hi","reasoning":"hm"},"finish_reason":"stop"}]}"#;
        assert_eq!(
            read(Protocol::OpenAiChat, body, b"").unwrap().delivered,
            "Hihm"
        );
    }

    #[test]
    fn a_complete_message_gives_usage_with_cache_reads_as_cached_prompt_tokens() {
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x","content":[{"type":"text","text":"Hi"},{"type":"server_tool_use","id":"x","name":"web_search","input":{"q":"a"}}],"stop_reason":"end_turn","usage":{"input_tokens":10,"output_tokens":40,"cache_read_input_tokens":80,"cache_creation_input_tokens":5}}"#;
        let c = read(Protocol::AnthropicMessages, body, b"").unwrap();
        let u = c.usage.unwrap();
        assert_eq!(
            (
                u.prompt_tokens,
                u.cached_tokens,
                u.cache_write_tokens,
                u.completion_tokens
            ),
            (95, 80, 5, 40)
        );
        assert!(
            read(
                Protocol::AnthropicMessages,
                br#"{"type":"error","error":{}}"#,
                b""
            )
            .is_none()
        );
    }

    #[test]
    fn gemini_thoughts_bill_as_output_and_tool_use_prompts_as_prompt() {
        let body = br#"{"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":100,"candidatesTokenCount":30,"cachedContentTokenCount":80,"thoughtsTokenCount":50,"toolUsePromptTokenCount":7,"totalTokenCount":187},"modelVersion":"gemini-x-001","responseId":"r1"}"#;
        let c = read(Protocol::GeminiGenerate, body, b"").unwrap();
        let u = c.usage.unwrap();
        assert_eq!(
            (
                u.prompt_tokens,
                u.cached_tokens,
                u.completion_tokens,
                u.reasoning_tokens
            ),
            (107, 80, 80, 50)
        );
        assert_eq!(c.finish_reason.as_deref(), Some("STOP"));
        assert!(read(Protocol::GeminiGenerate, br#"{"error":{"code":400}}"#, b"").is_none());
    }
}
