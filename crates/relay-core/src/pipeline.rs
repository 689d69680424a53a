//! The relay's one entry point: a request as the HTTP layer extracted it goes in, an
//! answer (or an error in the client's protocol's terms) comes out. In order
//! (DESIGN.md "The hot path"): authenticate the key, admit (service up, the key's
//! address, the body, the model, the key's rpm), price and hold the most the request
//! can cost, then [`crate::relay::chat`] routes, forwards, retries, streams, settles
//! and records. A request refused on the way is recorded (uncharged) here.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use billing::{BillingError, GenerationRecord, Hold, Usage};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use store::Catalog;

use crate::admission::{self, Admitted, Caller};
use crate::health::{Breakers, HealthSink};
use crate::hold;
use crate::meter::{Meter, Settler};
use crate::openai::ChatHead;
use crate::protocol::Protocol;
use crate::relay::{ChatAnswer, ChatDeps, RelayRequest};
use crate::upstream::UpstreamClient;
use crate::{RelayError, Router};

/// The process-wide parts every relay request uses.
pub struct Pipeline {
    /// The wallet, the ledger writer and the metrics that settlement reports to.
    pub settler: Settler,
    /// The rpm counters (memory or Redis).
    pub shared: Arc<store::Shared>,
    /// Whether the database and Redis answer.
    pub availability: Arc<store::Availability>,
    pub client: UpstreamClient,
    pub breakers: Arc<Breakers>,
    pub health: Arc<dyn HealthSink>,
    /// The largest request body read (`TOLLGATE_MAX_BODY_MB`).
    pub max_body_mb: usize,
    /// The largest non-streaming answer read from an upstream (`TOLLGATE_MAX_UPSTREAM_MB`).
    pub max_upstream_mb: usize,
}

/// The catalog as of this request, with its routing index and retry budget.
#[derive(Clone, Copy)]
pub struct Routing<'a> {
    pub catalog: &'a Catalog,
    pub router: &'a Router,
    /// Channels tried per request.
    pub max_tries: usize,
}

/// Where a Gemini request's model and method come from: the path.
pub struct GeminiRoute {
    pub model: String,
    pub stream: bool,
}

