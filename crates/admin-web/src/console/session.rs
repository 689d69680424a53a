//! The console's session: the JWT in the HttpOnly cookie (the same one the JSON API
//! accepts), and the CSRF token every form carries. The token is derived from the
//! session's JWT, which a page on another site can neither read nor guess, so a
//! forged post cannot carry it. The login form, before any session, uses a random
//! double-submit cookie instead.

use std::future::Future;
use std::pin::Pin;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::{FromRequest, HttpRequest, web};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::auth::{AuthUser, SESSION_COOKIE, authorize_token};
use crate::console::page::Html;
use crate::{AdminState, ApiError};

/// The cookie holding the login form's CSRF token.
pub const LOGIN_CSRF_COOKIE: &str = "tollgate_login_csrf";

/// A logged-in console user.
pub struct Console {
    pub who: AuthUser,
    /// The CSRF token of this session.
    pub csrf: String,
}

/// The CSRF token of a session token.
pub fn csrf_of(session_token: &str) -> String {
    let digest = Sha256::digest(format!("tollgate-console-csrf\0{session_token}").as_bytes());
    hex::encode(&digest[..16])
}

/// Compares without stopping at the first difference.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[derive(Deserialize)]
struct CsrfField {
    #[serde(default)]
    csrf: String,
}

impl Console {
    /// Parses a posted form after checking its CSRF token (403 without the right one).
    pub fn form<T: DeserializeOwned>(&self, body: &[u8]) -> Result<T, Html> {
        let token: CsrfField =
            serde_urlencoded::from_bytes(body).map_err(|_| ApiError::CsrfRejected)?;
        if !same(&token.csrf, &self.csrf) {
            tracing::warn!(
                user.id = self.who.id,
                "console form without a valid CSRF token"
            );
            return Err(ApiError::CsrfRejected.into());
        }
        serde_urlencoded::from_bytes(body)
            .map_err(|e| Html(ApiError::BadRequest(format!("invalid form: {e}"))))
    }
}

impl FromRequest for Console {
    type Error = Html;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AdminState>>().cloned();
        let token = req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned());
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::internal("admin state missing"))?;
            let token = token.ok_or(ApiError::Unauthorized)?;
            let who = authorize_token(&state, &token).await?;
            Ok(Console {
                who,
                csrf: csrf_of(&token),
            })
        })
    }
}

/// A fresh login CSRF token and the cookie that carries it.
pub fn login_csrf() -> (String, Cookie<'static>) {
    use rand::RngCore;
    let mut buf = [0u8; 16];
    rand::rng().fill_bytes(&mut buf);
    let token = hex::encode(buf);
    let cookie = Cookie::build(LOGIN_CSRF_COOKIE, token.clone())
        .path("/console/login")
        .http_only(true)
        .same_site(SameSite::Strict)
        .finish();
    (token, cookie)
}

/// Whether a login post carries the token of its cookie.
pub fn login_csrf_ok(req: &HttpRequest, posted: &str) -> bool {
    req.cookie(LOGIN_CSRF_COOKIE)
        .is_some_and(|c| !posted.is_empty() && same(c.value(), posted))
}
