//! What a request holds before it is sent: the most it can cost (DESIGN.md "Trust
//! rules": the hold is an upper bound). The prompt part is bounded by the request's own
//! text (see [`tokens::prompt_bound`]); the output part by the client's limit, else the
//! model's own ceiling — and when the client set no limit, the upstream is told the
//! limit the hold covers, so nothing beyond it can be generated.

use billing::Cost;
use billing::{Price, Usage};
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::RelayError;
use crate::openai::ChatHead;
use crate::protocol::Protocol;
use crate::tokens;

/// Output tokens held when neither the client nor the price names a ceiling.
pub const DEFAULT_MAX_OUTPUT: i64 = 4096;
/// Audio input tokens a second, held for a token-priced transcription model.
const AUDIO_TOKENS_PER_SECOND: i64 = 50;

/// How much to hold for one request, and the output limit the upstream must be given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub amount: i64,
    /// Output tokens per choice that the hold covers.
    pub output_tokens: i64,
    /// Whether the client named no output limit (so the relay sets `output_tokens`).
    pub set_limit: bool,
    /// The input side, measured once from the body (prompt bound, images, seconds).
    input: Usage,
}

/// Whether `proto` generates tokens whose count the client may limit.
fn limits_output(proto: Protocol) -> bool {
    matches!(
        proto,
        Protocol::OpenAiChat
            | Protocol::OpenAiCompletions
            | Protocol::OpenAiFim
            | Protocol::OpenAiResponses
            | Protocol::AnthropicMessages
            | Protocol::GeminiGenerate
    )
}

/// The hold for a request: its prompt bound, its output limit (the client's, else the
/// model's ceiling, else [`DEFAULT_MAX_OUTPUT`]) for every choice, or its units.
pub fn plan(
    proto: Protocol,
    price: &Price,
    multiplier_ppm: i64,
    head: &ChatHead,
    body: &[u8],
) -> Plan {
    let (output_tokens, set_limit) = match head.max_output() {
        Some(n) => (n, false),
        None => (
            price.max_output_tokens.unwrap_or(DEFAULT_MAX_OUTPUT).max(1),
            limits_output(proto),
        ),
    };
    let input = measure(proto, head, body);
    Plan {
        amount: cost(proto, price, multiplier_ppm, head, input, output_tokens),
        output_tokens,
        set_limit,
        input,
    }
}

