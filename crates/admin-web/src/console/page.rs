//! What every console page shares: the navigation bar's facts, rendering with a
//! status, form errors shown next to their field, flash messages, and the HTML error
//! answer (a login redirect for a missing session).

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use askama::Template;

use crate::ApiError;
use crate::auth::Role;
use crate::console::session::Console;

/// The facts the layout needs on every page.
pub struct Nav {
    pub username: String,
    pub role: &'static str,
    pub is_admin: bool,
    pub is_customer: bool,
    /// The session's CSRF token, put in every form.
    pub csrf: String,
    /// Which menu entry is current.
    pub active: &'static str,
    /// A one-line message about what just happened.
    pub flash: Option<String>,
}

impl Nav {
    pub fn new(c: &Console, active: &'static str) -> Self {
        Nav {
            username: c.who.username.clone(),
            role: match c.who.role {
                Role::Admin => "admin",
                Role::Reseller => "reseller",
                Role::Customer => "customer",
            },
            is_admin: c.who.role == Role::Admin,
            is_customer: c.who.role == Role::Customer,
            csrf: c.csrf.clone(),
            active,
            flash: None,
        }
    }

    /// With a flash message.
    pub fn flash(mut self, message: impl Into<String>) -> Self {
        self.flash = Some(message.into());
        self
    }

    /// With the fixed message a redirect asked for (`?done=code`); unknown codes show
    /// nothing, so a link cannot put words on the page.
    pub fn done(mut self, code: Option<&str>) -> Self {
        self.flash = code.and_then(done_message).map(str::to_owned);
        self
    }
}

fn done_message(code: &str) -> Option<&'static str> {
    Some(match code {
        "channel_saved" => "Channel saved.",
        "channel_deleted" => "Channel deleted.",
        "channel_status" => "Channel status changed.",
        "key_saved" => "Key saved.",
        "key_deleted" => "Key deleted; it stopped working at once.",
        "key_status" => "Key status changed.",
        "user_created" => "User created.",
        "user_status" => "User status changed.",
        "credits_moved" => "Credits moved.",
        "price_saved" => "Price saved.",
        "price_deleted" => "Price removed; the model is no longer served.",
        "group_saved" => "Group multiplier saved.",
        "settings_saved" => "Settings saved.",
        "password_changed" => "Password changed.",
        "task_cancelled" => "Task cancelled; its hold went back to its owner.",
        _ => return None,
    })
}

/// The error a form shows: on its field when it names one the form shows, else above
/// the form.
#[derive(Default)]
pub struct FormError {
    pub field: Option<&'static str>,
    pub message: Option<String>,
    /// The fields the form shows.
    pub shown: &'static [&'static str],
}

impl FormError {
    pub fn none() -> Self {
        FormError::default()
    }

    /// `e` on a form showing the fields `shown`.
    pub fn of(e: &ApiError, shown: &'static [&'static str]) -> Self {
        let field = match e {
            ApiError::UsernameTaken => Some("username"),
            ApiError::InvalidCode => Some("code"),
            ApiError::InvalidCredentials => Some("current_password"),
            other => other.field(),
        };
        FormError {
            field,
            message: Some(e.to_string()),
            shown,
        }
    }

    /// The message for `field`, if the error is about it.
    pub fn on(&self, field: &str) -> Option<&str> {
        match self.field {
            Some(f) if f == field => self.message.as_deref(),
            _ => None,
        }
    }

    /// Whether the error is about `field`.
    pub fn is_on(&self, field: &str) -> bool {
        self.on(field).is_some()
    }

    /// The message when it is about no field the form shows.
    pub fn general(&self) -> Option<&str> {
        match self.field {
            Some(f) if self.shown.contains(&f) => None,
            _ => self.message.as_deref(),
        }
    }
}

/// Whether a failed form post is shown again with the error (the user can fix it), or
/// answered with an error page (not found, not allowed, internal).
pub fn fixable(e: &ApiError) -> bool {
    match e {
        ApiError::BadRequest(_)
        | ApiError::Invalid { .. }
        | ApiError::InvalidCredentials
        | ApiError::UsernameTaken
        | ApiError::InsufficientBalance
        | ApiError::InvalidCode
        | ApiError::RateLimited => true,
        ApiError::Unauthorized
        | ApiError::Forbidden
        | ApiError::CsrfRejected
        | ApiError::NotFound
        | ApiError::Unavailable
        | ApiError::Internal(_) => false,
    }
}

