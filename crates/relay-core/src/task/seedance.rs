//! Volcengine Ark's Seedance video tasks: what a `volcengine` channel is sent and
//! answers (`/api/v3/contents/generations/tasks`), and Ark's own client shape, served
//! at `/seedance/v3/contents/generations/tasks` (seed `004`). Seedance reports the
//! tokens a video used (`usage.completion_tokens`, width × height × frames / 1024): a
//! model priced by output tokens is held for the most the asked duration and
//! resolution can use, and charged what the upstream reports.

use billing::task::State;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use store::entities::task;

use super::{Observed, Submission};
use crate::RelayError;

/// The native family's name in the task table.
pub const FAMILY: &str = "seedance";

/// Ark's task collection.
pub const UPSTREAM_PATH: &str = "/api/v3/contents/generations/tasks";

/// Seconds when the request names none (Ark's default).
pub const DEFAULT_SECONDS: i64 = 5;

/// The upstream path of one task.
pub fn item_path(upstream_id: &str) -> String {
    format!(
        "{UPSTREAM_PATH}/{}",
        super::videos::encode_segment(upstream_id)
    )
}

/// The largest frame area of a resolution, over the aspect ratios Ark offers (21:9 is
/// the widest): what a hold assumes.
fn max_area(resolution: &str) -> i64 {
    match resolution {
        "480p" => 992 * 432,
        "720p" => 1470 * 630,
        _ => 2206 * 946,
    }
}

/// The most tokens `seconds` of video at `resolution` can use (24 frames a second
/// and one more, as Ark counts them).
pub fn hold_tokens(seconds: i64, resolution: &str) -> i64 {
    let frames = 24 * seconds.max(1) + 1;
    (max_area(resolution) * frames + 1023) / 1024
}

/// What Tollgate reads of a native request: the model, the duration and resolution
/// it holds for, the body to forward, and what makes a retry the same request.
#[derive(Debug, Clone)]
pub struct Ask {
    pub model: String,
    pub seconds: i64,
    pub resolution: String,
    pub body: Bytes,
    pub fingerprint: String,
    pub prompt: String,
    /// The client's `callback_url` (kept by Tollgate, not forwarded).
    pub hook: Option<String>,
}

/// The top-level fields read, each once and in lowercase.
const READ: [&str; 6] = [
    "model",
    "content",
    "duration",
    "resolution",
    "callback_url",
    "return_last_frame",
];

