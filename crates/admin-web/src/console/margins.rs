//! Margins (admin): revenue, upstream cost and margin by model, channel, day or
//! reseller over a window, drawn as charts and listed, with the models priced below
//! what a channel pays for them flagged.

use actix_web::{HttpResponse, web};
use askama::Template;
use serde::Deserialize;

use crate::AdminState;
use crate::console::charts;
use crate::console::page::{self, FormError, Html, Nav};
use crate::console::session::Console;
use crate::margins::{self as domain, GroupBy, MarginQuery};

struct Row {
    key: String,
    requests: i64,
    revenue: String,
    upstream_cost: String,
    margin: String,
    below_cost: bool,
}

struct Flag {
    model: String,
    channel: String,
    why: String,
}

#[derive(Default, Deserialize)]
pub struct MarginForm {
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    group_by: String,
}

#[derive(Template)]
#[template(path = "margins.html")]
struct MarginsPage {
    nav: Nav,
    q: MarginForm,
    rows: Vec<Row>,
    flags: Vec<Flag>,
    revenue: String,
    upstream_cost: String,
    margin: String,
    revenue_chart: String,
    cost_chart: String,
    margin_chart: String,
    error: FormError,
}

/// `GET /console/margins?from=&to=&group_by=` (admin).
pub async fn show(
    state: web::Data<AdminState>,
    c: Console,
    q: web::Query<MarginForm>,
) -> Result<HttpResponse, Html> {
    c.who.require_admin()?;
    let q = q.into_inner();
    let text = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
    let query = MarginQuery {
        from: text(&q.from),
        to: text(&q.to),
        group_by: text(&q.group_by),
    };
    let found = match (GroupBy::parse(query.group_by.as_deref()), query.window()) {
        (Ok(g), Ok(window)) => domain::margins(&state, &c.who, window, g).await,
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    let (rows, error) = match found {
        Ok(rows) => (rows, None),
        Err(e) if page::fixable(&e) => (Vec::new(), Some(e)),
        Err(e) => return Err(Html(e)),
    };
    let flags = domain::below_cost(&state).await?;
    let labels: Vec<String> = rows
        .iter()
        .map(|r| r.key.clone().unwrap_or_else(|| "—".into()))
        .collect();
    let credits = |m: i64| billing::micros_to_credits(m);
    let chart = |title: &str, class: &str, f: fn(&domain::MarginRow) -> i64| {
        let values: Vec<f64> = rows.iter().map(|r| credits(f(r)).max(0.0)).collect();
        charts::bars(title, class, &labels, &values, |v| format!("{v:.4}"))
    };
    let sum = |f: fn(&domain::MarginRow) -> i64| rows.iter().map(f).sum::<i64>();
    let p = MarginsPage {
        nav: Nav::new(&c, "margins"),
        revenue: page::credits(sum(|r| r.revenue)),
        upstream_cost: page::credits(sum(|r| r.upstream_cost)),
        margin: page::credits(sum(domain::MarginRow::margin)),
        revenue_chart: chart("Revenue, in credits", "spend", |r| r.revenue),
        cost_chart: chart("Upstream cost, in credits", "req", |r| r.upstream_cost),
        margin_chart: chart("Margin, in credits (losses at 0)", "spend", |r| r.margin()),
        rows: rows
            .iter()
            .zip(&labels)
            .map(|(r, key)| Row {
                key: key.clone(),
                requests: r.requests,
                revenue: page::credits(r.revenue),
                upstream_cost: page::credits(r.upstream_cost),
                margin: page::credits(r.margin()),
                below_cost: r.upstream_cost > r.revenue,
            })
            .collect(),
        flags: flags
            .into_iter()
            .map(|f| Flag {
                model: f.model,
                channel: format!("#{} {}", f.channel_id, f.channel),
                why: f.why,
            })
            .collect(),
        error: error.as_ref().map_or_else(FormError::none, |e| {
            FormError::of(e, &["from", "to", "group_by"])
        }),
        q,
    };
    match error {
        Some(e) => page::again(&e, &p),
        None => page::ok(&p),
    }
}
