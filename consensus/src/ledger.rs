//! A state group's replicated state: the [`Ledger`] of its cities, mayors and tasks.
//!
//! Like the `Registry`, a pure and deterministic state machine: the governor proposes
//! [`LedgerCommand`]s, every replica applies the committed ones with [`Ledger::apply`], time
//! comes in the commands, and every map is a `BTreeMap`.
//!
//! ```text
//!   Ledger ── cities        name → City (the latest mayor's lease)
//!          ── tasks         (project, task) → Task (phase, spec, city, worker, attempt, status)
//!          ── resource_use  resource → amount used
//!          ── accounts      state | city | worker → Account (use in total and per period)
//!          ── limits        resource → Limit (the state's, copied from the Registry)
//!
//!   task  Pending ──assign (attempt + 1)──► Assigned ──complete──► Succeeded (one result)
//!            ▲                                │  │
//!            └──── fail, attempts left ───────┘  └──── fail, none left ──► Failed
//!         Pending | Assigned | Failed ──escalate──► Escalated
//! ```
//!
//! Attempts fence workers: a result or failure reported for an attempt other than the
//! task's current one is refused, and a task commits exactly one result.

use std::collections::BTreeMap;
use std::fmt;

use aamas_protocol::{NodeKey, Phase};
use serde::{Deserialize, Serialize};

use crate::registry::{MAX_REASON_BYTES, PhaseProgress, check_name, check_size};
use crate::resources::{Account, Limit, Resource, Usage, spent_limit};

/// Most cities in one state.
pub const MAX_CITIES: usize = 1_024;
/// Most tasks in one ledger, finished ones included until [`LedgerCommand::ForgetProject`].
pub const MAX_TASKS_PER_LEDGER: usize = 1_000_000;
/// Largest task spec, in bytes.
pub const MAX_TASK_SPEC_BYTES: usize = 64 << 10;
/// Largest sum of all task specs, in bytes; bounds the snapshot.
pub const MAX_TASK_SPEC_BYTES_TOTAL: u64 = 256 << 20;
/// Most attempts a task may be given.
pub const MAX_TASK_ATTEMPTS: u32 = 16;
/// Most distinct resources whose use is recorded.
pub const MAX_RESOURCES: usize = 1_024;
/// How a refused assignment's reason starts when a hard limit is spent.
pub const SPENT_PREFIX: &str = "the state's hard limit is spent";
/// Longest lease a mayor may be given or renew to, in milliseconds from `now_ms`.
pub const MAX_LEASE_MS: u64 = 3_600_000;
/// Most accounts one ledger keeps: the state's, one per city, and the workers' (a worker
/// charged once the table is full is counted in the state's and its city's only).
pub const MAX_ACCOUNTS: usize = 1 + MAX_CITIES + 4_096;

/// Whose account a charge goes to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AccountKey {
    /// The whole state.
    State,
    /// One of its cities.
    City(String),
    /// A worker, for the attempts it ran for this state.
    Worker(NodeKey),
}

/// A mayor's lease on a city.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The mayor.
    pub mayor: NodeKey,
    /// The lease holds while `now_ms < until_ms`.
    pub until_ms: u64,
    /// Starts at 1 and grows with every change of mayor, so a deposed mayor is recognised.
    pub term: u64,
}

impl Lease {
    /// Whether the lease still holds at `now_ms`.
    pub fn holds_at(&self, now_ms: u64) -> bool {
        now_ms < self.until_ms
    }
}

/// A city: one work queue of the state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct City {
    /// The latest lease; kept after it lapses, so that the next term follows on from it.
    pub mayor: Option<Lease>,
}

/// Names a task: its project's id and its own id within the project.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TaskKey {
    /// The project's id (as in the registry).
    pub project: String,
    /// The task's id within the project.
    pub task: String,
}

impl fmt::Display for TaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.project, self.task)
    }
}

/// Where a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskStatus {
    /// Waiting for a worker (first time, or for a retry).
    Pending,
    /// A worker runs its current attempt.
    Assigned,
    /// Its one result is committed.
    Succeeded,
    /// Its last allowed attempt failed.
    Failed,
    /// Handed up to the governor; nothing more happens to it here.
    Escalated,
}

/// One task of a project's phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// The phase it belongs to.
    pub phase: Phase,
    /// Its specification, opaque here.
    pub spec: Vec<u8>,
    /// The city it was last assigned through.
    pub city: Option<String>,
    /// The worker of the latest attempt; `None` while pending.
    pub worker: Option<NodeKey>,
    /// The latest attempt, from 1; 0 before the first assignment.
    pub attempt: u32,
    /// Attempts allowed, 1 to [`MAX_TASK_ATTEMPTS`].
    pub max_attempts: u32,
    /// Where it stands.
    pub status: TaskStatus,
    /// The digest of its committed result; set exactly when it succeeded.
    pub result_digest: Option<[u8; 32]>,
    /// The latest failure or escalation reason.
    pub failure: Option<String>,
    /// Whether the latest failure was a fault of the moment (a lost worker, a timeout,
    /// an unreachable service), which another attempt may cure, rather than the task
    /// failing on its merits. Set by whoever records the failure, from the failure's
    /// type, never read out of the reason's words.
    pub transient: bool,
    /// How many times the president reopened it after an escalation.
    pub reopened: u32,
    /// What the attempt that succeeded used of a model, when it called one.
    pub usage: Option<TaskUsage>,
    /// What its charged attempts used, in all ([`LedgerCommand::ChargeAttempt`]).
    pub used: Usage,
    /// The last attempt charged (0: none).
    pub charged: u32,
}

/// Model use of one task's successful attempt, as the worker measured it from the
/// endpoint's replies: committed with the result, so that a project's cost is the sum
/// over its tasks whoever reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskUsage {
    /// The model the worker called.
    pub model: String,
    /// Tokens of the prompts (system, context and input).
    pub prompt_tokens: u64,
    /// Tokens of the replies.
    pub completion_tokens: u64,
    /// The estimated cost in millionths of the price unit, from the worker's configured
    /// prices for the model (0 when it has none).
    pub cost_micros: u64,
}

/// Longest model name a [`TaskUsage`] carries.
pub const MAX_MODEL_NAME_BYTES: usize = 256;

