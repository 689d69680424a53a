//! The task engine (API.md §4): long jobs are submitted, then polled. Every family
//! (videos now; Midjourney, Suno and the native video shapes next) shares what is
//! here: admission like the relay's (key, address, model, price, rpm), a durable hold
//! written with the task, submission that never sends a job twice, a poller that
//! leases due tasks so any number of instances poll without doing a task twice, and
//! exactly one charge or release per task (`billing::task`).
//!
//! A family supplies its client shapes and, per channel type, how to submit, how to
//! read the upstream's view of a task, and where its content is ([`videos`]).

pub mod dashscope;
pub mod hook;
pub mod kling;
pub mod midjourney;
pub mod seedance;
pub mod suno;
pub mod veo;
pub mod videos;

use billing::Cost;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use billing::task::{self as store_task, NewTask, Outcome, Progress, State, Submitted};
use billing::{BillingError, Price, Usage, Wallet};
use bytes::Bytes;
use chrono::Utc;
use sea_orm::DatabaseConnection;
use serde::{Deserialize, Serialize};
use store::catalog::{ChannelEntry, ChannelKind, ChannelSecret, UpstreamCost};
use store::entities::task;

use futures_util::StreamExt;

use crate::RelayError;
use crate::admission::{self, Caller};
use crate::fault::{self, ErrorFields, Fault};
use crate::pipeline::{Pipeline, Routing};
use crate::upstream::{Failure, upstream_message};

/// Polls that got a status word no family knows, process-wide (`/metrics`:
/// `tollgate_task_unknown_status`).
pub static UNKNOWN_STATUS: AtomicU64 = AtomicU64::new(0);

/// The engine's timing (`TOLLGATE_TASK_*`).
#[derive(Clone, Copy, Debug)]
pub struct TaskSettings {
    /// The first poll interval; polls slow down from here as a task ages.
    pub poll_min: Duration,
    /// The slowest poll interval.
    pub poll_max: Duration,
    /// A task still open this long after submission expires (its hold released).
    pub deadline: Duration,
    /// How long a poller holds a task it leased.
    pub lease: Duration,
    /// Tasks leased per round.
    pub batch: u64,
    /// Deliver client callbacks to, and fetch upstream results from, any address
    /// (tests on loopback only; never in production).
    pub allow_private_addresses: bool,
}

impl Default for TaskSettings {
    fn default() -> Self {
        TaskSettings {
            poll_min: Duration::from_secs(5),
            poll_max: Duration::from_secs(60),
            deadline: Duration::from_secs(86_400),
            // Longer than any one poll (a channel's timeout) and a batch round: a
            // lease that ran out mid-poll would let another instance poll too.
            lease: Duration::from_secs(900),
            batch: 200,
            allow_private_addresses: false,
        }
    }
}

/// The price a task was held at, stored with it so the final charge uses it even if
/// the model's price changes meanwhile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pricing {
    pub per_request: Option<i64>,
    pub per_second: Option<i64>,
    /// Micro-credits per 1M output tokens (upstreams that report them).
    #[serde(default)]
    pub output: i64,
    #[serde(default)]
    pub per_image: Option<i64>,
    pub multiplier_ppm: i64,
    /// The seconds held for (what the client asked, or the upstream's default).
    pub seconds: i64,
    /// The output tokens held for (the most the asked output can use).
    #[serde(default)]
    pub tokens: i64,
    /// The images held for.
    #[serde(default)]
    pub images: i64,
    /// Whether the key's credit limit holds a share (for the record).
    pub key_limited: bool,
}

impl Pricing {
    fn of(price: &Price, multiplier_ppm: i64, asked: &TaskRequest, key_limited: bool) -> Self {
        Pricing {
            per_request: price.per_request,
            per_second: price.per_second,
            output: price.output,
            per_image: price.per_image,
            multiplier_ppm,
            seconds: asked.seconds,
            tokens: asked.tokens,
            images: asked.images,
            key_limited,
        }
    }

    /// What `seconds` of output, using `tokens`, in `images` images, cost at this price.
    pub fn cost(&self, seconds: i64, tokens: i64, images: i64) -> i64 {
        let price = Price {
            per_request: self.per_request,
            per_second: self.per_second,
            output: self.output,
            per_image: self.per_image,
            ..Price::default()
        };
        price.cost(
            &Usage {
                seconds,
                completion_tokens: tokens,
                images,
                ..Usage::default()
            },
            self.multiplier_ppm,
        )
    }

    /// The hold: the cost of what was asked.
    pub fn hold(&self) -> i64 {
        self.cost(self.seconds, self.tokens, self.images)
    }
}

/// Whether a price can meter a task asking for `seconds`, `tokens` and `images`: per
/// request, or in a unit the task is held in (per image for images, per second or
/// per output token for video). A model priced only in another unit is refused, or it
/// would be free by accident.
pub fn meters(price: &Price, req: &TaskRequest) -> bool {
    price.per_request.is_some()
        || if req.images > 0 {
            price.per_image.is_some()
        } else {
            price.per_second.is_some() || (price.output > 0 && req.tokens > 0)
        }
}

/// What an upstream says of a task when asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// `None`: a status word this build does not know (the task stays open).
    pub state: Option<State>,
    /// The upstream's own word.
    pub word: String,
    pub progress: i32,
    /// Seconds of output the upstream reports (charged instead of the hold's).
    pub seconds: Option<i64>,
    /// Output tokens the upstream reports (Seedance).
    pub tokens: Option<i64>,
    /// Images the upstream made (image tasks).
    pub images: Option<i64>,
    /// Where the result is, as the upstream says (never shown to clients).
    pub result: Option<serde_json::Value>,
    /// Why it failed, as the upstream says (`code: message`).
    pub error: Option<String>,
}

/// What a submission sends upstream.
pub struct Submission {
    /// The upstream path (`/v1/videos`, `/v1/videos/{id}/remix`).
    pub path: String,
    /// The body, with the upstream's model name in it.
    pub body: Bytes,
    pub content_type: String,
}

/// Builds the upstream request for a channel, given the upstream's model name and
/// (for a continuation) the parent's upstream id.
pub type Builder = Box<dyn Fn(&ChannelEntry, &str, Option<&str>) -> Submission + Send + Sync>;

/// A task to submit, as a family's handler parsed it.
pub struct TaskRequest {
    pub key: Option<String>,
    pub ip: Option<std::net::IpAddr>,
    pub family: &'static str,
    pub action: &'static str,
    pub model: String,
    /// The task this one continues (a remix): the same channel and key must serve it.
    pub parent: Option<task::Model>,
    /// The seconds to hold for.
    pub seconds: i64,
    /// The output tokens to hold for (0 when the upstream reports none).
    pub tokens: i64,
    /// The images to hold for (image tasks).
    pub images: i64,
    /// What the family's answers echo (JSON).
    pub meta: serde_json::Value,
    pub idempotency_key: Option<String>,
    /// The client's callback URL (checked here, kept with the task, never sent upstream).
    pub hook: Option<String>,
    /// The address the client called (`scheme://host`): a callback's result URLs are
    /// signed under it.
    pub base: Option<String>,
    /// The name the task is priced under when it asks for a dearer variant of the
    /// model (`{model}-pro`); `None`: the model's own price.
    pub price_model: Option<String>,
    /// Names of a price for the resolution asked (`{model}-1080p`), used when set;
    /// otherwise the model's own price stands for every resolution.
    pub price_variants: Vec<String>,
    /// What makes two submissions the same (for `Idempotency-Key`): the parsed
    /// fields, the parent, digests of any files; never the raw bytes (a client's
    /// retry of a form has a new boundary).
    pub fingerprint: String,
    pub endpoint: &'static str,
    pub build: Builder,
}

/// The task engine: the database, the wallet, and this instance's name as a poller.
pub struct TaskEngine {
    pub db: DatabaseConnection,
    pub wallet: Arc<Wallet>,
    pub settings: TaskSettings,
    /// This instance's name in task leases.
    pub owner: String,
    /// Client callbacks.
    pub hooks: hook::Hooks,
    /// Signs result URLs (the instance secret key: every instance accepts them).
    pub signer: store::secret::SecretBox,
}

/// Deliveries of a callback before it is given up (the waits between them double
/// from `TOLLGATE_TASK_POLL_S`, at most an hour).
pub const HOOK_TRIES: i32 = 8;

