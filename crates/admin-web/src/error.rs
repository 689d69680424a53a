//! The admin API's one error type: `{"error": {"code", "message"}}` with a fitting
//! status. 5xx answers are opaque; their cause is logged once, here.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

/// Why an admin API call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("invalid username or password")]
    InvalidCredentials,
    #[error("authentication required")]
    Unauthorized,
    #[error("not allowed for your role")]
    Forbidden,
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
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The stable code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "invalid_request",
            ApiError::InvalidCredentials => "invalid_credentials",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden => "forbidden",
            ApiError::NotFound => "not_found",
            ApiError::UsernameTaken => "username_taken",
            ApiError::InsufficientBalance => "insufficient_balance",
            ApiError::InvalidCode => "invalid_code",
            ApiError::RateLimited => "rate_limited",
            ApiError::Internal(_) => "internal_error",
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
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::InvalidCredentials | ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound | ApiError::InvalidCode => StatusCode::NOT_FOUND,
            ApiError::UsernameTaken => StatusCode::CONFLICT,
            ApiError::InsufficientBalance => StatusCode::PAYMENT_REQUIRED,
            ApiError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(cause) = self {
            tracing::error!(cause = %cause, "admin API internal error");
        }
        let body = serde_json::json!({"error": {"code": self.code(), "message": self.to_string()}});
        HttpResponse::build(self.status_code()).json(body)
    }
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(e: sea_orm::DbErr) -> Self {
        ApiError::internal(e)
    }
}

impl From<store::StoreError> for ApiError {
    fn from(e: store::StoreError) -> Self {
        ApiError::internal(e)
    }
}

impl From<billing::BillingError> for ApiError {
    fn from(e: billing::BillingError) -> Self {
        match e {
            billing::BillingError::Insufficient => ApiError::InsufficientBalance,
            billing::BillingError::InvalidAmount(m) => ApiError::BadRequest(m),
            billing::BillingError::Store(e) => ApiError::internal(e),
        }
    }
}
