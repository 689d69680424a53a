//! A mock midjourney-proxy (the Plus server's API), shaped like the real one: every
//! `/mj/...` call must carry `mj-api-secret` or gets 401 with an empty body; submits
//! answer HTTP 200 `{code, description, result, properties}`; tasks are
//! `{id, action, status, progress:"37%", prompt, promptEn, description, state,
//! submitTime, startTime, finishTime, imageUrl, failReason, properties, buttons}` with
//! millisecond times and ids; `fetch` of an unknown id answers 200 with an empty body;
//! `list-by-condition` leaves out ids it does not know. Images are served by the proxy
//! itself (`/attachments/...`, `Range` honoured).
//!
//! A task moves on each time it is looked at (fetched or listed): `IN_PROGRESS` at
//! `37%`, then its end. The prompt picks the behaviour:
//! - `banned`: refused, code 24 (`bannedWord`); `queuefull`: refused, code 23;
//! - `busy`: accepted with code 22 (queued);
//! - `fail`: ends `FAILURE` (progress `""`, a `failReason`);
//! - `noimage`: ends `SUCCESS` with an empty `imageUrl`;
//! - `weird`: reports a status word no proxy has (`PAUSED`) forever;
//! - anything else: ends `SUCCESS` with an image and buttons.
//!
//! `action` with an `MJ::CustomZoom` or `MJ::Inpaint` button answers code 21 and a
//! `MODAL` task, which `modal` sets going.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

/// The secret the mock accepts.
pub const SECRET: &str = "mj-secret-789";

#[derive(Clone)]
struct Job {
    task: Value,
    looks: u32,
    /// How it ends: `SUCCESS`, `FAILURE`, `NOIMAGE`, `WEIRD`.
    end: &'static str,
}

#[derive(Default)]
struct State {
    jobs: HashMap<String, Job>,
    submissions: Vec<(String, Value)>,
    fetches: u32,
    lists: Vec<usize>,
    next: u64,
    base: String,
}

pub struct MockMidjourney {
    pub base_url: String,
    state: Arc<Mutex<State>>,
    handle: actix_web::dev::ServerHandle,
}

impl MockMidjourney {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State {
            next: 1_712_205_491_372_000,
            ..State::default()
        }));
        let data = web::Data::new(Arc::clone(&state));
        let (base_url, handle) = crate::mock_server::serve(move |cfg| {
            cfg.app_data(data.clone())
                .route("/mj/submit/{route}", web::post().to(submit))
                .route("/mj/insight-face/swap", web::post().to(swap))
                .route("/mj/task/list-by-condition", web::post().to(list))
                .route("/mj/task/{id}/fetch", web::get().to(fetch))
                .route("/mj/task/{id}/image-seed", web::get().to(seed))
                .route("/attachments/{file}", web::get().to(attachment));
        });
        state.lock().unwrap().base = base_url.clone();
        MockMidjourney {
            base_url,
            state,
            handle,
        }
    }

    /// Every submission: (route, body).
    pub fn submissions(&self) -> Vec<(String, Value)> {
        self.state.lock().unwrap().submissions.clone()
    }

    /// Single-task fetches so far.
    pub fn fetches(&self) -> u32 {
        self.state.lock().unwrap().fetches
    }

    /// The ids asked in each `list-by-condition` so far.
    pub fn lists(&self) -> Vec<usize> {
        self.state.lock().unwrap().lists.clone()
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

type Shared = web::Data<Arc<Mutex<State>>>;

fn authorized(req: &HttpRequest) -> bool {
    req.headers()
        .get("mj-api-secret")
        .and_then(|v| v.to_str().ok())
        == Some(SECRET)
}

fn answer(code: i64, description: &str, result: Value, properties: Value) -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "code": code, "description": description, "result": result, "properties": properties
    }))
}

