//! One chat request through the relay: pick a channel, send, and on a failure that
//! blames the channel try the next one, until the first byte has gone to the client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use billing::Attempt;
use bytes::Bytes;
use futures_util::StreamExt;
use store::catalog::{ChannelEntry, ChannelSecret};

use crate::admission::Admitted;
use crate::answer::Completion;
use crate::convert::{self, StreamConverter};
use crate::event::Event;
use crate::fault::Fault;
use crate::health::{Breakers, Gate, HealthSink, SuspectKey};
use crate::meter::{Meter, Outcome};
use crate::observe::{EventAction, StreamObserver};
use crate::openai::{ChatHead, upstream_body};
use crate::protocol::Protocol;
use crate::sse::SseFramer;
use crate::stream::ChatStream;
use crate::tokens::Fallback;
use crate::upstream::{Failure, UpstreamClient, read_body, upstream_message};
use crate::{RelayError, Router};

/// What the client gets on success.
pub enum ChatAnswer {
    /// A whole chat completion (already settled).
    Complete(Bytes),
    /// A whole answer of another content type (a transcript as text, SRT or VTT).
    Typed {
        content_type: &'static str,
        body: Bytes,
    },
    /// An SSE stream that settles when it ends or is dropped.
    Stream(Box<ChatStream>),
    /// Bytes of another kind (audio), already settled, passed on as they arrive.
    Binary {
        content_type: String,
        body: futures_util::stream::BoxStream<'static, Result<Bytes, std::io::Error>>,
    },
}

/// Everything a chat request needs from the process.
pub struct ChatDeps<'a> {
    pub router: &'a Router,
    pub client: &'a UpstreamClient,
    pub breakers: &'a Breakers,
    pub health: &'a dyn HealthSink,
    pub max_tries: usize,
    /// The largest non-streaming answer read from an upstream (`TOLLGATE_MAX_UPSTREAM_MB`).
    pub max_answer_bytes: usize,
}

/// Runs a chat request to its answer; the meter is settled or moved into the stream.
///
/// Tries go to the highest tier first, weighted inside it, skipping channels whose
/// breaker is open; a failure that blames the channel moves on to another channel, a
/// suspect key moves on to the channel's next key, a failure the request caused goes
/// straight back to the client (see [`judge`]).
pub async fn chat(
    deps: &ChatDeps<'_>,
    admitted: &Admitted,
    req: &RelayRequest<'_>,
    mut meter: Meter,
) -> Result<ChatAnswer, RelayError> {
    let mut tried = Tried {
        excluded: Vec::new(),
        dead_keys: deps.breakers.dead_keys(),
    };
    let mut attempts: Vec<Attempt> = Vec::new();
    // Channels found to lack /v1/responses, tried again through chat.
    let mut chat_only: Vec<i64> = Vec::new();
    let mut last = RelayError::NoAvailableChannel;
    let group = &admitted.caller.user.group;
    while attempts.len() < deps.max_tries.max(1) + chat_only.len() {
        let Some(channel) = deps.router.pick_where(group, &admitted.model, |c| {
            req.proto.served_by(c.kind)
                && !tried.excluded.contains(&c.id)
                && deps.breakers.gate(c.id) != Gate::Shut
        }) else {
            break;
        };
        // Held until this try is judged; dropped on every other way out (no usable
        // key, the request's own fault, a client that hung up) it hands the trial back.
        let _trial = match deps.breakers.gate(channel.id) {
            Gate::Trial => {
                let lease = Duration::from_secs(channel.timeout_s.max(1));
                let Some(claim) = deps.breakers.claim_trial(channel.id, lease) else {
                    tried.excluded.push(channel.id);
                    continue;
                };
                Some(claim)
            }
            Gate::Open | Gate::Shut => None,
        };
        let Some(key) = channel.rotate_key(&tried.dead_keys) else {
            tried.excluded.push(channel.id);
            continue;
        };
        let upstream_model = channel.upstream_model(&admitted.model);
        let started = Instant::now();
        let via_chat = chat_only.contains(&channel.id);
        let result = try_channel(
            deps.client,
            &channel,
            key,
            (req, via_chat),
            &upstream_model,
            deps.max_answer_bytes,
        )
        .await;
        let latency_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        meter.record.channel_id = Some(channel.id);
        meter.upstream_cost = channel.costs.get(&meter.record.model).copied();
        tracing::Span::current().record("channel.id", channel.id);
        meter.record.provider_name = Some(channel.name.clone());
        meter.record.upstream_model = Some(upstream_model.clone());
        let failure = match result {
            Ok(success) => {
                deps.breakers.success(channel.id);
                attempts.push(Attempt {
                    channel_id: channel.id,
                    channel: channel.name.clone(),
                    status: Some(200),
                    latency_ms,
                    error: None,
                });
                meter.record.attempts = attempts;
                return Ok(answer(success, req, meter));
            }
            Err(failure) => failure,
        };
        let status = match &failure {
            Failure::Status { status, .. } => Some(*status),
            _ => None,
        };
        tracing::warn!(channel.id = channel.id, error = %failure.class(), latency_ms, "upstream try failed");
        attempts.push(Attempt {
            channel_id: channel.id,
            channel: channel.name.clone(),
            status,
            latency_ms,
            error: Some(failure.class()),
        });
        if req.proto == Protocol::OpenAiResponses
            && !via_chat
            && matches!(failure, Failure::Status { status: 404, .. })
        {
            // An OpenAI-compatible upstream without /v1/responses: serve the request
            // through its chat completions instead.
            chat_only.push(channel.id);
            continue;
        }
        let stream = req.head.is_stream();
        match judge(
            deps,
            (&channel, key, admitted.caller.key.id),
            failure,
            stream,
            &mut tried,
        ) {
            Next::Stop(e) => {
                last = e;
                break;
            }
            Next::Retry(e) => last = e,
        }
    }
    meter.record.attempts = attempts;
    meter.finish(Outcome::Failed {
        status: last.status(),
        error: last.code().to_owned(),
    });
    Err(last)
}

