//! A mock Gemini API for Veo, shaped like the real one: `POST
//! /v1beta/models/{model}:predictLongRunning` (key in `x-goog-api-key`) answers an
//! operation `{name: "models/{model}/operations/{id}"}`; each `GET /v1beta/{name}`
//! moves it on (no `done` while running, then `done: true` with
//! `response.generateVideoResponse.generatedSamples[].video.uri` on the API's own
//! `/v1beta/files/{id}:download?alt=media`, which needs the key too). The model picks:
//! - anything else: done on the second query, one video per `sampleCount`;
//! - `veo-filtered`: done with every sample filtered (`raiMediaFilteredCount`), no video;
//! - `veo-fail`: done with an `error`;
//! - `veo-partial`: done with one video fewer than asked (one filtered);
//! - `veo-flaky`: polls answer 429, then 500, then two unanswered looks, then run as
//!   usual;
//! - `veo-slow-accept`: takes the job, then answers only after 2 s.
//!
//! Files honour `Range`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use crate::mock_server::{Flaky, flaky, timeline};

/// The key the mock accepts.
pub const KEY: &str = "veo-key";

#[derive(Default)]
struct State {
    ops: HashMap<String, (String, Value, u32)>,
    submissions: Vec<(String, Value)>,
    base: String,
}

pub struct MockVeo {
    pub base_url: String,
    state: Arc<Mutex<State>>,
    handle: actix_web::dev::ServerHandle,
}

impl MockVeo {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let data = web::Data::new(Arc::clone(&state));
        let (base_url, handle) = crate::mock_server::serve(move |cfg| {
            cfg.app_data(data.clone())
                .route("/v1beta/models/{target}", web::post().to(submit))
                .route(
                    "/v1beta/models/{model}/operations/{id}",
                    web::get().to(operation),
                )
                .route("/v1beta/files/{file}", web::get().to(file));
        });
        state.lock().unwrap().base = base_url.clone();
        MockVeo {
            base_url,
            state,
            handle,
        }
    }

    /// Every submission: (model, body).
    pub fn submissions(&self) -> Vec<(String, Value)> {
        self.state.lock().unwrap().submissions.clone()
    }

    pub async fn stop(self) {
        self.handle.stop(false).await;
    }
}

type Shared = web::Data<Arc<Mutex<State>>>;

fn denied(req: &HttpRequest) -> Option<HttpResponse> {
    (req.headers().get("x-goog-api-key").and_then(|v| v.to_str().ok()) != Some(KEY)).then(|| {
        HttpResponse::BadRequest().json(json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT"}}))
    })
}

async fn submit(
    state: Shared,
    req: HttpRequest,
    target: web::Path<String>,
    body: web::Json<Value>,
) -> HttpResponse {
    if let Some(d) = denied(&req) {
        return d;
    }
    let Some(model) = target.strip_suffix(":predictLongRunning") else {
        return HttpResponse::NotFound().finish();
    };
    let answer = accept(&state, model, body.into_inner());
    if model == "veo-slow-accept" {
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
    answer
}

fn accept(state: &Shared, model: &str, body: Value) -> HttpResponse {
    let mut s = state.lock().unwrap();
    s.submissions.push((model.to_owned(), body.clone()));
    let id = uuid::Uuid::now_v7().simple().to_string();
    s.ops.insert(id.clone(), (model.to_owned(), body, 0));
    HttpResponse::Ok().json(json!({"name": format!("models/{model}/operations/{id}")}))
}

async fn operation(
    state: Shared,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    if let Some(d) = denied(&req) {
        return d;
    }
    let (model, id) = path.into_inner();
    let mut s = state.lock().unwrap();
    let base = s.base.clone();
    let Some((_, body, polls)) = s.ops.get_mut(&id) else {
        return HttpResponse::NotFound()
            .json(json!({"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}}));
    };
    *polls += 1;
    let name = format!("models/{model}/operations/{id}");
    match flaky(&model, *polls) {
        Some(Flaky::TooMany) => {
            return HttpResponse::TooManyRequests().json(json!({"error": {"code": 429,
                "message": "Resource has been exhausted (e.g. check quota).", "status": "RESOURCE_EXHAUSTED"}}));
        }
        Some(Flaky::Broken) => {
            return HttpResponse::InternalServerError().json(json!({"error": {"code": 500,
                "message": "An internal error has occurred.", "status": "INTERNAL"}}));
        }
        // An operation has no status word: still running is all it can say.
        Some(Flaky::Unknown) => return HttpResponse::Ok().json(json!({ "name": name })),
        None => {}
    }
    if timeline(&model, *polls) == 1 {
        return HttpResponse::Ok().json(json!({ "name": name }));
    }
    let out = match model.as_str() {
        "veo-fail" => {
            json!({"name": name, "done": true, "error": {"code": 400, "message": "The prompt could not be processed.", "status": "INVALID_ARGUMENT"}})
        }
        "veo-filtered" => json!({"name": name, "done": true, "response": {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse",
            "generateVideoResponse": {"raiMediaFilteredCount": 1, "raiMediaFilteredReasons": ["Unsafe content."]}}}),
        _ => {
            let mut n = body["parameters"]["sampleCount"].as_i64().unwrap_or(1);
            if model == "veo-partial" {
                n -= 1;
            }
            json!({"name": name, "done": true, "response": {
                "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse",
                "generateVideoResponse": {"generatedSamples": (0..n).map(|i| json!({"video": {"uri": format!("{base}/v1beta/files/{id}-{i}:download?alt=media")}})).collect::<Vec<_>>()}}})
        }
    };
    HttpResponse::Ok().json(out)
}

async fn file(req: HttpRequest) -> HttpResponse {
    if let Some(d) = denied(&req) {
        return d;
    }
    crate::mock_server::ranged_content(&req, "video/mp4")
}