/// Reads `POST /seedance/v3/contents/generations/tasks`.
pub fn parse_native(body: &[u8]) -> Result<Ask, RelayError> {
    let keys: super::videos::Keys = serde_json::from_slice(body)
        .map_err(|_| RelayError::InvalidRequest("the body must be a JSON object".into()))?;
    super::videos::check_names_of(&READ, keys.0.iter().map(String::as_str))?;
    let mut v: Value = serde_json::from_slice(body)
        .map_err(|_| RelayError::InvalidRequest("the body is not valid JSON".into()))?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| RelayError::InvalidRequest("the body must be a JSON object".into()))?;
    let model = obj
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| RelayError::InvalidRequest("'model' is required".into()))?
        .to_owned();
    let content = obj
        .get("content")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| RelayError::InvalidRequest("'content' must be a non-empty array".into()))?;
    let texts: Vec<&str> = content
        .iter()
        .filter(|c| c.get("type").and_then(Value::as_str) == Some("text"))
        .filter_map(|c| c.get("text").and_then(Value::as_str))
        .collect();
    if texts.len() > 1 {
        return Err(RelayError::InvalidRequest(
            "'content' may hold one text item".into(),
        ));
    }
    let text = texts.first().copied().unwrap_or_default().to_owned();
    // Only the commands Tollgate prices or that do not change the price: a longer or
    // denser video (frames, frame rate) must not ride on the hold of a shorter one.
    if let Some((name, _)) = flags(&text).find(|(k, _)| !FLAGS.contains(k)) {
        return Err(RelayError::InvalidRequest(format!(
            "the text command '--{name}' is not supported here"
        )));
    }
    if let Some(k) = ["frames", "fps", "framespersecond"]
        .iter()
        .find(|k| obj.contains_key(**k))
    {
        return Err(RelayError::InvalidRequest(format!(
            "'{k}' is not supported here: ask for a duration"
        )));
    }
    let flag = |names: &[&str]| -> Result<Option<String>, RelayError> {
        let found: Vec<String> = flags(&text)
            .filter(|(k, _)| names.contains(k))
            .map(|(_, v)| v.to_owned())
            .collect();
        match found.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one.clone())),
            _ => Err(RelayError::InvalidRequest(format!(
                "'--{}' is given more than once",
                names[0]
            ))),
        }
    };
    let field = |k: &str| match obj.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(RelayError::InvalidRequest(format!(
            "'{k}' must be a string or a number"
        ))),
    };
    let one = |a: Option<String>, b: Option<String>, name: &str| match (a, b) {
        (Some(a), Some(b)) if a != b => Err(RelayError::InvalidRequest(format!(
            "'{name}' is given both as a field and in the text"
        ))),
        (a, b) => Ok(a.or(b)),
    };
    let seconds = one(field("duration")?, flag(&["dur", "duration"])?, "duration")?
        .map(|s| {
            s.trim()
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=60).contains(n))
                .ok_or_else(|| {
                    RelayError::InvalidRequest("the duration must be 1 to 60 seconds".into())
                })
        })
        .transpose()?
        .unwrap_or(DEFAULT_SECONDS);
    let resolution = one(
        field("resolution")?,
        flag(&["rs", "resolution"])?,
        "resolution",
    )?
    .map(|r| r.to_ascii_lowercase())
    .unwrap_or_else(|| "1080p".into());
    if !matches!(resolution.as_str(), "480p" | "720p" | "1080p") {
        return Err(RelayError::InvalidRequest(
            "the resolution must be 480p, 720p or 1080p".into(),
        ));
    }
    let hook = field("callback_url")?;
    obj.remove("callback_url");
    let forwarded = Bytes::from(v.to_string());
    let fingerprint = format!(
        "{model}\n{seconds}\n{resolution}\n{hook:?}\n{}",
        store::hash_bytes(&forwarded)
    );
    Ok(Ask {
        model,
        seconds,
        resolution,
        body: forwarded,
        fingerprint,
        prompt: text,
        hook,
    })
}

/// The text commands accepted: duration and resolution (priced), and those that do
/// not change what a video costs.
const FLAGS: [&str; 11] = [
    "dur",
    "duration",
    "rs",
    "resolution",
    "ratio",
    "rt",
    "seed",
    "camerafixed",
    "cf",
    "watermark",
    "wm",
];

/// Whether a client's prompt carries text commands of its own (`--name`).
pub fn has_flags(text: &str) -> bool {
    text.split_whitespace()
        .any(|w| w.starts_with("--") && w.len() > 2)
}

/// `--name value` pairs of a Seedance text prompt.
fn flags(text: &str) -> impl Iterator<Item = (&str, &str)> {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut out = Vec::new();
    for pair in words.windows(2) {
        if let Some(name) = pair[0].strip_prefix("--") {
            out.push((name, pair[1]));
        }
    }
    out.into_iter()
}

/// `body` (a JSON object) with `model` set.
pub fn with_model(body: &Bytes, model: &str) -> Bytes {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(mut o)) => {
            o.insert("model".into(), Value::String(model.to_owned()));
            Bytes::from(Value::Object(o).to_string())
        }
        _ => body.clone(),
    }
}

/// A native submission for the upstream model.
pub fn native_submission(ask: &Ask, upstream_model: &str) -> Submission {
    Submission {
        path: UPSTREAM_PATH.into(),
        body: with_model(&ask.body, upstream_model),
        content_type: "application/json".into(),
    }
}

/// The resolution and aspect ratio Ark is asked for a `WxH` size.
pub fn resolution_of(size: Option<&str>) -> (Option<&'static str>, Option<&'static str>) {
    let Some((w, h)) = size
        .and_then(|s| s.split_once(['x', 'X']))
        .and_then(|(w, h)| Some((w.trim().parse::<u32>().ok()?, h.trim().parse::<u32>().ok()?)))
    else {
        return (None, None);
    };
    // By area, the way providers tier their sizes (624x624 is a 480p size, 960x960
    // and 1088x832 are 720p ones).
    let area = u64::from(w) * u64::from(h);
    let resolution = if area <= 500_000 {
        "480p"
    } else if area <= 1_000_000 {
        "720p"
    } else {
        "1080p"
    };
    let ratio = [
        ("16:9", 16, 9),
        ("9:16", 9, 16),
        ("1:1", 1, 1),
        ("4:3", 4, 3),
        ("3:4", 3, 4),
        ("21:9", 21, 9),
    ]
    .into_iter()
    .min_by_key(|(_, a, b)| {
        (i64::from(w) * b - i64::from(h) * a).abs() * 1000 / i64::from(h.max(1))
    })
    .map(|(r, ..)| r);
    (Some(resolution), ratio)
}

