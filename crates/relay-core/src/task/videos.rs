//! The OpenAI videos family (`/v1/videos`, the shape most clients use for every video
//! model), served by OpenAI-compatible (Sora) upstreams: the client's request, the
//! upstream's Video object, and the Video object the client gets back, built from our
//! task (our id, the four statuses the SDK's poller knows, never an upstream URL).

use billing::task::State;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use store::catalog::ChannelKind;
use store::entities::task;

use super::{Builder, Observed, Submission};
use crate::RelayError;
use crate::multipart;

/// The family's name in the task table.
pub const FAMILY: &str = "videos";

/// The model when the client names none (OpenAI's default).
pub const DEFAULT_MODEL: &str = "sora-2";

/// Seconds when the client names none (OpenAI's default).
pub const DEFAULT_SECONDS: i64 = 4;

/// The fields of a create request that Tollgate reads (the rest goes upstream as
/// sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Create {
    pub model: String,
    pub prompt: String,
    pub seconds: i64,
    /// As the client wrote it (OpenAI takes a string; some clients send a number).
    pub seconds_text: Option<String>,
    pub size: Option<String>,
    pub webhook_url: Option<String>,
    /// The body to forward, with the client's own hook taken out.
    pub body: Bytes,
    pub content_type: String,
    /// The multipart boundary, when the body is a form.
    pub boundary: Option<String>,
    /// What makes a retry the same request (for `Idempotency-Key`).
    pub fingerprint: String,
    /// `input_reference.image_url` of a JSON request (an upstream that takes a
    /// reference by URL gets it).
    pub image_url: Option<String>,
}

/// The fields of a create request Tollgate reads or must keep to itself. Each may
/// appear once, spelt exactly so: an upstream that reads another copy (the last, or
/// another case) than the one priced would render what was not paid for.
const READ: [&str; 6] = [
    "model",
    "prompt",
    "seconds",
    "size",
    "webhook_url",
    "input_reference",
];

fn ambiguous(name: &str) -> RelayError {
    RelayError::InvalidRequest(format!(
        "'{name}' is given more than once, or under another case: send it once, in lowercase"
    ))
}

/// The keys of a JSON object, in order, duplicates kept.
pub(crate) struct Keys(pub(crate) Vec<String>);

impl<'de> Deserialize<'de> for Keys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Collect;
        impl<'de> serde::de::Visitor<'de> for Collect {
            type Value = Keys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Keys, A::Error> {
                let mut keys = Vec::new();
                while let Some(k) = m.next_key::<String>()? {
                    m.next_value::<serde::de::IgnoredAny>()?;
                    keys.push(k);
                }
                Ok(Keys(keys))
            }
        }
        d.deserialize_map(Collect)
    }
}

/// Refuses names that shadow one of [`READ`]: twice, or under another case.
fn check_names<'a>(names: impl Iterator<Item = &'a str>) -> Result<(), RelayError> {
    check_names_of(&READ, names)
}

/// Refuses names that shadow one of `read`: twice, or under another case.
pub(crate) fn check_names_of<'a>(
    read: &[&'static str],
    names: impl Iterator<Item = &'a str>,
) -> Result<(), RelayError> {
    let mut seen: Vec<&str> = Vec::new();
    for name in names {
        let Some(field) = read.iter().find(|f| f.eq_ignore_ascii_case(name)) else {
            continue;
        };
        if name != *field || seen.contains(field) {
            return Err(ambiguous(field));
        }
        seen.push(field);
    }
    Ok(())
}

