//! The runtime tunables, resolved in one place with one set of defaults: retries per
//! request, circuit-breaker thresholds and the health-check interval. Each has one
//! name, one range and one default ([`Tunables::DEFAULT`]); the environment
//! (`TOLLGATE_<NAME>`) overrides the default, and a value an admin stored in the
//! `settings` table overrides both, on every instance at its next catalog reload.

use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter};
use serde::{Deserialize, Serialize};

use crate::entities::setting;

/// The tunables, each with its unit in its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tunables {
    /// Channels tried per request before the client gets an error.
    pub max_tries: u32,
    /// Failures within the window that open a channel's breaker.
    pub breaker_failures: u32,
    pub breaker_window_s: u64,
    /// How long an open breaker keeps a channel out.
    pub breaker_cooldown_s: u64,
    /// How often auto-disabled channels are re-tested.
    pub health_interval_s: u64,
}

/// Each tunable: its stored name (the environment's is `TOLLGATE_` and its name in
/// capitals) and the range it must be in.
pub const RULES: [(&str, u64, u64); 5] = [
    ("max_tries", 1, 10),
    ("breaker_failures", 1, 1000),
    ("breaker_window_s", 1, 86_400),
    ("breaker_cooldown_s", 1, 86_400),
    ("health_interval_s", 1, 86_400),
];

impl Tunables {
    /// The defaults, when neither the environment nor an admin says otherwise.
    pub const DEFAULT: Tunables = Tunables {
        max_tries: 3,
        breaker_failures: 5,
        breaker_window_s: 60,
        breaker_cooldown_s: 30,
        health_interval_s: 300,
    };

    fn values(&self) -> [u64; 5] {
        [
            u64::from(self.max_tries),
            u64::from(self.breaker_failures),
            self.breaker_window_s,
            self.breaker_cooldown_s,
            self.health_interval_s,
        ]
    }

    fn from_values(v: [u64; 5]) -> Self {
        Tunables {
            max_tries: u32::try_from(v[0]).unwrap_or(u32::MAX),
            breaker_failures: u32::try_from(v[1]).unwrap_or(u32::MAX),
            breaker_window_s: v[2],
            breaker_cooldown_s: v[3],
            health_interval_s: v[4],
        }
    }

    /// The defaults overridden by the environment (`var` reads a variable). A value
    /// outside its range is taken as the nearest end of it (with a warning: releases
    /// before the ranges applied to the environment took such values); one that is not
    /// a whole number is an error naming the variable.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut values = Tunables::DEFAULT.values();
        for (i, (name, lo, hi)) in RULES.iter().enumerate() {
            let env = format!("TOLLGATE_{}", name.to_ascii_uppercase());
            let Some(text) = var(&env) else { continue };
            let n: i64 = text
                .trim()
                .parse()
                .map_err(|_| format!("{env} must be a whole number"))?;
            let v = u64::try_from(n).unwrap_or(0).clamp(*lo, *hi);
            if i64::try_from(v).ok() != Some(n) {
                tracing::warn!(variable = %env, given = n, used = v, "outside {lo}–{hi}: using the nearest end");
            }
            values[i] = v;
        }
        Ok(Tunables::from_values(values))
    }
}

/// `value` for the tunable `name` if it is a whole number in its range; else the
/// message that says which range.
pub fn check(name: &str, value: Option<i64>) -> Result<u64, String> {
    let (lo, hi) = RULES
        .iter()
        .find(|r| r.0 == name)
        .map_or((1, 0), |r| (r.1, r.2));
    value
        .and_then(|v| u64::try_from(v).ok())
        .filter(|v| (lo..=hi).contains(v))
        .ok_or_else(|| format!("{name} must be a whole number from {lo} to {hi}"))
}

/// The tunables in force: the stored ones, else `defaults` (the environment's).
pub async fn effective<C: ConnectionTrait>(db: &C, defaults: Tunables) -> Result<Tunables, DbErr> {
    let names: Vec<&str> = RULES.iter().map(|r| r.0).collect();
    let rows = setting::Entity::find()
        .filter(setting::Column::Name.is_in(names))
        .all(db)
        .await?;
    let mut values = defaults.values();
    for (i, (name, ..)) in RULES.iter().enumerate() {
        let stored = rows
            .iter()
            .find(|r| r.name == *name)
            .and_then(|r| r.value.trim().parse::<i64>().ok());
        if let Ok(v) = check(name, stored) {
            values[i] = v;
        }
    }
    Ok(Tunables::from_values(values))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An environment of `pairs`.
    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name: &str| map.get(name).cloned()
    }

    #[test]
    fn the_environment_overrides_the_defaults_held_to_the_ranges_the_console_enforces() {
        assert_eq!(Tunables::from_env(env(&[])), Ok(Tunables::DEFAULT));
        let t = Tunables::from_env(env(&[
            ("TOLLGATE_MAX_TRIES", " 5 "),
            ("TOLLGATE_BREAKER_COOLDOWN_S", "1"),
        ]))
        .unwrap();
        assert_eq!((t.max_tries, t.breaker_cooldown_s), (5, 1));
        assert_eq!(t.health_interval_s, Tunables::DEFAULT.health_interval_s);
        for (given, used) in [("0", 1), ("-1", 1), ("11", 10), ("1000", 10)] {
            let t = Tunables::from_env(env(&[("TOLLGATE_MAX_TRIES", given)])).unwrap();
            assert_eq!(t.max_tries, used, "{given}");
        }
        assert_eq!(
            Tunables::from_env(env(&[("TOLLGATE_BREAKER_WINDOW_S", "three")])).unwrap_err(),
            "TOLLGATE_BREAKER_WINDOW_S must be a whole number"
        );
    }
}
