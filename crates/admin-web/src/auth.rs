//! Authentication: argon2id passwords (verified off the async workers), JWT sessions
//! (Bearer header or HttpOnly cookie), login rate limiting, logout by revocation.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use chrono::Utc;
use jsonwebtoken::{Algorithm, Header, Validation};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};
use serde::{Deserialize, Serialize};
use store::entities::user;

use crate::users::user_json;
use crate::{AdminState, ApiError, login_limit};

/// The session cookie the console uses.
pub const SESSION_COOKIE: &str = "tollgate_session";

/// The JWT's claims.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: i64,
    pub role: String,
    pub jti: String,
    pub iat: i64,
    pub exp: i64,
    /// A fingerprint of the password hash the session was opened with: a password
    /// change or reset ends every session opened before it.
    #[serde(default)]
    pub pwd: String,
}

/// A short fingerprint of a password hash (never the hash itself).
fn password_fingerprint(hash: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(hash.as_bytes())[..8])
}

/// The authenticated caller of an admin API request.
#[derive(Clone, Debug)]
pub struct AuthUser {
    pub id: i64,
    pub username: String,
    pub role: Role,
    pub group: String,
    pub jti: String,
    pub exp: i64,
}

pub use store::catalog::Role;

impl AuthUser {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether `target` is within this caller's scope (API.md §1).
    pub fn sees(&self, target: &user::Model) -> bool {
        match self.role {
            Role::Admin => true,
            Role::Reseller => target.id == self.id || target.parent_id == Some(self.id),
            Role::Customer => target.id == self.id,
        }
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::Forbidden)
        }
    }
}

/// How many argon2 hashes or verifications may run at once, process-wide. Each takes
/// about 19 MiB and a core for tens of milliseconds; without a bound, parallel logins
/// would fill the blocking pool (up to 512 threads) and exhaust CPU and memory.
const ARGON2_PARALLEL: usize = 2;

/// The permits of [`ARGON2_PARALLEL`]; callers beyond it wait their turn.
static ARGON2_PERMITS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(ARGON2_PARALLEL);

/// Runs an argon2 `job` on a blocking thread once a permit is free. The permit goes
/// with the job, so a caller that gives up does not free it before the job ends.
async fn argon2_job<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let permit = ARGON2_PERMITS.acquire().await.map_err(ApiError::internal)?;
    web::block(move || {
        let _permit = permit;
        job()
    })
    .await
    .map_err(ApiError::internal)
}

/// Hashes a password with argon2id on a blocking thread.
pub async fn hash_password(password: String) -> Result<String, ApiError> {
    argon2_job(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(ApiError::internal)
    })
    .await?
}

/// Verifies a password against its stored hash on a blocking thread.
pub async fn verify_password(password: String, hash: String) -> bool {
    argon2_job(move || {
        PasswordHash::new(&hash).ok().is_some_and(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false)
}

/// Checks a new password is acceptable.
pub fn check_password_rules(password: &str) -> Result<(), ApiError> {
    if password.chars().count() < 8 || password.len() > 256 {
        return Err(ApiError::invalid(
            "password",
            "password must be 8 to 256 characters",
        ));
    }
    Ok(())
}

/// A new session token for `u` (after a password change, its own sessions end too).
pub fn new_session(state: &AdminState, u: &user::Model) -> Result<String, ApiError> {
    issue(state, u).map(|(token, _)| token)
}

fn issue(state: &AdminState, u: &user::Model) -> Result<(String, i64), ApiError> {
    let now = Utc::now().timestamp();
    let exp = now + state.session_hours * 3600;
    let claims = Claims {
        sub: u.id,
        role: u.role.clone(),
        jti: uuid::Uuid::now_v7().simple().to_string(),
        iat: now,
        exp,
        pwd: password_fingerprint(&u.password_hash),
    };
    let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &state.jwt_encoding)
        .map_err(ApiError::internal)?;
    Ok((token, exp))
}

#[derive(Deserialize)]
pub struct LoginBody {
    pub username: String,
    pub password: String,
}

/// A session just opened by [`open_session`].
pub struct Session {
    pub user: user::Model,
    pub token: String,
    /// Unix seconds.
    pub exp: i64,
}

/// Checks a username and password (rate-limited per `client` IP and per username,
/// counted before the password is checked; same answer for an unknown user and a wrong
/// password) and issues a session token.
pub async fn open_session(
    state: &AdminState,
    client: Option<IpAddr>,
    username: &str,
    password: String,
) -> Result<Session, ApiError> {
    state.ensure_available()?;
    let attempt = login_limit::admit(&state.shared, client, username).await?;
    let found = user::Entity::find()
        .filter(user::Column::Username.eq(username.trim()))
        .one(&state.db)
        .await?;
    // Verify against a hash even for unknown users, so timing does not tell them apart.
    let (hash, u) = match found {
        Some(u) => (u.password_hash.clone(), Some(u)),
        None => (DUMMY_HASH.to_owned(), None),
    };
    let ok = verify_password(password, hash).await;
    let Some(u) = u.filter(|u| ok && u.status == "enabled") else {
        return Err(ApiError::InvalidCredentials);
    };
    attempt.succeeded().await?;
    let (token, exp) = issue(state, &u)?;
    tracing::info!(user.id = u.id, "login");
    Ok(Session {
        user: u,
        token,
        exp,
    })
}

/// The HttpOnly, SameSite=Lax session cookie (Secure when the request came over TLS).
pub fn session_cookie(state: &AdminState, req: &HttpRequest, token: String) -> Cookie<'static> {
    Cookie::build(SESSION_COOKIE, token)
        .path("/")
        .http_only(true)
        .secure(req.connection_info().scheme() == "https")
        .same_site(SameSite::Lax)
        .max_age(actix_web::cookie::time::Duration::seconds(
            state.session_hours * 3600,
        ))
        .finish()
}

