//! The policy document (seed §6.1): rules of five categories, each decided where its
//! decision is taken, with an enforcement level like Sentinel's.
//!
//! Pure: [`parse`] turns TOML into a checked [`Policy`] (every error names its line), and
//! [`Policy::decide`] judges one decision from plain [`Facts`]. The driver gathers the
//! facts, counts each decision under the rule that decided it, and refuses or goes on.
//!
//! ```toml
//! tier = "professional"            # starter | professional | enterprise (seed §12)
//!
//! [[rule]]
//! name = "shell-only-in-technical"
//! category = "security"            # resource | performance | security | escalation | communication
//! at = "submission"                # where: submission | planning | admission | dispatch | message
//! enforcement = "hard"             # advisory (noted) | soft (overridable with a reason) | hard
//! reason = "shell tasks run only in the technical state"
//! when = { executor = ["shell"] }  # every key must match one of its values
//! unless = { state = ["technical"] } # no key may match
//! max = { retries = 5 }            # fires when a counter is over its limit
//!
//! [performance]                    # thresholds that raise a PerformanceAlert
//! worker_failures_in_a_row = 3
//! worker_error_rate_percent = 50   # of a worker's attempts, once it ran
//! error_rate_min_attempts = 10     # this many (as its mayor sees them)
//!
//! [resources]                      # seed §6.2
//! approve_up_to = { money_micros = 1000000 } # requests this small are approved by policy
//! pool = { money_micros = 5000000 } # and at most this much in all per pool_per ("day")
//! priority = { technical = 10 }    # when requests compete for a pool: higher first
//! [[resources.limit]]              # put on the states when the policy is applied
//! states = ["technical"]           # every state when left out
//! of = "state"                     # state (the whole) | city (each) | worker (each)
//! resource = "money_micros"        # cpu_ms | tokens | api_calls | money_micros | memory_kib_s | storage_bytes
//! amount = 5000000
//! per = "day"                      # hour | day | month (30 days) | total
//! hard = true                      # hard stops dispatch; soft raises an alert
//!
//! [scaling]                        # seed §9.2: when the mesh wants more workers
//! open_tasks_per_slot = 4          # open tasks one unit of capacity is meant to carry
//! hook_cooldown_secs = 300         # least time between runs of a node's --scale-hook
//! city_target_depth = 64           # pending tasks per city a state aims for
//! city_open_percent = 120          # open a city past 120% of the target (seed: 1.2×)
//! city_close_percent = 50          # close an empty one below 50% (seed: 0.5×)
//! city_cooldown_secs = 30          # least time after a change before a city closes
//! state_target_tasks = 16          # open tasks per member a state aims for (off if unset)
//! state_open_percent = 120         # a state past 120% of it is busy, and gets a member
//! state_close_percent = 50         # from the quietest state below 50% that can spare one
//! state_cooldown_secs = 60         # least time between two moves
//!
//! [communication]                  # how much one member may message another
//! messages_per_sec = 5000          # work messages per sender, sustained
//! burst = 20000                    # and at once
//!
//! [escalation]                     # a task lost to faults of the moment (lost worker,
//! reopenings = 1                   # timeout, unreachable service) is reopened by the
//! reopen_attempts = 2              # president this often, with this many attempts each
//! ```
//!
//! A rule fires when all of its `when` keys match, none of its `unless` keys match, and
//! (if it has limits) a counter is over its `max`. A fired rule denies: a `hard` one
//! always, a `soft` one unless the request carries an override reason, an `advisory`
//! one never (it is only noted).
//!
//! | at         | keys for `when`/`unless`       | counters for `max`                                                   |
//! |------------|--------------------------------|----------------------------------------------------------------------|
//! | submission | executor, state, phase, owner  | projects_running (this one included), tasks, phases, phase_index (1-8), retries, timeout_secs |
//! | planning   | executor, state, phase, owner  | tasks (of the plan), phase_index (1-8), retries, timeout_secs        |
//! | admission  | skill, peer                    | members (this one included), capacity                                |
//! | dispatch   | executor, state, phase, worker, role, skill, worker_state | worker_tasks, state_tasks (this one included), attempt |
//! | message    | message, sender, sender_role, sender_state, receiver_role | none                          |
//!
//! A submission is judged once per task (with that task's executor, state, phase,
//! retries and timeout) and once for the project as a whole; a rule that fires for
//! several is counted once. A plan an llm wrote is judged the same way, per planned task
//! and once for the plan, by the planning rules and the submission rules together (a
//! planned task is a submitted one too): a denied plan is refused with the rule's
//! reason, and the planner's next attempt is told it.
//!
//! At dispatch a mayor judges each worker it could give a task's next attempt to (its
//! peer id, its roles — president, governor, mayor, or worker when it holds none — its
//! skills and its state): a worker a rule denies is passed over for another, and a task
//! no worker may take waits, pending. There is no request to carry an override reason,
//! so a soft rule denies as a hard one does. Each rule that fires is counted once per
//! task (not once per look), as `aamas_policy_decisions_total{at="dispatch"}`.
//!
//! At message the node a work message arrives at judges it by its kind (assign_tasks,
//! reopen, propose, execute, outcome, progress), its sender (peer id, roles, state) and
//! its own roles: a denied message is refused with the rule's reason, and its sender
//! tries again as after any refusal (so a rule that denies a kind the work needs stalls
//! that work until the policy changes). Soft acts as hard here too. Every message is
//! counted, when the policy has message rules. A message a node sends itself (when it
//! holds both roles) is judged the same way.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use aamas_consensus::resources::{Limit, Period, Resource};

use crate::spec::LineIndex;

/// Most rules in one document (tier presets included).
pub const MAX_RULES: usize = 2_000;
/// Largest policy document, in bytes.
pub const MAX_POLICY_BYTES: usize = 512 * 1024;
/// Longest rule name, in bytes.
pub const MAX_RULE_NAME_BYTES: usize = 64;
/// Longest reason, in bytes.
pub const MAX_REASON_BYTES: usize = 512;
/// Most values one `when` or `unless` key lists.
pub const MAX_VALUES: usize = 256;

/// The document the founder puts in force (`aamas init` writes it to
/// `DATA_DIR/policy.toml`).
pub const DEFAULT_POLICY: &str = include_str!("default-policy.toml");

/// The five categories of seed §6.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    /// How resources are distributed.
    Resource,
    /// SLAs and monitoring.
    Performance,
    /// Access control and data protection.
    Security,
    /// Issue resolution.
    Escalation,
    /// Who talks to whom.
    Communication,
}

impl Category {
    /// Its lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Resource => "resource",
            Category::Performance => "performance",
            Category::Security => "security",
            Category::Escalation => "escalation",
            Category::Communication => "communication",
        }
    }
}

/// Where a rule is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Point {
    /// A project submitted to the president.
    Submission,
    /// A node asking the president to join.
    Admission,
    /// The tasks an llm planned for a phase, before the president commits the plan: a
    /// planned task is a submitted one too, so the submission rules judge it as well.
    Planning,
    /// A mayor choosing the worker for a task's next attempt: a worker a rule denies is
    /// passed over (another is chosen, or the task waits for one).
    Dispatch,
    /// A work message arriving at a node: a denied one is refused (its sender tries
    /// again, as after any refusal).
    Message,
}

impl Point {
    /// Its lowercase name (the metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Point::Submission => "submission",
            Point::Admission => "admission",
            Point::Planning => "planning",
            Point::Dispatch => "dispatch",
            Point::Message => "message",
        }
    }
}

/// How a fired rule acts (Sentinel's levels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    /// Noted and counted; the request goes on.
    Advisory,
    /// Denies, unless the request carries a reason to override it.
    Soft,
    /// Denies.
    Hard,
}

impl Enforcement {
    /// Its lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Enforcement::Advisory => "advisory",
            Enforcement::Soft => "soft",
            Enforcement::Hard => "hard",
        }
    }
}