/// A command to a state group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerCommand {
    /// Creates a city; adding it again is a duplicate.
    AddCity {
        /// Its name.
        name: String,
    },
    /// Gives a city a mayor: allowed when it has none, when the lease lapsed at `now_ms`, or
    /// to renew (or shorten) the current mayor's lease. A new mayor starts the next term.
    AppointMayor {
        /// The city.
        city: String,
        /// The mayor.
        mayor: NodeKey,
        /// The proposer's time.
        now_ms: u64,
        /// The end of the lease, at most [`MAX_LEASE_MS`] after `now_ms`.
        until_ms: u64,
    },
    /// Extends the current mayor's lease while it still holds; never shortens it.
    RenewLease {
        /// The city.
        city: String,
        /// The mayor renewing.
        mayor: NodeKey,
        /// The proposer's time.
        now_ms: u64,
        /// The new end of the lease, at most [`MAX_LEASE_MS`] after `now_ms`.
        until_ms: u64,
    },
    /// Adds a pending task; adding the identical task again is a duplicate.
    AddTask {
        /// The task.
        key: TaskKey,
        /// Its phase.
        phase: Phase,
        /// Its specification.
        spec: Vec<u8>,
        /// Attempts allowed.
        max_attempts: u32,
    },
    /// Assigns the next attempt of a pending or assigned (timed-out) task to a worker.
    AssignTask {
        /// The task.
        key: TaskKey,
        /// The city dispatching it.
        city: String,
        /// The worker.
        worker: NodeKey,
        /// Exactly the task's attempt plus one.
        attempt: u32,
    },
    /// Commits the task's one result. The same result again is a duplicate; another one,
    /// or one from a stale attempt, is refused.
    CompleteTask {
        /// The task.
        key: TaskKey,
        /// The attempt that produced it.
        attempt: u32,
        /// SHA-256 of the result.
        result_digest: [u8; 32],
        /// What it used of a model, if it called one.
        usage: Option<TaskUsage>,
    },
    /// Records the failure of the current attempt: back to pending while attempts are
    /// left, else failed.
    FailTask {
        /// The task.
        key: TaskKey,
        /// The attempt that failed.
        attempt: u32,
        /// Why.
        reason: String,
        /// Whether it was a fault of the moment (see [`Task::transient`]).
        transient: bool,
    },
    /// Hands a task that has not succeeded up to the governor.
    EscalateTask {
        /// The task.
        key: TaskKey,
        /// Why.
        reason: String,
    },
    /// Gives an escalated task more attempts (the president's decision to reassign it):
    /// it is pending again, with `max_attempts` raised to `attempts` more than it has
    /// used. Reopening it again with the same `reopening` number is a duplicate.
    ReopenTask {
        /// The task.
        key: TaskKey,
        /// How many more attempts, at least 1.
        attempts: u32,
        /// Which reopening this is, from 1, so a repeated command is recognised.
        reopening: u32,
    },
    /// Adds to a resource's recorded use, saturating.
    RecordResourceUse {
        /// The resource.
        resource: String,
        /// How much more was used.
        amount: u64,
    },
    /// Forgets every task of a project (one that finished or was given up).
    ForgetProject {
        /// The project's id.
        project: String,
    },
    /// Overwrites a task's committed result, breaking the one-result invariant on
    /// purpose: only the simulator's test of its own checker proposes it, through
    /// `aamas_node::Node::overwrite_result`; no role ever does. It is part of every build
    /// and stays the last variant, so that the log's encoding never depends on a cargo
    /// feature (a build with a test hook and one without read each other's entries).
    OverwriteResult {
        /// The task.
        key: TaskKey,
        /// The other result's SHA-256.
        result_digest: [u8; 32],
    },
    /// Closes a city that no task is assigned through; closing an unknown one is a
    /// duplicate. Its pending tasks go to the remaining cities' mayors.
    RemoveCity {
        /// Its name.
        name: String,
    },
    /// Charges what the current attempt of a task used, measured by its worker, to the
    /// task and to the accounts of the state, the attempt's city and its worker. Proposed
    /// by the mayor before the attempt's outcome; the same attempt again is a duplicate.
    ChargeAttempt {
        /// The task.
        key: TaskKey,
        /// Its current attempt, assigned.
        attempt: u32,
        /// What the attempt used.
        used: Usage,
        /// The proposer's time: the windows the charge counts in.
        now_ms: u64,
    },
    /// Puts the state's limits in force, copied by the governor from the Registry
    /// (`StateInfo::limits`); a version not newer than the one in force is a duplicate.
    SetLimits {
        /// The Registry's version of them.
        version: u64,
        /// The limits, by resource.
        limits: BTreeMap<Resource, Limit>,
        /// The proposer's time.
        now_ms: u64,
    },
}

/// The result of applying a [`LedgerCommand`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerResponse {
    /// Applied.
    Ok,
    /// Its effect was already in place; nothing changed.
    Duplicate,
    /// Not applied; nothing changed.
    Rejected {
        /// What was wrong and what to do about it.
        reason: String,
    },
    /// Applied; where the task now stands.
    TaskState {
        /// Its status.
        status: TaskStatus,
        /// Its current attempt.
        attempt: u32,
    },
    /// Not applied: the task exists with other content (phase, spec or attempts); the
    /// first version stands. (Last, so that responses stored before it still decode.)
    Conflict {
        /// What differs and what to do about it.
        reason: String,
    },
}

/// A state group's replicated state; changed only through [`Ledger::apply`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    cities: BTreeMap<String, City>,
    tasks: BTreeMap<TaskKey, Task>,
    resource_use: BTreeMap<String, u64>,
    /// The sum of all task spec sizes, so that `AddTask` checks the total in O(1).
    task_spec_bytes: u64,
    accounts: BTreeMap<AccountKey, Account>,
    /// What the tasks forgotten with their projects used: the state's account is always
    /// this plus what the tasks it keeps used.
    forgotten: Usage,
    limits: BTreeMap<Resource, Limit>,
    limits_version: u64,
    /// The latest time a committed command carried (leases, charges, limits): the time
    /// at which the limits' windows are read.
    clock_ms: u64,
}

/// A handler's result: the response, or why the command is rejected.
type Outcome = Result<LedgerResponse, String>;

const OK: Outcome = Ok(LedgerResponse::Ok);
const DUPLICATE: Outcome = Ok(LedgerResponse::Duplicate);

