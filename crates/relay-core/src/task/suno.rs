//! Suno in the shape relays sell it (seed `002`; the Suno-API server's shape): what a
//! `suno` channel is sent and answers, and the client shape served at `/suno/...`.
//!
//! `POST /suno/submit/music` and `/suno/submit/lyrics` answer
//! `{code:"success", message, data:"<task id>"}`; a task is
//! `{task_id, action, status, fail_reason, submit_time, start_time, finish_time,
//! progress, data}` where `data` is the clips of a song (usually two) or the lyrics;
//! the upstream reads many at once at `POST /suno/fetch {ids}`. Priced per task as
//! `suno_music` and `suno_lyrics`.

use billing::task::State;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use store::entities::task;

use super::{Observed, Submission};
use crate::RelayError;

/// The family's name in the task table.
pub const FAMILY: &str = "suno";

/// The upstream path of one task.
pub fn item_path(upstream_id: &str) -> String {
    format!("/suno/fetch/{}", super::videos::encode_segment(upstream_id))
}

/// A clip's fields kept for the client (never who made it upstream, or the
/// upstream's history and prompt ids).
const CLIP_KEPT: [&str; 10] = [
    "id",
    "title",
    "status",
    "model_name",
    "major_model_version",
    "created_at",
    "is_video_pending",
    "play_count",
    "upvote_count",
    "is_public",
];
const METADATA_KEPT: [&str; 7] = [
    "tags",
    "prompt",
    "gpt_description_prompt",
    "type",
    "duration",
    "error_type",
    "error_message",
];

/// A clip's fields that are addresses of its files: served through Tollgate.
pub const CLIP_URLS: [&str; 4] = ["audio_url", "video_url", "image_url", "image_large_url"];

/// What Tollgate reads of a submission.
#[derive(Debug, Clone)]
pub struct Ask {
    /// `MUSIC` or `LYRICS`.
    pub action: &'static str,
    /// `suno_music` or `suno_lyrics`.
    pub model: &'static str,
    pub path: &'static str,
    /// The body sent upstream (the fields Suno reads), `task_id` set to the parent's
    /// upstream id when the task is sent.
    pub body: Value,
    /// The task a continuation extends (Tollgate's id).
    pub parent: Option<String>,
    /// The clip a continuation extends: it must be one of the parent's.
    pub clip: Option<String>,
    pub prompt: String,
    pub hook: Option<String>,
    pub fingerprint: String,
}

fn invalid(message: &str) -> RelayError {
    RelayError::InvalidRequest(message.to_owned())
}

