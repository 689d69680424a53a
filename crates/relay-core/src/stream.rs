//! The client's side of a streamed chat: upstream SSE events forwarded one by one as
//! they arrive, observed for usage on the way, settled when the stream ends, breaks,
//! or is dropped because the client went away.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use billing::Usage;
use bytes::Bytes;
use futures_util::Stream;
use futures_util::stream::BoxStream;

use crate::convert::StreamConverter;
use crate::meter::{Meter, Outcome};
use crate::observe::{EventAction, StreamObserver};
use crate::protocol::Protocol;
use crate::sse::SseFramer;
use crate::tokens::Fallback;

/// The upstream side of a stream whose first events arrived.
pub(crate) struct Upstream {
    /// What the client gets of the events already read (observed, and converted when
    /// the client speaks another protocol).
    pub first: Vec<Bytes>,
    pub framer: SseFramer,
    pub observer: StreamObserver,
    /// Set when the client speaks another protocol than the channel.
    pub converter: Option<StreamConverter>,
    pub body: BoxStream<'static, reqwest::Result<Bytes>>,
    pub idle: Duration,
}

/// A metered SSE stream from an upstream to the client.
pub struct ChatStream {
    ready: VecDeque<Bytes>,
    upstream: Option<BoxStream<'static, reqwest::Result<Bytes>>>,
    framer: SseFramer,
    observer: StreamObserver,
    converter: Option<StreamConverter>,
    /// The client's protocol (for the error event of a broken stream).
    client: Protocol,
    wants_usage: bool,
    fallback: Fallback,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    meter: Option<Meter>,
    /// The request's span, entered while the stream is polled.
    span: tracing::Span,
}

impl ChatStream {
    pub(crate) fn new(
        upstream: Upstream,
        client: Protocol,
        wants_usage: bool,
        fallback: Fallback,
        mut meter: Meter,
    ) -> Self {
        meter.mark_first_byte();
        let Upstream {
            first,
            framer,
            observer,
            converter,
            body,
            idle,
        } = upstream;
        let ready = first.into();
        ChatStream {
            ready,
            upstream: Some(body),
            framer,
            observer,
            converter,
            client,
            wants_usage,
            fallback,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
            meter: Some(meter),
            span: tracing::Span::current(),
        }
    }

    fn usage(&self) -> Usage {
        self.observer.usage.unwrap_or_else(|| {
            let mut usage = self.fallback.with_output(self.observer.delivered.tokens());
            // A stream cut after Anthropic's message_start still told us the prompt.
            if let Some(start) = self.observer.partial_prompt() {
                usage.prompt_tokens = start.prompt_tokens;
                usage.cached_tokens = start.cached_tokens;
                usage.cache_write_tokens = start.cache_write_tokens;
            }
            usage
        })
    }

    /// Settles with what was delivered. `broken` marks a stream that ended early.
    fn settle(&mut self, broken: Option<&str>, cancelled: bool) {
        let usage = self.usage();
        if let Some(mut meter) = self.meter.take() {
            meter.record.upstream_id = self.observer.id.clone();
            meter.record.finish_reason = self.observer.finish_reason.clone();
            meter.record.streamed = true;
            meter.record.cancelled = cancelled;
            if let Some(m) = &self.observer.upstream_model {
                meter.record.upstream_model = Some(m.clone());
            }
            if let Some(reason) = broken {
                meter.record.error = Some(reason.to_owned());
            }
            // No output, no charge: a stream that broke or timed out before any content
            // is a failed request, whatever role or ping events came first. A client
            // that leaves pays for what the upstream already did: its prompt.
            let no_output = self.observer.delivered.is_empty()
                && self.observer.usage.is_none_or(|u| u.completion_tokens <= 0);
            let failed = broken.is_some_and(|b| b != "client_disconnected") && no_output;
            if self.observer.events == 0 || failed {
                let status = match broken {
                    Some("stream_timeout") => 504,
                    Some("client_disconnected") => 499,
                    _ => 502,
                };
                meter.finish(Outcome::Failed {
                    status,
                    error: broken.unwrap_or("empty stream").to_owned(),
                });
            } else {
                meter.finish(Outcome::Served(usage));
            }
        }
    }

    /// Observes one upstream event and queues what the client gets of it.
    fn take_event(&mut self, ev: Bytes) {
        let event = crate::event::decode(self.observer.proto, &crate::sse::event_data(&ev));
        let action = self.observer.observe(&event, self.wants_usage);
        if let Some(c) = self.converter.as_mut() {
            self.ready.extend(c.push(event));
            return;
        }
        match action {
            EventAction::Forward | EventAction::Done => self.ready.push_back(ev),
            EventAction::Swallow => {}
        }
    }

    fn take_events(&mut self, chunk: &[u8]) {
        for ev in self.framer.push(chunk) {
            self.take_event(ev);
        }
    }

    fn end(&mut self, broken: Option<&str>) {
        self.upstream = None;
        if let Some(rest) = self.framer.finish() {
            self.take_event(rest);
        }
        if let Some(c) = self.converter.as_mut() {
            self.ready.extend(c.finish());
        }
        if let Some(reason) = broken
            && !self.observer.done
        {
            let event = match self.client {
                Protocol::OpenAiResponses => {
                    let err = serde_json::json!({"type": "error", "code": reason, "message": "the upstream stream ended early", "param": null, "sequence_number": self.observer.events});
                    format!("event: error\ndata: {err}\n\n")
                }
                Protocol::AnthropicMessages => {
                    let err = serde_json::json!({"type": "error", "error": {"type": "api_error", "message": format!("the upstream stream ended early ({reason})")}});
                    format!("event: error\ndata: {err}\n\n")
                }
                Protocol::GeminiGenerate => {
                    let err = serde_json::json!({"error": {"code": 502, "message": format!("the upstream stream ended early ({reason})"), "status": "UNAVAILABLE"}});
                    format!("data: {err}\n\n")
                }
                _ => {
                    let err = serde_json::json!({"error": {"message": "the upstream stream ended early", "type": "api_error", "code": reason, "param": null}});
                    format!("data: {err}\n\n")
                }
            };
            self.ready.push_back(Bytes::from(event));
        }
        self.settle(broken, false);
    }
}

impl Stream for ChatStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let span = this.span.clone();
        let _in_request = span.enter();
        loop {
            if let Some(ev) = this.ready.pop_front() {
                return Poll::Ready(Some(Ok(ev)));
            }
            let Some(upstream) = this.upstream.as_mut() else {
                return Poll::Ready(None);
            };
            match upstream.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    let next = tokio::time::Instant::now() + this.idle;
                    this.deadline.as_mut().reset(next);
                    this.take_events(&chunk);
                }
                Poll::Ready(Some(Err(_))) => this.end(Some("stream_broken")),
                Poll::Ready(None) => {
                    let complete = this.observer.done || this.observer.finish_reason.is_some();
                    let broken = (!complete).then_some("stream_incomplete");
                    this.end(broken);
                }
                Poll::Pending => {
                    if this.deadline.as_mut().poll(cx).is_ready() {
                        this.end(Some("stream_timeout"));
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Drop for ChatStream {
    fn drop(&mut self) {
        if self.meter.is_some() {
            // The client went away mid-stream: stop the upstream (dropped with us) and
            // charge what was delivered.
            self.settle(Some("client_disconnected"), true);
        }
    }
}
