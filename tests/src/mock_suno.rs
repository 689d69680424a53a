//! A mock Suno API server (the Suno-API shape relays sell): every call must carry
//! `Authorization: Bearer <KEY>` or gets 401 `{code:"unauthorized"}`; submits answer
//! `{code:"success", message:"", data:"<uuid>"}`; a task is
//! `{task_id, action, status, fail_reason, submit_time, start_time, finish_time,
//! progress, data}` with times in seconds, two clips for a song (their files on the
//! mock's own CDN, `Range` honoured) and `{id, text, title, status}` for lyrics;
//! `POST /suno/fetch {ids}` answers many, leaving out ids it does not know.
//!
//! A task moves on each time it is looked at: `IN_PROGRESS` (clips `streaming`, an
//! `audiopipe` URL), then its end. `mv` (or, for lyrics, the prompt) picks the end:
//! `chirp-fail` / `fail`: `FAILURE` with a reason; `chirp-empty`: `SUCCESS` with no
//! audio; `chirp-weird`: `UNKNOWN` forever; anything else: `SUCCESS`. A prompt
//! containing `refuse` is refused at submit with 400.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

/// The key the mock accepts.
pub const KEY: &str = "suno-key-321";

#[derive(Clone)]
struct Job {
    task: Value,
    looks: u32,
    end: &'static str,
}

#[derive(Default)]
struct State {
    jobs: HashMap<String, Job>,
    submissions: Vec<(String, Value)>,
    fetches: u32,
    batches: Vec<usize>,
    base: String,
}

pub struct MockSuno {
    pub base_url: String,
    state: Arc<Mutex<State>>,
    handle: actix_web::dev::ServerHandle,
}