/// Reads a submission: `action` is `music` or `lyrics`.
pub fn parse(action: &str, body: &[u8]) -> Result<Ask, RelayError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|_| invalid("the body must be a JSON object"))?;
    let Value::Object(obj) = v else {
        return Err(invalid("the body must be a JSON object"));
    };
    let text = |name: &str| -> Result<Option<String>, RelayError> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(invalid(&format!("'{name}' must be a string"))),
        }
    };
    let hook = text("notify_hook")?;
    let prompt = text("prompt")?;
    let mut out = Map::new();
    let (action, model, path) = match action {
        "music" => {
            let description = text("gpt_description_prompt")?;
            if prompt.is_none() && description.is_none() {
                return Err(invalid(
                    "'prompt' (lyrics) or 'gpt_description_prompt' is required",
                ));
            }
            for name in [
                "prompt",
                "gpt_description_prompt",
                "mv",
                "title",
                "tags",
                "continue_clip_id",
            ] {
                if let Some(s) = text(name)? {
                    out.insert(name.into(), json!(s));
                }
            }
            match obj.get("continue_at") {
                None | Some(Value::Null) => {}
                Some(Value::Number(n)) if n.as_f64().is_some_and(|s| s >= 0.0) => {
                    out.insert("continue_at".into(), Value::Number(n.clone()));
                }
                Some(_) => return Err(invalid("'continue_at' must be a number of seconds")),
            }
            let instrumental = match obj.get("make_instrumental") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(invalid("'make_instrumental' must be true or false")),
            };
            out.insert("make_instrumental".into(), json!(instrumental));
            if !out.contains_key("mv") {
                out.insert("mv".into(), json!("chirp-v3-0"));
            }
            ("MUSIC", "suno_music", "/suno/submit/music")
        }
        "lyrics" => {
            let Some(p) = &prompt else {
                return Err(invalid("'prompt' is required"));
            };
            out.insert("prompt".into(), json!(p));
            ("LYRICS", "suno_lyrics", "/suno/submit/lyrics")
        }
        other => {
            return Err(RelayError::NotFound(format!(
                "no route '/suno/submit/{other}'"
            )));
        }
    };
    let parent = text("task_id")?;
    let clip = out
        .get("continue_clip_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    if clip.is_some() && parent.is_none() {
        return Err(invalid(
            "'task_id' is required with 'continue_clip_id': the task whose clip is continued",
        ));
    }
    if clip.is_none() && parent.is_some() {
        return Err(invalid(
            "'continue_clip_id' is required with 'task_id': the clip continued",
        ));
    }
    let body = Value::Object(out);
    let fingerprint = format!(
        "{action}\n{hook:?}\n{parent:?}\n{}",
        store::hash_bytes(body.to_string().as_bytes())
    );
    Ok(Ask {
        action,
        model,
        path,
        body,
        parent,
        clip,
        prompt: prompt.unwrap_or_default(),
        hook,
        fingerprint,
    })
}

/// The submission of `ask`, continuing the upstream task `parent` when it has one.
pub fn submission(ask: &Ask, parent: Option<&str>) -> Submission {
    let mut body = ask.body.clone();
    if let (Some(p), Some(o)) = (parent, body.as_object_mut()) {
        o.insert("task_id".into(), json!(p));
    }
    Submission {
        path: ask.path.into(),
        body: Bytes::from(body.to_string()),
        content_type: "application/json".into(),
    }
}

/// Suno's task status words. Unknown words (and Suno's own `UNKNOWN`) are `None`.
pub fn state_of(word: &str) -> Option<State> {
    Some(match word {
        "NOT_START" | "SUBMITTED" | "QUEUED" => State::Queued,
        "IN_PROGRESS" => State::InProgress,
        "SUCCESS" => State::Succeeded,
        "FAILURE" => State::Failed,
        _ => return None,
    })
}

