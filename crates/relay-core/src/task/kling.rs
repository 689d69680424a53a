//! Kling: what a `kling` channel is sent and answers, and Kling's own client shape,
//! served at `/kling/v1/...` (seed `002`). The channel key is `access_key|secret_key`;
//! every request carries a fresh JWT (HS256: `iss` the access key, `exp` in 30
//! minutes, `nbf` 5 s ago) signed with the secret key. Every answer is
//! `{code, message, request_id, data}`; a task lives under the path that created it.

use billing::task::State;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use store::entities::task;

use super::{Observed, Submission};
use crate::RelayError;

/// The native family's name in the task table.
pub const FAMILY: &str = "kling";

/// What a Kling client may create: (client path after `/kling`, upstream path).
pub const ACTIONS: [&str; 3] = [
    "/v1/videos/text2video",
    "/v1/videos/image2video",
    "/v1/images/generations",
];

/// Seconds when the request names none (Kling's default).
pub const DEFAULT_SECONDS: i64 = 5;

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    exp: i64,
    nbf: i64,
}

/// The `Authorization` bearer for a `kling` channel key: a JWT from `ak|sk`, or the
/// key as it is when it has no `|` (a relay in front of Kling).
pub fn bearer(key: &str) -> String {
    let Some((ak, sk)) = key.split_once('|') else {
        return key.to_owned();
    };
    let now = chrono::Utc::now().timestamp();
    let claims = Claims {
        iss: ak.trim(),
        exp: now + 1800,
        nbf: now - 5,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(sk.trim().as_bytes()),
    )
    .unwrap_or_default()
}

/// What Tollgate reads of a native request.
#[derive(Debug, Clone)]
pub struct Ask {
    /// The upstream path (one of [`ACTIONS`]).
    pub path: &'static str,
    pub model: String,
    pub seconds: i64,
    /// Images asked (image generation).
    pub images: i64,
    pub body: Bytes,
    pub prompt: String,
    pub hook: Option<String>,
    pub fingerprint: String,
    /// The priced name of a dearer variant: `{model}-pro` for `mode: pro`, with
    /// `-sound` for `sound: on` (Kling charges both more).
    pub variant: Option<String>,
    /// The client's own `external_task_id`: shown back to it, never sent upstream
    /// (Tollgate sends its task id there, to find a submission whose answer was lost).
    pub external_id: Option<String>,
}

const READ: [&str; 6] = [
    "model_name",
    "model",
    "duration",
    "n",
    "callback_url",
    "external_task_id",
];

