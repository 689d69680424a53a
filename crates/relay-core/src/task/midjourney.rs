//! Midjourney in the midjourney-proxy shape (seeds `002`, `003`): what a `midjourney`
//! channel is sent and answers, and the client shape served at `/mj/...`.
//!
//! A submission answers `{code, description, result, properties}` (`code` 1
//! submitted, 21 exists or waits for a modal, 22 queued; anything else is a refusal:
//! 23 queue full, 24 banned prompt, 4 invalid). A task is
//! `{id, action, status, progress: "37%", prompt, promptEn, imageUrl, failReason,
//! submitTime, startTime, finishTime, buttons, properties}`; the proxy reads many at
//! once at `POST /mj/task/list-by-condition {ids}`. Each action is priced under its
//! own name (`mj_imagine`, `mj_upscale`, ...); an action on a finished task (a button's
//! `customId`, or `change`'s `UPSCALE`/`VARIATION`/`REROLL` and index) goes to the
//! channel and key that made that task.

use billing::task::State;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use store::entities::task;

use super::{Observed, Submission};
use crate::RelayError;

/// The family's name in the task table.
pub const FAMILY: &str = "midjourney";

/// midjourney-proxy's answer codes.
pub mod code {
    pub const SUBMITTED: i64 = 1;
    pub const NOT_FOUND: i64 = 3;
    pub const INVALID: i64 = 4;
    pub const FAILURE: i64 = 9;
    pub const EXISTS: i64 = 21;
    pub const QUEUED: i64 = 22;
    pub const QUEUE_FULL: i64 = 23;
    pub const BANNED: i64 = 24;
}

/// The submit routes: (the path after `/mj/submit/`, the upstream path).
pub const SUBMITS: [(&str, &str); 10] = [
    ("imagine", "/mj/submit/imagine"),
    ("change", "/mj/submit/change"),
    ("simple-change", "/mj/submit/change"),
    ("action", "/mj/submit/action"),
    ("blend", "/mj/submit/blend"),
    ("describe", "/mj/submit/describe"),
    ("modal", "/mj/submit/modal"),
    ("shorten", "/mj/submit/shorten"),
    ("swap_face", "/mj/insight-face/swap"),
    ("upload-discord-images", "/mj/submit/upload-discord-images"),
];

/// The upstream path of one task.
pub fn item_path(upstream_id: &str) -> String {
    format!(
        "/mj/task/{}/fetch",
        super::videos::encode_segment(upstream_id)
    )
}

/// What Tollgate reads of a submission.
#[derive(Debug, Clone)]
pub struct Ask {
    /// The route (`imagine`, `change`, ...).
    pub route: &'static str,
    /// The upstream path.
    pub path: &'static str,
    /// The task's action as midjourney-proxy names it (`IMAGINE`, `UPSCALE`, ...).
    pub action: &'static str,
    /// The price the action is charged at (`mj_imagine`, ...).
    pub model: &'static str,
    /// A variant's own price, used when set (`mj_high_variation`); otherwise the
    /// action's price stands.
    pub variant: Option<&'static str>,
    /// A dearer variant's price, which must be set or the task is refused
    /// (`mj_upscale_2x`, `mj_imagine-turbo`).
    pub price_model: Option<String>,
    /// The body sent upstream: only the fields the route reads; `taskId` is set to
    /// the parent's upstream id when the task is sent.
    pub body: Value,
    /// The task this one acts on (Tollgate's id).
    pub parent: Option<String>,
    /// The button pressed, for an `action`: it must be one of the parent's.
    pub custom_id: Option<String>,
    pub prompt: String,
    pub hook: Option<String>,
    /// The client's `state`, echoed in the task.
    pub state: Option<String>,
    pub fingerprint: String,
}

fn invalid(message: &str) -> RelayError {
    RelayError::InvalidRequest(message.to_owned())
}