/// A string fact a rule matches on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attr {
    /// A task's executor: builtin, shell, llm.
    Executor,
    /// A task's state.
    State,
    /// A task's phase (lowercase).
    Phase,
    /// The peer id of the member a project was submitted through.
    Owner,
    /// A joining node's skills; at dispatch, the worker's.
    Skill,
    /// A joining node's peer id.
    Peer,
    /// The peer id of the worker a task would be dispatched to.
    Worker,
    /// The roles the worker holds: president, governor, mayor (or worker, for one that
    /// holds none).
    Role,
    /// The state the worker belongs to (a worker of another state is lent).
    WorkerState,
    /// A work message's kind: assign_tasks, reopen, propose, execute, outcome, progress.
    Message,
    /// The peer id of a message's sender.
    Sender,
    /// The roles its sender holds (`worker` when none).
    SenderRole,
    /// The state its sender belongs to.
    SenderState,
    /// The roles the receiving node holds (`worker` when none).
    ReceiverRole,
}

/// A number a rule limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Counter {
    /// Projects running, held or awaiting approval, the submitted one included.
    ProjectsRunning,
    /// The project's written tasks.
    Tasks,
    /// The project's phases.
    Phases,
    /// A task's phase, 1 (initiation) to 8 (launch).
    PhaseIndex,
    /// A task's retries.
    Retries,
    /// A task's timeout.
    TimeoutSecs,
    /// Active members, the joining one included.
    Members,
    /// Tasks the joining node takes at once.
    Capacity,
    /// Tasks of the state the worker would run at once, this one included.
    WorkerTasks,
    /// Tasks the state would run at once, this one included.
    StateTasks,
    /// The attempt a dispatch would start (1 for the first).
    Attempt,
}

/// Where a task is judged: a written one at submission, a planned one at planning.
const TASK_POINTS: &[Point] = &[Point::Submission, Point::Planning];
/// Where a task's own facts are known: the task points and dispatch.
const TASK_AND_DISPATCH: &[Point] = &[Point::Submission, Point::Planning, Point::Dispatch];

const ATTRS: [(&str, Attr, &[Point]); 14] = [
    ("executor", Attr::Executor, TASK_AND_DISPATCH),
    ("state", Attr::State, TASK_AND_DISPATCH),
    ("phase", Attr::Phase, TASK_AND_DISPATCH),
    ("owner", Attr::Owner, TASK_POINTS),
    ("skill", Attr::Skill, &[Point::Admission, Point::Dispatch]),
    ("peer", Attr::Peer, &[Point::Admission]),
    ("worker", Attr::Worker, &[Point::Dispatch]),
    ("role", Attr::Role, &[Point::Dispatch]),
    ("worker_state", Attr::WorkerState, &[Point::Dispatch]),
    ("message", Attr::Message, &[Point::Message]),
    ("sender", Attr::Sender, &[Point::Message]),
    ("sender_role", Attr::SenderRole, &[Point::Message]),
    ("sender_state", Attr::SenderState, &[Point::Message]),
    ("receiver_role", Attr::ReceiverRole, &[Point::Message]),
];

const COUNTERS: [(&str, Counter, &[Point]); 11] = [
    (
        "projects_running",
        Counter::ProjectsRunning,
        &[Point::Submission],
    ),
    ("tasks", Counter::Tasks, TASK_POINTS),
    ("phases", Counter::Phases, &[Point::Submission]),
    ("phase_index", Counter::PhaseIndex, TASK_POINTS),
    ("retries", Counter::Retries, TASK_POINTS),
    ("timeout_secs", Counter::TimeoutSecs, TASK_POINTS),
    ("members", Counter::Members, &[Point::Admission]),
    ("capacity", Counter::Capacity, &[Point::Admission]),
    ("worker_tasks", Counter::WorkerTasks, &[Point::Dispatch]),
    ("state_tasks", Counter::StateTasks, &[Point::Dispatch]),
    ("attempt", Counter::Attempt, &[Point::Dispatch]),
];

/// One rule, checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Unique in the document.
    pub name: String,
    /// Its category.
    pub category: Category,
    /// Where it is decided.
    pub at: Point,
    /// How it acts when it fires.
    pub enforcement: Enforcement,
    /// What a refusal says.
    pub reason: String,
    /// Every key must match one of its values.
    pub when: Vec<(Attr, BTreeSet<String>)>,
    /// No key may match.
    pub unless: Vec<(Attr, BTreeSet<String>)>,
    /// Fires when a counter is over its limit (with none, the matches alone decide).
    pub max: Vec<(Counter, u64)>,
}

/// The tier presets of seed §12, as rules put before the document's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Up to 5 projects at once, phases 1-4, 3 governors.
    Starter,
    /// Up to 20 projects at once, all phases, 10 governors.
    Professional,
    /// No limits.
    Enterprise,
}

impl Tier {
    /// Most states with a governor (a state group) the tier allows (seed §12: 3 for
    /// Starter, 10 for Professional); `None`: no limit.
    pub fn max_governors(self) -> Option<usize> {
        match self {
            Tier::Starter => Some(3),
            Tier::Professional => Some(10),
            Tier::Enterprise => None,
        }
    }

    /// Its name, as the policy document spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Starter => "starter",
            Tier::Professional => "professional",
            Tier::Enterprise => "enterprise",
        }
    }

    fn rules(self) -> Vec<Rule> {
        let limit = |name: &str, counter, max: u64, reason: &str| Rule {
            name: name.to_string(),
            category: Category::Resource,
            at: Point::Submission,
            enforcement: Enforcement::Hard,
            reason: reason.to_string(),
            when: Vec::new(),
            unless: Vec::new(),
            max: vec![(counter, max)],
        };
        match self {
            Tier::Starter => vec![
                limit(
                    "tier-starter-projects",
                    Counter::ProjectsRunning,
                    5,
                    "the Starter tier runs up to 5 projects at once",
                ),
                limit(
                    "tier-starter-phases",
                    Counter::PhaseIndex,
                    4,
                    "the Starter tier has the basic phases 1-4 (initiation to design)",
                ),
            ],
            Tier::Professional => vec![limit(
                "tier-professional-projects",
                Counter::ProjectsRunning,
                20,
                "the Professional tier runs up to 20 projects at once",
            )],
            Tier::Enterprise => Vec::new(),
        }
    }
}

/// The performance policy's thresholds (seed §7.1): crossing one raises a
/// PerformanceAlert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Performance {
    /// Attempts failed in a row on one worker (as its mayor sees them).
    pub worker_failures_in_a_row: Option<u32>,
    /// The share of a worker's attempts that failed, in percent (as its mayor sees
    /// them), once it ran [`Performance::error_rate_min_attempts`].
    pub worker_error_rate_percent: Option<u32>,
    /// Attempts a worker runs before its error rate is judged.
    pub error_rate_min_attempts: u32,
}

impl Default for Performance {
    fn default() -> Self {
        Performance {
            worker_failures_in_a_row: None,
            worker_error_rate_percent: None,
            error_rate_min_attempts: DEFAULT_ERROR_RATE_MIN_ATTEMPTS,
        }
    }
}

/// Most failures in a row a threshold may name.
pub const MAX_FAILURES_IN_A_ROW: u32 = 1_000;
/// Attempts a worker runs before its error rate is judged, unless the policy says.
pub const DEFAULT_ERROR_RATE_MIN_ATTEMPTS: u32 = 10;
/// Most attempts the policy may ask for before an error rate is judged.
pub const MAX_ERROR_RATE_MIN_ATTEMPTS: u32 = 100_000;
/// The escalation policy (`[escalation]`): the president's ladder for a task that used
/// up its attempts on faults of the moment (a lost worker, a timeout, an unreachable
/// service). A task that failed on its merits fails its phase at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Escalation {
    /// How many times the president reopens such a task before failing the phase.
    pub reopenings: u32,
    /// Attempts each reopening gives it.
    pub reopen_attempts: u32,
}

impl Escalation {
    /// The ladder without a policy: one reopening of two attempts.
    pub const DEFAULT: Escalation = Escalation {
        reopenings: 1,
        reopen_attempts: 2,
    };
}

impl Default for Escalation {
    fn default() -> Self {
        Escalation::DEFAULT
    }
}

/// Most reopenings the escalation policy may name.
pub const MAX_REOPENINGS: u32 = 4;
/// Most attempts one reopening may give (a task has at most 16 in all).
pub const MAX_REOPEN_ATTEMPTS: u32 = 4;