impl Ledger {
    /// Applies one committed command. Never panics; a rejected command changes nothing.
    pub fn apply(&mut self, command: &LedgerCommand) -> LedgerResponse {
        use LedgerCommand as C;
        let outcome = match command {
            C::AddCity { name } => self.add_city(name),
            C::AppointMayor {
                city,
                mayor,
                now_ms,
                until_ms,
            } => self.appoint_mayor(city, *mayor, *now_ms, *until_ms),
            C::RenewLease {
                city,
                mayor,
                now_ms,
                until_ms,
            } => self.renew_lease(city, *mayor, *now_ms, *until_ms),
            C::AddTask {
                key,
                phase,
                spec,
                max_attempts,
            } => self.add_task(key, *phase, spec, *max_attempts),
            C::AssignTask {
                key,
                city,
                worker,
                attempt,
            } => self.assign_task(key, city, *worker, *attempt),
            C::CompleteTask {
                key,
                attempt,
                result_digest,
                usage,
            } => self.complete_task(key, *attempt, *result_digest, usage),
            C::OverwriteResult { key, result_digest } => self.overwrite_result(key, *result_digest),
            C::RemoveCity { name } => self.remove_city(name),
            C::FailTask {
                key,
                attempt,
                reason,
                transient,
            } => self.fail_task(key, *attempt, reason, *transient),
            C::EscalateTask { key, reason } => self.escalate_task(key, reason),
            C::ReopenTask {
                key,
                attempts,
                reopening,
            } => self.reopen_task(key, *attempts, *reopening),
            C::RecordResourceUse { resource, amount } => self.record_use(resource, *amount),
            C::ForgetProject { project } => self.forget_project(project),
            C::ChargeAttempt {
                key,
                attempt,
                used,
                now_ms,
            } => self.charge_attempt(key, *attempt, used, *now_ms),
            C::SetLimits {
                version,
                limits,
                now_ms: _,
            } => self.set_limits(*version, limits),
        };
        if outcome.is_ok()
            && let C::AppointMayor { now_ms, .. }
            | C::RenewLease { now_ms, .. }
            | C::ChargeAttempt { now_ms, .. }
            | C::SetLimits { now_ms, .. } = command
        {
            self.clock_ms = self.clock_ms.max(*now_ms);
        }
        outcome.unwrap_or_else(|reason| LedgerResponse::Rejected { reason })
    }

    fn add_city(&mut self, name: &str) -> Outcome {
        check_name("city name", name)?;
        if self.cities.contains_key(name) {
            return DUPLICATE;
        }
        if self.cities.len() >= MAX_CITIES {
            return Err(full("cities", MAX_CITIES));
        }
        self.cities.insert(name.to_owned(), City::default());
        OK
    }

    fn remove_city(&mut self, name: &str) -> Outcome {
        check_name("city name", name)?;
        if !self.cities.contains_key(name) {
            return DUPLICATE;
        }
        let busy = self
            .tasks
            .values()
            .any(|task| task.status == TaskStatus::Assigned && task.city.as_deref() == Some(name));
        if busy {
            return Err(format!(
                "city {name:?} has tasks assigned through it; close it once they finish"
            ));
        }
        self.cities.remove(name);
        OK
    }

    fn city_mut(&mut self, city: &str) -> Result<&mut City, String> {
        check_name("city name", city)?;
        let found = self.cities.get_mut(city);
        found.ok_or_else(|| format!("no city {city:?}; add it with AddCity"))
    }

    fn appoint_mayor(&mut self, city: &str, mayor: NodeKey, now_ms: u64, until_ms: u64) -> Outcome {
        check_lease(now_ms, until_ms)?;
        let record = self.city_mut(city)?;
        let term = match record.mayor {
            None => 1,
            Some(lease) if lease.mayor == mayor && lease.until_ms == until_ms => return DUPLICATE,
            Some(lease) if lease.mayor == mayor => lease.term,
            // 2^64 changes of mayor cannot happen; saturating keeps `apply` total regardless.
            Some(lease) if !lease.holds_at(now_ms) => lease.term.saturating_add(1),
            Some(lease) => {
                let (held_by, until) = (lease.mayor, lease.until_ms);
                return Err(format!("{city:?} has mayor {held_by} until {until} ms"));
            }
        };
        record.mayor = Some(Lease {
            mayor,
            until_ms,
            term,
        });
        OK
    }

    fn renew_lease(&mut self, city: &str, mayor: NodeKey, now_ms: u64, until_ms: u64) -> Outcome {
        check_lease(now_ms, until_ms)?;
        let record = self.city_mut(city)?;
        let Some(lease) = record.mayor.as_mut().filter(|lease| lease.mayor == mayor) else {
            return Err(format!("{mayor} is not the mayor of {city:?}"));
        };
        if !lease.holds_at(now_ms) {
            let until = lease.until_ms;
            return Err(format!(
                "the lease on {city:?} lapsed at {until} ms; appoint anew"
            ));
        }
        // Renewals may commit out of order; taking the later end keeps them commutative.
        lease.until_ms = lease.until_ms.max(until_ms);
        OK
    }

    fn add_task(&mut self, key: &TaskKey, phase: Phase, spec: &[u8], max_attempts: u32) -> Outcome {
        check_key(key)?;
        check_size("task spec", spec.len(), MAX_TASK_SPEC_BYTES)?;
        if !(1..=MAX_TASK_ATTEMPTS).contains(&max_attempts) {
            return Err(format!("max_attempts must be 1 to {MAX_TASK_ATTEMPTS}"));
        }
        if let Some(task) = self.tasks.get(key) {
            if task.phase != phase || task.spec != spec || task.max_attempts != max_attempts {
                return Ok(LedgerResponse::Conflict {
                    reason: format!("task {key} exists with other content; use a new id"),
                });
            }
            return DUPLICATE;
        }
        if self.tasks.len() >= MAX_TASKS_PER_LEDGER {
            return Err(full("tasks", MAX_TASKS_PER_LEDGER));
        }
        let spec_bytes = self.task_spec_bytes.saturating_add(spec.len() as u64);
        if spec_bytes > MAX_TASK_SPEC_BYTES_TOTAL {
            return Err(format!(
                "task specs would exceed {MAX_TASK_SPEC_BYTES_TOTAL} bytes"
            ));
        }
        let task = Task {
            phase,
            spec: spec.to_vec(),
            city: None,
            worker: None,
            attempt: 0,
            max_attempts,
            status: TaskStatus::Pending,
            result_digest: None,
            failure: None,
            transient: false,
            reopened: 0,
            usage: None,
            used: Usage::default(),
            charged: 0,
        };
        self.tasks.insert(key.clone(), task);
        self.task_spec_bytes = spec_bytes;
        OK
    }

    fn task_mut(&mut self, key: &TaskKey) -> Result<&mut Task, String> {
        check_key(key)?;
        let task = self.tasks.get_mut(key);
        task.ok_or_else(|| format!("no task {key}; add it with AddTask"))
    }

    fn assign_task(&mut self, key: &TaskKey, city: &str, worker: NodeKey, attempt: u32) -> Outcome {
        check_name("city name", city)?;
        if !self.cities.contains_key(city) {
            return Err(format!("no city {city:?}; add it with AddCity"));
        }
        let task = self.task_mut(key)?;
        let (status, current) = (task.status, task.attempt);
        let same_worker = task.worker == Some(worker) && task.city.as_deref() == Some(city);
        if status == TaskStatus::Assigned && current == attempt && same_worker {
            return DUPLICATE;
        }
        self.check_hard_limits(key, worker)?;
        let task = self.task_mut(key)?;
        if !matches!(status, TaskStatus::Pending | TaskStatus::Assigned) {
            return Err(format!("task {key} is {status:?}; it cannot be assigned"));
        }
        if Some(attempt) != current.checked_add(1) {
            return Err(format!(
                "attempt {attempt} of task {key} does not follow {current}"
            ));
        }
        if attempt > task.max_attempts {
            return Err(format!(
                "task {key} has no attempts left; fail or escalate it"
            ));
        }
        task.city = Some(city.to_owned());
        task.worker = Some(worker);
        task.attempt = attempt;
        task.status = TaskStatus::Assigned;
        Ok(task_state(task))
    }