/// Reads `POST /v1/videos` (JSON or multipart, with or without a file).
pub fn parse_create(content_type: Option<&str>, body: Bytes) -> Result<Create, RelayError> {
    let ct = content_type.unwrap_or("application/json");
    if ct
        .trim_start()
        .to_ascii_lowercase()
        .starts_with("multipart/")
    {
        return parse_form(ct, body);
    }
    let keys: Keys = serde_json::from_slice(&body)
        .map_err(|_| RelayError::InvalidRequest("the body must be a JSON object".into()))?;
    check_names(keys.0.iter().map(String::as_str))?;
    let mut v: Value = serde_json::from_slice(&body)
        .map_err(|_| RelayError::InvalidRequest("the body is not valid JSON".into()))?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| RelayError::InvalidRequest("the body must be a JSON object".into()))?;
    let text =
        |o: &serde_json::Map<String, Value>, k: &str| -> Result<Option<String>, RelayError> {
            match o.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(Value::Number(n)) => Ok(Some(n.to_string())),
                Some(_) => Err(RelayError::InvalidRequest(format!(
                    "'{k}' must be a string"
                ))),
            }
        };
    let model = text(obj, "model")?.unwrap_or_else(|| DEFAULT_MODEL.to_owned());
    let prompt = text(obj, "prompt")?
        .filter(|p| !p.trim().is_empty())
        .ok_or_else(|| RelayError::InvalidRequest("'prompt' is required".into()))?;
    no_commands(&prompt)?;
    let seconds_text = text(obj, "seconds")?;
    let size = text(obj, "size")?;
    let webhook_url = text(obj, "webhook_url")?;
    obj.remove("webhook_url");
    let image_url = obj
        .get("input_reference")
        .and_then(|r| r.get("image_url"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let seconds = seconds_of(seconds_text.as_deref())?;
    // What is held is what is asked for: the upstream gets the seconds as a string
    // (OpenAI refuses a number), written even when the client left them to the default.
    obj.insert("seconds".into(), Value::String(seconds.to_string()));
    let forwarded = Bytes::from(v.to_string());
    let fingerprint = format!(
        "{model}\n{prompt}\n{seconds}\n{size:?}\n{webhook_url:?}\n{}",
        store::hash_bytes(&forwarded)
    );
    Ok(Create {
        model,
        prompt,
        seconds,
        seconds_text,
        size,
        webhook_url,
        body: forwarded,
        content_type: "application/json".into(),
        boundary: None,
        fingerprint,
        image_url,
    })
}

fn parse_form(ct: &str, body: Bytes) -> Result<Create, RelayError> {
    let boundary = multipart::boundary(ct)?;
    let fields = multipart::fields(&body, &boundary)?;
    check_names(fields.iter().map(|f| f.name.as_str()))?;
    if let Some(f) = fields
        .iter()
        .find(|f| f.filename.is_some() && READ[..5].contains(&f.name.as_str()))
    {
        return Err(RelayError::InvalidRequest(format!(
            "'{}' must be a text field, not a file",
            f.name
        )));
    }
    let text = |k: &str| multipart::text_field(&body, &fields, k).map(str::to_owned);
    let model = text("model").unwrap_or_else(|| DEFAULT_MODEL.to_owned());
    let prompt = text("prompt")
        .filter(|p| !p.trim().is_empty())
        .ok_or_else(|| RelayError::InvalidRequest("'prompt' is required".into()))?;
    no_commands(&prompt)?;
    let seconds_text = text("seconds");
    let seconds = seconds_of(seconds_text.as_deref())?;
    let size = text("size");
    let webhook_url = text("webhook_url");
    let mut forwarded = multipart::remove_text(&body, &fields, &boundary, "webhook_url");
    let left = multipart::fields(&forwarded, &boundary)?;
    forwarded = if multipart::text_field(&forwarded, &left, "seconds").is_some() {
        multipart::replace_text(&forwarded, &left, "seconds", &seconds.to_string())
    } else {
        multipart::append_text(&forwarded, &boundary, "seconds", &seconds.to_string())
    };
    // Two retries of one form differ in their boundary only: the fingerprint is the
    // fields, with a digest of each part's content.
    let mut parts: Vec<String> = fields
        .iter()
        .map(|f| format!("{}={}", f.name, store::hash_bytes(&body[f.start..f.end])))
        .collect();
    parts.sort();
    let fingerprint = format!("{model}\n{prompt}\n{seconds}\n{}", parts.join("\n"));
    Ok(Create {
        model,
        prompt,
        seconds,
        seconds_text,
        size,
        webhook_url,
        body: forwarded,
        content_type: ct.to_owned(),
        boundary: Some(boundary),
        fingerprint,
        image_url: None,
    })
}

/// Refuses a prompt carrying text commands (`--dur 12`): some upstreams (Seedance)
/// read them, and they would override the seconds and size held for.
fn no_commands(prompt: &str) -> Result<(), RelayError> {
    if super::seedance::has_flags(prompt) {
        return Err(RelayError::InvalidRequest(
            "'prompt' must not carry '--' commands: use 'seconds' and 'size'".into(),
        ));
    }
    Ok(())
}

/// The seconds asked: a whole number from 1 to 600 (OpenAI offers 4, 8 and 12, other
/// upstreams more), the default when absent.
fn seconds_of(text: Option<&str>) -> Result<i64, RelayError> {
    let Some(t) = text else {
        return Ok(DEFAULT_SECONDS);
    };
    t.trim()
        .parse::<i64>()
        .ok()
        .filter(|s| (1..=600).contains(s))
        .ok_or_else(|| {
            RelayError::InvalidRequest(
                "'seconds' must be a whole number of seconds, such as \"4\", \"8\" or \"12\""
                    .into(),
            )
        })
}

impl Create {
    /// The upstream request for a channel: the model is the channel's name for it.
    pub fn submission(&self, upstream_model: &str) -> Submission {
        let body = match &self.boundary {
            Some(b) => {
                let fields = multipart::fields(&self.body, b).unwrap_or_default();
                if multipart::text_field(&self.body, &fields, "model").is_some() {
                    multipart::replace_text(&self.body, &fields, "model", upstream_model)
                } else {
                    multipart::append_text(&self.body, b, "model", upstream_model)
                }
            }
            None => with_model(&self.body, upstream_model),
        };
        Submission {
            path: "/v1/videos".into(),
            body,
            content_type: self.content_type.clone(),
        }
    }

    /// What the Video object echoes back.
    pub fn meta(&self) -> Value {
        json!({
            "prompt": self.prompt,
            "seconds": self.seconds_text.clone().unwrap_or_else(|| self.seconds.to_string()),
            "size": self.size,
        })
    }
}

/// A JSON body with `model` set to `model`.
fn with_model(body: &Bytes, model: &str) -> Bytes {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(mut o)) => {
            o.insert("model".into(), Value::String(model.to_owned()));
            Bytes::from(Value::Object(o).to_string())
        }
        _ => body.clone(),
    }
}

