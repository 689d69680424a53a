//! The admin API's routing table.

use actix_web::web;

use crate::{
    ApiError, auth, channels, keys, logs, ops, pricing, redemptions, settings, stats, tasks, users,
};

/// Mounts `/api/*`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let json = web::JsonConfig::default()
        .limit(1024 * 1024)
        .error_handler(|err, _| ApiError::BadRequest(format!("invalid JSON body: {err}")).into());
    let query = web::QueryConfig::default()
        .error_handler(|err, _| ApiError::BadRequest(format!("invalid query: {err}")).into());
    let path = web::PathConfig::default().error_handler(|_, _| ApiError::NotFound.into());
    cfg.service(
        web::scope("/api")
            .app_data(json)
            .app_data(query)
            .app_data(path)
            .route("/auth/login", web::post().to(auth::login))
            .route("/auth/logout", web::post().to(auth::logout))
            .route("/me", web::get().to(auth::me))
            .route("/me", web::patch().to(auth::patch_me))
            .route("/users", web::post().to(users::create))
            .route("/users", web::get().to(users::list))
            .route("/users/{id}", web::get().to(users::get))
            .route("/users/{id}", web::patch().to(users::patch))
            .route("/users/{id}/credits", web::post().to(users::add_credits))
            .route(
                "/users/{id}/transactions",
                web::get().to(users::transactions),
            )
            .route("/keys", web::post().to(keys::create))
            .route("/keys", web::get().to(keys::list))
            .route("/keys/{id}", web::patch().to(keys::patch))
            .route("/keys/{id}", web::delete().to(keys::delete))
            .route("/redemptions", web::post().to(redemptions::create))
            .route("/redemptions", web::get().to(redemptions::list))
            .route("/redeem", web::post().to(redemptions::redeem))
            .route("/channels", web::post().to(channels::create))
            .route("/channels", web::get().to(channels::list))
            .route("/channels/{id}", web::get().to(channels::get))
            .route("/channels/{id}", web::patch().to(channels::patch))
            .route("/channels/{id}", web::delete().to(channels::delete))
            .route("/channels/{id}/test", web::post().to(channels::test))
            .route("/ledger/verify", web::get().to(crate::ledger::verify))
            .route("/pricing", web::get().to(pricing::get))
            .route("/pricing/models/{model}", web::put().to(pricing::put_model))
            .route(
                "/pricing/models/{model}",
                web::delete().to(pricing::delete_model),
            )
            .route("/pricing/groups/{group}", web::put().to(pricing::put_group))
            .route("/logs", web::get().to(logs::list))
            .route("/logs.csv", web::get().to(logs::csv))
            .route("/logs/{generation_id}", web::get().to(logs::get))
            .route("/tasks", web::get().to(tasks::list))
            .route("/tasks/{id}/cancel", web::post().to(tasks::cancel))
            .route("/stats", web::get().to(stats::get))
            .route("/stats/margin", web::get().to(crate::margins::get))
            .route("/settings", web::get().to(settings::get))
            .route("/settings", web::put().to(settings::put))
            .route("/cache/refresh", web::post().to(ops::refresh))
            .default_service(web::to(|| async {
                Err::<actix_web::HttpResponse, _>(ApiError::NotFound)
            })),
    );
}
