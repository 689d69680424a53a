//! What the relay counts for `GET /metrics` (API.md §2 Operations): requests by
//! endpoint, model and status, their duration, each channel's time to first byte,
//! settlements by outcome, and the money events that must never pass silently. Labels
//! come from what Tollgate knows (admitted model names, channel ids), never from
//! unchecked client input, so a client cannot grow the label sets.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    model: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabels {
    channel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// How a settlement ended.
#[derive(Clone, Copy, Debug)]
pub enum Settled {
    /// Served and charged.
    Charged,
    /// Failed: the hold went back.
    Released,
    /// The client left before an outcome: the hold went back.
    Cancelled,
}

impl Settled {
    fn label(self) -> &'static str {
        match self {
            Settled::Charged => "charged",
            Settled::Released => "released",
            Settled::Cancelled => "cancelled",
        }
    }
}

/// The process's metrics. Cheap to share (`Arc`); recording takes a read lock and,
/// for a new label set only, a write lock.
pub struct Metrics {
    /// Tells this process's metrics from another's (tests run several) in the
    /// per-thread cache of [`Metrics::request`].
    id: u64,
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<EndpointLabels, Histogram>,
    ttfb: Family<ChannelLabels, Histogram>,
    settlements: Family<OutcomeLabels, Counter>,
    backlog: Gauge,
    breaker_open: Family<ChannelLabels, Gauge>,
    over_hold: Counter,
    shortfalls: Counter,
    shortfall_micros: Counter,
    task_unknown_status: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// How many label sets of requests a thread remembers.
const RECENT: usize = 32;

/// A label set of requests this thread recorded, with its metrics (handles on the
/// families' own: the families never drop a label set).
struct Recent {
    metrics: u64,
    endpoint: String,
    model: String,
    status: u16,
    count: Counter,
    duration: Histogram,
}

thread_local! {
    static RECENT_REQUESTS: RefCell<Vec<Recent>> = const { RefCell::new(Vec::new()) };
}

fn seconds_histogram() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

impl Metrics {
    pub fn new() -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<EndpointLabels, Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        let ttfb = Family::<ChannelLabels, Histogram>::new_with_constructor(
            seconds_histogram as fn() -> Histogram,
        );
        let settlements = Family::<OutcomeLabels, Counter>::default();
        let backlog = Gauge::default();
        let breaker_open = Family::<ChannelLabels, Gauge>::default();
        let (over_hold, shortfalls, shortfall_micros) =
            (Counter::default(), Counter::default(), Counter::default());
        let mut registry = Registry::default();
        registry.register(
            "tollgate_requests",
            "Relay requests by endpoint, model and HTTP status",
            requests.clone(),
        );
        registry.register(
            "tollgate_request_duration_seconds",
            "Time from a relay request's arrival to its end",
            duration.clone(),
        );
        registry.register(
            "tollgate_upstream_ttfb_seconds",
            "Time from a relay request's arrival to the first byte sent on, by channel id",
            ttfb.clone(),
        );
        registry.register(
            "tollgate_settlements",
            "Settled requests by outcome (charged, released, cancelled)",
            settlements.clone(),
        );
        registry.register(
            "tollgate_ledger_backlog",
            "Generations and charges waiting for the database",
            backlog.clone(),
        );
        registry.register(
            "tollgate_breaker_open",
            "1 while a channel's circuit breaker keeps it out, by channel id",
            breaker_open.clone(),
        );
        registry.register(
            "tollgate_charge_over_hold",
            "Requests whose cost exceeded their hold (charged the hold)",
            over_hold.clone(),
        );
        registry.register(
            "tollgate_charge_shortfalls",
            "Settled charges the balance could not fully cover",
            shortfalls.clone(),
        );
        registry.register(
            "tollgate_charge_shortfall_micros",
            "Micro-credits owed by those shortfalls and not charged",
            shortfall_micros.clone(),
        );
        let task_unknown_status = Counter::default();
        registry.register(
            "tollgate_task_unknown_status",
            "Polls of asynchronous tasks that got a status word no family knows (the task stays open)",
            task_unknown_status.clone(),
        );
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Metrics {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            registry,
            requests,
            duration,
            ttfb,
            settlements,
            backlog,
            breaker_open,
            over_hold,
            shortfalls,
            shortfall_micros,
            task_unknown_status,
        }
    }