fn text(obj: &Map<String, Value>, name: &str) -> Option<String> {
    obj.get(name)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Images in `name` (each a `data:` URL or bare base64), `min` to `max` of them.
fn images(obj: &Map<String, Value>, name: &str, min: usize, max: usize) -> Result<(), RelayError> {
    let n = match obj.get(name) {
        None | Some(Value::Null) => 0,
        Some(Value::Array(a)) if a.iter().all(|x| x.as_str().is_some_and(|s| !s.is_empty())) => {
            a.len()
        }
        Some(_) => {
            return Err(invalid(&format!(
                "'{name}' must be an array of base64 images"
            )));
        }
    };
    if n < min || n > max {
        return Err(invalid(&format!(
            "'{name}' must hold {min} to {max} images"
        )));
    }
    Ok(())
}

/// How a button's price is found beside its action's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// The action's price.
    None,
    /// This price when set, else the action's.
    Optional(&'static str),
    /// This price, which must be set: the job costs the upstream more.
    Required(&'static str),
}

/// A button's `customId` as the action it runs and its price: `MJ::JOB::upsample::1::…`
/// is an upscale, `MJ::JOB::variation::2::…` a variation, and so on. Buttons that are
/// not jobs (`MJ::BOOKMARK`) or that follow a describe or shorten are `None`.
pub fn action_of_custom_id(custom_id: &str) -> Option<(&'static str, &'static str, Variant)> {
    let id = custom_id;
    Some(if id.contains("::upsample") {
        // Upscale (Subtle / Creative / 2x / 4x) runs a bigger job than U1-U4.
        let bigger = ["_2x", "_4x", "_subtle", "_creative"]
            .iter()
            .any(|k| id.contains(k));
        let variant = if bigger {
            Variant::Required("mj_upscale_2x")
        } else {
            Variant::None
        };
        ("UPSCALE", "mj_upscale", variant)
    } else if id.contains("::high_variation") {
        (
            "VARIATION",
            "mj_variation",
            Variant::Optional("mj_high_variation"),
        )
    } else if id.contains("::low_variation") {
        (
            "VARIATION",
            "mj_variation",
            Variant::Optional("mj_low_variation"),
        )
    } else if id.contains("::variation") {
        ("VARIATION", "mj_variation", Variant::None)
    } else if id.contains("::reroll") {
        ("REROLL", "mj_reroll", Variant::None)
    } else if id.starts_with("MJ::CustomZoom") {
        ("ZOOM", "mj_custom_zoom", Variant::None)
    } else if id.starts_with("MJ::Outpaint") {
        ("ZOOM", "mj_zoom", Variant::None)
    } else if id.contains("::pan_") {
        ("PAN", "mj_pan", Variant::None)
    } else if id.starts_with("MJ::Inpaint") {
        ("INPAINT", "mj_inpaint", Variant::None)
    } else {
        return None;
    })
}

/// The speed a prompt asks for with `--turbo` or `--fast` (also written with an em
/// dash, as Midjourney accepts): a dearer job, priced on its own.
fn speed_of(prompt: &str) -> Option<&'static str> {
    prompt.split_whitespace().find_map(|w| {
        let flag = w
            .strip_prefix("--")
            .or_else(|| w.strip_prefix('\u{2014}'))?
            .to_ascii_lowercase();
        match flag.as_str() {
            "turbo" => Some("turbo"),
            "fast" => Some("fast"),
            _ => None,
        }
    })
}

/// `change`'s action word as the price it is charged at.
fn change_action(word: &str) -> Option<(&'static str, &'static str)> {
    Some(match word {
        "UPSCALE" => ("UPSCALE", "mj_upscale"),
        "VARIATION" => ("VARIATION", "mj_variation"),
        "REROLL" => ("REROLL", "mj_reroll"),
        _ => return None,
    })
}

/// The fields each route sends upstream; anything else a client adds (an account
/// filter, a link to fetch) stays here.
fn forwarded(route: &str) -> &'static [&'static str] {
    match route {
        "imagine" => &["prompt", "base64Array", "botType"],
        "change" => &["taskId", "action", "index"],
        "action" => &["taskId", "customId"],
        "blend" => &["base64Array", "dimensions", "botType"],
        "describe" => &["base64", "botType"],
        "modal" => &["taskId", "prompt", "maskBase64"],
        "shorten" => &["prompt", "botType"],
        "swap_face" => &["sourceBase64", "targetBase64"],
        _ => &["base64Array"],
    }
}

