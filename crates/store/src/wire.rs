//! What a channel's base URL, keys and headers become on the wire, built once when the
//! catalog loads: the base URL parsed (IDNA host, escapes) into its scheme, authority and
//! path, each key's auth header, and the channel's own headers. A request then only
//! joins its path to the base; the text is parsed again only for a path a browser would
//! rewrite (a space, `%`, a dot segment), so what is sent is always what the `url`
//! crate makes of the joined text.

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderName, HeaderValue, Uri};

use crate::catalog::ChannelKind;

/// The `api-version` an Azure channel uses when its base URL names none.
pub const AZURE_API_VERSION: &str = "2024-10-21";

/// Joins a channel's base URL (origin, optionally with a path; a trailing `/v1` is
/// tolerated) and an API path starting with `/v1/`.
pub fn endpoint_url(base: &str, path: &str) -> String {
    let base = base_without_version(base);
    format!("{base}{path}")
}

fn base_without_version(base: &str) -> &str {
    let base = base.trim_end_matches('/');
    base.strip_suffix("/v1")
        .or_else(|| base.strip_suffix("/v1beta"))
        .unwrap_or(base)
}

/// An Azure resource's origin (without `/openai`) and the `api-version` its base URL
/// names (or [`AZURE_API_VERSION`]).
fn azure_parts(base: &str) -> (&str, &str) {
    let (origin, query) = base.split_once('?').unwrap_or((base, ""));
    let version = query
        .split('&')
        .find_map(|p| p.strip_prefix("api-version="))
        .unwrap_or(AZURE_API_VERSION);
    let origin = origin.trim_end_matches('/');
    (origin.strip_suffix("/openai").unwrap_or(origin), version)
}

/// The URL of `path` (an OpenAI-style `/v1/...` path) on a channel of `kind` at `base`.
/// An Azure channel's base URL is its resource endpoint, optionally with
/// `?api-version=`; the model is the deployment's name.
pub fn channel_url(kind: ChannelKind, base: &str, path: &str, model: &str) -> String {
    if kind != ChannelKind::Azure {
        return endpoint_url(base, path);
    }
    let (origin, version) = azure_parts(base);
    let rest = path.strip_prefix("/v1").unwrap_or(path);
    format!("{origin}/openai/deployments/{model}{rest}?api-version={version}")
}

/// [`channel_url`] as the request's address, read as a browser would (`url`: IDNA
/// hosts, escaped spaces, dot segments); `None` when it does not parse or is not http(s).
pub fn parse_channel_url(kind: ChannelKind, base: &str, path: &str, model: &str) -> Option<Uri> {
    let url = url::Url::parse(&channel_url(kind, base, path, model)).ok()?;
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    Uri::try_from(url.as_str()).ok()
}

/// A channel's base URL, parsed when the catalog loads.
#[derive(Clone)]
struct Base {
    scheme: Scheme,
    authority: Authority,
    /// The base's path as `url` wrote it, without a trailing `/` (and for Azure
    /// without `/openai`): every upstream path goes after it.
    prefix: String,
    /// Azure: `?api-version=…`, after the deployment's path.
    azure_query: Option<String>,
}

impl Base {
    fn parse(kind: ChannelKind, base_url: &str) -> Option<Base> {
        let (origin, azure_query) = if kind == ChannelKind::Azure {
            let (origin, version) = azure_parts(base_url);
            (origin, Some(format!("?api-version={version}")))
        } else {
            (base_without_version(base_url), None)
        };
        let url = url::Url::parse(origin).ok()?;
        // Prepared only when `url` writes the base back as it was given: a base it
        // rewrites on its own (a backslash, a dot segment, a trailing control
        // character, a host in capitals or IDNA) could join differently than the whole
        // text parses, and a query or fragment would land inside the joined path. Such
        // a base is joined as text on every request, as it always was.
        if !matches!(url.scheme(), "http" | "https")
            || url.as_str().trim_end_matches('/') != origin
            || url.query().is_some()
            || url.fragment().is_some()
            || azure_query.as_deref().is_some_and(|q| !plain(q))
        {
            return None;
        }
        let authority = &url[url::Position::BeforeUsername..url::Position::AfterPort];
        Some(Base {
            scheme: Scheme::try_from(url.scheme()).ok()?,
            authority: Authority::try_from(authority).ok()?,
            prefix: url.path().trim_end_matches('/').to_owned(),
            azure_query,
        })
    }

