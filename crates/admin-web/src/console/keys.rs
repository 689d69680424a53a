//! `sk-` keys: the list, creation (the key is shown once, with a copy button), limits,
//! enable/disable and delete — for the caller's own keys and, for admins and
//! resellers, those of the users in their scope.

use actix_web::{HttpResponse, web};
use askama::Template;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;
use store::entities::api_key;

use crate::console::page::{self, FormError, Html, Nav};
use crate::console::session::Console;
use crate::keys::{self as domain, CreateKey, PatchKey, stored_list};
use crate::users::list_users;
use crate::util::Paging;
use crate::{AdminState, ApiError};

struct Row {
    id: i64,
    name: String,
    user_id: i64,
    preview: String,
    status: String,
    used: String,
    credit_limit: String,
    expires: String,
    models: String,
    rpm: String,
    /// `tpm` and `max_concurrency`, shown together.
    limits: String,
    last_used: String,
}

fn row(k: &api_key::Model) -> Row {
    Row {
        id: k.id,
        name: k.name.clone(),
        user_id: k.user_id,
        preview: k.preview.clone(),
        status: k.status.clone(),
        used: page::credits(k.used),
        credit_limit: k
            .credit_limit
            .map_or_else(|| "balance".to_owned(), page::credits),
        expires: k
            .expires_at
            .map(page::when)
            .unwrap_or_else(|| "never".to_owned()),
        models: stored_list(k.models.as_deref()).map_or_else(|| "all".to_owned(), |m| m.join(", ")),
        rpm: k.rpm.map_or_else(|| "–".to_owned(), |r| r.to_string()),
        limits: match (k.tpm, k.max_concurrency) {
            (None, None) => "–".to_owned(),
            (t, c) => format!(
                "{} tpm / {} at once",
                t.map_or_else(|| "–".to_owned(), |t| t.to_string()),
                c.map_or_else(|| "–".to_owned(), |c| c.to_string())
            ),
        },
        last_used: k.last_used_at.map(page::when).unwrap_or_default(),
    }
}

/// The key form's fields, as typed (creation and edit share them).
#[derive(Default, Deserialize)]
pub struct KeyForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    user_id: String,
    #[serde(default)]
    credit_limit: String,
    /// `YYYY-MM-DD`: the key works through the end of that day (UTC).
    #[serde(default)]
    expires_on: String,
    #[serde(default)]
    models: String,
    #[serde(default)]
    allow_ips: String,
    #[serde(default)]
    rpm: String,
    #[serde(default)]
    tpm: String,
    #[serde(default)]
    max_concurrency: String,
}

const FIELDS: &[&str] = &[
    "name",
    "user_id",
    "credit_limit",
    "expires_at",
    "models",
    "allow_ips",
    "rpm",
    "tpm",
    "max_concurrency",
];

fn expiry(text: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    NaiveDate::parse_from_str(t, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(23, 59, 59))
        .map(|d| Some(d.and_utc()))
        .ok_or_else(|| ApiError::invalid("expires_at", "give the date as YYYY-MM-DD"))
}

fn list_or_none(text: &str) -> Option<Vec<String>> {
    Some(page::split_list(text)).filter(|l| !l.is_empty())
}

impl KeyForm {
    fn of(k: &api_key::Model) -> Self {
        KeyForm {
            name: k.name.clone(),
            user_id: k.user_id.to_string(),
            credit_limit: k
                .credit_limit
                .map(|l| billing::micros_to_credits(l).to_string())
                .unwrap_or_default(),
            expires_on: k
                .expires_at
                .map(|t| t.format("%Y-%m-%d").to_string())
                .unwrap_or_default(),
            models: stored_list(k.models.as_deref())
                .map(|m| m.join(", "))
                .unwrap_or_default(),
            allow_ips: stored_list(k.allow_ips.as_deref())
                .map(|m| m.join(", "))
                .unwrap_or_default(),
            rpm: k.rpm.map(|r| r.to_string()).unwrap_or_default(),
            tpm: k.tpm.map(|t| t.to_string()).unwrap_or_default(),
            max_concurrency: k.max_concurrency.map(|c| c.to_string()).unwrap_or_default(),
        }
    }

    fn create(&self) -> Result<CreateKey, ApiError> {
        Ok(CreateKey {
            name: self.name.clone(),
            user_id: page::number("user_id", &self.user_id)?,
            credit_limit: page::number("credit_limit", &self.credit_limit)?,
            expires_at: expiry(&self.expires_on)?,
            models: list_or_none(&self.models),
            allow_ips: list_or_none(&self.allow_ips),
            rpm: page::number("rpm", &self.rpm)?,
            tpm: page::number("tpm", &self.tpm)?,
            max_concurrency: page::number("max_concurrency", &self.max_concurrency)?,
        })
    }

    /// Every field is sent: an empty one removes that limit.
    fn patch(&self) -> Result<PatchKey, ApiError> {
        Ok(PatchKey {
            name: Some(self.name.clone()),
            status: None,
            credit_limit: Some(page::number("credit_limit", &self.credit_limit)?),
            expires_at: Some(expiry(&self.expires_on)?),
            models: Some(list_or_none(&self.models)),
            allow_ips: Some(list_or_none(&self.allow_ips)),
            rpm: Some(page::number("rpm", &self.rpm)?),
            tpm: Some(page::number("tpm", &self.tpm)?),
            max_concurrency: Some(page::number("max_concurrency", &self.max_concurrency)?),
        })
    }
}

struct Owner {
    id: i64,
    label: String,
}

#[derive(Template)]
#[template(path = "keys.html")]
struct ListPage {
    nav: Nav,
    rows: Vec<Row>,
    owners: Vec<Owner>,
    form: KeyForm,
    error: FormError,
    page: u64,
    pages: u64,
    user_filter: String,
}

