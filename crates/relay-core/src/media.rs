//! Metering for the media endpoints: speech is charged per character of its input
//! (the model's `input` price is per 1M characters), transcriptions and translations
//! per second of audio (`per_second`) or by the tokens the upstream reports.

use billing::Usage;
use bytes::Bytes;
use serde_json::Value;

use crate::RelayError;
use crate::multipart;

/// Audio bytes a second at 128 kbit/s: the estimate when an answer (plain text, SRT,
/// VTT) says nothing of the duration.
const BYTES_PER_SECOND: usize = 16_000;

/// A speech request's usage: the characters of its `input`, as prompt units.
pub fn speech_usage(raw: &[u8]) -> Usage {
    let chars = serde_json::from_slice::<Value>(raw)
        .ok()
        .and_then(|v| {
            v.get("input")
                .and_then(Value::as_str)
                .map(|s| s.chars().count())
        })
        .unwrap_or(0);
    Usage {
        prompt_tokens: i64::try_from(chars).unwrap_or(i64::MAX),
        ..Usage::default()
    }
}

/// Seconds of audio guessed from the upload's size (rounded up, at least one).
pub fn estimated_seconds(request_len: usize) -> i64 {
    i64::try_from(request_len.div_ceil(BYTES_PER_SECOND).max(1)).unwrap_or(i64::MAX)
}

/// The bytes of the files a form uploads (the whole body when it is not a form).
pub fn upload_len(raw: &[u8], content_type: Option<&str>) -> usize {
    let fields = content_type
        .and_then(multipart::boundary)
        .and_then(|b| multipart::fields(raw, &b).ok());
    match fields {
        Some(fields) => fields
            .iter()
            .filter(|f| f.filename.is_some())
            .map(multipart::Field::len)
            .sum(),
        None => raw.len(),
    }
}

/// A transcription's usage and text. OpenAI reports `usage` as
/// `{"type":"duration","seconds":…}` (whisper) or `{"type":"tokens",…}` (the GPT-4o
/// transcribers); `verbose_json` carries `duration`; plain formats carry nothing, and
/// the duration is estimated from the upload's size.
pub fn transcription_usage(body: &[u8], request_len: usize) -> (Usage, String) {
    let mut usage = Usage::default();
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        usage.seconds = estimated_seconds(request_len);
        return (usage, String::from_utf8_lossy(body).into_owned());
    };
    let text = v
        .get("text")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let int = |x: Option<&Value>| x.and_then(Value::as_i64).unwrap_or(0);
    let seconds = |x: Option<&Value>| {
        x.and_then(Value::as_f64)
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| s.ceil() as i64)
    };
    let u = v.get("usage");
    match u.and_then(|u| u.get("type")).and_then(Value::as_str) {
        Some("tokens") => {
            usage.prompt_tokens = int(u.and_then(|u| u.get("input_tokens")));
            usage.completion_tokens = int(u.and_then(|u| u.get("output_tokens")));
        }
        Some("duration") => {
            usage.seconds = seconds(u.and_then(|u| u.get("seconds"))).unwrap_or(0);
        }
        _ => {
            usage.seconds =
                seconds(v.get("duration")).unwrap_or_else(|| estimated_seconds(request_len));
        }
    }
    (usage, text)
}

/// A form upload for the upstream: as received, with `model` swapped when the channel
/// maps it to another name.
pub fn form_with_model(
    raw: &Bytes,
    content_type: &str,
    model: &str,
    upstream_model: &str,
) -> Result<Bytes, RelayError> {
    if model == upstream_model {
        return Ok(raw.clone());
    }
    let boundary = multipart::boundary(content_type)
        .ok_or_else(|| RelayError::InvalidRequest("expected multipart/form-data".into()))?;
    let fields = multipart::fields(raw, &boundary)?;
    Ok(multipart::replace_text(
        raw,
        &fields,
        "model",
        upstream_model,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcriptions_are_metered_by_reported_duration_tokens_or_size() {
        let (u, text) = transcription_usage(
            br#"{"text":"hi","usage":{"type":"duration","seconds":7.2}}"#,
            1,
        );
        assert_eq!((u.seconds, text.as_str()), (8, "hi"));
        let (u, _) = transcription_usage(
            br#"{"text":"hi","usage":{"type":"tokens","input_tokens":50,"output_tokens":9}}"#,
            1,
        );
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.seconds),
            (50, 9, 0)
        );
        let (u, _) = transcription_usage(br#"{"text":"hi","duration":3.0}"#, 1);
        assert_eq!(u.seconds, 3);
        let (u, text) = transcription_usage(b"plain words", 48_001);
        assert_eq!((u.seconds, text.as_str()), (4, "plain words"));
    }

    #[test]
    fn speech_is_counted_in_characters_not_bytes() {
        let u =
            speech_usage(r#"{"model":"tts-1","input":"héllo 世界","voice":"alloy"}"#.as_bytes());
        assert_eq!(u.prompt_tokens, 8);
    }
}