/// Most `[[resources.limit]]` entries.
pub const MAX_POLICY_LIMITS: usize = 256;

/// The resource policy (seed §6.2): limits the president puts on states when the policy
/// is applied, and how large a ResourceRequest it approves without a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Limits, in document order.
    pub limits: Vec<PolicyLimit>,
    /// A ResourceRequest asking for at most this much of its resource is approved by
    /// policy; a larger one (or one of a resource not named) waits for a person.
    pub approve_up_to: BTreeMap<Resource, u64>,
    /// The most the policy approves of a resource in all, across the states, per
    /// [`Resources::pool_period`]; a resource not named has no pool.
    pub pool: BTreeMap<Resource, u64>,
    /// The period a pool renews by.
    pub pool_period: Period,
    /// Each state's priority when requests compete for a pool (higher first; 0 for a
    /// state not named).
    pub priority: BTreeMap<String, i64>,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            limits: Vec::new(),
            approve_up_to: BTreeMap::new(),
            pool: BTreeMap::new(),
            pool_period: Period::Day,
            priority: BTreeMap::new(),
        }
    }
}

/// An open ResourceRequest, as the president arbitrates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRequest {
    /// Its id.
    pub id: u64,
    /// The state.
    pub state: String,
    /// The resource.
    pub resource: Resource,
    /// How much more it asks for.
    pub amount: u64,
}

/// What the policy does with an open request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Approved by policy.
    Approve,
    /// Over `approve_up_to`: a person decides.
    OverApproveUpTo,
    /// The pool of this period has no room left for it: it waits for the next period
    /// (or a person).
    PoolSpent,
}

impl Verdict {
    /// The rule that decided, as counted.
    pub fn rule(self) -> &'static str {
        match self {
            Verdict::Approve | Verdict::OverApproveUpTo => "approve_up_to",
            Verdict::PoolSpent => "pool",
        }
    }
}

/// Whose use a `[[resources.limit]]` limits (`of = ...`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitScope {
    /// The state as a whole: put into its Ledger, enforced there and by its mayors, and
    /// raised by ResourceRequests.
    #[default]
    State,
    /// Each city of the state: a city that spent it dispatches nothing more until its
    /// next period.
    City,
    /// Each worker, for the attempts it runs for the state: a worker that spent it is
    /// given no more of the state's tasks until its next period.
    Worker,
}

/// One `[[resources.limit]]`: a limit on the states it names (every state without
/// `states`), or on each of their cities or workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyLimit {
    /// The states; `None`: every state.
    pub states: Option<BTreeSet<String>>,
    /// Whose use it limits.
    #[serde(default)]
    pub of: LimitScope,
    /// The resource.
    pub resource: Resource,
    /// The limit.
    pub limit: Limit,
}

impl Resources {
    /// The limits the policy puts on `state` as a whole, by resource (a later entry for
    /// the same resource wins).
    pub fn limits_for(&self, state: &str) -> BTreeMap<Resource, Limit> {
        self.scoped_limits_for(state, LimitScope::State)
    }

    /// The limits the policy puts on each of `state`'s cities or workers (`of`), by
    /// resource (a later entry for the same resource wins).
    pub fn scoped_limits_for(&self, state: &str, of: LimitScope) -> BTreeMap<Resource, Limit> {
        self.limits
            .iter()
            .filter(|entry| entry.of == of)
            .filter(|entry| entry.states.as_ref().is_none_or(|s| s.contains(state)))
            .map(|entry| (entry.resource, entry.limit))
            .collect()
    }

    /// Whether a request for `amount` of `resource` is approved by policy.
    pub fn approves(&self, resource: Resource, amount: u64) -> bool {
        self.approve_up_to
            .get(&resource)
            .is_some_and(|most| amount <= *most)
    }

    /// Arbitrates the `open` requests that compete for the pools (`granted`: what the
    /// policy already approved of each resource in this period): the states of higher
    /// priority first, then the older requests; each is approved while it is within
    /// `approve_up_to` and its pool has room.
    pub fn arbitrate<'a>(
        &self,
        open: &'a [OpenRequest],
        granted: &BTreeMap<Resource, u64>,
    ) -> Vec<(&'a OpenRequest, Verdict)> {
        let mut granted = granted.clone();
        let mut order: Vec<&OpenRequest> = open.iter().collect();
        order.sort_by_key(|request| {
            let priority = self.priority.get(&request.state).copied().unwrap_or(0);
            (std::cmp::Reverse(priority), request.id)
        });
        order
            .into_iter()
            .map(|request| {
                if !self.approves(request.resource, request.amount) {
                    return (request, Verdict::OverApproveUpTo);
                }
                let so_far = granted.entry(request.resource).or_default();
                if let Some(pool) = self.pool.get(&request.resource)
                    && so_far.saturating_add(request.amount) > *pool
                {
                    return (request, Verdict::PoolSpent);
                }
                *so_far = so_far.saturating_add(request.amount);
                (request, Verdict::Approve)
            })
            .collect()
    }
}

/// A checked policy document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Its tier preset, if it names one.
    pub tier: Option<Tier>,
    /// Its performance thresholds.
    pub performance: Performance,
    /// Its resource limits and approvals.
    pub resources: Resources,
    /// Its mesh-level scaling thresholds.
    pub scaling: super::scaling::Scaling,
    /// How much a member may message another.
    pub communication: super::rate::Communication,
    /// The president's ladder for tasks lost to faults of the moment.
    pub escalation: Escalation,
    /// Its rules, the tier's first, in document order.
    pub rules: Vec<Rule>,
    /// Rule indexes by decision point.
    by_point: BTreeMap<Point, Vec<usize>>,
}

