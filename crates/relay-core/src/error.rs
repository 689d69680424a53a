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
    #[error("request body is larger than {0} MiB")]
    RequestTooLarge(usize),
    #[error("rate limit exceeded: at most {0} requests per minute")]
    RateLimited(u32),
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
            RelayError::ModelNotFound(_) => 404,
            RelayError::RequestTooLarge(_) => 413,
            RelayError::RateLimited(_) => 429,
            RelayError::Upstream | RelayError::AnswerTooLarge => 502,
            RelayError::NoAvailableChannel => 503,
            RelayError::UpstreamTimeout => 504,
            RelayError::Rejected { status, .. } => *status,
            RelayError::ServiceUnavailable => 503,
            RelayError::Internal => 500,
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
            RelayError::RequestTooLarge(_) => "request_too_large",
            RelayError::RateLimited(_) => "rate_limited",
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

/// Hides URLs and key-like strings (`sk-…`, long tokens after `key=`) in a message that
/// came from an upstream, so a client never learns a channel's address or secret.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if rest.starts_with("http://") || rest.starts_with("https://") {
            let end = rest
                .find(|c: char| c.is_whitespace() || "\"'<>".contains(c))
                .unwrap_or(rest.len());
            out.push_str("[redacted url]");
            rest = &rest[end..];
        } else if rest.starts_with("sk-") || rest.starts_with("key=") {
            let prefix = if rest.starts_with("sk-") { 3 } else { 4 };
            let tail = &rest[prefix..];
            let len = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                .unwrap_or(tail.len());
            if len >= 6 {
                out.push_str(&rest[..prefix]);
                out.push_str("***");
                rest = &tail[len..];
            } else {
                out.push_str(&rest[..prefix]);
                rest = tail;
            }
        } else {
            let ch = rest.chars().next().map_or(1, char::len_utf8);
            out.push_str(&rest[..ch]);
            rest = &rest[ch..];
        }
    }
    out
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
