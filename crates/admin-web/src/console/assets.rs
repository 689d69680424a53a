//! The console's stylesheet and script, compiled into the binary from `static/` so
//! the console works offline and from any working directory.

use actix_web::http::header;
use actix_web::{HttpResponse, web};

use crate::ApiError;
use crate::console::page::Html;

const CSS: &str = include_str!("../../../../static/console.css");
const JS: &str = include_str!("../../../../static/console.js");

/// `GET /static/{file}`
pub async fn serve(file: web::Path<String>) -> Result<HttpResponse, Html> {
    let (body, kind) = match file.as_str() {
        "console.css" => (CSS, "text/css; charset=utf-8"),
        "console.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return Err(Html(ApiError::NotFound)),
    };
    Ok(HttpResponse::Ok()
        .content_type(kind)
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(body))
}