/// When `plan` does not fit in `available` and the client set no limit: the largest
/// output limit that does (as OpenRouter does), or `None` when not even one token fits.
/// The body is not read again: the bisection prices the plan's measured input.
pub fn affordable(
    proto: Protocol,
    price: &Price,
    multiplier_ppm: i64,
    head: &ChatHead,
    plan: Plan,
    available: i64,
) -> Option<Plan> {
    if !plan.set_limit || available <= 0 {
        return None;
    }
    let at = |n: i64| cost(proto, price, multiplier_ppm, head, plan.input, n);
    if at(1) > available {
        return None;
    }
    // The cost grows with the output limit: the largest that fits, by bisection.
    let (mut lo, mut hi) = (1_i64, plan.output_tokens);
    while lo < hi {
        let mid = lo + (hi - lo + 1) / 2;
        if at(mid) <= available {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Some(Plan {
        amount: at(lo),
        output_tokens: lo,
        ..plan
    })
}

/// The input side of a request's usage at most: prompt tokens, images, seconds.
fn measure(proto: Protocol, head: &ChatHead, body: &[u8]) -> Usage {
    match proto {
        // An image request may return `n` images.
        Protocol::OpenAiImages => Usage {
            prompt_tokens: tokens::prompt_bound(body),
            images: head.choices(),
            ..Usage::default()
        },
        Protocol::OpenAiImageEdits | Protocol::OpenAiImageVariations => Usage {
            images: head.choices(),
            ..Usage::default()
        },
        // Characters of input (at most the body's bytes).
        Protocol::OpenAiSpeech => Usage {
            prompt_tokens: i64::try_from(body.len()).unwrap_or(i64::MAX),
            ..Usage::default()
        },
        // The longest the upload can play, or tokens for a token-priced model.
        Protocol::OpenAiTranscriptions | Protocol::OpenAiTranslations => {
            let seconds = crate::media::longest_seconds(body);
            Usage {
                seconds,
                prompt_tokens: seconds.saturating_mul(AUDIO_TOKENS_PER_SECOND),
                ..Usage::default()
            }
        }
        _ => Usage {
            prompt_tokens: tokens::prompt_bound(body),
            ..Usage::default()
        },
    }
}

/// What `input` plus `output_tokens` (for every choice) can cost at most.
fn cost(
    proto: Protocol,
    price: &Price,
    multiplier_ppm: i64,
    head: &ChatHead,
    input: Usage,
    output_tokens: i64,
) -> i64 {
    let completion_tokens = match proto {
        Protocol::OpenAiTranscriptions | Protocol::OpenAiTranslations => output_tokens,
        p if limits_output(p) => output_tokens.saturating_mul(head.choices()),
        _ => 0,
    };
    let usage = Usage {
        completion_tokens,
        ..input
    };
    // The prompt may be written to the provider's cache, which can cost more than
    // plain input (1.25 × by default): the hold takes the dearer of the two.
    let written = Usage {
        cache_write_tokens: usage.prompt_tokens,
        ..usage
    };
    price
        .cost(&usage, multiplier_ppm)
        .max(price.cost(&written, multiplier_ppm))
}

/// The client's body with an output limit of `n` tokens, in the client's own protocol
/// (a conversion carries it over to the channel's): `max_tokens` for chat, completions
/// and messages (`max_completion_tokens` for OpenAI's reasoning models, which refuse
/// `max_tokens`), `max_output_tokens` for Responses, `generationConfig.maxOutputTokens`
/// for Gemini.
pub fn with_output_limit(
    proto: Protocol,
    model: &str,
    body: &Bytes,
    n: i64,
) -> Result<Bytes, RelayError> {
    if !limits_output(proto) {
        return Ok(body.clone());
    }
    let mut obj: Map<String, Value> = serde_json::from_slice(body).map_err(|e| {
        RelayError::InvalidRequest(format!("request body is not a JSON object: {e}"))
    })?;
    match proto {
        Protocol::GeminiGenerate => {
            let (config, field) = if obj.contains_key("generation_config") {
                ("generation_config", "max_output_tokens")
            } else {
                ("generationConfig", "maxOutputTokens")
            };
            let entry = obj
                .entry(config)
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            if let Value::Object(c) = entry {
                c.insert(field.into(), Value::from(n));
            }
        }
        Protocol::OpenAiResponses => {
            obj.insert("max_output_tokens".into(), Value::from(n));
        }
        Protocol::OpenAiChat if reasoning_model(model) => {
            obj.remove("max_tokens");
            obj.insert("max_completion_tokens".into(), Value::from(n));
        }
        _ => {
            obj.remove("max_completion_tokens");
            obj.insert("max_tokens".into(), Value::from(n));
        }
    }
    serde_json::to_vec(&obj)
        .map(Bytes::from)
        .map_err(|_| RelayError::Internal)
}

/// [`with_output_limit`] for a request read as `head`: a body that names no output-limit
/// key (the common case: SDKs send none) gets `"key":n` spliced in as its first member,
/// the rest of its bytes untouched; any other body (a key present, even `null` or 0; a
/// Gemini config) is parsed and written again. A large prompt is not parsed twice.
pub fn limited_body(
    proto: Protocol,
    head: &ChatHead,
    body: &Bytes,
    n: i64,
) -> Result<Bytes, RelayError> {
    if !limits_output(proto) {
        return Ok(body.clone());
    }
    let key = match proto {
        Protocol::GeminiGenerate => None,
        Protocol::OpenAiResponses => Some("max_output_tokens"),
        Protocol::OpenAiChat if reasoning_model(head.model()) => Some("max_completion_tokens"),
        _ => Some("max_tokens"),
    };
    match key.filter(|_| !head.names_a_limit()) {
        Some(key) => crate::openai::prepend_member(body, format_args!(r#""{key}":{n}"#))
            .or_else(|_| with_output_limit(proto, head.model(), body, n)),
        None => with_output_limit(proto, head.model(), body, n),
    }
}

/// OpenAI's reasoning models take `max_completion_tokens` only.
fn reasoning_model(model: &str) -> bool {
    let m = model.to_ascii_lowercase();
    ["o1", "o3", "o4", "gpt-5"].iter().any(|p| m.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_naming_no_limit_gets_one_spliced_in_that_reads_as_the_rewritten_body() {
        let cases: [(Protocol, &str); 7] = [
            (
                Protocol::OpenAiChat,
                r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi \u4f60"}]}"#,
            ),
            (
                Protocol::OpenAiChat,
                "\n {\n \"model\": \"o3-mini\", \"messages\": [] }",
            ),
            (Protocol::OpenAiCompletions, r#"{"model":"m","prompt":"x"}"#),
            (
                Protocol::AnthropicMessages,
                r#"{"model":"claude","messages":[],"stream":true}"#,
            ),
            (
                Protocol::OpenAiResponses,
                r#"{"model":"gpt-4o","input":"x"}"#,
            ),
            // Named, even as null or 0: parsed and written again.
            (
                Protocol::OpenAiChat,
                r#"{"model":"gpt-4o","messages":[],"max_tokens":null}"#,
            ),
            (
                Protocol::OpenAiChat,
                r#"{"model":"gpt-4o","messages":[],"max_completion_tokens":0}"#,
            ),
        ];
        for (proto, text) in cases {
            let body = Bytes::from(text.to_owned());
            let head = ChatHead::parse_for(proto, &body).unwrap();
            let fast = limited_body(proto, &head, &body, 77).unwrap();
            let slow = with_output_limit(proto, head.model(), &body, 77).unwrap();
            let read = |b: &Bytes| serde_json::from_slice::<Value>(b).unwrap();
            assert_eq!(read(&fast), read(&slow), "{text}");
            let after = ChatHead::parse_for(proto, &fast).unwrap();
            assert_eq!(after.max_output(), Some(77), "{text}");
            if !head.names_a_limit() {
                // The client's bytes follow the new member untouched.
                let open = text.find('{').unwrap();
                assert!(fast.ends_with(&text.as_bytes()[open + 1..]), "{text}");
            }
        }
        let gemini = Bytes::from_static(br#"{"contents":[]}"#);
        let head = ChatHead::gemini(&gemini, "gemini-x", false).unwrap();
        assert_eq!(
            limited_body(Protocol::GeminiGenerate, &head, &gemini, 9).unwrap(),
            with_output_limit(Protocol::GeminiGenerate, "gemini-x", &gemini, 9).unwrap()
        );
    }

    fn mini() -> Price {
        Price {
            input: 150_000,
            output: 600_000,
            ..Price::default()
        }
    }

    #[test]
    fn without_a_client_limit_the_hold_covers_the_models_ceiling_and_says_so() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        let head = ChatHead::parse(body).unwrap();
        let p = plan(Protocol::OpenAiChat, &mini(), 1_000_000, &head, body);
        assert_eq!((p.output_tokens, p.set_limit), (DEFAULT_MAX_OUTPUT, true));
        let capped = Price {
            max_output_tokens: Some(1_000),
            ..mini()
        };
        let p = plan(Protocol::OpenAiChat, &capped, 1_000_000, &head, body);
        assert_eq!(p.output_tokens, 1_000);
        // Prompt bound (the body's bytes) at 0.15 × 1.25 (it may all be written to the
        // provider's cache) plus 1,000 at 0.6, rounded up.
        let bytes = i64::try_from(body.len()).unwrap();
        assert_eq!(
            p.amount,
            (bytes * 187_500 + 1_000 * 600_000 + 999_999) / 1_000_000
        );
    }

    #[test]
    fn a_short_balance_gets_the_largest_output_limit_it_covers() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        let head = ChatHead::parse(body).unwrap();
        let p = plan(Protocol::OpenAiChat, &mini(), 1_000_000, &head, body);
        let fit = affordable(Protocol::OpenAiChat, &mini(), 1_000_000, &head, p, 300).unwrap();
        assert!(fit.amount <= 300 && fit.output_tokens > 400, "{fit:?}");
        let more = cost(
            Protocol::OpenAiChat,
            &mini(),
            1_000_000,
            &head,
            p.input,
            fit.output_tokens + 1,
        );
        assert!(more > 300);
        assert!(affordable(Protocol::OpenAiChat, &mini(), 1_000_000, &head, p, 0).is_none());
        // A client that named its limit is not second-guessed.
        let limited = br#"{"model":"m","max_tokens":5000,"messages":[]}"#;
        let head = ChatHead::parse(limited).unwrap();
        let p = plan(Protocol::OpenAiChat, &mini(), 1_000_000, &head, limited);
        assert!(affordable(Protocol::OpenAiChat, &mini(), 1_000_000, &head, p, 300).is_none());
    }

    #[test]
    fn the_output_limit_goes_in_each_protocols_own_field() {
        let b = |s: &str| Bytes::from(s.to_owned());
        let get = |out: Bytes| serde_json::from_slice::<Value>(&out).unwrap();
        let chat = with_output_limit(
            Protocol::OpenAiChat,
            "gpt-4o",
            &b(r#"{"model":"gpt-4o","max_tokens":null}"#),
            7,
        )
        .unwrap();
        assert_eq!(get(chat)["max_tokens"], 7);
        let o3 = with_output_limit(
            Protocol::OpenAiChat,
            "o3-mini",
            &b(r#"{"model":"o3-mini"}"#),
            7,
        )
        .unwrap();
        let o3 = get(o3);
        assert_eq!(o3["max_completion_tokens"], 7);
        assert!(o3.get("max_tokens").is_none());
        let resp = with_output_limit(
            Protocol::OpenAiResponses,
            "gpt-4o",
            &b(r#"{"input":"x"}"#),
            7,
        )
        .unwrap();
        assert_eq!(get(resp)["max_output_tokens"], 7);
        let gem = with_output_limit(
            Protocol::GeminiGenerate,
            "g",
            &b(r#"{"contents":[],"generationConfig":{"temperature":0}}"#),
            7,
        )
        .unwrap();
        let gem = get(gem);
        assert_eq!(gem["generationConfig"]["maxOutputTokens"], 7);
        assert_eq!(gem["generationConfig"]["temperature"], 0);
        let snake = with_output_limit(
            Protocol::GeminiGenerate,
            "g",
            &b(r#"{"contents":[],"generation_config":{}}"#),
            7,
        )
        .unwrap();
        let snake = get(snake);
        assert_eq!(snake["generation_config"]["max_output_tokens"], 7);
        assert!(snake.get("generationConfig").is_none());
        let emb = b(r#"{"input":"x"}"#);
        assert_eq!(
            with_output_limit(Protocol::OpenAiEmbeddings, "e", &emb, 7).unwrap(),
            emb
        );
    }
}