/// Renders a page with `status`; pages are never cached.
pub fn render<T: Template>(status: StatusCode, page: &T) -> Result<HttpResponse, Html> {
    let body = page.render().map_err(ApiError::internal)?;
    Ok(HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
        .body(body))
}

/// `200` with the page.
pub fn ok<T: Template>(page: &T) -> Result<HttpResponse, Html> {
    render(StatusCode::OK, page)
}

/// A form shown again with its error, with the status the JSON API would answer.
pub fn again<T: Template>(e: &ApiError, page: &T) -> Result<HttpResponse, Html> {
    render(e.status_code(), page)
}

/// `303 See Other` to `to` (after a successful post).
pub fn see_other(to: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to.to_owned()))
        .finish()
}

/// An admin API error answered as a page: a missing or expired session goes to the
/// login page; everything else is an error page with the API's status.
#[derive(Debug)]
pub struct Html(pub ApiError);

impl std::fmt::Display for Html {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl From<ApiError> for Html {
    fn from(e: ApiError) -> Self {
        Html(e)
    }
}

impl From<sea_orm::DbErr> for Html {
    fn from(e: sea_orm::DbErr) -> Self {
        Html(e.into())
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    title: &'a str,
    message: String,
}

impl ResponseError for Html {
    fn status_code(&self) -> StatusCode {
        match self.0 {
            ApiError::Unauthorized => StatusCode::SEE_OTHER,
            ref e => e.status_code(),
        }
    }

    fn error_response(&self) -> HttpResponse {
        if matches!(self.0, ApiError::Unauthorized) {
            return see_other("/console/login");
        }
        if let ApiError::Internal(cause) = &self.0 {
            tracing::error!(cause = %cause, "console internal error");
        }
        let status = self.0.status_code();
        let page = ErrorPage {
            status: status.as_u16(),
            title: status.canonical_reason().unwrap_or("Error"),
            message: match self.0 {
                ApiError::NotFound => "There is nothing here, or it is not yours to see.".into(),
                ApiError::Internal(_) => {
                    "Something went wrong on our side; it has been logged.".into()
                }
                ref e => e.to_string(),
            },
        };
        let body = page
            .render()
            .unwrap_or_else(|_| "<!doctype html><title>Error</title><p>Error</p>".to_owned());
        HttpResponse::build(status)
            .content_type("text/html; charset=utf-8")
            .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
            .body(body)
    }
}

/// Micro-credits as credits for people: at least two decimals, at most six.
pub fn credits(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let m = micros.unsigned_abs();
    let whole = m / 1_000_000;
    let frac = format!("{:06}", m % 1_000_000);
    let frac = frac.trim_end_matches('0');
    let frac = if frac.len() < 2 {
        format!("{frac:0<2}")
    } else {
        frac.to_owned()
    };
    format!("{sign}{whole}.{frac}")
}

/// A time as people read it, in UTC.
pub fn when(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A list of names typed one per line or separated by commas.
pub fn split_list(text: &str) -> Vec<String> {
    text.split(['\n', ','])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A number typed in a form: empty is `None`; anything else must parse or names its
/// field.
pub fn number<T: std::str::FromStr>(
    field: &'static str,
    text: &str,
) -> Result<Option<T>, ApiError> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    t.parse()
        .map(Some)
        .map_err(|_| ApiError::invalid(field, format!("{field} must be a number")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credits_show_two_to_six_decimals() {
        assert_eq!(credits(0), "0.00");
        assert_eq!(credits(12_500_000), "12.50");
        assert_eq!(credits(54), "0.000054");
        assert_eq!(credits(-1_230_000), "-1.23");
    }

    #[test]
    fn lists_split_on_commas_and_lines() {
        assert_eq!(split_list(" a, b\nc,,\n"), vec!["a", "b", "c"]);
    }
}

/// The enable/disable form of channels, keys and users.
#[derive(serde::Deserialize)]
pub struct StatusForm {
    #[serde(default)]
    pub status: String,
}
