//! A mock Kling upstream, shaped like the real one: every request must carry a JWT
//! (HS256, `iss` = the access key, valid `exp`/`nbf`) signed with the secret key, or
//! it gets 401 `{code:1002}`; answers are `{code, message, request_id, data}` with
//! numeric-string task ids and millisecond times; a task lives under the path that
//! created it and moves on with each query (`processing`, then `succeed` with
//! `task_result.videos[{id,url,duration}]` or `.images[{index,url}]` on the mock's own
//! CDN, which needs no key). The model picks the behaviour:
//! - anything else: succeeds on the second query, `duration` as asked, `n` images;
//! - `kling-fail`: fails on the second query (`task_status_msg`);
//! - `kling-refuse`: refused at once, 400 `{code:1301}` (content policy);
//! - `kling-busy`: refused with HTTP 200 and `{code:1303}` (over the concurrency limit);
//! - `kling-flaky`: polls answer 429, then 500, then an unknown status word twice,
//!   then run as usual;
//! - `kling-slow-accept`: takes the task, then answers only after 2 s (an answer lost
//!   to the client's timeout).
//!
//! `GET /v1/{class}/{action}?pageNum=&pageSize=` lists the tasks made there, newest
//! first, each with `task_info.external_task_id` as it was submitted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use crate::mock_server::{Flaky, flaky, timeline};

/// The access key and secret key the mock accepts.
pub const ACCESS_KEY: &str = "kling-ak-123";
pub const SECRET_KEY: &str = "kling-sk-456";

#[derive(Default)]
struct State {
    jobs: HashMap<String, (String, Value, u32)>,
    /// Task ids in the order they were made.
    made: Vec<String>,
    submissions: Vec<(String, Value)>,
    cdn_auth_seen: bool,
    base: String,
    next: u64,
}

pub struct MockKling {
    pub base_url: String,
    state: Arc<Mutex<State>>,
    handle: actix_web::dev::ServerHandle,
}

impl MockKling {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State {
            next: 866_889_456_698_785_798,
            ..State::default()
        }));
        let data = web::Data::new(Arc::clone(&state));
        let (base_url, handle) = crate::mock_server::serve(move |cfg| {
            cfg.app_data(data.clone())
                .route("/v1/{class}/{action}", web::post().to(create))
                .route("/v1/{class}/{action}", web::get().to(list))
                .route("/v1/{class}/{action}/{id}", web::get().to(query))
                .route("/cdn/{file}", web::get().to(cdn));
        });
        state.lock().unwrap().base = base_url.clone();
        MockKling {
            base_url,
            state,
            handle,
        }
    }

    /// Every submission: (path, body).
    pub fn submissions(&self) -> Vec<(String, Value)> {
        self.state.lock().unwrap().submissions.clone()
    }

    /// Whether the CDN ever got an `Authorization` header.
    pub fn cdn_saw_a_key(&self) -> bool {
        self.state.lock().unwrap().cdn_auth_seen
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

type Shared = web::Data<Arc<Mutex<State>>>;

fn envelope(code: i64, message: &str, data: Value) -> Value {
    json!({"code": code, "message": message, "request_id": uuid::Uuid::now_v7().to_string(), "data": data})
}

/// `None` when the request carries a good JWT; else the 401 to send.
fn unauthorized(req: &HttpRequest) -> Option<HttpResponse> {
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.set_issuer(&[ACCESS_KEY]);
    v.validate_nbf = true;
    v.required_spec_claims = ["exp", "nbf", "iss"]
        .into_iter()
        .map(String::from)
        .collect();
    let ok = jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(SECRET_KEY.as_bytes()),
        &v,
    )
    .is_ok();
    (!ok).then(|| {
        HttpResponse::Unauthorized()
            .json(json!({"code": 1002, "message": "Authorization is invalid", "request_id": ""}))
    })
}