    /// One relay request ended (`model` empty when it was refused before admission).
    /// The label sets of nearly every request repeat: a thread keeps the metrics of its
    /// last [`RECENT`] ones, so a repeat records without building label strings or
    /// taking the families' locks.
    pub fn request(&self, endpoint: &str, model: &str, status: u16, seconds: f64) {
        let hit = RECENT_REQUESTS.with_borrow(|recent| {
            recent
                .iter()
                .find(|r| {
                    r.metrics == self.id
                        && r.status == status
                        && r.endpoint == endpoint
                        && r.model == model
                })
                .map(|r| {
                    r.count.inc();
                    r.duration.observe(seconds);
                })
                .is_some()
        });
        if hit {
            return;
        }
        let count = self
            .requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_owned(),
                model: model.to_owned(),
                status: status.to_string(),
            })
            .clone();
        let duration = self
            .duration
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.to_owned(),
            })
            .clone();
        count.inc();
        duration.observe(seconds);
        RECENT_REQUESTS.with_borrow_mut(|recent| {
            if recent.len() >= RECENT {
                recent.remove(0);
            }
            recent.push(Recent {
                metrics: self.id,
                endpoint: endpoint.to_owned(),
                model: model.to_owned(),
                status,
                count,
                duration,
            });
        });
    }

    /// The first byte of a channel's answer went to the client.
    pub fn first_byte(&self, channel: Option<i64>, seconds: f64) {
        if let Some(id) = channel {
            self.ttfb
                .get_or_create(&ChannelLabels {
                    channel: id.to_string(),
                })
                .observe(seconds);
        }
    }

    /// A settlement ended.
    pub fn settled(&self, outcome: Settled) {
        self.settlements
            .get_or_create(&OutcomeLabels {
                outcome: outcome.label(),
            })
            .inc();
    }

    /// The text exposition, with the gauges read now: the writer's backlog and the
    /// channels whose breaker is open (of `channels`).
    pub fn render(&self, backlog: usize, channels: &[(i64, bool)]) -> String {
        self.backlog.set(i64::try_from(backlog).unwrap_or(i64::MAX));
        for (id, open) in channels {
            self.breaker_open
                .get_or_create(&ChannelLabels {
                    channel: id.to_string(),
                })
                .set(i64::from(*open));
        }
        // The billing crate counts its money events in plain atomics: bring them over.
        catch_up(&self.over_hold, &billing::metrics::OVER_HOLD);
        catch_up(&self.shortfalls, &billing::metrics::SHORTFALLS);
        catch_up(&self.shortfall_micros, &billing::metrics::SHORTFALL_MICROS);
        catch_up(&self.task_unknown_status, &crate::task::UNKNOWN_STATUS);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            tracing::error!("metrics could not be encoded");
        }
        out
    }
}

/// Raises `counter` to the value of a process-wide atomic.
fn catch_up(counter: &Counter, source: &std::sync::atomic::AtomicU64) {
    let now = source.load(Ordering::Relaxed);
    let seen = counter.get();
    if now > seen {
        counter.inc_by(now - seen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_settlements_and_gauges_are_rendered_in_the_text_format() {
        let m = Metrics::new();
        m.request("/v1/chat/completions", "gpt-4o-mini", 200, 0.012);
        m.request("/v1/chat/completions", "gpt-4o-mini", 200, 0.020);
        m.first_byte(Some(3), 0.004);
        m.settled(Settled::Charged);
        let text = m.render(7, &[(3, true), (4, false)]);
        assert!(text.contains(
            r#"tollgate_requests_total{endpoint="/v1/chat/completions",model="gpt-4o-mini",status="200"} 2"#
        ), "{text}");
        assert!(
            text.contains(r#"tollgate_settlements_total{outcome="charged"} 1"#),
            "{text}"
        );
        assert!(text.contains("tollgate_ledger_backlog 7"), "{text}");
        assert!(
            text.contains(r#"tollgate_breaker_open{channel="3"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tollgate_breaker_open{channel="4"} 0"#),
            "{text}"
        );
        assert!(
            text.contains("tollgate_upstream_ttfb_seconds_count{channel=\"3\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tollgate_request_duration_seconds_bucket"),
            "{text}"
        );
    }

    #[test]
    fn two_processes_metrics_on_one_thread_each_count_only_their_own_requests() {
        let (a, b) = (Metrics::new(), Metrics::new());
        for _ in 0..3 {
            a.request("/v1/chat/completions", "m", 200, 0.01);
        }
        b.request("/v1/chat/completions", "m", 200, 0.01);
        b.request("/v1/chat/completions", "m", 429, 0.01);
        // More label sets than a thread remembers, then the first again.
        for i in 0..40 {
            a.request("/v1/embeddings", &format!("e{i}"), 200, 0.01);
        }
        a.request("/v1/chat/completions", "m", 200, 0.01);
        let line = |status| {
            format!(
                r#"tollgate_requests_total{{endpoint="/v1/chat/completions",model="m",status="{status}"}}"#
            )
        };
        let (ta, tb) = (a.render(0, &[]), b.render(0, &[]));
        assert!(ta.contains(&format!("{} 4\n", line(200))), "{ta}");
        assert!(!ta.contains(&line(429)), "{ta}");
        assert!(tb.contains(&format!("{} 1\n", line(200))), "{tb}");
        assert!(tb.contains(&format!("{} 1\n", line(429))), "{tb}");
        assert!(
            ta.contains(
                r#"tollgate_request_duration_seconds_count{endpoint="/v1/chat/completions"} 4"#
            ),
            "{ta}"
        );
    }
}
