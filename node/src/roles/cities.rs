//! Cities that scale with their state's queue (seed §9.2: "Mayor Agents: scale based on
//! task queue depth"). Pure: the governor hands in its Ledger's counts and the time, and
//! carries out the [`CityChange`] through the Ledger.
//!
//! ```text
//!   pending tasks per city > open % of the target ──► open a city (up to one per possible mayor)
//!   pending tasks per city < close % of the target ──► close an empty city, after a cool-down
//!   a pending task belongs to city_for(task, open cities): spread by a hash of its key
//! ```
//!
//! The target, the percentages (the seed's 1.2× and 0.5×: 120 and 50) and the cool-down
//! come from the policy's `[scaling]` ([`Scaling`]).

use aamas_consensus::ledger::TaskKey;

use crate::governance::scaling::Scaling;

/// How long after the last change another city may be opened: its mayor takes its share
/// of the queue before the depth is judged again.
pub const CITY_OPEN_GAP_MS: u64 = 2_000;

/// A city of a state as the governor's Ledger has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CityLoad {
    /// Its name.
    pub name: String,
    /// Tasks assigned through it and not finished: it cannot close while it has any.
    pub assigned: usize,
}

/// What the governor does about its cities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CityChange {
    /// Nothing.
    Keep,
    /// Open a city with this name.
    Open(String),
    /// Close this (empty) city.
    Close(String),
}

/// The name of city `number` of `state`; the first is `STATE-1`.
pub fn city_name(state: &str, number: usize) -> String {
    format!("{state}-{number}")
}

/// What a state's cities are judged by: the policy's `[scaling]`, and how many cities it
/// may have (one per member it can draw a mayor from).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CityBounds<'a> {
    /// The thresholds and the cool-down.
    pub rules: &'a Scaling,
    /// Most cities the state may have.
    pub max_cities: usize,
}

/// Decides whether `state` opens or closes a city, given its cities, its pending tasks,
/// its bounds, and when its cities last changed.
pub fn scale(
    state: &str,
    cities: &[CityLoad],
    pending: usize,
    bounds: CityBounds<'_>,
    last_change_ms: Option<u64>,
    now_ms: u64,
) -> CityChange {
    let open = cities.len();
    if open == 0 {
        return CityChange::Open(city_name(state, 1));
    }
    let (rules, max_cities) = (bounds.rules, bounds.max_cities);
    let since = last_change_ms.map_or(u64::MAX, |at| now_ms.saturating_sub(at));
    let wide = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    // Percentages of the target over all open cities, in hundredths of a task.
    let pending = wide(pending).saturating_mul(100);
    let target = u64::from(rules.city_target_depth.max(1)).saturating_mul(wide(open));
    let over = pending > target.saturating_mul(u64::from(rules.city_open_percent));
    if over && open < max_cities.max(1) {
        if since < CITY_OPEN_GAP_MS {
            return CityChange::Keep;
        }
        let number = (1..)
            .find(|number| {
                !cities
                    .iter()
                    .any(|city| city.name == city_name(state, *number))
            })
            .unwrap_or(open + 1);
        return CityChange::Open(city_name(state, number));
    }
    let under = pending < target.saturating_mul(u64::from(rules.city_close_percent));
    let shrink = under || open > max_cities.max(1);
    if open > 1 && shrink && since >= rules.city_cooldown_ms() {
        // The last-opened empty city; never the first.
        let first = city_name(state, 1);
        if let Some(city) = cities
            .iter()
            .rev()
            .find(|city| city.assigned == 0 && city.name != first)
        {
            return CityChange::Close(city.name.clone());
        }
    }
    CityChange::Keep
}