async fn create(
    state: Shared,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Json<Value>,
) -> HttpResponse {
    if let Some(denied) = unauthorized(&req) {
        return denied;
    }
    let (class, action) = path.into_inner();
    let body = body.into_inner();
    let slow = body["model_name"] == "kling-slow-accept";
    let answer = accept(&state, format!("/v1/{class}/{action}"), body);
    if slow {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
    answer
}

fn accept(state: &Shared, route: String, body: Value) -> HttpResponse {
    let mut s = state.lock().unwrap();
    s.submissions.push((route.clone(), body.clone()));
    if body["model_name"] == "kling-refuse" {
        return HttpResponse::BadRequest().json(
            json!({"code": 1301, "message": "content security policy triggered", "request_id": ""}),
        );
    }
    if body["model_name"] == "kling-busy" {
        return HttpResponse::Ok().json(json!({"code": 1303, "message": "parallel task over resource pack limit", "request_id": ""}));
    }
    s.next += 1;
    let id = s.next.to_string();
    s.jobs.insert(id.clone(), (route, body, 0));
    s.made.push(id.clone());
    let now = chrono::Utc::now().timestamp_millis();
    HttpResponse::Ok().json(envelope(
        0,
        "SUCCEED",
        json!({
            "task_id": id, "task_status": "submitted", "created_at": now, "updated_at": now
        }),
    ))
}

async fn list(state: Shared, req: HttpRequest, path: web::Path<(String, String)>) -> HttpResponse {
    if let Some(denied) = unauthorized(&req) {
        return denied;
    }
    let (class, action) = path.into_inner();
    let route = format!("/v1/{class}/{action}");
    let s = state.lock().unwrap();
    let items: Vec<Value> = s
        .made
        .iter()
        .rev()
        .filter_map(|id| {
            let (r, body, polls) = s.jobs.get(id)?;
            (*r == route).then(|| {
                json!({
                    "task_id": id,
                    "task_status": if *polls == 0 { "submitted" } else { "processing" },
                    "task_info": {"external_task_id": body["external_task_id"]},
                    "created_at": 1_722_769_557_708_i64, "updated_at": 1_722_769_557_708_i64,
                })
            })
        })
        .take(500)
        .collect();
    HttpResponse::Ok().json(envelope(0, "SUCCEED", json!(items)))
}

async fn query(
    state: Shared,
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
) -> HttpResponse {
    if let Some(denied) = unauthorized(&req) {
        return denied;
    }
    let (class, action, id) = path.into_inner();
    let mut s = state.lock().unwrap();
    let base = s.base.clone();
    let Some((route, body, polls)) = s.jobs.get_mut(&id) else {
        return HttpResponse::NotFound()
            .json(json!({"code": 1203, "message": "task not found", "request_id": ""}));
    };
    if *route != format!("/v1/{class}/{action}") {
        return HttpResponse::NotFound()
            .json(json!({"code": 1203, "message": "task not found", "request_id": ""}));
    }
    *polls += 1;
    let now = chrono::Utc::now().timestamp_millis();
    let mut data = json!({"task_id": id, "created_at": now, "updated_at": now});
    let model = body["model_name"].as_str().unwrap_or_default().to_owned();
    match flaky(&model, *polls) {
        Some(Flaky::TooMany) => {
            return HttpResponse::TooManyRequests().json(
                json!({"code": 1302, "message": "request rate over limit", "request_id": ""}),
            );
        }
        Some(Flaky::Broken) => {
            return HttpResponse::InternalServerError()
                .json(json!({"code": 5000, "message": "server internal error", "request_id": ""}));
        }
        Some(Flaky::Unknown) => {
            data["task_status"] = json!("rendering_elsewhere");
            return HttpResponse::Ok().json(envelope(0, "SUCCEED", data));
        }
        None => {}
    }
    match (timeline(&model, *polls), body["model_name"].as_str()) {
        (1, _) => data["task_status"] = json!("processing"),
        (_, Some("kling-fail")) => {
            data["task_status"] = json!("failed");
            data["task_status_msg"] = json!("Failure to pass the risk control system");
        }
        _ => {
            data["task_status"] = json!("succeed");
            data["task_result"] = if class == "images" {
                let n = body["n"].as_i64().unwrap_or(1);
                json!({"images": (0..n).map(|i| json!({"index": i, "url": format!("{base}/cdn/{id}-{i}.png")})).collect::<Vec<_>>()})
            } else {
                let duration = body["duration"].as_str().unwrap_or("5");
                json!({"videos": [{"id": format!("v{id}"), "url": format!("{base}/cdn/{id}.mp4"), "duration": duration}]})
            };
        }
    }
    HttpResponse::Ok().json(envelope(0, "SUCCEED", data))
}

async fn cdn(state: Shared, req: HttpRequest) -> HttpResponse {
    if req.headers().contains_key("authorization") {
        state.lock().unwrap().cdn_auth_seen = true;
    }
    let kind = if req.path().ends_with(".png") {
        "image/png"
    } else {
        "video/mp4"
    };
    crate::mock_server::ranged_content(&req, kind)
}