    fn complete_task(
        &mut self,
        key: &TaskKey,
        attempt: u32,
        result_digest: [u8; 32],
        usage: &Option<TaskUsage>,
    ) -> Outcome {
        if let Some(usage) = usage {
            check_size("model name", usage.model.len(), MAX_MODEL_NAME_BYTES)?;
        }
        let task = self.task_mut(key)?;
        match task.result_digest {
            Some(committed) if committed == result_digest => return DUPLICATE,
            Some(_) => return Err(format!("task {key} has committed another result")),
            None => {}
        }
        check_attempt(key, task, attempt)?;
        task.status = TaskStatus::Succeeded;
        task.result_digest = Some(result_digest);
        task.usage = usage.clone();
        Ok(task_state(task))
    }

    fn overwrite_result(&mut self, key: &TaskKey, result_digest: [u8; 32]) -> Outcome {
        let task = self.task_mut(key)?;
        task.status = TaskStatus::Succeeded;
        task.result_digest = Some(result_digest);
        Ok(task_state(task))
    }

    fn fail_task(&mut self, key: &TaskKey, attempt: u32, reason: &str, transient: bool) -> Outcome {
        check_size("failure reason", reason.len(), MAX_REASON_BYTES)?;
        let task = self.task_mut(key)?;
        let settled = matches!(task.status, TaskStatus::Pending | TaskStatus::Failed);
        if settled && attempt == task.attempt && task.failure.as_deref() == Some(reason) {
            return DUPLICATE;
        }
        check_attempt(key, task, attempt)?;
        task.failure = Some(reason.to_owned());
        task.transient = transient;
        if attempt < task.max_attempts {
            task.status = TaskStatus::Pending;
            task.worker = None;
        } else {
            task.status = TaskStatus::Failed;
        }
        Ok(task_state(task))
    }

    fn escalate_task(&mut self, key: &TaskKey, reason: &str) -> Outcome {
        check_size("escalation reason", reason.len(), MAX_REASON_BYTES)?;
        let task = self.task_mut(key)?;
        match task.status {
            TaskStatus::Escalated if task.failure.as_deref() == Some(reason) => return DUPLICATE,
            TaskStatus::Escalated | TaskStatus::Succeeded => {
                let status = task.status;
                return Err(format!("task {key} is {status:?} already"));
            }
            TaskStatus::Pending | TaskStatus::Assigned | TaskStatus::Failed => {}
        }
        task.status = TaskStatus::Escalated;
        task.failure = Some(reason.to_owned());
        Ok(task_state(task))
    }

    fn reopen_task(&mut self, key: &TaskKey, attempts: u32, reopening: u32) -> Outcome {
        let task = self.task_mut(key)?;
        if reopening <= task.reopened {
            return DUPLICATE;
        }
        if reopening != task.reopened + 1 {
            return Err(format!(
                "task {key} was reopened {} times; the next is {}",
                task.reopened,
                task.reopened + 1
            ));
        }
        if task.status != TaskStatus::Escalated {
            let status = task.status;
            return Err(format!(
                "task {key} is {status:?}; only an escalated task reopens"
            ));
        }
        let max_attempts = task
            .attempt
            .checked_add(attempts)
            .filter(|max| attempts >= 1 && *max <= MAX_TASK_ATTEMPTS)
            .ok_or_else(|| {
                format!("task {key} cannot have more than {MAX_TASK_ATTEMPTS} attempts")
            })?;
        task.max_attempts = max_attempts;
        task.status = TaskStatus::Pending;
        task.worker = None;
        task.reopened = reopening;
        Ok(task_state(task))
    }

    fn record_use(&mut self, resource: &str, amount: u64) -> Outcome {
        check_name("resource", resource)?;
        if let Some(used) = self.resource_use.get_mut(resource) {
            *used = used.saturating_add(amount);
            return OK;
        }
        if self.resource_use.len() >= MAX_RESOURCES {
            return Err(full("resources", MAX_RESOURCES));
        }
        self.resource_use.insert(resource.to_owned(), amount);
        OK
    }

    fn forget_project(&mut self, project: &str) -> Outcome {
        check_name("project id", project)?;
        let tasks = self.tasks_of_project(project);
        let keys: Vec<TaskKey> = tasks.map(|(key, _)| key.clone()).collect();
        for key in keys {
            if let Some(task) = self.tasks.remove(&key) {
                let bytes = task.spec.len() as u64;
                self.task_spec_bytes = self.task_spec_bytes.saturating_sub(bytes);
                self.forgotten.add(&task.used);
            }
        }
        OK
    }

    /// Under a hard limit, refuses an assignment while a limit is spent, or to a worker
    /// that runs another task of this state: so spending passes a hard limit by at most
    /// one attempt per worker (those in flight when it is reached).
    fn check_hard_limits(&self, key: &TaskKey, worker: NodeKey) -> Result<(), String> {
        if !self.limits.values().any(|limit| limit.hard) {
            return Ok(());
        }
        if let Some((resource, limit, used)) = self.spent_limit() {
            return Err(format!(
                "{SPENT_PREFIX}: {used} {resource} used of {} this {}; an approved \
                 ResourceRequest raises it",
                limit.amount, limit.period
            ));
        }
        let busy = self.tasks.iter().any(|(other, task)| {
            other != key && task.status == TaskStatus::Assigned && task.worker == Some(worker)
        });
        if busy {
            return Err(format!(
                "worker {worker:?} runs another task of this state; under a hard limit a \
                 worker runs one at a time"
            ));
        }
        Ok(())
    }

    fn charge_attempt(
        &mut self,
        key: &TaskKey,
        attempt: u32,
        used: &Usage,
        now_ms: u64,
    ) -> Outcome {
        let task = self.task_mut(key)?;
        if attempt <= task.charged {
            return DUPLICATE;
        }
        check_attempt(key, task, attempt)?;
        task.charged = attempt;
        task.used.add(used);
        let (city, worker) = (task.city.clone(), task.worker);
        let charge = |account: AccountKey, accounts: &mut BTreeMap<AccountKey, Account>| {
            if accounts.len() < MAX_ACCOUNTS || accounts.contains_key(&account) {
                accounts.entry(account).or_default().charge(used, now_ms);
            }
        };
        charge(AccountKey::State, &mut self.accounts);
        if let Some(city) = city {
            charge(AccountKey::City(city), &mut self.accounts);
        }
        if let Some(worker) = worker {
            charge(AccountKey::Worker(worker), &mut self.accounts);
        }
        OK
    }

