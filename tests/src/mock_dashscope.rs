//! A mock Alibaba DashScope (Wan) upstream, shaped like the real one: submissions
//! under `/api/v1/services/aigc/{group}/{function}` need `X-DashScope-Async: enable`
//! (else 400, as DashScope refuses synchronous calls there) and the key `ds-key`;
//! they answer `{request_id, output:{task_id, task_status:"PENDING"}}`. Each `GET
//! /api/v1/tasks/{id}` moves the task on (`PENDING`, `RUNNING`, then `SUCCEEDED` with
//! `output.video_url` and `usage.video_duration` = the asked duration, or
//! `output.results` with one image fewer than asked: one failed its check, and
//! `usage.image_count` says so); `POST …/cancel` works while `PENDING`. The model picks:
//! - anything else: succeeds on the second query;
//! - `wan-fail`: fails (`output.code` `DataInspectionFailed`);
//! - `wan-refuse`: refused at once, 400 `DataInspectionFailed`;
//! - `wan-flaky`: polls answer 429, then 500, then an unknown status twice, then run
//!   as usual;
//! - `wan-slow-accept`: takes the task, then answers only after 2 s.
//!
//! Result URLs on its OSS carry a signature that `expire_urls` rotates (403 after,
//! as an expired OSS URL); OSS honours `Range`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use crate::mock_server::{Flaky, flaky, timeline};

/// The key the mock accepts.
pub const KEY: &str = "ds-key";

#[derive(Default)]
struct State {
    jobs: HashMap<String, (String, Value, u32, bool)>,
    /// The OSS signature currently valid (rotated by `expire_urls`).
    signature: String,
    submissions: Vec<(String, Value)>,
    base: String,
}

pub struct MockDashscope {
    pub base_url: String,
    state: Arc<Mutex<State>>,
    handle: actix_web::dev::ServerHandle,
}