/// Why a document is not a policy: the line, when the problem has one, and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", line.map(|line| format!("line {line}: ")).unwrap_or_default())]
pub struct PolicyError {
    /// The 1-based line.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

fn error(line: Option<usize>, message: impl Into<String>) -> PolicyError {
    PolicyError {
        line,
        message: message.into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    tier: Option<Spanned<String>>,
    performance: Option<RawPerformance>,
    resources: Option<RawResources>,
    scaling: Option<RawScaling>,
    communication: Option<RawCommunication>,
    escalation: Option<RawEscalation>,
    #[serde(default, rename = "rule")]
    rules: Vec<Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEscalation {
    reopenings: Option<Spanned<u32>>,
    reopen_attempts: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommunication {
    messages_per_sec: Option<Spanned<u32>>,
    burst: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScaling {
    open_tasks_per_slot: Option<Spanned<u32>>,
    hook_cooldown_secs: Option<u32>,
    city_target_depth: Option<Spanned<u32>>,
    city_open_percent: Option<Spanned<u32>>,
    city_close_percent: Option<Spanned<u32>>,
    city_cooldown_secs: Option<u32>,
    state_target_tasks: Option<Spanned<u32>>,
    state_open_percent: Option<Spanned<u32>>,
    state_close_percent: Option<Spanned<u32>>,
    state_cooldown_secs: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResources {
    #[serde(default)]
    approve_up_to: BTreeMap<String, Spanned<u64>>,
    #[serde(default)]
    pool: BTreeMap<String, Spanned<u64>>,
    pool_per: Option<Spanned<String>>,
    #[serde(default)]
    priority: BTreeMap<String, i64>,
    #[serde(default, rename = "limit")]
    limits: Vec<Spanned<RawLimit>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    states: Option<OneOrMany>,
    of: Option<Spanned<String>>,
    resource: Spanned<String>,
    amount: u64,
    per: Spanned<String>,
    hard: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPerformance {
    worker_failures_in_a_row: Option<Spanned<u32>>,
    worker_error_rate_percent: Option<Spanned<u32>>,
    error_rate_min_attempts: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    category: Spanned<String>,
    at: Spanned<String>,
    enforcement: Option<Spanned<String>>,
    reason: Option<Spanned<String>>,
    #[serde(default)]
    when: BTreeMap<String, Spanned<OneOrMany>>,
    #[serde(default)]
    unless: BTreeMap<String, Spanned<OneOrMany>>,
    #[serde(default)]
    max: BTreeMap<String, Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// `value` as one of `options` (lowercase names), or an error naming them.
fn one_of<T: Copy>(
    what: &str,
    value: &Spanned<String>,
    options: &[(&str, T)],
    index: &LineIndex,
) -> Result<T, PolicyError> {
    options
        .iter()
        .find(|(name, _)| *name == value.get_ref())
        .map(|(_, option)| *option)
        .ok_or_else(|| {
            let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
            error(
                Some(index.of(value)),
                format!(
                    "unknown {what} {:?}: use {}",
                    value.get_ref(),
                    names.join(", ")
                ),
            )
        })
}

/// Parses and checks a policy document; every error names its line.
pub fn parse(text: &str) -> Result<Policy, PolicyError> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(error(
            None,
            format!(
                "the policy is {} bytes; the limit is {MAX_POLICY_BYTES}",
                text.len()
            ),
        ));
    }
    let index = LineIndex::new(text);
    let raw: RawPolicy = toml::from_str(text).map_err(|failure| {
        error(
            failure.span().map(|span| index.line(span.start)),
            failure.message().to_owned(),
        )
    })?;
    let tier = match &raw.tier {
        None => None,
        Some(tier) => Some(one_of(
            "tier",
            tier,
            &[
                ("starter", Tier::Starter),
                ("professional", Tier::Professional),
                ("enterprise", Tier::Enterprise),
            ],
            &index,
        )?),
    };
    let performance = match raw.performance {
        Some(raw) => convert_performance(raw, &index)?,
        None => Performance::default(),
    };
    let resources = match raw.resources {
        Some(raw) => convert_resources(raw, &index)?,
        None => Resources::default(),
    };
    let mut scaling = super::scaling::Scaling::default();
    if let Some(raw) = raw.scaling {
        if let Some(per_slot) = &raw.open_tasks_per_slot {
            let max = super::scaling::MAX_OPEN_TASKS_PER_SLOT;
            if !(1..=max).contains(per_slot.get_ref()) {
                return Err(error(
                    Some(index.of(per_slot)),
                    format!("open_tasks_per_slot is 1 to {max}"),
                ));
            }
            scaling.open_tasks_per_slot = *per_slot.get_ref();
        }
        if let Some(cooldown) = raw.hook_cooldown_secs {
            scaling.hook_cooldown_secs = cooldown;
        }
        convert_city_scaling(&raw, &mut scaling, &index)?;
    }
    let mut communication = super::rate::Communication::default();
    if let Some(raw) = raw.communication {
        let max = super::rate::MAX_MESSAGES_PER_SEC;
        for (name, value, slot) in [
            (
                "messages_per_sec",
                raw.messages_per_sec,
                &mut communication.messages_per_sec,
            ),
            ("burst", raw.burst, &mut communication.burst),
        ] {
            if let Some(value) = value {
                if !(1..=max).contains(value.get_ref()) {
                    return Err(error(
                        Some(index.of(&value)),
                        format!("{name} is 1 to {max}"),
                    ));
                }
                *slot = value.into_inner();
            }
        }
    }
    let mut escalation = Escalation::default();
    if let Some(raw) = raw.escalation {
        for (name, value, slot, range) in [
            (
                "reopenings",
                raw.reopenings,
                &mut escalation.reopenings,
                0..=MAX_REOPENINGS,
            ),
            (
                "reopen_attempts",
                raw.reopen_attempts,
                &mut escalation.reopen_attempts,
                1..=MAX_REOPEN_ATTEMPTS,
            ),
        ] {
            if let Some(value) = value {
                if !range.contains(value.get_ref()) {
                    return Err(error(
                        Some(index.of(&value)),
                        format!("{name} is {} to {}", range.start(), range.end()),
                    ));
                }
                *slot = value.into_inner();
            }
        }
    }
    let mut rules = tier.map(Tier::rules).unwrap_or_default();
    if raw.rules.len() + rules.len() > MAX_RULES {
        return Err(error(
            None,
            format!("the policy has more than {MAX_RULES} rules"),
        ));
    }
    let mut names: BTreeSet<String> = rules.iter().map(|rule| rule.name.clone()).collect();
    for raw_rule in raw.rules {
        let line = index.of(&raw_rule);
        let rule = convert(raw_rule.into_inner(), &index)?;
        if !names.insert(rule.name.clone()) {
            return Err(error(
                Some(line),
                format!(
                    "a rule named {:?} comes earlier; names are unique",
                    rule.name
                ),
            ));
        }
        rules.push(rule);
    }
    let mut policy = Policy::new(tier, rules);
    policy.performance = performance;
    policy.resources = resources;
    policy.scaling = scaling;
    policy.communication = communication;
    policy.escalation = escalation;
    Ok(policy)
}

/// The cities' thresholds of `[scaling]`: a target of 1 to [`MAX_CITY_TARGET_DEPTH`], an
/// opening percentage of 101 to [`MAX_CITY_OPEN_PERCENT`], and a closing one below it.
///
/// [`MAX_CITY_TARGET_DEPTH`]: super::scaling::MAX_CITY_TARGET_DEPTH
/// [`MAX_CITY_OPEN_PERCENT`]: super::scaling::MAX_CITY_OPEN_PERCENT
fn convert_city_scaling(
    raw: &RawScaling,
    scaling: &mut super::scaling::Scaling,
    index: &LineIndex,
) -> Result<(), PolicyError> {
    use super::scaling::{MAX_CITY_OPEN_PERCENT, MAX_CITY_TARGET_DEPTH};
    if let Some(depth) = &raw.city_target_depth {
        if !(1..=MAX_CITY_TARGET_DEPTH).contains(depth.get_ref()) {
            return Err(error(
                Some(index.of(depth)),
                format!("city_target_depth is 1 to {MAX_CITY_TARGET_DEPTH}"),
            ));
        }
        scaling.city_target_depth = *depth.get_ref();
    }
    if let Some(open) = &raw.city_open_percent {
        if !(101..=MAX_CITY_OPEN_PERCENT).contains(open.get_ref()) {
            return Err(error(
                Some(index.of(open)),
                format!("city_open_percent is 101 to {MAX_CITY_OPEN_PERCENT}"),
            ));
        }
        scaling.city_open_percent = *open.get_ref();
    }
    if let Some(close) = &raw.city_close_percent {
        if *close.get_ref() >= scaling.city_open_percent {
            return Err(error(
                Some(index.of(close)),
                format!(
                    "city_close_percent must be below city_open_percent ({}), or cities \
                     would open and close in turn",
                    scaling.city_open_percent
                ),
            ));
        }
        scaling.city_close_percent = *close.get_ref();
    }
    if let Some(cooldown) = raw.city_cooldown_secs {
        scaling.city_cooldown_secs = cooldown;
    }
    if let Some(target) = &raw.state_target_tasks {
        if !(1..=MAX_CITY_TARGET_DEPTH).contains(target.get_ref()) {
            return Err(error(
                Some(index.of(target)),
                format!("state_target_tasks is 1 to {MAX_CITY_TARGET_DEPTH}"),
            ));
        }
        scaling.state_target_tasks = Some(*target.get_ref());
    }
    if let Some(open) = &raw.state_open_percent {
        if !(101..=MAX_CITY_OPEN_PERCENT).contains(open.get_ref()) {
            return Err(error(
                Some(index.of(open)),
                format!("state_open_percent is 101 to {MAX_CITY_OPEN_PERCENT}"),
            ));
        }
        scaling.state_open_percent = *open.get_ref();
    }
    if let Some(close) = &raw.state_close_percent {
        if *close.get_ref() >= scaling.state_open_percent {
            return Err(error(
                Some(index.of(close)),
                format!(
                    "state_close_percent must be below state_open_percent ({}), or members \
                     would move back and forth",
                    scaling.state_open_percent
                ),
            ));
        }
        scaling.state_close_percent = *close.get_ref();
    }
    if let Some(cooldown) = raw.state_cooldown_secs {
        scaling.state_cooldown_secs = cooldown;
    }
    Ok(())
}

fn convert_performance(raw: RawPerformance, index: &LineIndex) -> Result<Performance, PolicyError> {
    let mut performance = Performance::default();
    let bounded = |value: Spanned<u32>, name: &str, max: u32| {
        if (1..=max).contains(value.get_ref()) {
            Ok(value.into_inner())
        } else {
            Err(error(
                Some(index.of(&value)),
                format!("{name} is 1 to {max}"),
            ))
        }
    };
    if let Some(threshold) = raw.worker_failures_in_a_row {
        performance.worker_failures_in_a_row = Some(bounded(
            threshold,
            "worker_failures_in_a_row",
            MAX_FAILURES_IN_A_ROW,
        )?);
    }
    if let Some(percent) = raw.worker_error_rate_percent {
        performance.worker_error_rate_percent =
            Some(bounded(percent, "worker_error_rate_percent", 100)?);
    }
    if let Some(attempts) = raw.error_rate_min_attempts {
        performance.error_rate_min_attempts = bounded(
            attempts,
            "error_rate_min_attempts",
            MAX_ERROR_RATE_MIN_ATTEMPTS,
        )?;
    }
    Ok(performance)
}

fn convert_resources(raw: RawResources, index: &LineIndex) -> Result<Resources, PolicyError> {
    let mut resources = Resources::default();
    for (name, most) in raw.approve_up_to {
        let resource: Resource = name
            .parse()
            .map_err(|failure: String| error(Some(index.of(&most)), failure))?;
        resources.approve_up_to.insert(resource, most.into_inner());
    }
    for (name, most) in raw.pool {
        let resource: Resource = name
            .parse()
            .map_err(|failure: String| error(Some(index.of(&most)), failure))?;
        resources.pool.insert(resource, most.into_inner());
    }
    if let Some(per) = raw.pool_per {
        resources.pool_period = per
            .get_ref()
            .parse()
            .map_err(|failure: String| error(Some(index.of(&per)), failure))?;
    }
    if raw.priority.len() > MAX_VALUES {
        return Err(error(
            None,
            format!("[resources] priority names more than {MAX_VALUES} states"),
        ));
    }
    resources.priority = raw.priority;
    if raw.limits.len() > MAX_POLICY_LIMITS {
        return Err(error(
            None,
            format!("the policy has more than {MAX_POLICY_LIMITS} resource limits"),
        ));
    }
    for raw_limit in raw.limits {
        let line = Some(index.of(&raw_limit));
        let raw_limit = raw_limit.into_inner();
        let resource: Resource = raw_limit
            .resource
            .get_ref()
            .parse()
            .map_err(|failure: String| error(Some(index.of(&raw_limit.resource)), failure))?;
        let period: Period = raw_limit
            .per
            .get_ref()
            .parse()
            .map_err(|failure: String| error(Some(index.of(&raw_limit.per)), failure))?;
        let states = raw_limit.states.map(|states| match states {
            OneOrMany::One(state) => BTreeSet::from([state]),
            OneOrMany::Many(states) => states.into_iter().collect(),
        });
        if states
            .as_ref()
            .is_some_and(|s| s.is_empty() || s.len() > MAX_VALUES)
        {
            return Err(error(line, format!("states lists 1 to {MAX_VALUES} names")));
        }
        let of = match &raw_limit.of {
            None => LimitScope::State,
            Some(of) => one_of(
                "limit scope",
                of,
                &[
                    ("state", LimitScope::State),
                    ("city", LimitScope::City),
                    ("worker", LimitScope::Worker),
                ],
                index,
            )?,
        };
        if of != LimitScope::State && raw_limit.hard == Some(false) {
            return Err(error(
                line,
                "a city or worker limit is hard (soft limits, which raise alerts, are for \
                 states)",
            ));
        }
        resources.limits.push(PolicyLimit {
            states,
            of,
            resource,
            limit: Limit {
                amount: raw_limit.amount,
                period,
                hard: raw_limit.hard.unwrap_or(true),
            },
        });
    }
    Ok(resources)
}

fn convert(raw: RawRule, index: &LineIndex) -> Result<Rule, PolicyError> {
    let name_line = Some(index.of(&raw.name));
    let name = raw.name.into_inner();
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if name.is_empty() || name.len() > MAX_RULE_NAME_BYTES || !name.chars().all(allowed) {
        return Err(error(
            name_line,
            format!(
                "a rule name is 1 to {MAX_RULE_NAME_BYTES} characters of A-Z, a-z, 0-9, '_', \
                 '-' and '.', not {name:?}"
            ),
        ));
    }
    let category = one_of(
        "category",
        &raw.category,
        &[
            ("resource", Category::Resource),
            ("performance", Category::Performance),
            ("security", Category::Security),
            ("escalation", Category::Escalation),
            ("communication", Category::Communication),
        ],
        index,
    )?;
    let not_yet = ["resource_request"];
    if not_yet.contains(&raw.at.get_ref().as_str()) {
        return Err(error(
            Some(index.of(&raw.at)),
            format!(
                "rules at {:?} are not enforced by this version yet: use submission, \
                 planning, admission, dispatch or message",
                raw.at.get_ref()
            ),
        ));
    }
    let at = one_of(
        "decision point",
        &raw.at,
        &[
            ("submission", Point::Submission),
            ("planning", Point::Planning),
            ("admission", Point::Admission),
            ("dispatch", Point::Dispatch),
            ("message", Point::Message),
        ],
        index,
    )?;
    let enforcement = match &raw.enforcement {
        None => Enforcement::Hard,
        Some(level) => one_of(
            "enforcement",
            level,
            &[
                ("advisory", Enforcement::Advisory),
                ("soft", Enforcement::Soft),
                ("hard", Enforcement::Hard),
            ],
            index,
        )?,
    };
    let reason = match raw.reason {
        None => format!("policy rule {name}"),
        Some(reason) if reason.get_ref().len() > MAX_REASON_BYTES => {
            return Err(error(
                Some(index.of(&reason)),
                format!("the reason is longer than {MAX_REASON_BYTES} bytes"),
            ));
        }
        Some(reason) => reason.into_inner(),
    };
    let matchers = |table: BTreeMap<String, Spanned<OneOrMany>>| {
        let mut out = Vec::new();
        for (key, values) in table {
            let line = Some(index.of(&values));
            let attr = ATTRS
                .iter()
                .find(|(name, _, points)| *name == key && points.contains(&at))
                .map(|(_, attr, _)| *attr)
                .ok_or_else(|| {
                    let keys: Vec<&str> = ATTRS
                        .iter()
                        .filter(|(_, _, points)| points.contains(&at))
                        .map(|(name, _, _)| *name)
                        .collect();
                    error(
                        line,
                        format!(
                            "rules at {} match on {}, not {key:?}",
                            at.as_str(),
                            keys.join(", ")
                        ),
                    )
                })?;
            let values: BTreeSet<String> = match values.into_inner() {
                OneOrMany::One(value) => BTreeSet::from([value]),
                OneOrMany::Many(values) => values.into_iter().collect(),
            };
            if values.is_empty() || values.len() > MAX_VALUES {
                return Err(error(line, format!("{key} lists 1 to {MAX_VALUES} values")));
            }
            out.push((attr, values));
        }
        Ok(out)
    };
    let when = matchers(raw.when)?;
    let unless = matchers(raw.unless)?;
    let mut max = Vec::new();
    for (key, limit) in raw.max {
        let counter = COUNTERS
            .iter()
            .find(|(name, _, points)| *name == key && points.contains(&at))
            .map(|(_, counter, _)| *counter)
            .ok_or_else(|| {
                let keys: Vec<&str> = COUNTERS
                    .iter()
                    .filter(|(_, _, points)| points.contains(&at))
                    .map(|(name, _, _)| *name)
                    .collect();
                let keys = if keys.is_empty() {
                    "no counter".to_string()
                } else {
                    keys.join(", ")
                };
                error(
                    Some(index.of(&limit)),
                    format!("rules at {} limit {keys}, not {key:?}", at.as_str()),
                )
            })?;
        max.push((counter, limit.into_inner()));
    }
    Ok(Rule {
        name,
        category,
        at,
        enforcement,
        reason,
        when,
        unless,
        max,
    })
}

/// What one decision is judged on: strings a rule matches, numbers it limits. A key
/// this decision does not have matches nothing and is over no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    attrs: Vec<(Attr, Vec<String>)>,
    counters: Vec<(Counter, u64)>,
}

impl Facts {
    /// Adds `values` for `attr`.
    pub fn with(mut self, attr: Attr, values: impl IntoIterator<Item = String>) -> Self {
        self.attrs.push((attr, values.into_iter().collect()));
        self
    }

    /// Adds a counter.
    pub fn count(mut self, counter: Counter, value: u64) -> Self {
        self.counters.push((counter, value));
        self
    }

    fn matches(&self, attr: Attr, wanted: &BTreeSet<String>) -> bool {
        self.attrs
            .iter()
            .filter(|(key, _)| *key == attr)
            .any(|(_, values)| values.iter().any(|value| wanted.contains(value)))
    }

    fn over(&self, counter: Counter, limit: u64) -> bool {
        self.counters
            .iter()
            .any(|(key, value)| *key == counter && *value > limit)
    }
}

/// How one fired rule acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Noted only (advisory).
    Noted,
    /// A soft rule the request overrode with a reason.
    Overridden,
    /// Denied.
    Denied,
    /// Put off for a request of higher priority (a worker's slot kept for a state of
    /// higher `[resources] priority`).
    Deferred,
}

impl Outcome {
    /// Its metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Noted => "advisory",
            Outcome::Overridden => "overridden",
            Outcome::Denied => "denied",
            Outcome::Deferred => "deferred",
        }
    }
}

/// One decision: each rule that fired (once, in document order) and how it acted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision<'a> {
    /// The rules that fired.
    pub fired: Vec<(&'a Rule, Outcome)>,
}

impl<'a> Decision<'a> {
    /// The first rule that denies, if any.
    pub fn denied_by(&self) -> Option<&'a Rule> {
        self.fired
            .iter()
            .find(|(_, outcome)| *outcome == Outcome::Denied)
            .map(|(rule, _)| *rule)
    }
}

impl Rule {
    fn fires(&self, facts: &Facts) -> bool {
        self.when
            .iter()
            .all(|(attr, wanted)| facts.matches(*attr, wanted))
            && !self
                .unless
                .iter()
                .any(|(attr, wanted)| facts.matches(*attr, wanted))
            && (self.max.is_empty()
                || self
                    .max
                    .iter()
                    .any(|(counter, limit)| facts.over(*counter, *limit)))
    }