/// Reads a native create request for `path` (one of [`ACTIONS`]).
pub fn parse_native(path: &'static str, body: &[u8]) -> Result<Ask, RelayError> {
    let keys: super::videos::Keys = serde_json::from_slice(body)
        .map_err(|_| RelayError::InvalidRequest("the body must be a JSON object".into()))?;
    super::videos::check_names_of(&READ, keys.0.iter().map(String::as_str))?;
    let mut v: Value = serde_json::from_slice(body)
        .map_err(|_| RelayError::InvalidRequest("the body is not valid JSON".into()))?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| RelayError::InvalidRequest("the body must be a JSON object".into()))?;
    // `model_name`, or the legacy `model`; never two different ones.
    let name = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
    let model = match (name("model_name"), name("model")) {
        (Some(a), Some(b)) if a != b => {
            return Err(RelayError::InvalidRequest(
                "'model_name' and 'model' differ: send one".into(),
            ));
        }
        (a, b) => a.or(b).unwrap_or_else(|| "kling-v1".into()),
    };
    obj.remove("model");
    let is_video = path.starts_with("/v1/videos");
    let seconds = match obj.get("duration") {
        None | Some(Value::Null) => DEFAULT_SECONDS,
        Some(Value::String(s)) => s.trim().parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(_) => 0,
    };
    if is_video && !(1..=60).contains(&seconds) {
        return Err(RelayError::InvalidRequest(
            "'duration' must be a whole number of seconds, such as \"5\" or \"10\"".into(),
        ));
    }
    if is_video {
        // What is held is what is asked: Kling takes the duration as a string.
        obj.insert("duration".into(), Value::String(seconds.to_string()));
    }
    let images = match obj.get("n") {
        None | Some(Value::Null) => 1,
        Some(n) => n
            .as_i64()
            .filter(|n| (1..=9).contains(n))
            .ok_or_else(|| RelayError::InvalidRequest("'n' must be 1 to 9".into()))?,
    };
    if !is_video {
        obj.insert("n".into(), images.into());
    }
    let prompt = obj
        .get("prompt")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let hook = obj
        .get("callback_url")
        .and_then(Value::as_str)
        .map(str::to_owned);
    obj.remove("callback_url");
    let external_id = match obj.remove("external_task_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= 128 => Some(s),
        Some(_) => {
            return Err(RelayError::InvalidRequest(
                "'external_task_id' must be a string of at most 128 characters".into(),
            ));
        }
    };
    let mode = obj.get("mode").and_then(Value::as_str).unwrap_or("std");
    let sound = obj.get("sound").and_then(Value::as_str).unwrap_or("off");
    if !matches!(mode, "std" | "pro") || !matches!(sound, "on" | "off") {
        return Err(RelayError::InvalidRequest(
            "'mode' must be std or pro, 'sound' on or off".into(),
        ));
    }
    let variant = match (mode, sound) {
        ("std", "off") => None,
        ("pro", "off") => Some(format!("{model}-pro")),
        ("std", _) => Some(format!("{model}-sound")),
        _ => Some(format!("{model}-pro-sound")),
    };
    obj.insert("model_name".into(), Value::String(model.clone()));
    let forwarded = Bytes::from(v.to_string());
    let fingerprint = format!(
        "{path}\n{hook:?}\n{external_id:?}\n{}",
        store::hash_bytes(&forwarded)
    );
    Ok(Ask {
        path,
        model,
        seconds: if is_video { seconds } else { 0 },
        images: if is_video { 0 } else { images },
        body: forwarded,
        prompt,
        hook,
        fingerprint,
        variant,
        external_id,
    })
}

/// Whether submissions to `path` carry Tollgate's task id as their `external_task_id`
/// (Kling's video endpoints take one; its image endpoint documents none).
pub fn tags(path: &str) -> bool {
    path.starts_with("/v1/videos/")
}

/// A Kling submission carrying Tollgate's task id as its `external_task_id`, by which
/// a submission whose answer was lost is found among the upstream's tasks.
pub fn tagged(body: &Bytes, task_id: &str) -> Bytes {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(mut o)) => {
            o.insert("external_task_id".into(), Value::String(task_id.to_owned()));
            Bytes::from(Value::Object(o).to_string())
        }
        _ => body.clone(),
    }
}

/// The upstream path listing the tasks made at `path` (newest first, one page).
pub fn list_path(path: &str) -> String {
    format!("{path}?pageNum=1&pageSize=500")
}

/// The upstream id of the task tagged `task_id` in a Kling task list, if listed.
pub fn find_tagged(body: &[u8], task_id: &str) -> Option<String> {
    let env: Envelope = serde_json::from_slice(body).ok()?;
    if env.code != 0 {
        return None;
    }
    env.data?.as_array()?.iter().find_map(|item| {
        let tag = item.get("task_info")?.get("external_task_id")?.as_str()?;
        if tag != task_id {
            return None;
        }
        match item.get("task_id")? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    })
}

/// A native submission with the channel's model name.
pub fn native_submission(ask: &Ask, upstream_model: &str) -> Submission {
    let body = match serde_json::from_slice::<Value>(&ask.body) {
        Ok(Value::Object(mut o)) => {
            o.insert(
                "model_name".into(),
                Value::String(upstream_model.to_owned()),
            );
            Bytes::from(Value::Object(o).to_string())
        }
        _ => ask.body.clone(),
    };
    Submission {
        path: ask.path.into(),
        body,
        content_type: "application/json".into(),
    }
}