/// `POST /v1/videos/{id}/remix`: `{prompt}`.
#[derive(Deserialize)]
pub struct Remix {
    pub prompt: String,
}

/// Reads a remix request.
pub fn parse_remix(body: &[u8]) -> Result<Remix, RelayError> {
    let r: Remix = serde_json::from_slice(body)
        .map_err(|_| RelayError::InvalidRequest("the body must be JSON with a 'prompt'".into()))?;
    if r.prompt.trim().is_empty() {
        return Err(RelayError::InvalidRequest("'prompt' is required".into()));
    }
    Ok(r)
}

/// The upstream request of a remix of the upstream video `parent`.
pub fn remix_submission(prompt: &str, parent: &str) -> Submission {
    Submission {
        path: item_path(parent) + "/remix",
        body: Bytes::from(json!({ "prompt": prompt }).to_string()),
        content_type: "application/json".into(),
    }
}

/// The channel types and builder signature the engine calls for a create.
pub fn builder(create: Create) -> Builder {
    Box::new(move |channel, upstream_model, _| match channel.kind {
        ChannelKind::Volcengine => super::seedance::from_openai(
            &create.prompt,
            create.seconds,
            create.size.as_deref(),
            create.image_url.as_deref(),
            upstream_model,
        ),
        ChannelKind::Gemini => super::veo::from_openai(
            &create.prompt,
            create.seconds,
            create.size.as_deref(),
            upstream_model,
        ),
        ChannelKind::Dashscope => super::dashscope::from_openai(
            &create.prompt,
            create.seconds,
            create.size.as_deref(),
            create.image_url.as_deref(),
            upstream_model,
        ),
        ChannelKind::Kling => super::kling::from_openai(
            &create.prompt,
            create.seconds,
            create.size.as_deref(),
            create.image_url.as_deref(),
            upstream_model,
        ),
        _ => create.submission(upstream_model),
    })
}