/// An OpenAI-shaped video request (`/v1/videos`) in Ark's shape: the prompt with its
/// duration, resolution and ratio as Ark's text commands, and the reference image.
pub fn from_openai(
    prompt: &str,
    seconds: i64,
    size: Option<&str>,
    image_url: Option<&str>,
    upstream_model: &str,
) -> Submission {
    let (resolution, ratio) = resolution_of(size);
    let mut text = format!("{prompt} --dur {seconds}");
    if let Some(r) = resolution {
        text.push_str(&format!(" --rs {r}"));
    }
    if let Some(r) = ratio {
        text.push_str(&format!(" --ratio {r}"));
    }
    let mut content = vec![json!({"type": "text", "text": text})];
    if let Some(url) = image_url {
        content.push(json!({"type": "image_url", "image_url": {"url": url}}));
    }
    Submission {
        path: UPSTREAM_PATH.into(),
        body: Bytes::from(json!({"model": upstream_model, "content": content}).to_string()),
        content_type: "application/json".into(),
    }
}

#[derive(Deserialize)]
struct ArkTask {
    id: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default)]
    error: Option<Value>,
    #[serde(default)]
    duration: Option<Value>,
}

/// Ark's status words (one place for all of them). Unknown words are `None`.
pub fn state_of(word: &str) -> Option<State> {
    Some(match word.to_ascii_lowercase().as_str() {
        "queued" | "pending" => State::Queued,
        "running" | "processing" => State::InProgress,
        "succeeded" | "success" => State::Succeeded,
        "failed" | "expired" => State::Failed,
        "cancelled" | "canceled" => State::Cancelled,
        _ => return None,
    })
}

