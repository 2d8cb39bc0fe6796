//! The mayor's core: which worker runs the next attempt of each task of its cities, when
//! an attempt is lost or overdue, and when a task has used up its attempts. Pure, in the
//! style of openraft's engine: the driver feeds [`Input`]s with the time, the core queues
//! [`Command`]s, and the driver drains them ([`Mayor::drain`]) into proposals to the
//! governor and Execute messages to workers, whose completions come back as inputs.
//!
//! ```text
//!   Tick(cities' tasks, workers, alive) ──► Propose(AssignTask, then Execute) ─► governor
//!                                       ──► Propose(FailTask)  (attempts used up)
//!                                       ──► Execute            (assigned, not yet delivered)
//!   Assigned(key, attempt, worker)      ──► Execute            (the assignment committed)
//!   Delivered(key, attempt)                 the worker holds it: no more Execute
//!   FailedOn(key, worker)                   retried elsewhere when possible
//! ```
//!
//! The soft state (when each attempt was first seen, whether its worker has it, where a
//! task failed) is rebuilt from the Ledger after a restart or a change of mayor: a new
//! mayor gives running attempts their full time again.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use std::sync::Arc;

use aamas_consensus::ledger::{LedgerCommand, Task, TaskKey, TaskStatus};
use aamas_protocol::NodeKey;

use crate::governance::policy::{self, Outcome, Point, Policy};
use crate::spec::TaskSpec;

/// How long an attempt may stay assigned past its own timeout before the mayor gives it
/// up (worker dead or unreachable) and assigns the next one.
pub const ASSIGNMENT_GRACE_MS: u64 = 5_000;
/// How long an attempt's worker may be unreachable before the attempt counts as lost.
pub const LOST_WORKER_MS: u64 = 3_000;
/// How long a live worker may go without taking an attempt (its Execute refused: busy,
/// or not yet seeing the mayor or the assignment) before the attempt counts as lost and
/// goes elsewhere, rather than waiting for the task's whole timeout.
pub const UNTAKEN_MS: u64 = 5_000;
/// Most commands the core queues before the driver drains them: a tick of a city with
/// more tasks than this dispatches the rest on the next tick.
pub const MAX_QUEUED_COMMANDS: usize = 4_096;

/// A member as a mayor sees it when dispatching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worker {
    /// Its skills.
    pub skills: BTreeSet<String>,
    /// Tasks it runs at once.
    pub capacity: u32,
    /// Whether it belongs to the dispatching state.
    pub in_state: bool,
}

/// What a task asks of its worker: a skill it must have, and one it prefers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wanted<'a> {
    /// A skill the worker must have ([`crate::spec::SHELL_SKILL`] for a shell task).
    pub needs: Option<&'a str>,
    /// A skill the worker should have, if one that has it is free.
    pub prefers: Option<&'a str>,
}

/// The worker for the next attempt of a task: alive, with free capacity, with the skill
/// the task needs, not `denied` by the policy, of the state (others only when the state
/// has no live member that may run it); preferring one it has not failed on, then the
/// skill the task prefers, then the least loaded, key order breaking ties.
pub fn pick_worker(
    wanted: Wanted<'_>,
    workers: &BTreeMap<NodeKey, Worker>,
    failed_on: &BTreeSet<NodeKey>,
    load: &BTreeMap<NodeKey, u32>,
    denied: &BTreeSet<NodeKey>,
    alive: impl Fn(&NodeKey) -> bool,
) -> Option<NodeKey> {
    let able = |key: &NodeKey, worker: &Worker| {
        alive(key)
            && !denied.contains(key)
            && wanted
                .needs
                .is_none_or(|skill| worker.skills.contains(skill))
    };
    // Borrow from other states only when this state has no live worker able to run it;
    // a busy state waits for its own workers.
    let own_able = workers
        .iter()
        .any(|(key, worker)| worker.in_state && able(key, worker));
    let skill = wanted.prefers;
    workers
        .iter()
        .filter(|(key, worker)| able(key, worker))
        .filter(|(_, worker)| worker.in_state || !own_able)
        .filter(|(key, worker)| load.get(*key).copied().unwrap_or(0) < worker.capacity)
        .min_by_key(|(key, worker)| {
            let skilled = skill.is_none_or(|skill| worker.skills.contains(skill));
            (
                failed_on.contains(key),
                !worker.in_state,
                !skilled,
                load.get(*key).copied().unwrap_or(0),
                **key,
            )
        })
        .map(|(key, _)| *key)
}

/// What the policy's dispatch rules judge a worker by, besides the task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerFacts {
    /// Its peer id.
    pub peer: String,
    /// The roles it holds (`worker` when none).
    pub roles: Vec<&'static str>,
    /// The state it belongs to, if any.
    pub state: Option<String>,
}