pub use billing::task::{URL_TTL_S, result_urls, url_message};

/// Upstream attempts of one submission, for the generation record.
#[derive(Serialize)]
struct Attempt {
    channel_id: i64,
    status: Option<u16>,
    error: Option<String>,
}

impl TaskEngine {
    pub fn new(
        db: DatabaseConnection,
        wallet: Arc<Wallet>,
        settings: TaskSettings,
        signer: store::secret::SecretBox,
    ) -> Result<Self, RelayError> {
        Ok(TaskEngine {
            db,
            wallet,
            settings,
            owner: format!("tasks-{}", uuid::Uuid::now_v7().simple()),
            hooks: hook::Hooks::new(settings.allow_private_addresses)?,
            signer,
        })
    }

    /// Veo's result URIs: Gemini-API file URIs on Tollgate
    /// (`/v1beta/files/{task}-{index}:download?alt=media`), signed like
    /// [`TaskEngine::signed_urls`] (a browser can fetch them) and served to the owner's
    /// key too (google-genai's `files.download` rebuilds the URL from the file name).
    pub fn signed_file_uris(&self, t: &task::Model, base: &str) -> Vec<String> {
        let expires = Utc::now().timestamp() + URL_TTL_S;
        let signature = self.signer.sign(&url_message(&t.id, t.user_id, expires));
        (0..result_urls(t).len())
            .map(|i| {
                format!(
                    "{}/v1beta/files/{}-{i}:download?alt=media&expires={expires}&signature={signature}",
                    base.trim_end_matches('/'),
                    t.id
                )
            })
            .collect()
    }

    /// Signed Tollgate URLs of a task's results under `base` (`scheme://host`), for
    /// its owner, valid [`URL_TTL_S`]; `index` picks one of several.
    pub fn signed_urls(&self, t: &task::Model, base: &str) -> Vec<String> {
        store_task::signed_urls(&self.signer, t, base, Utc::now().timestamp() + URL_TTL_S)
    }

    /// The caller behind `key`, allowed from `ip`.
    pub fn caller(
        &self,
        routing: Routing<'_>,
        key: Option<&str>,
        ip: Option<std::net::IpAddr>,
    ) -> Result<Caller, RelayError> {
        let caller = admission::authenticate(routing.catalog, key)?;
        admission::check_ip(&caller, ip)?;
        Ok(caller)
    }

    /// Submits a task: admits it like a relay request, holds its price with the task
    /// row, and sends it to one upstream. A refusal costs nothing (the task ends
    /// failed and the client gets the error); an answer lost after sending leaves the
    /// task open (never sent again) until the upstream reports it or its deadline
    /// releases it.
    pub async fn submit(
        &self,
        pipeline: &Pipeline,
        routing: Routing<'_>,
        req: TaskRequest,
    ) -> Result<task::Model, RelayError> {
        if !pipeline.availability.serving() {
            return Err(RelayError::ServiceUnavailable);
        }
        let caller = self.caller(routing, req.key.as_deref(), req.ip)?;
        let family_kind = served_by(req.family);
        let mut admitted = admission::admit_where(
            routing.catalog,
            routing.router,
            &caller,
            &req.model,
            family_kind,
            |p| meters(p, &req),
        )?;
        // A dearer variant of the model (Kling's `pro` mode) is priced under its own
        // name, or not served: it must never go at the base model's price.
        if let Some(price) = req
            .price_variants
            .iter()
            .filter_map(|v| routing.catalog.prices.get(v))
            .copied()
            .find(|p| meters(p, &req))
        {
            admitted.price = price;
        }
        if let Some(variant) = &req.price_model {
            admitted.price = routing
                .catalog
                .prices
                .get(variant)
                .copied()
                .filter(|p| meters(p, &req))
                .ok_or_else(|| RelayError::ModelNotPriced(variant.clone()))?;
        }
        pipeline.check_rpm(&caller).await?;
        let mut meta = req.meta.clone();
        if let (Some(base), Some(m)) = (&req.base, meta.as_object_mut()) {
            m.insert("base".into(), serde_json::Value::String(base.clone()));
        }
        if let Some(url) = &req.hook {
            let checked = hook::check(url, self.hooks.allow_private()).await?;
            if let Some(m) = meta.as_object_mut() {
                m.insert(
                    "hook".into(),
                    serde_json::Value::String(checked.to_string()),
                );
            }
        }
        let hash = store::hash_secret(&format!("{}\n{}", req.endpoint, req.fingerprint));
        if let Some(idem) = &req.idempotency_key
            && let Some(existing) = self.idempotent(caller.key.id, idem, &hash).await?
        {
            return Ok(existing);
        }
        // A retry of a submission already made is answered above whatever the
        // limits; a new one is refused over the key's tokens per minute, and is in
        // flight (one of the key's slots) until the upstream has answered it.
        pipeline.check_tpm(&caller).await?;
        let _slot = pipeline.take_slot(&caller).await?;
        let key_limited = caller.key.credit_limit.is_some();
        let pricing = Pricing::of(&admitted.price, admitted.multiplier_ppm, &req, key_limited);
        let id = format!("task_{}", uuid::Uuid::now_v7().simple());
        let new = NewTask {
            id: id.clone(),
            user_id: caller.user.id,
            key_id: caller.key.id,
            key_limited,
            family: req.family.to_owned(),
            action: req.action.to_owned(),
            model: req.model.clone(),
            parent_id: req.parent.as_ref().map(|p| p.id.clone()),
            pricing: serde_json::to_string(&pricing).map_err(|_| RelayError::Internal)?,
            held: pricing.hold(),
            idempotency_key: req.idempotency_key.clone(),
            request_hash: Some(hash.clone()),
            meta: meta.to_string(),
            endpoint: req.endpoint.to_owned(),
            client_ip: req.ip.map(|i| i.to_string()),
            first_poll_at: Utc::now() + chrono_duration(self.settings.lease),
            deadline_at: Utc::now() + chrono_duration(self.settings.deadline),
        };
        let opened = match store_task::open(&self.db, &self.wallet, new).await {
            Ok(t) => t,
            Err(e) => {
                // Two submissions with one Idempotency-Key: the second insert fails
                // on the unique index (or its hold finds the first one's taken the
                // money); the first one's task is the answer.
                if let Some(idem) = &req.idempotency_key
                    && let Some(existing) = self.idempotent(caller.key.id, idem, &hash).await?
                {
                    return Ok(existing);
                }
                return Err(store_failure(&e));
            }
        };
        self.send(pipeline, routing, &caller, &req, opened).await
    }

    /// The task a key already submitted under `idem`: the same when the request is
    /// the same, else `409`.
    async fn idempotent(
        &self,
        key_id: i64,
        idem: &str,
        hash: &str,
    ) -> Result<Option<task::Model>, RelayError> {
        let found = store_task::find_idempotent(&self.db, key_id, idem)
            .await
            .map_err(|e| store_failure(&e))?;
        match found {
            Some(t) if t.request_hash.as_deref() == Some(hash) => Ok(Some(t)),
            Some(_) => Err(RelayError::Conflict(
                "this Idempotency-Key was used with another request".into(),
            )),
            None => Ok(None),
        }
    }

