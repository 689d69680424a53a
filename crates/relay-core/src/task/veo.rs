//! Veo on the Gemini API: what a `gemini` channel is sent and answers for video
//! (`:predictLongRunning`, then the long-running operation at `GET /v1beta/{name}`),
//! and Google's own client shape for it (seeds `000`, `001`). Veo reports no usage: a
//! video is held and charged for the seconds asked (`durationSeconds`, 8 when unsaid)
//! times the videos asked (`sampleCount`); a result every sample of which was
//! filtered for safety is a failure (it costs nothing), not an empty success.

use billing::task::State;
use bytes::Bytes;
use serde_json::{Value, json};
use store::entities::task;

use super::{Observed, Submission};
use crate::RelayError;

/// The native family's name in the task table.
pub const FAMILY: &str = "veo";

/// Seconds when the request names none (Veo 3's default).
pub const DEFAULT_SECONDS: i64 = 8;

/// The submission path for an upstream model.
pub fn submit_path(upstream_model: &str) -> String {
    format!(
        "/v1beta/models/{}:predictLongRunning",
        super::videos::encode_segment_keeping(upstream_model, &['.'])
    )
}

/// The poll path of an operation `name` (`models/…/operations/…`): its segments kept,
/// none of them able to climb out of `/v1beta`.
pub fn item_path(name: &str) -> String {
    let segments: Vec<String> = name
        .split('/')
        .map(|s| super::videos::encode_segment_keeping(s, &['.']))
        .filter(|s| !s.is_empty() && s.chars().any(|c| c != '.'))
        .collect();
    format!("/v1beta/{}", segments.join("/"))
}

/// What Tollgate reads of a native request.
#[derive(Debug, Clone)]
pub struct Ask {
    pub seconds: i64,
    pub samples: i64,
    pub body: Bytes,
    pub prompt: String,
    pub fingerprint: String,
    /// The resolution asked (`720p`, `1080p`, `4k`), when named.
    pub resolution: Option<String>,
}

/// Reads `POST /v1beta/models/{model}:predictLongRunning`.
pub fn parse_native(model: &str, body: &[u8]) -> Result<Ask, RelayError> {
    let keys: super::videos::Keys = serde_json::from_slice(body)
        .map_err(|_| RelayError::InvalidRequest("the body must be a JSON object".into()))?;
    super::videos::check_names_of(
        &["instances", "parameters"],
        keys.0.iter().map(String::as_str),
    )?;
    let mut v: Value = serde_json::from_slice(body)
        .map_err(|_| RelayError::InvalidRequest("the body is not valid JSON".into()))?;
    let instances = v
        .get("instances")
        .and_then(Value::as_array)
        .filter(|i| i.len() == 1)
        .ok_or_else(|| RelayError::InvalidRequest("'instances' must hold one instance".into()))?;
    let prompt = instances[0]
        .get("prompt")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if v.get("parameters").is_none() {
        v["parameters"] = json!({});
    }
    let params = v
        .get_mut("parameters")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| RelayError::InvalidRequest("'parameters' must be an object".into()))?;
    super::videos::check_names_of(
        &["durationSeconds", "sampleCount"],
        params.keys().map(String::as_str),
    )?;
    // Google reads both spellings of a field; only the camelCase one is accepted.
    if params.contains_key("duration_seconds") || params.contains_key("sample_count") {
        return Err(RelayError::InvalidRequest(
            "use 'durationSeconds' and 'sampleCount'".into(),
        ));
    }
    let number = |k: &str, default: i64, range: std::ops::RangeInclusive<i64>| match params.get(k) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x
            .as_i64()
            .filter(|n| range.contains(n))
            .ok_or_else(|| RelayError::InvalidRequest(format!("'parameters.{k}' is out of range"))),
    };
    let seconds = number("durationSeconds", DEFAULT_SECONDS, 1..=60)?;
    let samples = number("sampleCount", 1, 1..=4)?;
    params.insert("durationSeconds".into(), seconds.into());
    params.insert("sampleCount".into(), samples.into());
    let resolution = match params.get("resolution") {
        None | Some(Value::Null) => None,
        Some(Value::String(r))
            if matches!(r.to_ascii_lowercase().as_str(), "720p" | "1080p" | "4k") =>
        {
            Some(r.to_ascii_lowercase())
        }
        Some(_) => {
            return Err(RelayError::InvalidRequest(
                "'parameters.resolution' must be 720p, 1080p or 4k".into(),
            ));
        }
    };
    let forwarded = Bytes::from(v.to_string());
    let fingerprint = format!("{model}\n{}", store::hash_bytes(&forwarded));
    Ok(Ask {
        seconds,
        samples,
        body: forwarded,
        prompt,
        fingerprint,
        resolution,
    })
}