/// What one request has ruled out so far.
struct Tried {
    /// Channels not to pick again.
    excluded: Vec<i64>,
    /// Keys not to use again (suspected here, or found dead in this process).
    dead_keys: Vec<i64>,
}

/// After a failed try: give the client this error now, or try elsewhere.
enum Next {
    Stop(RelayError),
    Retry(RelayError),
}

/// Decides what a failed try means, by whose fault it is ([`crate::fault`]): the
/// request's goes back to the client and blames nothing; a suspect key is skipped and
/// sent for a confirming test; only a channel fault counts on the channel's breaker,
/// against the customer key `caller` whose request met it. A whole (non-stream) answer
/// that timed out is not sent again: the first upstream may still be generating, and
/// billing for it.
fn judge(
    deps: &ChatDeps<'_>,
    (channel, key, caller): (&Arc<ChannelEntry>, &ChannelSecret, i64),
    failure: Failure,
    stream: bool,
    tried: &mut Tried,
) -> Next {
    match crate::fault::classify(&failure) {
        Fault::Request => Next::Stop(rejection(failure)),
        // The request asked for more than we relay: no other channel will do better,
        // and this one did nothing wrong.
        Fault::TooLarge => Next::Stop(RelayError::AnswerTooLarge),
        Fault::Key(trouble) => {
            // The key may be dead, not the channel: its other keys may still serve.
            deps.health.key_suspected(SuspectKey {
                channel: Arc::clone(channel),
                key: key.clone(),
                reason: crate::fault::key_reason(&failure, trouble),
            });
            tried.dead_keys.push(key.id);
            Next::Retry(RelayError::Upstream)
        }
        Fault::Channel => {
            deps.breakers.failure(channel.id, caller);
            deps.health.channel_failed(channel.id, failure.class());
            tried.excluded.push(channel.id);
            match failure {
                Failure::Timeout if !stream => Next::Stop(RelayError::UpstreamTimeout),
                Failure::Timeout => Next::Retry(RelayError::UpstreamTimeout),
                _ => Next::Retry(RelayError::Upstream),
            }
        }
    }
}

/// What the client gets for a failure its own request caused.
fn rejection(failure: Failure) -> RelayError {
    match failure {
        Failure::Status { status, body } => RelayError::Rejected {
            status,
            message: upstream_message(&body, status),
            body: Some(body),
        },
        Failure::Unconvertible(message) => RelayError::InvalidRequest(message),
        _ => RelayError::InvalidRequest("the upstream rejected the request".into()),
    }
}