    /// Sends the opened task to channels in turn until one takes it.
    async fn send(
        &self,
        pipeline: &Pipeline,
        routing: Routing<'_>,
        caller: &Caller,
        req: &TaskRequest,
        opened: task::Model,
    ) -> Result<task::Model, RelayError> {
        let started = std::time::Instant::now();
        let kind = served_by(req.family);
        let mut tried: Vec<i64> = Vec::new();
        let mut attempts: Vec<Attempt> = Vec::new();
        let mut last = RelayError::NoAvailableChannel;
        for _ in 0..routing.max_tries.max(1) {
            let (channel, key_id, key, parent_upstream) = match &req.parent {
                Some(parent) => {
                    // A continuation goes where its parent is, with the same key.
                    let Some((channel, key)) = parent_channel(routing, parent) else {
                        last = RelayError::NoAvailableChannel;
                        break;
                    };
                    (channel, key.id, key, parent.upstream_task_id.clone())
                }
                None => {
                    let Some(channel) =
                        routing
                            .router
                            .pick_where(&caller.user.group, &req.model, |c| {
                                kind(c.kind) && !tried.contains(&c.id)
                            })
                    else {
                        break;
                    };
                    let Some(key) = channel.rotate_key(&[]) else {
                        tried.push(channel.id);
                        continue;
                    };
                    let key = key.clone();
                    (channel, key.id, key, None)
                }
            };
            tried.push(channel.id);
            let upstream_model = channel.upstream_model(&req.model);
            let mut sub = (req.build)(&channel, &upstream_model, parent_upstream.as_deref());
            if channel.kind == ChannelKind::Kling && kling::tags(&sub.path) {
                sub.body = kling::tagged(&sub.body, &opened.id);
            }
            let sub_path = sub.path.clone();
            // DashScope runs these only as tasks, and only when asked to.
            let extra: Vec<(&'static str, String)> = if channel.kind == ChannelKind::Dashscope {
                vec![("x-dashscope-async", "enable".to_owned())]
            } else {
                Vec::new()
            };
            let sent = pipeline
                .client
                .send(
                    reqwest::Method::POST,
                    &channel,
                    &key,
                    (&sub.path, &upstream_model),
                    Some((sub.body, &sub.content_type)),
                    &extra,
                )
                .await;
            let failure = match sent {
                Ok(resp) if resp.status().is_success() => {
                    let body = crate::upstream::read_body(
                        resp,
                        Duration::from_secs(channel.timeout_s.max(1)),
                        1 << 20,
                    )
                    .await;
                    let observed = body.as_ref().ok().and_then(|b| observe(channel.kind, b));
                    // Some upstreams refuse with a success status and an error code
                    // in the body (Kling's `code`, DashScope's `code`): a refusal.
                    if observed.is_none()
                        && let Some(message) = body.as_deref().ok().and_then(refusal_in)
                    {
                        attempts.push(Attempt {
                            channel_id: channel.id,
                            status: Some(200),
                            error: Some("refused".into()),
                        });
                        last = RelayError::Rejected {
                            status: 400,
                            message,
                            body: body.ok(),
                        };
                        break;
                    }
                    attempts.push(Attempt {
                        channel_id: channel.id,
                        status: Some(200),
                        error: None,
                    });
                    return self
                        .taken(
                            &opened,
                            &channel,
                            key_id,
                            (&upstream_model, &sub_path),
                            observed,
                            &attempts,
                            started,
                        )
                        .await;
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let body = resp.bytes().await.unwrap_or_default();
                    Failure::Status { status, body }
                }
                Err(f) => f,
            };
            attempts.push(Attempt {
                channel_id: channel.id,
                status: match &failure {
                    Failure::Status { status, .. } => Some(*status),
                    _ => None,
                },
                error: Some(failure.class()),
            });
            if failure.may_have_arrived() || timed_out_behind_a_proxy(&failure) {
                // The upstream may be doing the job: never send it again. The task
                // stays open without an upstream id; its deadline releases the hold.
                tracing::warn!(task.id = %opened.id, channel.id = channel.id, "task submission unconfirmed; kept open until its deadline");
                return self
                    .taken(
                        &opened,
                        &channel,
                        key_id,
                        (&upstream_model, &sub_path),
                        None,
                        &attempts,
                        started,
                    )
                    .await;
            }
            match &failure {
                Failure::Status { status, body } => {
                    if fault::classify_status(*status, &ErrorFields::parse(body)) == Fault::Request
                    {
                        last = RelayError::Rejected {
                            status: *status,
                            message: upstream_message(body, *status),
                            body: Some(body.clone()),
                        };
                        break;
                    }
                    last = RelayError::Upstream;
                }
                _ => last = RelayError::Upstream,
            }
            if req.parent.is_some() {
                break;
            }
        }
        // Nobody took it: it ends failed, and its hold goes back.
        let outcome = Outcome {
            state: State::Failed,
            cost: 0,
            upstream_status: None,
            result: None,
            error: Some(last.code().to_owned()),
            progress: 0,
            upstream_cost: 0,
        };
        for wait in [0, 50, 250] {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            match store_task::finish(&self.db, &self.wallet, &opened.id, &outcome).await {
                Ok(_) => break,
                Err(e) => {
                    tracing::error!(error = ?e, task.id = %opened.id, "releasing a refused task failed; tried again, then by the poller")
                }
            }
        }
        Err(last)
    }

    /// Records the channel that took the task (with what it said, when readable).
    #[allow(clippy::too_many_arguments)]
    async fn taken(
        &self,
        opened: &task::Model,
        channel: &ChannelEntry,
        key_id: i64,
        (upstream_model, upstream_path): (&str, &str),
        observed: Option<(String, Observed)>,
        attempts: &[Attempt],
        started: std::time::Instant,
    ) -> Result<task::Model, RelayError> {
        let (upstream_id, seen) = match observed {
            Some((id, seen)) => (Some(id), Some(seen)),
            None => (None, None),
        };
        if upstream_id.is_none() {
            tracing::error!(task.id = %opened.id, channel.id = channel.id, "the upstream took a task without an id we can read; it is released at its deadline");
        }
        let state = seen
            .as_ref()
            .and_then(|s| s.state)
            .filter(|s| s.is_open())
            .unwrap_or(State::Queued);
        let submitted = Submitted {
            channel_id: channel.id,
            channel_key_id: key_id,
            provider_name: channel.name.clone(),
            upstream_model: upstream_model.to_owned(),
            upstream_task_id: upstream_id.clone(),
            upstream_path: upstream_path.to_owned(),
            state,
            upstream_status: seen
                .as_ref()
                .map(|s| s.word.clone())
                .or_else(|| upstream_id.is_none().then(|| "unconfirmed".to_owned())),
            progress: seen.as_ref().map_or(0, |s| s.progress),
            attempts: serde_json::to_string(attempts).ok(),
            next_poll_at: Utc::now() + chrono_duration(self.settings.poll_min),
            latency_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
        };
        // The upstream has the job: recording that must not be lost to a passing
        // database hiccup (the client, told of a failure, would submit it again).
        let mut recorded = Err(BillingError::Insufficient);
        for wait in [0, 50, 250, 1000] {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            recorded = store_task::submitted(&self.db, &opened.id, &submitted).await;
            if recorded.is_ok() {
                break;
            }
        }
        recorded.map_err(|e| store_failure(&e))?;
        let mut task = store_task::find(&self.db, &opened.id)
            .await
            .map_err(|e| store_failure(&e))?
            .ok_or(RelayError::Internal)?;
        // Some upstreams answer a submission already finished (or refused).
        if let Some(seen) = seen.filter(|s| s.state.is_some_and(|st| !st.is_open())) {
            self.conclude(&task, &seen, channel.costs.get(&task.model).copied())
                .await;
            task = store_task::find(&self.db, &opened.id)
                .await
                .map_err(|e| store_failure(&e))?
                .ok_or(RelayError::Internal)?;
        }
        Ok(task)
    }

    /// `id` as its owner sees it, refreshed from the upstream first when it is open
    /// and its last look is older than the shortest poll interval (one refresh at a
    /// time: the refresh leases the task like a poller).
    pub async fn read(
        &self,
        pipeline: &Pipeline,
        routing: Routing<'_>,
        caller: &Caller,
        id: &str,
    ) -> Result<task::Model, RelayError> {
        let task = self.owned(caller, id).await?;
        let open = State::parse(&task.state).is_some_and(State::is_open);
        let stale = Utc::now() - task.updated_at >= chrono_duration(self.settings.poll_min);
        if open && stale && task.upstream_task_id.is_some() {
            let leased = store_task::lease_one(
                &self.db,
                id,
                &self.owner,
                chrono_duration(self.settings.lease),
            )
            .await
            .map_err(|e| store_failure(&e))?;
            if let Some(leased) = leased {
                self.poll(pipeline, routing, &leased).await;
                return self.owned(caller, id).await;
            }
        }
        Ok(task)
    }

    /// `id` when the caller's user owns it; any other task is 404.
    pub async fn owned(&self, caller: &Caller, id: &str) -> Result<task::Model, RelayError> {
        store_task::find_owned(&self.db, id, caller.user.id)
            .await
            .map_err(|e| store_failure(&e))?
            .ok_or_else(|| RelayError::NotFound(format!("no task '{id}'")))
    }

