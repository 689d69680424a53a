//! Channel selection: an index `(group, model) -> priority tiers` built from the
//! catalog, the highest tier first, weighted random inside a tier.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use rand::Rng;
use store::catalog::{Catalog, ChannelEntry, ChannelKind, ChannelStatus};

/// Channels of one priority, with their weights.
#[derive(Debug, Default)]
pub struct Tier {
    pub priority: i32,
    pub channels: Vec<Arc<ChannelEntry>>,
}

/// The routing index, rebuilt whole on every catalog change: group, then model (two
/// lookups by `&str`, nothing allocated per request).
#[derive(Debug, Default)]
pub struct Router {
    routes: HashMap<String, HashMap<String, Vec<Tier>>>,
}

impl Router {
    /// Indexes every enabled channel that has at least one usable key.
    pub fn build(catalog: &Catalog) -> Self {
        let mut routes: HashMap<String, HashMap<String, Vec<Tier>>> = HashMap::new();
        for ch in catalog
            .channels
            .iter()
            .filter(|c| c.status == ChannelStatus::Enabled && !c.keys.is_empty())
        {
            for group in &ch.groups {
                let mut models: BTreeSet<&str> = ch.models.iter().map(String::as_str).collect();
                models.extend(ch.model_mapping.keys().map(String::as_str));
                let by_model = routes.entry(group.clone()).or_default();
                for model in models {
                    let tiers = by_model.entry(model.to_owned()).or_default();
                    match tiers.iter_mut().find(|t| t.priority == ch.priority) {
                        Some(t) => t.channels.push(Arc::clone(ch)),
                        None => tiers.push(Tier {
                            priority: ch.priority,
                            channels: vec![Arc::clone(ch)],
                        }),
                    }
                }
            }
        }
        for tiers in routes.values_mut().flat_map(HashMap::values_mut) {
            tiers.sort_by_key(|t| std::cmp::Reverse(t.priority));
        }
        Router { routes }
    }

    fn tiers(&self, group: &str, model: &str) -> Option<&[Tier]> {
        self.routes.get(group)?.get(model).map(Vec::as_slice)
    }

    /// Whether an enabled channel of type `kind` serves `model` to `group`.
    pub fn serves_where(
        &self,
        group: &str,
        model: &str,
        kind: impl Fn(ChannelKind) -> bool,
    ) -> bool {
        self.tiers(group, model).is_some_and(|tiers| {
            tiers
                .iter()
                .any(|t| t.channels.iter().any(|c| kind(c.kind)))
        })
    }

    /// Every model channels of type `kind` serve to `group`, sorted.
    pub fn models_for_group_where(
        &self,
        group: &str,
        kind: impl Fn(ChannelKind) -> bool,
    ) -> BTreeSet<&str> {
        self.routes
            .get(group)
            .into_iter()
            .flatten()
            .filter(|(_, tiers)| {
                tiers
                    .iter()
                    .any(|t| t.channels.iter().any(|c| kind(c.kind)))
            })
            .map(|(m, _)| m.as_str())
            .collect()
    }

    /// Whether any enabled channel serves `model` to `group`.
    pub fn serves(&self, group: &str, model: &str) -> bool {
        self.tiers(group, model).is_some()
    }

    /// Every model served to `group`, sorted.
    pub fn models_for_group(&self, group: &str) -> BTreeSet<&str> {
        self.routes
            .get(group)
            .into_iter()
            .flat_map(HashMap::keys)
            .map(String::as_str)
            .collect()
    }

    /// Picks the next channel to try: the highest tier that still has untried
    /// channels, weighted random among those.
    pub fn pick(&self, group: &str, model: &str, tried: &[i64]) -> Option<Arc<ChannelEntry>> {
        self.pick_where(group, model, |c| !tried.contains(&c.id))
    }

    /// Like [`Router::pick`], among the channels `accept` lets through.
    pub fn pick_where(
        &self,
        group: &str,
        model: &str,
        accept: impl Fn(&ChannelEntry) -> bool,
    ) -> Option<Arc<ChannelEntry>> {
        let tiers = self.tiers(group, model)?;
        let mut rng = rand::rng();
        for tier in tiers {
            let open: Vec<&Arc<ChannelEntry>> =
                tier.channels.iter().filter(|c| accept(c)).collect();
            if open.is_empty() {
                continue;
            }
            let total: u64 = open.iter().map(|c| u64::from(c.weight.max(1))).sum();
            let mut roll = rng.random_range(0..total);
            for c in &open {
                let w = u64::from(c.weight.max(1));
                if roll < w {
                    return Some(Arc::clone(c));
                }
                roll -= w;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use store::catalog::ChannelSecret;

    fn channel(id: i64, priority: i32, weight: u32, status: &str) -> Arc<ChannelEntry> {
        Arc::new(ChannelEntry {
            id,
            name: format!("c{id}"),
            kind: ChannelKind::OpenAi,
            base_url: "http://x".into(),
            models: vec!["m".into()],
            model_mapping: HashMap::from([("alias".to_owned(), "m".to_owned())]),
            groups: vec!["default".into()],
            priority,
            weight,
            headers: vec![],
            timeout_s: 30,
            status: ChannelStatus::parse(status),
            keys: vec![ChannelSecret::new(ChannelKind::OpenAi, id, "k".into())],
            next_key: Default::default(),
            costs: Default::default(),
            wire: Default::default(),
        })
    }

    fn catalog(channels: Vec<Arc<ChannelEntry>>) -> Catalog {
        Catalog {
            channels,
            ..Catalog::default()
        }
    }

    #[test]
    fn the_highest_priority_tier_is_tried_first_then_the_next() {
        let r = Router::build(&catalog(vec![
            channel(1, 0, 1, "enabled"),
            channel(2, 10, 1, "enabled"),
        ]));
        assert_eq!(r.pick("default", "m", &[]).unwrap().id, 2);
        assert_eq!(r.pick("default", "m", &[2]).unwrap().id, 1);
        assert!(r.pick("default", "m", &[1, 2]).is_none());
    }

    #[test]
    fn disabled_channels_and_other_groups_are_not_routed() {
        let r = Router::build(&catalog(vec![channel(1, 0, 1, "disabled")]));
        assert!(!r.serves("default", "m"));
        let r = Router::build(&catalog(vec![channel(1, 0, 1, "enabled")]));
        assert!(r.serves("default", "m"));
        assert!(r.serves("default", "alias"));
        assert!(!r.serves("vip", "m"));
    }

    #[test]
    fn weights_share_traffic_inside_a_tier() {
        let r = Router::build(&catalog(vec![
            channel(1, 0, 1, "enabled"),
            channel(2, 0, 3, "enabled"),
        ]));
        let n = 20_000;
        let heavy = (0..n)
            .filter(|_| r.pick("default", "m", &[]).unwrap().id == 2)
            .count();
        let share = heavy as f64 / f64::from(n);
        assert!((share - 0.75).abs() < 0.03, "share {share}");
    }
}
