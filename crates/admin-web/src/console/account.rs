//! Logging in and out, and one's own account (password change).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use serde::Deserialize;

use crate::auth;
use crate::console::page::{self, FormError, Html, Nav};
use crate::console::session::{self, Console};
use crate::{AdminState, ApiError};

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    csrf: String,
    username: String,
    error: Option<String>,
}

fn login_page(
    status: StatusCode,
    username: String,
    error: Option<String>,
) -> Result<HttpResponse, Html> {
    let (csrf, cookie) = session::login_csrf();
    let mut resp = page::render(
        status,
        &LoginPage {
            csrf,
            username,
            error,
        },
    )?;
    resp.add_cookie(&cookie).map_err(ApiError::internal)?;
    Ok(resp)
}

/// `GET /console/login`
pub async fn login_form() -> Result<HttpResponse, Html> {
    login_page(StatusCode::OK, String::new(), None)
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

/// `POST /console/login`: the JSON API's login (same rate limit, same answer for an
/// unknown user and a wrong password), then the session cookie and the dashboard.
pub async fn login(
    state: web::Data<AdminState>,
    req: HttpRequest,
    form: web::Form<LoginForm>,
) -> Result<HttpResponse, Html> {
    let form = form.into_inner();
    if !session::login_csrf_ok(&req, &form.csrf) {
        return Err(Html(ApiError::CsrfRejected));
    }
    let client = state.trusted_proxies.client_ip(&req);
    match auth::open_session(&state, client, &form.username, form.password).await {
        Ok(s) => {
            let cookie = auth::session_cookie(&state, &req, s.token);
            let mut resp = page::see_other("/console");
            resp.add_cookie(&cookie).map_err(ApiError::internal)?;
            Ok(resp)
        }
        Err(e @ (ApiError::InvalidCredentials | ApiError::RateLimited)) => {
            login_page(e_status(&e), form.username, Some(e.to_string()))
        }
        Err(e) => Err(Html(e)),
    }
}

fn e_status(e: &ApiError) -> StatusCode {
    actix_web::ResponseError::status_code(e)
}

#[derive(Deserialize)]
pub struct CsrfOnly {}

/// `POST /console/logout`: the session stops working everywhere.
pub async fn logout(
    state: web::Data<AdminState>,
    c: Console,
    body: web::Bytes,
) -> Result<HttpResponse, Html> {
    let _: CsrfOnly = c.form(&body)?;
    auth::close_session(&state, &c.who).await?;
    let mut resp = page::see_other("/console/login");
    resp.add_removal_cookie(&auth::removal_cookie())
        .map_err(ApiError::internal)?;
    Ok(resp)
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    nav: Nav,
    group: String,
    balance: String,
    error: FormError,
}

const FIELDS: &[&str] = &["current_password", "password"];

async fn account_page(
    state: &AdminState,
    c: &Console,
    nav: Nav,
    error: FormError,
) -> Result<AccountPage, Html> {
    let me = auth::current_user(state, &c.who).await?;
    Ok(AccountPage {
        nav,
        group: me.group_name,
        balance: page::credits(me.balance),
        error,
    })
}

#[derive(Deserialize)]
pub struct DoneQuery {
    #[serde(default)]
    pub done: Option<String>,
}

/// `GET /console/account`
pub async fn show(
    state: web::Data<AdminState>,
    c: Console,
    q: web::Query<DoneQuery>,
) -> Result<HttpResponse, Html> {
    let nav = Nav::new(&c, "account").done(q.done.as_deref());
    page::ok(&account_page(&state, &c, nav, FormError::none()).await?)
}

#[derive(Deserialize)]
pub struct PasswordForm {
    #[serde(default)]
    current_password: String,
    #[serde(default)]
    password: String,
}

/// `POST /console/account/password`
pub async fn change_password(
    state: web::Data<AdminState>,
    req: HttpRequest,
    c: Console,
    body: web::Bytes,
) -> Result<HttpResponse, Html> {
    let f: PasswordForm = c.form(&body)?;
    let client = state.trusted_proxies.client_ip(&req);
    let changed =
        auth::change_password(&state, &c.who, client, f.current_password, Some(f.password)).await;
    match changed {
        Ok(u) => {
            // Older sessions (a stolen cookie among them) end; this one goes on.
            let token = auth::new_session(&state, &u).map_err(Html)?;
            let mut resp = page::see_other("/console/account?done=password_changed");
            resp.add_cookie(&auth::session_cookie(&state, &req, token))
                .map_err(|e| Html(ApiError::internal(e)))?;
            Ok(resp)
        }
        Err(e) if page::fixable(&e) => {
            let p = account_page(
                &state,
                &c,
                Nav::new(&c, "account"),
                FormError::of(&e, FIELDS),
            )
            .await?;
            page::again(&e, &p)
        }
        Err(e) => Err(Html(e)),
    }
}
