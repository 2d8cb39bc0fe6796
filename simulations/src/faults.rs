//! The simulator's fault layer: one [`SimFaults`] shared by every node of a run decides
//! each message's fate (see `aamas_node::net::faults`): partitions first, then loss, then
//! delay. A partition also cuts connections: none is kept or made across it.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aamas_node::net::faults::{Dice, Fate, Faults};
use libp2p::PeerId;

/// What the layer does now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultState {
    /// Percent of messages lost (0 to 100).
    pub drop_percent: f64,
    /// Every message's fixed delay.
    pub delay: Duration,
    /// Up to this much more delay, uniformly.
    pub jitter: Duration,
    /// Each peer's side of a partition; peers on different sides cannot talk. Empty when
    /// there is no partition; a peer missing from a non-empty map is on side 0.
    pub sides: HashMap<PeerId, u8>,
}

/// The shared fault layer.
#[derive(Debug)]
pub struct SimFaults {
    state: RwLock<FaultState>,
    /// The per-message dice, seeded by the run's seed.
    dice: Dice,
    dropped: AtomicU64,
    delayed: AtomicU64,
    /// Connections refused or closed across a partition.
    cut: AtomicU64,
}

impl SimFaults {
    /// A layer that lets everything through, with dice seeded by `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: RwLock::new(FaultState::default()),
            dice: Dice::new(seed ^ 0xFA17_FA17_FA17_FA17),
            dropped: AtomicU64::new(0),
            delayed: AtomicU64::new(0),
            cut: AtomicU64::new(0),
        }
    }

    /// Changes what the layer does.
    pub fn update(&self, change: impl FnOnce(&mut FaultState)) {
        change(&mut self.state.write().unwrap_or_else(|p| p.into_inner()));
    }

    /// Messages lost so far (by loss or partition).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Messages delayed so far.
    pub fn delayed(&self) -> u64 {
        self.delayed.load(Ordering::Relaxed)
    }

    /// Connections refused or closed across a partition so far.
    pub fn connections_cut(&self) -> u64 {
        self.cut.load(Ordering::Relaxed)
    }

    fn across(state: &FaultState, from: &PeerId, to: &PeerId) -> bool {
        if state.sides.is_empty() {
            return false;
        }
        let side = |peer: &PeerId| state.sides.get(peer).copied().unwrap_or(0);
        side(from) != side(to)
    }
}

impl Faults for SimFaults {
    fn fate(&self, from: &PeerId, to: &PeerId) -> Fate {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        if Self::across(&state, from, to) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return Fate::Drop;
        }
        if state.drop_percent > 0.0 {
            // A roll in [0, 100) with 1/10,000 resolution.
            let roll = (self.dice.roll() % 1_000_000) as f64 / 10_000.0;
            if roll < state.drop_percent {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return Fate::Drop;
            }
        }
        if state.delay.is_zero() && state.jitter.is_zero() {
            return Fate::Deliver;
        }
        let jitter_us = u64::try_from(state.jitter.as_micros()).unwrap_or(u64::MAX);
        let extra = if jitter_us == 0 {
            0
        } else {
            self.dice.roll() % (jitter_us + 1)
        };
        self.delayed.fetch_add(1, Ordering::Relaxed);
        Fate::Delay(state.delay + Duration::from_micros(extra))
    }

    fn reachable(&self, from: &PeerId, to: &PeerId) -> bool {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        if Self::across(&state, from, to) {
            self.cut.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_cut_only_across_sides() {
        let faults = SimFaults::new(1);
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        assert_eq!(faults.fate(&a, &b), Fate::Deliver);
        faults.update(|state| {
            state.sides.insert(c, 1);
        });
        assert_eq!(faults.fate(&a, &b), Fate::Deliver, "both on side 0");
        assert_eq!(faults.fate(&a, &c), Fate::Drop);
        assert_eq!(faults.fate(&c, &b), Fate::Drop);
        assert_eq!(faults.dropped(), 2);
        assert!(faults.reachable(&a, &b), "both on side 0");
        assert!(!faults.reachable(&a, &c), "across the cut");
        assert!(!faults.reachable(&c, &b), "across the cut");
        assert_eq!(faults.connections_cut(), 2);
        faults.update(|state| state.sides.clear());
        assert_eq!(faults.fate(&a, &c), Fate::Deliver, "healed");
        assert!(faults.reachable(&a, &c), "healed");
    }

    #[test]
    fn loss_follows_its_rate_and_delay_its_bounds() {
        let faults = SimFaults::new(7);
        let (a, b) = (PeerId::random(), PeerId::random());
        faults.update(|state| state.drop_percent = 10.0);
        let lost = (0..10_000)
            .filter(|_| faults.fate(&a, &b) == Fate::Drop)
            .count();
        assert!((800..1_200).contains(&lost), "{lost} of 10000 lost at 10%");

        faults.update(|state| {
            state.drop_percent = 0.0;
            state.delay = Duration::from_millis(10);
            state.jitter = Duration::from_millis(5);
        });
        for _ in 0..1_000 {
            match faults.fate(&a, &b) {
                Fate::Delay(delay) => assert!(
                    (Duration::from_millis(10)..=Duration::from_millis(15)).contains(&delay),
                    "{delay:?}"
                ),
                other => panic!("expected a delay, got {other:?}"),
            }
        }
    }
}