/// Reads a submission to `route` (one of [`SUBMITS`]).
pub fn parse(route: &str, body: &[u8]) -> Result<Ask, RelayError> {
    let (route, path) = SUBMITS
        .iter()
        .copied()
        .find(|(r, _)| *r == route)
        .ok_or_else(|| RelayError::NotFound(format!("no route '/mj/submit/{route}'")))?;
    let v: Value =
        serde_json::from_slice(body).map_err(|_| invalid("the body must be a JSON object"))?;
    let Value::Object(mut obj) = v else {
        return Err(invalid("the body must be a JSON object"));
    };
    let hook = text(&obj, "notifyHook");
    let state = obj.get("state").and_then(Value::as_str).map(str::to_owned);
    if let Some(bot) = obj.get("botType").filter(|b| !b.is_null())
        && !matches!(bot.as_str(), Some("MID_JOURNEY" | "NIJI_JOURNEY"))
    {
        return Err(invalid("'botType' must be MID_JOURNEY or NIJI_JOURNEY"));
    }
    let mut prompt = text(&obj, "prompt").unwrap_or_default();
    let mut parent = text(&obj, "taskId");
    let mut custom_id = None;
    let mut variant = Variant::None;
    let (route, action, model) = match route {
        "imagine" => {
            if prompt.is_empty() {
                return Err(invalid("'prompt' is required"));
            }
            images(&obj, "base64Array", 0, 5)?;
            (route, "IMAGINE", "mj_imagine")
        }
        "change" => {
            let word = text(&obj, "action")
                .unwrap_or_default()
                .to_ascii_uppercase();
            let (action, model) = change_action(&word)
                .ok_or_else(|| invalid("'action' must be UPSCALE, VARIATION or REROLL"))?;
            let index = obj.get("index").and_then(Value::as_i64);
            if action != "REROLL" && !matches!(index, Some(1..=4)) {
                return Err(invalid("'index' must be 1 to 4"));
            }
            if parent.is_none() {
                return Err(invalid("'taskId' is required"));
            }
            obj.insert("action".into(), json!(action));
            obj.insert("index".into(), json!(index.unwrap_or(0)));
            (route, action, model)
        }
        "simple-change" => {
            // `content`: "<taskId> U1" (U1-U4, V1-V4, R), sent as the `change` it means.
            let content = text(&obj, "content").unwrap_or_default();
            let mut words = content.split_whitespace();
            let (Some(id), Some(cmd), None) = (words.next(), words.next(), words.next()) else {
                return Err(invalid(
                    "'content' must be '<taskId> U1' (U1-U4, V1-V4 or R)",
                ));
            };
            let (action, model, index) = match (cmd.get(..1), cmd.get(1..)) {
                (Some("U" | "u"), Some(i @ ("1" | "2" | "3" | "4"))) => {
                    ("UPSCALE", "mj_upscale", i)
                }
                (Some("V" | "v"), Some(i @ ("1" | "2" | "3" | "4"))) => {
                    ("VARIATION", "mj_variation", i)
                }
                (Some("R" | "r"), Some("")) => ("REROLL", "mj_reroll", "0"),
                _ => {
                    return Err(invalid(
                        "'content' must be '<taskId> U1' (U1-U4, V1-V4 or R)",
                    ));
                }
            };
            obj.insert("action".into(), json!(action));
            obj.insert("index".into(), json!(index.parse::<i64>().unwrap_or(0)));
            parent = Some(id.to_owned());
            prompt.clear();
            ("change", action, model)
        }
        "action" => {
            if parent.is_none() {
                return Err(invalid("'taskId' is required"));
            }
            let id = text(&obj, "customId").ok_or_else(|| invalid("'customId' is required"))?;
            let (action, model, v) = action_of_custom_id(&id)
                .ok_or_else(|| invalid("'customId' is not a button Tollgate can run"))?;
            variant = v;
            custom_id = Some(id);
            (route, action, model)
        }
        "blend" => {
            images(&obj, "base64Array", 2, 5)?;
            if let Some(d) = obj.get("dimensions").filter(|d| !d.is_null())
                && !matches!(d.as_str(), Some("PORTRAIT" | "SQUARE" | "LANDSCAPE"))
            {
                return Err(invalid(
                    "'dimensions' must be PORTRAIT, SQUARE or LANDSCAPE",
                ));
            }
            (route, "BLEND", "mj_blend")
        }
        "describe" => {
            if text(&obj, "base64").is_none() {
                return Err(invalid("'base64' (the image, as a data URL) is required"));
            }
            (route, "DESCRIBE", "mj_describe")
        }
        "modal" => {
            if parent.is_none() {
                return Err(invalid("'taskId' is required"));
            }
            (route, "MODAL", "mj_modal")
        }
        "shorten" => {
            if prompt.is_empty() {
                return Err(invalid("'prompt' is required"));
            }
            (route, "SHORTEN", "mj_shorten")
        }
        "swap_face" => {
            if text(&obj, "sourceBase64").is_none() || text(&obj, "targetBase64").is_none() {
                return Err(invalid("'sourceBase64' and 'targetBase64' are required"));
            }
            (route, "SWAP_FACE", "mj_swap_face")
        }
        _ => {
            images(&obj, "base64Array", 1, 10)?;
            (route, "UPLOAD", "mj_upload")
        }
    };
    let mut out = Map::new();
    for name in forwarded(route) {
        if let Some(v) = obj.get(*name).filter(|v| !v.is_null()) {
            out.insert((*name).into(), v.clone());
        }
    }
    if let Some(id) = &parent {
        out.insert("taskId".into(), json!(id));
    }
    let (variant, mut price_model) = match variant {
        Variant::None => (None, None),
        Variant::Optional(v) => (Some(v), None),
        Variant::Required(v) => (None, Some(v.to_owned())),
    };
    if let Some(speed) = speed_of(&prompt) {
        price_model = Some(format!("{model}-{speed}"));
    }
    let body = Value::Object(out);
    let fingerprint = format!(
        "{route}\n{hook:?}\n{state:?}\n{}",
        store::hash_bytes(body.to_string().as_bytes())
    );
    Ok(Ask {
        route,
        path,
        action,
        model,
        variant,
        price_model,
        body,
        parent,
        custom_id,
        prompt,
        hook,
        state,
        fingerprint,
    })
}