/// The policy's dispatch rules ([`Point::Dispatch`]), as one state's mayor applies them;
/// only built when the policy has such rules.
#[derive(Debug, Clone)]
pub struct DispatchRules {
    /// The policy in force.
    pub policy: Arc<Policy>,
    /// The dispatching state.
    pub state: String,
    /// The facts of each worker the state may dispatch to.
    pub workers: Arc<BTreeMap<NodeKey, WorkerFacts>>,
}

/// The cities of one state this node holds the lease of.
#[derive(Debug, Clone, Default)]
pub struct StateTasks {
    /// The members that can work, seen from this state (its own members first).
    pub workers: BTreeMap<NodeKey, Worker>,
    /// Tasks assigned to each worker in the state's Ledger.
    pub load: BTreeMap<NodeKey, u32>,
    /// Each city's open tasks: the pending ones that fall to it, and those assigned
    /// through it.
    pub cities: Vec<(String, Vec<(TaskKey, Task)>)>,
    /// A hard limit of the state is spent: no attempt is dispatched (a new one, or the
    /// next after a lost or overdue one) until it rises.
    pub hold: bool,
    /// The policy's dispatch rules, if it has any.
    pub rules: Option<Arc<DispatchRules>>,
    /// Cities that spent a hard limit the policy puts on each city: they dispatch no
    /// attempt until their next period.
    pub held_cities: BTreeSet<String>,
    /// Workers that spent a hard limit the policy puts on each worker (for the attempts
    /// they ran for this state): they are given none of its tasks until their next period.
    pub spent_workers: BTreeSet<NodeKey>,
}

/// What the mayor learns.
#[derive(Debug)]
pub enum Input<'a> {
    /// A look at every city this node holds the lease of, by state, and at who is alive.
    /// What the core follows of tasks not in it (finished, forgotten, or of a city whose
    /// lease lapsed) is dropped.
    Tick {
        /// The states' cities.
        states: &'a [StateTasks],
        /// Who is alive.
        alive: &'a BTreeSet<NodeKey>,
    },
    /// An assignment this core proposed was committed: hand the attempt to its worker.
    Assigned {
        /// The city it was assigned through.
        city: String,
        /// The task.
        key: TaskKey,
        /// The attempt.
        attempt: u32,
        /// Its worker.
        worker: NodeKey,
    },
    /// The worker acknowledged an Execute: it holds the attempt.
    Delivered {
        /// The task.
        key: TaskKey,
        /// The attempt.
        attempt: u32,
    },
    /// An attempt of `key` failed on `worker`: the next one goes elsewhere if it can.
    FailedOn {
        /// The task.
        key: TaskKey,
        /// The worker.
        worker: NodeKey,
    },
}

/// What the mayor asks the driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Propose `command` to the state's governor for `city`; once an assignment is
    /// committed, feed back [`Input::Assigned`] when `then_execute` is set.
    Propose {
        /// The city it is for.
        city: String,
        /// The Ledger command: AssignTask or FailTask.
        command: LedgerCommand,
        /// The worker that runs the attempt once it is committed.
        then_execute: Option<NodeKey>,
    },
    /// Send the attempt to its worker, until it acknowledges ([`Input::Delivered`]).
    Execute {
        /// The city dispatching it (where the outcome goes).
        city: String,
        /// The worker.
        worker: NodeKey,
        /// The task.
        key: TaskKey,
        /// The attempt.
        attempt: u32,
    },
    /// Count a dispatch decision under the rules that fired (none: allowed). A rule that
    /// keeps a task waiting is counted once for that task, not once per look.
    Judged {
        /// Each rule that fired, and how it acted.
        fired: Vec<(String, Outcome)>,
    },
}

/// One state's look during a tick: its workers, who is alive, the load so far (with
/// this tick's assignments), and whether every worker is full.
struct Look<'a> {
    workers: &'a BTreeMap<NodeKey, Worker>,
    alive: &'a BTreeSet<NodeKey>,
    load: BTreeMap<NodeKey, u32>,
    /// The state's tasks assigned, with this tick's assignments.
    running: u32,
    rules: Option<&'a DispatchRules>,
    /// Workers that spent a limit of their own.
    spent: &'a BTreeSet<NodeKey>,
    /// The state's hard limit is spent: nothing is dispatched.
    hold: bool,
    /// No worker can take a task that needs nothing, or one that needs shell.
    full: bool,
    full_for_shell: bool,
}

/// One attempt as the mayor follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Attempt {
    /// When this mayor first saw it assigned.
    since_ms: u64,
    /// Whether its worker acknowledged the Execute.
    delivered: bool,
}

/// The mayor's state: soft, rebuilt from the Ledger by the next ticks.
#[derive(Debug, Default)]
pub struct Mayor {
    attempts: BTreeMap<(TaskKey, u32), Attempt>,
    /// Each open task's spec, decoded once (`None`: it does not decode, and is left
    /// alone); dropped with the task.
    specs: BTreeMap<TaskKey, Option<TaskSpec>>,
    failed_on: BTreeMap<TaskKey, BTreeSet<NodeKey>>,
    /// The dispatch rules already counted as firing for each open task.
    judged: BTreeMap<TaskKey, BTreeSet<String>>,
    queued: VecDeque<Command>,
}

