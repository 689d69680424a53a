//! Redemption codes: admins and resellers create batches (a reseller pays up front)
//! and list them; everyone redeems one.

use actix_web::{HttpResponse, web};
use askama::Template;
use serde::Deserialize;

use crate::auth::{self, Role};
use crate::console::page::{self, FormError, Html, Nav};
use crate::console::session::Console;
use crate::redemptions as domain;
use crate::util::Paging;
use crate::{AdminState, ApiError};

struct Row {
    id: i64,
    name: String,
    amount: String,
    status: String,
    used_by: String,
    used_at: String,
    created_at: String,
}

#[derive(Default, Deserialize)]
pub struct BatchForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    amount: String,
    #[serde(default)]
    count: String,
}

#[derive(Template)]
#[template(path = "redemptions.html")]
struct CodesPage {
    nav: Nav,
    can_create: bool,
    balance: String,
    rows: Vec<Row>,
    page: u64,
    pages: u64,
    form: BatchForm,
    code: String,
    error: FormError,
    /// Codes just created, shown this once.
    created: Vec<String>,
}

#[derive(Default, Deserialize)]
pub struct ShowQuery {
    #[serde(default)]
    page: Option<u64>,
}

async fn codes_page(
    state: &AdminState,
    c: &Console,
    nav: Nav,
    page_no: u64,
    form: BatchForm,
    error: FormError,
    created: Vec<String>,
) -> Result<CodesPage, Html> {
    let can_create = c.who.role != Role::Customer;
    let paging = Paging::at(page_no);
    let (rows, total) = if can_create {
        domain::list_codes(state, &c.who, &paging).await?
    } else {
        (Vec::new(), 0)
    };
    let me = auth::current_user(state, &c.who).await?;
    Ok(CodesPage {
        nav,
        can_create,
        balance: page::credits(me.balance),
        rows: rows
            .iter()
            .map(|r| Row {
                id: r.id,
                name: r.name.clone(),
                amount: page::credits(r.amount),
                status: r.status.clone(),
                used_by: r.used_by.map(|u| format!("#{u}")).unwrap_or_default(),
                used_at: r.used_at.map(page::when).unwrap_or_default(),
                created_at: page::when(r.created_at),
            })
            .collect(),
        page: paging.page(),
        pages: total.div_ceil(paging.per_page()).max(1),
        form,
        code: String::new(),
        error,
        created,
    })
}

/// `GET /console/redemptions`
pub async fn show(
    state: web::Data<AdminState>,
    c: Console,
    q: web::Query<ShowQuery>,
) -> Result<HttpResponse, Html> {
    let form = BatchForm {
        count: "1".into(),
        ..BatchForm::default()
    };
    let p = codes_page(
        &state,
        &c,
        Nav::new(&c, "redemptions"),
        q.page.unwrap_or(1),
        form,
        FormError::none(),
        Vec::new(),
    )
    .await?;
    page::ok(&p)
}

/// `POST /console/redemptions`: the new codes, shown this once.
pub async fn create(
    state: web::Data<AdminState>,
    c: Console,
    body: web::Bytes,
) -> Result<HttpResponse, Html> {
    let form: BatchForm = c.form(&body)?;
    let parsed = page::number::<f64>("amount", &form.amount).and_then(|a| {
        Ok((
            a.ok_or_else(|| ApiError::invalid("amount", "give the credits each code is worth"))?,
            page::number::<i64>("count", &form.count)?.unwrap_or(1),
        ))
    });
    let result = match parsed {
        Ok((amount, count)) => {
            domain::create_codes(&state, &c.who, &form.name, amount, count).await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(codes) => {
            let nav = Nav::new(&c, "redemptions").flash(format!(
                "{} code(s) created. Copy them now: they are shown only this once.",
                codes.len()
            ));
            let p = codes_page(
                &state,
                &c,
                nav,
                1,
                BatchForm::default(),
                FormError::none(),
                codes,
            )
            .await?;
            page::ok(&p)
        }
        Err(e) if page::fixable(&e) => {
            let error = match e {
                ApiError::InsufficientBalance => FormError {
                    field: Some("amount"),
                    message: Some("insufficient balance to pay for these codes".into()),
                    shown: &["name", "amount", "count"],
                },
                ref other => FormError::of(other, &["name", "amount", "count"]),
            };
            let p = codes_page(
                &state,
                &c,
                Nav::new(&c, "redemptions"),
                1,
                form,
                error,
                Vec::new(),
            )
            .await?;
            page::again(&e, &p)
        }
        Err(e) => Err(Html(e)),
    }
}

#[derive(Deserialize)]
pub struct RedeemForm {
    #[serde(default)]
    code: String,
}

/// `POST /console/redeem`
pub async fn redeem(
    state: web::Data<AdminState>,
    c: Console,
    body: web::Bytes,
) -> Result<HttpResponse, Html> {
    let form: RedeemForm = c.form(&body)?;
    match domain::redeem_code(&state, &c.who, &form.code).await {
        Ok(r) => {
            let nav = Nav::new(&c, "redemptions").flash(format!(
                "Redeemed {} credits; your balance is now {}.",
                page::credits(r.amount),
                page::credits(r.balance)
            ));
            let p = codes_page(
                &state,
                &c,
                nav,
                1,
                BatchForm::default(),
                FormError::none(),
                Vec::new(),
            )
            .await?;
            page::ok(&p)
        }
        Err(e) if page::fixable(&e) => {
            let mut p = codes_page(
                &state,
                &c,
                Nav::new(&c, "redemptions"),
                1,
                BatchForm::default(),
                FormError::of(&e, &["code"]),
                Vec::new(),
            )
            .await?;
            p.code = form.code;
            page::again(&e, &p)
        }
        Err(e) => Err(Html(e)),
    }
}