fn grid_buttons(hash: &str) -> Value {
    let mut b = Vec::new();
    for i in 1..=4 {
        b.push(json!({"customId": format!("MJ::JOB::upsample::{i}::{hash}"), "emoji": "", "label": format!("U{i}"), "type": 2, "style": 2}));
    }
    b.push(json!({"customId": format!("MJ::JOB::reroll::0::{hash}::SOLO"), "emoji": "🔄", "label": "", "type": 2, "style": 2}));
    for i in 1..=4 {
        b.push(json!({"customId": format!("MJ::JOB::variation::{i}::{hash}"), "emoji": "", "label": format!("V{i}"), "type": 2, "style": 2}));
    }
    Value::Array(b)
}

fn upscaled_buttons(hash: &str) -> Value {
    json!([
        {"customId": format!("MJ::JOB::high_variation::1::{hash}::SOLO"), "emoji": "🪄", "label": "Vary (Strong)", "type": 2, "style": 2},
        {"customId": format!("MJ::Inpaint::1::{hash}::SOLO"), "emoji": "🖌️", "label": "Vary (Region)", "type": 2, "style": 2},
        {"customId": format!("MJ::Outpaint::50::1::{hash}::SOLO"), "emoji": "🔍", "label": "Zoom Out 2x", "type": 2, "style": 2},
        {"customId": format!("MJ::CustomZoom::{hash}"), "emoji": "🔍", "label": "Custom Zoom", "type": 2, "style": 2},
        {"customId": format!("MJ::JOB::pan_left::1::{hash}::SOLO"), "emoji": "⬅️", "label": "", "type": 2, "style": 2}
    ])
}

/// Opens a task of `action` for `prompt`; its id.
fn open(s: &mut State, action: &str, prompt: &str, status: &str) -> String {
    s.next += 1;
    let id = s.next.to_string();
    let end = if prompt.contains("fail") {
        "FAILURE"
    } else if prompt.contains("noimage") {
        "NOIMAGE"
    } else if prompt.contains("weird") {
        "WEIRD"
    } else {
        "SUCCESS"
    };
    let now = chrono::Utc::now().timestamp_millis();
    let task = json!({
        "id": id, "action": action, "status": status, "progress": "0%",
        "prompt": prompt, "promptEn": prompt, "description": format!("/{} {prompt}", action.to_lowercase()),
        "state": null, "submitTime": now, "startTime": null, "finishTime": null,
        "imageUrl": null, "failReason": null,
        "properties": {"discordInstanceId": "1118138338562560102", "notifyHook": null},
        "buttons": []
    });
    s.jobs.insert(
        id.clone(),
        Job {
            task,
            looks: 0,
            end,
        },
    );
    id
}

/// Moves a task on one look, and shows it.
fn look(s: &mut State, id: &str) -> Option<Value> {
    let base = s.base.clone();
    let job = s.jobs.get_mut(id)?;
    let status = job.task["status"].as_str().unwrap_or_default().to_owned();
    if matches!(status.as_str(), "SUCCESS" | "FAILURE" | "MODAL") {
        return Some(job.task.clone());
    }
    job.looks += 1;
    let now = chrono::Utc::now().timestamp_millis();
    let t = &mut job.task;
    if job.looks == 1 || job.end == "WEIRD" {
        t["status"] = json!(if job.end == "WEIRD" {
            "PAUSED"
        } else {
            "IN_PROGRESS"
        });
        t["progress"] = json!("37%");
        t["startTime"] = json!(now);
        return Some(t.clone());
    }
    t["finishTime"] = json!(now);
    let hash = format!("a1b2c3d4-{id}");
    match job.end {
        "FAILURE" => {
            t["status"] = json!("FAILURE");
            t["progress"] = json!("");
            t["failReason"] = json!("[Invalid parameter] Invalid value");
        }
        _ => {
            t["status"] = json!("SUCCESS");
            t["progress"] = json!("100%");
            let action = t["action"].as_str().unwrap_or_default().to_owned();
            t["imageUrl"] = if job.end == "NOIMAGE" {
                json!("")
            } else {
                json!(format!("{base}/attachments/{id}.png"))
            };
            t["properties"]["messageHash"] = json!(hash);
            t["properties"]["finalPrompt"] = json!(match action.as_str() {
                "DESCRIBE" =>
                    "1️⃣ a red cat on a sofa --ar 5:4\n\n2️⃣ a cat, oil painting".to_owned(),
                "SHORTEN" => "## Shortened prompts\n1️⃣ red cat".to_owned(),
                _ => t["prompt"].as_str().unwrap_or_default().to_owned(),
            });
            t["buttons"] = match action.as_str() {
                "IMAGINE" | "VARIATION" | "REROLL" | "BLEND" => grid_buttons(&hash),
                "UPSCALE" => upscaled_buttons(&hash),
                _ => json!([]),
            };
        }
    }
    Some(t.clone())
}