/// The builder of a remix (its path names the parent's upstream id).
pub fn remix_builder(prompt: String) -> Builder {
    Box::new(move |_, _, parent| remix_submission(&prompt, parent.unwrap_or_default()))
}

/// The upstream path of one video.
pub fn item_path(upstream_id: &str) -> String {
    format!("/v1/videos/{}", encode_segment(upstream_id))
}

/// The ids of the videos in an OpenAI video list of `upstream_model` and `prompt`
/// made between `from` and `to` (seconds since the epoch), oldest first.
pub fn listed_like(
    body: &[u8],
    prompt: &str,
    upstream_model: &str,
    (from, to): (i64, i64),
) -> Vec<String> {
    let Ok(list) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    let mut found: Vec<(i64, String)> = list
        .get("data")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| v.get("prompt").and_then(Value::as_str) == Some(prompt))
        .filter(|v| v.get("model").and_then(Value::as_str) == Some(upstream_model))
        .filter_map(|v| {
            let at = v.get("created_at")?.as_i64()?;
            let id = v.get("id")?.as_str()?.to_owned();
            (from..=to).contains(&at).then_some((at, id))
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, id)| id).collect()
}

/// The upstream path of a video's content; of the client's query only `variant` goes.
pub fn content_path(upstream_id: &str, query: &str) -> String {
    let variant = query
        .split('&')
        .find_map(|p| p.strip_prefix("variant="))
        .filter(|v| matches!(*v, "video" | "thumbnail" | "spritesheet"));
    match variant {
        Some(v) => format!("{}/content?variant={v}", item_path(upstream_id)),
        None => format!("{}/content", item_path(upstream_id)),
    }
}

/// An upstream id as one path segment (ids are opaque; never let one add a path).
pub fn encode_segment(id: &str) -> String {
    encode_segment_keeping(id, &[])
}

/// [`encode_segment`], keeping the characters of `keep` too.
pub(crate) fn encode_segment_keeping(id: &str, keep: &[char]) -> String {
    id.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_') || keep.contains(c))
        .collect()
}

/// The upstream's Video object as far as the engine reads it.
#[derive(Deserialize)]
struct UpstreamVideo {
    id: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    progress: Option<Value>,
    #[serde(default)]
    seconds: Option<Value>,
    #[serde(default)]
    error: Option<Value>,
}

/// The upstream's status word as a state: one place for every word Sora-compatible
/// upstreams use. An unknown word is `None` (the task stays open).
pub fn state_of(word: &str) -> Option<State> {
    Some(match word.to_ascii_lowercase().as_str() {
        "queued" | "pending" | "submitted" | "not_start" => State::Queued,
        "in_progress" | "processing" | "running" => State::InProgress,
        "completed" | "succeeded" | "success" => State::Succeeded,
        "failed" | "failure" | "error" => State::Failed,
        "cancelled" | "canceled" => State::Cancelled,
        _ => return None,
    })
}

/// Reads an upstream Video object: its id and what it says of the task.
pub fn observe(body: &[u8]) -> Option<(String, Observed)> {
    let v: UpstreamVideo = serde_json::from_slice(body).ok()?;
    if v.id.is_empty() {
        return None;
    }
    let word = v.status.unwrap_or_else(|| "queued".into());
    let number = |x: &Option<Value>| match x {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().trim_end_matches('%').parse::<f64>().ok(),
        _ => None,
    };
    let progress = number(&v.progress).map_or(0, |p| p.clamp(0.0, 100.0) as i32);
    let seconds = number(&v.seconds)
        .filter(|s| *s > 0.0)
        .map(|s| s.ceil() as i64);
    let error = v.error.filter(|e| !e.is_null()).map(|e| {
        let code = e.get("code").and_then(Value::as_str).unwrap_or("failed");
        let message = e.get("message").and_then(Value::as_str).unwrap_or("");
        format!("{code}: {message}")
    });
    Some((
        v.id,
        Observed {
            state: state_of(&word),
            word,
            progress,
            seconds,
            tokens: None,
            images: None,
            result: None,
            error,
        },
    ))
}

