//! Users: an admin sees everyone, a reseller its customers (and itself), a customer
//! itself. Create, disable, and add or move credits; each user's ledger and keys.

use actix_web::{HttpResponse, web};
use askama::Template;
use serde::Deserialize;
use store::entities::user;

use crate::auth::Role;
use crate::console::page::{self, FormError, Html, Nav};
use crate::console::session::Console;
use crate::keys::list_keys;
use crate::users::{self as domain, CreateUser, ListUsers, PatchUser, visible_user};
use crate::util::Paging;
use crate::{AdminState, ApiError};

struct Row {
    id: i64,
    username: String,
    role: String,
    group: String,
    parent: String,
    status: String,
    balance: String,
    used: String,
}

fn row(u: &user::Model) -> Row {
    Row {
        id: u.id,
        username: u.username.clone(),
        role: u.role.clone(),
        group: u.group_name.clone(),
        parent: u.parent_id.map(|p| format!("#{p}")).unwrap_or_default(),
        status: u.status.clone(),
        balance: page::credits(u.balance),
        used: page::credits(u.used),
    }
}

#[derive(Default, Deserialize)]
pub struct UserForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    group: String,
}

const FIELDS: &[&str] = &["username", "password", "role", "group"];

#[derive(Template)]
#[template(path = "users.html")]
struct ListPage {
    nav: Nav,
    rows: Vec<Row>,
    q: String,
    role: String,
    page: u64,
    pages: u64,
    total: u64,
    form: UserForm,
    error: FormError,
}

#[derive(Default, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    page: Option<u64>,
}

async fn list_page(
    state: &AdminState,
    c: &Console,
    q: &ListQuery,
    form: UserForm,
    error: FormError,
) -> Result<ListPage, Html> {
    let filter = ListUsers {
        q: q.q.clone(),
        role: q.role.clone(),
    };
    let paging = Paging::at(q.page.unwrap_or(1));
    let (users, total) = domain::list_users(state, &c.who, &filter, &paging).await?;
    Ok(ListPage {
        nav: Nav::new(c, "users"),
        rows: users.iter().map(row).collect(),
        q: q.q.clone().unwrap_or_default(),
        role: q.role.clone().unwrap_or_default(),
        page: paging.page(),
        pages: total.div_ceil(paging.per_page()).max(1),
        total,
        form,
        error,
    })
}

/// `GET /console/users`
pub async fn list(
    state: web::Data<AdminState>,
    c: Console,
    q: web::Query<ListQuery>,
) -> Result<HttpResponse, Html> {
    let form = UserForm {
        role: "customer".into(),
        ..UserForm::default()
    };
    page::ok(&list_page(&state, &c, &q, form, FormError::none()).await?)
}

/// `POST /console/users`
pub async fn create(
    state: web::Data<AdminState>,
    c: Console,
    body: web::Bytes,
) -> Result<HttpResponse, Html> {
    let form: UserForm = c.form(&body)?;
    let new = CreateUser {
        username: form.username.clone(),
        password: form.password.clone(),
        role: if c.who.role == Role::Admin {
            form.role.clone()
        } else {
            "customer".to_owned()
        },
        group: Some(form.group.clone()),
    };
    match domain::create_user(&state, &c.who, new).await {
        Ok(u) => Ok(page::see_other(&format!(
            "/console/users/{}?done=user_created",
            u.id
        ))),
        Err(e) if page::fixable(&e) => {
            let form = UserForm {
                password: String::new(),
                ..form
            };
            let p = list_page(
                &state,
                &c,
                &ListQuery::default(),
                form,
                FormError::of(&e, FIELDS),
            )
            .await?;
            page::again(&e, &p)
        }
        Err(e) => Err(Html(e)),
    }
}

struct TxRow {
    kind: String,
    amount: String,
    balance_after: String,
    note: String,
    reference: String,
    at: String,
}

struct KeyRow {
    id: i64,
    name: String,
    preview: String,
    status: String,
    used: String,
}

#[derive(Template)]
#[template(path = "user.html")]
struct DetailPage {
    nav: Nav,
    user: Row,
    created_at: String,
    /// Whether the caller may change this user (not itself, unless admin).
    manage: bool,
    /// Whether the caller may move credits to and from this user.
    credit: bool,
    txs: Vec<TxRow>,
    tx_page: u64,
    tx_pages: u64,
    keys: Vec<KeyRow>,
    amount: String,
    note: String,
    error: FormError,
}

#[derive(Default, Deserialize)]
pub struct DetailQuery {
    #[serde(default)]
    done: Option<String>,
    #[serde(default)]
    page: Option<u64>,
}

