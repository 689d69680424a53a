//! The one pooled HTTP client for every upstream, and how a channel's base URL and key
//! become a request.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use store::catalog::{ChannelEntry, ChannelKind};

use crate::RelayError;

/// How one try at a channel failed (whose fault it is: [`crate::fault::classify`]).
#[derive(Debug)]
pub enum Failure {
    /// Could not connect: the request never left.
    Connect,
    /// The connection broke before an answer (the request may have arrived).
    Broken,
    /// No answer (or no next byte) within the channel's timeout.
    Timeout,
    /// The upstream answered with an error status, or opened a stream with an error
    /// event (then `status` is what its fields stand for: [`crate::fault::opening_error`]).
    Status { status: u16, body: Bytes },
    /// A success status with a body that is not what the protocol promises.
    Malformed,
    /// An answer over the size limit (`TOLLGATE_MAX_UPSTREAM_MB`).
    TooLarge,
    /// The request cannot be expressed in the channel's protocol (a 400 for the
    /// client, whatever channel is tried).
    Unconvertible(String),
}

impl Failure {
    /// Whether the upstream may have received the request (and so may be doing the
    /// work) although no answer came back: a task submitted so is never sent again.
    pub fn may_have_arrived(&self) -> bool {
        matches!(self, Failure::Timeout | Failure::Broken)
    }

    /// A short class for the generation's attempt list.
    pub fn class(&self) -> String {
        match self {
            Failure::Connect | Failure::Broken => "connect".into(),
            Failure::Timeout => "timeout".into(),
            Failure::Status { status, .. } => format!("status_{status}"),
            Failure::Malformed => "malformed".into(),
            Failure::TooLarge => "too_large".into(),
            Failure::Unconvertible(_) => "unconvertible".into(),
        }
    }
}

/// The upstream client: TCP_NODELAY, pooled keep-alive connections, connect timeout.
///
/// One pool per thread: a pooled connection is driven by a task on the runtime that
/// opened it, so with one shared pool a request served by one actix worker often rode
/// a connection owned by the other, and every request and answer crossed threads (a
/// wake and a context switch each way). Each worker keeps its own connections instead.
#[derive(Clone)]
pub struct UpstreamClient {
    /// Used where a thread's own client cannot be built (it never fails once this did).
    fallback: reqwest::Client,
}

thread_local! {
    static THREAD_CLIENT: std::cell::OnceCell<reqwest::Client> = const { std::cell::OnceCell::new() };
}

fn build_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        // A redirect would carry the channel's key (an `x-goog-api-key` or `api-key`
        // header survives reqwest's cross-host redirect) wherever it points.
        .redirect(reqwest::redirect::Policy::none())
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(512)
        .build()
}

impl UpstreamClient {
    pub fn new() -> Result<Self, RelayError> {
        install_tls_provider();
        let fallback = build_client().map_err(|e| {
            tracing::error!(error = %e, "cannot build the upstream HTTP client");
            RelayError::Internal
        })?;
        Ok(UpstreamClient { fallback })
    }

    /// This thread's client (made on first use).
    fn http(&self) -> reqwest::Client {
        THREAD_CLIENT
            .with(|c| {
                if let Some(client) = c.get() {
                    return Some(client.clone());
                }
                let client = build_client().ok()?;
                Some(c.get_or_init(|| client).clone())
            })
            .unwrap_or_else(|| self.fallback.clone())
    }

