//! The dashboard: balance, spend, requests and error rate over the last 14 days (SVG
//! drawn here), and the most used models — all within the caller's scope.

use actix_web::{HttpResponse, web};
use askama::Template;

use crate::console::charts;
use crate::console::page::{self, Html, Nav};
use crate::console::session::Console;
use crate::{AdminState, auth, stats};

const DAYS: u32 = 14;

struct ModelRow {
    model: String,
    requests: i64,
    spend: String,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct DashboardPage {
    nav: Nav,
    balance: String,
    used: String,
    requests: i64,
    spend: String,
    error_rate: String,
    spend_chart: String,
    requests_chart: String,
    errors_chart: String,
    models: Vec<ModelRow>,
}

/// `GET /console`
pub async fn show(state: web::Data<AdminState>, c: Console) -> Result<HttpResponse, Html> {
    let me = auth::current_user(&state, &c.who).await?;
    let usage = stats::usage(&state, &c.who, DAYS).await?;
    let labels: Vec<String> = usage
        .days
        .iter()
        .map(|d| d.day.format("%m-%d").to_string())
        .collect();
    let spend: Vec<f64> = usage
        .days
        .iter()
        .map(|d| billing::micros_to_credits(d.spend))
        .collect();
    let requests: Vec<f64> = usage.days.iter().map(|d| d.requests as f64).collect();
    let errors: Vec<Option<f64>> = usage
        .days
        .iter()
        .map(|d| (d.requests > 0).then(|| d.errors as f64 / d.requests as f64))
        .collect();
    let total_requests: i64 = usage.days.iter().map(|d| d.requests).sum();
    let total_errors: i64 = usage.days.iter().map(|d| d.errors).sum();
    let total_spend: i64 = usage.days.iter().map(|d| d.spend).sum();
    let page = DashboardPage {
        nav: Nav::new(&c, "dashboard"),
        balance: page::credits(me.balance),
        used: page::credits(me.used),
        requests: total_requests,
        spend: page::credits(total_spend),
        error_rate: if total_requests > 0 {
            format!(
                "{:.1}%",
                total_errors as f64 * 100.0 / total_requests as f64
            )
        } else {
            "–".to_owned()
        },
        spend_chart: charts::bars("Spend per day, in credits", "spend", &labels, &spend, |v| {
            format!("{v:.4}")
        }),
        requests_chart: charts::bars("Requests per day", "req", &labels, &requests, |v| {
            format!("{v:.0}")
        }),
        errors_chart: charts::ratio_line("Error rate per day", &labels, &errors),
        models: usage
            .top_models
            .into_iter()
            .map(|m| ModelRow {
                model: m.model,
                requests: m.requests,
                spend: page::credits(m.spend),
            })
            .collect(),
    };
    page::ok(&page)
}
