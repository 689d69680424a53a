//! A mock Volcengine Ark (Seedance) upstream, shaped like the real one (every call but
//! storage needs `Authorization: Bearer` [`KEY`], else 401):
//! `POST /api/v3/contents/generations/tasks` answers `{id}` (`cgt-…`); each
//! `GET …/tasks/{id}` moves the job on (`queued`, `running`, then `succeeded` with
//! `content.video_url` on the mock's own storage, `usage.completion_tokens` as Ark
//! counts them: width × height × (24 × seconds + 1) / 1024 at the asked resolution in
//! 16:9, and `duration`); `DELETE` cancels a queued task only. Storage
//! (`/tos/{id}.mp4?X-Tos-Signature=…`) needs no key, honours `Range`, and records
//! whether anyone sent it an `Authorization` header. The model picks the behaviour:
//! - anything else: succeeds on the second poll (a prompt saying "keep going" runs
//!   for forty polls);
//! - `seedance-fail`: fails on the second poll (`OutputVideoSensitiveContentDetected`);
//! - `seedance-flaky`: polls answer 429, then 500, then an unknown status twice, then
//!   run as usual;
//! - `seedance-refuse`: refuses the submission, 400 `InvalidParameter`;
//! - `seedance-slow-accept`: takes the task, then answers only after 2 s (an answer
//!   lost to the client's timeout).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use crate::mock_server::{Flaky, flaky, timeline};
use crate::mock_sora::content_bytes;

#[derive(Clone, Debug)]
struct Job {
    body: Value,
    /// When it was made, in seconds since the epoch.
    created_at: i64,
    polls: u32,
    status: &'static str,
}

#[derive(Default)]
struct State {
    jobs: HashMap<String, Job>,
    /// The storage signature currently valid (rotated by `expire_urls`).
    signature: String,
    submissions: Vec<Value>,
    storage_auth_seen: bool,
    base: String,
}

/// A running mock.
pub struct MockArk {
    pub base_url: String,
    state: Arc<Mutex<State>>,
    handle: actix_web::dev::ServerHandle,
}

impl MockArk {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let data = web::Data::new(Arc::clone(&state));
        let (base_url, handle) = crate::mock_server::serve(move |cfg| {
            cfg.app_data(data.clone())
                .route("/api/v3/contents/generations/tasks", web::post().to(create))
                .route(
                    "/api/v3/contents/generations/tasks/{id}",
                    web::get().to(retrieve),
                )
                .route(
                    "/api/v3/contents/generations/tasks/{id}",
                    web::delete().to(cancel),
                )
                .route("/tos/{file}", web::get().to(storage));
        });
        {
            let mut s = state.lock().unwrap();
            s.base = base_url.clone();
            s.signature = "sig-1".into();
        }
        MockArk {
            base_url,
            state,
            handle,
        }
    }

    /// Every submission's body, in order.
    pub fn submissions(&self) -> Vec<Value> {
        self.state.lock().unwrap().submissions.clone()
    }

    /// Expires every storage URL handed out so far (a new signature from now on).
    pub fn expire_urls(&self) {
        let mut s = self.state.lock().unwrap();
        s.signature = format!("{}x", s.signature);
    }

    /// Whether the storage ever got an `Authorization` header (a leaked channel key).
    pub fn storage_saw_a_key(&self) -> bool {
        self.state.lock().unwrap().storage_auth_seen
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

type Shared = web::Data<Arc<Mutex<State>>>;

fn error(status: u16, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).json(json!({
        "error": {"code": code, "message": message, "param": "", "type": "BadRequest"}
    }))
}

/// `--name value` of the job's text.
fn flag<'a>(text: &'a str, names: &[&str]) -> Option<&'a str> {
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| names.iter().any(|n| w[0] == format!("--{n}")))
        .map(|w| w[1])
}

/// The key the mock accepts, as Ark takes it: `Authorization: Bearer <key>`.
pub const KEY: &str = "ark-secret-key-5678";

/// `None` when the request carries the key; else Ark's 401.
fn denied(req: &HttpRequest) -> Option<HttpResponse> {
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok());
    (bearer != Some(&format!("Bearer {KEY}"))).then(|| {
        error(
            401,
            "AuthenticationError",
            "the API key in the request is missing or invalid",
        )
    })
}