    /// What a refusal by this rule says.
    pub fn refusal(&self) -> String {
        let level = self.enforcement.as_str();
        let overridable = if self.enforcement == Enforcement::Soft {
            "; it may be overridden with a reason (--override)"
        } else {
            ""
        };
        format!(
            "refused by policy rule {:?} ({}, {level}): {}{overridable}",
            self.name,
            self.category.as_str(),
            self.reason
        )
    }
}

impl Policy {
    fn new(tier: Option<Tier>, rules: Vec<Rule>) -> Self {
        let mut by_point: BTreeMap<Point, Vec<usize>> = BTreeMap::new();
        for (i, rule) in rules.iter().enumerate() {
            by_point.entry(rule.at).or_default().push(i);
        }
        Policy {
            tier,
            performance: Performance::default(),
            resources: Resources::default(),
            scaling: super::scaling::Scaling::default(),
            communication: super::rate::Communication::default(),
            escalation: Escalation::default(),
            rules,
            by_point,
        }
    }

    /// Whether any rule is decided at `at`.
    pub fn has_rules_at(&self, at: Point) -> bool {
        self.by_point
            .get(&at)
            .is_some_and(|rules| !rules.is_empty())
    }

    /// Judges a decision at `at` on each of `facts`: every rule of that point that fires
    /// on any of them, once (at planning, the submission rules too). With
    /// `override_reason`, soft rules do not deny.
    pub fn decide(
        &self,
        at: Point,
        facts: &[Facts],
        override_reason: Option<&str>,
    ) -> Decision<'_> {
        let mut decision = Decision::default();
        let also = match at {
            Point::Planning => Some(Point::Submission),
            Point::Submission | Point::Admission | Point::Dispatch | Point::Message => None,
        };
        let mut indexes: Vec<usize> = [Some(at), also]
            .into_iter()
            .flatten()
            .filter_map(|point| self.by_point.get(&point))
            .flatten()
            .copied()
            .collect();
        // In document order, whichever point they belong to.
        indexes.sort_unstable();
        let overriding = override_reason.is_some_and(|reason| !reason.trim().is_empty());
        for i in indexes {
            let rule = &self.rules[i];
            if facts.iter().any(|facts| rule.fires(facts)) {
                let outcome = match rule.enforcement {
                    Enforcement::Advisory => Outcome::Noted,
                    Enforcement::Soft if overriding => Outcome::Overridden,
                    Enforcement::Soft | Enforcement::Hard => Outcome::Denied,
                };
                decision.fired.push((rule, outcome));
            }
        }
        decision
    }
}