/// A relay request as the HTTP layer extracted it; the body is read only once the key
/// is known to be good.
pub struct Inbound<B> {
    pub proto: Protocol,
    /// The client's key, from whichever header its SDK sends.
    pub key: Option<String>,
    /// The client's address (after trusted proxies).
    pub ip: Option<IpAddr>,
    /// `Content-Length`, when the client declared one.
    pub declared_len: Option<usize>,
    /// `Content-Type` (a multipart body's boundary is in it).
    pub content_type: Option<String>,
    pub body: B,
    /// Set for Gemini's routes (the model is in the path).
    pub gemini: Option<GeminiRoute>,
    /// Client headers the upstream must see (`anthropic-version`, `anthropic-beta`).
    pub extra: Vec<(&'static str, String)>,
}

/// What the client gets: its generation id, and the answer or the error.
pub struct Answered {
    pub generation_id: String,
    pub result: Result<ChatAnswer, RelayError>,
}

/// A new generation id.
pub fn new_generation_id() -> String {
    format!("gen-{}", uuid::Uuid::now_v7().simple())
}

impl Pipeline {
    /// One relay request, from the key to the answer.
    pub async fn relay<B, E>(&self, routing: Routing<'_>, inbound: Inbound<B>) -> Answered
    where
        B: Stream<Item = Result<Bytes, E>> + Unpin,
    {
        let generation_id = new_generation_id();
        // Every line this request logs (its tries, its stream, its settlement) carries
        // these: found by its generation id.
        let span = tracing::info_span!(
            "request",
            generation.id = %generation_id,
            key.id = tracing::field::Empty,
            model = tracing::field::Empty,
            channel.id = tracing::field::Empty,
        );
        tracing::Instrument::instrument(self.relay_as(routing, inbound, generation_id), span).await
    }

    async fn relay_as<B, E>(
        &self,
        routing: Routing<'_>,
        inbound: Inbound<B>,
        generation_id: String,
    ) -> Answered
    where
        B: Stream<Item = Result<Bytes, E>> + Unpin,
    {
        let started = Instant::now();
        let proto = inbound.proto;
        let caller = match admission::authenticate(routing.catalog, inbound.key.as_deref()) {
            Ok(c) => c,
            Err(e) => return answered(generation_id, Err(e)),
        };
        tracing::Span::current().record("key.id", caller.key.id);
        let mut record = self.record(&generation_id, &caller, proto, inbound.ip);
        let admitted = self.admit(routing, &caller, inbound).await;
        let (body, head, admitted, rest) = match admitted {
            Ok(a) => a,
            Err(e) => {
                self.reject(record, &e, started);
                return answered(generation_id, Err(e));
            }
        };
        record.model = admitted.model.clone();
        tracing::Span::current().record("model", admitted.model.as_str());
        record.streamed = head.is_stream();
        // In flight from here until its answer (its stream included) has ended.
        let slot = match self.take_slot(&caller).await {
            Ok(slot) => slot,
            Err(e) => {
                self.reject(record, &e, started);
                return answered(generation_id, Err(e));
            }
        };
        let (hold, body) = match self.hold_for(proto, &admitted, &head, body).await {
            Ok(held) => held,
            Err(e) => {
                self.reject(record, &e, started);
                return answered(generation_id, Err(e));
            }
        };
        let meter = Meter::new(
            self.settler.clone(),
            hold,
            admitted.price,
            admitted.multiplier_ppm,
            record,
            started,
        )
        .with_limits(slot, self.token_budget(&caller));
        let deps = ChatDeps {
            router: routing.router,
            client: &self.client,
            breakers: &self.breakers,
            health: self.health.as_ref(),
            max_tries: routing.max_tries,
            max_answer_bytes: self.max_upstream_mb.saturating_mul(1024 * 1024),
        };
        let request = RelayRequest {
            proto,
            head: &head,
            raw: &body,
            extra: &rest.extra,
            content_type: if proto.is_multipart() {
                rest.content_type.as_deref()
            } else {
                None
            },
        };
        let result = crate::relay::chat(&deps, &admitted, &request, meter).await;
        answered(generation_id, result)
    }

    /// `count_tokens` (Anthropic) and `countTokens` (Gemini): free, but admitted like
    /// a relay request and under the key's rpm; counted by a channel of the client's
    /// kind when one serves the model, else locally.
    pub async fn count<B, E>(
        &self,
        routing: Routing<'_>,
        inbound: Inbound<B>,
    ) -> (String, Result<Bytes, RelayError>)
    where
        B: Stream<Item = Result<Bytes, E>> + Unpin,
    {
        let generation_id = new_generation_id();
        let proto = inbound.proto;
        let counted = async {
            let caller = admission::authenticate(routing.catalog, inbound.key.as_deref())?;
            admission::check_ip(&caller, inbound.ip)?;
            let body = read_limited(inbound.body, inbound.declared_len, self.max_body_mb).await?;
            let head = match &inbound.gemini {
                Some(route) => ChatHead::gemini(&body, &route.model, false)?,
                None => ChatHead::parse_for(proto, &body)?,
            };
            let admitted = admission::admit_model(
                routing.catalog,
                routing.router,
                &caller,
                head.model(),
                proto,
            )?;
            self.check_rpm(&caller).await?;
            crate::count::count_tokens(routing.router, &self.client, &admitted, proto, &body).await
        }
        .await;
        (generation_id, counted)
    }

    /// The generation record of a request by `caller`, before anything is known of
    /// its outcome.
    fn record(
        &self,
        id: &str,
        caller: &Caller,
        proto: Protocol,
        ip: Option<IpAddr>,
    ) -> GenerationRecord {
        GenerationRecord {
            id: id.to_owned(),
            upstream_id: None,
            user_id: caller.user.id,
            key_id: caller.key.id,
            channel_id: None,
            provider_name: None,
            model: String::new(),
            upstream_model: None,
            endpoint: proto.path().to_owned(),
            streamed: false,
            cancelled: false,
            finish_reason: None,
            usage: Usage::default(),
            latency_ms: None,
            generation_time_ms: None,
            status: "error",
            status_code: 200,
            error: None,
            client_ip: ip.map(|i| i.to_string()),
            attempts: Vec::new(),
            created_at: chrono::Utc::now(),
            upstream_cost: 0,
        }
    }

    /// Admission after the key: the service can take the request, the key may be used
    /// from this address, the body is read and well formed, the model is allowed,
    /// priced and served, and the key is under its rpm.
    async fn admit<B, E>(
        &self,
        routing: Routing<'_>,
        caller: &Caller,
        inbound: Inbound<B>,
    ) -> Result<(Bytes, ChatHead, Admitted, Rest), RelayError>
    where
        B: Stream<Item = Result<Bytes, E>> + Unpin,
    {
        let proto = inbound.proto;
        if !self.availability.serving() || !self.settler.writer.admit().await {
            return Err(RelayError::ServiceUnavailable);
        }
        admission::check_ip(caller, inbound.ip)?;
        let body = read_limited(inbound.body, inbound.declared_len, self.max_body_mb).await?;
        let head = match &inbound.gemini {
            Some(route) => ChatHead::gemini(&body, &route.model, route.stream)?,
            None if proto.is_multipart() => ChatHead::form(inbound.content_type.as_deref(), &body)?,
            None => ChatHead::parse_for(proto, &body)?,
        };
        if head.is_stream() && proto.never_streams() {
            return Err(RelayError::InvalidRequest(
                "'stream' is not supported on this endpoint".into(),
            ));
        }
        let admitted =
            admission::admit_model(routing.catalog, routing.router, caller, head.model(), proto)?;
        self.check_rpm(caller).await?;
        self.check_tpm(caller).await?;
        let rest = Rest {
            extra: inbound.extra,
            content_type: inbound.content_type,
        };
        Ok((body, head, admitted, rest))
    }

    /// Holds the most this request can cost. When the client named no output limit
    /// and the model's ceiling does not fit in what is left, the largest limit that
    /// does is held instead; either way the upstream is told the limit held (the body
    /// returned).
    async fn hold_for(
        &self,
        proto: Protocol,
        admitted: &Admitted,
        head: &ChatHead,
        body: Bytes,
    ) -> Result<(Hold, Bytes), RelayError> {
        let wallet = &self.settler.wallet;
        let (price, mult) = (&admitted.price, admitted.multiplier_ppm);
        let user = admitted.caller.user.id;
        let limited_key = admitted
            .caller
            .key
            .credit_limit
            .map(|_| admitted.caller.key.id);
        let mut plan = hold::plan(proto, price, mult, head, &body);
        let held = match wallet.reserve(user, limited_key, plan.amount).await {
            Err(BillingError::Insufficient) if plan.set_limit => {
                let available = self.available(user, limited_key).await?;
                plan = hold::affordable(proto, price, mult, head, plan, available)
                    .ok_or(RelayError::InsufficientQuota)?;
                wallet.reserve(user, limited_key, plan.amount).await
            }
            other => other,
        };
        let held = held.map_err(|e| match e {
            BillingError::Insufficient => RelayError::InsufficientQuota,
            other => wallet_failure(&other),
        })?;
        if !plan.set_limit {
            return Ok((held, body));
        }
        match hold::limited_body(proto, head, &body, plan.output_tokens) {
            Ok(body) => Ok((held, body)),
            Err(e) => {
                if let Err(err) = wallet.release(held).await {
                    tracing::error!(error = ?err, "releasing a hold failed");
                }
                Err(e)
            }
        }
    }

    /// What the user (and its limited key) may still spend.
    async fn available(&self, user: i64, key: Option<i64>) -> Result<i64, RelayError> {
        let mut available = i64::MAX;
        let accounts =
            std::iter::once(billing::Account::User(user)).chain(key.map(billing::Account::Key));
        for acct in accounts {
            let a = self
                .settler
                .wallet
                .available(acct)
                .await
                .map_err(|e| wallet_failure(&e))?;
            available = available.min(a.unwrap_or(0));
        }
        Ok(available)
    }

    /// The key's requests-per-minute limit, counted in the shared counters.
    pub async fn check_rpm(&self, caller: &Caller) -> Result<(), RelayError> {
        let Some(rpm) = caller.key.rpm else {
            return Ok(());
        };
        let count = self
            .shared
            .incr(
                &store::cache::Name::new(format_args!("rpm:{}", caller.key.id)),
                Duration::from_secs(60),
            )
            .await
            .map_err(|e| {
                if e.is_unavailable() {
                    tracing::warn!(error = ?e, "rate-limit counter unreachable");
                    RelayError::ServiceUnavailable
                } else {
                    tracing::error!(error = ?e, "rate-limit counter failed");
                    RelayError::Internal
                }
            })?;
        if count > i64::from(rpm) {
            return Err(RelayError::RateLimited(rpm));
        }
        Ok(())
    }

    /// Records a request refused before it reached an upstream (nothing is charged).
    fn reject(&self, mut record: GenerationRecord, err: &RelayError, started: Instant) {
        record.status = "error";
        record.status_code = err.status();
        record.error = Some(err.code().to_owned());
        let ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        record.latency_ms = Some(ms);
        record.generation_time_ms = Some(ms);
        self.settler.metrics.request(
            &record.endpoint,
            &record.model,
            record.status_code,
            started.elapsed().as_secs_f64(),
        );
        // While the writer refuses (the database is away or its backlog is full) the
        // records of refused calls, which carry no money, are not queued: a long outage
        // under load must not grow memory with them.
        if self.settler.writer.refuses() {
            tracing::debug!(generation.id = %record.id, "refused call not recorded during an outage");
            return;
        }
        self.settler.writer.submit(record, None);
    }
}

/// What the relay keeps of the inbound request after admission.
struct Rest {
    extra: Vec<(&'static str, String)>,
    content_type: Option<String>,
}

fn answered(generation_id: String, result: Result<ChatAnswer, RelayError>) -> Answered {
    Answered {
        generation_id,
        result,
    }
}

/// Reads the request body up to `limit_mb`.
pub async fn read_limited<B, E>(
    mut body: B,
    declared: Option<usize>,
    limit_mb: usize,
) -> Result<Bytes, RelayError>
where
    B: Stream<Item = Result<Bytes, E>> + Unpin,
{
    let limit = limit_mb.saturating_mul(1024 * 1024);
    if declared.is_some_and(|n| n > limit) {
        return Err(RelayError::RequestTooLarge(limit_mb));
    }
    let mut first: Option<Bytes> = None;
    let mut whole = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk
            .map_err(|_| RelayError::InvalidRequest("the request body could not be read".into()))?;
        let have = first.as_ref().map_or(0, Bytes::len) + whole.len();
        if have + chunk.len() > limit {
            return Err(RelayError::RequestTooLarge(limit_mb));
        }
        // A body that arrives in one chunk (most do) is kept as it is, not copied.
        match first.take() {
            None if whole.is_empty() => first = Some(chunk),
            None => whole.extend_from_slice(&chunk),
            Some(f) => {
                whole.reserve(declared.unwrap_or(f.len() + chunk.len()).min(limit));
                whole.extend_from_slice(&f);
                whole.extend_from_slice(&chunk);
            }
        }
    }
    Ok(first.unwrap_or_else(|| whole.freeze()))
}

/// A wallet that could not answer: Redis (or the database behind it) is away.
fn wallet_failure(e: &BillingError) -> RelayError {
    match e {
        BillingError::Store(s) if s.is_unavailable() => {
            tracing::warn!(error = ?e, "wallet unreachable");
            RelayError::ServiceUnavailable
        }
        _ => {
            tracing::error!(error = ?e, "reservation failed");
            RelayError::Internal
        }
    }
}

#[cfg(test)]
mod tests {
    use super::read_limited;
    use crate::RelayError;
    use bytes::Bytes;
    use futures_util::stream;

    fn body(
        chunks: &[&'static str],
    ) -> impl futures_util::Stream<Item = Result<Bytes, ()>> + Unpin {
        stream::iter(
            chunks
                .iter()
                .map(|c| Ok(Bytes::from_static(c.as_bytes())))
                .collect::<Vec<_>>(),
        )
    }

    #[tokio::test]
    async fn a_body_is_read_whole_whatever_its_chunks() {
        for chunks in [vec![], vec!["{}"], vec!["{\"a\"", ":", "1}"]] {
            let got = read_limited(body(&chunks), None, 1).await.unwrap();
            assert_eq!(got, chunks.concat().as_bytes());
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_declared_or_not() {
        let big = "x".repeat(600 * 1024).leak();
        let chunks = [&*big, &*big];
        assert!(matches!(
            read_limited(body(&chunks), None, 1).await,
            Err(RelayError::RequestTooLarge(1))
        ));
        assert!(matches!(
            read_limited(body(&["{}"]), Some(2 << 20), 1).await,
            Err(RelayError::RequestTooLarge(1))
        ));
    }
}
