//! The relay's one error type, with the status and code API.md fixes for each case.

/// Why a relay request was refused or failed. Messages never contain a channel key or
/// an upstream URL.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("{0}")]
    InvalidApiKey(&'static str),
    #[error("insufficient quota: the balance or the key's credit limit cannot cover this request")]
    InsufficientQuota,
    #[error("this key may not use model '{0}'")]
    ModelNotAllowed(String),
    #[error("requests from this IP address are not allowed for this key")]
    IpNotAllowed,
    #[error("model '{0}' has no price and cannot be served")]
    ModelNotPriced(String),
    #[error("the user owning this key is disabled")]
    UserDisabled,
    #[error("model '{0}' is not served for this key's group")]
    ModelNotFound(String),
    /// Something the client named (a task, a video) is not theirs or does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request contradicts an earlier one (an `Idempotency-Key` reused with
    /// another body).
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than {0} MiB")]
    RequestTooLarge(usize),
    #[error("rate limit exceeded: at most {0} requests per minute")]
    RateLimited(u32),
    /// The key's tokens-per-minute budget is spent until the minute turns.
    #[error("rate limit exceeded: at most {limit} tokens per minute")]
    TokensPerMinute { limit: u64, retry_after: u64 },
    #[error("rate limit exceeded: at most {0} requests in flight at once")]
    TooManyInFlight(u32),
    #[error("the upstream failed to answer")]
    Upstream,
    /// The upstream's answer was over `TOLLGATE_MAX_UPSTREAM_MB`: the request's problem.
    #[error("answer too large")]
    AnswerTooLarge,
    #[error("no channel is available for this model right now")]
    NoAvailableChannel,
    #[error("the upstream did not answer in time")]
    UpstreamTimeout,
    /// The upstream blamed the request: its status and message go back to the client.
    #[error("{message}")]
    Rejected {
        status: u16,
        message: String,
        body: Option<bytes::Bytes>,
    },
    /// Tollgate's own database or Redis is unreachable: nothing was charged; retry.
    #[error("the service is briefly unavailable; retry shortly")]
    ServiceUnavailable,
    #[error("internal error")]
    Internal,
}

impl RelayError {
    /// HTTP status for this error.
    pub fn status(&self) -> u16 {
        match self {
            RelayError::InvalidRequest(_) => 400,
            RelayError::InvalidApiKey(_) => 401,
            RelayError::InsufficientQuota => 402,
            RelayError::ModelNotAllowed(_)
            | RelayError::IpNotAllowed
            | RelayError::ModelNotPriced(_)
            | RelayError::UserDisabled => 403,
            RelayError::ModelNotFound(_) | RelayError::NotFound(_) => 404,
            RelayError::Conflict(_) => 409,
            RelayError::RequestTooLarge(_) => 413,
            RelayError::RateLimited(_)
            | RelayError::TokensPerMinute { .. }
            | RelayError::TooManyInFlight(_) => 429,
            RelayError::Upstream | RelayError::AnswerTooLarge => 502,
            RelayError::NoAvailableChannel => 503,
            RelayError::UpstreamTimeout => 504,
            RelayError::Rejected { status, .. } => *status,
            RelayError::ServiceUnavailable => 503,
            RelayError::Internal => 500,
        }
    }

    /// Seconds a client should wait before trying again (`Retry-After`), when it says.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            RelayError::RateLimited(_) => Some(60),
            RelayError::TokensPerMinute { retry_after, .. } => Some((*retry_after).max(1)),
            RelayError::TooManyInFlight(_) => Some(1),
            RelayError::ServiceUnavailable => Some(2),
            _ => None,
        }
    }

    /// The stable code of API.md "Relay errors".
    pub fn code(&self) -> &'static str {
        match self {
            RelayError::InvalidRequest(_) => "invalid_request",
            RelayError::InvalidApiKey(_) => "invalid_api_key",
            RelayError::InsufficientQuota => "insufficient_quota",
            RelayError::ModelNotAllowed(_) => "model_not_allowed",
            RelayError::IpNotAllowed => "ip_not_allowed",
            RelayError::ModelNotPriced(_) => "model_not_priced",
            RelayError::UserDisabled => "user_disabled",
            RelayError::ModelNotFound(_) => "model_not_found",
            RelayError::NotFound(_) => "not_found",
            RelayError::Conflict(_) => "conflict",
            RelayError::RequestTooLarge(_) => "request_too_large",
            RelayError::RateLimited(_)
            | RelayError::TokensPerMinute { .. }
            | RelayError::TooManyInFlight(_) => "rate_limited",
            RelayError::Upstream | RelayError::AnswerTooLarge => "upstream_error",
            RelayError::NoAvailableChannel => "no_available_channel",
            RelayError::UpstreamTimeout => "upstream_timeout",
            RelayError::Rejected { .. } => "upstream_rejected",
            RelayError::ServiceUnavailable => "service_unavailable",
            RelayError::Internal => "internal_error",
        }
    }

    /// OpenAI's `error.type` for this error.
    pub fn openai_type(&self) -> &'static str {
        match self.status() {
            401 => "authentication_error",
            402 => "insufficient_quota",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            s if s >= 500 => "api_error",
            _ => "invalid_request_error",
        }
    }

    /// The OpenAI-shaped error body. For a request the upstream rejected, its own
    /// `type`, `code` and `param` are kept and its message is passed with anything that
    /// looks like a URL or a key redacted.
    pub fn openai_body(&self) -> bytes::Bytes {
        if let RelayError::Rejected {
            body: Some(body),
            message,
            ..
        } = self
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(body)
            && let Some(err) = v.get("error").filter(|e| e.is_object())
        {
            let field = |k: &str| {
                err.get(k)
                    .filter(|x| x.is_string() || x.is_null())
                    .cloned()
                    .unwrap_or(serde_json::Value::Null)
            };
            let out = serde_json::json!({"error": {
                "message": redact(message),
                "type": field("type"),
                "code": field("code"),
                "param": field("param"),
            }});
            return bytes::Bytes::from(out.to_string());
        }
        let param = match self {
            RelayError::InvalidRequest(m) if m.contains("'model'") => {
                serde_json::Value::from("model")
            }
            _ => serde_json::Value::Null,
        };
        let body = serde_json::json!({
            "error": {
                "message": redact(&self.to_string()),
                "type": self.openai_type(),
                "code": self.code(),
                "param": param,
            }
        });
        bytes::Bytes::from(body.to_string())
    }
}

