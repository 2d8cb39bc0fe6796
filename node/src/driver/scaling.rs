//! Mesh-level pool scaling (seed §9.2), on the president: from its Registry copy, how
//! many more workers the mesh wants ([`crate::governance::scaling`], thresholds from the
//! policy's `[scaling]`), shown as gauges, and told to the operator's hook.
//!
//! ```text
//!   president, each work round ─► MeshLoad from the Registry ─► workers_wanted
//!     ─► aamas_mesh_workers_wanted, aamas_mesh_open_tasks, aamas_mesh_task_slots
//!     ─► wanted > 0, this node has --scale-hook, the cool-down passed:
//!        /bin/sh -c HOOK  (AAMAS_WORKERS_WANTED, AAMAS_OPEN_TASKS, AAMAS_TASK_SLOTS,
//!        AAMAS_MEMBERS; at most SCALE_HOOK_TIMEOUT; counted by outcome)
//! ```
//!
//! The president also moves members between states by their load
//! ([`crate::governance::scaling::state_move`]: open tasks per member from the governors'
//! reports, thresholds from `[scaling]`), one at a time, by `PlaceMember`.
//!
//! The hook is the operator's, set on the node (`--scale-hook`, never by the policy, so a
//! policy applied by one operator never runs commands on another's machine). A systemd
//! set-up can start another unit from it; a Kubernetes one can scale its StatefulSet.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::Duration;

use aamas_consensus::registry::{ProjectStatus, RegistryCommand};

use crate::driver::runtime::{Node, now_ms};
use crate::governance::scaling::{MeshLoad, Scaling, StateLoad, state_move, workers_wanted};

/// Longest a scale hook may run before it is killed.
pub const SCALE_HOOK_TIMEOUT: Duration = Duration::from_secs(60);

impl Node {
    /// The mesh's load as this node's Registry copy shows it.
    pub(crate) async fn mesh_load(&self) -> MeshLoad {
        self.registry(|registry| {
            let mut load = MeshLoad::default();
            for project in registry.projects().values() {
                if project.status != ProjectStatus::Running {
                    continue;
                }
                if let Some(progress) = project.progress.get(&project.phase) {
                    let closed = u64::from(progress.tasks_done) + u64::from(progress.tasks_failed);
                    load.open_tasks += u64::from(progress.tasks_total).saturating_sub(closed);
                }
            }
            for (_, member) in registry.active_members() {
                load.members += 1;
                load.slots += u64::from(member.capacity);
            }
            load
        })
        .await
        .unwrap_or_default()
    }

    /// As president: sets the scaling gauges, and runs this node's scale hook when the
    /// mesh wants more workers and the `scaling` policy's cool-down has passed.
    pub(crate) async fn scale_check(&self, scaling: Scaling) {
        let load = self.mesh_load().await;
        let wanted = workers_wanted(&load, &scaling);
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.metrics.mesh_workers_wanted.set(gauge(wanted));
        self.metrics.mesh_open_tasks.set(gauge(load.open_tasks));
        self.metrics.mesh_task_slots.set(gauge(load.slots));
        if wanted == 0 {
            return;
        }
        let Some(hook) = self.scale_hook.clone() else {
            return;
        };
        if !self.hook_due(&scaling) {
            return;
        }
        tracing::warn!(
            wanted,
            open = load.open_tasks,
            slots = load.slots,
            "the mesh wants more workers: running the scale hook"
        );
        let Some(node) = self.this.upgrade() else {
            return;
        };
        self.spawn(async move {
            let outcome = run_hook(&hook, wanted, &load).await;
            node.metrics
                .scale_hook_runs
                .get_or_create(&crate::metrics::labels(&[("outcome", outcome)]))
                .inc();
        });
    }

