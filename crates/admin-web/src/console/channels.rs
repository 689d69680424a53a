//! Channels (admin only): the list with health, the create/edit form, enable and
//! disable, delete, and the test button. Channel keys are write-only: the form never
//! shows them again, only their last four characters.

use std::collections::HashMap;

use actix_web::{HttpResponse, web};
use askama::Template;
use serde::Deserialize;
use store::entities::{channel, channel_key};

use crate::channels::{self as domain, ChannelBody};
use crate::console::page::{self, FormError, Html, Nav};
use crate::console::session::Console;
use crate::{AdminState, ApiError};

struct Row {
    id: i64,
    name: String,
    kind: String,
    status: String,
    models: String,
    groups: String,
    priority: i32,
    weight: i32,
    keys: String,
    response_ms: String,
    last_test_at: String,
    last_error: String,
    disabled_reason: String,
}

fn json_names(text: &str) -> String {
    serde_json::from_str::<Vec<String>>(text)
        .map(|v| v.join(", "))
        .unwrap_or_default()
}

fn row(c: &channel::Model, keys: &[channel_key::Model]) -> Row {
    Row {
        id: c.id,
        name: c.name.clone(),
        kind: c.kind.clone(),
        status: c.status.clone(),
        models: json_names(&c.models),
        groups: json_names(&c.groups),
        priority: c.priority,
        weight: c.weight,
        keys: keys_preview(keys),
        response_ms: c.response_ms.map(|m| format!("{m} ms")).unwrap_or_default(),
        last_test_at: c.last_test_at.map(page::when).unwrap_or_default(),
        last_error: c.last_error.clone().unwrap_or_default(),
        disabled_reason: c.disabled_reason.clone().unwrap_or_default(),
    }
}

fn keys_preview(keys: &[channel_key::Model]) -> String {
    keys.iter()
        .map(|k| {
            if k.status == "enabled" {
                format!("…{}", k.last4)
            } else {
                format!("…{} ({})", k.last4, k.status)
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Template)]
#[template(path = "channels.html")]
struct ListPage {
    nav: Nav,
    rows: Vec<Row>,
}

async fn list_page(state: &AdminState, c: &Console, nav: Nav) -> Result<HttpResponse, Html> {
    let rows = domain::list_channels(state, &c.who)
        .await?
        .iter()
        .map(|(ch, keys)| row(ch, keys))
        .collect();
    page::ok(&ListPage { nav, rows })
}

#[derive(Deserialize)]
pub struct DoneQuery {
    #[serde(default)]
    done: Option<String>,
}

/// `GET /console/channels`
pub async fn list(
    state: web::Data<AdminState>,
    c: Console,
    q: web::Query<DoneQuery>,
) -> Result<HttpResponse, Html> {
    let nav = Nav::new(&c, "channels").done(q.done.as_deref());
    list_page(&state, &c, nav).await
}

/// The form's fields, as typed.
#[derive(Default, Deserialize)]
pub struct ChannelForm {
    #[serde(default)]
    name: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    base_url: String,
    /// One upstream key per line; on edit, empty keeps the keys there are.
    #[serde(default)]
    keys: String,
    #[serde(default)]
    models: String,
    /// `alias=upstream_model`, one per line.
    #[serde(default)]
    model_mapping: String,
    #[serde(default)]
    groups: String,
    #[serde(default)]
    priority: String,
    #[serde(default)]
    weight: String,
    #[serde(default)]
    timeout_s: String,
    #[serde(default)]
    status: String,
    /// What the upstream charges, one model a line: `model=0.15/0.6` (credits per 1M
    /// input / output tokens) or `model=70%` (of the list price).
    #[serde(default)]
    costs: String,
}

const FIELDS: &[&str] = &[
    "name",
    "type",
    "base_url",
    "keys",
    "models",
    "model_mapping",
    "groups",
    "priority",
    "weight",
    "timeout_s",
    "status",
    "costs",
];

/// The costs field's lines as the API's `costs` object.
fn costs_of(text: &str) -> Result<serde_json::Value, ApiError> {
    let bad = || {
        ApiError::invalid(
            "costs",
            "write one model a line as model=input/output (credits per 1M tokens) or model=70%",
        )
    };
    let mut out = serde_json::Map::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (model, cost) = line.split_once('=').ok_or_else(bad)?;
        let cost = cost.trim();
        let number = |t: &str| t.trim().parse::<f64>().map_err(|_| bad());
        let value = match cost.strip_suffix('%') {
            Some(p) => serde_json::json!({"ratio": number(p)? / 100.0}),
            None => {
                let (i, o) = cost.split_once('/').ok_or_else(bad)?;
                serde_json::json!({"input": number(i)?, "output": number(o)?})
            }
        };
        out.insert(model.trim().to_owned(), value);
    }
    Ok(serde_json::Value::Object(out))
}

/// The API's `costs` object as the field's lines.
fn costs_text(stored: Option<&str>) -> String {
    let v: serde_json::Value = stored
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or_default();
    let mut lines: Vec<String> = v
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(model, c)| match c.get("ratio").and_then(|r| r.as_f64()) {
                    Some(r) => format!("{model}={}%", r * 100.0),
                    None => format!(
                        "{model}={}/{}",
                        c.get("input").and_then(|x| x.as_f64()).unwrap_or(0.0),
                        c.get("output").and_then(|x| x.as_f64()).unwrap_or(0.0)
                    ),
                })
                .collect()
        })
        .unwrap_or_default();
    lines.sort();
    lines.join("\n")
}

