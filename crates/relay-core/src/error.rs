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
            RelayError::Upstream => 502,
            RelayError::NoAvailableChannel => 503,
            RelayError::UpstreamTimeout => 504,
            RelayError::Rejected { status, .. } => *status,
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
            RelayError::Upstream => "upstream_error",
            RelayError::NoAvailableChannel => "no_available_channel",
            RelayError::UpstreamTimeout => "upstream_timeout",
            RelayError::Rejected { .. } => "upstream_rejected",
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

    /// The OpenAI-shaped error body. An upstream's own error body for a rejected
    /// request is passed through when it is already OpenAI-shaped.
    pub fn openai_body(&self) -> bytes::Bytes {
        if let RelayError::Rejected {
            body: Some(body), ..
        } = self
            && serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .is_some_and(|v| v.get("error").is_some_and(serde_json::Value::is_object))
        {
            return body.clone();
        }
        let param = match self {
            RelayError::InvalidRequest(m) if m.contains("'model'") => {
                serde_json::Value::from("model")
            }
            _ => serde_json::Value::Null,
        };
        let body = serde_json::json!({
            "error": {
                "message": self.to_string(),
                "type": self.openai_type(),
                "code": self.code(),
                "param": param,
            }
        });
        bytes::Bytes::from(body.to_string())
    }
}