/// Reads one upstream task object.
fn observe_task(v: &Value) -> Option<(String, Observed)> {
    let id = v.get("task_id")?.as_str()?.to_owned();
    let word = v
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("NOT_START")
        .to_owned();
    let mut state = state_of(&word);
    let mut error = v
        .get("fail_reason")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
        .map(|r| format!("failed: {}", crate::error::redact(r)));
    let mut urls: Vec<Value> = Vec::new();
    let mut result = Map::new();
    match v.get("data") {
        Some(Value::Array(clips)) => {
            let mut kept = Vec::new();
            for clip in clips {
                let mut c = Map::new();
                for k in CLIP_KEPT {
                    if let Some(x) = clip.get(k) {
                        c.insert(k.into(), x.clone());
                    }
                }
                let mut meta = Map::new();
                for k in METADATA_KEPT {
                    if let Some(x) = clip.pointer(&format!("/metadata/{k}")) {
                        meta.insert(k.into(), x.clone());
                    }
                }
                c.insert("metadata".into(), Value::Object(meta));
                for field in CLIP_URLS {
                    match clip.get(field).and_then(Value::as_str) {
                        Some(u) if !u.is_empty() => {
                            c.insert(field.into(), json!(urls.len()));
                            urls.push(json!(u));
                        }
                        _ => {
                            c.insert(field.into(), json!(""));
                        }
                    }
                }
                kept.push(Value::Object(c));
            }
            result.insert("clips".into(), Value::Array(kept));
        }
        Some(Value::Object(lyrics)) => {
            // Its `id` is the upstream's task id: the client sees Tollgate's instead.
            let kept: Map<String, Value> = lyrics
                .iter()
                .filter(|(k, _)| matches!(k.as_str(), "text" | "title" | "status"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            result.insert("lyrics".into(), Value::Object(kept));
        }
        _ => {}
    }
    if state == Some(State::Succeeded) {
        // A song with no audio, or lyrics with no text, was not delivered.
        let delivered = match result.get("clips").and_then(Value::as_array) {
            Some(clips) => clips
                .iter()
                .any(|c| c.get("audio_url").is_some_and(Value::is_number)),
            None => result
                .get("lyrics")
                .and_then(|l| l.get("text"))
                .and_then(Value::as_str)
                .is_some_and(|t| !t.is_empty()),
        };
        if !delivered {
            state = Some(State::Failed);
            error = Some("failed: the upstream delivered nothing".into());
        }
    }
    result.insert("urls".into(), Value::Array(urls));
    for k in ["start_time"] {
        if let Some(x) = v.get(k) {
            result.insert(k.into(), x.clone());
        }
    }
    let progress = if state == Some(State::Succeeded) {
        100
    } else {
        super::percent(v.get("progress"))
    };
    Some((
        id,
        Observed {
            state,
            word,
            progress,
            seconds: None,
            tokens: None,
            images: None,
            result: Some(Value::Object(result)),
            error,
        },
    ))
}

/// Reads an upstream answer about a task: a submission's
/// `{code:"success", data:"<id>"}` or a fetch's `{code, data:{task}}`.
pub fn observe(body: &[u8]) -> Option<(String, Observed)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    if v.get("code").and_then(Value::as_str) != Some("success") {
        return None;
    }
    match v.get("data")? {
        Value::String(id) if !id.is_empty() => Some((
            id.clone(),
            Observed {
                state: Some(State::Queued),
                word: "SUBMITTED".into(),
                progress: 0,
                seconds: None,
                tokens: None,
                images: None,
                result: None,
                error: None,
            },
        )),
        task @ Value::Object(_) => observe_task(task),
        _ => None,
    }
}

/// Reads a batch fetch's answer: `{code:"success", data:[tasks]}`.
pub fn observe_many(body: &[u8]) -> Option<Vec<(String, Observed)>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    if v.get("code").and_then(Value::as_str) != Some("success") {
        return None;
    }
    Some(
        v.get("data")?
            .as_array()?
            .iter()
            .filter_map(observe_task)
            .collect(),
    )
}

fn stored(t: &task::Model) -> Value {
    t.result
        .as_deref()
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or(Value::Null)
}