/// The facts of a project submission through `owner` while `projects_running` others
/// run: one per written task, and one for the project.
pub fn submission_facts(
    spec: &crate::spec::ProjectSpec,
    owner: &str,
    projects_running: u64,
) -> Vec<Facts> {
    let running = projects_running.saturating_add(1);
    let tasks = u64::try_from(spec.task_count()).unwrap_or(u64::MAX);
    let phases = u64::try_from(spec.phases.len()).unwrap_or(u64::MAX);
    let project = Facts::default()
        .with(Attr::Owner, [owner.to_string()])
        .count(Counter::ProjectsRunning, running)
        .count(Counter::Tasks, tasks)
        .count(Counter::Phases, phases);
    let mut all = vec![project.clone()];
    for phase in &spec.phases {
        for task in &phase.tasks {
            all.push(task_facts(&project, phase.phase, task));
        }
        if phase.tasks.is_empty() {
            // A phase an LLM plans has no written tasks yet: its place still counts.
            all.push(
                project
                    .clone()
                    .with(Attr::Phase, [phase.phase.as_str().to_lowercase()])
                    .count(Counter::PhaseIndex, phase_index(phase.phase)),
            );
        }
    }
    all
}

/// The facts of the `tasks` an llm planned for `phase` of a project submitted through
/// `owner`: one per task, and one for the plan (its task count).
pub fn plan_facts(
    phase: aamas_protocol::Phase,
    tasks: &[crate::spec::TaskSpec],
    owner: &str,
) -> Vec<Facts> {
    let base = Facts::default()
        .with(Attr::Owner, [owner.to_string()])
        .count(
            Counter::Tasks,
            u64::try_from(tasks.len()).unwrap_or(u64::MAX),
        );
    let plan = base
        .clone()
        .with(Attr::Phase, [phase.as_str().to_lowercase()])
        .count(Counter::PhaseIndex, phase_index(phase));
    let mut all = vec![plan];
    all.extend(tasks.iter().map(|task| task_facts(&base, phase, task)));
    all
}

/// The 1-based place of `phase` among the eight.
fn phase_index(phase: aamas_protocol::Phase) -> u64 {
    aamas_protocol::Phase::ALL
        .iter()
        .position(|p| *p == phase)
        .map_or(0, |i| i as u64 + 1)
}

/// The facts of one task of `phase`, on top of its project's (or plan's) `base`.
fn task_facts(base: &Facts, phase: aamas_protocol::Phase, task: &crate::spec::TaskSpec) -> Facts {
    base.clone()
        .with(Attr::Executor, [task.executor.kind().to_string()])
        .with(Attr::State, [task.state.clone()])
        .with(Attr::Phase, [phase.as_str().to_lowercase()])
        .count(Counter::PhaseIndex, phase_index(phase))
        .count(Counter::Retries, u64::from(task.retries))
        .count(Counter::TimeoutSecs, task.timeout_secs)
}

/// The facts of dispatching attempt `attempt` of a task (its `executor`, `state` and
/// `phase`) to `worker`.
pub fn dispatch_facts(task: DispatchedTask<'_>, worker: DispatchWorker<'_>, attempt: u32) -> Facts {
    Facts::default()
        .with(Attr::Executor, [task.executor.to_string()])
        .with(Attr::State, [task.state.to_string()])
        .with(Attr::Phase, [task.phase.as_str().to_lowercase()])
        .with(Attr::Worker, [worker.peer])
        .with(Attr::Role, worker.roles.iter().map(|role| role.to_string()))
        .with(Attr::Skill, worker.skills.iter().cloned())
        .with(Attr::WorkerState, worker.state.map(str::to_string))
        .count(Counter::WorkerTasks, u64::from(worker.tasks))
        .count(
            Counter::StateTasks,
            u64::from(task.running).saturating_add(1),
        )
        .count(Counter::Attempt, u64::from(attempt))
}