/// The city (of `cities`, in any order) whose mayor dispatches the pending task `key`:
/// spread evenly by a hash of the key, the same on every node.
pub fn city_for<'a>(key: &TaskKey, cities: &'a [String]) -> Option<&'a str> {
    let count = u64::try_from(cities.len())
        .ok()
        .filter(|count| *count > 0)?;
    let mut sorted: Vec<&'a String> = cities.iter().collect();
    sorted.sort();
    // FNV-1a over the key: stable across builds and platforms (std's hasher is not
    // promised to be).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.project.bytes().chain([0]).chain(key.task.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let index = usize::try_from(hash % count).ok()?;
    sorted.get(index).map(|city| city.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cities(names: &[(&str, usize)]) -> Vec<CityLoad> {
        names
            .iter()
            .map(|(name, assigned)| CityLoad {
                name: (*name).to_string(),
                assigned: *assigned,
            })
            .collect()
    }

    fn bounds(rules: &Scaling, max_cities: usize) -> CityBounds<'_> {
        CityBounds { rules, max_cities }
    }

    #[test]
    fn a_state_always_has_its_first_city() {
        let rules = Scaling::default();
        assert_eq!(
            scale("tech", &[], 0, bounds(&rules, 3), None, 0),
            CityChange::Open("tech-1".into())
        );
    }

    #[test]
    fn a_deep_queue_opens_a_city_up_to_the_bound() {
        let rules = Scaling::default();
        let target = rules.city_target_depth as usize;
        let one = cities(&[("tech-1", 10)]);
        // The seed's 1.2× by default.
        let deep = target * 12 / 10 + 1;
        assert_eq!(
            scale("tech", &one, deep, bounds(&rules, 3), None, 0),
            CityChange::Open("tech-2".into())
        );
        // At the threshold exactly: keep.
        assert_eq!(
            scale("tech", &one, target * 12 / 10, bounds(&rules, 3), None, 0),
            CityChange::Keep
        );
        // No member left to be its mayor.
        assert_eq!(
            scale("tech", &one, deep, bounds(&rules, 1), None, 0),
            CityChange::Keep
        );
        // Right after another change: the new mayor takes its share first.
        let soon = 1_000 + CITY_OPEN_GAP_MS - 1;
        assert_eq!(
            scale("tech", &one, deep, bounds(&rules, 3), Some(1_000), soon),
            CityChange::Keep
        );
        // The first free number.
        let gap = cities(&[("tech-1", 1), ("tech-3", 1)]);
        assert_eq!(
            scale("tech", &gap, 1_000, bounds(&rules, 3), None, 0),
            CityChange::Open("tech-2".into())
        );
    }

    #[test]
    fn a_shallow_queue_closes_an_empty_city_after_the_cool_down() {
        let rules = Scaling::default();
        let cooldown = rules.city_cooldown_ms();
        let three = cities(&[("tech-1", 0), ("tech-2", 0), ("tech-3", 4)]);
        // The seed's 0.5× by default.
        let shallow = 3 * rules.city_target_depth as usize * 5 / 10 - 1;
        assert_eq!(
            scale(
                "tech",
                &three,
                shallow,
                bounds(&rules, 3),
                Some(0),
                cooldown
            ),
            CityChange::Close("tech-2".into()),
            "the last-opened city without assigned tasks"
        );
        assert_eq!(
            scale(
                "tech",
                &three,
                shallow,
                bounds(&rules, 3),
                Some(0),
                cooldown - 1
            ),
            CityChange::Keep
        );
        // The first city is never closed.
        let two = cities(&[("tech-1", 0), ("tech-2", 3)]);
        assert_eq!(
            scale("tech", &two, 0, bounds(&rules, 3), Some(0), cooldown),
            CityChange::Keep
        );
        // Fewer possible mayors than cities: close even with a queue.
        let over = cities(&[("tech-1", 0), ("tech-2", 0)]);
        assert_eq!(
            scale("tech", &over, 100, bounds(&rules, 1), None, 0),
            CityChange::Close("tech-2".into())
        );
    }

    #[test]
    fn the_policy_sets_the_target_the_thresholds_and_the_cool_down() {
        let rules = Scaling {
            city_target_depth: 10,
            city_open_percent: 200,
            city_close_percent: 10,
            city_cooldown_secs: 5,
            ..Scaling::default()
        };
        let one = cities(&[("tech-1", 0)]);
        // 2× a target of 10: 20 pending keep one city, 21 open another.
        assert_eq!(
            scale("tech", &one, 20, bounds(&rules, 3), None, 0),
            CityChange::Keep
        );
        assert_eq!(
            scale("tech", &one, 21, bounds(&rules, 3), None, 0),
            CityChange::Open("tech-2".into())
        );
        // Two cities close one below 10% of 20 pending, once 5 s have passed.
        let two = cities(&[("tech-1", 0), ("tech-2", 0)]);
        assert_eq!(
            scale("tech", &two, 2, bounds(&rules, 3), Some(0), 5_000),
            CityChange::Keep
        );
        assert_eq!(
            scale("tech", &two, 1, bounds(&rules, 3), Some(0), 4_999),
            CityChange::Keep
        );
        assert_eq!(
            scale("tech", &two, 1, bounds(&rules, 3), Some(0), 5_000),
            CityChange::Close("tech-2".into())
        );
    }

    #[test]
    fn tasks_spread_over_the_cities_the_same_on_every_node() {
        let names: Vec<String> = (1..=3).map(|n| city_name("tech", n)).collect();
        let mut reversed = names.clone();
        reversed.reverse();
        let mut counts = std::collections::BTreeMap::new();
        for n in 0..3_000 {
            let key = TaskKey {
                project: "p".into(),
                task: format!("t{n}"),
            };
            let city = city_for(&key, &names).expect("a city");
            assert_eq!(
                Some(city),
                city_for(&key, &reversed),
                "order does not matter"
            );
            *counts.entry(city.to_string()).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 3);
        assert!(counts.values().all(|count| *count > 800), "{counts:?}");
        assert_eq!(
            city_for(
                &TaskKey {
                    project: "p".into(),
                    task: "t".into()
                },
                &[]
            ),
            None
        );
    }
}