impl MockDashscope {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let data = web::Data::new(Arc::clone(&state));
        let (base_url, handle) = crate::mock_server::serve(move |cfg| {
            cfg.app_data(data.clone())
                .route(
                    "/api/v1/services/aigc/{group}/{function}",
                    web::post().to(create),
                )
                .route("/api/v1/tasks/{id}", web::get().to(query))
                .route("/api/v1/tasks/{id}/cancel", web::post().to(cancel))
                .route("/oss/{file}", web::get().to(oss));
        });
        {
            let mut s = state.lock().unwrap();
            s.base = base_url.clone();
            s.signature = "oss-1".into();
        }
        MockDashscope {
            base_url,
            state,
            handle,
        }
    }

    /// Expires every OSS URL handed out so far (a new signature from now on), as
    /// DashScope's result URLs expire after a day.
    pub fn expire_urls(&self) {
        let mut s = self.state.lock().unwrap();
        s.signature = format!("{}x", s.signature);
    }

    /// Every submission: (path, body).
    pub fn submissions(&self) -> Vec<(String, Value)> {
        self.state.lock().unwrap().submissions.clone()
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

type Shared = web::Data<Arc<Mutex<State>>>;

fn error(status: u16, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
        .json(json!({"request_id": "r-1", "code": code, "message": message}))
}

fn authorized(req: &HttpRequest) -> bool {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {KEY}"))
}

async fn create(state: Shared, req: HttpRequest, body: web::Json<Value>) -> HttpResponse {
    if !authorized(&req) {
        return error(401, "InvalidApiKey", "Invalid API-key provided.");
    }
    if req
        .headers()
        .get("x-dashscope-async")
        .and_then(|v| v.to_str().ok())
        != Some("enable")
    {
        return error(
            400,
            "AccessDenied",
            "current user api does not support synchronous calls",
        );
    }
    let body = body.into_inner();
    let slow = body["model"] == "wan-slow-accept";
    let answer = accept(&state, req.path(), body);
    if slow {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
    answer
}

fn accept(state: &Shared, path: &str, body: Value) -> HttpResponse {
    let mut s = state.lock().unwrap();
    s.submissions.push((path.to_owned(), body.clone()));
    if body["model"] == "wan-refuse" {
        return error(
            400,
            "DataInspectionFailed",
            "Input data may contain inappropriate content.",
        );
    }
    let id = uuid::Uuid::now_v7().to_string();
    s.jobs.insert(id.clone(), (path.to_owned(), body, 0, false));
    HttpResponse::Ok()
        .json(json!({"request_id": "r-2", "output": {"task_id": id, "task_status": "PENDING"}}))
}

async fn query(state: Shared, req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    if !authorized(&req) {
        return error(401, "InvalidApiKey", "Invalid API-key provided.");
    }
    let mut s = state.lock().unwrap();
    let base = s.base.clone();
    let signature = s.signature.clone();
    let Some((route, body, polls, cancelled)) = s.jobs.get_mut(path.as_str()) else {
        return HttpResponse::Ok().json(json!({"request_id": "r", "output": {"task_id": path.as_str(), "task_status": "UNKNOWN"}}));
    };
    let id = path.as_str();
    if *cancelled {
        return HttpResponse::Ok().json(
            json!({"request_id": "r", "output": {"task_id": id, "task_status": "CANCELED"}}),
        );
    }
    *polls += 1;
    let video = route.contains("video-generation");
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    match flaky(&model, *polls) {
        Some(Flaky::TooMany) => {
            return error(429, "Throttling.RateQuota", "Requests rate limit exceeded.");
        }
        Some(Flaky::Broken) => return error(500, "InternalError", "An internal error occured."),
        Some(Flaky::Unknown) => {
            return HttpResponse::Ok().json(
                json!({"request_id": "r", "output": {"task_id": id, "task_status": "HIBERNATING"}}),
            );
        }
        None => {}
    }
    let out = match (timeline(&model, *polls), body["model"].as_str()) {
        (1, _) => json!({"request_id": "r", "output": {"task_id": id, "task_status": "PENDING"}}),
        (2, _) => json!({"request_id": "r", "output": {"task_id": id, "task_status": "RUNNING"}}),
        (_, Some("wan-fail")) => {
            json!({"request_id": "r", "output": {"task_id": id, "task_status": "FAILED",
            "code": "DataInspectionFailed", "message": "Output data may contain inappropriate content."}})
        }
        _ if video => {
            let seconds = body["parameters"]["duration"].as_i64().unwrap_or(5);
            json!({"request_id": "r", "output": {"task_id": id, "task_status": "SUCCEEDED",
                "video_url": format!("{base}/oss/{id}.mp4?Expires=1&Signature={signature}")},
                "usage": {"video_duration": seconds, "video_ratio": "1280*720", "video_count": 1}})
        }
        _ => {
            let n = body["parameters"]["n"].as_i64().unwrap_or(4);
            let made: Vec<Value> = (0..n - 1)
                .map(|i| json!({"url": format!("{base}/oss/{id}-{i}.png?Expires=1&Signature={signature}")}))
                .collect();
            json!({"request_id": "r", "output": {"task_id": id, "task_status": "SUCCEEDED", "results": made},
                "usage": {"image_count": n - 1}})
        }
    };
    HttpResponse::Ok().json(out)
}

async fn cancel(state: Shared, req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    if !authorized(&req) {
        return error(401, "InvalidApiKey", "Invalid API-key provided.");
    }
    let mut s = state.lock().unwrap();
    match s.jobs.get_mut(path.as_str()) {
        Some((_, _, 0 | 1, cancelled)) => {
            *cancelled = true;
            HttpResponse::Ok().json(json!({"request_id": "r"}))
        }
        Some(_) => error(
            400,
            "UnsupportedOperation",
            "Failed to cancel the task, please confirm if the task is in PENDING status.",
        ),
        None => error(404, "NotFound", "task not found"),
    }
}

async fn oss(state: Shared, req: HttpRequest) -> HttpResponse {
    let valid = format!("Signature={}", state.lock().unwrap().signature);
    if !req.query_string().split('&').any(|p| p == valid) {
        return HttpResponse::Forbidden()
            .insert_header(("content-type", "application/xml"))
            .body(
                "<Error><Code>AccessDenied</Code><Message>Request has expired.</Message></Error>",
            );
    }
    let kind = if req.path().ends_with(".png") {
        "image/png"
    } else {
        "video/mp4"
    };
    crate::mock_server::ranged_content(&req, kind)
}
