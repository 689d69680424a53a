//! Alibaba DashScope (Wan / Wanx): what a `dashscope` channel is sent and answers, and
//! DashScope's own client shape (seeds `000`, `001`): `X-DashScope-Async` submissions
//! to `/api/v1/services/aigc/...`, polled at `GET /api/v1/tasks/{id}`, cancelled (while
//! pending) at `POST /api/v1/tasks/{id}/cancel`. Video is metered per second
//! (`usage.video_duration`, `duration` on some models), images per image
//! (`usage.image_count`).

use billing::task::State;
use bytes::Bytes;
use serde_json::{Value, json};
use store::entities::task;

use super::{Observed, Submission};
use crate::RelayError;

/// The native family's name in the task table.
pub const FAMILY: &str = "dashscope";

/// What a DashScope client may create (the path after `/api/v1/services/aigc`).
pub const ACTIONS: [&str; 3] = [
    "/api/v1/services/aigc/video-generation/video-synthesis",
    "/api/v1/services/aigc/text2image/image-synthesis",
    "/api/v1/services/aigc/image2image/image-synthesis",
];

/// Seconds when a video request names none (DashScope's default).
pub const DEFAULT_SECONDS: i64 = 5;

/// Images when an image request names none: the most DashScope's image models make by
/// default (charged for what comes back).
pub const DEFAULT_IMAGES: i64 = 4;

/// The upstream path of one task.
pub fn item_path(upstream_id: &str) -> String {
    format!(
        "/api/v1/tasks/{}",
        super::videos::encode_segment(upstream_id)
    )
}

/// What Tollgate reads of a native request.
#[derive(Debug, Clone)]
pub struct Ask {
    pub path: &'static str,
    pub model: String,
    pub seconds: i64,
    pub images: i64,
    pub body: Bytes,
    pub prompt: String,
    pub fingerprint: String,
    /// The resolution asked (`480p`, `720p`, `1080p`), when named.
    pub resolution: Option<&'static str>,
}

/// Reads a native create request for `path` (one of [`ACTIONS`]).
pub fn parse_native(path: &'static str, body: &[u8]) -> Result<Ask, RelayError> {
    let keys: super::videos::Keys = serde_json::from_slice(body)
        .map_err(|_| RelayError::InvalidRequest("the body must be a JSON object".into()))?;
    super::videos::check_names_of(
        &["model", "input", "parameters"],
        keys.0.iter().map(String::as_str),
    )?;
    let mut v: Value = serde_json::from_slice(body)
        .map_err(|_| RelayError::InvalidRequest("the body is not valid JSON".into()))?;
    let model = v
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| RelayError::InvalidRequest("'model' is required".into()))?
        .to_owned();
    let prompt = v
        .pointer("/input/prompt")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if !v.get("input").is_some_and(Value::is_object) {
        return Err(RelayError::InvalidRequest(
            "'input' must be an object".into(),
        ));
    }
    let prompt_input = v.get("input").cloned().unwrap_or_default();
    if v.get("parameters").is_none() {
        v["parameters"] = json!({});
    }
    let params = v
        .get_mut("parameters")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| RelayError::InvalidRequest("'parameters' must be an object".into()))?;
    super::videos::check_names_of(&["duration", "n"], params.keys().map(String::as_str))?;
    let number = |k: &str, default: i64, range: std::ops::RangeInclusive<i64>| match params.get(k) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x
            .as_i64()
            .or_else(|| x.as_str().and_then(|s| s.trim().parse().ok()))
            .filter(|n| range.contains(n))
            .ok_or_else(|| RelayError::InvalidRequest(format!("'parameters.{k}' is out of range"))),
    };
    let video = path == ACTIONS[0];
    let (seconds, images) = if video {
        let s = number("duration", DEFAULT_SECONDS, 1..=60)?;
        // What is held is what is asked.
        params.insert("duration".into(), s.into());
        (s, 0)
    } else {
        let n = number("n", DEFAULT_IMAGES, 1..=10)?;
        params.insert("n".into(), n.into());
        (0, n)
    };
    // The field the model reads: image-to-video (a first frame) takes `resolution`,
    // text-to-video takes `size`; the other one is ignored upstream, so it never
    // picks the price.
    let from_image = ["img_url", "first_frame_url", "last_frame_url"]
        .iter()
        .any(|k| prompt_input.get(*k).is_some());
    let resolution = if from_image {
        params
            .get("resolution")
            .and_then(Value::as_str)
            .map(|r| r.to_ascii_lowercase())
            .and_then(|r| ["480p", "720p", "1080p"].into_iter().find(|x| *x == r))
    } else {
        params
            .get("size")
            .and_then(Value::as_str)
            .and_then(|s| super::seedance::resolution_of(Some(&s.replace('*', "x"))).0)
    };
    let forwarded = Bytes::from(v.to_string());
    let fingerprint = format!("{path}\n{}", store::hash_bytes(&forwarded));
    Ok(Ask {
        path,
        model,
        seconds,
        images,
        body: forwarded,
        prompt,
        fingerprint,
        resolution,
    })
}