impl ChannelForm {
    fn of(c: &channel::Model) -> Self {
        let mapping: HashMap<String, String> =
            serde_json::from_str(&c.model_mapping).unwrap_or_default();
        let mut mapping: Vec<_> = mapping.into_iter().collect();
        mapping.sort();
        ChannelForm {
            name: c.name.clone(),
            kind: c.kind.clone(),
            base_url: c.base_url.clone(),
            keys: String::new(),
            models: json_names(&c.models),
            model_mapping: mapping
                .iter()
                .map(|(a, b)| format!("{a}={b}"))
                .collect::<Vec<_>>()
                .join("\n"),
            groups: json_names(&c.groups),
            priority: c.priority.to_string(),
            weight: c.weight.to_string(),
            timeout_s: c.timeout_s.to_string(),
            // An auto-disabled channel keeps that status unless the admin picks one.
            status: match c.status.as_str() {
                "enabled" | "disabled" => c.status.clone(),
                _ => String::new(),
            },
            costs: costs_text(c.costs.as_deref()),
        }
    }

    /// The API body; a field the user left empty is left out (the domain's default,
    /// or on edit the value there is).
    fn body(&self, creating: bool) -> Result<ChannelBody, ApiError> {
        let text = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
        let mut mapping = HashMap::new();
        for line in self
            .model_mapping
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
        {
            let (alias, target) = line.split_once('=').ok_or_else(|| {
                ApiError::invalid(
                    "model_mapping",
                    "write one mapping per line as alias=upstream_model",
                )
            })?;
            mapping.insert(alias.trim().to_owned(), target.trim().to_owned());
        }
        let keys = page::split_list(&self.keys.replace(',', "\n"));
        Ok(ChannelBody {
            name: Some(self.name.clone()),
            kind: text(&self.kind),
            base_url: Some(self.base_url.clone()),
            keys: if keys.is_empty() && !creating {
                None
            } else {
                Some(keys)
            },
            models: Some(page::split_list(&self.models)),
            model_mapping: Some(mapping),
            groups: text(&self.groups).map(|g| page::split_list(&g)),
            priority: page::number("priority", &self.priority)?,
            weight: page::number("weight", &self.weight)?,
            headers: None,
            timeout_s: page::number("timeout_s", &self.timeout_s)?,
            status: text(&self.status),
            costs: Some(if self.costs.trim().is_empty() {
                serde_json::Value::Null
            } else {
                costs_of(&self.costs)?
            }),
        })
    }
}

#[derive(Template)]
#[template(path = "channel_form.html")]
struct FormPage {
    nav: Nav,
    /// `None` when creating.
    id: Option<i64>,
    form: ChannelForm,
    keys_preview: String,
    error: FormError,
}

/// `GET /console/channels/new`
pub async fn new_form(c: Console) -> Result<HttpResponse, Html> {
    c.who.require_admin()?;
    page::ok(&FormPage {
        nav: Nav::new(&c, "channels"),
        id: None,
        form: ChannelForm {
            kind: "openai".into(),
            groups: "default".into(),
            priority: "0".into(),
            weight: "1".into(),
            timeout_s: "300".into(),
            status: "enabled".into(),
            ..ChannelForm::default()
        },
        keys_preview: String::new(),
        error: FormError::none(),
    })
}