    /// One round of the background poller: leases due tasks and polls them, paced
    /// per channel. Returns how many were polled.
    pub async fn poll_due(&self, pipeline: &Pipeline, routing: Routing<'_>) -> usize {
        let leased = match store_task::lease_due(
            &self.db,
            &self.owner,
            chrono_duration(self.settings.lease),
            self.settings.batch,
        )
        .await
        {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = ?e, "leasing due tasks failed");
                return 0;
            }
        };
        let n = leased.len();
        // Paced per channel: one poll in flight per channel (its tasks one after
        // another, or a batch at a time where the upstream reads many tasks in one
        // call), up to eight channels at once, so a channel with many open tasks is
        // never hit by a burst and one slow upstream does not hold up the others.
        let mut by_channel: std::collections::BTreeMap<Option<i64>, Vec<&task::Model>> =
            std::collections::BTreeMap::new();
        for t in &leased {
            by_channel.entry(t.channel_id).or_default().push(t);
        }
        futures_util::stream::iter(by_channel.into_values())
            .for_each_concurrent(8, |tasks| async move {
                let (batched, single): (Vec<&task::Model>, Vec<&task::Model>) =
                    tasks.into_iter().partition(|t| {
                        t.upstream_task_id.is_some()
                            && task_channel(routing, t).is_some_and(|(c, _)| batches(c.kind))
                    });
                self.poll_batched(pipeline, routing, &batched).await;
                for t in single {
                    self.poll(pipeline, routing, t).await;
                }
            })
            .await;
        n
    }

    /// Polls the leased tasks of one channel whose upstream reads many tasks in one
    /// call (Midjourney's `list-by-condition`, Suno's `fetch`): one call per key and
    /// [`BATCH_IDS`] tasks.
    async fn poll_batched(
        &self,
        pipeline: &Pipeline,
        routing: Routing<'_>,
        tasks: &[&task::Model],
    ) {
        let mut by_key: std::collections::BTreeMap<i64, Vec<&task::Model>> =
            std::collections::BTreeMap::new();
        for t in tasks {
            by_key
                .entry(t.channel_key_id.unwrap_or(0))
                .or_default()
                .push(t);
        }
        for group in by_key.values() {
            for chunk in group.chunks(BATCH_IDS) {
                let Some((channel, key)) = task_channel(routing, chunk[0]) else {
                    continue;
                };
                let ids: Vec<&str> = chunk
                    .iter()
                    .filter_map(|t| t.upstream_task_id.as_deref())
                    .collect();
                let seen = look_many(pipeline, &channel, &key, &ids).await;
                let now = Utc::now();
                for t in chunk {
                    let looked = match (&seen, t.upstream_task_id.as_deref()) {
                        (Ok(found), Some(id)) => match found.get(id) {
                            Some(o) => Ok(Looked::Seen(o.clone())),
                            // Left out of a batch proves nothing (a proxy may list only
                            // what it holds in memory): asked on its own, only a real
                            // "not found" counts.
                            None => look(pipeline, &channel, &key, t, id).await,
                        },
                        _ => Err(()),
                    };
                    let cost = channel.costs.get(&t.model).copied();
                    self.looked(t, looked, now, cost).await;
                }
            }
        }
    }

    /// Polls one leased task and applies what the upstream says.
    async fn poll(&self, pipeline: &Pipeline, routing: Routing<'_>, t: &task::Model) {
        let now = Utc::now();
        let expired = now >= t.deadline_at;
        if expired && t.upstream_task_id.is_none() {
            self.expire(t).await;
            return;
        }
        let found = task_channel(routing, t);
        let cost = found
            .as_ref()
            .and_then(|(c, _)| c.costs.get(&t.model).copied());
        let mut upstream_id = t.upstream_task_id.clone();
        if upstream_id.is_none()
            && let Some((channel, key)) = &found
        {
            // A submission whose answer was lost: found among the upstream's tasks,
            // never sent again.
            upstream_id = self.reconcile(pipeline, channel, key, t).await;
        }
        let looked = match (&upstream_id, found) {
            (Some(upstream_id), Some((channel, key))) => {
                look(pipeline, &channel, &key, t, upstream_id).await
            }
            // Nothing to ask (an unconfirmed submission not found upstream, or its
            // channel or key is gone): wait for the deadline.
            _ => Err(()),
        };
        self.looked(t, looked, now, cost).await;
    }

    /// Applies a look at a leased task, or expires it when its deadline has passed
    /// (one last look first: a task that finished in time is charged).
    async fn looked(
        &self,
        t: &task::Model,
        looked: Result<Looked, ()>,
        now: chrono::DateTime<Utc>,
        cost: Option<UpstreamCost>,
    ) {
        let finished =
            matches!(&looked, Ok(Looked::Seen(seen)) if seen.state.is_some_and(|s| !s.is_open()));
        if now >= t.deadline_at && !finished {
            self.expire(t).await;
            return;
        }
        self.apply(t, looked, now, cost).await;
    }

    /// Looks for an unconfirmed submission among the upstream's recent tasks, where
    /// the upstream lists them in a way that tells it apart, and links the task to it
    /// (never sent again):
    /// - OpenAI's videos: the oldest of the same model and prompt, made while the
    ///   submission could have been in flight, that no other task has; looked for
    ///   only while no other submission of the model is being sent (its video could
    ///   be in the list before its answer reaches Tollgate);
    /// - Kling: the one carrying the task's id as its `external_task_id` (exact).
    ///
    /// Elsewhere the deadline releases the hold. Ark and DashScope list their tasks
    /// without prompt or tag, so a lost submission could be matched only by model
    /// and time: a guess that could hand one tenant's video to another (two lost at
    /// once, two channels on one account, jobs made outside Tollgate). Veo,
    /// Midjourney and Suno do not list tasks by anything Tollgate sent.
    async fn reconcile(
        &self,
        pipeline: &Pipeline,
        channel: &ChannelEntry,
        key: &ChannelSecret,
        t: &task::Model,
    ) -> Option<String> {
        let upstream_model = t.upstream_model.as_deref().unwrap_or(&t.model);
        let path = match channel.kind {
            ChannelKind::OpenAi => {
                let since = Utc::now() - chrono_duration(IN_FLIGHT);
                if store_task::sending(&self.db, &t.id, &t.model, since)
                    .await
                    .unwrap_or(true)
                {
                    return None;
                }
                "/v1/videos?limit=100&order=desc".to_owned()
            }
            ChannelKind::Kling if kling::tags(t.upstream_path.as_deref().unwrap_or_default()) => {
                kling::list_path(t.upstream_path.as_deref().unwrap_or_default())
            }
            _ => return None,
        };
        let resp = pipeline
            .client
            .send(
                reqwest::Method::GET,
                channel,
                key,
                (&path, upstream_model),
                None,
                &[],
            )
            .await
            .ok()?;
        if !resp.status().is_success() {
            tracing::warn!(task.id = %t.id, status = resp.status().as_u16(), "listing the upstream's tasks failed");
            return None;
        }
        let body = crate::upstream::read_body(
            resp,
            Duration::from_secs(channel.timeout_s.max(1)),
            8 << 20,
        )
        .await
        .ok()?;
        let candidates = match channel.kind {
            ChannelKind::Kling => kling::find_tagged(&body, &t.id).into_iter().collect(),
            _ => {
                let meta: serde_json::Value = serde_json::from_str(&t.meta).ok()?;
                let prompt = meta.get("prompt")?.as_str()?;
                let made = t.created_at.timestamp();
                let window = (made - 10, made + IN_FLIGHT.as_secs() as i64);
                videos::listed_like(&body, prompt, upstream_model, window)
            }
        };
        for id in candidates {
            match store_task::link_upstream(&self.db, &t.id, channel.id, &id).await {
                Ok(true) => {
                    tracing::info!(task.id = %t.id, "an unconfirmed submission was found upstream");
                    return Some(id);
                }
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = ?e, task.id = %t.id, "linking a found submission failed");
                    return None;
                }
            }
        }
        None
    }

    /// Ends a task still open at its deadline: released, nothing charged.
    async fn expire(&self, t: &task::Model) {
        {
            let outcome = Outcome {
                state: State::Expired,
                cost: 0,
                upstream_status: t.upstream_status.clone(),
                result: None,
                error: Some("expired: the upstream did not finish before the deadline".into()),
                progress: t.progress,
                upstream_cost: 0,
            };
            match store_task::finish(&self.db, &self.wallet, &t.id, &outcome).await {
                Ok(_) => {}
                Err(e) => tracing::error!(error = ?e, task.id = %t.id, "expiring a task failed"),
            }
        }
    }

    /// Applies one look at the upstream to a leased task.
    async fn apply(
        &self,
        t: &task::Model,
        looked: Result<Looked, ()>,
        now: chrono::DateTime<Utc>,
        cost: Option<UpstreamCost>,
    ) {
        match looked {
            Ok(Looked::Seen(seen)) if seen.state.is_some_and(|s| !s.is_open()) => {
                self.conclude(t, &seen, cost).await;
            }
            Ok(Looked::Seen(seen)) => {
                if seen.state.is_none() {
                    UNKNOWN_STATUS.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(task.id = %t.id, word = %seen.word, "unknown upstream task status; the task stays open");
                }
                let state = seen
                    .state
                    .or_else(|| State::parse(&t.state))
                    .unwrap_or(State::Queued);
                let p = Progress {
                    state,
                    upstream_status: Some(seen.word.clone()),
                    progress: seen.progress,
                    next_poll_at: now + chrono_duration(self.interval(t)),
                    failed_poll: false,
                };
                if let Err(e) = store_task::progressed(&self.db, &t.id, &self.owner, &p).await {
                    tracing::warn!(error = ?e, task.id = %t.id, "recording a task's progress failed");
                }
            }
            // One 404 may be a read racing the create, or a proxy's slip: only a task
            // the upstream keeps not knowing is taken as failed.
            Ok(Looked::Gone) if t.attempts < GONE_AFTER => self.poll_failed(t, now).await,
            Ok(Looked::Gone) => {
                let seen = Observed {
                    state: Some(State::Failed),
                    word: "not_found".into(),
                    progress: t.progress,
                    seconds: None,
                    tokens: None,
                    images: None,
                    result: None,
                    error: Some("the upstream no longer knows this task".into()),
                };
                self.conclude(t, &seen, None).await;
            }
            Err(()) => self.poll_failed(t, now).await,
        }
    }

    /// The next poll interval of an open task: a fifth of its age, within the bounds.
    fn interval(&self, t: &task::Model) -> Duration {
        let age = (Utc::now() - t.created_at).to_std().unwrap_or_default();
        poll_interval(age, &self.settings)
    }

    /// Ends a task the upstream reports finished: success is charged (what the
    /// upstream reports, never more than the hold), anything else released.
    async fn conclude(&self, t: &task::Model, seen: &Observed, cost: Option<UpstreamCost>) {
        let pricing: Pricing = serde_json::from_str(&t.pricing).unwrap_or_default();
        let state = seen.state.unwrap_or(State::Failed);
        let mut seconds = seen.seconds.unwrap_or(pricing.seconds);
        if t.family == veo::FAMILY {
            // Veo reports no usage: each video asked was held; only those delivered
            // (not filtered for safety) are charged.
            let meta: serde_json::Value = serde_json::from_str(&t.meta).unwrap_or_default();
            let asked = meta
                .get("samples")
                .and_then(|n| n.as_i64())
                .unwrap_or(1)
                .max(1);
            let made = result_count(seen).unwrap_or(asked).clamp(0, asked);
            seconds = pricing.seconds * made / asked;
        }
        let tokens = seen.tokens.unwrap_or(pricing.tokens);
        let images = seen.images.unwrap_or(pricing.images);
        let mut result = seen.result.clone().unwrap_or_else(|| serde_json::json!({}));
        if let Some(r) = result.as_object_mut() {
            r.insert("seconds".into(), seconds.into());
            if let Some(t) = seen.tokens {
                r.insert("completion_tokens".into(), t.into());
            }
        }
        let outcome = Outcome {
            state,
            cost: pricing.cost(seconds, tokens, images),
            upstream_status: Some(seen.word.clone()),
            result: Some(result.to_string()),
            error: seen.error.clone(),
            progress: if state == State::Succeeded {
                100
            } else {
                seen.progress
            },
            upstream_cost: task_upstream_cost(cost, &pricing, (seconds, tokens, images)),
        };
        match store_task::finish(&self.db, &self.wallet, &t.id, &outcome).await {
            Ok(true) => {
                tracing::info!(task.id = %t.id, state = state.as_str(), "task finished");
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = ?e, task.id = %t.id, "finishing a task failed; the next poll tries again");
                // Give the lease back at once, so the next poll is not held off.
                self.poll_failed(t, Utc::now()).await;
            }
        }
    }

    /// One delivery of a task's due callback, claimed so that one instance does it;
    /// a failure is tried again later (backing off, kept in the database, so a
    /// restart loses none), up to [`HOOK_TRIES`] times.
    async fn deliver_hook(&self, t: &task::Model) {
        let claimed =
            store_task::hook_claim(&self.db, t, Utc::now() + chrono::Duration::seconds(60))
                .await
                .unwrap_or(false);
        if !claimed {
            return;
        }
        let meta: serde_json::Value = serde_json::from_str(&t.meta).unwrap_or_default();
        let Some(url) = meta.get("hook").and_then(|h| h.as_str()) else {
            let _ = store_task::hook_tried(&self.db, &t.id, t.hook_attempts, None).await;
            return;
        };
        // Result URLs are signed under the address the task was submitted to.
        let urls = match meta.get("base").and_then(|b| b.as_str()) {
            Some(base) if t.state == State::Succeeded.as_str() && t.family == veo::FAMILY => {
                self.signed_file_uris(t, base)
            }
            Some(base) if t.state == State::Succeeded.as_str() => self.signed_urls(t, base),
            _ => Vec::new(),
        };
        let body = Bytes::from(render(t, &urls).to_string());
        let tries = t.hook_attempts + 1;
        let next = match self.hooks.post_once(url, body).await {
            Ok(()) => {
                tracing::info!(task.id = %t.id, tries, "callback delivered");
                None
            }
            Err(why) if tries < HOOK_TRIES => {
                let wait = self
                    .settings
                    .poll_min
                    .saturating_mul(2u32.saturating_pow(u32::try_from(tries).unwrap_or(0)))
                    .min(Duration::from_secs(3600));
                tracing::warn!(task.id = %t.id, tries, why, "callback not delivered; tried again later");
                Some(Utc::now() + chrono_duration(wait))
            }
            Err(why) => {
                tracing::warn!(task.id = %t.id, tries, why, "callback not delivered; given up");
                None
            }
        };
        if let Err(e) = store_task::hook_tried(&self.db, &t.id, tries, next).await {
            tracing::warn!(error = ?e, task.id = %t.id, "recording a callback failed");
        }
    }

    /// Delivers the callbacks due now (the background poller's second job).
    pub async fn deliver_due_hooks(&self) {
        let due = store_task::hooks_due(&self.db, self.settings.batch)
            .await
            .unwrap_or_default();
        futures_util::stream::iter(due.iter())
            .for_each_concurrent(8, |t| self.deliver_hook(t))
            .await;
    }

    /// Records a poll that got no usable answer (or could not be applied): the
    /// lease goes back and the next poll waits longer each time.
    async fn poll_failed(&self, t: &task::Model, now: chrono::DateTime<Utc>) {
        let backoff = poll_backoff(t.attempts, &self.settings);
        let p = Progress {
            state: State::parse(&t.state).unwrap_or(State::Queued),
            upstream_status: t.upstream_status.clone(),
            progress: t.progress,
            next_poll_at: now + chrono_duration(backoff),
            failed_poll: true,
        };
        if let Err(e) = store_task::progressed(&self.db, &t.id, &self.owner, &p).await {
            tracing::warn!(error = ?e, task.id = %t.id, "recording a failed poll failed");
        }
    }

    /// Streams a finished task's content (`variant`, `range` passed through) from the
    /// upstream that made it, with the key that submitted it.
    pub async fn content(
        &self,
        pipeline: &Pipeline,
        routing: Routing<'_>,
        t: &task::Model,
        query: &str,
        range: Option<&str>,
    ) -> Result<reqwest::Response, RelayError> {
        if t.state != State::Succeeded.as_str() {
            return Err(RelayError::InvalidRequest(format!(
                "task '{}' has no content: it is {}",
                t.id, t.state
            )));
        }
        let (Some(upstream_id), Some((channel, key))) =
            (&t.upstream_task_id, task_channel(routing, t))
        else {
            return Err(RelayError::NoAvailableChannel);
        };
        let resp = if matches!(
            channel.kind,
            ChannelKind::Volcengine
                | ChannelKind::Kling
                | ChannelKind::Dashscope
                | ChannelKind::Midjourney
                | ChannelKind::Suno
        ) {
            // These upstreams hand out storage URLs of their own: fetched from there,
            // never shown. They have no thumbnails; `index` picks one of several.
            let param = |name: &str| {
                query
                    .split('&')
                    .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
            };
            let variant = param("variant").unwrap_or("video");
            let index: usize = param("index").and_then(|i| i.parse().ok()).unwrap_or(0);
            let (Some(url), "video") = (result_urls(t).into_iter().nth(index), variant) else {
                return Err(RelayError::NotFound(format!(
                    "task '{}' has no such content",
                    t.id
                )));
            };
            let first = self
                .fetch_result(pipeline, &channel, &key, &url, range)
                .await?;
            if !matches!(first.status().as_u16(), 403 | 404 | 410) {
                first
            } else {
                // The storage URL has expired (Ark's and DashScope's last a day): the
                // upstream is asked for the task again, and its fresh URL kept.
                let fresh = match look(pipeline, &channel, &key, t, upstream_id).await {
                    Ok(Looked::Seen(seen)) => seen.result,
                    _ => None,
                };
                let Some(fresh) = fresh else {
                    return Ok(first);
                };
                let mut result: serde_json::Value = t
                    .result
                    .as_deref()
                    .and_then(|r| serde_json::from_str(r).ok())
                    .unwrap_or_default();
                if let (Some(r), Some(f)) = (result.as_object_mut(), fresh.as_object()) {
                    for (k, v) in f {
                        r.insert(k.clone(), v.clone());
                    }
                }
                if let Err(e) =
                    store_task::refresh_result(&self.db, &t.id, &result.to_string()).await
                {
                    tracing::warn!(error = ?e, task.id = %t.id, "keeping a task's fresh result URL failed");
                }
                let mut refreshed = t.clone();
                refreshed.result = Some(result.to_string());
                let Some(url) = result_urls(&refreshed).into_iter().nth(index) else {
                    return Ok(first);
                };
                self.fetch_result(pipeline, &channel, &key, &url, range)
                    .await?
            }
        } else if channel.kind == ChannelKind::Gemini {
            // Veo's videos are files on the Gemini API itself, fetched with the key.
            let index: usize = query
                .split('&')
                .find_map(|p| p.strip_prefix("index=")?.parse().ok())
                .unwrap_or(0);
            let Some(path) = result_urls(t)
                .into_iter()
                .nth(index)
                .and_then(|u| veo::download_path(&u))
            else {
                return Err(RelayError::NotFound(format!(
                    "task '{}' has no such content",
                    t.id
                )));
            };
            let resp = pipeline
                .client
                .send(
                    reqwest::Method::GET,
                    &channel,
                    &key,
                    (&path, &t.model),
                    None,
                    &range
                        .map(|r| ("range", r.to_owned()))
                        .into_iter()
                        .collect::<Vec<_>>(),
                )
                .await
                .map_err(|f| match f {
                    Failure::Timeout => RelayError::UpstreamTimeout,
                    _ => RelayError::Upstream,
                })?;
            // The file may be handed over to storage elsewhere: followed without the
            // channel's key, to public addresses only.
            match resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
            {
                Some(location) if resp.status().is_redirection() => {
                    self.hooks.fetch(location, range).await?
                }
                _ => resp,
            }
        } else {
            let path = videos::content_path(upstream_id, query);
            let extra: Vec<(&'static str, String)> =
                range.map(|r| ("range", r.to_owned())).into_iter().collect();
            pipeline
                .client
                .send(
                    reqwest::Method::GET,
                    &channel,
                    &key,
                    (&path, t.upstream_model.as_deref().unwrap_or(&t.model)),
                    None,
                    &extra,
                )
                .await
                .map_err(|f| match f {
                    Failure::Timeout => RelayError::UpstreamTimeout,
                    _ => RelayError::Upstream,
                })?
        };
        let status = resp.status().as_u16();
        if resp.status().is_success() || status == 416 {
            return Ok(resp);
        }
        Err(match status {
            404 => RelayError::NotFound(format!("task '{}' has no such content", t.id)),
            _ => {
                tracing::warn!(task.id = %t.id, status, "content fetch failed upstream");
                RelayError::Upstream
            }
        })
    }

    /// `GET path` (built from the task's upstream id) on the channel and with the key
    /// that made task `t`: a JSON answer of at most 1 MiB, or the error to show.
    pub async fn upstream_get(
        &self,
        pipeline: &Pipeline,
        routing: Routing<'_>,
        t: &task::Model,
        path: impl Fn(&str) -> String,
    ) -> Result<Bytes, RelayError> {
        let (Some(upstream_id), Some((channel, key))) =
            (&t.upstream_task_id, task_channel(routing, t))
        else {
            return Err(RelayError::NoAvailableChannel);
        };
        let resp = pipeline
            .client
            .send(
                reqwest::Method::GET,
                &channel,
                &key,
                (&path(upstream_id), &t.model),
                None,
                &[],
            )
            .await
            .map_err(|f| match f {
                Failure::Timeout => RelayError::UpstreamTimeout,
                _ => RelayError::Upstream,
            })?;
        let status = resp.status().as_u16();
        let body = crate::upstream::read_body(
            resp,
            Duration::from_secs(channel.timeout_s.max(1)),
            1 << 20,
        )
        .await
        .map_err(|_| RelayError::Upstream)?;
        match status {
            200..=299 => Ok(body),
            404 => Err(RelayError::NotFound(format!(
                "task '{}' has no such thing upstream",
                t.id
            ))),
            400..=499 => Err(RelayError::Rejected {
                status: 400,
                message: upstream_message(&body, status),
                body: None,
            }),
            _ => Err(RelayError::Upstream),
        }
    }

    /// Fetches a result an upstream left at `url`: from the channel itself (with its
    /// key) when the URL is under the channel's address (a midjourney-proxy serving
    /// its own images), else from a public address only, without any key.
    async fn fetch_result(
        &self,
        pipeline: &Pipeline,
        channel: &ChannelEntry,
        key: &ChannelSecret,
        url: &str,
        range: Option<&str>,
    ) -> Result<reqwest::Response, RelayError> {
        // Only a proxy in front of a service (midjourney-proxy, a Suno API server)
        // serves results from itself; a vendor's storage never sees its key.
        let proxied = matches!(channel.kind, ChannelKind::Midjourney | ChannelKind::Suno);
        let base = crate::upstream::endpoint_url(&channel.base_url, "");
        let own = url
            .strip_prefix(base.as_str())
            .filter(|rest| proxied && rest.starts_with('/') && !base.is_empty());
        let Some(path) = own else {
            return self.hooks.fetch(url, range).await;
        };
        let extra: Vec<(&'static str, String)> =
            range.map(|r| ("range", r.to_owned())).into_iter().collect();
        let model = channel.models.first().map_or("", String::as_str);
        let resp = pipeline
            .client
            .send(
                reqwest::Method::GET,
                channel,
                key,
                (path, model),
                None,
                &extra,
            )
            .await
            .map_err(|f| match f {
                Failure::Timeout => RelayError::UpstreamTimeout,
                _ => RelayError::Upstream,
            })?;
        // A proxy that hands its images over to storage elsewhere: followed without
        // the key, to public addresses only.
        match resp
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|l| l.to_str().ok())
        {
            Some(location) if resp.status().is_redirection() => {
                self.hooks.fetch(location, range).await
            }
            _ => Ok(resp),
        }
    }

    /// Ends `parent`, a task waiting for its modal, now that the modal task `by`
    /// carries its job on: released, so the job is charged once, as the modal.
    pub async fn supersede(&self, parent: &task::Model, by: &str) -> Result<(), RelayError> {
        let outcome = Outcome {
            state: State::Cancelled,
            cost: 0,
            upstream_status: parent.upstream_status.clone(),
            result: None,
            error: Some(format!("continued: by its modal, task {by}")),
            progress: parent.progress,
            upstream_cost: 0,
        };
        store_task::finish(&self.db, &self.wallet, &parent.id, &outcome)
            .await
            .map(|_| ())
            .map_err(|e| store_failure(&e))
    }

    /// Cancels a queued task (upstreams that allow it: Ark): the upstream is asked
    /// first, and only when it agrees does the task end cancelled, its hold released.
    pub async fn cancel(
        &self,
        pipeline: &Pipeline,
        routing: Routing<'_>,
        t: &task::Model,
    ) -> Result<(), RelayError> {
        let refuse = |why: &str| {
            Err(RelayError::InvalidRequest(format!(
                "task '{}' cannot be cancelled: {why}",
                t.id
            )))
        };
        if t.state != State::Queued.as_str() {
            return refuse("only a queued task can be");
        }
        let (Some(upstream_id), Some((channel, key))) =
            (&t.upstream_task_id, task_channel(routing, t))
        else {
            return refuse("its upstream cannot be reached");
        };
        // The database may be a poll behind: a task the upstream has started (or
        // finished) is not cancelled, or its work would go unpaid.
        match look(pipeline, &channel, &key, t, upstream_id).await {
            Ok(Looked::Seen(seen)) if seen.state == Some(State::Queued) => {}
            Ok(Looked::Seen(_)) => return refuse("the upstream has started it"),
            _ => return refuse("its upstream cannot say whether it has started"),
        }
        let (method, path) = match channel.kind {
            ChannelKind::Volcengine => (
                reqwest::Method::DELETE,
                item_path(channel.kind, t, upstream_id),
            ),
            ChannelKind::Dashscope => (
                reqwest::Method::POST,
                format!("{}/cancel", item_path(channel.kind, t, upstream_id)),
            ),
            _ => return refuse("its upstream does not offer it"),
        };
        let sent = pipeline
            .client
            .send(method, &channel, &key, (&path, &t.model), None, &[])
            .await;
        match sent {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => {
                let status = r.status().as_u16();
                let body = r.bytes().await.unwrap_or_default();
                return Err(RelayError::Rejected {
                    status: if status >= 500 { 502 } else { status },
                    message: upstream_message(&body, status),
                    body: None,
                });
            }
            Err(_) => return Err(RelayError::Upstream),
        }
        let outcome = Outcome {
            state: State::Cancelled,
            cost: 0,
            upstream_status: Some("cancelled".into()),
            result: None,
            error: Some("cancelled: cancelled by its owner".into()),
            progress: t.progress,
            upstream_cost: 0,
        };
        store_task::finish(&self.db, &self.wallet, &t.id, &outcome)
            .await
            .map_err(|e| store_failure(&e))?;
        Ok(())
    }

    /// Deletes a finished task for its owner (and, best effort, upstream).
    pub async fn delete(
        &self,
        pipeline: &Pipeline,
        routing: Routing<'_>,
        t: &task::Model,
    ) -> Result<(), RelayError> {
        if State::parse(&t.state).is_some_and(State::is_open) {
            return Err(RelayError::InvalidRequest(format!(
                "task '{}' is still {}: only a finished task can be deleted",
                t.id, t.state
            )));
        }
        if let (Some(upstream_id), Some((channel, key))) =
            (&t.upstream_task_id, task_channel(routing, t))
            && matches!(channel.kind, ChannelKind::OpenAi | ChannelKind::Volcengine)
        {
            let path = item_path(channel.kind, t, upstream_id);
            let sent = pipeline
                .client
                .send(
                    reqwest::Method::DELETE,
                    &channel,
                    &key,
                    (&path, t.upstream_model.as_deref().unwrap_or(&t.model)),
                    None,
                    &[],
                )
                .await;
            if !sent.is_ok_and(|r| r.status().is_success() || r.status().as_u16() == 404) {
                tracing::warn!(task.id = %t.id, "the upstream did not confirm deleting a task");
            }
        }
        store_task::delete_owned(&self.db, &t.id, t.user_id)
            .await
            .map_err(|e| store_failure(&e))?;
        Ok(())
    }
}