async fn create(state: Shared, req: HttpRequest, body: web::Json<Value>) -> HttpResponse {
    if let Some(d) = denied(&req) {
        return d;
    }
    let body = body.into_inner();
    let slow = body["model"] == "seedance-slow-accept";
    let answer = accept(&state, body);
    if slow {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
    answer
}

fn accept(state: &Shared, body: Value) -> HttpResponse {
    let mut s = state.lock().unwrap();
    s.submissions.push(body.clone());
    if body["model"] == "seedance-refuse" {
        return error(
            400,
            "InvalidParameter",
            "the parameter `content` is invalid",
        );
    }
    if !body["content"].is_array() {
        return error(
            400,
            "MissingParameter",
            "the parameter `content` is required",
        );
    }
    let id = format!("cgt-{}", uuid::Uuid::now_v7().simple());
    s.jobs.insert(
        id.clone(),
        Job {
            body,
            created_at: chrono::Utc::now().timestamp(),
            polls: 0,
            status: "queued",
        },
    );
    HttpResponse::Ok().json(json!({ "id": id }))
}

async fn retrieve(state: Shared, req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    if let Some(d) = denied(&req) {
        return d;
    }
    let mut s = state.lock().unwrap();
    let base = s.base.clone();
    let signature = s.signature.clone();
    let Some(job) = s.jobs.get_mut(path.as_str()) else {
        return error(404, "ResourceNotFound", "the task does not exist");
    };
    let text = job.body["content"]
        .as_array()
        .and_then(|c| c.iter().find(|i| i["type"] == "text"))
        .and_then(|i| i["text"].as_str())
        .unwrap_or_default()
        .to_owned();
    let seconds: i64 = flag(&text, &["dur", "duration"])
        .and_then(|d| d.parse().ok())
        .unwrap_or(5);
    let (w, h) = match flag(&text, &["rs", "resolution"]).unwrap_or("1080p") {
        "480p" => (864, 480),
        "720p" => (1280, 720),
        _ => (1920, 1080),
    };
    let model = job.body["model"].as_str().unwrap_or_default().to_owned();
    if job.status != "cancelled" {
        job.polls += 1;
        match flaky(&model, job.polls) {
            Some(Flaky::TooMany) => {
                return error(
                    429,
                    "RateLimitExceeded.EndpointRPMExceeded",
                    "Too many requests",
                );
            }
            Some(Flaky::Broken) => {
                return error(
                    500,
                    "InternalServiceError",
                    "The service encountered an error",
                );
            }
            Some(Flaky::Unknown) => {
                return HttpResponse::Ok().json(json!({"id": path.as_str(), "model": model,
                    "status": "pondering", "created_at": job.created_at, "updated_at": job.created_at}));
            }
            None => {}
        }
        // "keep going" in the prompt: a long job, running for a good while.
        let long = text.contains("keep going");
        job.status = match (timeline(&model, job.polls), job.body["model"].as_str()) {
            (1, _) => "queued",
            (2, _) => "running",
            (3..=40, _) if long => "running",
            (_, Some("seedance-fail")) => "failed",
            _ => "succeeded",
        };
    }
    let mut out = json!({
        "id": path.as_str(), "model": job.body["model"], "status": job.status,
        "created_at": job.created_at, "updated_at": job.created_at,
    });
    match job.status {
        "succeeded" => {
            let tokens = w * h * (24 * seconds + 1) / 1024;
            out["content"] = json!({"video_url": format!("{base}/tos/{}.mp4?X-Tos-Signature={signature}", path.as_str())});
            out["usage"] = json!({"completion_tokens": tokens, "total_tokens": tokens});
            out["duration"] = json!(seconds);
        }
        "failed" => {
            out["error"] = json!({"code": "OutputVideoSensitiveContentDetected", "message": "The generated video may contain sensitive content."});
        }
        _ => {}
    }
    HttpResponse::Ok().json(out)
}

async fn cancel(state: Shared, req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    if let Some(d) = denied(&req) {
        return d;
    }
    let mut s = state.lock().unwrap();
    match s.jobs.get_mut(path.as_str()) {
        Some(job) if job.status == "queued" => {
            job.status = "cancelled";
            HttpResponse::Ok().json(json!({}))
        }
        Some(_) => error(
            400,
            "InvalidAction.TaskStatus",
            "only a queued task can be cancelled",
        ),
        None => error(404, "ResourceNotFound", "the task does not exist"),
    }
}

async fn storage(state: Shared, req: HttpRequest) -> HttpResponse {
    if req.headers().contains_key("authorization") {
        state.lock().unwrap().storage_auth_seen = true;
    }
    let valid = format!("X-Tos-Signature={}", state.lock().unwrap().signature);
    if !req.query_string().split('&').any(|p| p == valid) {
        return HttpResponse::Forbidden().finish();
    }
    let bytes = content_bytes();
    let range = req
        .headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
    match range {
        Some((a, b)) if a <= b && b < bytes.len() => HttpResponse::PartialContent()
            .insert_header(("content-type", "video/mp4"))
            .insert_header(("content-range", format!("bytes {a}-{b}/{}", bytes.len())))
            .body(bytes[a..=b].to_vec()),
        _ => HttpResponse::Ok()
            .insert_header(("content-type", "video/mp4"))
            .body(bytes),
    }
}
