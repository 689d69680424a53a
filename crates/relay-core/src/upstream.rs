//! The one pooled HTTP client for every upstream, and how a channel's base URL and key
//! become a request.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::HeaderValue;
use store::catalog::{ChannelEntry, ChannelKind, ChannelSecret};

use crate::RelayError;
use crate::wire::{WireError, Wires};

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

/// The upstream client: what a channel's base URL, path and key become as a request,
/// sent over this thread's pooled connections ([`crate::wire`]) within the channel's
/// timeout.
#[derive(Clone)]
pub struct UpstreamClient {
    wires: Wires,
}

impl UpstreamClient {
    pub fn new() -> Result<Self, RelayError> {
        install_tls_provider();
        let wires = Wires::new().map_err(|e| {
            tracing::error!(error = %e, "cannot build the upstream TLS configuration");
            RelayError::Internal
        })?;
        Ok(UpstreamClient { wires })
    }

    /// POSTs a JSON body to `path` on `channel` with `key`, waiting at most the
    /// channel's timeout for the response head. `model` names an Azure deployment.
    pub async fn post_json(
        &self,
        channel: &ChannelEntry,
        key: &ChannelSecret,
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
        key: &ChannelSecret,
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
        key: &ChannelSecret,
        (path, model): (&str, &str),
        body: Option<(Bytes, &str)>,
        extra: &[(&'static str, String)],
    ) -> Result<reqwest::Response, Failure> {
        // An address or header that cannot be sent fails the try as reqwest's builder
        // did (as a broken connection), before anything leaves.
        let (uri, proxied) = address(&self.wires, channel, path, model).ok_or(Failure::Broken)?;
        let request =
            build_request(uri, channel, key, extra, (method, body)).ok_or(Failure::Broken)?;
        let timeout = Duration::from_secs(channel.timeout_s.max(1));
        match tokio::time::timeout(timeout, self.wires.send(request, proxied)).await {
            Err(_) => Err(Failure::Timeout),
            // Not connected within the connect timeout: the request never left, so
            // another channel may take it.
            Ok(Err(WireError::Connect)) => Err(Failure::Connect),
            // The connection broke, perhaps after the request went out: a relay try
            // is retried elsewhere like a refused connection; a task submission must
            // take it as possibly received (see `Failure::may_have_arrived`).
            Ok(Err(WireError::Broken)) => Err(Failure::Broken),
            Ok(Ok(resp)) => Ok(resp),
        }
    }
}

/// The request as it goes to `uri`: the channel's own auth header, the client's
/// headers that must pass, the channel's headers, then what is sent (the method, and
/// the body with its type). `None` when a header cannot be sent.
fn build_request(
    uri: http::Uri,
    channel: &ChannelEntry,
    key: &ChannelSecret,
    extra: &[(&'static str, String)],
    (method, body): (reqwest::Method, Option<(Bytes, &str)>),
) -> Option<http::Request<Bytes>> {
    let (body, content_type) = body.map_or((Bytes::new(), None), |(b, t)| (b, Some(t)));
    let mut request = http::Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    if let Some(t) = content_type {
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_str(t).ok()?);
    }
    match (&key.auth, channel.kind) {
        (Some((name, value)), _) => {
            headers.insert(name, value.clone());
        }
        // A Kling key signs a short-lived token for each request.
        (None, ChannelKind::Kling) => {
            let token = crate::task::kling::bearer(&key.secret);
            let mut value = HeaderValue::try_from(format!("Bearer {token}")).ok()?;
            value.set_sensitive(true);
            headers.insert(http::header::AUTHORIZATION, value);
        }
        // A key that cannot be a header value.
        (None, _) => return None,
    }
    if channel.kind == ChannelKind::Anthropic {
        let version = extra
            .iter()
            .find(|(n, _)| *n == "anthropic-version")
            .map_or("2023-06-01", |(_, v)| v.as_str());
        headers.insert("anthropic-version", HeaderValue::from_str(version).ok()?);
    }
    for (name, value) in extra.iter().filter(|(n, _)| *n != "anthropic-version") {
        headers.append(*name, HeaderValue::from_str(value).ok()?);
    }
    for (name, value) in channel.wire.headers()? {
        headers.append(name, value.clone());
    }
    // reqwest's default, when nothing above named one.
    if !headers.contains_key(http::header::ACCEPT) {
        headers.insert(http::header::ACCEPT, HeaderValue::from_static("*/*"));
    }
    Some(request)
}

/// The address of `path` on `channel` (joined to the base URL parsed when the catalog
/// loaded), with whether the environment sends it through a proxy; `None` when it is
/// not an http(s) address.
fn address(
    wires: &Wires,
    channel: &ChannelEntry,
    path: &str,
    model: &str,
) -> Option<(http::Uri, bool)> {
    let wire = &channel.wire;
    let uri = wire.uri(channel.kind, &channel.base_url, path, model)?;
    let proxied = if wire.prepared() {
        // Decided by the scheme and host, which a prepared base fixes.
        *wire.proxied.get_or_init(|| wires.proxied(&uri))
    } else {
        wires.proxied(&uri)
    };
    Some((uri, proxied))
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

pub use store::wire::{AZURE_API_VERSION, endpoint_url};

/// The URL of `path` (an OpenAI-style `/v1/...` path) on `channel`. An Azure channel's
/// base URL is its resource endpoint, optionally with `?api-version=`; the model is
/// the deployment's name.
pub fn channel_url(channel: &ChannelEntry, path: &str, model: &str) -> String {
    store::wire::channel_url(channel.kind, &channel.base_url, path, model)
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
            wire: store::wire::Wire::of(kind, base_url, &[]),
        }
    }

    /// `c` with `headers` of its own, as the catalog would load it.
    fn with_headers(mut c: ChannelEntry, headers: &[(&str, &str)]) -> ChannelEntry {
        c.headers = headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        c.wire = store::wire::Wire::of(c.kind, &c.base_url, &c.headers);
        c
    }

    fn uri(c: &ChannelEntry, path: &str, model: &str) -> Option<http::Uri> {
        let wires = Wires::new().unwrap();
        address(&wires, c, path, model).map(|(uri, _)| uri)
    }

    fn request(
        c: &ChannelEntry,
        key: &str,
        (path, model): (&str, &str),
        extra: &[(&'static str, String)],
        sent: (reqwest::Method, Option<(Bytes, &str)>),
    ) -> Option<http::Request<Bytes>> {
        let key = ChannelSecret::new(c.kind, 1, key.to_owned());
        build_request(uri(c, path, model)?, c, &key, extra, sent)
    }

    #[test]
    fn a_channels_address_follows_its_type_and_base_url() {
        let path = "/v1/chat/completions";
        let url = |c: &ChannelEntry, model: &str| uri(c, path, model).unwrap().to_string();
        let openai = entry(ChannelKind::OpenAi, "https://res.example.com");
        assert_eq!(
            url(&openai, "gpt-4o"),
            "https://res.example.com/v1/chat/completions"
        );
        // The same base URL as an Azure resource: the deployment's URL.
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
    fn an_upstream_address_is_read_as_a_browser_would_and_only_http_is_sent() {
        let path = "/v1/chat/completions";
        let unicode = entry(ChannelKind::OpenAi, "https://bücher.example/");
        assert_eq!(
            uri(&unicode, path, "m").unwrap().host(),
            Some("xn--bcher-kva.example")
        );
        let azure = entry(ChannelKind::Azure, "https://res.example.com");
        let spaced = uri(&azure, path, "my deployment").unwrap().to_string();
        assert!(spaced.contains("/deployments/my%20deployment/"), "{spaced}");
        let ftp = entry(ChannelKind::OpenAi, "ftp://files.example.com");
        assert!(uri(&ftp, path, "m").is_none());
        let junk = entry(ChannelKind::OpenAi, "not a url");
        assert!(uri(&junk, path, "m").is_none());
    }

    #[test]
    fn each_channel_kind_sends_its_own_auth_header_marked_sensitive_with_the_clients_and_channels_headers()
     {
        let target = ("/v1/messages", "claude");
        let extra = [
            ("anthropic-version", "2023-06-01".to_owned()),
            ("anthropic-beta", "tools-2024".to_owned()),
        ];
        let anthropic = with_headers(
            entry(ChannelKind::Anthropic, "https://api.anthropic.com"),
            &[("x-team", "blue")],
        );
        let body = Some((Bytes::from_static(b"{}"), "application/json"));
        let req = request(
            &anthropic,
            "sk-ant",
            target,
            &extra,
            (reqwest::Method::POST, body),
        )
        .unwrap();
        let h = req.headers();
        assert_eq!(h["x-api-key"], "sk-ant");
        assert!(h["x-api-key"].is_sensitive());
        assert_eq!(h["anthropic-version"], "2023-06-01");
        assert_eq!(h.get_all("anthropic-version").iter().count(), 1);
        assert_eq!(h["anthropic-beta"], "tools-2024");
        assert_eq!(h["x-team"], "blue");
        assert_eq!(h["content-type"], "application/json");
        assert!(h.get("authorization").is_none());

        let openai = entry(ChannelKind::OpenAi, "https://api.openai.com");
        let req = request(
            &openai,
            "sk-1",
            ("/v1/models", ""),
            &[],
            (reqwest::Method::GET, None),
        )
        .unwrap();
        assert_eq!(req.headers()["authorization"], "Bearer sk-1");
        assert!(req.headers()["authorization"].is_sensitive());
        assert!(req.headers().get("content-type").is_none());
        assert_eq!(req.uri().to_string(), "https://api.openai.com/v1/models");

        let gemini = entry(
            ChannelKind::Gemini,
            "https://generativelanguage.googleapis.com",
        );
        let req = request(
            &gemini,
            "AIza",
            ("/v1beta/x", ""),
            &[],
            (reqwest::Method::POST, None),
        )
        .unwrap();
        assert_eq!(req.headers()["x-goog-api-key"], "AIza");
        assert_eq!(req.headers()["accept"], "*/*");
        // A channel's own Accept replaces the default rather than joining it.
        let picky = with_headers(
            entry(ChannelKind::OpenAi, "https://api.openai.com"),
            &[("Accept", "application/json")],
        );
        let req = request(
            &picky,
            "k",
            ("/v1/models", ""),
            &[],
            (reqwest::Method::GET, None),
        )
        .unwrap();
        assert_eq!(
            req.headers().get_all("accept").iter().collect::<Vec<_>>(),
            ["application/json"]
        );
        // A key that cannot be a header value is never sent (the try fails instead).
        assert!(
            request(
                &openai,
                "sk\nx",
                ("/v1/models", ""),
                &[],
                (reqwest::Method::GET, None)
            )
            .is_none()
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