/// One request as the relay forwards it.
pub struct RelayRequest<'a> {
    /// The client's protocol (channels of the same kind serve it).
    pub proto: Protocol,
    pub head: &'a ChatHead,
    /// The client's body, read once and reused for every try.
    pub raw: &'a Bytes,
    /// Client headers the upstream must see (`anthropic-version`, `anthropic-beta`).
    pub extra: &'a [(&'static str, String)],
    /// A multipart body's content type (with its boundary); `None` means JSON.
    pub content_type: Option<&'a str>,
}

enum Success {
    Complete(Bytes, Completion),
    /// A whole answer made in the client's format (a transcript), with its type.
    Typed(Bytes, &'static str, Completion),
    /// A binary answer (speech) passed through as it arrives.
    Binary(reqwest::Response),
    Stream(Box<Opened>),
}

/// A stream whose first events arrived.
struct Opened {
    first: Vec<Bytes>,
    framer: SseFramer,
    observer: StreamObserver,
    converter: Option<StreamConverter>,
    resp: reqwest::Response,
    idle: Duration,
}

async fn try_channel(
    client: &UpstreamClient,
    channel: &Arc<ChannelEntry>,
    key: &ChannelSecret,
    (req, via_chat): (&RelayRequest<'_>, bool),
    upstream_model: &str,
    max_answer_bytes: usize,
) -> Result<Success, Failure> {
    let head = req.head;
    let transcript = matches!(
        req.proto,
        Protocol::OpenAiTranscriptions | Protocol::OpenAiTranslations
    )
    .then(|| crate::media::transcript_plan(upstream_model, req.raw));
    // The protocol the channel speaks; a client of another one is converted.
    let proto = if via_chat {
        Protocol::OpenAiChat
    } else {
        req.proto.for_channel(channel.kind)
    };
    let converting = proto != req.proto;
    let (body, extra) = if converting {
        let body = convert::request(req.proto, proto, req.raw, upstream_model, head.is_stream())
            .map_err(|e| Failure::Unconvertible(e.0))?;
        (body, &[][..])
    } else if let Some(content_type) = req.content_type {
        // A form upload goes as received, with the mapped model if it differs (and a
        // transcript format that states what to charge).
        let mut body =
            crate::media::form_with_model(req.raw, content_type, head.model(), upstream_model)
                .map_err(|e| Failure::Unconvertible(e.to_string()))?;
        if let Some(format) = transcript.and_then(|t| t.upstream) {
            body = crate::media::form_with_format(&body, format)
                .map_err(|e| Failure::Unconvertible(e.to_string()))?;
        }
        (body, req.extra)
    } else {
        let body = upstream_body(req.proto, req.raw, head, upstream_model)
            .map_err(|_| Failure::Malformed)?;
        (body, req.extra)
    };
    let path = proto.upstream_path(upstream_model, head.is_stream());
    let content_type = req.content_type.unwrap_or("application/json");
    let resp = client
        .post(
            channel,
            key,
            (&path, upstream_model),
            (body, content_type),
            extra,
        )
        .await?;
    let idle = Duration::from_secs(channel.timeout_s.max(1));
    let status = resp.status().as_u16();
    if !resp.status().is_success() {
        let body = read_body(resp, idle, 1024 * 1024).await.unwrap_or_default();
        return Err(Failure::Status { status, body });
    }
    if proto == Protocol::OpenAiSpeech {
        return Ok(Success::Binary(resp));
    }
    if !head.is_stream() {
        let body = read_body(resp, idle, max_answer_bytes).await?;
        if converting {
            // One parse, for the client's answer and for the meter (a second, through
            // the metering view, only when the answer reported no usage).
            let (converted, metered) =
                convert::answer(proto, req.proto, &body).map_err(|_| Failure::Malformed)?;
            let summary = match metered {
                Some(summary) => summary,
                None => crate::answer::read(proto, &body, req.raw).ok_or(Failure::Malformed)?,
            };
            return Ok(Success::Complete(converted, summary));
        }
        let summary = crate::answer::read(proto, &body, req.raw).ok_or(Failure::Malformed)?;
        if let Some(plan) = transcript.filter(|t| t.upstream.is_some())
            && let Some((made, content_type)) = crate::media::render_transcript(plan.client, &body)
        {
            return Ok(Success::Typed(made, content_type, summary));
        }
        return Ok(Success::Complete(body, summary));
    }
    // A stream: wait for its first whole event before the client gets a 200, so a
    // channel that fails at once can still be swapped for another.
    let mut framer = SseFramer::default();
    let mut observer = StreamObserver::new(proto, upstream_model);
    let wants_usage = head.wants_stream_usage();
    let mut converter = converting.then(|| StreamConverter::new(proto, req.proto, wants_usage));
    let mut resp = resp;
    loop {
        let chunk = match tokio::time::timeout(idle, resp.chunk()).await {
            Err(_) => return Err(Failure::Timeout),
            Ok(Err(_)) => return Err(Failure::Connect),
            Ok(Ok(None)) => return Err(Failure::Malformed),
            Ok(Ok(Some(c))) => c,
        };
        let events = framer.push(&chunk);
        if events.is_empty() {
            continue;
        }
        // What the client gets of these events (converted when it must be).
        let mut first = Vec::with_capacity(events.len());
        let mut forwarded = 0;
        for ev in events {
            let data = crate::sse::event_data(&ev);
            let event = crate::event::decode(proto, &data);
            // An error as the first event is judged by its fields, as its status would
            // have been: it may be the request's fault, the key's or the channel's.
            if matches!(event, Event::Error(_)) && forwarded == 0 {
                return Err(crate::fault::opening_error(data.into_owned()));
            }
            let action = observer.observe(&event, wants_usage);
            if action != EventAction::Swallow {
                forwarded += 1;
            }
            match converter.as_mut() {
                Some(c) => first.extend(c.push(event)),
                None if action != EventAction::Swallow => first.push(ev),
                None => {}
            }
        }
        return Ok(Success::Stream(Box::new(Opened {
            first,
            framer,
            observer,
            converter,
            resp,
            idle,
        })));
    }
}

fn answer(success: Success, req: &RelayRequest<'_>, mut meter: Meter) -> ChatAnswer {
    let (head, raw) = (req.head, req.raw);
    let fallback = Fallback {
        model: meter
            .record
            .upstream_model
            .clone()
            .unwrap_or_else(|| meter.record.model.clone()),
        request: raw.clone(),
    };
    match success {
        Success::Binary(resp) => {
            // The cost is known from the input: settle now, then pass the audio on.
            let usage = crate::media::speech_usage(raw);
            let content_type = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/octet-stream")
                .to_owned();
            meter.mark_first_byte();
            meter.finish(Outcome::Served(usage));
            let body = resp
                .bytes_stream()
                .map(|r| r.map_err(std::io::Error::other))
                .boxed();
            ChatAnswer::Binary { content_type, body }
        }
        Success::Typed(body, content_type, summary) => {
            let usage = summary
                .usage
                .unwrap_or_else(|| fallback.usage(&summary.delivered));
            meter.mark_first_byte();
            meter.finish(Outcome::Served(usage));
            ChatAnswer::Typed { content_type, body }
        }
        Success::Complete(body, summary) => {
            let usage = summary
                .usage
                .unwrap_or_else(|| fallback.usage(&summary.delivered));
            meter.record.upstream_id = summary.id.clone();
            if let Some(m) = &summary.model {
                meter.record.upstream_model = Some(m.clone());
            }
            meter.record.finish_reason = summary.finish_reason.clone();
            meter.mark_first_byte();
            meter.finish(Outcome::Served(usage));
            ChatAnswer::Complete(body)
        }
        Success::Stream(opened) => {
            let Opened {
                first,
                framer,
                observer,
                converter,
                resp,
                idle,
            } = *opened;
            let upstream = resp.bytes_stream().boxed();
            let stream = ChatStream::new(
                crate::stream::Upstream {
                    first,
                    framer,
                    observer,
                    converter,
                    body: upstream,
                    idle,
                },
                req.proto,
                head.wants_stream_usage(),
                fallback,
                meter,
            );
            ChatAnswer::Stream(Box::new(stream))
        }
    }
}