impl RelayError {
    /// The Anthropic-shaped error body (`{"type":"error","error":{"type","message"}}`).
    /// An Anthropic upstream's own rejection keeps its error type, with its message
    /// redacted.
    pub fn anthropic_body(&self) -> bytes::Bytes {
        let upstream_type = match self {
            RelayError::Rejected {
                body: Some(body), ..
            } => serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| {
                    v.pointer("/error/type")
                        .and_then(|t| t.as_str().map(str::to_owned))
                }),
            _ => None,
        };
        let kind =
            upstream_type.unwrap_or_else(|| crate::anthropic::error_type(self.status()).to_owned());
        let body = serde_json::json!({"type": "error", "error": {"type": kind, "message": redact(&self.to_string())}});
        bytes::Bytes::from(body.to_string())
    }
}

impl RelayError {
    /// The Google-shaped error body (`{"error":{"code","message","status"}}`); a
    /// Gemini upstream's own rejection keeps its status, with its message redacted.
    pub fn google_body(&self) -> bytes::Bytes {
        let upstream_status = match self {
            RelayError::Rejected {
                body: Some(body), ..
            } => serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| {
                    v.pointer("/error/status")
                        .and_then(|t| t.as_str().map(str::to_owned))
                }),
            _ => None,
        };
        let status = upstream_status
            .unwrap_or_else(|| crate::gemini::error_status(self.status()).to_owned());
        let body = serde_json::json!({"error": {"code": self.status(), "message": redact(&self.to_string()), "status": status}});
        bytes::Bytes::from(body.to_string())
    }
}

/// Hides what could locate or open a channel in a message that came from an upstream:
/// URLs, bare hostnames and IP addresses, and key-like strings (`sk-…`, long tokens
/// after `key=`, Google `AIza…` keys, 32-hex Azure keys). The rest reads as before.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut boundary = true;
    while !rest.is_empty() {
        if rest.starts_with("http://") || rest.starts_with("https://") {
            let end = rest
                .find(|c: char| c.is_whitespace() || "\"'<>".contains(c))
                .unwrap_or(rest.len());
            out.push_str("[redacted url]");
            rest = &rest[end..];
        } else if let Some((prefix, len)) = prefixed_key(rest) {
            out.push_str(&rest[..prefix]);
            out.push_str("***");
            rest = &rest[prefix + len..];
        } else if let Some((len, hidden)) = boundary.then(|| secret_word(rest)).flatten() {
            out.push_str(hidden);
            rest = &rest[len..];
        } else {
            let ch = rest.chars().next().unwrap_or(' ');
            boundary = !(ch.is_ascii_alphanumeric() || "-_.:".contains(ch));
            out.push(ch);
            rest = &rest[ch.len_utf8()..];
            continue;
        }
        boundary = true;
    }
    out
}

/// A key behind a known prefix at the start of `text`: the prefix's length (kept) and
/// the secret's (hidden). `sk-` and `key=` need 6 key characters after them, Google's
/// `AIza` 30 (its keys are 39 long).
fn prefixed_key(text: &str) -> Option<(usize, usize)> {
    let (prefix, min) = [("sk-", 6), ("key=", 6), ("AIza", 30)]
        .into_iter()
        .find(|(p, _)| text.starts_with(p))?;
    let len = key_run(&text[prefix.len()..]);
    (len >= min).then_some((prefix.len(), len))
}

/// The length of the run of key characters (`[A-Za-z0-9_-]`) that starts `text`.
fn key_run(text: &str) -> usize {
    text.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .unwrap_or(text.len())
}