    fn set_limits(&mut self, version: u64, limits: &BTreeMap<Resource, Limit>) -> Outcome {
        if version <= self.limits_version {
            return DUPLICATE;
        }
        self.limits = limits.clone();
        self.limits_version = version;
        OK
    }

    /// Checks the invariants; only a bug can break them, so this panics.
    pub fn validate(&self) {
        assert!(self.cities.len() <= MAX_CITIES);
        for (name, city) in &self.cities {
            assert_eq!(check_name("city name", name), Ok(()));
            assert!(
                city.mayor.is_none_or(|lease| lease.term >= 1),
                "{name:?} term 0"
            );
        }
        assert!(self.tasks.len() <= MAX_TASKS_PER_LEDGER);
        let mut spec_bytes = 0;
        for (key, task) in &self.tasks {
            assert_eq!(check_key(key), Ok(()));
            assert!(task.spec.len() <= MAX_TASK_SPEC_BYTES);
            spec_bytes += task.spec.len() as u64;
            assert!(
                (1..=MAX_TASK_ATTEMPTS).contains(&task.max_attempts),
                "{key}"
            );
            assert!(task.attempt <= task.max_attempts, "{key} over its attempts");
            let succeeded = task.status == TaskStatus::Succeeded;
            assert_eq!(succeeded, task.result_digest.is_some(), "{key} result");
            assert!(
                task.worker.is_none() || task.attempt >= 1,
                "{key} worker unassigned"
            );
            // A finished task may name a city closed since; a running one may not.
            if let (TaskStatus::Assigned, Some(city)) = (task.status, &task.city) {
                assert!(self.cities.contains_key(city), "{key} in unknown city");
            }
            assert!(
                task.failure
                    .as_ref()
                    .is_none_or(|f| f.len() <= MAX_REASON_BYTES)
            );
            match task.status {
                TaskStatus::Pending => assert!(task.worker.is_none(), "{key} pending, worker"),
                TaskStatus::Assigned | TaskStatus::Succeeded => {
                    let dispatched = task.worker.is_some() && task.city.is_some();
                    assert!(dispatched && task.attempt >= 1, "{key} without worker");
                }
                TaskStatus::Failed => {
                    assert!(task.failure.is_some(), "{key} failed without a reason");
                    assert_eq!(task.attempt, task.max_attempts, "{key} failed early");
                }
                TaskStatus::Escalated => assert!(task.failure.is_some(), "{key} no reason"),
            }
        }
        assert_eq!(
            spec_bytes, self.task_spec_bytes,
            "task spec bytes miscounted"
        );
        assert!(spec_bytes <= MAX_TASK_SPEC_BYTES_TOTAL);
        assert!(self.resource_use.len() <= MAX_RESOURCES);
        for resource in self.resource_use.keys() {
            assert_eq!(check_name("resource", resource), Ok(()));
        }
        assert!(self.accounts.len() <= MAX_ACCOUNTS);
        let mut used = self.forgotten;
        for task in self.tasks.values() {
            assert!(task.charged <= task.attempt, "charged an attempt not made");
            used.add(&task.used);
        }
        let state = self.accounts.get(&AccountKey::State).map(|a| a.total);
        assert_eq!(
            state.unwrap_or_default(),
            used,
            "the state's account miscounted"
        );
    }

    /// All cities by name.
    pub fn cities(&self) -> &BTreeMap<String, City> {
        &self.cities
    }

    /// The lease of `city`'s mayor if it holds at `now_ms`.
    pub fn mayor_at(&self, city: &str, now_ms: u64) -> Option<&Lease> {
        let lease = self.cities.get(city)?.mayor.as_ref();
        lease.filter(|lease| lease.holds_at(now_ms))
    }

    /// All tasks, in (project, task) order.
    pub fn tasks(&self) -> &BTreeMap<TaskKey, Task> {
        &self.tasks
    }

    /// The tasks of one project, in task-id order.
    pub fn tasks_of_project<'a>(
        &'a self,
        project: &'a str,
    ) -> impl Iterator<Item = (&'a TaskKey, &'a Task)> {
        let start = TaskKey {
            project: project.to_owned(),
            task: String::new(),
        };
        let from_start = self.tasks.range(start..);
        from_start.take_while(move |(key, _)| key.project == project)
    }

    /// The task counts of one phase of a project, as reported to the president.
    pub fn progress(&self, project: &str, phase: Phase) -> PhaseProgress {
        let mut progress = PhaseProgress::default();
        let tasks = self.tasks_of_project(project).map(|(_, task)| task);
        for task in tasks.filter(|task| task.phase == phase) {
            progress.tasks_total = progress.tasks_total.saturating_add(1);
            match task.status {
                TaskStatus::Succeeded => progress.tasks_done += 1,
                TaskStatus::Failed | TaskStatus::Escalated => progress.tasks_failed += 1,
                TaskStatus::Pending | TaskStatus::Assigned => {}
            }
        }
        progress
    }

    /// Recorded use by resource.
    pub fn resource_use(&self) -> &BTreeMap<String, u64> {
        &self.resource_use
    }

    /// The accounts: the state's, its cities' and its workers'.
    pub fn accounts(&self) -> &BTreeMap<AccountKey, Account> {
        &self.accounts
    }

    /// The state's limits in force, and the Registry version they came from.
    pub fn limits(&self) -> (&BTreeMap<Resource, Limit>, u64) {
        (&self.limits, self.limits_version)
    }

    /// The latest time a committed command carried.
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// The first soft limit the state has reached, with what it used, at the ledger's
    /// clock.
    pub fn soft_limit_reached(&self) -> Option<(Resource, Limit, u64)> {
        let state = self.accounts.get(&AccountKey::State).copied();
        let state = state.unwrap_or_default();
        self.limits.iter().find_map(|(resource, limit)| {
            let used = state.used(*resource, limit.period, self.clock_ms);
            (!limit.hard && used >= limit.amount).then_some((*resource, *limit, used))
        })
    }

    /// The first hard limit the state has reached, with what it used, at the ledger's
    /// clock.
    pub fn spent_limit(&self) -> Option<(Resource, Limit, u64)> {
        let state = self.accounts.get(&AccountKey::State).copied();
        spent_limit(&state.unwrap_or_default(), &self.limits, self.clock_ms)
    }
}

fn task_state(task: &Task) -> LedgerResponse {
    LedgerResponse::TaskState {
        status: task.status,
        attempt: task.attempt,
    }
}

fn check_key(key: &TaskKey) -> Result<(), String> {
    check_name("project id", &key.project)?;
    check_name("task id", &key.task)
}

/// Checks that a report is for the task's current attempt and that it runs.
fn check_attempt(key: &TaskKey, task: &Task, attempt: u32) -> Result<(), String> {
    let (current, status) = (task.attempt, task.status);
    if attempt != current {
        return Err(format!(
            "stale attempt {attempt} of task {key}, now at {current}"
        ));
    }
    if status != TaskStatus::Assigned {
        return Err(format!("task {key} is {status:?}, not assigned"));
    }
    Ok(())
}