/// A cookie that removes the session cookie.
pub fn removal_cookie() -> Cookie<'static> {
    let mut gone = Cookie::build(SESSION_COOKIE, "")
        .path("/")
        .http_only(true)
        .finish();
    gone.make_removal();
    gone
}

/// `POST /api/auth/login`
pub async fn login(
    state: web::Data<AdminState>,
    req: HttpRequest,
    body: web::Json<LoginBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let client = state.trusted_proxies.client_ip(&req);
    let s = open_session(&state, client, &body.username, body.password).await?;
    let expires_at = chrono::DateTime::from_timestamp(s.exp, 0).unwrap_or_default();
    let cookie = session_cookie(&state, &req, s.token.clone());
    Ok(HttpResponse::Ok().cookie(cookie).json(serde_json::json!({
        "token": s.token,
        "expires_at": expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "user": {"id": s.user.id, "username": s.user.username, "role": s.user.role},
    })))
}

/// A valid argon2id hash of a random password, for constant-time unknown-user logins.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$M0WZ2qQeLq0QvN3fWd6h0m6g1N0S0y8yq0D2m7Xk0qY";

/// Ends the caller's session on every instance (its token is revoked until it expires).
pub async fn close_session(state: &AdminState, who: &AuthUser) -> Result<(), ApiError> {
    let ttl = (who.exp - Utc::now().timestamp()).max(1);
    state
        .shared
        .incr(
            &format!("revoked:{}", who.jti),
            Duration::from_secs(u64::try_from(ttl).unwrap_or(1)),
        )
        .await?;
    Ok(())
}

/// `POST /api/auth/logout`: the session's token stops working on every instance.
pub async fn logout(state: web::Data<AdminState>, who: AuthUser) -> Result<HttpResponse, ApiError> {
    close_session(&state, &who).await?;
    Ok(HttpResponse::NoContent().cookie(removal_cookie()).finish())
}

/// `GET /api/me`
pub async fn me(state: web::Data<AdminState>, who: AuthUser) -> Result<HttpResponse, ApiError> {
    let u = current_user(&state, &who).await?;
    Ok(HttpResponse::Ok().json(user_json(&u)))
}

/// The caller's own row, fresh from the database.
pub async fn current_user(state: &AdminState, who: &AuthUser) -> Result<user::Model, ApiError> {
    user::Entity::find_by_id(who.id)
        .one(&state.db)
        .await?
        .ok_or(ApiError::Unauthorized)
}

#[derive(Deserialize)]
pub struct PatchMe {
    pub password: Option<String>,
    pub current_password: String,
}

