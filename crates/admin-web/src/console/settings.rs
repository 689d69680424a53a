//! Settings (admin): retries, circuit-breaker thresholds and the health-check
//! interval; and the cache refresh button.

use actix_web::{HttpResponse, web};
use askama::Template;
use serde::Deserialize;

use crate::console::page::{self, FormError, Html, Nav};
use crate::console::session::Console;
use crate::settings::{self as domain, Tunables, TunablesPatch};
use crate::{AdminState, ApiError, ops};

/// The form's fields, as typed.
#[derive(Default, Deserialize)]
pub struct SettingsForm {
    #[serde(default)]
    max_tries: String,
    #[serde(default)]
    breaker_failures: String,
    #[serde(default)]
    breaker_window_s: String,
    #[serde(default)]
    breaker_cooldown_s: String,
    #[serde(default)]
    health_interval_s: String,
}

const FIELDS: &[&str] = &[
    "max_tries",
    "breaker_failures",
    "breaker_window_s",
    "breaker_cooldown_s",
    "health_interval_s",
];

impl SettingsForm {
    fn of(t: &Tunables) -> Self {
        SettingsForm {
            max_tries: t.max_tries.to_string(),
            breaker_failures: t.breaker_failures.to_string(),
            breaker_window_s: t.breaker_window_s.to_string(),
            breaker_cooldown_s: t.breaker_cooldown_s.to_string(),
            health_interval_s: t.health_interval_s.to_string(),
        }
    }

    fn patch(&self) -> Result<TunablesPatch, ApiError> {
        Ok(TunablesPatch {
            max_tries: page::number("max_tries", &self.max_tries)?,
            breaker_failures: page::number("breaker_failures", &self.breaker_failures)?,
            breaker_window_s: page::number("breaker_window_s", &self.breaker_window_s)?,
            breaker_cooldown_s: page::number("breaker_cooldown_s", &self.breaker_cooldown_s)?,
            health_interval_s: page::number("health_interval_s", &self.health_interval_s)?,
        })
    }
}

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsPage {
    nav: Nav,
    form: SettingsForm,
    error: FormError,
}

#[derive(Deserialize)]
pub struct DoneQuery {
    #[serde(default)]
    done: Option<String>,
}

/// `GET /console/settings`
pub async fn show(
    state: web::Data<AdminState>,
    c: Console,
    q: web::Query<DoneQuery>,
) -> Result<HttpResponse, Html> {
    c.who.require_admin()?;
    let t = domain::current(&state).await?;
    page::ok(&SettingsPage {
        nav: Nav::new(&c, "settings").done(q.done.as_deref()),
        form: SettingsForm::of(&t),
        error: FormError::none(),
    })
}

/// `POST /console/settings`
pub async fn save(
    state: web::Data<AdminState>,
    c: Console,
    body: web::Bytes,
) -> Result<HttpResponse, Html> {
    let form: SettingsForm = c.form(&body)?;
    c.who.require_admin()?;
    let result = match form.patch() {
        Ok(p) => domain::save(&state, &c.who, &p).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(_) => Ok(page::see_other("/console/settings?done=settings_saved")),
        Err(e) if page::fixable(&e) => page::again(
            &e,
            &SettingsPage {
                nav: Nav::new(&c, "settings"),
                form,
                error: FormError::of(&e, FIELDS),
            },
        ),
        Err(e) => Err(Html(e)),
    }
}

/// `POST /console/cache/refresh`: every instance reloads its catalog.
pub async fn refresh_cache(
    state: web::Data<AdminState>,
    c: Console,
    body: web::Bytes,
) -> Result<HttpResponse, Html> {
    let _: DoneQuery = c.form(&body)?;
    let n = ops::refresh_cache(&state, &c.who).await?;
    let t = domain::current(&state).await?;
    page::ok(&SettingsPage {
        nav: Nav::new(&c, "settings").flash(format!(
            "Cache refreshed on every instance: {} enabled channels, {} keys, {} users, {} priced models.",
            n.channels, n.keys, n.users, n.models_priced
        )),
        form: SettingsForm::of(&t),
        error: FormError::none(),
    })
}
