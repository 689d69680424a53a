//! Tasks: every asynchronous task in the caller's scope (scoped as logs are), filtered
//! by state, family and user, with its results through signed URLs; an admin cancels
//! an open one here (its hold goes back).

use actix_web::{HttpResponse, web};
use askama::Template;
use serde::Deserialize;
use store::entities::task;

use crate::AdminState;
use crate::console::page::{self, FormError, Html, Nav};
use crate::console::session::Console;
use crate::tasks::{self as domain, FAMILIES, STATES, TaskFilter};
use crate::util::Paging;

struct Row {
    id: String,
    created: String,
    finished: String,
    user_id: i64,
    family: String,
    action: String,
    model: String,
    state: String,
    open: bool,
    progress: i32,
    /// What it cost (finished) or holds (open).
    cost: String,
    /// An image to show small (image families), else none.
    thumb: Option<String>,
    /// Every result, signed.
    links: Vec<String>,
    error: String,
}

/// Whether a family's or action's first result is an image a page can show.
fn is_image(t: &task::Model) -> bool {
    t.family == "midjourney" || t.action == "images" || t.action.contains("image")
}

fn row(state: &AdminState, t: &task::Model) -> Row {
    let open = matches!(t.state.as_str(), "queued" | "in_progress");
    let links = domain::result_links(state, t);
    Row {
        id: t.id.clone(),
        created: page::when(t.created_at),
        finished: t.finished_at.map(page::when).unwrap_or_default(),
        user_id: t.user_id,
        family: t.family.clone(),
        action: t.action.clone(),
        model: t.model.clone(),
        state: t.state.clone(),
        open,
        progress: t.progress.clamp(0, 100),
        cost: if open {
            format!("{} held", page::credits(t.held))
        } else {
            page::credits(t.charged)
        },
        thumb: links.first().filter(|_| is_image(t)).cloned(),
        links,
        error: t
            .error
            .as_deref()
            .filter(|_| t.state != "succeeded")
            .unwrap_or_default()
            .to_owned(),
    }
}

/// The filter form's fields, as typed.
#[derive(Default, Deserialize)]
pub struct TaskQuery {
    #[serde(default)]
    state: String,
    #[serde(default)]
    family: String,
    #[serde(default)]
    user_id: String,
    #[serde(default)]
    page: Option<u64>,
}

impl TaskQuery {
    fn filter(&self) -> Result<TaskFilter, crate::ApiError> {
        let text = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
        Ok(TaskFilter {
            state: text(&self.state),
            family: text(&self.family),
            user_id: page::number("user_id", &self.user_id)?,
        })
    }

    fn link(&self, page: u64) -> String {
        let mut q: Vec<(&str, String)> = [
            ("state", self.state.as_str()),
            ("family", self.family.as_str()),
            ("user_id", self.user_id.as_str()),
        ]
        .iter()
        .filter(|(_, v)| !v.trim().is_empty())
        .map(|(k, v)| (*k, v.trim().to_owned()))
        .collect();
        q.push(("page", page.to_string()));
        format!(
            "/console/tasks?{}",
            serde_urlencoded::to_string(q).unwrap_or_default()
        )
    }
}

#[derive(Template)]
#[template(path = "tasks.html")]
struct ListPage {
    nav: Nav,
    q: TaskQuery,
    states: &'static [&'static str],
    families: &'static [&'static str],
    rows: Vec<Row>,
    total: u64,
    page: u64,
    pages: u64,
    prev: String,
    next: String,
    error: FormError,
}

#[derive(Deserialize)]
pub struct Done {
    done: Option<String>,
}

/// `GET /console/tasks`: newest first.
pub async fn list(
    state: web::Data<AdminState>,
    c: Console,
    q: web::Query<TaskQuery>,
    done: web::Query<Done>,
) -> Result<HttpResponse, Html> {
    let q = q.into_inner();
    let paging = Paging::at(q.page.unwrap_or(1));
    let result = match q.filter() {
        Ok(f) => domain::list_tasks(&state, &c.who, &f, &paging).await,
        Err(e) => Err(e),
    };
    let (items, total, error) = match result {
        Ok((items, total)) => (items, total, None),
        Err(e) if page::fixable(&e) => (Vec::new(), 0, Some(e)),
        Err(e) => return Err(Html(e)),
    };
    let p = ListPage {
        nav: Nav::new(&c, "tasks").done(done.done.as_deref()),
        states: &STATES,
        families: &FAMILIES,
        rows: items.iter().map(|t| row(&state, t)).collect(),
        total,
        page: paging.page(),
        pages: total.div_ceil(paging.per_page()).max(1),
        prev: q.link(paging.page().saturating_sub(1).max(1)),
        next: q.link(paging.page() + 1),
        error: error.as_ref().map_or_else(FormError::none, |e| {
            FormError::of(e, &["state", "family", "user_id"])
        }),
        q,
    };
    match error {
        Some(e) => page::again(&e, &p),
        None => page::ok(&p),
    }
}

#[derive(Deserialize)]
pub struct CancelForm {}

/// `POST /console/tasks/{id}/cancel` (admin): ends an open task, releasing its hold.
pub async fn cancel(
    state: web::Data<AdminState>,
    c: Console,
    id: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, Html> {
    let _: CancelForm = c.form(&body)?;
    domain::cancel_task(&state, &c.who, &id).await?;
    Ok(page::see_other("/console/tasks?done=task_cancelled"))
}