/// Reads an Ark task (a submission's answer is just `{id}`: queued).
pub fn observe(body: &[u8]) -> Option<(String, Observed)> {
    let t: ArkTask = serde_json::from_slice(body).ok()?;
    if t.id.is_empty() {
        return None;
    }
    let word = t.status.unwrap_or_else(|| "queued".into());
    let tokens = t
        .usage
        .as_ref()
        .and_then(|u| u.get("completion_tokens"))
        .and_then(Value::as_i64)
        .filter(|n| *n >= 0);
    let video_url = t
        .content
        .as_ref()
        .and_then(|c| c.get("video_url"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let error = t.error.filter(|e| !e.is_null()).map(|e| {
        let code = e.get("code").and_then(Value::as_str).unwrap_or("failed");
        let message = e.get("message").and_then(Value::as_str).unwrap_or("");
        format!("{code}: {message}")
    });
    let seconds = t
        .duration
        .as_ref()
        .and_then(Value::as_i64)
        .filter(|s| *s > 0);
    let state = state_of(&word);
    Some((
        t.id,
        Observed {
            progress: if state == Some(State::Succeeded) {
                100
            } else {
                0
            },
            state,
            word,
            seconds,
            tokens,
            images: None,
            result: video_url.map(|u| json!({ "video_url": u })),
            error,
        },
    ))
}

/// Ark's status word for a task's state.
fn status_word(state: &str) -> &'static str {
    match State::parse(state) {
        Some(State::Queued) | None => "queued",
        Some(State::InProgress) => "running",
        Some(State::Succeeded) => "succeeded",
        Some(State::Failed | State::Expired) => "failed",
        Some(State::Cancelled) => "cancelled",
    }
}

/// A task in Ark's shape; `video_url` is Tollgate's signed URL for its content.
pub fn task_json(t: &task::Model, video_url: Option<String>) -> Value {
    let result: Value = t
        .result
        .as_deref()
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or(Value::Null);
    let status = status_word(&t.state);
    let mut out = json!({
        "id": t.id,
        "model": t.model,
        "status": status,
        "created_at": t.created_at.timestamp(),
        "updated_at": t.updated_at.timestamp(),
    });
    if status == "succeeded" {
        out["content"] = json!({ "video_url": video_url });
        if let Some(tokens) = result.get("completion_tokens").and_then(Value::as_i64) {
            out["usage"] = json!({"completion_tokens": tokens, "total_tokens": tokens});
        }
    }
    if status == "failed" || status == "cancelled" {
        let text = t
            .error
            .as_deref()
            .map(crate::error::redact)
            .unwrap_or_else(|| status.into());
        let (code, message) = text
            .split_once(": ")
            .map_or((status.to_owned(), text.clone()), |(c, m)| {
                (c.to_owned(), m.to_owned())
            });
        out["error"] = json!({"code": code, "message": message});
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_covers_the_tokens_ark_reports_for_the_asked_video() {
        // Ark's own example: 720p, 5 s (121 frames) at 1280x720 reported 108,900.
        assert!(hold_tokens(5, "720p") >= 108_900);
        assert!(hold_tokens(5, "1080p") >= 1920 * 1080 * 121 / 1024);
        assert!(hold_tokens(10, "480p") >= 864 * 480 * 241 / 1024);
    }

    #[test]
    fn duration_and_resolution_are_read_from_fields_or_text_and_never_twice() {
        let ask = parse_native(
            br#"{"model":"seedance-pro","content":[{"type":"text","text":"a cat --rs 720p --dur 10"}]}"#,
        )
        .unwrap();
        assert_eq!((ask.seconds, ask.resolution.as_str()), (10, "720p"));
        let plain =
            parse_native(br#"{"model":"m","content":[{"type":"text","text":"a cat"}]}"#).unwrap();
        assert_eq!((plain.seconds, plain.resolution.as_str()), (5, "1080p"));
        for bad in [
            r#"{"model":"m","content":[{"type":"text","text":"x --dur 5 --dur 10"}]}"#,
            r#"{"model":"m","duration":5,"content":[{"type":"text","text":"x --dur 10"}]}"#,
            r#"{"model":"m","Duration":10,"content":[{"type":"text","text":"x"}]}"#,
            r#"{"model":"m","content":[{"type":"text","text":"x --rs 4k"}]}"#,
            r#"{"model":"m","content":[{"type":"text","text":"x --frames 289"}]}"#,
            r#"{"model":"m","frames":289,"content":[{"type":"text","text":"x"}]}"#,
            r#"{"model":"m","content":[{"type":"text","text":"x --fps 60"}]}"#,
            r#"{"model":"m","content":[]}"#,
            r#"{"content":[{"type":"text","text":"x"}]}"#,
        ] {
            assert!(parse_native(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_openai_size_becomes_arks_resolution_and_ratio() {
        assert_eq!(
            resolution_of(Some("1280x720")),
            (Some("720p"), Some("16:9"))
        );
        assert_eq!(
            resolution_of(Some("720x1280")),
            (Some("720p"), Some("9:16"))
        );
        assert_eq!(
            resolution_of(Some("1792x1024")),
            (Some("1080p"), Some("16:9"))
        );
        assert_eq!(resolution_of(None), (None, None));
        assert_eq!(resolution_of(Some("624x624")).0, Some("480p"));
        assert_eq!(resolution_of(Some("960x960")).0, Some("720p"));
        assert_eq!(resolution_of(Some("1088x832")).0, Some("720p"));
    }

    #[test]
    fn arks_words_and_usage_are_read() {
        let (id, seen) = observe(
            br#"{"id":"cgt-1","status":"succeeded","content":{"video_url":"https://x/v.mp4"},"usage":{"completion_tokens":108900,"total_tokens":108900}}"#,
        )
        .unwrap();
        assert_eq!(id, "cgt-1");
        assert_eq!(seen.state, Some(State::Succeeded));
        assert_eq!(seen.tokens, Some(108_900));
        assert_eq!(seen.result, Some(json!({"video_url": "https://x/v.mp4"})));
        let (_, queued) = observe(br#"{"id":"cgt-2"}"#).unwrap();
        assert_eq!(queued.state, Some(State::Queued));
        let (_, odd) = observe(br#"{"id":"cgt-3","status":"thinking"}"#).unwrap();
        assert_eq!(odd.state, None);
    }
}