/// The message of a success answer that is a refusal: a non-zero `code`, a `code`
/// string with no task, or an `error` object.
fn refusal_in(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let message = || {
        v.get("message")
            .filter(|m| m.as_str().is_some_and(|m| !m.is_empty()))
            .or_else(|| v.get("description"))
            .or_else(|| v.pointer("/error/message"))
            .and_then(|m| m.as_str())
            .map(crate::error::redact)
            .unwrap_or_else(|| "the upstream refused the task".into())
    };
    let code = v.get("code");
    let refused = code.and_then(|c| c.as_i64()).is_some_and(|c| c != 0)
        || (code.and_then(|c| c.as_str()).is_some_and(|c| !c.is_empty())
            && v.get("output").is_none())
        || v.get("error").is_some_and(|e| !e.is_null());
    refused.then(message)
}

/// An answer that says a gateway in front of the upstream gave up waiting (408, 504,
/// Cloudflare's 522 and 524): the upstream may have taken the job all the same.
fn timed_out_behind_a_proxy(failure: &Failure) -> bool {
    matches!(
        failure,
        Failure::Status {
            status: 408 | 504 | 522 | 524,
            ..
        }
    )
}

/// What the upstream charged for a task that made `seconds`, `tokens` and `images`:
/// a share of the list price (the task's price without the group multiplier), or, for
/// an upstream priced per token, its output tokens at that price.
fn task_upstream_cost(
    cost: Option<UpstreamCost>,
    pricing: &Pricing,
    (seconds, tokens, images): (i64, i64, i64),
) -> i64 {
    match cost {
        None => 0,
        Some(UpstreamCost::Ratio { ppm }) => {
            let list = Pricing {
                multiplier_ppm: 1_000_000,
                ..*pricing
            }
            .cost(seconds, tokens, images);
            i64::try_from((i128::from(list) * i128::from(ppm) + 999_999) / 1_000_000)
                .unwrap_or(i64::MAX)
        }
        Some(UpstreamCost::Tokens { output, .. }) => Price {
            output,
            ..Price::default()
        }
        .cost(
            &Usage {
                completion_tokens: tokens,
                ..Usage::default()
            },
            1_000_000,
        ),
    }
}