/// Top-level domains a bare hostname in an upstream message may end with. A list, not
/// a pattern: `messages.0.content` or `gpt-4.1` must read as they are.
const HOST_SUFFIXES: &[&str] = &[
    "com",
    "net",
    "org",
    "io",
    "ai",
    "dev",
    "app",
    "cloud",
    "co",
    "cn",
    "uk",
    "de",
    "fr",
    "jp",
    "eu",
    "us",
    "info",
    "biz",
    "xyz",
    "tech",
    "site",
    "online",
    "internal",
    "local",
    "localhost",
    "lan",
    "corp",
    "svc",
];

/// A word starting `text` that is a secret or an address: its length and what stands
/// in for it. A word is a run of `[A-Za-z0-9._:-]` (and `[` `]` around an IPv6
/// address); a trailing `.` or `:` is punctuation, not part of it.
fn secret_word(text: &str) -> Option<(usize, &'static str)> {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || "-_.:[]".contains(c)))
        .unwrap_or(text.len());
    let word = text[..end].trim_end_matches(['.', ':']);
    if word.len() == 32 && word.chars().all(|c| c.is_ascii_hexdigit()) {
        return Some((word.len(), "[redacted key]"));
    }
    (is_ip(word) || is_hostname(word)).then_some((word.len(), "[redacted host]"))
}

/// An IPv4 or IPv6 address, optionally in brackets and with a port.
fn is_ip(word: &str) -> bool {
    let host = match word.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None if word.matches(':').count() == 1 => word.split(':').next().unwrap_or(word),
        None => word,
    };
    host.parse::<std::net::IpAddr>().is_ok()
}

/// A dotted host name (optionally with a port) ending in a known top-level domain.
fn is_hostname(word: &str) -> bool {
    let host = word.split(':').next().unwrap_or(word);
    let labels: Vec<&str> = host.split('.').collect();
    labels.len() >= 2
        && labels
            .iter()
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        && labels
            .last()
            .is_some_and(|tld| HOST_SUFFIXES.contains(&tld.to_ascii_lowercase().as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_messages_lose_urls_and_keys_but_keep_their_sense() {
        let m = "Incorrect API key provided: sk-proj-abcdef123456. See https://platform.openai.com/account?x=1 for help.";
        let r = redact(m);
        assert_eq!(
            r,
            "Incorrect API key provided: sk-***. See [redacted url] for help."
        );
        assert_eq!(
            redact("temperature must be <= 2"),
            "temperature must be <= 2"
        );
        assert_eq!(redact("ask-me"), "ask-me");
    }

    #[test]
    fn google_and_azure_keys_are_hidden() {
        let google = "API key AIzaSyD-abcdefghijklmnopqrstuvwxyz0123 not valid";
        assert_eq!(redact(google), "API key AIza*** not valid");
        assert_eq!(
            redact("key=AIzaSyAbcdefghijklmnopqrstuvwxyz_12345"),
            "key=***"
        );
        let azure =
            "Access denied due to invalid subscription key 0123456789abcdef0123456789ABCDEF.";
        assert_eq!(
            redact(azure),
            "Access denied due to invalid subscription key [redacted key]."
        );
        // Shorter or longer hex runs are not keys.
        assert_eq!(redact("id 0123456789abcdef"), "id 0123456789abcdef");
    }

    #[test]
    fn bare_hostnames_and_ip_addresses_are_hidden() {
        assert_eq!(
            redact("could not reach myres.openai.azure.com: timeout"),
            "could not reach [redacted host]: timeout"
        );
        assert_eq!(
            redact("upstream 10.0.0.12:8080 refused"),
            "upstream [redacted host] refused"
        );
        assert_eq!(redact("at 192.168.1.1."), "at [redacted host].");
        assert_eq!(
            redact("peer [fd00::1]:443 closed"),
            "peer [redacted host] closed"
        );
        assert_eq!(redact("via gateway.internal"), "via [redacted host]");
        // Field paths, versions, model names, file names and times are not hosts.
        for kept in [
            "messages.0.content: Field required",
            "use gpt-4.1 or claude-3.5",
            "upload data.json, e.g. a list",
            "retry at 12:30:45",
            "response.output_text.delta",
        ] {
            assert_eq!(redact(kept), kept);
        }
    }

    #[test]
    fn a_rejected_request_keeps_the_upstream_error_fields_but_not_its_secrets() {
        let body = bytes::Bytes::from_static(br#"{"error":{"message":"bad key sk-abcdefghijkl at https://x.internal/v1","type":"invalid_request_error","code":"invalid_value","param":"temperature","extra":"drop me"}}"#);
        let e = RelayError::Rejected {
            status: 400,
            message: "bad key sk-abcdefghijkl at https://x.internal/v1".into(),
            body: Some(body),
        };
        let v: serde_json::Value = serde_json::from_slice(&e.openai_body()).unwrap();
        assert_eq!(v["error"]["message"], "bad key sk-*** at [redacted url]");
        assert_eq!(v["error"]["param"], "temperature");
        assert!(v["error"].get("extra").is_none());
    }
}