/// A native submission with the channel's model name.
pub fn native_submission(ask: &Ask, upstream_model: &str) -> Submission {
    Submission {
        path: ask.path.into(),
        body: super::seedance::with_model(&ask.body, upstream_model),
        content_type: "application/json".into(),
    }
}

/// An OpenAI-shaped video request (`/v1/videos`) in DashScope's terms: `size` as
/// `W*H` (text-to-video) or a resolution (image-to-video, from the reference image).
pub fn from_openai(
    prompt: &str,
    seconds: i64,
    size: Option<&str>,
    image_url: Option<&str>,
    upstream_model: &str,
) -> Submission {
    let mut input = json!({ "prompt": prompt });
    let mut parameters = json!({ "duration": seconds });
    match image_url {
        Some(url) => {
            input["img_url"] = json!(url);
            if let Some(r) = super::seedance::resolution_of(size).0 {
                parameters["resolution"] = json!(r.to_ascii_uppercase());
            }
        }
        None => {
            if let Some(s) = size {
                parameters["size"] = json!(s.replace(['x', 'X'], "*"));
            }
        }
    }
    Submission {
        path: ACTIONS[0].into(),
        body: Bytes::from(
            json!({"model": upstream_model, "input": input, "parameters": parameters}).to_string(),
        ),
        content_type: "application/json".into(),
    }
}

/// DashScope's status words. `UNKNOWN` (a task it no longer knows) and `SUSPENDED`
/// are not taken as an end: the task stays open until its deadline.
pub fn state_of(word: &str) -> Option<State> {
    Some(match word.to_ascii_uppercase().as_str() {
        "PENDING" => State::Queued,
        "RUNNING" => State::InProgress,
        "SUCCEEDED" => State::Succeeded,
        "FAILED" => State::Failed,
        "CANCELED" | "CANCELLED" => State::Cancelled,
        _ => return None,
    })
}

/// Reads a submission's answer or a task.
pub fn observe(body: &[u8]) -> Option<(String, Observed)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let output = v.get("output")?;
    let id = output.get("task_id")?.as_str()?.to_owned();
    let word = output
        .get("task_status")
        .and_then(Value::as_str)
        .unwrap_or("PENDING")
        .to_owned();
    let usage = v.get("usage").cloned().unwrap_or(Value::Null);
    let seconds = ["video_duration", "duration"]
        .iter()
        .find_map(|k| usage.get(*k).and_then(Value::as_f64))
        .filter(|s| *s > 0.0)
        .map(|s| s.ceil() as i64);
    let mut urls: Vec<Value> = output
        .get("video_url")
        .filter(|u| u.is_string())
        .cloned()
        .into_iter()
        .collect();
    if let Some(results) = output.get("results").and_then(Value::as_array) {
        urls.extend(results.iter().filter_map(|r| r.get("url").cloned()));
    }
    let images = usage
        .get("image_count")
        .and_then(Value::as_i64)
        .or_else(|| (output.get("results").is_some()).then_some(urls.len() as i64));
    let state = state_of(&word);
    let error = (state == Some(State::Failed)).then(|| {
        let code = output
            .get("code")
            .or_else(|| v.get("code"))
            .and_then(Value::as_str)
            .unwrap_or("failed");
        let message = output
            .get("message")
            .or_else(|| v.get("message"))
            .and_then(Value::as_str)
            .unwrap_or("");
        format!("{code}: {message}")
    });
    Some((
        id,
        Observed {
            progress: if state == Some(State::Succeeded) {
                100
            } else {
                0
            },
            state,
            word,
            seconds,
            tokens: None,
            images,
            result: (!urls.is_empty()).then(|| json!({ "urls": urls })),
            error,
        },
    ))
}