/// A native submission for the channel's model.
pub fn native_submission(ask: &Ask, upstream_model: &str) -> Submission {
    Submission {
        path: submit_path(upstream_model),
        body: ask.body.clone(),
        content_type: "application/json".into(),
    }
}

/// An OpenAI-shaped video request (`/v1/videos`) as a Veo operation.
pub fn from_openai(
    prompt: &str,
    seconds: i64,
    size: Option<&str>,
    upstream_model: &str,
) -> Submission {
    let (resolution, ratio) = super::seedance::resolution_of(size);
    let mut parameters = json!({ "durationSeconds": seconds, "sampleCount": 1 });
    if let Some(r) = ratio.filter(|r| matches!(*r, "16:9" | "9:16")) {
        parameters["aspectRatio"] = json!(r);
    }
    if let Some(r) = resolution.filter(|r| *r != "480p") {
        parameters["resolution"] = json!(r);
    }
    Submission {
        path: submit_path(upstream_model),
        body: Bytes::from(
            json!({"instances": [{"prompt": prompt}], "parameters": parameters}).to_string(),
        ),
        content_type: "application/json".into(),
    }
}

/// Reads an operation (a submission's answer is one, not done).
pub fn observe(body: &[u8]) -> Option<(String, Observed)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let name = v.get("name")?.as_str()?.to_owned();
    let done = v.get("done").and_then(Value::as_bool).unwrap_or(false);
    let observed = |state, word: &str, error: Option<String>, urls: Vec<Value>| Observed {
        progress: if state == Some(State::Succeeded) {
            100
        } else {
            0
        },
        state,
        word: word.to_owned(),
        seconds: None,
        tokens: None,
        images: None,
        result: (!urls.is_empty()).then(|| json!({ "urls": urls })),
        error,
    };
    if !done {
        return Some((
            name,
            observed(Some(State::InProgress), "running", None, Vec::new()),
        ));
    }
    if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
        let status = e.get("status").and_then(Value::as_str).unwrap_or("FAILED");
        let message = e.get("message").and_then(Value::as_str).unwrap_or("");
        return Some((
            name,
            observed(
                Some(State::Failed),
                "error",
                Some(format!("{status}: {message}")),
                Vec::new(),
            ),
        ));
    }
    let answer = v.pointer("/response/generateVideoResponse");
    let urls: Vec<Value> = answer
        .and_then(|a| a.get("generatedSamples"))
        .and_then(Value::as_array)
        .map(|s| {
            s.iter()
                .filter_map(|x| x.pointer("/video/uri").cloned())
                .collect()
        })
        .unwrap_or_default();
    if urls.is_empty() {
        let reasons = answer
            .and_then(|a| a.get("raiMediaFilteredReasons"))
            .map(Value::to_string)
            .unwrap_or_else(|| "no video was returned".into());
        return Some((
            name,
            observed(
                Some(State::Failed),
                "filtered",
                Some(format!("SAFETY: {reasons}")),
                Vec::new(),
            ),
        ));
    }
    Some((name, observed(Some(State::Succeeded), "done", None, urls)))
}

/// The path (and query) of a result URI on the Gemini API, fetched with the channel's
/// key; `None` for a URI elsewhere.
pub fn download_path(uri: &str) -> Option<String> {
    let rest = uri.split_once("://")?.1;
    let path = &rest[rest.find('/')?..];
    path.starts_with("/v1beta/files/").then(|| path.to_owned())
}

