//! Pricing: the table every user may read (so customers see what they pay); admins
//! also set and remove model prices and group multipliers here.

use actix_web::{HttpResponse, web};
use askama::Template;
use serde::Deserialize;
use store::entities::model_price;

use crate::console::page::{self, FormError, Html, Nav};
use crate::console::session::Console;
use crate::pricing::{self as domain, PriceBody};
use crate::{AdminState, ApiError};

struct Row {
    model: String,
    input: String,
    output: String,
    cached_input: String,
    cache_write: String,
    max_output_tokens: String,
    per_request: String,
    per_image: String,
    per_second: String,
}

fn opt(v: Option<i64>) -> String {
    v.map(page::credits).unwrap_or_default()
}

fn row(p: &model_price::Model) -> Row {
    Row {
        model: p.model.clone(),
        input: page::credits(p.input),
        output: page::credits(p.output),
        cached_input: opt(p.cached_input),
        cache_write: opt(p.cache_write),
        max_output_tokens: p
            .max_output_tokens
            .map(|n| n.to_string())
            .unwrap_or_default(),
        per_request: opt(p.per_request),
        per_image: opt(p.per_image),
        per_second: opt(p.per_second),
    }
}

struct Group {
    name: String,
    multiplier: String,
}

/// The price form, as typed (amounts in credits; per 1M tokens or per unit).
#[derive(Default, Deserialize)]
pub struct PriceForm {
    #[serde(default)]
    model: String,
    #[serde(default)]
    input: String,
    #[serde(default)]
    output: String,
    #[serde(default)]
    cached_input: String,
    #[serde(default)]
    cache_write: String,
    #[serde(default)]
    max_output_tokens: String,
    #[serde(default)]
    per_request: String,
    #[serde(default)]
    per_image: String,
    #[serde(default)]
    per_second: String,
}

const FIELDS: &[&str] = &[
    "model",
    "input",
    "output",
    "cached_input",
    "cache_write",
    "max_output_tokens",
    "per_request",
    "per_image",
    "per_second",
];

impl PriceForm {
    /// Empty input/output keep theirs (0 for a new model); an empty optional price is
    /// removed.
    fn body(&self) -> Result<PriceBody, ApiError> {
        Ok(PriceBody {
            input: page::number("input", &self.input)?,
            output: page::number("output", &self.output)?,
            cached_input: Some(page::number("cached_input", &self.cached_input)?),
            cache_write: Some(page::number("cache_write", &self.cache_write)?),
            max_output_tokens: Some(page::number("max_output_tokens", &self.max_output_tokens)?),
            per_request: Some(page::number("per_request", &self.per_request)?),
            per_image: Some(page::number("per_image", &self.per_image)?),
            per_second: Some(page::number("per_second", &self.per_second)?),
        })
    }
}

#[derive(Default, Deserialize)]
pub struct GroupForm {
    #[serde(default)]
    group: String,
    #[serde(default)]
    multiplier: String,
}

#[derive(Template)]
#[template(path = "pricing.html")]
struct PricingPage {
    nav: Nav,
    rows: Vec<Row>,
    groups: Vec<Group>,
    form: PriceForm,
    group_form: GroupForm,
    error: FormError,
}

async fn pricing_page(
    state: &AdminState,
    nav: Nav,
    form: PriceForm,
    group_form: GroupForm,
    error: FormError,
) -> Result<PricingPage, Html> {
    let (prices, groups) = domain::pricing_table(state).await?;
    let mut gs = vec![Group {
        name: "default".into(),
        multiplier: "1.00".into(),
    }];
    gs.retain(|g| !groups.iter().any(|x| x.name == g.name));
    gs.extend(groups.iter().map(|g| Group {
        name: g.name.clone(),
        multiplier: page::credits(g.multiplier_ppm),
    }));
    Ok(PricingPage {
        nav,
        rows: prices.iter().map(row).collect(),
        groups: gs,
        form,
        group_form,
        error,
    })
}

#[derive(Deserialize)]
pub struct ShowQuery {
    #[serde(default)]
    done: Option<String>,
    /// Prefills the form with this model's price.
    #[serde(default)]
    model: Option<String>,
}

/// `GET /console/pricing`
pub async fn show(
    state: web::Data<AdminState>,
    c: Console,
    q: web::Query<ShowQuery>,
) -> Result<HttpResponse, Html> {
    let nav = Nav::new(&c, "pricing").done(q.done.as_deref());
    let (prices, _) = domain::pricing_table(&state).await?;
    let form = q
        .model
        .as_deref()
        .and_then(|m| prices.iter().find(|p| p.model == m))
        .map(|p| {
            let r = row(p);
            PriceForm {
                model: r.model,
                input: r.input,
                output: r.output,
                cached_input: r.cached_input,
                cache_write: r.cache_write,
                max_output_tokens: r.max_output_tokens,
                per_request: r.per_request,
                per_image: r.per_image,
                per_second: r.per_second,
            }
        })
        .unwrap_or_default();
    page::ok(&pricing_page(&state, nav, form, GroupForm::default(), FormError::none()).await?)
}

/// `POST /console/pricing/models` (admin): creates or changes a model's price.
pub async fn save_model(
    state: web::Data<AdminState>,
    c: Console,
    body: web::Bytes,
) -> Result<HttpResponse, Html> {
    let form: PriceForm = c.form(&body)?;
    let result = match form.body() {
        Ok(b) => domain::set_model_price(&state, &c.who, &form.model, b).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => Ok(page::see_other("/console/pricing?done=price_saved")),
        Err(e) if page::fixable(&e) => {
            let p = pricing_page(
                &state,
                Nav::new(&c, "pricing"),
                form,
                GroupForm::default(),
                FormError::of(&e, FIELDS),
            )
            .await?;
            page::again(&e, &p)
        }
        Err(e) => Err(Html(e)),
    }
}

/// `POST /console/pricing/models/delete` (admin)
pub async fn delete_model(
    state: web::Data<AdminState>,
    c: Console,
    body: web::Bytes,
) -> Result<HttpResponse, Html> {
    let form: PriceForm = c.form(&body)?;
    domain::delete_model_price(&state, &c.who, &form.model).await?;
    Ok(page::see_other("/console/pricing?done=price_deleted"))
}

/// `POST /console/pricing/groups` (admin): a group's multiplier.
pub async fn save_group(
    state: web::Data<AdminState>,
    c: Console,
    body: web::Bytes,
) -> Result<HttpResponse, Html> {
    let form: GroupForm = c.form(&body)?;
    let result = match page::number::<f64>("multiplier", &form.multiplier) {
        Ok(Some(m)) => domain::set_group_multiplier(&state, &c.who, &form.group, m)
            .await
            .map(|_| ()),
        Ok(None) => Err(ApiError::invalid(
            "multiplier",
            "give a multiplier, like 1.2",
        )),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => Ok(page::see_other("/console/pricing?done=group_saved")),
        Err(e) if page::fixable(&e) => {
            let p = pricing_page(
                &state,
                Nav::new(&c, "pricing"),
                PriceForm::default(),
                form,
                FormError::of(&e, &["group", "multiplier"]),
            )
            .await?;
            page::again(&e, &p)
        }
        Err(e) => Err(Html(e)),
    }
}
