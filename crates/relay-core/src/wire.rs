//! The HTTP/1.1 connections to upstreams: hyper's pooled client, one per thread, over
//! rustls with the platform's roots; requests to an address the environment routes
//! through a proxy (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`) go through
//! reqwest, which speaks to proxies.
//!
//! Why not reqwest for everything: its layers above hyper turned the URL into text and
//! parsed it back three times per request, with IDNA processing each time (about 6 µs
//! of a 51 µs request under load). What reqwest set up is kept: no redirects (one would
//! carry the channel's key wherever it points), TCP_NODELAY, one 10 s limit over the
//! whole connect (name lookup, TCP and TLS handshake; running out of it is a connect
//! error), TCP keepalive (15 s, 3 probes) and a 30 s TCP_USER_TIMEOUT, so a pooled
//! connection a NAT dropped is found dead instead of hanging until the channel's timeout.
//!
//! One pool per thread: a pooled connection is driven by a task on the runtime that
//! opened it, so with one shared pool a request served by one actix worker often rode a
//! connection owned by the other, and every request and answer crossed threads.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::proxy::matcher::Matcher;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Https = hyper_rustls::HttpsConnector<HttpConnector>;
type Direct = hyper_util::client::legacy::Client<Timed, Full<Bytes>>;

/// The limit over one whole connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
const MAX_IDLE_PER_HOST: usize = 512;

/// How a request could not be sent.
pub enum WireError {
    /// No connection within [`CONNECT_TIMEOUT`], or refused, or a failed handshake:
    /// nothing left.
    Connect,
    /// Anything else (the request may have arrived).
    Broken,
}

/// The process's upstream connections: one TLS configuration and one proxy rule set,
/// with a pool per thread.
#[derive(Clone)]
pub struct Wires {
    tls: Arc<rustls::ClientConfig>,
    proxies: Arc<Matcher>,
}

thread_local! {
    /// The URL a directly sent response reports (nothing reads it).
    static PLACEHOLDER: reqwest::Url = reqwest::Url::parse("http://upstream.invalid/")
        .unwrap_or_else(|_| unreachable!("a constant URL parses"));
    static DIRECT: std::cell::OnceCell<Direct> = const { std::cell::OnceCell::new() };
    static PROXIED: std::cell::OnceCell<reqwest::Client> = const { std::cell::OnceCell::new() };
}

impl Wires {
    pub fn new() -> Result<Self, String> {
        let tls = tls_config().map_err(|e| e.to_string())?;
        Ok(Wires {
            tls: Arc::new(tls),
            proxies: Arc::new(Matcher::from_system()),
        })
    }

    /// Whether the environment sends requests to `uri` through a proxy.
    pub fn proxied(&self, uri: &http::Uri) -> bool {
        self.proxies.intercept(uri).is_some()
    }

    /// Sends `request` (to a proxy when `proxied`) and returns the response head.
    pub async fn send(
        &self,
        request: http::Request<Bytes>,
        proxied: bool,
    ) -> Result<reqwest::Response, WireError> {
        if proxied {
            let client = PROXIED
                .with(|c| {
                    c.get()
                        .cloned()
                        .or_else(|| reqwest_client().ok().map(|r| c.get_or_init(|| r).clone()))
                })
                .ok_or(WireError::Broken)?;
            let request = reqwest::Request::try_from(request.map(reqwest::Body::from))
                .map_err(|_| WireError::Broken)?;
            return match client.execute(request).await {
                Err(e) if e.is_connect() || e.is_timeout() => Err(WireError::Connect),
                Err(_) => Err(WireError::Broken),
                Ok(resp) => Ok(resp),
            };
        }
        let direct = DIRECT.with(|c| {
            c.get_or_init(|| direct_client(&self.tls, CONNECT_TIMEOUT))
                .clone()
        });
        match direct.request(request.map(Full::new)).await {
            Err(e) if e.is_connect() => Err(WireError::Connect),
            Err(_) => Err(WireError::Broken),
            Ok(resp) => {
                // A response without a URL gets one parsed by reqwest on every call (a
                // constant placeholder, 0.4 % of the gateway's samples): it gets a copy of
                // one parsed once per thread instead.
                let (mut parts, body) = resp.into_parts();
                let url = PLACEHOLDER.with(|u| u.clone());
                if let Some(extensions) =
                    reqwest::ResponseBuilderExt::url(http::Response::builder(), url)
                        .extensions_mut()
                {
                    parts.extensions.extend(std::mem::take(extensions));
                }
                let resp = http::Response::from_parts(parts, reqwest::Body::wrap(body));
                Ok(reqwest::Response::from(resp))
            }
        }
    }
}

fn direct_client(tls: &Arc<rustls::ClientConfig>, connect_timeout: Duration) -> Direct {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_keepalive(Some(Duration::from_secs(15)));
    http.set_keepalive_interval(Some(Duration::from_secs(15)));
    http.set_keepalive_retries(Some(3));
    http.set_tcp_user_timeout(Some(Duration::from_secs(30)));
    let https = hyper_rustls::HttpsConnector::from((http, Arc::clone(tls)));
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .pool_idle_timeout(IDLE_TIMEOUT)
        .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
        .build(Timed(https, connect_timeout))
}

/// reqwest, for proxied addresses: it reads the same proxy variables.
fn reqwest_client() -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .tcp_nodelay(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(IDLE_TIMEOUT)
        .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
        .build()
}

/// TLS as reqwest configured it: ring, the platform's certificate roots (or
/// `SSL_CERT_FILE`), TLS 1.2 and 1.3, HTTP/1.1.
fn tls_config() -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls_platform_verifier::Verifier::new(Arc::clone(&provider))?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tls)
}

/// The connector with one limit ([`CONNECT_TIMEOUT`]) over all of it (the TCP connect
/// timeout of hyper's connector would leave out the name lookup and the TLS handshake).
#[derive(Clone)]
struct Timed(Https, Duration);

impl tower_service::Service<http::Uri> for Timed {
    type Response = <Https as tower_service::Service<http::Uri>>::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, dst: http::Uri) -> Self::Future {
        let (connecting, limit) = (self.0.call(dst), self.1);
        Box::pin(async move {
            match tokio::time::timeout(limit, connecting).await {
                Err(_) => Err(BoxError::from("connecting to the upstream timed out")),
                Ok(connected) => connected,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_upstream_that_takes_the_connection_but_never_finishes_the_tls_handshake_is_a_connect_failure()
     {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepts, then says nothing: the handshake never completes.
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        let tls = Arc::new(tls_config().unwrap());
        let client = direct_client(&tls, Duration::from_millis(300));
        let uri: http::Uri = format!("https://127.0.0.1:{port}/v1/models")
            .parse()
            .unwrap();
        let started = std::time::Instant::now();
        let request = http::Request::get(uri)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(5), client.request(request))
            .await
            .expect("the connect limit ends the wait, not the caller's timeout");
        let error = outcome.expect_err("no TLS, no answer");
        assert!(error.is_connect(), "{error:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        silent.abort();
    }
}
