//! The one way every mock upstream is served: actix-web on a free loopback port, one
//! worker, no signal handling, bodies up to 64 MiB.

use std::net::TcpListener;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpServer, web};

/// Serves the routes `configure` adds; returns the base URL and a handle to stop it.
pub fn serve(
    configure: impl Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
) -> (String, ServerHandle) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
            .configure(configure.clone())
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    (format!("http://127.0.0.1:{port}"), handle)
}

/// The mocks' result bytes (`mock_sora::content_bytes`) as `content_type`, honouring a
/// `Range: bytes=a-b` with 206 like a storage server.
pub fn ranged_content(req: &actix_web::HttpRequest, content_type: &str) -> actix_web::HttpResponse {
    let bytes = crate::mock_sora::content_bytes();
    let range = req
        .headers()
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)));
    match range {
        Some((a, b)) if a <= b && b < bytes.len() => actix_web::HttpResponse::PartialContent()
            .insert_header(("content-type", content_type))
            .insert_header(("content-range", format!("bytes {a}-{b}/{}", bytes.len())))
            .body(bytes[a..=b].to_vec()),
        _ => actix_web::HttpResponse::Ok()
            .insert_header(("content-type", content_type))
            .body(bytes),
    }
}

/// How a job whose model ends in `-flaky` answers a poll: 429, then 500, then a status
/// word no upstream documents for two polls; after those [`FLAKY_POLLS`] its own
/// timeline runs as usual ([`timeline`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flaky {
    TooMany,
    Broken,
    Unknown,
}

/// Polls a flaky job spends failing or unknown before its own timeline.
pub const FLAKY_POLLS: u32 = 4;

/// What poll `polls` (from 1) of a job of `model` should be, when it is flaky.
pub fn flaky(model: &str, polls: u32) -> Option<Flaky> {
    if !model.ends_with("-flaky") {
        return None;
    }
    match polls {
        1 => Some(Flaky::TooMany),
        2 => Some(Flaky::Broken),
        3 | 4 => Some(Flaky::Unknown),
        _ => None,
    }
}

/// The poll a job of `model` is at on its own timeline (a flaky job's first
/// [`FLAKY_POLLS`] do not count).
pub fn timeline(model: &str, polls: u32) -> u32 {
    if model.ends_with("-flaky") {
        polls.saturating_sub(FLAKY_POLLS)
    } else {
        polls
    }
}

/// Fetches `url` (a signed Tollgate result URL) for its first ten bytes and checks that
/// the range came back as the storage sent it: 206, `Content-Range`, those bytes.
pub async fn assert_served_in_ranges(url: &str) {
    let all = crate::mock_sora::content_bytes();
    let resp = reqwest::Client::new()
        .get(url)
        .header("range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206, "{url}");
    assert_eq!(
        resp.headers()["content-range"].to_str().unwrap(),
        format!("bytes 0-9/{}", all.len())
    );
    assert_eq!(resp.bytes().await.unwrap().to_vec(), all[..10].to_vec());
}