/// The facts of a work message of kind `message` from `sender` (its peer id, roles and
/// state) to a node that holds `receiver_roles`.
pub fn message_facts(
    message: &str,
    sender: String,
    sender_roles: &[&'static str],
    sender_state: Option<String>,
    receiver_roles: &[&'static str],
) -> Facts {
    Facts::default()
        .with(Attr::Message, [message.to_string()])
        .with(Attr::Sender, [sender])
        .with(Attr::SenderRole, sender_roles.iter().map(|r| r.to_string()))
        .with(Attr::SenderState, sender_state)
        .with(
            Attr::ReceiverRole,
            receiver_roles.iter().map(|r| r.to_string()),
        )
}

/// The task side of a dispatch.
#[derive(Debug, Clone, Copy)]
pub struct DispatchedTask<'a> {
    /// Its executor's kind: builtin, shell, llm.
    pub executor: &'a str,
    /// Its state.
    pub state: &'a str,
    /// Its phase.
    pub phase: aamas_protocol::Phase,
    /// Tasks of its state running now (assigned), not counting it.
    pub running: u32,
}

/// The worker side of a dispatch.
#[derive(Debug, Clone)]
pub struct DispatchWorker<'a> {
    /// Its peer id.
    pub peer: String,
    /// The roles it holds (`worker` when none).
    pub roles: &'a [&'static str],
    /// Its skills.
    pub skills: &'a BTreeSet<String>,
    /// The state it belongs to, if any.
    pub state: Option<&'a str>,
    /// Tasks of the dispatching state it would run at once, this one included.
    pub tasks: u32,
}

