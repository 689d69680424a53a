//! What recording one request's metrics costs on the hot path: the request counter and
//! duration histogram, the time to first byte, the settlement outcome — the calls a
//! served request makes. Single thread, then two threads recording at once.
//!
//! `cargo run --release -p relay-core --example metrics_cost`

#![allow(
    clippy::print_stdout,
    clippy::unwrap_used,
    reason = "a benchmark binary"
)]

use std::sync::Arc;
use std::time::Instant;

use relay_core::metrics::{Metrics, Settled};

const N: u32 = 1_000_000;

fn record(m: &Metrics, i: u32) {
    let secs = f64::from(i % 1000) / 1000.0;
    m.request("/v1/chat/completions", "gpt-4o-mini", 200, secs);
    m.first_byte(Some(1), secs / 2.0);
    m.settled(Settled::Charged);
}

fn main() {
    let m = Arc::new(Metrics::new());
    for i in 0..10_000 {
        record(&m, i);
    }
    let started = Instant::now();
    for i in 0..N {
        record(&m, i);
    }
    let one = started.elapsed().as_nanos() as f64 / f64::from(N);
    let started = Instant::now();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let m = Arc::clone(&m);
            std::thread::spawn(move || {
                for i in 0..N {
                    record(&m, i);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let two = started.elapsed().as_nanos() as f64 / f64::from(2 * N);
    println!(
        "metrics per served request: {one:.0} ns on one thread, {two:.0} ns each with two threads recording (wall time / requests)"
    );
}