/// A progress as upstreams write it (`"37%"`, `37`, `""`), 0 to 100.
pub(crate) fn percent(v: Option<&serde_json::Value>) -> i32 {
    let p = match v {
        Some(serde_json::Value::String(s)) => s.trim().trim_end_matches('%').trim().parse().ok(),
        Some(serde_json::Value::Number(n)) => n.as_f64(),
        _ => None,
    };
    p.map_or(0, |p: f64| p.clamp(0.0, 100.0) as i32)
}

/// The longest a submission can be in flight (every try on every channel): an
/// upstream job made later is not a lost submission's.
const IN_FLIGHT: Duration = Duration::from_secs(600);

/// How long after a look an open task of age `age` is looked at again: a fifth of its
/// age, from `poll_min` (5 s by default) up to `poll_max` (60 s).
fn poll_interval(age: Duration, settings: &TaskSettings) -> Duration {
    (age / 5).clamp(settings.poll_min, settings.poll_max)
}

/// How long after its `failed`-th failed look in a row (from 0) a task is looked at
/// again: doubling from `poll_min` up to `poll_max`.
fn poll_backoff(failed: i32, settings: &TaskSettings) -> Duration {
    settings
        .poll_min
        .saturating_mul(2u32.saturating_pow(u32::try_from(failed).unwrap_or(0)))
        .min(settings.poll_max)
}