/// `GET /console/channels/{id}`
pub async fn edit_form(
    state: web::Data<AdminState>,
    c: Console,
    id: web::Path<i64>,
) -> Result<HttpResponse, Html> {
    let (ch, keys) = domain::get_channel(&state, &c.who, id.into_inner()).await?;
    page::ok(&FormPage {
        nav: Nav::new(&c, "channels"),
        id: Some(ch.id),
        form: ChannelForm::of(&ch),
        keys_preview: keys_preview(&keys),
        error: FormError::none(),
    })
}

async fn form_again(
    state: &AdminState,
    c: &Console,
    id: Option<i64>,
    mut form: ChannelForm,
    e: &ApiError,
) -> Result<HttpResponse, Html> {
    // Keys are never sent back, not even the ones just typed.
    form.keys.clear();
    let keys_preview = match id {
        Some(id) => keys_preview(&domain::get_channel(state, &c.who, id).await?.1),
        None => String::new(),
    };
    page::again(
        e,
        &FormPage {
            nav: Nav::new(c, "channels"),
            id,
            form,
            keys_preview,
            error: FormError::of(e, FIELDS),
        },
    )
}

/// `POST /console/channels`
pub async fn create(
    state: web::Data<AdminState>,
    c: Console,
    body: web::Bytes,
) -> Result<HttpResponse, Html> {
    let form: ChannelForm = c.form(&body)?;
    let result = match form.body(true) {
        Ok(b) => domain::create_channel(&state, &c.who, &b).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => Ok(page::see_other("/console/channels?done=channel_saved")),
        Err(e) if page::fixable(&e) => form_again(&state, &c, None, form, &e).await,
        Err(e) => Err(Html(e)),
    }
}

/// `POST /console/channels/{id}`
pub async fn update(
    state: web::Data<AdminState>,
    c: Console,
    id: web::Path<i64>,
    body: web::Bytes,
) -> Result<HttpResponse, Html> {
    let id = id.into_inner();
    let form: ChannelForm = c.form(&body)?;
    let result = match form.body(false) {
        Ok(b) => domain::update_channel(&state, &c.who, id, &b).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => Ok(page::see_other("/console/channels?done=channel_saved")),
        Err(e) if page::fixable(&e) => form_again(&state, &c, Some(id), form, &e).await,
        Err(e) => Err(Html(e)),
    }
}

/// `POST /console/channels/{id}/status`: enable or disable.
pub async fn set_status(
    state: web::Data<AdminState>,
    c: Console,
    id: web::Path<i64>,
    body: web::Bytes,
) -> Result<HttpResponse, Html> {
    let form: page::StatusForm = c.form(&body)?;
    let patch = ChannelBody {
        status: Some(form.status),
        ..ChannelBody::default()
    };
    domain::update_channel(&state, &c.who, id.into_inner(), &patch).await?;
    Ok(page::see_other("/console/channels?done=channel_status"))
}

#[derive(Deserialize)]
pub struct TestForm {
    #[serde(default)]
    model: Option<String>,
}

/// `POST /console/channels/{id}/test`: the list again, with the latency or the error.
pub async fn test(
    state: web::Data<AdminState>,
    c: Console,
    id: web::Path<i64>,
    body: web::Bytes,
) -> Result<HttpResponse, Html> {
    let form: TestForm = c.form(&body)?;
    let id = id.into_inner();
    let t = domain::test_channel(&state, &c.who, id, form.model).await?;
    let message = match (t.ok, t.latency_ms, t.error) {
        (true, Some(ms), _) => format!("Channel #{id} answered {} in {ms} ms.", t.model),
        (_, _, Some(e)) => format!("Channel #{id} failed its test with {}: {e}", t.model),
        _ => format!("Channel #{id} failed its test with {}.", t.model),
    };
    let nav = Nav::new(&c, "channels").flash(message);
    let resp = list_page(&state, &c, nav).await?;
    Ok(resp)
}

/// `POST /console/channels/{id}/delete`
pub async fn delete(
    state: web::Data<AdminState>,
    c: Console,
    id: web::Path<i64>,
    body: web::Bytes,
) -> Result<HttpResponse, Html> {
    let _: DoneQuery = c.form(&body)?;
    domain::delete_channel(&state, &c.who, id.into_inner()).await?;
    Ok(page::see_other("/console/channels?done=channel_deleted"))
}