impl Mayor {
    /// A mayor that knows nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one input at `now_ms`.
    pub fn handle(&mut self, now_ms: u64, input: Input<'_>) {
        match input {
            Input::Tick { states, alive } => {
                for state in states {
                    let mut look = Look {
                        workers: &state.workers,
                        alive,
                        load: state.load.clone(),
                        running: state
                            .load
                            .values()
                            .fold(0u32, |sum, n| sum.saturating_add(*n)),
                        rules: state.rules.as_deref(),
                        spent: &state.spent_workers,
                        hold: state.hold,
                        full: false,
                        full_for_shell: false,
                    };
                    for (city, tasks) in &state.cities {
                        look.hold = state.hold || state.held_cities.contains(city);
                        for (key, task) in tasks {
                            self.dispatch(now_ms, city, key, task, &mut look);
                        }
                    }
                }
                // Tasks that finished, were forgotten or went to another mayor.
                let open: BTreeSet<&TaskKey> = states
                    .iter()
                    .flat_map(|state| state.cities.iter())
                    .flat_map(|(_, tasks)| tasks.iter().map(|(key, _)| key))
                    .collect();
                self.attempts.retain(|(key, _), _| open.contains(key));
                self.failed_on.retain(|key, _| open.contains(key));
                self.specs.retain(|key, _| open.contains(key));
                self.judged.retain(|key, _| open.contains(key));
            }
            Input::Assigned {
                city,
                key,
                attempt,
                worker,
            } => {
                self.attempts.insert(
                    (key.clone(), attempt),
                    Attempt {
                        since_ms: now_ms,
                        delivered: false,
                    },
                );
                self.queue(Command::Execute {
                    city,
                    worker,
                    key,
                    attempt,
                });
            }
            Input::Delivered { key, attempt } => {
                if let Some(followed) = self.attempts.get_mut(&(key, attempt)) {
                    followed.delivered = true;
                }
            }
            Input::FailedOn { key, worker } => {
                self.failed_on.entry(key).or_default().insert(worker);
            }
        }
    }

