//! The browser console under `/console`: server-rendered pages (askama) over the same
//! domain functions as the JSON API, with the same scoping. Every form works without
//! JavaScript and carries a CSRF token; every page is sent with a strict
//! Content-Security-Policy (no inline script or style, nothing from other origins).

mod account;
mod assets;
mod channels;
mod charts;
mod dashboard;
mod keys;
mod logs;
mod margins;
mod page;
mod pricing;
mod redemptions;
pub mod session;
mod settings;
mod tasks;
mod users;

use actix_web::middleware::DefaultHeaders;
use actix_web::web;

use crate::ApiError;
use page::Html;

/// The security headers of every console page and asset.
fn security_headers() -> DefaultHeaders {
    DefaultHeaders::new()
        .add((
            "Content-Security-Policy",
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; \
             object-src 'none'",
        ))
        .add(("X-Frame-Options", "DENY"))
        .add(("X-Content-Type-Options", "nosniff"))
        .add(("Referrer-Policy", "same-origin"))
}

/// Mounts `/` (a redirect to the console), `/console/*` and `/static/*`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let path = web::PathConfig::default().error_handler(|_, _| Html(ApiError::NotFound).into());
    let query = web::QueryConfig::default()
        .error_handler(|e, _| Html(ApiError::BadRequest(format!("invalid query: {e}"))).into());
    cfg.route("/", web::get().to(|| async { page::see_other("/console") }))
        .service(
            web::scope("/static")
                .wrap(security_headers())
                .route("/{file}", web::get().to(assets::serve)),
        )
        .service(
            web::scope("/console")
                .wrap(security_headers())
                .app_data(path)
                .app_data(query)
                .route("", web::get().to(dashboard::show))
                .route("/", web::get().to(dashboard::show))
                .route("/login", web::get().to(account::login_form))
                .route("/login", web::post().to(account::login))
                .route("/logout", web::post().to(account::logout))
                .route("/account", web::get().to(account::show))
                .route(
                    "/account/password",
                    web::post().to(account::change_password),
                )
                .route("/channels", web::get().to(channels::list))
                .route("/channels", web::post().to(channels::create))
                .route("/channels/new", web::get().to(channels::new_form))
                .route("/channels/{id}", web::get().to(channels::edit_form))
                .route("/channels/{id}", web::post().to(channels::update))
                .route(
                    "/channels/{id}/status",
                    web::post().to(channels::set_status),
                )
                .route("/channels/{id}/test", web::post().to(channels::test))
                .route("/channels/{id}/delete", web::post().to(channels::delete))
                .route("/keys", web::get().to(keys::list))
                .route("/keys", web::post().to(keys::create))
                .route("/keys/{id}", web::get().to(keys::edit_form))
                .route("/keys/{id}", web::post().to(keys::update))
                .route("/keys/{id}/status", web::post().to(keys::set_status))
                .route("/keys/{id}/delete", web::post().to(keys::delete))
                .route("/users", web::get().to(users::list))
                .route("/users", web::post().to(users::create))
                .route("/users/{id}", web::get().to(users::show))
                .route("/users/{id}/credits", web::post().to(users::credits))
                .route("/users/{id}/status", web::post().to(users::set_status))
                .route("/pricing", web::get().to(pricing::show))
                .route("/pricing/models", web::post().to(pricing::save_model))
                .route(
                    "/pricing/models/delete",
                    web::post().to(pricing::delete_model),
                )
                .route("/pricing/groups", web::post().to(pricing::save_group))
                .route("/logs", web::get().to(logs::list))
                .route("/logs.csv", web::get().to(logs::csv))
                .route("/logs/{id}", web::get().to(logs::show))
                .route("/margins", web::get().to(margins::show))
                .route("/tasks", web::get().to(tasks::list))
                .route("/tasks/{id}/cancel", web::post().to(tasks::cancel))
                .route("/redemptions", web::get().to(redemptions::show))
                .route("/redemptions", web::post().to(redemptions::create))
                .route("/redeem", web::post().to(redemptions::redeem))
                .route("/settings", web::get().to(settings::show))
                .route("/settings", web::post().to(settings::save))
                .route("/cache/refresh", web::post().to(settings::refresh_cache))
                .default_service(web::to(|| async {
                    Err::<actix_web::HttpResponse, _>(Html(ApiError::NotFound))
                })),
        );
}