/// Tasks asked about in one batched poll.
pub const BATCH_IDS: usize = 100;

/// Whether an upstream of type `kind` reads many tasks in one call.
fn batches(kind: ChannelKind) -> bool {
    matches!(kind, ChannelKind::Midjourney | ChannelKind::Suno)
}

/// Asks the upstream about many tasks in one call: what it said of each, by upstream
/// id (a task it leaves out is one it does not know).
async fn look_many(
    pipeline: &Pipeline,
    channel: &ChannelEntry,
    key: &ChannelSecret,
    ids: &[&str],
) -> Result<std::collections::HashMap<String, Observed>, ()> {
    let (path, body) = match channel.kind {
        ChannelKind::Midjourney => (
            "/mj/task/list-by-condition",
            serde_json::json!({"ids": ids}),
        ),
        _ => ("/suno/fetch", serde_json::json!({"ids": ids})),
    };
    let model = channel.models.first().map_or("", String::as_str);
    let resp = pipeline
        .client
        .send(
            reqwest::Method::POST,
            channel,
            key,
            (path, model),
            Some((Bytes::from(body.to_string()), "application/json")),
            &[],
        )
        .await
        .map_err(|_| ())?;
    if !resp.status().is_success() {
        tracing::warn!(
            channel.id = channel.id,
            status = resp.status().as_u16(),
            "batched task poll failed upstream"
        );
        return Err(());
    }
    let body = crate::upstream::read_body(
        resp,
        Duration::from_secs(channel.timeout_s.max(1)),
        16 << 20,
    )
    .await
    .map_err(|_| ())?;
    let many = match channel.kind {
        ChannelKind::Midjourney => midjourney::observe_many(&body),
        _ => suno::observe_many(&body),
    };
    many.map(|v| v.into_iter().collect()).ok_or_else(|| {
        tracing::warn!(
            channel.id = channel.id,
            "batched task poll answer unreadable"
        );
    })
}