/// A task in DashScope's shape; `urls` are Tollgate's signed URLs of its results.
pub fn task_json(t: &task::Model, urls: &[String]) -> Value {
    let word = match State::parse(&t.state) {
        Some(State::Queued) | None => "PENDING",
        Some(State::InProgress) => "RUNNING",
        Some(State::Succeeded) => "SUCCEEDED",
        Some(State::Failed | State::Expired) => "FAILED",
        Some(State::Cancelled) => "CANCELED",
    };
    let time = |at: chrono::DateTime<chrono::Utc>| at.format("%Y-%m-%d %H:%M:%S%.3f").to_string();
    let mut output = json!({
        "task_id": t.id,
        "task_status": word,
        "submit_time": time(t.created_at),
    });
    let mut out = json!({ "request_id": t.id });
    if let Some(end) = t.finished_at {
        output["end_time"] = json!(time(end));
    }
    if word == "FAILED" {
        let text = t
            .error
            .as_deref()
            .map(crate::error::redact)
            .unwrap_or_else(|| "failed".into());
        let (code, message) = text
            .split_once(": ")
            .map_or(("failed".to_owned(), text.clone()), |(c, m)| {
                (c.to_owned(), m.to_owned())
            });
        output["code"] = json!(code);
        output["message"] = json!(message);
    }
    if word == "SUCCEEDED" {
        let result: Value = t
            .result
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok())
            .unwrap_or(Value::Null);
        if t.action == "video" {
            output["video_url"] = json!(urls.first());
            out["usage"] = json!({
                "video_duration": result.get("seconds").and_then(Value::as_i64).unwrap_or(0),
                "video_count": 1,
            });
        } else {
            output["results"] = json!(urls.iter().map(|u| json!({ "url": u })).collect::<Vec<_>>());
            out["usage"] = json!({ "image_count": urls.len() });
        }
    }
    out["output"] = output;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_video_request_holds_what_it_sends_and_an_image_request_its_images() {
        let ask = parse_native(
            ACTIONS[0],
            br#"{"model":"wan2.2-t2v-plus","input":{"prompt":"a cat"},"parameters":{"size":"1280*720","duration":"8"}}"#,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&ask.body).unwrap();
        assert_eq!(
            (ask.seconds, v["parameters"]["duration"].clone()),
            (8, json!(8))
        );
        let img = parse_native(
            ACTIONS[1],
            br#"{"model":"wanx2.1-t2i-turbo","input":{"prompt":"x"}}"#,
        )
        .unwrap();
        assert_eq!(img.images, DEFAULT_IMAGES);
        assert!(
            parse_native(
                ACTIONS[0],
                br#"{"model":"m","input":{},"parameters":{"Duration":10}}"#
            )
            .is_err()
        );
        assert!(parse_native(ACTIONS[0], br#"{"model":"m","input":"x"}"#).is_err());
    }

    #[test]
    fn dashscope_answers_are_read_with_either_duration_field_and_unknown_stays_open() {
        let (id, seen) =
            observe(br#"{"request_id":"r","output":{"task_id":"t-1","task_status":"PENDING"}}"#)
                .unwrap();
        assert_eq!((id.as_str(), seen.state), ("t-1", Some(State::Queued)));
        let (_, done) = observe(br#"{"output":{"task_id":"t","task_status":"SUCCEEDED","video_url":"https://oss/x.mp4"},"usage":{"duration":18.13}}"#).unwrap();
        assert_eq!(
            (done.state, done.seconds),
            (Some(State::Succeeded), Some(19))
        );
        let (_, imgs) = observe(br#"{"output":{"task_id":"t","task_status":"SUCCEEDED","results":[{"url":"a"},{"url":"b"}]},"usage":{"image_count":2}}"#).unwrap();
        assert_eq!(imgs.images, Some(2));
        let (_, gone) = observe(br#"{"output":{"task_id":"t","task_status":"UNKNOWN"}}"#).unwrap();
        assert_eq!(gone.state, None);
        let (_, failed) = observe(br#"{"output":{"task_id":"t","task_status":"FAILED","code":"DataInspectionFailed","message":"bad"}}"#).unwrap();
        assert_eq!(failed.error.as_deref(), Some("DataInspectionFailed: bad"));
    }
}