/// The client's status word for a task's state (the four the SDK's poller knows).
fn status_word(state: &str) -> &'static str {
    match State::parse(state) {
        Some(State::Queued) | None => "queued",
        Some(State::InProgress) => "in_progress",
        Some(State::Succeeded) => "completed",
        Some(State::Failed | State::Cancelled | State::Expired) => "failed",
    }
}

/// The Video object of a task, as OpenAI shapes it (every key present, `null` when
/// unknown).
pub fn video_json(t: &task::Model) -> Value {
    let meta: Value = serde_json::from_str(&t.meta).unwrap_or(Value::Null);
    let status = status_word(&t.state);
    let error = match State::parse(&t.state) {
        Some(State::Failed) => {
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
            json!({"code": code, "message": message})
        }
        Some(State::Cancelled) => json!({"code": "cancelled", "message": "the task was cancelled"}),
        Some(State::Expired) => {
            json!({"code": "expired", "message": "the task did not finish before its deadline"})
        }
        _ => Value::Null,
    };
    json!({
        "id": t.id,
        "object": "video",
        "model": t.model,
        "status": status,
        "progress": if status == "completed" { 100 } else { t.progress },
        "created_at": t.created_at.timestamp(),
        "completed_at": t.finished_at.filter(|_| status == "completed").map(|f| f.timestamp()),
        "expires_at": Value::Null,
        "prompt": meta.get("prompt").cloned().unwrap_or(Value::Null),
        "seconds": meta.get("seconds").cloned().unwrap_or(Value::Null),
        "size": meta.get("size").cloned().unwrap_or(Value::Null),
        "remixed_from_video_id": t.parent_id,
        "error": error,
    })
}

