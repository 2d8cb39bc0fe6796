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