    /// The address of `path` (and, on Azure, `model`'s deployment), when both are
    /// plain: `None` sends the caller to the parsing path.
    fn join(&self, path: &str, model: &str) -> Option<Uri> {
        if !plain(path) {
            return None;
        }
        let text = match &self.azure_query {
            None => [self.prefix.as_str(), path].concat(),
            Some(query) => {
                if !plain(model) || model.contains(['/', '?', '&', '=']) {
                    return None;
                }
                let rest = path.strip_prefix("/v1").unwrap_or(path);
                if rest.contains('?') {
                    return None;
                }
                [
                    self.prefix.as_str(),
                    "/openai/deployments/",
                    model,
                    rest,
                    query,
                ]
                .concat()
            }
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query =
            Some(PathAndQuery::from_maybe_shared(bytes::Bytes::from(text)).ok()?);
        Uri::from_parts(parts).ok()
    }
}

/// Text that `url` would leave exactly as it is in a path or query: no escapes, no
/// characters it encodes, no `.`/`..` segment.
fn plain(text: &str) -> bool {
    let safe = text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~:@/+,;=!$*()?&".contains(&b));
    let path = text.split('?').next().unwrap_or(text);
    safe && !path.split('/').any(|s| s == "." || s == "..")
}

/// A channel as it goes on the wire: its parsed base URL and its own headers. Its
/// `Debug` shows no address (it may hold credentials) and no header value.
#[derive(Clone, Default)]
pub struct Wire {
    base: Option<Base>,
    /// The channel's headers as sent.
    headers: Vec<(HeaderName, HeaderValue)>,
    /// One of the channel's headers cannot be sent: every try at the channel then
    /// fails before anything leaves.
    unsendable: bool,
    /// Whether the environment routes this channel's address through a proxy, decided
    /// on first use.
    pub proxied: std::sync::OnceLock<bool>,
}

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Wire")
            .field("prepared", &self.base.is_some())
            .field("header_names", &names)
            .field("unsendable", &self.unsendable)
            .finish_non_exhaustive()
    }
}

impl Wire {
    /// Prepares a channel of `kind` at `base_url` with `headers`.
    pub fn of(kind: ChannelKind, base_url: &str, headers: &[(String, String)]) -> Wire {
        let sent: Option<Vec<_>> = headers
            .iter()
            .map(|(name, value)| {
                let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
                let mut value = HeaderValue::from_str(value).ok()?;
                // Custom headers often carry credentials.
                value.set_sensitive(true);
                Some((name, value))
            })
            .collect();
        Wire {
            base: Base::parse(kind, base_url),
            unsendable: sent.is_none(),
            headers: sent.unwrap_or_default(),
            proxied: std::sync::OnceLock::new(),
        }
    }

    /// The address of `path` on the channel (of `kind` at `base_url`, the ones this
    /// was prepared from); `model` names an Azure deployment. `None` when it is not an
    /// http(s) address.
    pub fn uri(&self, kind: ChannelKind, base_url: &str, path: &str, model: &str) -> Option<Uri> {
        self.base
            .as_ref()
            .and_then(|b| b.join(path, model))
            .or_else(|| parse_channel_url(kind, base_url, path, model))
    }

    /// The channel's own headers, or `None` when one cannot be sent.
    pub fn headers(&self) -> Option<&[(HeaderName, HeaderValue)]> {
        (!self.unsendable).then_some(self.headers.as_slice())
    }

    /// Whether the channel's address was parsed at load (else it is parsed per request).
    pub fn prepared(&self) -> bool {
        self.base.is_some()
    }
}

