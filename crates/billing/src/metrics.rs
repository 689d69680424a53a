//! Counters of money events that must never pass silently; `/metrics` exports them.

use std::sync::atomic::AtomicU64;

/// Requests whose cost exceeded their hold (charged the hold).
pub static OVER_HOLD: AtomicU64 = AtomicU64::new(0);
/// Settled charges the database could not take in full (the balance was short).
pub static SHORTFALLS: AtomicU64 = AtomicU64::new(0);
/// Micro-credits owed by those shortfalls and not charged.
pub static SHORTFALL_MICROS: AtomicU64 = AtomicU64::new(0);