async fn detail_page(
    state: &AdminState,
    c: &Console,
    id: i64,
    q: &DetailQuery,
    (amount, note): (String, String),
    error: FormError,
) -> Result<DetailPage, Html> {
    let u = visible_user(state, &c.who, id).await?;
    let paging = Paging::at(q.page.unwrap_or(1));
    let (txs, total) = domain::list_transactions(state, &c.who, id, &paging).await?;
    let everyone = Paging {
        page: Some(1),
        per_page: Some(100),
    };
    let (keys, _) = list_keys(state, &c.who, Some(id), &everyone).await?;
    let manage = match c.who.role {
        Role::Admin => true,
        Role::Reseller => u.id != c.who.id,
        Role::Customer => false,
    };
    let credit = match c.who.role {
        Role::Admin => true,
        Role::Reseller => u.parent_id == Some(c.who.id),
        Role::Customer => false,
    };
    Ok(DetailPage {
        nav: Nav::new(c, "users").done(q.done.as_deref()),
        created_at: page::when(u.created_at),
        user: row(&u),
        manage,
        credit,
        txs: txs
            .iter()
            .map(|t| TxRow {
                kind: t.kind.clone(),
                amount: page::credits(t.amount),
                balance_after: page::credits(t.balance_after),
                note: t.note.clone().unwrap_or_default(),
                reference: t.reference.clone().unwrap_or_default(),
                at: page::when(t.created_at),
            })
            .collect(),
        tx_page: paging.page(),
        tx_pages: total.div_ceil(paging.per_page()).max(1),
        keys: keys
            .iter()
            .map(|k| KeyRow {
                id: k.id,
                name: k.name.clone(),
                preview: k.preview.clone(),
                status: k.status.clone(),
                used: page::credits(k.used),
            })
            .collect(),
        amount,
        note,
        error,
    })
}

/// `GET /console/users/{id}`: 404 outside the caller's scope.
pub async fn show(
    state: web::Data<AdminState>,
    c: Console,
    id: web::Path<i64>,
    q: web::Query<DetailQuery>,
) -> Result<HttpResponse, Html> {
    let p = detail_page(
        &state,
        &c,
        id.into_inner(),
        &q,
        (String::new(), String::new()),
        FormError::none(),
    )
    .await?;
    page::ok(&p)
}

#[derive(Deserialize)]
pub struct CreditsForm {
    #[serde(default)]
    amount: String,
    #[serde(default)]
    note: String,
}

/// `POST /console/users/{id}/credits`: an admin mints (or removes); a reseller moves
/// credits between itself and its customer.
pub async fn credits(
    state: web::Data<AdminState>,
    c: Console,
    id: web::Path<i64>,
    body: web::Bytes,
) -> Result<HttpResponse, Html> {
    let id = id.into_inner();
    let form: CreditsForm = c.form(&body)?;
    let result = match page::number::<f64>("amount", &form.amount) {
        Ok(Some(amount)) => {
            domain::move_credits(&state, &c.who, id, amount, Some(&form.note)).await
        }
        Ok(None) => Err(ApiError::invalid("amount", "give an amount of credits")),
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => Ok(page::see_other(&format!(
            "/console/users/{id}?done=credits_moved"
        ))),
        Err(e) if page::fixable(&e) => {
            let error = match e {
                ApiError::InsufficientBalance => FormError {
                    field: Some("amount"),
                    message: Some(
                        "insufficient balance: the account the credits come from has too few"
                            .to_owned(),
                    ),
                    shown: &["amount", "note"],
                },
                ref other => FormError::of(other, &["amount", "note"]),
            };
            let p = detail_page(
                &state,
                &c,
                id,
                &DetailQuery::default(),
                (form.amount, form.note),
                error,
            )
            .await?;
            page::again(&e, &p)
        }
        Err(e) => Err(Html(e)),
    }
}

/// `POST /console/users/{id}/status`: disabling stops the user's keys at once.
pub async fn set_status(
    state: web::Data<AdminState>,
    c: Console,
    id: web::Path<i64>,
    body: web::Bytes,
) -> Result<HttpResponse, Html> {
    let id = id.into_inner();
    let form: page::StatusForm = c.form(&body)?;
    let patch = PatchUser {
        status: Some(form.status),
        ..PatchUser::default()
    };
    match domain::update_user(&state, &c.who, id, patch).await {
        Ok(_) => Ok(page::see_other(&format!(
            "/console/users/{id}?done=user_status"
        ))),
        Err(e) if page::fixable(&e) => {
            let p = detail_page(
                &state,
                &c,
                id,
                &DetailQuery::default(),
                (String::new(), String::new()),
                FormError::of(&e, &[]),
            )
            .await?;
            page::again(&e, &p)
        }
        Err(e) => Err(Html(e)),
    }
}
