//! Whether the database and Redis answer, as last probed: read on every relay
//! admission and admin call, so that during an outage they are refused at once
//! (`503`) instead of each waiting for a pool timeout.

use std::sync::atomic::{AtomicBool, Ordering};

/// The last probe's verdict on each backing service. Both start reachable (the process
/// connected to them to start).
#[derive(Debug)]
pub struct Availability {
    db: AtomicBool,
    redis: AtomicBool,
}

impl Default for Availability {
    fn default() -> Self {
        Availability {
            db: AtomicBool::new(true),
            redis: AtomicBool::new(true),
        }
    }
}

impl Availability {
    /// Both answered their last probe.
    pub fn serving(&self) -> bool {
        self.database() && self.redis()
    }

    /// The database answered its last probe.
    pub fn database(&self) -> bool {
        self.db.load(Ordering::Relaxed)
    }

    /// Redis answered its last probe (always, when none is configured).
    pub fn redis(&self) -> bool {
        self.redis.load(Ordering::Relaxed)
    }

    /// Records a database probe; true when the verdict changed.
    pub fn set_database(&self, ok: bool) -> bool {
        self.db.swap(ok, Ordering::Relaxed) != ok
    }

    /// Records a Redis probe; true when the verdict changed.
    pub fn set_redis(&self, ok: bool) -> bool {
        self.redis.swap(ok, Ordering::Relaxed) != ok
    }
}