async fn submit(
    state: Shared,
    req: HttpRequest,
    route: web::Path<String>,
    body: web::Json<Value>,
) -> HttpResponse {
    if !authorized(&req) {
        return HttpResponse::Unauthorized().finish();
    }
    let route = route.into_inner();
    let body = body.into_inner();
    let mut s = state.lock().unwrap();
    s.submissions.push((route.clone(), body.clone()));
    let prompt = body["prompt"].as_str().unwrap_or_default().to_owned();
    let target = |s: &State| -> Option<Job> {
        s.jobs
            .get(body["taskId"].as_str().unwrap_or_default())
            .cloned()
    };
    match route.as_str() {
        "imagine" | "shorten" => {
            if prompt.trim().is_empty() {
                return answer(4, "prompt不能为空", Value::Null, json!({}));
            }
            if prompt.contains("banned") {
                return answer(
                    24,
                    "可能包含敏感词",
                    Value::Null,
                    json!({"promptEn": prompt, "bannedWord": "banned"}),
                );
            }
            if prompt.contains("queuefull") {
                return answer(
                    23,
                    "队列已满，请稍后尝试",
                    Value::Null,
                    json!({"discordInstanceId": "1"}),
                );
            }
            let action = if route == "imagine" {
                "IMAGINE"
            } else {
                "SHORTEN"
            };
            let id = open(&mut s, action, &prompt, "SUBMITTED");
            if prompt.contains("busy") {
                return answer(
                    22,
                    "排队中，前面还有1个任务",
                    json!(id),
                    json!({"numberOfQueues": 1, "discordInstanceId": "1"}),
                );
            }
            answer(1, "提交成功", json!(id), json!({"discordInstanceId": "1"}))
        }
        "change" => {
            let Some(parent) = target(&s) else {
                return answer(3, "关联任务不存在或已失效", Value::Null, json!({}));
            };
            if parent.task["status"] != "SUCCESS" {
                return answer(4, "关联任务状态错误", Value::Null, json!({}));
            }
            let action = body["action"].as_str().unwrap_or_default().to_owned();
            let p = parent.task["prompt"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let id = open(&mut s, &action, &p, "SUBMITTED");
            answer(1, "提交成功", json!(id), json!({}))
        }
        "action" => {
            let Some(parent) = target(&s) else {
                return answer(3, "关联任务不存在或已失效", Value::Null, json!({}));
            };
            let custom = body["customId"].as_str().unwrap_or_default().to_owned();
            if !parent.task["buttons"]
                .as_array()
                .is_some_and(|b| b.iter().any(|b| b["customId"] == custom))
            {
                return answer(4, "customId参数错误", Value::Null, json!({}));
            }
            let p = parent.task["prompt"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if custom.starts_with("MJ::CustomZoom") || custom.starts_with("MJ::Inpaint") {
                let action = if custom.starts_with("MJ::Inpaint") {
                    "INPAINT"
                } else {
                    "ZOOM"
                };
                let id = open(&mut s, action, &p, "MODAL");
                return answer(
                    21,
                    "窗口等待",
                    json!(id),
                    json!({"finalPrompt": p, "remix": true}),
                );
            }
            let action = if custom.contains("upsample") {
                "UPSCALE"
            } else if custom.contains("variation") {
                "VARIATION"
            } else if custom.contains("reroll") {
                "REROLL"
            } else if custom.contains("pan_") {
                "PAN"
            } else {
                "ZOOM"
            };
            let id = open(&mut s, action, &p, "SUBMITTED");
            answer(1, "提交成功", json!(id), json!({}))
        }
        "modal" => {
            let id = body["taskId"].as_str().unwrap_or_default().to_owned();
            let Some(job) = s.jobs.get_mut(&id) else {
                return answer(3, "关联任务不存在或已失效", Value::Null, json!({}));
            };
            if job.task["status"] != "MODAL" {
                return answer(4, "关联任务状态错误", Value::Null, json!({}));
            }
            job.task["status"] = json!("SUBMITTED");
            if !prompt.is_empty() {
                job.task["prompt"] = json!(prompt);
            }
            answer(1, "提交成功", json!(id), json!({}))
        }
        "blend" => {
            let n = body["base64Array"].as_array().map_or(0, Vec::len);
            if !(2..=5).contains(&n) {
                return answer(4, "base64List参数错误", Value::Null, json!({}));
            }
            let id = open(&mut s, "BLEND", "", "SUBMITTED");
            answer(1, "提交成功", json!(id), json!({}))
        }
        "describe" => {
            if body["base64"]
                .as_str()
                .is_none_or(|b| !b.starts_with("data:image/"))
            {
                return answer(4, "base64格式错误", Value::Null, json!({}));
            }
            let id = open(&mut s, "DESCRIBE", "", "SUBMITTED");
            answer(1, "提交成功", json!(id), json!({}))
        }
        "upload-discord-images" => {
            let n = body["base64Array"].as_array().map_or(0, Vec::len);
            let urls: Vec<String> = (0..n)
                .map(|i| format!("https://cdn.discordapp.com/attachments/1/2/upload-{i}.png"))
                .collect();
            answer(1, "提交成功", json!(urls), json!({}))
        }
        _ => HttpResponse::NotFound().finish(),
    }
}

async fn swap(state: Shared, req: HttpRequest, body: web::Json<Value>) -> HttpResponse {
    if !authorized(&req) {
        return HttpResponse::Unauthorized().finish();
    }
    let body = body.into_inner();
    let mut s = state.lock().unwrap();
    s.submissions
        .push(("insight-face/swap".into(), body.clone()));
    if body["sourceBase64"].as_str().is_none() || body["targetBase64"].as_str().is_none() {
        return answer(
            4,
            "sourceBase64和targetBase64不能为空",
            Value::Null,
            json!({}),
        );
    }
    let id = open(&mut s, "SWAP_FACE", "", "SUBMITTED");
    answer(1, "提交成功", json!(id), json!({}))
}

async fn fetch(state: Shared, req: HttpRequest, id: web::Path<String>) -> HttpResponse {
    if !authorized(&req) {
        return HttpResponse::Unauthorized().finish();
    }
    let mut s = state.lock().unwrap();
    s.fetches += 1;
    match look(&mut s, &id) {
        Some(t) => HttpResponse::Ok().json(t),
        // The proxy answers an unknown id with nothing at all.
        None => HttpResponse::Ok().finish(),
    }
}

async fn list(state: Shared, req: HttpRequest, body: web::Json<Value>) -> HttpResponse {
    if !authorized(&req) {
        return HttpResponse::Unauthorized().finish();
    }
    let ids: Vec<String> = body["ids"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut s = state.lock().unwrap();
    s.lists.push(ids.len());
    let found: Vec<Value> = ids.iter().filter_map(|id| look(&mut s, id)).collect();
    HttpResponse::Ok().json(found)
}

async fn seed(state: Shared, req: HttpRequest, id: web::Path<String>) -> HttpResponse {
    if !authorized(&req) {
        return HttpResponse::Unauthorized().finish();
    }
    let s = state.lock().unwrap();
    match s.jobs.get(id.as_str()) {
        Some(j) if j.task["status"] == "SUCCESS" => {
            answer(1, "成功", json!("636646138"), json!({}))
        }
        Some(_) => answer(4, "任务状态错误", Value::Null, json!({})),
        None => answer(3, "任务不存在", Value::Null, json!({})),
    }
}

async fn attachment(req: HttpRequest) -> HttpResponse {
    crate::mock_server::ranged_content(&req, "image/png")
}