/// The clip ids of a finished song (a continuation must name one of them).
pub fn clip_ids(t: &task::Model) -> Vec<String> {
    stored(t)
        .get("clips")
        .and_then(Value::as_array)
        .map(|clips| {
            clips
                .iter()
                .filter_map(|c| c.get("id").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Task `t` as Suno clients read it, with `urls` its signed file URLs.
pub fn task_json(t: &task::Model, urls: &[String]) -> Value {
    let word = match State::parse(&t.state) {
        Some(State::Queued) | None => t
            .upstream_status
            .as_deref()
            .filter(|w| matches!(*w, "NOT_START" | "SUBMITTED" | "QUEUED"))
            .unwrap_or("SUBMITTED")
            .to_owned(),
        Some(State::InProgress) => "IN_PROGRESS".into(),
        Some(State::Succeeded) => "SUCCESS".into(),
        Some(State::Failed | State::Expired | State::Cancelled) => "FAILURE".into(),
    };
    let result = stored(t);
    let data = if word == "SUCCESS" {
        if let Some(clips) = result.get("clips").and_then(Value::as_array) {
            let signed = clips
                .iter()
                .map(|clip| {
                    let mut clip = clip.clone();
                    if let Some(c) = clip.as_object_mut() {
                        for field in CLIP_URLS {
                            if let Some(i) = c.get(field).and_then(Value::as_u64) {
                                let url = usize::try_from(i)
                                    .ok()
                                    .and_then(|i| urls.get(i))
                                    .cloned()
                                    .unwrap_or_default();
                                c.insert(field.into(), json!(url));
                            }
                        }
                    }
                    clip
                })
                .collect();
            Value::Array(signed)
        } else {
            match result.get("lyrics") {
                Some(Value::Object(l)) => {
                    let mut l = l.clone();
                    l.insert("id".into(), json!(t.id));
                    Value::Object(l)
                }
                _ => Value::Null,
            }
        }
    } else {
        Value::Null
    };
    let secs = |at: chrono::DateTime<chrono::Utc>| at.timestamp();
    let fail = match word.as_str() {
        "FAILURE" => t
            .error
            .as_deref()
            .map(|e| crate::error::redact(e.strip_prefix("failed: ").unwrap_or(e)))
            .unwrap_or_else(|| "failed".into()),
        _ => String::new(),
    };
    json!({
        "task_id": t.id,
        "action": t.action,
        "status": word,
        "fail_reason": fail,
        "submit_time": secs(t.created_at),
        "start_time": result.get("start_time").and_then(Value::as_i64).unwrap_or(0),
        "finish_time": t.finished_at.map_or(0, secs),
        "progress": format!("{}%", t.progress.clamp(0, 100)),
        "data": data,
    })
}

/// Suno's error envelope code for an error.
pub fn error_code(e: &RelayError) -> &'static str {
    match e.status() {
        404 => "task_not_exist",
        402 => "quota_not_enough",
        400 | 409 | 422 => "invalid_request",
        401 | 403 => "unauthorized",
        429 => "rate_limited",
        _ => "fail_to_fetch_task",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_song_keeps_its_clips_but_not_their_addresses() {
        let body = br#"{"code":"success","message":"","data":{"task_id":"u1","action":"MUSIC","status":"SUCCESS","fail_reason":"","progress":"100%","data":[{"id":"c1","audio_url":"https://cdn1.suno.ai/c1.mp3","video_url":"","image_url":"https://cdn2.suno.ai/image_c1.jpeg","user_id":"x","metadata":{"duration":128.9}}]}}"#;
        let (id, seen) = observe(body).unwrap();
        assert_eq!(id, "u1");
        assert_eq!(seen.state, Some(State::Succeeded));
        let r = seen.result.unwrap();
        assert_eq!(r["urls"].as_array().unwrap().len(), 2);
        assert_eq!(r["clips"][0]["audio_url"], 0);
        assert_eq!(r["clips"][0]["image_url"], 1);
        assert!(r["clips"][0].get("user_id").is_none());
        assert!(!r.to_string().contains("cdn1") || r["urls"][0] == "https://cdn1.suno.ai/c1.mp3");
    }

    #[test]
    fn a_song_without_audio_is_a_failure() {
        let body = br#"{"code":"success","data":{"task_id":"u1","status":"SUCCESS","data":[{"id":"c1","audio_url":""}]}}"#;
        assert_eq!(observe(body).unwrap().1.state, Some(State::Failed));
    }

    #[test]
    fn a_continuation_names_both_its_task_and_its_clip() {
        assert!(parse("music", br#"{"prompt":"x","continue_clip_id":"c1"}"#).is_err());
        assert!(parse("music", br#"{"prompt":"x","task_id":"t"}"#).is_err());
        let ask = parse("music", br#"{"prompt":"x","task_id":"t","continue_clip_id":"c1","continue_at":30.5,"notify_hook":"https://h.example/x"}"#).unwrap();
        assert_eq!(ask.parent.as_deref(), Some("t"));
        assert!(ask.body.get("notify_hook").is_none());
    }
}