/// An OpenAI-shaped video request (`/v1/videos`) in Kling's terms: image-to-video when
/// it names a reference image, else text-to-video; `size` as an aspect ratio.
pub fn from_openai(
    prompt: &str,
    seconds: i64,
    size: Option<&str>,
    image_url: Option<&str>,
    upstream_model: &str,
) -> Submission {
    let ratio = super::seedance::resolution_of(size)
        .1
        .filter(|r| matches!(*r, "16:9" | "9:16" | "1:1"));
    let mut body = json!({
        "model_name": upstream_model,
        "prompt": prompt,
        "duration": seconds.to_string(),
    });
    if let Some(r) = ratio {
        body["aspect_ratio"] = json!(r);
    }
    let path = match image_url {
        Some(url) => {
            body["image"] = json!(url);
            ACTIONS[1]
        }
        None => ACTIONS[0],
    };
    Submission {
        path: path.into(),
        body: Bytes::from(body.to_string()),
        content_type: "application/json".into(),
    }
}

/// Kling's status words. Unknown words are `None`.
pub fn state_of(word: &str) -> Option<State> {
    Some(match word.to_ascii_lowercase().as_str() {
        "submitted" => State::Queued,
        "processing" => State::InProgress,
        "succeed" | "succeeded" => State::Succeeded,
        "failed" => State::Failed,
        _ => return None,
    })
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    data: Option<Value>,
}

