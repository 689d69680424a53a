//! A mock OpenAI videos (Sora) upstream, shaped like the real one: `POST /v1/videos`
//! (JSON or multipart) answers 200 with a Video object (`video_` + 48 hex, status
//! `queued`, every key present with nulls); each `GET /v1/videos/{id}` moves the job
//! on (`in_progress` at 50%, then `completed`); content is served only to the key
//! that created the video, with `Range`. The model picks the behaviour:
//! - anything else: completes on the second poll, reporting the seconds asked;
//! - `sora-fail`: fails on the second poll with `moderation_blocked`;
//! - `sora-refuse`: refuses the submission, 400 `invalid_request_error`;
//! - `sora-429`: refuses the submission, 429 `rate_limit_exceeded`;
//! - `sora-odd`: answers a status word no API documents (`rendering_frames`) forever;
//! - `sora-short`: completes reporting 4 seconds whatever was asked;
//! - `sora-slow-accept`: takes the job at once but answers the submission only after
//!   2 s (longer than a 1 s channel timeout: the answer is lost);
//! - `sora-flaky-poll`: its first two polls fail (429, then 500), then it goes on as
//!   normal.
//!
//! `GET /v1/videos` lists the caller's jobs, newest first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix_web::{HttpRequest, HttpResponse, web};
use bytes::Bytes;
use serde_json::{Value, json};

/// The bytes of every video's content (1000 bytes, each its index mod 251).
pub fn content_bytes() -> Vec<u8> {
    (0..1000u32).map(|i| (i % 251) as u8).collect()
}

#[derive(Clone, Debug)]
struct Job {
    seq: usize,
    /// Polls still to fail (`sora-flaky-poll`).
    flaky: u32,
    video: Value,
    polls: u32,
    /// The Authorization header that created it.
    owner: String,
}

#[derive(Default)]
struct Jobs {
    by_id: HashMap<String, Job>,
    submissions: Vec<(String, Value)>,
    polls: u32,
}

/// A running mock.
pub struct MockSora {
    pub base_url: String,
    jobs: Arc<Mutex<Jobs>>,
    handle: actix_web::dev::ServerHandle,
}

impl MockSora {
    pub async fn start() -> Self {
        let jobs = Arc::new(Mutex::new(Jobs::default()));
        let data = web::Data::new(Arc::clone(&jobs));
        let (base_url, handle) = crate::mock_server::serve(move |cfg| {
            cfg.app_data(data.clone())
                .route("/v1/videos", web::post().to(create))
                .route("/v1/videos", web::get().to(list))
                .route("/v1/videos/{id}", web::get().to(retrieve))
                .route("/v1/videos/{id}", web::delete().to(delete))
                .route("/v1/videos/{id}/content", web::get().to(content))
                .route("/v1/videos/{id}/remix", web::post().to(remix));
        });
        MockSora {
            base_url,
            jobs,
            handle,
        }
    }

    /// Every submission received: (content type, the fields as JSON).
    pub fn submissions(&self) -> Vec<(String, Value)> {
        self.jobs.lock().unwrap().submissions.clone()
    }

    /// How many polls (`GET /v1/videos/{id}`) it answered.
    pub fn polls(&self) -> u32 {
        self.jobs.lock().unwrap().polls
    }

