//! `POST /v1/messages/count_tokens` and Gemini's `:countTokens`: free, uncharged. A
//! channel of the client's own protocol serving the model counts exactly; otherwise (or
//! if it fails) the tokens are counted locally with the model's BPE encoding, which is
//! close but not the provider's own tokenizer.

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use store::catalog::ChannelKind;

use crate::admission::Admitted;
use crate::protocol::Protocol;
use crate::upstream::{UpstreamClient, read_body};
use crate::{RelayError, Router};

/// Counts the input tokens of a request in `proto` (Anthropic's `count_tokens` or
/// Gemini's `countTokens`); returns the answer body in that protocol's shape.
pub async fn count_tokens(
    router: &Router,
    client: &UpstreamClient,
    admitted: &Admitted,
    proto: Protocol,
    raw: &Bytes,
) -> Result<Bytes, RelayError> {
    let (kind, field) = match proto {
        Protocol::GeminiGenerate => (ChannelKind::Gemini, "totalTokens"),
        _ => (ChannelKind::Anthropic, "input_tokens"),
    };
    let group = &admitted.caller.user.group;
    if let Some(channel) = router.pick_where(group, &admitted.model, |c| c.kind == kind)
        && let Some(key) = channel.rotate_key(&[])
    {
        let upstream_model = channel.upstream_model(&admitted.model);
        let mut body: Map<String, Value> = serde_json::from_slice(raw).map_err(|e| {
            RelayError::InvalidRequest(format!("request body is not a JSON object: {e}"))
        })?;
        let path = if kind == ChannelKind::Gemini {
            format!("/v1beta/models/{upstream_model}:countTokens")
        } else {
            body.insert("model".into(), Value::from(upstream_model.as_str()));
            "/v1/messages/count_tokens".to_owned()
        };
        let body = Bytes::from(serde_json::to_vec(&body).map_err(|_| RelayError::Internal)?);
        if let Ok(resp) = client
            .post_json(&channel, key, (&path, &upstream_model), body, &[])
            .await
        {
            let ok = resp.status().is_success();
            let idle = Duration::from_secs(channel.timeout_s.max(1));
            if let Ok(answer) = read_body(resp, idle, 64 * 1024).await
                && ok
                && serde_json::from_slice::<Value>(&answer)
                    .ok()
                    .and_then(|v| v.get(field).and_then(Value::as_i64))
                    .is_some()
            {
                return Ok(answer);
            }
        }
        tracing::warn!(
            channel.id = channel.id,
            "count_tokens upstream failed; counting locally"
        );
    }
    let tokens = crate::tokens::count_prompt(&admitted.model, raw);
    Ok(Bytes::from(json!({ field: tokens }).to_string()))
}
