//! One small, real request to a channel: the admin's "test" button, the health job
//! that brings auto-disabled channels back, and the test that confirms a suspect key is
//! dead before it is disabled.

use std::time::Instant;

use bytes::Bytes;
use store::catalog::{ChannelEntry, ChannelSecret};

use crate::protocol::Protocol;
use crate::upstream::{Failure, UpstreamClient, read_body, upstream_message};

/// Sends a one-token chat to `channel` with `key`; the latency in ms, or why it failed.
pub async fn probe(
    client: &UpstreamClient,
    channel: &ChannelEntry,
    key: &ChannelSecret,
    model: &str,
) -> Result<u64, String> {
    probe_failure(client, channel, key, model)
        .await
        .map_err(|f| match f {
            Failure::Status { status, body } => crate::error::redact(&format!(
                "status {status}: {}",
                upstream_message(&body, status)
            )),
            Failure::Unconvertible(message) => message,
            other => other.class(),
        })
}

/// Tests a key the relay suspects with one small request (the channel's first model,
/// nothing the customer chose). `Some(reason)` when the answer blames the key again —
/// then it is dead; `None` when the request succeeds or fails for any other reason
/// (a timeout or a 5xx proves nothing about the key).
pub async fn confirm_dead(
    client: &UpstreamClient,
    channel: &ChannelEntry,
    key: &ChannelSecret,
) -> Option<String> {
    let model = channel.upstream_model(channel.models.first()?);
    let failure = probe_failure(client, channel, key, &model).await.err()?;
    match crate::fault::classify(&failure) {
        crate::fault::Fault::Key(trouble) => Some(crate::fault::key_reason(&failure, trouble)),
        _ => None,
    }
}

/// The probe's one-token chat, its limit in the field `model` takes (OpenAI's reasoning
/// models refuse `max_tokens` with a 400, which would read as the probe's own fault and
/// never confirm a dead key).
fn probe_body(model: &str) -> Result<Bytes, crate::RelayError> {
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "ping"}],
    });
    crate::hold::with_output_limit(
        Protocol::OpenAiChat,
        model,
        &Bytes::from(body.to_string()),
        1,
    )
}

/// [`probe`], keeping the failure for classification.
async fn probe_failure(
    client: &UpstreamClient,
    channel: &ChannelEntry,
    key: &ChannelSecret,
    model: &str,
) -> Result<u64, Failure> {
    let body = probe_body(model).map_err(|_| Failure::Unconvertible("probe body".into()))?;
    let proto = Protocol::OpenAiChat.for_channel(channel.kind);
    let body = if proto == Protocol::OpenAiChat {
        body
    } else {
        crate::convert::request(Protocol::OpenAiChat, proto, &body, model, false)
            .map_err(|e| Failure::Unconvertible(e.to_string()))?
    };
    let started = Instant::now();
    let idle = std::time::Duration::from_secs(channel.timeout_s.max(1));
    let result = async {
        let path = proto.upstream_path(model, false);
        let resp = client
            .post_json(channel, key, (&path, model), body, &[])
            .await?;
        let status = resp.status().as_u16();
        let body = read_body(resp, idle, 4 * 1024 * 1024).await?;
        if !(200..300).contains(&status) {
            return Err(Failure::Status { status, body });
        }
        let understood = match proto {
            Protocol::AnthropicMessages | Protocol::GeminiGenerate => {
                crate::answer::read(proto, &body, b"").is_some()
            }
            _ => crate::answer::read(Protocol::OpenAiChat, &body, b"").is_some(),
        };
        if !understood {
            return Err(Failure::Malformed);
        }
        Ok(())
    }
    .await;
    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    result.map(|()| ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(model: &str) -> (Option<i64>, Option<i64>) {
        let body: serde_json::Value = serde_json::from_slice(&probe_body(model).unwrap()).unwrap();
        (
            body["max_tokens"].as_i64(),
            body["max_completion_tokens"].as_i64(),
        )
    }

    #[test]
    fn a_probe_of_a_reasoning_model_limits_its_output_with_max_completion_tokens() {
        for model in ["gpt-5", "gpt-5-mini", "o1", "o3-mini", "o4-mini"] {
            assert_eq!(limits(model), (None, Some(1)), "{model}");
        }
        for model in ["gpt-4o-mini", "claude-3-5-haiku", "gemini-2.0-flash"] {
            assert_eq!(limits(model), (Some(1), None), "{model}");
        }
    }
}