/// A task as Google's operation; `urls` are Tollgate's signed URLs of its videos.
pub fn operation_json(t: &task::Model, urls: &[String]) -> Value {
    let name = format!("models/{}/operations/{}", t.model, t.id);
    match State::parse(&t.state) {
        Some(State::Queued | State::InProgress) | None => json!({ "name": name }),
        Some(State::Succeeded) => json!({
            "name": name,
            "done": true,
            "response": {
                "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse",
                "generateVideoResponse": {
                    "generatedSamples": urls.iter().map(|u| json!({"video": {"uri": u}})).collect::<Vec<_>>()
                }
            }
        }),
        Some(_) => {
            let text = t
                .error
                .as_deref()
                .map(crate::error::redact)
                .unwrap_or_else(|| "FAILED: failed".into());
            let (status, message) = text
                .split_once(": ")
                .map_or(("FAILED".to_owned(), text.clone()), |(s, m)| {
                    (s.to_owned(), m.to_owned())
                });
            json!({"name": name, "done": true, "error": {"code": 400, "message": message, "status": status}})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operation_name_stays_a_path_under_v1beta() {
        assert_eq!(
            item_path("models/veo-3.0-generate-001/operations/abc123"),
            "/v1beta/models/veo-3.0-generate-001/operations/abc123"
        );
        assert_eq!(item_path("../../admin/x"), "/v1beta/admin/x");
        assert_eq!(
            download_path(
                "https://generativelanguage.googleapis.com/v1beta/files/xyz:download?alt=media"
            ),
            Some("/v1beta/files/xyz:download?alt=media".into())
        );
        assert_eq!(download_path("https://evil.example/other"), None);
    }

    #[test]
    fn operations_are_read_running_done_failed_or_filtered() {
        let (name, running) = observe(br#"{"name":"models/veo/operations/1"}"#).unwrap();
        assert_eq!(
            (name.as_str(), running.state),
            ("models/veo/operations/1", Some(State::InProgress))
        );
        let (_, done) = observe(br#"{"name":"n","done":true,"response":{"generateVideoResponse":{"generatedSamples":[{"video":{"uri":"https://g/v1beta/files/a:download?alt=media"}}]}}}"#).unwrap();
        assert_eq!(done.state, Some(State::Succeeded));
        let (_, filtered) = observe(br#"{"name":"n","done":true,"response":{"generateVideoResponse":{"raiMediaFilteredCount":1,"raiMediaFilteredReasons":["child"]}}}"#).unwrap();
        assert_eq!(filtered.state, Some(State::Failed));
        let (_, failed) = observe(br#"{"name":"n","done":true,"error":{"code":400,"message":"bad","status":"INVALID_ARGUMENT"}}"#).unwrap();
        assert_eq!(failed.error.as_deref(), Some("INVALID_ARGUMENT: bad"));
    }

    #[test]
    fn the_seconds_and_samples_held_are_the_ones_sent() {
        let ask = parse_native(
            "veo",
            br#"{"instances":[{"prompt":"x"}],"parameters":{"durationSeconds":6,"sampleCount":2}}"#,
        )
        .unwrap();
        assert_eq!((ask.seconds, ask.samples), (6, 2));
        let plain = parse_native("veo", br#"{"instances":[{"prompt":"x"}]}"#).unwrap();
        let v: Value = serde_json::from_slice(&plain.body).unwrap();
        assert_eq!(
            v["parameters"],
            json!({"durationSeconds": 8, "sampleCount": 1})
        );
        assert!(
            parse_native(
                "veo",
                br#"{"instances":[{"prompt":"x"}],"parameters":{"duration_seconds":4}}"#
            )
            .is_err()
        );
        assert!(
            parse_native(
                "veo",
                br#"{"instances":[{"prompt":"x"}],"parameters":{"DurationSeconds":4}}"#
            )
            .is_err()
        );
    }
}