/// Reads Kling's envelope around a task (submission or query).
pub fn observe(body: &[u8]) -> Option<(String, Observed)> {
    let env: Envelope = serde_json::from_slice(body).ok()?;
    if env.code != 0 {
        return None;
    }
    let data = env.data?;
    let id = match data.get("task_id")? {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let word = data
        .get("task_status")
        .and_then(Value::as_str)
        .unwrap_or("submitted")
        .to_owned();
    let result = data.get("task_result").cloned().unwrap_or(Value::Null);
    let videos: Vec<&Value> = result
        .get("videos")
        .and_then(Value::as_array)
        .map(|v| v.iter().collect())
        .unwrap_or_default();
    let images: Vec<&Value> = result
        .get("images")
        .and_then(Value::as_array)
        .map(|v| v.iter().collect())
        .unwrap_or_default();
    let seconds = videos
        .first()
        .and_then(|v| v.get("duration"))
        .and_then(|d| match d {
            Value::String(s) => s.parse::<f64>().ok(),
            Value::Number(n) => n.as_f64(),
            _ => None,
        })
        .filter(|d| *d > 0.0)
        .map(|d| d.round() as i64);
    let urls: Vec<Value> = videos
        .iter()
        .chain(images.iter())
        .filter_map(|v| v.get("url").cloned())
        .collect();
    let state = state_of(&word);
    Some((
        id,
        Observed {
            progress: if state == Some(State::Succeeded) {
                100
            } else {
                0
            },
            state,
            error: data
                .get("task_status_msg")
                .and_then(Value::as_str)
                .filter(|m| !m.is_empty() && state == Some(State::Failed))
                .map(|m| format!("failed: {m}")),
            word,
            seconds,
            tokens: None,
            images: (!images.is_empty()).then_some(images.len() as i64),
            result: (!urls.is_empty()).then(|| json!({ "urls": urls })),
        },
    ))
}

/// A task in Kling's envelope; `urls` are Tollgate's signed URLs of its results.
pub fn task_json(t: &task::Model, urls: &[String]) -> Value {
    let word = match State::parse(&t.state) {
        Some(State::Queued) | None => "submitted",
        Some(State::InProgress) => "processing",
        Some(State::Succeeded) => "succeed",
        Some(State::Failed | State::Cancelled | State::Expired) => "failed",
    };
    let mut data = json!({
        "task_id": t.id,
        "task_status": word,
        "created_at": t.created_at.timestamp_millis(),
        "updated_at": t.updated_at.timestamp_millis(),
    });
    let external = serde_json::from_str::<Value>(&t.meta)
        .ok()
        .and_then(|m| m.get("external_task_id").cloned());
    if let Some(ext) = external.filter(Value::is_string) {
        data["task_info"] = json!({"external_task_id": ext});
    }
    if word == "failed" {
        let msg = t
            .error
            .as_deref()
            .map(crate::error::redact)
            .unwrap_or_else(|| "failed".into());
        data["task_status_msg"] = json!(msg.strip_prefix("failed: ").unwrap_or(&msg));
    }
    if word == "succeed" {
        let result: Value = t
            .result
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok())
            .unwrap_or(Value::Null);
        let seconds = result.get("seconds").and_then(Value::as_i64).unwrap_or(0);
        data["task_result"] = if t.action == "images" {
            json!({"images": urls.iter().enumerate().map(|(i, u)| json!({"index": i, "url": u})).collect::<Vec<_>>()})
        } else {
            json!({"videos": urls.iter().enumerate().map(|(i, u)| json!({"id": i.to_string(), "url": u, "duration": seconds.to_string()})).collect::<Vec<_>>()})
        };
    }
    json!({"code": 0, "message": "SUCCEED", "request_id": t.id, "data": data})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kling_key_signs_a_short_lived_jwt_for_its_access_key() {
        let token = bearer("AKey|SKey");
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.required_spec_claims = ["exp", "nbf", "iss"]
            .into_iter()
            .map(String::from)
            .collect();
        v.set_issuer(&["AKey"]);
        let claims = jsonwebtoken::decode::<Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(b"SKey"),
            &v,
        )
        .unwrap()
        .claims;
        let now = chrono::Utc::now().timestamp();
        assert!((claims["exp"].as_i64().unwrap() - now - 1800).abs() <= 2);
        assert_eq!(bearer("sk-relay-key"), "sk-relay-key");
    }

    #[test]
    fn klings_envelope_words_and_results_are_read() {
        let (id, seen) = observe(br#"{"code":0,"message":"SUCCEED","request_id":"r","data":{"task_id":"866889456698785798","task_status":"submitted","created_at":1774711071284}}"#).unwrap();
        assert_eq!(
            (id.as_str(), seen.state),
            ("866889456698785798", Some(State::Queued))
        );
        let (_, done) = observe(br#"{"code":0,"data":{"task_id":"1","task_status":"succeed","task_result":{"videos":[{"id":"v","url":"https://cdn/x.mp4","duration":"10.0"}]}}}"#).unwrap();
        assert_eq!(
            (done.state, done.seconds),
            (Some(State::Succeeded), Some(10))
        );
        assert_eq!(done.result, Some(json!({"urls": ["https://cdn/x.mp4"]})));
        assert!(
            observe(br#"{"code":1303,"message":"parallel task over resource pack limit"}"#)
                .is_none()
        );
    }

    #[test]
    fn the_duration_held_is_the_duration_sent_and_two_model_names_are_refused() {
        let ask = parse_native(
            ACTIONS[0],
            br#"{"model_name":"kling-v1","prompt":"x","duration":10}"#,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&ask.body).unwrap();
        assert_eq!((ask.seconds, v["duration"].clone()), (10, json!("10")));
        assert!(
            parse_native(
                ACTIONS[0],
                br#"{"model_name":"kling-v1","model":"kling-v2-master","prompt":"x"}"#
            )
            .is_err()
        );
        assert!(parse_native(ACTIONS[0], br#"{"prompt":"x","Duration":"10"}"#).is_err());
        let img = parse_native(
            ACTIONS[2],
            br#"{"model_name":"kling-v1","prompt":"x","n":4}"#,
        )
        .unwrap();
        assert_eq!((img.images, img.seconds), (4, 0));
    }
}
