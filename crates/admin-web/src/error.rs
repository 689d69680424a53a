//! The admin API's one error type: `{"error": {"code", "message"}}` with a fitting
//! status. 5xx answers are opaque; their cause is logged once, here.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

/// Why an admin API call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    /// A request field is wrong; `field` names it (the console shows the message next
    /// to that field, the API adds `"field"` to the error body).
    #[error("{message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("invalid username or password")]
    InvalidCredentials,
    #[error("authentication required")]
    Unauthorized,
    #[error("not allowed for your role")]
    Forbidden,
    /// A console form arrived without the token of the session that showed it.
    #[error(
        "this form has expired or did not come from the console; reload the page and try again"
    )]
    CsrfRejected,
    #[error("not found")]
    NotFound,
    #[error("username is already taken")]
    UsernameTaken,
    #[error("insufficient balance")]
    InsufficientBalance,
    #[error("this code does not exist or was already used")]
    InvalidCode,
    #[error("too many attempts; try again later")]
    RateLimited,
    /// The database or Redis is unreachable: nothing changed; retry shortly.
    #[error("the service is briefly unavailable; retry shortly")]
    Unavailable,
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The stable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) | ApiError::Invalid { .. } => "invalid_request",
            ApiError::InvalidCredentials => "invalid_credentials",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden => "forbidden",
            ApiError::CsrfRejected => "csrf_rejected",
            ApiError::NotFound => "not_found",
            ApiError::UsernameTaken => "username_taken",
            ApiError::InsufficientBalance => "insufficient_balance",
            ApiError::InvalidCode => "invalid_code",
            ApiError::RateLimited => "rate_limited",
            ApiError::Unavailable => "service_unavailable",
            ApiError::Internal(_) => "internal_error",
        }
    }

    /// A wrong value in the request field `field`.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            field,
            message: message.into(),
        }
    }

    /// The request field this error is about, if any.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            ApiError::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }

    /// Logs an internal cause and returns the opaque error.
    pub fn internal(cause: impl std::fmt::Debug) -> Self {
        ApiError::Internal(format!("{cause:?}"))
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::Invalid { .. } => StatusCode::BAD_REQUEST,
            ApiError::InvalidCredentials | ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden | ApiError::CsrfRejected => StatusCode::FORBIDDEN,
            ApiError::NotFound | ApiError::InvalidCode => StatusCode::NOT_FOUND,
            ApiError::UsernameTaken => StatusCode::CONFLICT,
            ApiError::InsufficientBalance => StatusCode::PAYMENT_REQUIRED,
            ApiError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(cause) = self {
            tracing::error!(cause = %cause, "admin API internal error");
        }
        let mut body =
            serde_json::json!({"error": {"code": self.code(), "message": self.to_string()}});
        if let Some(field) = self.field() {
            body["error"]["field"] = serde_json::Value::from(field);
        }
        let mut resp = HttpResponse::build(self.status_code());
        if let ApiError::Unavailable = self {
            tracing::warn!("admin API call refused: database or Redis unreachable");
            resp.insert_header((actix_web::http::header::RETRY_AFTER, "2"));
        }
        resp.json(body)
    }
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(e: sea_orm::DbErr) -> Self {
        ApiError::from(store::StoreError::Db(e))
    }
}

impl From<store::StoreError> for ApiError {
    fn from(e: store::StoreError) -> Self {
        if e.is_unavailable() {
            ApiError::Unavailable
        } else {
            ApiError::internal(e)
        }
    }
}

impl From<billing::BillingError> for ApiError {
    fn from(e: billing::BillingError) -> Self {
        match e {
            billing::BillingError::Insufficient => ApiError::InsufficientBalance,
            billing::BillingError::InvalidAmount(m) => ApiError::BadRequest(m),
            billing::BillingError::Store(e) => ApiError::from(e),
        }
    }
}