    /// As president: moves one member from the quietest state that can spare one to the
    /// busiest, by the `scaling` policy's state thresholds (`open`: open tasks by state,
    /// from the governors' reports), at most once per its cool-down.
    pub(crate) async fn rebalance_states(&self, scaling: &Scaling, open: &BTreeMap<String, u64>) {
        if scaling.state_target_tasks.is_none() {
            return;
        }
        let now = now_ms();
        let cooldown = u64::from(scaling.state_cooldown_secs).saturating_mul(1_000);
        let last = *self
            .state_moved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|moved| now.saturating_sub(moved) < cooldown) {
            return;
        }
        let alive = self.alive_members().await;
        let loads = self
            .registry(|registry| {
                let mut loads: BTreeMap<String, StateLoad> = BTreeMap::new();
                for (name, info) in registry.states() {
                    // Its voters and mayors stay: moving them would unsettle its group
                    // and cities.
                    let mut voters: BTreeSet<_> = info.known_voters().into_iter().collect();
                    if let Some(record) = &info.governor {
                        voters.extend(record.mayors.values().flatten().copied());
                    }
                    let mut load = StateLoad {
                        open_tasks: open.get(name).copied().unwrap_or(0),
                        ..StateLoad::default()
                    };
                    let mut spare = Vec::new();
                    for (key, member) in registry.members_in_state(name) {
                        load.members += 1;
                        if alive.contains(key) && !voters.contains(key) {
                            // Those placed there by a skill that names it go last.
                            spare.push((member.skills.contains(name), *key));
                        }
                    }
                    spare.sort();
                    load.spare = spare.into_iter().map(|(_, key)| key).collect();
                    loads.insert(name.clone(), load);
                }
                loads
            })
            .await
            .unwrap_or_default();
        let Some((member, from, to)) = state_move(&loads, scaling) else {
            return;
        };
        *self
            .state_moved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(now);
        let key = [
            b"move".as_slice(),
            &member.0,
            to.as_bytes(),
            &now.to_be_bytes(),
        ];
        let command = RegistryCommand::PlaceMember {
            node: member,
            state: to.clone(),
        };
        match self.propose(&key, command).await {
            Ok(()) => {
                self.metrics.state_moves.inc();
                tracing::info!(member = %member.peer_id(), from, to, "moved a member to a busier state");
            }
            Err(error) => tracing::warn!(%error, from, to, "moving a member between states failed"),
        }
    }

    /// Whether the hook may run now; notes that it does.
    fn hook_due(&self, scaling: &Scaling) -> bool {
        let now = now_ms();
        let mut last = self
            .scale_hook_ran
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let cooldown = u64::from(scaling.hook_cooldown_secs).saturating_mul(1_000);
        if last.is_some_and(|ran| now.saturating_sub(ran) < cooldown) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// Runs the hook with the figures in its environment; its outcome's label.
async fn run_hook(hook: &str, wanted: u64, load: &MeshLoad) -> &'static str {
    let child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(hook)
        .env("AAMAS_WORKERS_WANTED", wanted.to_string())
        .env("AAMAS_OPEN_TASKS", load.open_tasks.to_string())
        .env("AAMAS_TASK_SLOTS", load.slots.to_string())
        .env("AAMAS_MEMBERS", load.members.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(child) => child,
        Err(error) => {
            tracing::error!(%error, "the scale hook could not start");
            return "failed";
        }
    };
    match tokio::time::timeout(SCALE_HOOK_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(output)) if output.status.success() => "ok",
        Ok(Ok(output)) => {
            let said = String::from_utf8_lossy(&output.stderr);
            let tail: String = said
                .chars()
                .rev()
                .take(400)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            tracing::error!(status = %output.status, stderr = %tail, "the scale hook failed");
            "failed"
        }
        Ok(Err(error)) => {
            tracing::error!(%error, "the scale hook could not be waited for");
            "failed"
        }
        Err(_) => {
            tracing::error!(timeout = ?SCALE_HOOK_TIMEOUT, "the scale hook timed out and was killed");
            "timeout"
        }
    }
}