    /// The commands queued since the last drain, oldest first.
    pub fn drain(&mut self) -> impl Iterator<Item = Command> + '_ {
        self.queued.drain(..)
    }

    /// Checks the invariants; only a bug breaks them.
    pub fn validate(&self) {
        assert!(
            self.queued.len() <= MAX_QUEUED_COMMANDS,
            "queue over its bound"
        );
        for (key, attempt) in self.attempts.keys() {
            assert!(*attempt >= 1, "{key}: attempt 0 followed");
        }
        for (key, workers) in &self.failed_on {
            assert!(!workers.is_empty(), "{key}: empty failure set");
        }
    }

    fn queue(&mut self, command: Command) {
        if self.queued.len() < MAX_QUEUED_COMMANDS {
            self.queued.push_back(command);
        }
    }

    /// Queues the counts of a dispatch decision for `key`: each rule that fired on a
    /// worker it could go to, the first time it does for this task; and `allowed` when it
    /// went to a worker on which no rule fired.
    fn count_judged(&mut self, key: &TaskKey, judged: &Judged, picked: Option<NodeKey>) {
        let seen = self.judged.entry(key.clone()).or_default();
        let fired: Vec<(String, Outcome)> = judged
            .fired
            .iter()
            .filter(|(rule, _)| seen.insert(rule.clone()))
            .cloned()
            .collect();
        if picked.is_some_and(|worker| !judged.noted.contains(&worker)) {
            self.queue(Command::Judged { fired: Vec::new() });
        }
        if !fired.is_empty() {
            self.queue(Command::Judged { fired });
        }
    }

    /// The decoded spec of `key` (decoded on first sight, then kept while it is open).
    fn spec(&mut self, key: &TaskKey, task: &Task) -> Option<&TaskSpec> {
        if !self.specs.contains_key(key) {
            self.specs
                .insert(key.clone(), TaskSpec::decode(&task.spec).ok());
        }
        self.specs.get(key).and_then(Option::as_ref)
    }

    fn dispatch(&mut self, now_ms: u64, city: &str, key: &TaskKey, task: &Task, look: &mut Look) {
        let Some(spec) = self.spec(key, task) else {
            return;
        };
        // An llm task without a skill of its own prefers workers with a model (they
        // carry the skill `llm`, see `crate::spec::LLM_SKILL`).
        let skill = match (&spec.skill, &spec.executor) {
            (None, crate::spec::ExecutorSpec::Llm { .. }) => Some(crate::spec::LLM_SKILL.into()),
            (skill, _) => skill.clone(),
        };
        // A shell task goes only to a worker that runs shell tasks.
        let needs = matches!(spec.executor, crate::spec::ExecutorSpec::Shell { .. })
            .then_some(crate::spec::SHELL_SKILL);
        let timeout_secs = spec.timeout_secs;
        let executor = spec.executor.kind();
        let (workers, alive) = (look.workers, look.alive);
        if task.status == TaskStatus::Assigned {
            let Some(worker) = task.worker else { return };
            let followed = *self
                .attempts
                .entry((key.clone(), task.attempt))
                .or_insert(Attempt {
                    since_ms: now_ms,
                    delivered: false,
                });
            let held_ms = now_ms.saturating_sub(followed.since_ms);
            let overdue = held_ms > timeout_secs.saturating_mul(1_000) + ASSIGNMENT_GRACE_MS;
            let lost = !alive.contains(&worker) && held_ms > LOST_WORKER_MS;
            let untaken = !followed.delivered && held_ms > UNTAKEN_MS;
            if !overdue && !lost && !untaken {
                if !followed.delivered {
                    self.queue(Command::Execute {
                        city: city.to_string(),
                        worker,
                        key: key.clone(),
                        attempt: task.attempt,
                    });
                }
                return;
            }
            self.failed_on
                .entry(key.clone())
                .or_default()
                .insert(worker);
            if task.attempt >= task.max_attempts {
                let reason = if lost {
                    "the worker was lost"
                } else if untaken {
                    "the worker did not take the attempt"
                } else {
                    "the task timed out"
                };
                self.queue(Command::Propose {
                    city: city.to_string(),
                    command: LedgerCommand::FailTask {
                        key: key.clone(),
                        attempt: task.attempt,
                        reason: reason.into(),
                        // Lost or overdue: nothing is known against the task itself.
                        transient: true,
                    },
                    then_execute: None,
                });
                return;
            }
            // Reassigned below as the next attempt.
        } else if task.status != TaskStatus::Pending {
            return;
        } else if self
            .attempts
            .get(&(key.clone(), task.attempt + 1))
            .is_some_and(|next| now_ms.saturating_sub(next.since_ms) <= UNTAKEN_MS)
        {
            // This core saw the next attempt committed, and the Ledger copy it reads
            // has not applied it yet: a second assignment would only be refused.
            return;
        }
        // Which workers can take a task depends only on whether it needs shell (which
        // one is preferred depends on more): once none can, none can for the rest of
        // this look.
        if look.hold || look.full || (needs.is_some() && look.full_for_shell) {
            return;
        }
        let wanted = Wanted {
            needs,
            prefers: skill.as_deref(),
        };
        let attempt = task.attempt + 1;
        let judged = look
            .rules
            .map(|rules| judge(rules, (executor, task.phase), wanted, attempt, look));
        let none = BTreeSet::new();
        let denied = judged.as_ref().map_or(&none, |judged| &judged.denied);
        let both;
        let passed_over = if look.spent.is_empty() {
            denied
        } else if denied.is_empty() {
            look.spent
        } else {
            both = denied | look.spent;
            &both
        };
        let failed_on = self.failed_on.get(key).unwrap_or(&none);
        let picked = pick_worker(wanted, workers, failed_on, &look.load, passed_over, |k| {
            alive.contains(k)
        });
        // Only passed-over workers have room: the next task may still go elsewhere.
        let others_free = picked.is_none()
            && !passed_over.is_empty()
            && pick_worker(wanted, workers, failed_on, &look.load, &none, |k| {
                alive.contains(k)
            })
            .is_some();
        if let Some(judged) = &judged {
            self.count_judged(key, judged, picked);
        }
        let Some(worker) = picked else {
            if others_free {
                return;
            }
            if needs.is_some() {
                look.full_for_shell = true;
            } else {
                look.full = true;
            }
            return;
        };
        *look.load.entry(worker).or_default() += 1;
        look.running = look.running.saturating_add(1);
        self.queue(Command::Propose {
            city: city.to_string(),
            command: LedgerCommand::AssignTask {
                key: key.clone(),
                city: city.to_string(),
                worker,
                attempt,
            },
            then_execute: Some(worker),
        });
    }
}

/// What the dispatch rules said of each worker that could take a task now.
#[derive(Debug, Default)]
struct Judged {
    /// The workers a rule denies.
    denied: BTreeSet<NodeKey>,
    /// The rules that fired on some worker, with how they acted (each once).
    fired: Vec<(String, Outcome)>,
    /// The workers not denied on which a rule fired (an advisory one).
    noted: BTreeSet<NodeKey>,
}