/// Changes one's own password, proving the current one. Wrong current passwords count
/// against the login limit (per `client` IP and per username), so a stolen session is
/// no unlimited guessing oracle.
pub async fn change_password(
    state: &AdminState,
    who: &AuthUser,
    client: Option<IpAddr>,
    current_password: String,
    password: Option<String>,
) -> Result<user::Model, ApiError> {
    let u = current_user(state, who).await?;
    let attempt = login_limit::admit(&state.shared, client, &u.username).await?;
    if !verify_password(current_password, u.password_hash.clone()).await {
        return Err(ApiError::InvalidCredentials);
    }
    attempt.succeeded().await?;
    let mut active: user::ActiveModel = u.into();
    if let Some(p) = password {
        check_password_rules(&p)?;
        active.password_hash = Set(hash_password(p).await?);
    }
    active.updated_at = Set(Utc::now());
    let u = active.update(&state.db).await?;
    tracing::info!(user.id = who.id, "password changed");
    Ok(u)
}

/// `PATCH /api/me`: change one's own password, proving the current one. Every session
/// opened before ends; the answer sets a fresh session cookie for the caller.
pub async fn patch_me(
    state: web::Data<AdminState>,
    req: HttpRequest,
    who: AuthUser,
    body: web::Json<PatchMe>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let client = state.trusted_proxies.client_ip(&req);
    let u = change_password(&state, &who, client, body.current_password, body.password).await?;
    let cookie = session_cookie(&state, &req, new_session(&state, &u)?);
    Ok(HttpResponse::Ok().cookie(cookie).json(user_json(&u)))
}

/// The caller a session token belongs to: signature, expiry, revocation and the user's
/// status are all checked.
pub async fn authorize_token(state: &AdminState, token: &str) -> Result<AuthUser, ApiError> {
    state.ensure_available()?;
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 5;
    let claims = jsonwebtoken::decode::<Claims>(token, &state.jwt_decoding, &validation)
        .map_err(|_| ApiError::Unauthorized)?
        .claims;
    if state
        .shared
        .count(&format!("revoked:{}", claims.jti))
        .await?
        > 0
    {
        return Err(ApiError::Unauthorized);
    }
    let u = user::Entity::find_by_id(claims.sub)
        .one(&state.db)
        .await?
        .filter(|u| u.status == "enabled" && claims.pwd == password_fingerprint(&u.password_hash))
        .ok_or(ApiError::Unauthorized)?;
    let role = Role::parse(&u.role).ok_or(ApiError::Unauthorized)?;
    Ok(AuthUser {
        id: u.id,
        username: u.username,
        role,
        group: u.group_name,
        jti: claims.jti,
        exp: claims.exp,
    })
}

fn token_of(req: &HttpRequest) -> Option<String> {
    if let Some(h) = req.headers().get(actix_web::http::header::AUTHORIZATION) {
        return h
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(|t| t.trim().to_owned());
    }
    req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned())
}

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AdminState>>().cloned();
        let token = token_of(req);
        // A change through the JSON API on the strength of the browser's cookie alone
        // must prove it comes from our page (the console's forms have their own
        // check): the `X-CSRF-Token` header of the session. Bearer callers need none.
        let by_cookie = !req
            .headers()
            .contains_key(actix_web::http::header::AUTHORIZATION);
        let changes = !matches!(
            *req.method(),
            actix_web::http::Method::GET
                | actix_web::http::Method::HEAD
                | actix_web::http::Method::OPTIONS
        );
        let needs_csrf = by_cookie && changes && req.path().starts_with("/api/");
        let csrf = req
            .headers()
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::internal("admin state missing"))?;
            let token = token.ok_or(ApiError::Unauthorized)?;
            if needs_csrf {
                let expected = crate::console::session::csrf_of(&token);
                if !csrf.is_some_and(|h| crate::console::session::same(&h, &expected)) {
                    return Err(ApiError::CsrfRejected);
                }
            }
            authorize_token(&state, &token).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn argon2_work_waits_while_every_permit_is_taken() {
        let taken = ARGON2_PERMITS
            .acquire_many(ARGON2_PARALLEL as u32)
            .await
            .unwrap();
        let hash = hash_password("password-123".to_owned());
        tokio::pin!(hash);
        let waited = tokio::time::timeout(Duration::from_millis(300), &mut hash).await;
        assert!(waited.is_err(), "argon2 ran without a permit");
        drop(taken);
        let hash = hash.await.unwrap();
        assert!(verify_password("password-123".to_owned(), hash).await);
    }
}