impl ChannelKind {
    /// The header a channel of this kind carries `key` in, with its value marked
    /// sensitive; `None` for Kling (a token signed per request) and for a key that
    /// cannot be a header value.
    pub fn auth_header(self, key: &str) -> Option<(HeaderName, HeaderValue)> {
        let (name, value) = match self {
            ChannelKind::Azure => (HeaderName::from_static("api-key"), key.to_owned()),
            ChannelKind::Gemini => (HeaderName::from_static("x-goog-api-key"), key.to_owned()),
            ChannelKind::Anthropic => (HeaderName::from_static("x-api-key"), key.to_owned()),
            ChannelKind::Midjourney => (HeaderName::from_static("mj-api-secret"), key.to_owned()),
            ChannelKind::Kling => return None,
            ChannelKind::OpenAi
            | ChannelKind::Volcengine
            | ChannelKind::Dashscope
            | ChannelKind::Suno
            | ChannelKind::Unknown => (http::header::AUTHORIZATION, format!("Bearer {key}")),
        };
        let mut value = HeaderValue::try_from(value).ok()?;
        value.set_sensitive(true);
        Some((name, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: [ChannelKind; 3] = [ChannelKind::OpenAi, ChannelKind::Azure, ChannelKind::Gemini];

    #[test]
    fn a_joined_address_is_the_one_the_url_parser_makes_of_the_whole_text() {
        let bases = [
            "https://api.example.com",
            "https://api.example.com/",
            "https://api.example.com/v1",
            "https://api.example.com/v1/",
            "http://127.0.0.1:8080/proxy/v1beta",
            "https://user:pw@api.example.com:8443/a/./b/../c",
            "https://BÜCHER.example/v1",
            "https://res.openai.azure.com/openai?api-version=2025-01-01-preview",
            "https://res.openai.azure.com/?api-version=2024-02-01&x=1",
            "https://res.openai.azure.com",
            "https://api.example.com/v1?key=secret",
            "https://api.example.com/#frag",
            // Bases `url` rewrites on their own (a backslash is a slash, a dot segment
            // and a trailing control character go): joined as text, never prepared.
            "https://h.example/a\\",
            "https://h.example/v1\\",
            "https://h.example/a//.",
            "https://api.example.com/v1\u{1}",
            "HTTPS://API.Example.COM:443/v1",
        ];
        let paths = [
            "/v1/chat/completions",
            "/v1/embeddings",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            "/v1beta/models/with space:generateContent",
            "/v1/videos/task-1/../../admin",
            "/v1/videos/a%2Fb",
        ];
        let models = ["gpt-4o", "gpt 4o", "dep/../x", "dep?x=1", "dép"];
        let mut joined = 0;
        for kind in KINDS {
            for base in bases {
                let wire = Wire::of(kind, base, &[]);
                for path in paths {
                    for model in models {
                        let fast = wire.base.as_ref().and_then(|b| b.join(path, model));
                        let slow = parse_channel_url(kind, base, path, model);
                        if let Some(fast) = &fast {
                            joined += 1;
                            assert_eq!(Some(fast), slow.as_ref(), "{kind:?} {base} {path} {model}");
                        }
                        assert_eq!(wire.uri(kind, base, path, model), slow);
                    }
                }
            }
        }
        assert!(joined > 50, "the joining path is the common one: {joined}");
    }

    #[test]
    fn a_base_with_a_query_or_not_http_is_parsed_per_request() {
        assert!(!Wire::of(ChannelKind::OpenAi, "https://x.example/v1?key=1", &[]).prepared());
        assert!(!Wire::of(ChannelKind::OpenAi, "ftp://x.example", &[]).prepared());
        assert!(Wire::of(ChannelKind::Azure, "https://x.example?api-version=1", &[]).prepared());
        let ftp = Wire::of(ChannelKind::OpenAi, "ftp://x.example", &[]);
        assert_eq!(
            ftp.uri(ChannelKind::OpenAi, "ftp://x.example", "/v1/x", "m"),
            None
        );
    }

    #[test]
    fn a_header_that_cannot_be_sent_makes_the_channels_headers_unsendable() {
        let ok = Wire::of(
            ChannelKind::OpenAi,
            "https://x.example",
            &[("X-A".into(), "1".into())],
        );
        let headers = ok.headers().unwrap();
        assert_eq!(headers[0].0, "x-a");
        assert!(headers[0].1.is_sensitive());
        let bad = Wire::of(
            ChannelKind::OpenAi,
            "https://x.example",
            &[("X-A".into(), "a\nb".into())],
        );
        assert!(bad.headers().is_none());
    }

    #[test]
    fn each_kind_carries_its_key_in_its_own_header_marked_sensitive() {
        let (name, value) = ChannelKind::OpenAi.auth_header("sk-1").unwrap();
        assert_eq!(
            (name.as_str(), value.to_str().unwrap()),
            ("authorization", "Bearer sk-1")
        );
        assert!(value.is_sensitive());
        assert_eq!(
            ChannelKind::Anthropic.auth_header("k").unwrap().0,
            "x-api-key"
        );
        assert_eq!(
            ChannelKind::Gemini.auth_header("k").unwrap().0,
            "x-goog-api-key"
        );
        assert_eq!(ChannelKind::Azure.auth_header("k").unwrap().0, "api-key");
        assert!(ChannelKind::Kling.auth_header("a|b").is_none());
        assert!(ChannelKind::OpenAi.auth_header("bad\nkey").is_none());
    }
}