#[derive(Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    done: Option<String>,
    #[serde(default)]
    page: Option<u64>,
    #[serde(default)]
    user_id: Option<String>,
}

async fn list_page(
    state: &AdminState,
    c: &Console,
    nav: Nav,
    q: &ListQuery,
    form: KeyForm,
    error: FormError,
) -> Result<ListPage, Html> {
    let user_id = match q
        .user_id
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        Some(u) => Some(u.parse::<i64>().map_err(|_| ApiError::NotFound)?),
        None => None,
    };
    let paging = Paging::at(q.page.unwrap_or(1));
    let (keys, total) = domain::list_keys(state, &c.who, user_id, &paging).await?;
    let owners = if nav.is_customer {
        Vec::new()
    } else {
        let everyone = Paging {
            page: Some(1),
            per_page: Some(100),
        };
        list_users(state, &c.who, &Default::default(), &everyone)
            .await?
            .0
            .into_iter()
            .map(|u| Owner {
                id: u.id,
                label: format!("{} (#{}, {})", u.username, u.id, u.role),
            })
            .collect()
    };
    Ok(ListPage {
        nav,
        rows: keys.iter().map(row).collect(),
        owners,
        form,
        error,
        page: paging.page(),
        pages: total.div_ceil(paging.per_page()).max(1),
        user_filter: user_id.map(|u| u.to_string()).unwrap_or_default(),
    })
}

/// `GET /console/keys`
pub async fn list(
    state: web::Data<AdminState>,
    c: Console,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, Html> {
    let nav = Nav::new(&c, "keys").done(q.done.as_deref());
    let form = KeyForm {
        user_id: q.user_id.clone().unwrap_or_else(|| c.who.id.to_string()),
        ..KeyForm::default()
    };
    page::ok(&list_page(&state, &c, nav, &q, form, FormError::none()).await?)
}

#[derive(Template)]
#[template(path = "key_created.html")]
struct CreatedPage {
    nav: Nav,
    name: String,
    key: String,
}

/// `POST /console/keys`: the new key, shown this once.
pub async fn create(
    state: web::Data<AdminState>,
    c: Console,
    body: web::Bytes,
) -> Result<HttpResponse, Html> {
    let form: KeyForm = c.form(&body)?;
    let result = match form.create() {
        Ok(b) => domain::create_key(&state, &c.who, b).await,
        Err(e) => Err(e),
    };
    match result {
        Ok((row, key)) => page::ok(&CreatedPage {
            nav: Nav::new(&c, "keys"),
            name: row.name,
            key,
        }),
        Err(e) if page::fixable(&e) => {
            let q = ListQuery {
                done: None,
                page: None,
                user_id: None,
            };
            let p = list_page(
                &state,
                &c,
                Nav::new(&c, "keys"),
                &q,
                form,
                FormError::of(&e, FIELDS),
            )
            .await?;
            page::again(&e, &p)
        }
        Err(e) => Err(Html(e)),
    }
}

#[derive(Template)]
#[template(path = "key_edit.html")]
struct EditPage {
    nav: Nav,
    id: i64,
    preview: String,
    status: String,
    used: String,
    form: KeyForm,
    error: FormError,
}

fn edit_page(c: &Console, k: &api_key::Model, form: KeyForm, error: FormError) -> EditPage {
    EditPage {
        nav: Nav::new(c, "keys"),
        id: k.id,
        preview: k.preview.clone(),
        status: k.status.clone(),
        used: page::credits(k.used),
        form,
        error,
    }
}

/// `GET /console/keys/{id}`
pub async fn edit_form(
    state: web::Data<AdminState>,
    c: Console,
    id: web::Path<i64>,
) -> Result<HttpResponse, Html> {
    let k = domain::visible_key(&state, &c.who, id.into_inner()).await?;
    page::ok(&edit_page(&c, &k, KeyForm::of(&k), FormError::none()))
}

/// `POST /console/keys/{id}`: name and limits.
pub async fn update(
    state: web::Data<AdminState>,
    c: Console,
    id: web::Path<i64>,
    body: web::Bytes,
) -> Result<HttpResponse, Html> {
    let id = id.into_inner();
    let form: KeyForm = c.form(&body)?;
    let result = match form.patch() {
        Ok(p) => domain::update_key(&state, &c.who, id, p).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => Ok(page::see_other("/console/keys?done=key_saved")),
        Err(e) if page::fixable(&e) => {
            let k = domain::visible_key(&state, &c.who, id).await?;
            page::again(&e, &edit_page(&c, &k, form, FormError::of(&e, FIELDS)))
        }
        Err(e) => Err(Html(e)),
    }
}

/// `POST /console/keys/{id}/status`: enable or disable.
pub async fn set_status(
    state: web::Data<AdminState>,
    c: Console,
    id: web::Path<i64>,
    body: web::Bytes,
) -> Result<HttpResponse, Html> {
    let form: page::StatusForm = c.form(&body)?;
    let patch = PatchKey {
        status: Some(form.status),
        ..PatchKey::default()
    };
    domain::update_key(&state, &c.who, id.into_inner(), patch).await?;
    Ok(page::see_other("/console/keys?done=key_status"))
}

/// `POST /console/keys/{id}/delete`
pub async fn delete(
    state: web::Data<AdminState>,
    c: Console,
    id: web::Path<i64>,
    body: web::Bytes,
) -> Result<HttpResponse, Html> {
    let _: page::StatusForm = c.form(&body)?;
    domain::delete_key(&state, &c.who, id.into_inner()).await?;
    Ok(page::see_other("/console/keys?done=key_deleted"))
}