/// A page of Video objects.
pub fn list_json(tasks: &[task::Model], has_more: bool) -> Value {
    json!({
        "object": "list",
        "data": tasks.iter().map(video_json).collect::<Vec<_>>(),
        "first_id": tasks.first().map(|t| t.id.clone()),
        "last_id": tasks.last().map(|t| t.id.clone()),
        "has_more": has_more,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_create_request_reads_the_same_as_json_or_as_a_form_and_keeps_the_hook_to_itself() {
        let json = parse_create(
            None,
            Bytes::from_static(br#"{"prompt":"a cat","seconds":"8","size":"1280x720","webhook_url":"https://example.com/h"}"#),
        )
        .unwrap();
        assert_eq!(json.model, "sora-2");
        assert_eq!(json.seconds, 8);
        assert_eq!(json.webhook_url.as_deref(), Some("https://example.com/h"));
        let sent = json.submission("sora-2-pro");
        let v: Value = serde_json::from_slice(&sent.body).unwrap();
        assert_eq!(v["model"], "sora-2-pro");
        assert!(v.get("webhook_url").is_none());

        let form = "--b\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\na cat\r\n--b\r\nContent-Disposition: form-data; name=\"webhook_url\"\r\n\r\nhttps://example.com/h\r\n--b\r\nContent-Disposition: form-data; name=\"seconds\"\r\n\r\n12\r\n--b--\r\n";
        let parsed = parse_create(
            Some("multipart/form-data; boundary=b"),
            Bytes::from_static(form.as_bytes()),
        )
        .unwrap();
        assert_eq!(parsed.seconds, 12);
        assert_eq!(parsed.prompt, "a cat");
        let sent = parsed.submission("sora-2");
        let text = String::from_utf8(sent.body.to_vec()).unwrap();
        assert!(!text.contains("webhook_url"), "{text}");
        assert!(text.contains("name=\"model\"\r\n\r\nsora-2\r\n"), "{text}");
    }

    #[test]
    fn a_field_given_twice_or_under_another_case_or_as_a_file_is_refused() {
        for body in [
            r#"{"prompt":"x","Seconds":"12"}"#,
            r#"{"prompt":"x","seconds":"4","seconds":"12"}"#,
            r#"{"prompt":"x","MODEL":"sora-2-pro"}"#,
            r#"{"prompt":"x","seconds":["12"]}"#,
            r#"{"prompt":"x","model":{"name":"sora-2-pro"}}"#,
        ] {
            assert!(parse_create(None, Bytes::from(body)).is_err(), "{body}");
        }
        let two_models = "--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nsora-2\r\n--b\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nx\r\n--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nsora-2-pro\r\n--b--\r\n";
        let file_seconds = "--b\r\nContent-Disposition: form-data; name=\"seconds\"; filename=\"s.txt\"\r\n\r\n12\r\n--b\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nx\r\n--b--\r\n";
        for form in [two_models, file_seconds] {
            let got = parse_create(Some("multipart/form-data; boundary=b"), Bytes::from(form));
            assert!(got.is_err(), "{form}");
        }
    }

    #[test]
    fn the_seconds_held_are_the_seconds_sent_and_a_retried_form_is_the_same_request() {
        let sent =
            parse_create(None, Bytes::from_static(br#"{"prompt":"x","seconds":8}"#)).unwrap();
        let v: Value = serde_json::from_slice(&sent.submission("sora-2").body).unwrap();
        assert_eq!(v["seconds"], "8");
        let default = parse_create(None, Bytes::from_static(br#"{"prompt":"x"}"#)).unwrap();
        let v: Value = serde_json::from_slice(&default.submission("sora-2").body).unwrap();
        assert_eq!(v["seconds"], "4");
        let form = |b: &str| {
            format!(
                "--{b}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nx\r\n--{b}\r\nContent-Disposition: form-data; name=\"input_reference\"; filename=\"a.png\"\r\n\r\nPNG\r\n--{b}--\r\n"
            )
        };
        let a = parse_create(
            Some("multipart/form-data; boundary=aaa"),
            Bytes::from(form("aaa")),
        )
        .unwrap();
        let b = parse_create(
            Some("multipart/form-data; boundary=bbb"),
            Bytes::from(form("bbb")),
        )
        .unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        let text = String::from_utf8(a.submission("sora-2").body.to_vec()).unwrap();
        assert!(text.contains("name=\"seconds\"\r\n\r\n4\r\n"), "{text}");
    }

    #[test]
    fn seconds_that_are_not_a_whole_number_in_range_are_refused() {
        for bad in [r#""abc""#, r#""0""#, r#""-4""#, r#""100000""#] {
            let body = format!(r#"{{"prompt":"x","seconds":{bad}}}"#);
            assert!(parse_create(None, Bytes::from(body)).is_err(), "{bad}");
        }
        assert!(parse_create(None, Bytes::from_static(br#"{"seconds":"4"}"#)).is_err());
    }

    #[test]
    fn upstream_words_map_to_states_and_an_unknown_word_keeps_the_task_open() {
        let (id, seen) =
            observe(br#"{"id":"video_1","status":"in_progress","progress":37}"#).unwrap();
        assert_eq!(id, "video_1");
        assert_eq!(seen.state, Some(State::InProgress));
        assert_eq!(seen.progress, 37);
        let (_, seen) = observe(br#"{"id":"v","status":"completed","seconds":"8"}"#).unwrap();
        assert_eq!(
            (seen.state, seen.seconds),
            (Some(State::Succeeded), Some(8))
        );
        let (_, seen) = observe(br#"{"id":"v","status":"rendering_frames"}"#).unwrap();
        assert_eq!(seen.state, None);
        let (_, seen) = observe(
            br#"{"id":"v","status":"failed","error":{"code":"moderation_blocked","message":"no"}}"#,
        )
        .unwrap();
        assert_eq!(seen.error.as_deref(), Some("moderation_blocked: no"));
        assert!(observe(br#"{"status":"queued"}"#).is_none());
    }

    #[test]
    fn an_upstream_id_cannot_add_a_path_and_only_the_variant_reaches_the_upstream() {
        assert_eq!(item_path("../../admin?x=1"), "/v1/videos/adminx1");
        assert_eq!(
            content_path("video_1", "variant=thumbnail&key=sk-x"),
            "/v1/videos/video_1/content?variant=thumbnail"
        );
        assert_eq!(
            content_path("video_1", "variant=../x"),
            "/v1/videos/video_1/content"
        );
    }
}
