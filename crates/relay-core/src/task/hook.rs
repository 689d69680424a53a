//! Client callbacks (`webhook_url`, `callback_url`, `notifyHook`): Tollgate POSTs a
//! finished task to the client's hook itself; the hook never goes upstream. A hook is
//! a public address only: one that is not `http(s)`, or whose host is (or resolves
//! only to) a loopback, private, link-local or otherwise internal address, is refused
//! at submission, and every delivery resolves the host again and connects only to
//! public addresses (a name that later points inside is not followed there).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::RelayError;

/// Whether `ip` is on the public internet (not loopback, private, link-local, shared,
/// documentation, multicast, unspecified, or an IPv6 form of one of those).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && v4.octets()[2] == 0)
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8
                || first == 0x0064)
        }
    }
}

/// Checks a client's hook at submission: `http(s)`, a host, and at least one public
/// address (all of them when the host is an address). `allow_private` lets tests
/// deliver to loopback.
pub async fn check(url: &str, allow_private: bool) -> Result<reqwest::Url, RelayError> {
    let bad = |why: &str| RelayError::InvalidRequest(format!("the callback URL {why}"));
    let parsed = reqwest::Url::parse(url).map_err(|_| bad("is not a URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad("must be http or https"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad("must not carry credentials"));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| bad("has no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if allow_private {
        return Ok(parsed);
    }
    let port = parsed.port_or_known_default().unwrap_or(443);
    let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|_| bad("does not resolve"))?
            .map(|a| a.ip())
            .collect(),
    };
    if !addrs.into_iter().any(is_public) {
        return Err(bad("must be a public address"));
    }
    Ok(parsed)
}

/// A resolver that keeps only public addresses (so a delivery cannot be pointed at an
/// internal service by a DNS change after the check).
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| is_public(a.ip()))
                .collect();
            if found.is_empty() {
                return Err("no public address".into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(found.into_iter());
            Ok(addrs)
        })
    }
}

/// Delivers finished tasks to client hooks.
#[derive(Clone)]
pub struct Hooks {
    client: reqwest::Client,
    /// Fetches results from upstream storage: public addresses only, no time limit
    /// on the body (a video streams as long as it takes), redirects followed through
    /// the same resolver.
    fetcher: reqwest::Client,
    allow_private: bool,
}

impl Hooks {
    /// `allow_private`: deliver to any address (tests on loopback only).
    pub fn new(allow_private: bool) -> Result<Self, RelayError> {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10));
        if !allow_private {
            builder = builder.dns_resolver(Arc::new(PublicOnly));
        }
        let client = builder.build().map_err(|e| {
            tracing::error!(error = %e, "cannot build the callback client");
            RelayError::Internal
        })?;
        let mut fetcher = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                // A redirect to an address literal skips the resolver: checked here.
                let literal = attempt
                    .url()
                    .host_str()
                    .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
                    .and_then(|h| h.parse::<IpAddr>().ok());
                if attempt.previous().len() >= 3 {
                    attempt.stop()
                } else if !allow_private && literal.is_some_and(|ip| !is_public(ip)) {
                    attempt.error("redirect to an address that is not public")
                } else {
                    attempt.follow()
                }
            }))
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60));
        if !allow_private {
            fetcher = fetcher.dns_resolver(Arc::new(PublicOnly));
        }
        let fetcher = fetcher.build().map_err(|e| {
            tracing::error!(error = %e, "cannot build the result fetcher");
            RelayError::Internal
        })?;
        Ok(Hooks {
            client,
            fetcher,
            allow_private,
        })
    }

    pub fn allow_private(&self) -> bool {
        self.allow_private
    }

    /// POSTs `body` (JSON) to `url` once; `Err` says why it was not taken (a 2xx
    /// answer takes it). Retries are the engine's, kept in the database.
    pub async fn post_once(&self, url: &str, body: Bytes) -> Result<(), &'static str> {
        self.try_once(url, body).await
    }

    /// GETs a result an upstream left at `url` (its storage's signed URL), with the
    /// client's `Range`; public addresses only, like a callback.
    pub async fn fetch(
        &self,
        url: &str,
        range: Option<&str>,
    ) -> Result<reqwest::Response, RelayError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| RelayError::Upstream)?;
        if !matches!(parsed.scheme(), "http" | "https") || !self.public_literal(&parsed) {
            tracing::warn!("an upstream's result URL is not a public http(s) address");
            return Err(RelayError::Upstream);
        }
        let mut req = self.fetcher.get(parsed);
        if let Some(r) = range {
            req = req.header(reqwest::header::RANGE, r);
        }
        req.send().await.map_err(|e| {
            if e.is_timeout() {
                RelayError::UpstreamTimeout
            } else {
                RelayError::Upstream
            }
        })
    }

    /// False for a URL whose host is an address that is not public (names are checked
    /// by the resolver).
    fn public_literal(&self, url: &reqwest::Url) -> bool {
        self.allow_private
            || url
                .host_str()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
                .and_then(|h| h.parse::<IpAddr>().ok())
                .is_none_or(is_public)
    }

    async fn try_once(&self, url: &str, body: Bytes) -> Result<(), &'static str> {
        let parsed = reqwest::Url::parse(url).map_err(|_| "not a URL")?;
        // An address written in the URL skips the resolver: checked here.
        if !self.public_literal(&parsed) {
            return Err("not a public address");
        }
        let resp = self
            .client
            .post(parsed)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|_| "no answer")?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err("error status")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    #[tokio::test]
    async fn a_hook_that_is_not_a_public_http_address_is_refused() {
        for bad in [
            "ftp://example.com/x",
            "http://127.0.0.1:8080/hook",
            "http://[::1]/hook",
            "http://169.254.169.254/latest/meta-data",
            "http://localhost/hook",
            "http://user:pass@8.8.8.8/hook",
            "not a url",
        ] {
            assert!(check(bad, false).await.is_err(), "{bad}");
        }
        assert!(check("http://8.8.8.8/hook", false).await.is_ok());
        assert!(check("http://127.0.0.1:9/hook", true).await.is_ok());
    }
}