/// Failed looks in a row (the last a 404) before a task the upstream does not know
/// is taken as failed.
const GONE_AFTER: i32 = 3;

/// How many results an upstream answer carries.
fn result_count(seen: &Observed) -> Option<i64> {
    let urls = seen.result.as_ref()?.get("urls")?.as_array()?;
    i64::try_from(urls.len()).ok()
}

/// What one look at the upstream found.
enum Looked {
    Seen(Observed),
    /// The upstream does not know the task (404).
    Gone,
}

/// Asks the upstream about one task. `Err` when it did not answer usefully.
async fn look(
    pipeline: &Pipeline,
    channel: &ChannelEntry,
    key: &ChannelSecret,
    t: &task::Model,
    upstream_id: &str,
) -> Result<Looked, ()> {
    let path = item_path(channel.kind, t, upstream_id);
    let resp = pipeline
        .client
        .send(
            reqwest::Method::GET,
            channel,
            key,
            (&path, t.upstream_model.as_deref().unwrap_or(&t.model)),
            None,
            &[],
        )
        .await
        .map_err(|_| ())?;
    let status = resp.status().as_u16();
    if status == 404 {
        return Ok(Looked::Gone);
    }
    if !resp.status().is_success() {
        tracing::warn!(task.id = %t.id, status, "task poll failed upstream");
        return Err(());
    }
    let body =
        crate::upstream::read_body(resp, Duration::from_secs(channel.timeout_s.max(1)), 1 << 20)
            .await
            .map_err(|_| ())?;
    match observe(channel.kind, &body) {
        Some((_, seen)) => Ok(Looked::Seen(seen)),
        None => {
            tracing::warn!(task.id = %t.id, "task poll answer unreadable");
            Err(())
        }
    }
}

/// A channel's reading of an upstream answer about a task: its upstream id and state.
fn observe(kind: ChannelKind, body: &[u8]) -> Option<(String, Observed)> {
    match kind {
        ChannelKind::Volcengine => seedance::observe(body),
        ChannelKind::Kling => kling::observe(body),
        ChannelKind::Dashscope => dashscope::observe(body),
        ChannelKind::Gemini => veo::observe(body),
        ChannelKind::Midjourney => midjourney::observe(body),
        ChannelKind::Suno => suno::observe(body),
        _ => videos::observe(body),
    }
}

/// The upstream path of task `t` (its upstream id `upstream_id`) on a channel of type
/// `kind`.
fn item_path(kind: ChannelKind, t: &task::Model, upstream_id: &str) -> String {
    match kind {
        ChannelKind::Volcengine => seedance::item_path(upstream_id),
        ChannelKind::Dashscope => dashscope::item_path(upstream_id),
        ChannelKind::Gemini => veo::item_path(upstream_id),
        ChannelKind::Midjourney => midjourney::item_path(upstream_id),
        ChannelKind::Suno => suno::item_path(upstream_id),
        ChannelKind::Kling => format!(
            "{}/{}",
            t.upstream_path.as_deref().unwrap_or(kling::ACTIONS[0]),
            videos::encode_segment(upstream_id)
        ),
        _ => videos::item_path(upstream_id),
    }
}

/// A task as its family's callbacks carry it, with `urls` its signed result URLs.
pub fn render(t: &task::Model, urls: &[String]) -> serde_json::Value {
    match t.family.as_str() {
        videos::FAMILY => videos::video_json(t),
        seedance::FAMILY => seedance::task_json(t, urls.first().cloned()),
        // Kling posts the bare task object, without its envelope.
        kling::FAMILY => kling::task_json(t, urls)["data"].take(),
        dashscope::FAMILY => dashscope::task_json(t, urls),
        veo::FAMILY => veo::operation_json(t, urls),
        midjourney::FAMILY => midjourney::task_json(t, urls),
        suno::FAMILY => suno::task_json(t, urls),
        _ => serde_json::json!({"id": t.id, "status": t.state}),
    }
}

/// The channel types that serve `family`.
fn served_by(family: &str) -> fn(ChannelKind) -> bool {
    match family {
        videos::FAMILY => |k| {
            matches!(
                k,
                ChannelKind::OpenAi
                    | ChannelKind::Volcengine
                    | ChannelKind::Kling
                    | ChannelKind::Dashscope
                    | ChannelKind::Gemini
            )
        },
        veo::FAMILY => |k| k == ChannelKind::Gemini,
        dashscope::FAMILY => |k| k == ChannelKind::Dashscope,
        seedance::FAMILY => |k| k == ChannelKind::Volcengine,
        kling::FAMILY => |k| k == ChannelKind::Kling,
        midjourney::FAMILY => |k| k == ChannelKind::Midjourney,
        suno::FAMILY => |k| k == ChannelKind::Suno,
        _ => |_| false,
    }
}

/// The channel and key that took task `t`, if the catalog still has them (the key
/// even when it has been disabled since: the upstream knows the task only there).
fn task_channel(
    routing: Routing<'_>,
    t: &task::Model,
) -> Option<(Arc<ChannelEntry>, ChannelSecret)> {
    let channel = routing
        .catalog
        .channels
        .iter()
        .find(|c| Some(c.id) == t.channel_id)?;
    let key_id = t.channel_key_id?;
    let (owner, secret) = routing.catalog.all_keys.get(&key_id)?;
    if *owner != channel.id {
        return None;
    }
    Some((Arc::clone(channel), secret.clone()))
}

/// Where a continuation of `parent` must go.
fn parent_channel(
    routing: Routing<'_>,
    parent: &task::Model,
) -> Option<(Arc<ChannelEntry>, ChannelSecret)> {
    parent.upstream_task_id.as_ref()?;
    task_channel(routing, parent)
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// A database or wallet failure as the client sees it.
fn store_failure(e: &BillingError) -> RelayError {
    match e {
        BillingError::Insufficient => RelayError::InsufficientQuota,
        BillingError::Store(s) if s.is_unavailable() => RelayError::ServiceUnavailable,
        other => {
            tracing::error!(error = ?other, "task storage failed");
            RelayError::Internal
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Pricing, TaskSettings, poll_backoff, poll_interval};

    #[test]
    fn polls_slow_from_five_seconds_to_a_minute_as_a_task_ages_and_back_off_when_they_fail() {
        let settings = TaskSettings {
            poll_min: Duration::from_secs(5),
            poll_max: Duration::from_secs(60),
            ..TaskSettings::default()
        };
        let at = |age: u64| poll_interval(Duration::from_secs(age), &settings).as_secs();
        assert_eq!(
            (at(0), at(25), at(100), at(300), at(3_600)),
            (5, 5, 20, 60, 60)
        );
        let after = |failed: i32| poll_backoff(failed, &settings).as_secs();
        assert_eq!(
            (after(0), after(1), after(2), after(3), after(4), after(40)),
            (5, 10, 20, 40, 60, 60)
        );
    }

    #[test]
    fn a_task_is_held_for_the_seconds_asked_and_charged_for_the_seconds_made() {
        let p = Pricing {
            per_second: Some(100_000),
            multiplier_ppm: 1_000_000,
            seconds: 8,
            ..Pricing::default()
        };
        assert_eq!(p.hold(), 800_000);
        assert_eq!(p.cost(4, 0, 0), 400_000);
        let flat = Pricing {
            per_request: Some(250_000),
            multiplier_ppm: 1_500_000,
            seconds: 8,
            ..Pricing::default()
        };
        assert_eq!(flat.hold(), 375_000);
        assert_eq!(flat.cost(12, 0, 0), 375_000);
        let tokens = Pricing {
            output: 10_000_000,
            multiplier_ppm: 1_000_000,
            seconds: 5,
            tokens: 109_432,
            ..Pricing::default()
        };
        assert_eq!(tokens.hold(), 1_094_320);
        assert_eq!(tokens.cost(5, 108_900, 0), 1_089_000);
    }
}
