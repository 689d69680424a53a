//! Logs: every generation in the caller's scope, filtered by user, key, model, status
//! and time, a page at a time; and one generation with every attempt it made.

use actix_web::{HttpResponse, web};
use askama::Template;
use serde::Deserialize;
use store::entities::generation;

use crate::console::page::{self, FormError, Html, Nav};
use crate::console::session::Console;
use crate::logs::{self as domain, LogFilter};
use crate::util::Paging;
use crate::{AdminState, ApiError};

struct Row {
    id: String,
    at: String,
    model: String,
    user_id: i64,
    key_id: i64,
    status: String,
    /// The HTTP status of a relay call; the state of a task (queued, in_progress,
    /// succeeded, failed, cancelled, expired).
    detail: String,
    tokens: String,
    cost: String,
    latency: String,
}

fn row(g: &generation::Model) -> Row {
    Row {
        id: g.id.clone(),
        at: page::when(g.created_at),
        model: g.model.clone(),
        user_id: g.user_id,
        key_id: g.key_id,
        status: g.status.clone(),
        detail: match (&g.finish_reason, g.id.starts_with("task_")) {
            (Some(state), true) => state.clone(),
            _ => g.status_code.to_string(),
        },
        tokens: format!("{} / {}", g.tokens_prompt, g.tokens_completion),
        cost: page::credits(g.cost),
        latency: g.latency_ms.map(|l| format!("{l} ms")).unwrap_or_default(),
    }
}

/// The filter form's fields, as typed.
#[derive(Default, Deserialize)]
pub struct LogQuery {
    #[serde(default)]
    user_id: String,
    #[serde(default)]
    key_id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    page: Option<u64>,
}

impl LogQuery {
    fn filter(&self) -> Result<LogFilter, ApiError> {
        let text = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
        Ok(LogFilter {
            user_id: page::number("user_id", &self.user_id)?,
            key_id: page::number("key_id", &self.key_id)?,
            model: text(&self.model),
            status: text(&self.status),
            from: text(&self.from),
            to: text(&self.to),
        })
    }

    /// The export of every row these filters match.
    fn csv_link(&self) -> String {
        let link = self.link(1);
        let query = link.split_once('?').map_or("", |(_, q)| q);
        let query: Vec<&str> = query
            .split('&')
            .filter(|p| !p.starts_with("page="))
            .collect();
        format!("/console/logs.csv?{}", query.join("&"))
    }

    /// The query string of these filters, for the pager's links.
    fn link(&self, page: u64) -> String {
        let pairs = [
            ("user_id", self.user_id.as_str()),
            ("key_id", self.key_id.as_str()),
            ("model", self.model.as_str()),
            ("status", self.status.as_str()),
            ("from", self.from.as_str()),
            ("to", self.to.as_str()),
        ];
        let mut q: Vec<(&str, String)> = pairs
            .iter()
            .filter(|(_, v)| !v.trim().is_empty())
            .map(|(k, v)| (*k, v.trim().to_owned()))
            .collect();
        q.push(("page", page.to_string()));
        format!(
            "/console/logs?{}",
            serde_urlencoded::to_string(q).unwrap_or_default()
        )
    }
}

#[derive(Template)]
#[template(path = "logs.html")]
struct ListPage {
    nav: Nav,
    q: LogQuery,
    rows: Vec<Row>,
    total: u64,
    page: u64,
    pages: u64,
    prev: String,
    next: String,
    csv: String,
    error: FormError,
}

/// `GET /console/logs.csv`: every row the filters match, as CSV (streamed).
pub async fn csv(
    state: web::Data<AdminState>,
    c: Console,
    q: web::Query<LogQuery>,
) -> Result<HttpResponse, Html> {
    let filter = q.filter()?;
    let body = domain::csv_stream(state.db.clone(), &c.who, &filter)?;
    Ok(HttpResponse::Ok()
        .insert_header(("content-type", "text/csv; charset=utf-8"))
        .insert_header((
            "content-disposition",
            "attachment; filename=\"tollgate-logs.csv\"",
        ))
        .streaming(body))
}

/// `GET /console/logs`: newest first.
pub async fn list(
    state: web::Data<AdminState>,
    c: Console,
    q: web::Query<LogQuery>,
) -> Result<HttpResponse, Html> {
    let q = q.into_inner();
    let paging = Paging::at(q.page.unwrap_or(1));
    let result = match q.filter() {
        Ok(f) => domain::list_logs(&state, &c.who, &f, &paging).await,
        Err(e) => Err(e),
    };
    let (items, total, error) = match result {
        Ok((items, total)) => (items, total, None),
        Err(e) if page::fixable(&e) => (Vec::new(), 0, Some(e)),
        Err(e) => return Err(Html(e)),
    };
    let pages = total.div_ceil(paging.per_page()).max(1);
    let p = ListPage {
        nav: Nav::new(&c, "logs"),
        rows: items.iter().map(row).collect(),
        total,
        page: paging.page(),
        pages,
        prev: q.link(paging.page().saturating_sub(1).max(1)),
        next: q.link(paging.page() + 1),
        csv: q.csv_link(),
        error: error.as_ref().map_or_else(FormError::none, |e| {
            FormError::of(e, &["user_id", "key_id", "model", "status", "from", "to"])
        }),
        q,
    };
    match error {
        Some(e) => page::again(&e, &p),
        None => page::ok(&p),
    }
}

struct Attempt {
    channel: String,
    status: String,
    latency: String,
    error: String,
}

fn attempts(g: &generation::Model) -> Vec<Attempt> {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    domain::attempts_of(g)
        .as_array()
        .map(|list| {
            list.iter()
                .map(|a| Attempt {
                    channel: format!("#{} {}", text(&a["channel_id"]), text(&a["channel"]))
                        .trim()
                        .to_owned(),
                    status: text(&a["status"]),
                    latency: text(&a["latency_ms"]),
                    error: [text(&a["error_class"]), text(&a["error"])]
                        .into_iter()
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>()
                        .join(": "),
                })
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Template)]
#[template(path = "log.html")]
struct DetailPage {
    nav: Nav,
    g: generation::Model,
    at: String,
    cost: String,
    attempts: Vec<Attempt>,
}

/// `GET /console/logs/{id}`: 404 outside the caller's scope.
pub async fn show(
    state: web::Data<AdminState>,
    c: Console,
    id: web::Path<String>,
) -> Result<HttpResponse, Html> {
    let g = domain::find_log(&state, &c.who, &id).await?;
    page::ok(&DetailPage {
        nav: Nav::new(&c, "logs"),
        at: page::when(g.created_at),
        cost: page::credits(g.cost),
        attempts: attempts(&g),
        g,
    })
}