    /// Makes every `sora-odd` job complete on its next poll.
    pub fn finish_odd_jobs(&self) {
        for job in self.jobs.lock().unwrap().by_id.values_mut() {
            if job.video["model"] == "sora-odd" {
                job.video["model"] = json!("sora-odd-done");
            }
        }
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

type Shared = web::Data<Arc<Mutex<Jobs>>>;

fn auth(req: &HttpRequest) -> String {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn error(status: u16, kind: &str, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).json(json!({
        "error": {"message": message, "type": kind, "param": null, "code": code}
    }))
}

/// The request's fields, JSON or multipart (text fields only; a file is noted).
fn fields(req: &HttpRequest, body: &Bytes) -> Option<Value> {
    let ct = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !ct.starts_with("multipart/form-data") {
        return serde_json::from_slice(body).ok();
    }
    let boundary = ct.split("boundary=").nth(1)?.trim_matches('"');
    let text = String::from_utf8_lossy(body);
    let mut out = serde_json::Map::new();
    for part in text.split(&format!("--{boundary}")) {
        let Some((head, value)) = part.split_once("\r\n\r\n") else {
            continue;
        };
        let name = head.split("name=\"").nth(1)?.split('"').next()?.to_owned();
        let value = value.strip_suffix("\r\n").unwrap_or(value);
        if head.contains("filename=") {
            out.insert(name, json!({"file_bytes": value.len()}));
        } else {
            out.insert(name, json!(value));
        }
    }
    Some(Value::Object(out))
}

fn new_video(model: &str, prompt: &str, seconds: &str, size: &str, remixed: Option<&str>) -> Value {
    let id = format!(
        "video_{}",
        uuid::Uuid::now_v7().simple().to_string().repeat(2)[..48].to_owned()
    );
    json!({
        "id": id, "object": "video", "created_at": chrono::Utc::now().timestamp(),
        "status": "queued", "completed_at": null, "error": null, "expires_at": null,
        "model": model, "progress": 0, "prompt": prompt,
        "remixed_from_video_id": remixed, "seconds": seconds, "size": size,
    })
}

async fn create(jobs: Shared, req: HttpRequest, body: Bytes) -> HttpResponse {
    let ct = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let Some(f) = fields(&req, &body) else {
        return error(
            400,
            "invalid_request_error",
            "invalid_json",
            "We could not parse the JSON body of your request.",
        );
    };
    jobs.lock().unwrap().submissions.push((ct, f.clone()));
    let model = f["model"].as_str().unwrap_or("sora-2");
    match model {
        "sora-refuse" => {
            return error(
                400,
                "invalid_request_error",
                "invalid_value",
                "Invalid value: 'size'. Supported values are: '720x1280' and '1280x720'.",
            );
        }
        "sora-429" => {
            return error(
                429,
                "requests",
                "rate_limit_exceeded",
                "Rate limit reached for requests",
            );
        }
        _ => {}
    }
    let Some(prompt) = f["prompt"].as_str() else {
        return error(
            400,
            "invalid_request_error",
            "missing_required_parameter",
            "Missing required parameter: 'prompt'.",
        );
    };
    if f["seconds"].is_number() {
        return error(
            400,
            "invalid_request_error",
            "invalid_type",
            "Invalid type for 'seconds': expected one of '4', '8', or '12', but got an integer instead.",
        );
    }
    let seconds = f["seconds"].as_str().unwrap_or("4");
    let size = f["size"].as_str().unwrap_or("720x1280");
    let video = new_video(model, prompt, seconds, size, None);
    {
        let mut jobs = jobs.lock().unwrap();
        let seq = jobs.by_id.len();
        jobs.by_id.insert(
            video["id"].as_str().unwrap().to_owned(),
            Job {
                seq,
                flaky: if model == "sora-flaky-poll" { 2 } else { 0 },
                video: video.clone(),
                polls: 0,
                owner: auth(&req),
            },
        );
    }
    if model == "sora-slow-accept" {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
    HttpResponse::Ok().json(video)
}

async fn list(jobs: Shared, req: HttpRequest) -> HttpResponse {
    let jobs = jobs.lock().unwrap();
    let mut mine: Vec<&Job> = jobs
        .by_id
        .values()
        .filter(|j| j.owner == auth(&req))
        .collect();
    mine.sort_by_key(|j| std::cmp::Reverse(j.seq));
    let data: Vec<Value> = mine.iter().map(|j| j.video.clone()).collect();
    HttpResponse::Ok().json(json!({
        "object": "list", "first_id": data.first().map(|v| v["id"].clone()),
        "last_id": data.last().map(|v| v["id"].clone()), "has_more": false, "data": data,
    }))
}

async fn remix(
    jobs: Shared,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<Value>,
) -> HttpResponse {
    let mut jobs = jobs.lock().unwrap();
    let Some(parent) = jobs.by_id.get(path.as_str()).cloned() else {
        return error(404, "invalid_request_error", "not_found", "Video not found");
    };
    if parent.owner != auth(&req) {
        return error(404, "invalid_request_error", "not_found", "Video not found");
    }
    let v = &parent.video;
    let video = new_video(
        v["model"].as_str().unwrap(),
        body["prompt"].as_str().unwrap_or_default(),
        v["seconds"].as_str().unwrap(),
        v["size"].as_str().unwrap(),
        Some(path.as_str()),
    );
    jobs.submissions
        .push(("application/json".into(), body.into_inner()));
    let seq = jobs.by_id.len();
    jobs.by_id.insert(
        video["id"].as_str().unwrap().to_owned(),
        Job {
            seq,
            flaky: 0,
            video: video.clone(),
            polls: 0,
            owner: auth(&req),
        },
    );
    HttpResponse::Ok().json(video)
}

async fn retrieve(jobs: Shared, req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    let mut jobs = jobs.lock().unwrap();
    jobs.polls += 1;
    let Some(job) = jobs.by_id.get_mut(path.as_str()) else {
        return error(404, "invalid_request_error", "not_found", "Video not found");
    };
    if job.owner != auth(&req) {
        return error(404, "invalid_request_error", "not_found", "Video not found");
    }
    if job.flaky > 0 {
        job.flaky -= 1;
        return if job.flaky == 1 {
            error(
                429,
                "requests",
                "rate_limit_exceeded",
                "Rate limit reached for requests",
            )
        } else {
            error(
                500,
                "server_error",
                "internal_error",
                "The server had an error while processing your request.",
            )
        };
    }
    job.polls += 1;
    let model = job.video["model"].as_str().unwrap_or_default().to_owned();
    let v = &mut job.video;
    match (model.as_str(), job.polls) {
        ("sora-odd", _) => {
            v["status"] = json!("rendering_frames");
            v["progress"] = json!(10);
        }
        (_, 1) => {
            v["status"] = json!("in_progress");
            v["progress"] = json!(50);
        }
        ("sora-fail", _) => {
            v["status"] = json!("failed");
            v["error"] = json!({"code": "moderation_blocked", "message": "Your request was blocked by our moderation system."});
        }
        _ => {
            let now = chrono::Utc::now().timestamp();
            v["status"] = json!("completed");
            v["progress"] = json!(100);
            v["completed_at"] = json!(now);
            v["expires_at"] = json!(now + 3600);
            if model == "sora-short" {
                v["seconds"] = json!("4");
            }
        }
    }
    HttpResponse::Ok().json(job.video.clone())
}

async fn delete(jobs: Shared, req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    let mut jobs = jobs.lock().unwrap();
    match jobs.by_id.get(path.as_str()) {
        Some(job) if job.owner == auth(&req) => {
            jobs.by_id.remove(path.as_str());
            HttpResponse::Ok()
                .json(json!({"id": path.as_str(), "object": "video.deleted", "deleted": true}))
        }
        _ => error(404, "invalid_request_error", "not_found", "Video not found"),
    }
}

async fn content(jobs: Shared, req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    let jobs = jobs.lock().unwrap();
    let Some(job) = jobs.by_id.get(path.as_str()) else {
        return error(404, "invalid_request_error", "not_found", "Video not found");
    };
    if job.owner != auth(&req) {
        return error(404, "invalid_request_error", "not_found", "Video not found");
    }
    if job.video["status"] != "completed" {
        return error(
            400,
            "invalid_request_error",
            "video_not_ready",
            "Video is not ready yet.",
        );
    }
    let variant = req
        .query_string()
        .split('&')
        .find_map(|p| p.strip_prefix("variant="))
        .unwrap_or("video");
    let (ct, bytes) = match variant {
        "thumbnail" => ("image/webp", b"RIFF-webp-thumbnail".to_vec()),
        "spritesheet" => ("image/jpeg", b"\xff\xd8jpeg-sprites".to_vec()),
        _ => ("video/mp4", content_bytes()),
    };
    let range = req
        .headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
    match range {
        Some((a, b)) if a <= b && b < bytes.len() => HttpResponse::PartialContent()
            .insert_header(("content-type", ct))
            .insert_header(("accept-ranges", "bytes"))
            .insert_header(("content-range", format!("bytes {a}-{b}/{}", bytes.len())))
            .body(bytes[a..=b].to_vec()),
        _ => HttpResponse::Ok()
            .insert_header(("content-type", ct))
            .insert_header(("accept-ranges", "bytes"))
            .body(bytes),
    }
}