fn check_lease(now_ms: u64, until_ms: u64) -> Result<(), String> {
    if until_ms <= now_ms || until_ms - now_ms > MAX_LEASE_MS {
        return Err(format!(
            "a lease must end within {MAX_LEASE_MS} ms of {now_ms} ms"
        ));
    }
    Ok(())
}

fn full(what: &str, max: usize) -> String {
    format!("the ledger holds the maximum of {max} {what}; remove some first")
}

#[cfg(test)]
mod tests {
    use super::*;
    use super::{LedgerCommand as C, LedgerResponse as R, TaskStatus as S};

    const NOW_MS: u64 = 10_000;

    fn node(n: u8) -> NodeKey {
        NodeKey([n; 32])
    }

    fn key(task: &str) -> TaskKey {
        let (project, task) = ("p1".to_owned(), task.to_owned());
        TaskKey { project, task }
    }

    fn add_task(task: &str, max_attempts: u32) -> C {
        C::AddTask {
            key: key(task),
            phase: Phase::Design,
            spec: b"spec".to_vec(),
            max_attempts,
        }
    }

    /// The log's encoding of a command is its variant's index first: these are on disk
    /// and on the wire, so a variant is never inserted, removed or reordered, and none
    /// depends on a cargo feature.
    #[test]
    fn command_tags_on_disk_never_move() {
        let tag = |command: &C| postcard::to_stdvec(command).expect("encodes")[0];
        let fail = C::FailTask {
            key: key("t"),
            attempt: 1,
            reason: "r".into(),
            transient: false,
        };
        let forget = C::ForgetProject {
            project: "p1".into(),
        };
        let overwrite = C::OverwriteResult {
            key: key("t"),
            result_digest: [0; 32],
        };
        assert_eq!(tag(&add_task("t", 1)), 3);
        assert_eq!(tag(&assign("t", 1, 1)), 4);
        assert_eq!(tag(&complete("t", 1, 1)), 5);
        assert_eq!(tag(&fail), 6);
        assert_eq!(tag(&forget), 10);
        assert_eq!(tag(&overwrite), 11);
        assert_eq!(tag(&C::RemoveCity { name: "c".into() }), 12);
    }

    fn charge(task: &str, attempt: u32, money: u64) -> C {
        C::ChargeAttempt {
            key: key(task),
            attempt,
            used: Usage {
                money_micros: money,
                cpu_ms: 1,
                ..Usage::default()
            },
            now_ms: NOW_MS,
        }
    }

    fn limits(version: u64, money: u64, hard: bool) -> C {
        let limit = Limit {
            amount: money,
            period: crate::resources::Period::Day,
            hard,
        };
        C::SetLimits {
            version,
            limits: [(Resource::MoneyMicros, limit)].into_iter().collect(),
            now_ms: NOW_MS,
        }
    }

    fn rejected(ledger: &mut Ledger, command: &C) -> String {
        match run(ledger, command) {
            R::Rejected { reason } => reason,
            other => panic!("{command:?} was not rejected: {other:?}"),
        }
    }

    #[test]
    fn an_attempt_is_charged_once_to_its_task_state_city_and_worker() {
        let mut ledger = Ledger::default();
        let north = C::AddCity {
            name: "north".into(),
        };
        for command in [north, add_task("t", 2), assign("t", 1, 1)] {
            assert_ne!(ledger.apply(&command), R::Duplicate);
        }
        // Not yet assigned: nothing to charge.
        assert!(rejected(&mut ledger, &charge("t", 2, 5)).contains("stale attempt"));
        script(
            &mut ledger,
            &[
                (charge("t", 1, 5), R::Ok),
                (charge("t", 1, 5), R::Duplicate),
                (fail("t", 1), state(S::Pending, 1)),
                (assign("t", 2, 2), state(S::Assigned, 2)),
                (charge("t", 2, 7), R::Ok),
                (complete("t", 2, 9), state(S::Succeeded, 2)),
            ],
        );
        let task = &ledger.tasks()[&key("t")];
        assert_eq!(
            (task.used.money_micros, task.used.cpu_ms, task.charged),
            (12, 2, 2)
        );
        let money = |ledger: &Ledger, account| ledger.accounts()[&account].total.money_micros;
        assert_eq!(money(&ledger, AccountKey::State), 12);
        assert_eq!(money(&ledger, AccountKey::City("north".into())), 12);
        assert_eq!(money(&ledger, AccountKey::Worker(node(1))), 5);
        assert_eq!(money(&ledger, AccountKey::Worker(node(2))), 7);
        // Forgetting the project keeps the state's account whole.
        run(
            &mut ledger,
            &C::ForgetProject {
                project: "p1".into(),
            },
        );
        assert_eq!(money(&ledger, AccountKey::State), 12);
    }

    #[test]
    fn a_hard_limit_spent_stops_assignments_and_allows_one_task_per_worker() {
        let mut ledger = Ledger::default();
        let north = C::AddCity {
            name: "north".into(),
        };
        for command in [north, add_task("a", 1), add_task("b", 1), add_task("c", 1)] {
            run(&mut ledger, &command);
        }
        script(
            &mut ledger,
            &[
                (limits(1, 10, true), R::Ok),
                (limits(1, 99, true), R::Duplicate),
                (assign("a", 1, 1), state(S::Assigned, 1)),
            ],
        );
        // Under a hard limit, worker 1 runs one task of the state at a time.
        assert!(rejected(&mut ledger, &assign("b", 1, 1)).contains("one at a time"));
        script(
            &mut ledger,
            &[
                (assign("b", 2, 1), state(S::Assigned, 1)),
                (charge("a", 1, 6), R::Ok),
                (complete("a", 1, 1), state(S::Succeeded, 1)),
                (charge("b", 1, 6), R::Ok),
                (complete("b", 1, 2), state(S::Succeeded, 1)),
            ],
        );
        // 12 of 10 used: spent (overshot by the attempt in flight on the other worker).
        assert!(rejected(&mut ledger, &assign("c", 1, 1)).starts_with(SPENT_PREFIX));
        assert_eq!(
            ledger
                .spent_limit()
                .map(|(resource, _, used)| (resource, used)),
            Some((Resource::MoneyMicros, 12))
        );
        // A soft limit never stops anything; a raised hard one lets the task go.
        script(&mut ledger, &[(limits(2, 10, false), R::Ok)]);
        assert_eq!(ledger.spent_limit(), None);
        assert_eq!(
            ledger
                .soft_limit_reached()
                .map(|(resource, _, used)| (resource, used)),
            Some((Resource::MoneyMicros, 12))
        );
        script(
            &mut ledger,
            &[
                (limits(3, 20, true), R::Ok),
                (assign("c", 1, 1), state(S::Assigned, 1)),
            ],
        );
    }