/// The submission of `ask`, acting on the upstream task `parent` when it has one.
pub fn submission(ask: &Ask, parent: Option<&str>) -> Submission {
    let mut body = ask.body.clone();
    if let (Some(p), Some(o)) = (parent, body.as_object_mut()) {
        o.insert("taskId".into(), json!(p));
    }
    Submission {
        path: ask.path.into(),
        body: Bytes::from(body.to_string()),
        content_type: "application/json".into(),
    }
}

/// midjourney-proxy's status words. Unknown words are `None`. `MODAL` waits for the
/// client's `modal` submission: open.
pub fn state_of(word: &str) -> Option<State> {
    Some(match word {
        "NOT_START" | "SUBMITTED" | "MODAL" => State::Queued,
        "IN_PROGRESS" => State::InProgress,
        "SUCCESS" => State::Succeeded,
        "FAILURE" => State::Failed,
        "CANCEL" => State::Cancelled,
        _ => return None,
    })
}

/// The fields of an upstream task object kept for the client (never its Discord
/// ids, instance or hook; its `description` names upstream ids, so it is rebuilt).
const KEPT: [&str; 4] = ["prompt", "promptEn", "startTime", "buttons"];
const KEPT_PROPERTIES: [&str; 2] = ["finalPrompt", "finalZhPrompt"];

/// Reads one upstream task object.
fn observe_task(v: &Value) -> Option<(String, Observed)> {
    let id = match v.get("id")? {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let word = v
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("NOT_START")
        .to_owned();
    let state = state_of(&word);
    let mut kept = Map::new();
    for k in KEPT {
        if let Some(x) = v.get(k).filter(|x| !x.is_null()) {
            kept.insert(k.into(), x.clone());
        }
    }
    let mut props = Map::new();
    for k in KEPT_PROPERTIES {
        if let Some(x) = v
            .pointer(&format!("/properties/{k}"))
            .filter(|x| !x.is_null())
        {
            props.insert(k.into(), x.clone());
        }
    }
    kept.insert("properties".into(), Value::Object(props));
    let urls: Vec<Value> = v
        .get("imageUrl")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .map(|u| vec![json!(u)])
        .unwrap_or_default();
    let error = v
        .get("failReason")
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty())
        .map(|r| format!("failed: {}", crate::error::redact(r)));
    // A finished task that delivered nothing (no image; for describe and shorten,
    // which answer with text, no text) is not charged.
    let action = v.get("action").and_then(Value::as_str).unwrap_or("");
    let delivered = if matches!(action, "DESCRIBE" | "SHORTEN") {
        ["/properties/finalPrompt", "/promptEn"].iter().any(|p| {
            v.pointer(p)
                .and_then(Value::as_str)
                .is_some_and(|t| !t.trim().is_empty())
        })
    } else {
        !urls.is_empty()
    };
    let (state, error, word) = if state == Some(State::Succeeded) && !delivered {
        (
            Some(State::Failed),
            Some("failed: the upstream delivered nothing".to_owned()),
            "FAILURE".to_owned(),
        )
    } else {
        (state, error, word)
    };
    Some((
        id,
        Observed {
            state,
            word,
            progress: super::percent(v.get("progress")),
            seconds: None,
            tokens: None,
            images: None,
            result: Some(json!({"urls": urls, "task": kept})),
            error,
        },
    ))
}

