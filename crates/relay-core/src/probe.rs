//! One small, real request to a channel: the admin's "test" button and the health job
//! that brings auto-disabled channels back.

use std::time::Instant;

use bytes::Bytes;
use store::catalog::ChannelEntry;

use crate::anthropic::MessageSummary;
use crate::openai::ChatSummary;
use crate::protocol::Protocol;
use crate::upstream::{Failure, UpstreamClient, read_body, upstream_message};

/// Sends a one-token chat to `channel` with `key`; the latency in ms, or why it failed.
pub async fn probe(
    client: &UpstreamClient,
    channel: &ChannelEntry,
    key: &str,
    model: &str,
) -> Result<u64, String> {
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "ping"}],
        "max_tokens": 1,
    });
    let proto = Protocol::OpenAiChat.for_channel(&channel.kind);
    let body = Bytes::from(body.to_string());
    let body = if proto == Protocol::OpenAiChat {
        body
    } else {
        crate::convert::request(Protocol::OpenAiChat, proto, &body, model, false)
            .map_err(|e| e.to_string())?
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
            Protocol::AnthropicMessages => MessageSummary::parse(&body).is_some(),
            Protocol::GeminiGenerate => crate::gemini::GenerateSummary::parse(&body).is_some(),
            _ => ChatSummary::parse_completion(&body).is_some(),
        };
        if !understood {
            return Err(Failure::Malformed);
        }
        Ok(())
    }
    .await;
    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    result.map(|()| ms).map_err(|f| match f {
        Failure::Status { status, body } => crate::error::redact(&format!(
            "status {status}: {}",
            upstream_message(&body, status)
        )),
        other => other.class(),
    })
}