    #[test]
    fn a_city_closes_only_without_assigned_tasks() {
        let mut ledger = Ledger::default();
        for command in [
            C::AddCity {
                name: "north".into(),
            },
            add_task("t", 2),
            assign("t", 1, 1),
        ] {
            assert!(!matches!(ledger.apply(&command), R::Rejected { .. }));
        }
        let close = C::RemoveCity {
            name: "north".into(),
        };
        assert!(matches!(ledger.apply(&close), R::Rejected { .. }));
        assert!(ledger.cities().contains_key("north"));
        assert!(!matches!(
            ledger.apply(&complete("t", 1, 7)),
            R::Rejected { .. }
        ));
        assert_eq!(ledger.apply(&close), R::Ok);
        assert!(!ledger.cities().contains_key("north"));
        assert_eq!(ledger.apply(&close), R::Duplicate);
        ledger.validate();
    }

    fn assign(task: &str, worker: u8, attempt: u32) -> C {
        C::AssignTask {
            key: key(task),
            city: "north".to_owned(),
            worker: node(worker),
            attempt,
        }
    }

    fn complete(task: &str, attempt: u32, digest: u8) -> C {
        C::CompleteTask {
            key: key(task),
            attempt,
            result_digest: [digest; 32],
            usage: None,
        }
    }

    fn fail(task: &str, attempt: u32) -> C {
        C::FailTask {
            key: key(task),
            attempt,
            reason: "timeout".to_owned(),
            transient: true,
        }
    }

    fn escalate(task: &str) -> C {
        let reason = "needs a human".to_owned();
        C::EscalateTask {
            key: key(task),
            reason,
        }
    }

    fn appoint(mayor: u8, now_ms: u64, until_ms: u64) -> C {
        C::AppointMayor {
            city: "north".to_owned(),
            mayor: node(mayor),
            now_ms,
            until_ms,
        }
    }

    fn renew(mayor: u8, now_ms: u64, until_ms: u64) -> C {
        C::RenewLease {
            city: "north".to_owned(),
            mayor: node(mayor),
            now_ms,
            until_ms,
        }
    }

    fn state(status: S, attempt: u32) -> R {
        R::TaskState { status, attempt }
    }

    /// Applies and checks the invariants, as every test step does.
    fn run(ledger: &mut Ledger, command: &C) -> R {
        let response = ledger.apply(command);
        ledger.validate();
        response
    }

    /// Runs each step and checks its exact response.
    fn script(ledger: &mut Ledger, steps: &[(C, R)]) {
        for (command, expected) in steps {
            assert_eq!(&run(ledger, command), expected, "{command:?}");
        }
    }

    /// City "north" and tasks t1 (two attempts) and t2 (one attempt).
    fn populated() -> Ledger {
        let mut ledger = Ledger::default();
        let city = C::AddCity {
            name: "north".to_owned(),
        };
        script(
            &mut ledger,
            &[
                (city, R::Ok),
                (add_task("t1", 2), R::Ok),
                (add_task("t2", 1), R::Ok),
            ],
        );
        ledger
    }

    fn reopen(task: &str, attempts: u32, reopening: u32) -> C {
        C::ReopenTask {
            key: key(task),
            attempts,
            reopening,
        }
    }

    #[test]
    fn an_escalated_task_reopens_once_per_decision_with_more_attempts() {
        let mut ledger = populated();
        script(
            &mut ledger,
            &[
                (
                    reopen("t2", 1, 1),
                    R::Rejected {
                        reason: "task p1/t2 is Pending; only an escalated task reopens".into(),
                    },
                ),
                (assign("t2", 1, 1), state(S::Assigned, 1)),
                (fail("t2", 1), state(S::Failed, 1)),
                (escalate("t2"), state(S::Escalated, 1)),
                (
                    reopen("t2", 2, 2),
                    R::Rejected {
                        reason: "task p1/t2 was reopened 0 times; the next is 1".into(),
                    },
                ),
                (reopen("t2", 2, 1), state(S::Pending, 1)),
                (reopen("t2", 2, 1), R::Duplicate),
                (assign("t2", 2, 2), state(S::Assigned, 2)),
                (fail("t2", 2), state(S::Pending, 2)),
                (assign("t2", 3, 3), state(S::Assigned, 3)),
                (complete("t2", 3, 7), state(S::Succeeded, 3)),
            ],
        );
        assert_eq!(ledger.tasks()[&key("t2")].reopened, 1);
    }

    #[test]
    fn rejected_commands_change_nothing() {
        let mut assigned = populated();
        script(
            &mut assigned,
            &[(assign("t1", 1, 1), state(S::Assigned, 1))],
        );
        let mut other_spec = add_task("t1", 2);
        if let C::AddTask { spec, .. } = &mut other_spec {
            spec.push(0);
        }
        let mut elsewhere = assign("t1", 1, 1);
        if let C::AssignTask { city, .. } = &mut elsewhere {
            *city = "south".to_owned();
        }
        let table = [
            (add_task("", 1), "task id is empty"),
            (add_task("t3", 0), "max_attempts must be 1 to 16"),
            (add_task("t3", MAX_TASK_ATTEMPTS + 1), "max_attempts"),
            (elsewhere, "no city \"south\""),
            (assign("t9", 1, 1), "no task p1/t9"),
            (assign("t1", 1, 3), "does not follow 1"),
            (complete("t1", 2, 7), "stale attempt 2"),
            (complete("t2", 0, 7), "is Pending, not assigned"),
            (fail("t1", 0), "stale attempt 0"),
            (appoint(1, NOW_MS, NOW_MS), "a lease must end within"),
            (
                appoint(1, NOW_MS, NOW_MS + MAX_LEASE_MS + 1),
                "a lease must end within",
            ),
            (renew(1, NOW_MS, NOW_MS + 1), "is not the mayor"),
            (
                C::RecordResourceUse {
                    resource: String::new(),
                    amount: 1,
                },
                "is empty",
            ),
        ];
        for (command, needle) in table {
            let mut ledger = assigned.clone();
            match run(&mut ledger, &command) {
                R::Rejected { reason } => assert!(reason.contains(needle), "{reason:?}"),
                other => panic!("{command:?} was not rejected: {other:?}"),
            }
            assert_eq!(ledger, assigned, "{command:?} changed the ledger");
        }
        // A task added again with other content is a conflict, told apart from a
        // rejection: the first version stands.
        let mut ledger = assigned.clone();
        match run(&mut ledger, &other_spec) {
            R::Conflict { reason } => assert!(reason.contains("exists with other content")),
            other => panic!("{other_spec:?} was not a conflict: {other:?}"),
        }
        assert_eq!(ledger, assigned, "a conflict changed the ledger");
    }

