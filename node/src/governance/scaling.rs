//! Mesh-level pool scaling (seed §9.2): whether the mesh as a whole needs more workers
//! than it has. Pure: the president hands in what its Registry copy says (open tasks of
//! the running projects' current phases, the active members and their task slots) and
//! the scaling policy; the driver sets the gauge and runs the operator's hook.
//!
//! ```text
//!   wanted slots   = ceil(open tasks / open_tasks_per_slot)
//!   wanted workers = ceil((wanted slots - slots) / average slots per member), at least 0
//! ```
//!
//! The same `[scaling]` carries the cities' thresholds, which each governor applies to
//! its state's queue ([`crate::roles::cities::scale`]): the seed's 1.2× and 0.5× of a
//! target depth, and a cool-down.
//!
//! And the states' ([`state_move`]), which the president applies to the open tasks of
//! the running projects in each state: a state whose open tasks per member pass
//! `state_open_percent` of `state_target_tasks` is busy, one below `state_close_percent`
//! quiet; one member moves from the quietest state that can spare one to the busiest,
//! at most once per `state_cooldown_secs`. Off unless the policy names a target.
//!
//! ```text
//!   load(state) = open tasks / members          (members: at least 1)
//!   busy:  load × 100 > target × open_percent   quiet: load × 100 < target × close_percent
//!   move one spare member quietest ─► busiest, if the quiet state stays under busy
//! ```

use std::collections::BTreeMap;

use aamas_protocol::NodeKey;
use serde::{Deserialize, Serialize};

/// The scaling policy (`[scaling]` of the policy document).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scaling {
    /// Open tasks one task slot (a unit of a member's capacity) is meant to carry; more
    /// per slot than this and the mesh wants more workers.
    pub open_tasks_per_slot: u32,
    /// Least time between two runs of the operator's scale hook, in seconds.
    pub hook_cooldown_secs: u32,
    /// Pending tasks per city a state aims for.
    pub city_target_depth: u32,
    /// A state opens a city when its pending tasks per city pass this percentage of the
    /// target (the seed's 1.2×: 120).
    pub city_open_percent: u32,
    /// A state closes an empty city when its pending tasks per city fall below this
    /// percentage of the target (the seed's 0.5×: 50).
    pub city_close_percent: u32,
    /// Least time after its cities last changed before a state closes one, in seconds: a
    /// burst that pauses for a moment does not close the cities it will need again.
    pub city_cooldown_secs: u32,
    /// Open tasks per member a state aims for; `None`: members stay in their states.
    pub state_target_tasks: Option<u32>,
    /// A state is busy past this percentage of the target (the seed's 1.2×: 120).
    pub state_open_percent: u32,
    /// A state is quiet below this percentage of the target (the seed's 0.5×: 50).
    pub state_close_percent: u32,
    /// Least time between two moves of a member, in seconds.
    pub state_cooldown_secs: u32,
}

impl Default for Scaling {
    fn default() -> Self {
        Scaling {
            open_tasks_per_slot: 4,
            hook_cooldown_secs: 300,
            city_target_depth: 64,
            city_open_percent: 120,
            city_close_percent: 50,
            city_cooldown_secs: 30,
            state_target_tasks: None,
            state_open_percent: 120,
            state_close_percent: 50,
            state_cooldown_secs: 60,
        }
    }
}

impl Scaling {
    /// [`Scaling::city_cooldown_secs`] in milliseconds.
    pub fn city_cooldown_ms(&self) -> u64 {
        u64::from(self.city_cooldown_secs).saturating_mul(1_000)
    }
}

/// Most open tasks per slot the policy may name.
pub const MAX_OPEN_TASKS_PER_SLOT: u32 = 100_000;
/// Deepest city target the policy may name.
pub const MAX_CITY_TARGET_DEPTH: u32 = 100_000;
/// Highest city-opening percentage the policy may name (10× the target).
pub const MAX_CITY_OPEN_PERCENT: u32 = 1_000;

/// The mesh's load as the president's Registry copy shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshLoad {
    /// Tasks of the running projects' current phases that are neither done nor failed.
    pub open_tasks: u64,
    /// The active members' capacities, summed.
    pub slots: u64,
    /// Active members.
    pub members: u64,
}

/// One state's load as the president sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateLoad {
    /// Open (pending or assigned) tasks of the running projects in the state.
    pub open_tasks: u64,
    /// Its active members.
    pub members: u64,
    /// The members it can spare, best first: alive, neither a voter of its group nor a
    /// mayor of its cities; those with a skill that names it last.
    pub spare: Vec<NodeKey>,
}