/// Judges each worker that could take attempt `attempt` of a task (its executor and
/// phase) now — alive, with the skill it needs and free capacity — by the dispatch rules.
fn judge(
    rules: &DispatchRules,
    (executor, phase): (&str, aamas_protocol::Phase),
    wanted: Wanted<'_>,
    attempt: u32,
    look: &Look<'_>,
) -> Judged {
    let mut judged = Judged::default();
    let task = policy::DispatchedTask {
        executor,
        state: &rules.state,
        phase,
        running: look.running,
    };
    let worker_role: [&'static str; 1] = ["worker"];
    for (key, worker) in look.workers {
        let load = look.load.get(key).copied().unwrap_or(0);
        let candidate = look.alive.contains(key)
            && !look.spent.contains(key)
            && load < worker.capacity
            && wanted
                .needs
                .is_none_or(|skill| worker.skills.contains(skill));
        let Some(facts) = rules.workers.get(key).filter(|_| candidate) else {
            continue;
        };
        let roles: &[&'static str] = if facts.roles.is_empty() {
            &worker_role
        } else {
            &facts.roles
        };
        let of_worker = policy::DispatchWorker {
            peer: facts.peer.clone(),
            roles,
            skills: &worker.skills,
            state: facts.state.as_deref(),
            tasks: load.saturating_add(1),
        };
        let facts = [policy::dispatch_facts(task, of_worker, attempt)];
        let decision = rules.policy.decide(Point::Dispatch, &facts, None);
        if decision.fired.is_empty() {
            continue;
        }
        for (rule, outcome) in &decision.fired {
            if !judged.fired.iter().any(|(name, _)| *name == rule.name) {
                judged.fired.push((rule.name.clone(), *outcome));
            }
        }
        if decision.denied_by().is_some() {
            judged.denied.insert(*key);
        } else {
            judged.noted.insert(*key);
        }
    }
    judged
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ExecutorSpec;

    fn node(n: u8) -> NodeKey {
        NodeKey([n; 32])
    }

    fn key(task: &str) -> TaskKey {
        TaskKey {
            project: "p".into(),
            task: task.into(),
        }
    }

    fn spec(skill: Option<&str>) -> Vec<u8> {
        TaskSpec {
            name: "t".into(),
            state: "technical".into(),
            skill: skill.map(str::to_string),
            executor: ExecutorSpec::Builtin {
                action: "noop".into(),
            },
            input: String::new(),
            depends_on: Vec::new(),
            timeout_secs: 10,
            retries: 1,
            budget: 0,
        }
        .encode()
    }

    fn pending(skill: Option<&str>, attempt: u32) -> Task {
        Task {
            phase: aamas_protocol::Phase::Development,
            spec: spec(skill),
            city: None,
            worker: None,
            attempt,
            max_attempts: 2,
            status: TaskStatus::Pending,
            result_digest: None,
            failure: None,
            transient: false,
            reopened: 0,
            usage: None,
            used: Default::default(),
            charged: 0,
        }
    }

    fn assigned(worker: u8, attempt: u32) -> Task {
        Task {
            city: Some("c-1".into()),
            worker: Some(node(worker)),
            status: TaskStatus::Assigned,
            ..pending(None, attempt)
        }
    }

    fn workers() -> BTreeMap<NodeKey, Worker> {
        BTreeMap::from([
            (
                node(1),
                Worker {
                    skills: BTreeSet::new(),
                    capacity: 1,
                    in_state: true,
                },
            ),
            (
                node(2),
                Worker {
                    skills: BTreeSet::from(["rust".to_string()]),
                    capacity: 1,
                    in_state: true,
                },
            ),
        ])
    }

    fn tick(
        mayor: &mut Mayor,
        now_ms: u64,
        tasks: Vec<(TaskKey, Task)>,
        alive: &[u8],
    ) -> Vec<Command> {
        tick_holding(mayor, now_ms, tasks, alive, false)
    }

    fn tick_holding(
        mayor: &mut Mayor,
        now_ms: u64,
        tasks: Vec<(TaskKey, Task)>,
        alive: &[u8],
        hold: bool,
    ) -> Vec<Command> {
        tick_with(mayor, now_ms, tasks, alive, |state| state.hold = hold)
    }

    fn tick_with(
        mayor: &mut Mayor,
        now_ms: u64,
        tasks: Vec<(TaskKey, Task)>,
        alive: &[u8],
        edit: impl FnOnce(&mut StateTasks),
    ) -> Vec<Command> {
        let alive: BTreeSet<NodeKey> = alive.iter().map(|n| node(*n)).collect();
        let load = tasks
            .iter()
            .filter(|(_, task)| task.status == TaskStatus::Assigned)
            .filter_map(|(_, task)| task.worker)
            .fold(BTreeMap::new(), |mut load, worker| {
                *load.entry(worker).or_insert(0) += 1;
                load
            });
        let mut state = StateTasks {
            workers: workers(),
            load,
            cities: vec![("c-1".to_string(), tasks)],
            ..StateTasks::default()
        };
        edit(&mut state);
        let states = [state];
        mayor.handle(
            now_ms,
            Input::Tick {
                states: &states,
                alive: &alive,
            },
        );
        mayor.validate();
        mayor.drain().collect()
    }

    fn assign(task: &str, worker: u8, attempt: u32) -> Command {
        Command::Propose {
            city: "c-1".into(),
            command: LedgerCommand::AssignTask {
                key: key(task),
                city: "c-1".into(),
                worker: node(worker),
                attempt,
            },
            then_execute: Some(node(worker)),
        }
    }

    fn execute(task: &str, worker: u8, attempt: u32) -> Command {
        Command::Execute {
            city: "c-1".into(),
            worker: node(worker),
            key: key(task),
            attempt,
        }
    }

    #[test]
    fn dispatch_rules_pass_denied_workers_over_and_count_each_rule_once_per_task() {
        let policy = policy::parse(
            r#"
[[rule]]
name = "not-on-the-president"
category = "security"
at = "dispatch"
when = { role = ["president"] }
[[rule]]
name = "note-retries"
category = "performance"
at = "dispatch"
enforcement = "advisory"
max = { attempt = 1 }
"#,
        )
        .expect("valid");
        let facts = |n: u8, roles: Vec<&'static str>| {
            let facts = WorkerFacts {
                peer: node(n).peer_id(),
                roles,
                state: Some("technical".into()),
            };
            (node(n), facts)
        };
        let workers = BTreeMap::from([facts(1, vec!["president"]), facts(2, Vec::new())]);
        let rules = Arc::new(DispatchRules {
            policy: Arc::new(policy),
            state: "technical".into(),
            workers: Arc::new(workers),
        });
        let judged = |fired: &[(&str, Outcome)]| Command::Judged {
            fired: fired.iter().map(|(r, o)| (r.to_string(), *o)).collect(),
        };
        let denied = ("not-on-the-president", Outcome::Denied);
        let mut mayor = Mayor::new();
        // Node 1 is the president: a goes to node 2, and b, with node 2 full, waits
        // rather than going to node 1.
        let tasks = vec![(key("a"), pending(None, 0)), (key("b"), pending(None, 0))];
        let commands = tick_with(&mut mayor, 0, tasks, &[1, 2], |state| {
            state.rules = Some(rules.clone())
        });
        assert_eq!(
            commands,
            vec![
                judged(&[]),
                judged(&[denied]),
                assign("a", 2, 1),
                judged(&[denied]),
            ]
        );
        // b still waits: the rule is not counted again for it.
        let tasks = vec![(key("a"), assigned(2, 1)), (key("b"), pending(None, 0))];
        let commands = tick_with(&mut mayor, 1, tasks, &[1, 2], |state| {
            state.rules = Some(rules.clone())
        });
        assert_eq!(commands, vec![execute("a", 2, 1)]);
        // Node 2 is free again; b's second attempt fires the advisory rule, noted, and
        // goes there.
        let tasks = vec![(key("b"), pending(None, 1))];
        let commands = tick_with(&mut mayor, 2, tasks, &[1, 2], |state| {
            state.rules = Some(rules)
        });
        assert_eq!(
            commands,
            vec![
                judged(&[("note-retries", Outcome::Noted)]),
                assign("b", 2, 2)
            ]
        );
    }

    #[test]
    fn a_dispatch_rule_on_state_tasks_bounds_the_tasks_running_at_once() {
        let policy = policy::parse(
            "[[rule]]\nname = \"one-at-a-time\"\ncategory = \"resource\"\n\
             at = \"dispatch\"\nmax = { state_tasks = 1 }\n",
        )
        .expect("valid");
        let facts = |n: u8| {
            let facts = WorkerFacts {
                peer: node(n).peer_id(),
                roles: Vec::new(),
                state: Some("technical".into()),
            };
            (node(n), facts)
        };
        let rules = Arc::new(DispatchRules {
            policy: Arc::new(policy),
            state: "technical".into(),
            workers: Arc::new(BTreeMap::from([facts(1), facts(2)])),
        });
        let mut mayor = Mayor::new();
        let with_rules = |state: &mut StateTasks| state.rules = Some(rules.clone());
        // Two free workers, two tasks: one runs, the other waits for it.
        let tasks = vec![(key("a"), pending(None, 0)), (key("b"), pending(None, 0))];
        let commands = tick_with(&mut mayor, 0, tasks, &[1, 2], with_rules);
        let assigned = |commands: &[Command]| {
            commands
                .iter()
                .filter(|c| matches!(c, Command::Propose { .. }))
                .count()
        };
        assert_eq!(assigned(&commands), 1, "{commands:?}");
        // a is done: b goes.
        let tasks = vec![(key("b"), pending(None, 0))];
        let with_rules = |state: &mut StateTasks| state.rules = Some(rules.clone());
        let commands = tick_with(&mut mayor, 1, tasks, &[1, 2], with_rules);
        assert_eq!(assigned(&commands), 1, "{commands:?}");
    }

    #[test]
    fn a_city_or_worker_that_spent_its_own_limit_dispatches_nothing_more() {
        let mut mayor = Mayor::new();
        // Node 2 has the skill, but spent its limit: node 1 runs the task.
        let tasks = vec![(key("a"), pending(Some("rust"), 0))];
        let spent = |state: &mut StateTasks| state.spent_workers = BTreeSet::from([node(2)]);
        let commands = tick_with(&mut mayor, 0, tasks, &[1, 2], spent);
        assert_eq!(commands, vec![assign("a", 1, 1)]);
        // Both spent: the task waits.
        let tasks = vec![(key("b"), pending(None, 0))];
        let both =
            |state: &mut StateTasks| state.spent_workers = BTreeSet::from([node(1), node(2)]);
        assert_eq!(tick_with(&mut mayor, 1, tasks, &[1, 2], both), vec![]);
        // The city spent its limit: nothing new is dispatched, and an attempt in flight
        // is still followed.
        let tasks = vec![(key("c"), pending(None, 0)), (key("d"), assigned(1, 1))];
        let held = |state: &mut StateTasks| state.held_cities = BTreeSet::from(["c-1".into()]);
        let commands = tick_with(&mut mayor, 2, tasks, &[1, 2], held);
        assert_eq!(commands, vec![execute("d", 1, 1)]);
    }

    #[test]
    fn pending_tasks_go_to_skilled_workers_with_free_capacity() {
        let mut mayor = Mayor::new();
        let out = tick(
            &mut mayor,
            0,
            vec![
                (key("a"), pending(Some("rust"), 0)),
                (key("b"), pending(Some("rust"), 0)),
                (key("c"), pending(None, 0)),
            ],
            &[1, 2],
        );
        // a: the skilled worker; b: the other (the skilled one is full); c: nobody free.
        assert_eq!(out, vec![assign("a", 2, 1), assign("b", 1, 1)]);
    }

    #[test]
    fn a_spent_limit_holds_new_attempts_and_lets_running_ones_finish() {
        let mut mayor = Mayor::new();
        let tasks = vec![
            (key("a"), pending(None, 0)),
            (key("b"), assigned(1, 1)),
            // Overdue on a lost worker, with attempts left: not reassigned while held.
            (key("c"), assigned(9, 1)),
        ];
        let held = tick_holding(&mut mayor, 0, tasks.clone(), &[1, 2], true);
        assert_eq!(held, vec![execute("b", 1, 1), execute("c", 9, 1)]);
        let held = tick_holding(&mut mayor, 1_000_000, tasks.clone(), &[1, 2], true);
        assert!(
            held.iter()
                .all(|command| !matches!(command, Command::Propose { .. })),
            "{held:?}"
        );
        // Once the limit rises, the pending task goes to the free worker.
        let freed = tick_holding(&mut mayor, 1_000_001, tasks, &[1, 2], false);
        assert!(freed.contains(&assign("a", 2, 1)), "{freed:?}");
    }

    #[test]
    fn a_committed_assignment_is_executed_until_delivered() {
        let mut mayor = Mayor::new();
        mayor.handle(
            0,
            Input::Assigned {
                city: "c-1".into(),
                key: key("a"),
                attempt: 1,
                worker: node(2),
            },
        );
        assert_eq!(mayor.drain().collect::<Vec<_>>(), vec![execute("a", 2, 1)]);
        // Not acknowledged yet: sent again on the next tick.
        assert_eq!(
            tick(&mut mayor, 100, vec![(key("a"), assigned(2, 1))], &[1, 2]),
            vec![execute("a", 2, 1)]
        );
        mayor.handle(
            150,
            Input::Delivered {
                key: key("a"),
                attempt: 1,
            },
        );
        assert_eq!(
            tick(&mut mayor, 200, vec![(key("a"), assigned(2, 1))], &[1, 2]),
            vec![]
        );
    }

    #[test]
    fn an_attempt_on_a_lost_worker_goes_to_another() {
        let mut mayor = Mayor::new();
        mayor.handle(
            0,
            Input::Delivered {
                key: key("a"),
                attempt: 1,
            },
        );
        assert_eq!(
            tick(&mut mayor, 0, vec![(key("a"), assigned(2, 1))], &[1, 2]),
            vec![execute("a", 2, 1)]
        );
        mayor.handle(
            0,
            Input::Delivered {
                key: key("a"),
                attempt: 1,
            },
        );
        // Worker 2 goes quiet: not before LOST_WORKER_MS.
        assert_eq!(
            tick(
                &mut mayor,
                LOST_WORKER_MS,
                vec![(key("a"), assigned(2, 1))],
                &[1]
            ),
            vec![]
        );
        assert_eq!(
            tick(
                &mut mayor,
                LOST_WORKER_MS + 1,
                vec![(key("a"), assigned(2, 1))],
                &[1]
            ),
            vec![assign("a", 1, 2)]
        );
    }

    #[test]
    fn an_assignment_committed_is_not_proposed_again_while_the_ledger_copy_lags() {
        let mut mayor = Mayor::new();
        assert_eq!(
            tick(&mut mayor, 0, vec![(key("a"), pending(None, 0))], &[1, 2]),
            vec![assign("a", 1, 1)]
        );
        mayor.handle(
            10,
            Input::Assigned {
                city: "c-1".into(),
                key: key("a"),
                attempt: 1,
                worker: node(1),
            },
        );
        assert_eq!(mayor.drain().collect::<Vec<_>>(), vec![execute("a", 1, 1)]);
        // The copy read on the next tick has not applied the assignment: no second one
        // (to worker 2, now the least loaded), which the Ledger would refuse.
        assert_eq!(
            tick(&mut mayor, 20, vec![(key("a"), pending(None, 0))], &[1, 2]),
            vec![]
        );
        // The copy caught up: the attempt is followed as assigned.
        assert_eq!(
            tick(&mut mayor, 30, vec![(key("a"), assigned(1, 1))], &[1, 2]),
            vec![execute("a", 1, 1)]
        );
        // A copy that never shows it: proposed again once the attempt counts as untaken.
        assert_eq!(
            tick(
                &mut mayor,
                31 + UNTAKEN_MS,
                vec![(key("a"), pending(None, 0))],
                &[1, 2]
            ),
            vec![assign("a", 1, 1)]
        );
    }

    #[test]
    fn an_outcome_that_failed_sends_the_next_attempt_elsewhere() {
        let mut mayor = Mayor::new();
        mayor.handle(
            0,
            Input::FailedOn {
                key: key("a"),
                worker: node(2),
            },
        );
        // Back to pending after the failure: worker 1 although 2 has the skill.
        assert_eq!(
            tick(
                &mut mayor,
                10,
                vec![(key("a"), pending(Some("rust"), 1))],
                &[1, 2]
            ),
            vec![assign("a", 1, 2)]
        );
    }

    #[test]
    fn a_task_that_used_up_its_attempts_is_failed_once_overdue() {
        let mut mayor = Mayor::new();
        mayor.handle(
            0,
            Input::Delivered {
                key: key("a"),
                attempt: 2,
            },
        );
        let last = vec![(key("a"), assigned(1, 2))];
        assert_eq!(
            tick(&mut mayor, 0, last.clone(), &[1, 2]),
            vec![execute("a", 1, 2)]
        );
        mayor.handle(
            0,
            Input::Delivered {
                key: key("a"),
                attempt: 2,
            },
        );
        let due = 10_000 + ASSIGNMENT_GRACE_MS;
        assert_eq!(tick(&mut mayor, due, last.clone(), &[1, 2]), vec![]);
        assert_eq!(
            tick(&mut mayor, due + 1, last, &[1, 2]),
            vec![Command::Propose {
                city: "c-1".into(),
                command: LedgerCommand::FailTask {
                    key: key("a"),
                    attempt: 2,
                    reason: "the task timed out".into(),
                    transient: true,
                },
                then_execute: None,
            }]
        );
    }

    #[test]
    fn a_city_whose_lease_lapsed_is_forgotten() {
        let mut mayor = Mayor::new();
        assert_eq!(
            tick(&mut mayor, 0, vec![(key("a"), assigned(2, 1))], &[1, 2]),
            vec![execute("a", 2, 1)]
        );
        mayor.handle(
            0,
            Input::FailedOn {
                key: key("a"),
                worker: node(1),
            },
        );
        // The lease lapsed: the driver's next tick has no city for this node.
        mayor.handle(
            1,
            Input::Tick {
                states: &[],
                alive: &BTreeSet::new(),
            },
        );
        assert_eq!(mayor.drain().count(), 0);
        assert!(mayor.attempts.is_empty() && mayor.failed_on.is_empty());
        // Given the city again later, it follows the attempt from scratch.
        assert_eq!(
            tick(&mut mayor, 5, vec![(key("a"), assigned(2, 1))], &[1, 2]),
            vec![execute("a", 2, 1)]
        );
    }

    #[test]
    fn an_attempt_its_live_worker_never_takes_goes_elsewhere() {
        let mut mayor = Mayor::new();
        let held = vec![(key("a"), assigned(2, 1))];
        // Worker 2 is alive but refuses the Execute (busy, or it does not see the
        // assignment yet): resent until UNTAKEN_MS...
        assert_eq!(
            tick(&mut mayor, 0, held.clone(), &[1, 2]),
            vec![execute("a", 2, 1)]
        );
        assert_eq!(
            tick(&mut mayor, UNTAKEN_MS, held.clone(), &[1, 2]),
            vec![execute("a", 2, 1)]
        );
        // ...then the next attempt goes to worker 1, not after the task's timeout.
        assert_eq!(
            tick(&mut mayor, UNTAKEN_MS + 1, held, &[1, 2]),
            vec![assign("a", 1, 2)]
        );
    }
}