    #[test]
    fn repeated_commands_take_effect_once() {
        // Each row: the commands that set the scene, then the one that is repeated.
        let table = [
            (vec![], add_task("t1", 2), R::Duplicate),
            (vec![], appoint(1, NOW_MS, NOW_MS + 100), R::Ok),
            (vec![], assign("t1", 1, 1), state(S::Assigned, 1)),
            (
                vec![assign("t1", 1, 1)],
                complete("t1", 1, 7),
                state(S::Succeeded, 1),
            ),
            (
                vec![assign("t1", 1, 1)],
                fail("t1", 1),
                state(S::Pending, 1),
            ),
            (vec![assign("t2", 1, 1)], fail("t2", 1), state(S::Failed, 1)),
            (vec![], escalate("t1"), state(S::Escalated, 0)),
        ];
        for (scene, command, first) in table {
            let mut ledger = populated();
            for step in &scene {
                assert!(
                    !matches!(run(&mut ledger, step), R::Rejected { .. }),
                    "{step:?}"
                );
            }
            assert_eq!(run(&mut ledger, &command), first, "{command:?}");
            let once = ledger.clone();
            assert_eq!(run(&mut ledger, &command), R::Duplicate, "{command:?}");
            assert_eq!(ledger, once, "{command:?} took effect twice");
        }
    }

    #[test]
    fn a_task_commits_exactly_one_result() {
        let mut ledger = populated();
        script(
            &mut ledger,
            &[
                (assign("t1", 1, 1), state(S::Assigned, 1)),
                (complete("t1", 1, 0xaa), state(S::Succeeded, 1)),
                (complete("t1", 1, 0xaa), R::Duplicate),
            ],
        );
        let committed = ledger.clone();
        let response = run(&mut ledger, &complete("t1", 1, 0xbb));
        assert!(matches!(response, R::Rejected { .. }), "{response:?}");
        assert_eq!(ledger, committed);
        let task = &ledger.tasks()[&key("t1")];
        assert_eq!(
            (task.status, task.result_digest),
            (S::Succeeded, Some([0xaa; 32]))
        );
        let results = ledger
            .tasks()
            .values()
            .filter(|t| t.result_digest.is_some());
        assert_eq!(results.count(), 1);
    }

    #[test]
    fn attempts_fence_stale_workers_and_run_out() {
        let mut ledger = populated();
        let rejected = |reason: &str| R::Rejected {
            reason: reason.to_owned(),
        };
        script(
            &mut ledger,
            &[
                (assign("t1", 1, 1), state(S::Assigned, 1)),
                // Worker 1 times out; the mayor hands attempt 2 to worker 2.
                (assign("t1", 2, 2), state(S::Assigned, 2)),
                (
                    complete("t1", 1, 7),
                    rejected("stale attempt 1 of task p1/t1, now at 2"),
                ),
                (fail("t1", 2), state(S::Failed, 2)),
                (
                    assign("t1", 3, 3),
                    rejected("task p1/t1 is Failed; it cannot be assigned"),
                ),
                (assign("t2", 1, 1), state(S::Assigned, 1)),
                (escalate("t2"), state(S::Escalated, 1)),
                (
                    complete("t2", 1, 7),
                    rejected("task p1/t2 is Escalated, not assigned"),
                ),
            ],
        );
        let task = &ledger.tasks()[&key("t1")];
        assert_eq!(
            (task.worker, task.failure.as_deref()),
            (Some(node(2)), Some("timeout"))
        );
    }

    #[test]
    fn a_failed_attempt_is_retried() {
        let mut ledger = populated();
        script(
            &mut ledger,
            &[
                (assign("t1", 1, 1), state(S::Assigned, 1)),
                (fail("t1", 1), state(S::Pending, 1)),
                (assign("t1", 2, 2), state(S::Assigned, 2)),
                (complete("t1", 2, 7), state(S::Succeeded, 2)),
            ],
        );
        let expected = PhaseProgress {
            tasks_total: 2,
            tasks_done: 1,
            tasks_failed: 0,
        };
        assert_eq!(ledger.progress("p1", Phase::Design), expected);
        assert_eq!(
            ledger.progress("p1", Phase::Launch),
            PhaseProgress::default()
        );
    }

    #[test]
    fn leases_pass_to_a_new_mayor_only_after_they_lapse() {
        let mut ledger = populated();
        let until = NOW_MS + 1_000;
        let held = "\"north\" has mayor";
        script(&mut ledger, &[(appoint(1, NOW_MS, until), R::Ok)]);
        assert_eq!(
            ledger.mayor_at("north", NOW_MS).map(|l| (l.mayor, l.term)),
            Some((node(1), 1))
        );
        for (command, expected) in [
            (appoint(2, until - 1, until + 500), Some(held)),
            (renew(2, NOW_MS, until + 500), Some("is not the mayor")),
            (renew(1, NOW_MS + 10, until + 500), None),
            (renew(1, NOW_MS + 20, until), None),
            (appoint(2, until + 499, until + 900), Some(held)),
            (
                renew(1, until + 500, until + 900),
                Some("lapsed at 11500 ms"),
            ),
            (appoint(2, until + 500, until + 900), None),
        ] {
            match (run(&mut ledger, &command), expected) {
                (R::Ok, None) => {}
                (R::Rejected { reason }, Some(needle)) => assert!(reason.contains(needle)),
                (response, _) => panic!("{command:?}: {response:?}"),
            }
        }
        let lease = ledger.mayor_at("north", until + 500).copied();
        let expected = Lease {
            mayor: node(2),
            until_ms: until + 900,
            term: 2,
        };
        assert_eq!(lease, Some(expected));
        assert_eq!(ledger.mayor_at("north", until + 900), None);
    }

    #[test]
    fn resources_saturate_and_projects_are_forgotten() {
        let mut ledger = populated();
        let use_gpu = |amount| C::RecordResourceUse {
            resource: "gpu_ms".to_owned(),
            amount,
        };
        let forget = C::ForgetProject {
            project: "p1".to_owned(),
        };
        script(
            &mut ledger,
            &[(use_gpu(5), R::Ok), (use_gpu(u64::MAX), R::Ok)],
        );
        assert_eq!(ledger.resource_use()["gpu_ms"], u64::MAX);
        script(&mut ledger, &[(forget.clone(), R::Ok), (forget, R::Ok)]);
        assert!(ledger.tasks().is_empty());
        assert_eq!(ledger.task_spec_bytes, 0);
    }

    #[test]
    fn snapshots_round_trip() {
        let mut ledger = populated();
        let steps = [
            appoint(1, NOW_MS, NOW_MS + 1),
            assign("t1", 1, 1),
            fail("t1", 1),
        ];
        for step in &steps {
            run(&mut ledger, step);
        }
        let bytes = postcard::to_allocvec(&ledger).expect("encode");
        let back: Ledger = postcard::from_bytes(&bytes).expect("decode");
        back.validate();
        assert_eq!(back, ledger);
    }
}