    /// POSTs a JSON body to `path` on `channel` with `key`, waiting at most the
    /// channel's timeout for the response head. `model` names an Azure deployment.
    pub async fn post_json(
        &self,
        channel: &ChannelEntry,
        key: &str,
        target: (&str, &str),
        body: Bytes,
        extra: &[(&'static str, String)],
    ) -> Result<reqwest::Response, Failure> {
        self.post(channel, key, target, (body, "application/json"), extra)
            .await
    }

    /// Like [`UpstreamClient::post_json`], for a body of any content type.
    pub async fn post(
        &self,
        channel: &ChannelEntry,
        key: &str,
        target: (&str, &str),
        (body, content_type): (Bytes, &str),
        extra: &[(&'static str, String)],
    ) -> Result<reqwest::Response, Failure> {
        self.send(
            reqwest::Method::POST,
            channel,
            key,
            target,
            Some((body, content_type)),
            extra,
        )
        .await
    }

    /// Any request to `path` on `channel` with `key` (the channel's own auth header
    /// and headers), waiting at most the channel's timeout for the response head.
    pub async fn send(
        &self,
        method: reqwest::Method,
        channel: &ChannelEntry,
        key: &str,
        (path, model): (&str, &str),
        body: Option<(Bytes, &str)>,
        extra: &[(&'static str, String)],
    ) -> Result<reqwest::Response, Failure> {
        let http = self.http();
        let mut req = match parsed_url(channel, path, model) {
            Ok(url) => http.request(method, url),
            // reqwest refuses it with its own error, reported as a failed try.
            Err(text) => http.request(method, text),
        };
        if let Some((body, content_type)) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body);
        }
        req = match channel.kind {
            ChannelKind::Azure => req.header("api-key", key),
            ChannelKind::Gemini => req.header("x-goog-api-key", key),
            ChannelKind::Anthropic => {
                let version = extra
                    .iter()
                    .find(|(n, _)| *n == "anthropic-version")
                    .map_or("2023-06-01", |(_, v)| v.as_str());
                req.header("x-api-key", key)
                    .header("anthropic-version", version)
            }
            ChannelKind::Kling => req.bearer_auth(crate::task::kling::bearer(key)),
            ChannelKind::Midjourney => req.header("mj-api-secret", key),
            ChannelKind::OpenAi
            | ChannelKind::Volcengine
            | ChannelKind::Dashscope
            | ChannelKind::Suno
            | ChannelKind::Unknown => req.bearer_auth(key),
        };
        for (name, value) in extra.iter().filter(|(n, _)| *n != "anthropic-version") {
            req = req.header(*name, value.as_str());
        }
        for (name, value) in &channel.headers {
            req = req.header(name.as_str(), value.as_str());
        }
        let timeout = Duration::from_secs(channel.timeout_s.max(1));
        match tokio::time::timeout(timeout, req.send()).await {
            Err(_) => Err(Failure::Timeout),
            // Not connected within the connect timeout: the request never left, so
            // another channel may take it.
            Ok(Err(e)) if e.is_connect() => Err(Failure::Connect),
            Ok(Err(e)) if e.is_timeout() => Err(Failure::Timeout),
            // The connection broke, perhaps after the request went out: a relay try
            // is retried elsewhere like a refused connection; a task submission must
            // take it as possibly received (see `Failure::may_have_arrived`).
            Ok(Err(_)) => Err(Failure::Broken),
            Ok(Ok(resp)) => Ok(resp),
        }
    }
}

/// How many parsed upstream URLs each thread keeps.
const URL_CACHE: usize = 64;

/// One parsed URL: ((channel id, kind), base URL, path, model, the URL).
type CachedUrl = ((i64, ChannelKind), String, String, String, reqwest::Url);

thread_local! {
    /// (channel id, base URL, path, model) -> the parsed URL. Parsing (with IDNA host
    /// processing) on every request showed in the profile; the key holds the base URL,
    /// so a channel edited in the console can never be served a stale address.
    static URLS: std::cell::RefCell<Vec<CachedUrl>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// [`channel_url`], parsed once per thread and reused (`Err`: the text, which does not
/// parse).
fn parsed_url(channel: &ChannelEntry, path: &str, model: &str) -> Result<reqwest::Url, String> {
    let hit = URLS.with(|cache| {
        cache
            .borrow()
            .iter()
            .find(|(id, base, p, m, _)| {
                *id == (channel.id, channel.kind)
                    && p == path
                    && (channel.kind != ChannelKind::Azure || m == model)
                    && *base == channel.base_url
            })
            .map(|entry| entry.4.clone())
    });
    if let Some(url) = hit {
        return Ok(url);
    }
    let text = channel_url(channel, path, model);
    match reqwest::Url::parse(&text) {
        Ok(url) => {
            URLS.with(|cache| {
                let mut cache = cache.borrow_mut();
                if cache.len() >= URL_CACHE {
                    cache.clear();
                }
                cache.push((
                    (channel.id, channel.kind),
                    channel.base_url.clone(),
                    path.to_owned(),
                    model.to_owned(),
                    url.clone(),
                ));
            });
            Ok(url)
        }
        Err(_) => Err(text),
    }
}

/// Makes ring the process's TLS provider (once; later calls do nothing).
pub fn install_tls_provider() {
    // An error means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads a whole body of at most `limit` bytes (else [`Failure::TooLarge`]), each
/// chunk within `idle`.
pub async fn read_body(
    resp: reqwest::Response,
    idle: Duration,
    limit: usize,
) -> Result<Bytes, Failure> {
    let mut stream = resp.bytes_stream();
    let mut out = bytes::BytesMut::new();
    loop {
        match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => return Err(Failure::Timeout),
            Ok(None) => return Ok(out.freeze()),
            Ok(Some(Err(_))) => return Err(Failure::Connect),
            Ok(Some(Ok(chunk))) => {
                if out.len() + chunk.len() > limit {
                    return Err(Failure::TooLarge);
                }
                out.extend_from_slice(&chunk);
            }
        }
    }
}

/// Joins a channel's base URL (origin, optionally with a path; a trailing `/v1` is
/// tolerated) and an API path starting with `/v1/`.
pub fn endpoint_url(base: &str, path: &str) -> String {
    let base = base.trim_end_matches('/');
    let base = base
        .strip_suffix("/v1")
        .or_else(|| base.strip_suffix("/v1beta"))
        .unwrap_or(base);
    format!("{base}{path}")
}

/// The `api-version` an Azure channel uses when its base URL names none.
pub const AZURE_API_VERSION: &str = "2024-10-21";

/// The URL of `path` (an OpenAI-style `/v1/...` path) on `channel`. An Azure channel's
/// base URL is its resource endpoint, optionally with `?api-version=`; the model is
/// the deployment's name.
pub fn channel_url(channel: &ChannelEntry, path: &str, model: &str) -> String {
    if channel.kind != ChannelKind::Azure {
        return endpoint_url(&channel.base_url, path);
    }
    let (origin, query) = channel
        .base_url
        .split_once('?')
        .unwrap_or((channel.base_url.as_str(), ""));
    let version = query
        .split('&')
        .find_map(|p| p.strip_prefix("api-version="))
        .unwrap_or(AZURE_API_VERSION);
    let origin = origin.trim_end_matches('/');
    let origin = origin.strip_suffix("/openai").unwrap_or(origin);
    let rest = path.strip_prefix("/v1").unwrap_or(path);
    format!("{origin}/openai/deployments/{model}{rest}?api-version={version}")
}

/// An upstream error message safe to show the client: the upstream's own
/// `error.message` when it has one, never the channel's URL or key.
pub fn upstream_message(body: &[u8], status: u16) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("message"))
                .and_then(|m| m.as_str().map(str::to_owned))
        })
        .unwrap_or_else(|| format!("the upstream rejected the request with status {status}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: ChannelKind, base_url: &str) -> ChannelEntry {
        ChannelEntry {
            id: 41,
            name: "c".into(),
            kind,
            base_url: base_url.into(),
            models: Vec::new(),
            model_mapping: std::collections::HashMap::new(),
            groups: Vec::new(),
            priority: 0,
            weight: 1,
            headers: Vec::new(),
            timeout_s: 10,
            status: store::catalog::ChannelStatus::Enabled,
            keys: Vec::new(),
            next_key: std::sync::atomic::AtomicUsize::new(0),
            costs: Default::default(),
        }
    }

    #[test]
    fn a_cached_upstream_url_follows_an_edit_of_the_channels_type_or_base_url() {
        let path = "/v1/chat/completions";
        let url = |c: &ChannelEntry, model: &str| parsed_url(c, path, model).unwrap().to_string();
        let openai = entry(ChannelKind::OpenAi, "https://res.example.com");
        assert_eq!(
            url(&openai, "gpt-4o"),
            "https://res.example.com/v1/chat/completions"
        );
        // Same id and base URL, now an Azure resource: the deployment URL, not the cached one.
        let azure = entry(ChannelKind::Azure, "https://res.example.com");
        assert_eq!(
            url(&azure, "gpt-4o"),
            format!(
                "https://res.example.com/openai/deployments/gpt-4o/chat/completions?api-version={AZURE_API_VERSION}"
            )
        );
        assert!(url(&azure, "other").contains("/deployments/other/"));
        let moved = entry(ChannelKind::OpenAi, "https://elsewhere.example.com/v1");
        assert_eq!(
            url(&moved, "m"),
            "https://elsewhere.example.com/v1/chat/completions"
        );
    }

    #[test]
    fn base_urls_with_or_without_v1_and_slashes_join_the_same() {
        for base in [
            "https://api.x.com",
            "https://api.x.com/",
            "https://api.x.com/v1",
            "https://api.x.com/v1/",
        ] {
            assert_eq!(
                endpoint_url(base, "/v1/chat/completions"),
                "https://api.x.com/v1/chat/completions"
            );
        }
        assert_eq!(
            endpoint_url("http://h/proxy", "/v1/chat/completions"),
            "http://h/proxy/v1/chat/completions"
        );
    }
}