impl MockSuno {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let data = web::Data::new(Arc::clone(&state));
        let (base_url, handle) = crate::mock_server::serve(move |cfg| {
            cfg.app_data(data.clone())
                .route("/suno/submit/{action}", web::post().to(submit))
                .route("/suno/fetch", web::post().to(fetch_many))
                .route("/suno/fetch/{id}", web::get().to(fetch))
                .route("/cdn/{file}", web::get().to(cdn));
        });
        state.lock().unwrap().base = base_url.clone();
        MockSuno {
            base_url,
            state,
            handle,
        }
    }

    /// Every submission: (action, body).
    pub fn submissions(&self) -> Vec<(String, Value)> {
        self.state.lock().unwrap().submissions.clone()
    }

    /// Single-task fetches so far.
    pub fn fetches(&self) -> u32 {
        self.state.lock().unwrap().fetches
    }

    /// The ids asked in each batch fetch so far.
    pub fn batches(&self) -> Vec<usize> {
        self.state.lock().unwrap().batches.clone()
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

type Shared = web::Data<Arc<Mutex<State>>>;

fn unauthorized(req: &HttpRequest) -> Option<HttpResponse> {
    let ok = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {KEY}"));
    (!ok).then(|| {
        HttpResponse::Unauthorized().json(
            json!({"code": "unauthorized", "message": "unauthorized secret token", "data": null}),
        )
    })
}

fn clip(base: &str, id: &str, status: &str, body: &Value) -> Value {
    let done = status == "complete";
    json!({
        "id": id,
        "video_url": if done { format!("{base}/cdn/{id}.mp4") } else { String::new() },
        "audio_url": if done { format!("{base}/cdn/{id}.mp3") } else { format!("https://audiopipe.suno.ai/?item_id={id}") },
        "image_url": format!("{base}/cdn/image_{id}.jpeg"),
        "image_large_url": format!("{base}/cdn/image_large_{id}.jpeg"),
        "is_video_pending": !done,
        "major_model_version": "v3",
        "model_name": "chirp-v3",
        "metadata": {"tags": body["tags"], "prompt": body["prompt"], "gpt_description_prompt": body["gpt_description_prompt"],
            "audio_prompt_id": null, "history": null, "concat_history": null, "type": "gen",
            "duration": if done { json!(128.92) } else { Value::Null }, "refund_credits": false, "stream": true,
            "error_type": null, "error_message": null},
        "is_liked": false, "user_id": "ee5e241a-ead6-435d-bea8-526c77c04c72", "display_name": "YellowRobots6855",
        "handle": "yellowrobots6855", "is_handle_updated": false, "is_trashed": false, "reaction": null,
        "created_at": "2024-09-21T09:43:21.637Z", "status": status, "title": body["title"],
        "play_count": 0, "upvote_count": 0, "is_public": false
    })
}

fn look(s: &mut State, id: &str) -> Option<Value> {
    let base = s.base.clone();
    let job = s.jobs.get_mut(id)?;
    let status = job.task["status"].as_str().unwrap_or_default().to_owned();
    if matches!(status.as_str(), "SUCCESS" | "FAILURE") {
        return Some(job.task.clone());
    }
    job.looks += 1;
    let now = chrono::Utc::now().timestamp();
    let body = job.task["request"].clone();
    let t = &mut job.task;
    let music = t["action"] == "MUSIC";
    let clips = [format!("{id}-a"), format!("{id}-b")];
    if job.looks == 1 || job.end == "WEIRD" {
        t["status"] = json!(if job.end == "WEIRD" {
            "UNKNOWN"
        } else {
            "IN_PROGRESS"
        });
        t["start_time"] = json!(now);
        if music {
            t["data"] = json!(
                clips
                    .iter()
                    .map(|c| clip(&base, c, "streaming", &body))
                    .collect::<Vec<_>>()
            );
        }
    } else {
        t["finish_time"] = json!(now);
        t["progress"] = json!("100%");
        match job.end {
            "FAILURE" => {
                t["status"] = json!("FAILURE");
                t["fail_reason"] = json!("Unable to generate: the prompt breaks our policy");
            }
            _ if music => {
                t["status"] = json!("SUCCESS");
                let mut made: Vec<Value> = clips
                    .iter()
                    .map(|c| clip(&base, c, "complete", &body))
                    .collect();
                if job.end == "EMPTY" {
                    for c in &mut made {
                        c["audio_url"] = json!("");
                        c["video_url"] = json!("");
                    }
                }
                t["data"] = Value::Array(made);
            }
            _ => {
                t["status"] = json!("SUCCESS");
                t["data"] = json!({"id": id, "text": "[Verse]\n喵星人 喵喵叫\n[Chorus]\nmeow", "title": "喵星摇滚", "status": "complete"});
            }
        }
    }
    let mut shown = t.clone();
    if let Some(o) = shown.as_object_mut() {
        o.remove("request");
    }
    Some(shown)
}

async fn submit(
    state: Shared,
    req: HttpRequest,
    action: web::Path<String>,
    body: web::Json<Value>,
) -> HttpResponse {
    if let Some(denied) = unauthorized(&req) {
        return denied;
    }
    let action = action.to_ascii_uppercase();
    let body = body.into_inner();
    let mut s = state.lock().unwrap();
    s.submissions.push((action.clone(), body.clone()));
    let prompt = body["prompt"].as_str().unwrap_or_default();
    if prompt.contains("refuse") {
        return HttpResponse::BadRequest().json(
            json!({"code": "invalid_request", "message": "prompt contains banned words", "data": null}),
        );
    }
    if let Some(clip) = body["continue_clip_id"].as_str() {
        let parent = body["task_id"].as_str().unwrap_or_default();
        if !clip.starts_with(parent) || !s.jobs.contains_key(parent) {
            return HttpResponse::BadRequest().json(
                json!({"code": "invalid_request", "message": "clip not found", "data": null}),
            );
        }
    }
    let mv = body["mv"].as_str().unwrap_or_default();
    let end = if mv == "chirp-fail" || (action == "LYRICS" && prompt.contains("fail")) {
        "FAILURE"
    } else if mv == "chirp-empty" {
        "EMPTY"
    } else if mv == "chirp-weird" {
        "WEIRD"
    } else {
        "SUCCESS"
    };
    let id = uuid::Uuid::now_v7().to_string();
    let now = chrono::Utc::now().timestamp();
    let task = json!({
        "task_id": id, "action": action, "status": "NOT_START", "fail_reason": "",
        "submit_time": now, "start_time": 0, "finish_time": 0, "progress": "0%", "data": null,
        "request": body
    });
    s.jobs.insert(
        id.clone(),
        Job {
            task,
            looks: 0,
            end,
        },
    );
    HttpResponse::Ok().json(json!({"code": "success", "message": "", "data": id}))
}

async fn fetch(state: Shared, req: HttpRequest, id: web::Path<String>) -> HttpResponse {
    if let Some(denied) = unauthorized(&req) {
        return denied;
    }
    let mut s = state.lock().unwrap();
    s.fetches += 1;
    match look(&mut s, &id) {
        Some(t) => HttpResponse::Ok().json(json!({"code": "success", "message": "", "data": t})),
        None => HttpResponse::BadRequest()
            .json(json!({"code": "task_not_exist", "message": "task_not_exist", "data": null})),
    }
}

async fn fetch_many(state: Shared, req: HttpRequest, body: web::Json<Value>) -> HttpResponse {
    if let Some(denied) = unauthorized(&req) {
        return denied;
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
    s.batches.push(ids.len());
    let found: Vec<Value> = ids.iter().filter_map(|id| look(&mut s, id)).collect();
    HttpResponse::Ok().json(json!({"code": "success", "message": "", "data": found}))
}

async fn cdn(req: HttpRequest, file: web::Path<String>) -> HttpResponse {
    let kind = match file.rsplit('.').next() {
        Some("mp3") => "audio/mpeg",
        Some("mp4") => "video/mp4",
        _ => "image/jpeg",
    };
    crate::mock_server::ranged_content(&req, kind)
}