/// Reads an upstream answer about a task: a submission's `{code, result}` or a task
/// object.
pub fn observe(body: &[u8]) -> Option<(String, Observed)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let Some(code) = v.get("code") else {
        return observe_task(&v);
    };
    let code = code.as_i64()?;
    if !matches!(code, code::SUBMITTED | code::EXISTS | code::QUEUED) {
        return None;
    }
    let word = match code {
        // midjourney-proxy-plus: waiting for a modal. The open-source proxy answered
        // 21 for a job done before (`properties.status`): a refusal, never a second
        // task (and charge) on the same upstream job.
        code::EXISTS => match v.pointer("/properties/status").and_then(Value::as_str) {
            None | Some("MODAL") => "MODAL",
            Some(_) => return None,
        },
        code::QUEUED => "NOT_START",
        _ => "SUBMITTED",
    }
    .to_owned();
    match v.get("result")? {
        // An upload answers its images' addresses at once: done.
        Value::Array(urls) => Some((
            "upload".to_owned(),
            Observed {
                state: Some(State::Succeeded),
                word: "SUCCESS".into(),
                progress: 100,
                seconds: None,
                tokens: None,
                images: None,
                result: Some(json!({"uploads": urls})),
                error: None,
            },
        )),
        Value::String(id) if !id.is_empty() => Some((
            id.clone(),
            Observed {
                state: state_of(&word)
                    .filter(|s| s.is_open())
                    .or(Some(State::Queued)),
                word,
                progress: 0,
                seconds: None,
                tokens: None,
                images: None,
                result: None,
                error: None,
            },
        )),
        Value::Number(n) => Some((
            n.to_string(),
            Observed {
                state: Some(State::Queued),
                word,
                progress: 0,
                seconds: None,
                tokens: None,
                images: None,
                result: None,
                error: None,
            },
        )),
        _ => None,
    }
}

/// Reads `list-by-condition`'s answer: an array of tasks.
pub fn observe_many(body: &[u8]) -> Option<Vec<(String, Observed)>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    Some(v.as_array()?.iter().filter_map(observe_task).collect())
}

/// The word a client sees for task `t`: the upstream's when it is one of
/// midjourney-proxy's, else the state's.
fn status_word(t: &task::Model) -> &str {
    let state = State::parse(&t.state);
    match t.upstream_status.as_deref() {
        Some(w)
            if state_of(w).is_some_and(|s| {
                Some(s) == state || (s.is_open() && state.is_some_and(State::is_open))
            }) =>
        {
            w
        }
        _ => match state {
            Some(State::InProgress) => "IN_PROGRESS",
            Some(State::Succeeded) => "SUCCESS",
            Some(State::Failed | State::Expired) => "FAILURE",
            Some(State::Cancelled) => "CANCEL",
            _ => "SUBMITTED",
        },
    }
}