/// The member to move, and from which state to which, under `scaling`'s state
/// thresholds; `None` when no state is busy, none is quiet with a member to spare, or
/// the move would make the quiet one busy.
pub fn state_move(
    states: &BTreeMap<String, StateLoad>,
    scaling: &Scaling,
) -> Option<(NodeKey, String, String)> {
    let target = u64::from(scaling.state_target_tasks?.max(1));
    // Load in hundredths of a task per member, compared with the target in percent.
    let load = |open: u64, members: u64| open.saturating_mul(100) / members.max(1);
    let busy_above = target.saturating_mul(u64::from(scaling.state_open_percent));
    let quiet_below = target.saturating_mul(u64::from(scaling.state_close_percent));
    let (busiest, busy_load) = states
        .iter()
        .map(|(name, state)| (name, load(state.open_tasks, state.members)))
        .filter(|(_, load)| *load > busy_above)
        .max_by_key(|(name, load)| (*load, std::cmp::Reverse(*name)))?;
    let (quietest, state) = states
        .iter()
        .filter(|(name, state)| {
            *name != busiest
                && state.members > 1
                && !state.spare.is_empty()
                && load(state.open_tasks, state.members) < quiet_below
                // It stays under busy with one member fewer.
                && load(state.open_tasks, state.members - 1) <= busy_above
                && load(state.open_tasks, state.members) < busy_load
        })
        .min_by_key(|(name, state)| (load(state.open_tasks, state.members), *name))?;
    Some((state.spare[0], quietest.clone(), busiest.clone()))
}

/// How many more workers the mesh wants under `scaling` (0: enough).
pub fn workers_wanted(load: &MeshLoad, scaling: &Scaling) -> u64 {
    let per_slot = u64::from(scaling.open_tasks_per_slot.max(1));
    let wanted_slots = load.open_tasks.div_ceil(per_slot);
    let missing = wanted_slots.saturating_sub(load.slots);
    if missing == 0 {
        return 0;
    }
    let per_member = (load.slots / load.members.max(1)).max(1);
    missing.div_ceil(per_member)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(open_tasks: u64, slots: u64, members: u64) -> MeshLoad {
        MeshLoad {
            open_tasks,
            slots,
            members,
        }
    }

    fn state(open_tasks: u64, members: u64, spare: &[u8]) -> StateLoad {
        StateLoad {
            open_tasks,
            members,
            spare: spare.iter().map(|n| NodeKey([*n; 32])).collect(),
        }
    }

    #[test]
    fn a_spare_member_moves_from_the_quietest_state_to_the_busiest() {
        let on = Scaling {
            state_target_tasks: Some(4),
            ..Scaling::default()
        };
        // technical carries 30 tasks on 2 members (15 each, past 4.8); market 1 on 3
        // (under 2); finance 2 on 2 (1 each, quiet too, but market is quieter).
        let states = BTreeMap::from([
            ("technical".to_string(), state(30, 2, &[])),
            ("market".to_string(), state(1, 3, &[7, 8])),
            ("finance".to_string(), state(2, 2, &[9])),
        ]);
        assert_eq!(
            state_move(&states, &on),
            Some((NodeKey([7; 32]), "market".into(), "technical".into()))
        );
        // Off without a target.
        assert_eq!(state_move(&states, &Scaling::default()), None);
        // No state is busy: nothing moves.
        let calm = BTreeMap::from([
            ("technical".to_string(), state(9, 2, &[])),
            ("market".to_string(), state(0, 3, &[7])),
        ]);
        assert_eq!(state_move(&calm, &on), None);
        // A quiet state with nobody to spare, or one member only, keeps it.
        let kept = BTreeMap::from([
            ("technical".to_string(), state(30, 2, &[])),
            ("market".to_string(), state(0, 3, &[])),
            ("finance".to_string(), state(0, 1, &[9])),
        ]);
        assert_eq!(state_move(&kept, &on), None);
        // A move that would make the quiet state busy does not happen.
        let close = BTreeMap::from([
            ("technical".to_string(), state(60, 2, &[])),
            ("market".to_string(), state(3, 2, &[7])),
        ]);
        let tight = Scaling {
            state_target_tasks: Some(2),
            state_close_percent: 80,
            ..on
        };
        assert_eq!(state_move(&close, &tight), None);
    }

    #[test]
    fn workers_are_wanted_only_past_the_open_tasks_a_slot_carries() {
        let scaling = Scaling::default();
        // 3 members of 4 slots carry 48 open tasks at 4 per slot.
        assert_eq!(workers_wanted(&load(48, 12, 3), &scaling), 0);
        // 49 want 13 slots: one more member of 4.
        assert_eq!(workers_wanted(&load(49, 12, 3), &scaling), 1);
        // 100 want 25 slots: 13 more, 4 members.
        assert_eq!(workers_wanted(&load(100, 12, 3), &scaling), 4);
        // An empty mesh wants a member per missing slot.
        assert_eq!(workers_wanted(&load(2, 0, 0), &scaling), 1);
        assert_eq!(workers_wanted(&load(0, 0, 0), &scaling), 0);
        let tight = Scaling {
            open_tasks_per_slot: 1,
            ..scaling
        };
        assert_eq!(workers_wanted(&load(13, 12, 3), &tight), 1);
    }
}