/// The facts of a node with `peer` id, `skills` and `capacity` joining a mesh of
/// `members` active members.
pub fn admission_facts(peer: &str, skills: &[String], capacity: u32, members: u64) -> Facts {
    Facts::default()
        .with(Attr::Peer, [peer.to_string()])
        .with(Attr::Skill, skills.iter().cloned())
        .count(Counter::Members, members.saturating_add(1))
        .count(Counter::Capacity, u64::from(capacity))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> String {
        format!("[[rule]]\nname = \"r\"\ncategory = \"security\"\nat = \"submission\"\n{text}")
    }

    #[test]
    fn planning_rules_take_the_task_keys_and_planning_judges_the_submission_rules_too() {
        let policy = parse(
            "[[rule]]\nname = \"p\"\ncategory = \"security\"\nat = \"planning\"\n\
             when = { executor = [\"llm\"] }\nmax = { tasks = 3 }\n\
             [[rule]]\nname = \"s\"\ncategory = \"security\"\nat = \"submission\"\n\
             when = { state = [\"financial\"] }\n",
        )
        .expect("parses");
        let task = |state: &str| {
            let reply =
                format!(r#"{{"tasks": [{{"name": "t", "state": "{state}", "input": "i"}}]}}"#);
            crate::spec::parse_plan(&reply).expect("a plan").remove(0)
        };
        let phase = aamas_protocol::Phase::Design;
        let names = |tasks: &[crate::spec::TaskSpec], at: Point| -> Vec<String> {
            let facts = plan_facts(phase, tasks, "owner");
            let decision = policy.decide(at, &facts, None);
            decision
                .fired
                .iter()
                .map(|(rule, _)| rule.name.clone())
                .collect()
        };
        assert!(names(&[task("technical")], Point::Planning).is_empty());
        assert_eq!(names(&[task("financial")], Point::Planning), ["s"]);
        let four: Vec<_> = (0..4).map(|_| task("technical")).collect();
        assert_eq!(names(&four, Point::Planning), ["p"]);
        // A submission is not judged by the planning rules.
        assert!(names(&four, Point::Submission).is_empty());
        // Project-wide counters are not known at planning.
        let error = parse(
            "[[rule]]\nname = \"r\"\ncategory = \"resource\"\nat = \"planning\"\n\
             max = { projects_running = 2 }\n",
        )
        .expect_err("refused");
        assert_eq!(error.line, Some(5), "{error}");
        assert!(
            error.to_string().contains("rules at planning limit tasks"),
            "{error}"
        );
    }

    #[test]
    fn competing_requests_get_the_pool_by_priority_then_age() {
        let policy = parse(
            "[resources]\napprove_up_to = { money_micros = 100 }\n\
             pool = { money_micros = 150 }\npool_per = \"hour\"\n\
             priority = { technical = 10, market = -1 }\n",
        )
        .expect("parses");
        let resources = &policy.resources;
        assert_eq!(resources.pool_period, Period::Hour);
        let money = Resource::MoneyMicros;
        let request = |id: u64, state: &str, amount: u64| OpenRequest {
            id,
            state: state.to_string(),
            resource: money,
            amount,
        };
        let open = [
            request(1, "market", 60),
            request(2, "financial", 60),
            request(3, "technical", 80),
            request(4, "financial", 500),
        ];
        let by_id = |verdicts: Vec<(&OpenRequest, Verdict)>| -> Vec<(u64, Verdict)> {
            verdicts.into_iter().map(|(r, v)| (r.id, v)).collect()
        };
        let verdicts = by_id(resources.arbitrate(&open, &BTreeMap::new()));
        // technical (10) first, then financial (0), then market (-1); 80 + 60 fit 150.
        assert_eq!(
            verdicts,
            [
                (3, Verdict::Approve),
                (2, Verdict::Approve),
                (4, Verdict::OverApproveUpTo),
                (1, Verdict::PoolSpent),
            ]
        );
        // What the policy granted earlier in the period counts against the pool.
        let granted = BTreeMap::from([(money, 80)]);
        let verdicts = by_id(resources.arbitrate(&open[..2], &granted));
        assert_eq!(verdicts, [(2, Verdict::Approve), (1, Verdict::PoolSpent)]);
        // Without a pool, every request within approve_up_to is approved.
        let plain = parse("[resources]\napprove_up_to = { money_micros = 100 }\n").expect("parses");
        let verdicts = plain.resources.arbitrate(&open[..3], &granted);
        assert!(
            verdicts.iter().all(|(_, v)| *v == Verdict::Approve),
            "{verdicts:?}"
        );
    }

    #[test]
    fn the_default_policy_parses() {
        let policy = parse(DEFAULT_POLICY).expect("the default policy");
        assert!(!policy.rules.is_empty());
        assert_eq!(policy.performance.worker_failures_in_a_row, Some(3));
    }

    #[test]
    fn resource_limits_apply_to_the_states_they_name_and_small_requests_are_approved() {
        let policy = parse(
            "[resources]\napprove_up_to = { money_micros = 500 }\n\
             [[resources.limit]]\nresource = \"money_micros\"\namount = 100\nper = \"day\"\n\
             [[resources.limit]]\nstates = \"technical\"\nresource = \"tokens\"\n\
             amount = 7\nper = \"hour\"\nhard = false\n\
             [[resources.limit]]\nof = \"worker\"\nresource = \"cpu_ms\"\n\
             amount = 60000\nper = \"hour\"\n",
        )
        .expect("valid");
        let resources = &policy.resources;
        let day = Limit {
            amount: 100,
            period: Period::Day,
            hard: true,
        };
        assert_eq!(
            resources.limits_for("market"),
            BTreeMap::from([(Resource::MoneyMicros, day)])
        );
        let technical = resources.limits_for("technical");
        assert_eq!(technical.len(), 2);
        assert!(!technical[&Resource::Tokens].hard);
        // A limit on each worker is not the state's, and is not put into its Ledger.
        let per_worker = resources.scoped_limits_for("market", LimitScope::Worker);
        assert_eq!(per_worker[&Resource::CpuMs].amount, 60_000);
        assert!(!technical.contains_key(&Resource::CpuMs));
        assert!(
            resources
                .scoped_limits_for("market", LimitScope::City)
                .is_empty()
        );
        assert!(resources.approves(Resource::MoneyMicros, 500));
        assert!(!resources.approves(Resource::MoneyMicros, 501));
        assert!(!resources.approves(Resource::Tokens, 1));
    }

    #[test]
    fn every_error_names_its_line() {
        let table = [
            ("tier = \"gold\"\n", 1, "unknown tier \"gold\""),
            (&rule("enforcement = \"maybe\"\n"), 5, "unknown enforcement"),
            (&rule("when = { colour = \"red\" }\n"), 5, "not \"colour\""),
            (&rule("max = { members = 3 }\n"), 5, "not \"members\""),
            (&rule("when = { state = [] }\n"), 5, "1 to 256 values"),
            (&rule("bogus = 1\n"), 5, "unknown field `bogus`"),
            (
                "[[resources.limit]]\nof = \"town\"\nresource = \"cpu_ms\"\namount = 1\n\
                 per = \"day\"\n",
                2,
                "unknown limit scope \"town\": use state, city, worker",
            ),
            (
                "\n[[resources.limit]]\nof = \"city\"\nresource = \"cpu_ms\"\namount = 1\n\
                 per = \"day\"\nhard = false\n",
                2,
                "a city or worker limit is hard",
            ),
            (
                "\n[[rule]]\nname = \"r\"\ncategory = \"security\"\nat = \"resource_request\"\n",
                5,
                "not enforced by this version yet",
            ),
            (
                "[[rule]]\nname = \"r\"\ncategory = \"communication\"\nat = \"message\"\n\
                 max = { tasks = 3 }\n",
                5,
                "rules at message limit no counter, not \"tasks\"",
            ),
            (
                "[[rule]]\nname = \"r\"\ncategory = \"security\"\nat = \"dispatch\"\n\
                 when = { owner = \"x\" }\n",
                5,
                "rules at dispatch match on executor, state, phase, skill, worker, role, \
                 worker_state, not \"owner\"",
            ),
            (
                "[[rule]]\nname = \"bad name\"\ncategory = \"security\"\nat = \"admission\"\n",
                2,
                "a rule name is",
            ),
            (
                "[[rule]]\nname = \"a\"\ncategory = \"safety\"\nat = \"admission\"\n",
                3,
                "unknown category",
            ),
            (
                "[[rule]]\nname = \"a\"\ncategory = \"security\"\nat = \"admission\"\n\n\
                 [[rule]]\nname = \"a\"\ncategory = \"security\"\nat = \"admission\"\n",
                6,
                "comes earlier",
            ),
            ("tier = \n", 1, ""),
            (
                "tier = \"starter\"\n[performance]\nworker_failures_in_a_row = 0\n",
                3,
                "worker_failures_in_a_row is 1 to",
            ),
            ("[escalation]\nreopenings = 9\n", 2, "reopenings is 0 to 4"),
            (
                "[performance]\nworker_error_rate_percent = 101\n",
                2,
                "worker_error_rate_percent is 1 to 100",
            ),
            (
                "[communication]\nmessages_per_sec = 10\nburst = 0\n",
                3,
                "burst is 1 to",
            ),
            (
                "[scaling]\nopen_tasks_per_slot = 0\n",
                2,
                "open_tasks_per_slot is 1 to",
            ),
            (
                "[scaling]\ncity_open_percent = 100\n",
                2,
                "city_open_percent is 101 to",
            ),
            (
                "[scaling]\ncity_open_percent = 150\ncity_close_percent = 150\n",
                3,
                "city_close_percent must be below city_open_percent (150)",
            ),
            (
                "[scaling]\ncity_target_depth = 0\n",
                2,
                "city_target_depth is 1 to",
            ),
            (
                "[scaling]\nstate_target_tasks = 0\n",
                2,
                "state_target_tasks is 1 to",
            ),
            (
                "[scaling]\nstate_target_tasks = 8\nstate_close_percent = 120\n",
                3,
                "state_close_percent must be below state_open_percent (120)",
            ),
            (
                "[resources]\napprove_up_to = { gpu = 1 }\n",
                2,
                "unknown resource \"gpu\"",
            ),
            (
                "[[resources.limit]]\nresource = \"tokens\"\namount = 5\nper = \"week\"\n",
                4,
                "unknown period \"week\"",
            ),
        ];
        for (text, line, needle) in table {
            let failure = parse(text).expect_err(text);
            assert_eq!(failure.line, Some(line), "{text}: {failure}");
            assert!(failure.to_string().contains(needle), "{text}: {failure}");
        }
    }

    fn task_facts(executor: &str, state: &str, retries: u64) -> Facts {
        Facts::default()
            .with(Attr::Executor, [executor.to_string()])
            .with(Attr::State, [state.to_string()])
            .count(Counter::Retries, retries)
    }

    #[test]
    fn rules_fire_on_their_matches_and_limits_at_their_level() {
        let text = r#"
[[rule]]
name = "shell-only-in-technical"
category = "security"
at = "submission"
when = { executor = "shell" }
unless = { state = ["technical"] }

[[rule]]
name = "few-retries"
category = "escalation"
at = "submission"
enforcement = "soft"
max = { retries = 5 }

[[rule]]
name = "note-llm"
category = "resource"
at = "submission"
enforcement = "advisory"
when = { executor = "llm" }
"#;
        let policy = parse(text).expect("parses");
        let names = |decision: &Decision<'_>| -> Vec<(String, Outcome)> {
            let fired = decision.fired.iter();
            fired.map(|(rule, o)| (rule.name.clone(), *o)).collect()
        };
        let allowed = policy.decide(
            Point::Submission,
            &[
                task_facts("shell", "technical", 1),
                task_facts("builtin", "market", 5),
            ],
            None,
        );
        assert!(allowed.fired.is_empty() && allowed.denied_by().is_none());
        let denied = policy.decide(
            Point::Submission,
            &[
                task_facts("shell", "market", 1),
                task_facts("llm", "market", 9),
            ],
            None,
        );
        assert_eq!(
            names(&denied),
            [
                ("shell-only-in-technical".to_string(), Outcome::Denied),
                ("few-retries".to_string(), Outcome::Denied),
                ("note-llm".to_string(), Outcome::Noted),
            ]
        );
        assert_eq!(
            denied.denied_by().map(|rule| rule.name.as_str()),
            Some("shell-only-in-technical")
        );
        // An override lifts the soft rule only.
        let overridden = policy.decide(
            Point::Submission,
            &[task_facts("llm", "market", 9)],
            Some("a flaky upstream"),
        );
        assert_eq!(
            names(&overridden),
            [
                ("few-retries".to_string(), Outcome::Overridden),
                ("note-llm".to_string(), Outcome::Noted),
            ]
        );
        assert!(overridden.denied_by().is_none());
        // Rules of another point are not consulted.
        assert!(
            policy
                .decide(Point::Admission, &[Facts::default()], None)
                .fired
                .is_empty()
        );
    }

    #[test]
    fn tiers_limit_projects_and_phases() {
        let starter = parse("tier = \"starter\"\n").expect("starter");
        let spec = crate::spec::parse(crate::spec::template()).expect("template");
        let facts = submission_facts(&spec, "owner", 0);
        let decision = starter.decide(Point::Submission, &facts, None);
        assert_eq!(
            decision.denied_by().map(|rule| rule.name.as_str()),
            Some("tier-starter-phases"),
            "the template has all eight phases"
        );
        let professional = parse("tier = \"professional\"\n").expect("professional");
        let ok = professional.decide(Point::Submission, &submission_facts(&spec, "o", 19), None);
        assert!(ok.denied_by().is_none());
        let full = professional.decide(Point::Submission, &submission_facts(&spec, "o", 20), None);
        assert_eq!(
            full.denied_by().map(|rule| rule.name.as_str()),
            Some("tier-professional-projects")
        );
        let enterprise = parse("tier = \"enterprise\"\n").expect("enterprise");
        let any = enterprise.decide(
            Point::Submission,
            &submission_facts(&spec, "o", 10_000),
            None,
        );
        assert!(any.fired.is_empty());
    }
}