/// The buttons a finished task offers (its stored upstream view).
pub fn buttons(t: &task::Model) -> Vec<Value> {
    stored_task(t)
        .get("buttons")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn stored_task(t: &task::Model) -> Value {
    t.result
        .as_deref()
        .and_then(|r| serde_json::from_str::<Value>(r).ok())
        .and_then(|mut r| r.get_mut("task").map(Value::take))
        .unwrap_or(Value::Null)
}

/// What `upload-discord-images` answered (the addresses of the uploaded images).
pub fn uploads(t: &task::Model) -> Vec<Value> {
    t.result
        .as_deref()
        .and_then(|r| serde_json::from_str::<Value>(r).ok())
        .and_then(|r| r.get("uploads").and_then(Value::as_array).cloned())
        .unwrap_or_default()
}

/// Task `t` as midjourney-proxy shows it, with `urls` its signed image URLs.
pub fn task_json(t: &task::Model, urls: &[String]) -> Value {
    let meta: Value = serde_json::from_str(&t.meta).unwrap_or_default();
    let up = stored_task(t);
    let word = status_word(t);
    let ms = |at: chrono::DateTime<chrono::Utc>| at.timestamp_millis();
    let own = meta
        .get("prompt")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // The upstream's copy of a prompt may carry the addresses it uploaded the
    // client's images to: only addresses the client wrote itself are shown.
    let scrubbed = |v: Option<&Value>| v.and_then(Value::as_str).map(|t| json!(scrub(t, own)));
    let prompt = scrubbed(up.get("prompt")).unwrap_or_else(|| json!(own));
    let mut properties = Map::new();
    for k in KEPT_PROPERTIES {
        if let Some(t) = scrubbed(up.pointer(&format!("/properties/{k}"))) {
            properties.insert(k.into(), t);
        }
    }
    let description = if own.is_empty() {
        format!("/{} {}", t.action.to_ascii_lowercase(), t.id)
    } else {
        format!("/{} {own}", t.action.to_ascii_lowercase())
    };
    let fail = match word {
        "FAILURE" | "CANCEL" => json!(
            t.error
                .as_deref()
                .map(|e| crate::error::redact(e.strip_prefix("failed: ").unwrap_or(e)))
        ),
        _ => Value::Null,
    };
    json!({
        "id": t.id,
        "action": t.action,
        "status": word,
        "progress": format!("{}%", t.progress.clamp(0, 100)),
        "prompt": prompt,
        "promptEn": scrubbed(up.get("promptEn")).unwrap_or_else(|| prompt.clone()),
        "description": description,
        "state": meta.get("state").cloned().unwrap_or(Value::Null),
        "submitTime": ms(t.created_at),
        "startTime": up.get("startTime").cloned().unwrap_or(Value::Null),
        "finishTime": t.finished_at.map(ms),
        "imageUrl": urls.first(),
        "failReason": fail,
        "buttons": if word == "SUCCESS" { Value::Array(buttons(t)) } else { json!([]) },
        "properties": properties,
    })
}

/// `text` with every web address the client did not write itself (in `own`)
/// replaced by `<image>`.
fn scrub(text: &str, own: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("http") {
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        if !(from.starts_with("http://") || from.starts_with("https://")) {
            out.push_str("http");
            rest = &from[4..];
            continue;
        }
        let end = from
            .find(|c: char| c.is_whitespace() || "<>\"'".contains(c))
            .unwrap_or(from.len());
        let url = &from[..end];
        if own.contains(url) {
            out.push_str(url);
        } else {
            out.push_str("<image>");
        }
        rest = &from[end..];
    }
    out.push_str(rest);
    out
}

/// A submit answer for task `t`: submitted (1), or waiting for a modal (21).
pub fn submitted_json(t: &task::Model) -> Value {
    let modal = t.upstream_status.as_deref() == Some("MODAL");
    json!({
        "code": if modal { code::EXISTS } else { code::SUBMITTED },
        "description": if modal { "Waiting for window confirm" } else { "Submit success" },
        "result": t.id,
        "properties": {},
    })
}

/// The midjourney-proxy code of an error: the upstream's own refusal code when it
/// gave one (23 queue full, 24 banned prompt), else by kind.
pub fn error_code(e: &RelayError) -> i64 {
    if let RelayError::Rejected {
        body: Some(body), ..
    } = e
        && let Some(c) = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("code").and_then(Value::as_i64))
        && c != code::SUBMITTED
    {
        return c;
    }
    match e.status() {
        404 => code::NOT_FOUND,
        400 | 409 | 422 => code::INVALID,
        _ => code::FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buttons_are_priced_by_what_they_do() {
        assert_eq!(
            action_of_custom_id("MJ::JOB::upsample::2::abc").map(|a| a.1),
            Some("mj_upscale")
        );
        assert_eq!(
            action_of_custom_id("MJ::JOB::variation::1::abc").map(|a| a.1),
            Some("mj_variation")
        );
        assert_eq!(
            action_of_custom_id("MJ::JOB::reroll::0::abc::SOLO").map(|a| a.1),
            Some("mj_reroll")
        );
        assert_eq!(
            action_of_custom_id("MJ::Outpaint::50::1::abc::SOLO").map(|a| a.1),
            Some("mj_zoom")
        );
        assert_eq!(
            action_of_custom_id("MJ::CustomZoom::abc").map(|a| a.1),
            Some("mj_custom_zoom")
        );
        assert_eq!(
            action_of_custom_id("MJ::JOB::pan_left::1::abc::SOLO").map(|a| a.1),
            Some("mj_pan")
        );
        assert_eq!(action_of_custom_id("MJ::BOOKMARK::abc"), None);
    }

    #[test]
    fn a_submission_answer_is_taken_only_with_a_success_code() {
        let ok =
            observe(br#"{"code":1,"description":"ok","result":"171","properties":{}}"#).unwrap();
        assert_eq!(ok.0, "171");
        assert_eq!(ok.1.state, Some(State::Queued));
        assert!(observe(br#"{"code":24,"description":"banned","result":null,"properties":{"bannedWord":"x"}}"#).is_none());
        let modal = observe(
            br#"{"code":21,"description":"wait","result":"9","properties":{"status":"MODAL"}}"#,
        )
        .unwrap();
        assert_eq!(modal.1.word, "MODAL");
    }

    #[test]
    fn an_open_source_proxys_existing_job_is_a_refusal_not_a_second_task() {
        assert!(observe(br#"{"code":21,"description":"exists","result":"9","properties":{"status":"SUCCESS","imageUrl":"x"}}"#).is_none());
        assert_eq!(
            observe(br#"{"code":21,"description":"wait","result":"9","properties":{}}"#)
                .unwrap()
                .1
                .word,
            "MODAL"
        );
    }

    #[test]
    fn only_the_fields_a_route_reads_go_upstream_and_speed_is_priced() {
        let ask = parse("imagine", br#"{"prompt":"cat --turbo","accountFilter":{"modes":["TURBO"]},"notifyHook":"https://h.example","state":"s"}"#).unwrap();
        assert_eq!(ask.body, json!({"prompt": "cat --turbo"}));
        assert_eq!(ask.price_model.as_deref(), Some("mj_imagine-turbo"));
        let ask = parse(
            "describe",
            br#"{"base64":"data:image/png;base64,AA","link":"http://169.254.169.254/"}"#,
        )
        .unwrap();
        assert!(ask.body.get("link").is_none());
        let ask = parse(
            "action",
            br#"{"taskId":"t","customId":"MJ::JOB::upsample_v6_2x_subtle::1::h::SOLO"}"#,
        )
        .unwrap();
        assert_eq!(ask.price_model.as_deref(), Some("mj_upscale_2x"));
        let ask = parse("simple-change", br#"{"content":"task_1 V3"}"#).unwrap();
        assert_eq!(
            ask.body,
            json!({"taskId": "task_1", "action": "VARIATION", "index": 3})
        );
        assert!(parse("simple-change", br#"{"content":"task_1 U5"}"#).is_err());
        assert!(parse("imagine", br#"{"prompt":"x","botType":"OTHER"}"#).is_err());
    }

    #[test]
    fn addresses_the_client_did_not_write_are_scrubbed_from_prompts() {
        assert_eq!(
            scrub(
                "https://s.mj.run/abc https://mine.example/a.png a cat",
                "https://mine.example/a.png a cat"
            ),
            "<image> https://mine.example/a.png a cat"
        );
        assert_eq!(scrub("httpd cat", ""), "httpd cat");
    }

    #[test]
    fn the_family_name_is_the_one_signed_urls_know() {
        // billing::task::signed_urls routes Midjourney images by this name.
        assert_eq!(FAMILY, "midjourney");
    }

    #[test]
    fn a_success_that_delivered_nothing_is_a_failure() {
        let (_, seen) = observe(
            br#"{"id":"1","action":"IMAGINE","status":"SUCCESS","progress":"100%","imageUrl":""}"#,
        )
        .unwrap();
        assert_eq!(seen.state, Some(State::Failed));
        let (_, seen) = observe(br#"{"id":"1","action":"DESCRIBE","status":"SUCCESS","progress":"100%","prompt":"","properties":{"finalPrompt":"1. a cat"}}"#).unwrap();
        assert_eq!(seen.state, Some(State::Succeeded));
        let (_, seen) = observe(br#"{"id":"1","action":"DESCRIBE","status":"SUCCESS","progress":"100%","prompt":"","properties":{}}"#).unwrap();
        assert_eq!(seen.state, Some(State::Failed));
    }
}
