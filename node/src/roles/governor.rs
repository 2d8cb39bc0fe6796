//! The governor's core: what a state's governor writes to its Ledger and tells the
//! president. Pure, in the style of openraft's engine: the driver feeds a look at each
//! state it governs ([`Input::Tick`]) and the completions of what it carried out, the
//! core queues [`Command`]s, the driver drains them ([`Governor::drain`]) into Ledger
//! writes and sealed reports. Requests from other roles (the president's tasks and
//! reopenings, a mayor's proposals) are judged by [`Governor::request`], which names the
//! writes that answer them; the driver acknowledges once they are committed.
//!
//! ```text
//!   Tick(state's tasks, cities, projects, voters) ──► Write EscalateTask   (attempts used up)
//!                                                  ──► Write AddCity|RemoveCity (queue depth)
//!                                                  ──► Write AppointMayor|RenewLease
//!                                                  ──► Write ForgetProject (archived)
//!                                                  ──► Report (one project) ─► president
//!   Written(slot, ok) / Reported(state, project, ok)   completions
//!   request(AssignTasks | Reopen | Propose)        ──► the writes that answer it, or Refused
//! ```
//!
//! Progress goes to the president one project per report, only for running projects,
//! when it changed or every [`PROGRESS_REFRESH_MS`], with at most
//! [`MAX_REPORTS_IN_FLIGHT`] under way: a report is bounded by one project's tasks.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use aamas_consensus::ledger::{City, LedgerCommand, TaskKey, TaskStatus};
use aamas_protocol::{NodeKey, Phase};
use serde::{Deserialize, Serialize};

use crate::governance::scaling::Scaling;
use crate::roles::cities::{CityChange, CityLoad};

/// How long a mayor's lease lasts; the governor renews it when half has passed.
pub const MAYOR_LEASE_MS: u64 = 10_000;
/// How often a governor reports unchanged progress anyway (a new president learns it).
pub const PROGRESS_REFRESH_MS: u64 = 1_000;
/// How long a governor's copy of the Registry must go without a project before the
/// governor forgets the project's tasks (it was archived). A new project's tasks can
/// reach a governor a moment before its copy of the Registry has the project; they are
/// never forgotten for that.
pub const ARCHIVE_GRACE_MS: u64 = 30_000;
/// Progress reports under way at once.
pub const MAX_REPORTS_IN_FLIGHT: usize = 64;
/// Ledger writes under way at once.
pub const MAX_WRITES_IN_FLIGHT: usize = 1_024;

/// A task the president hands to a governor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewTask {
    /// Its name within the project.
    pub name: String,
    /// Its [`crate::spec::TaskSpec`], postcard.
    pub spec: Vec<u8>,
    /// Attempts allowed (retries + 1).
    pub max_attempts: u32,
}

/// Where one task of a state stands, as its governor reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReport {
    /// Its status in the state's Ledger.
    pub status: TaskStatus,
    /// Attempts made.
    pub attempt: u32,
    /// The last failure or escalation reason.
    pub reason: Option<String>,
    /// Whether the last failure was a fault of the moment ([`aamas_consensus::ledger::Task::transient`]).
    pub transient: bool,
    /// How often the president reopened it.
    pub reopened: u32,
}

/// One project of a state, as its governor reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateProgress {
    /// The project.
    pub project: String,
    /// Task name → where it stands, every phase.
    pub tasks: BTreeMap<String, (Phase, TaskReport)>,
}

/// A member as the role logic sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Its key.
    pub key: NodeKey,
    /// Its state.
    pub state: Option<String>,
    /// Whether it is alive.
    pub alive: bool,
    /// How many groups it is a voter of already.
    pub load: usize,
}

/// Up to `count` voters for `state`, not in `exclude`: alive members of the state first,
/// then other alive members; fewest voterships first, key order breaking ties.
pub fn pick_voters(
    state: &str,
    candidates: &[Candidate],
    exclude: &BTreeSet<NodeKey>,
    count: usize,
) -> Vec<NodeKey> {
    let mut eligible: Vec<&Candidate> = candidates
        .iter()
        .filter(|candidate| candidate.alive && !exclude.contains(&candidate.key))
        .collect();
    eligible.sort_by_key(|candidate| {
        (
            candidate.state.as_deref() != Some(state),
            candidate.load,
            candidate.key,
        )
    });
    eligible
        .into_iter()
        .take(count)
        .map(|candidate| candidate.key)
        .collect()
}

/// The mayor a governor should appoint for `state`: an alive member of the state other
/// than the governor (roles spread out), else the governor itself.
pub fn pick_mayor(state: &str, governor: NodeKey, candidates: &[Candidate]) -> Option<NodeKey> {
    let in_state: Vec<&Candidate> = candidates
        .iter()
        .filter(|candidate| candidate.alive && candidate.state.as_deref() == Some(state))
        .collect();
    in_state
        .iter()
        .filter(|candidate| candidate.key != governor)
        .min_by_key(|candidate| (candidate.load, candidate.key))
        .or_else(|| in_state.first())
        .map(|candidate| candidate.key)
        .or(Some(governor))
}

/// What a governor should do about a city's mayor at `now_ms`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MayorAction {
    /// Nothing: the lease holds for a while yet.
    Keep,
    /// Extend the current mayor's lease.
    Renew(NodeKey),
    /// Appoint this member (the lease lapsed or there never was one).
    Appoint(NodeKey),
    /// Wait: the mayor is dead but its lease has not lapsed yet.
    WaitForLapse,
}

/// Decides about a city's mayor.
///
/// A governor that stood in as its own mayor lets its lease lapse once `choose` offers
/// someone else, so that roles spread out as the state grows.
pub fn mayor_action(
    lease: Option<&aamas_consensus::ledger::Lease>,
    now_ms: u64,
    governor: NodeKey,
    alive: impl Fn(&NodeKey) -> bool,
    choose: impl FnOnce() -> Option<NodeKey>,
) -> MayorAction {
    match lease {
        Some(lease) if lease.holds_at(now_ms) => {
            if !alive(&lease.mayor) {
                MayorAction::WaitForLapse
            } else if lease.until_ms.saturating_sub(now_ms) < MAYOR_LEASE_MS / 2 {
                if lease.mayor == governor && choose().is_some_and(|other| other != governor) {
                    return MayorAction::WaitForLapse;
                }
                MayorAction::Renew(lease.mayor)
            } else {
                MayorAction::Keep
            }
        }
        _ => choose().map_or(MayorAction::Keep, MayorAction::Appoint),
    }
}

/// A task as the governor looks at it (its spec stays in the Ledger).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskLook {
    /// Its phase.
    pub phase: Phase,
    /// Where it stands.
    pub status: TaskStatus,
    /// Its latest attempt.
    pub attempt: u32,
    /// The city it was last assigned through.
    pub city: Option<String>,
    /// The last failure reason.
    pub failure: Option<String>,
    /// Whether the last failure was a fault of the moment.
    pub transient: bool,
    /// How often the president reopened it.
    pub reopened: u32,
}

impl From<&aamas_consensus::ledger::Task> for TaskLook {
    fn from(task: &aamas_consensus::ledger::Task) -> Self {
        Self {
            phase: task.phase,
            status: task.status,
            attempt: task.attempt,
            city: task.city.clone(),
            failure: task.failure.clone(),
            transient: task.transient,
            reopened: task.reopened,
        }
    }
}

/// One state this node governs, as its Ledger and the Registry have it.
#[derive(Debug, Clone, Default)]
pub struct StateLook {
    /// The state.
    pub state: String,
    /// Its Ledger's tasks.
    pub tasks: BTreeMap<TaskKey, TaskLook>,
    /// Its Ledger's cities.
    pub cities: BTreeMap<String, City>,
    /// The projects the Registry lists among those with tasks here: whether each runs.
    pub projects: BTreeMap<String, bool>,
    /// The members a mayor can be drawn from (the group's voters: a mayor reads the
    /// Ledger), with liveness.
    pub eligible: Vec<Candidate>,
}

/// What the governor learns.
#[derive(Debug)]
pub enum Input<'a> {
    /// A look at every state this node governs, and who the president is.
    Tick {
        /// The states.
        states: &'a [StateLook],
        /// The president, when known.
        president: Option<NodeKey>,
    },
    /// A [`Command::Write`] finished.
    Written {
        /// Its slot.
        slot: Vec<u8>,
        /// Whether it was committed (and not rejected).
        committed: bool,
    },
    /// A [`Command::Report`] finished.
    Reported {
        /// The state.
        state: String,
        /// The project.
        project: String,
        /// Whether the president acknowledged it.
        acknowledged: bool,
    },
}

/// What the governor asks the driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Commit `command` to `state`'s Ledger under the request id made of `request`;
    /// feed back [`Input::Written`] with `slot`.
    Write(Write),
    /// Send the president one project's progress; feed back [`Input::Reported`].
    Report {
        /// The president.
        president: NodeKey,
        /// The state.
        state: String,
        /// The project's tasks in the state.
        progress: StateProgress,
    },
}

/// One Ledger write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The state whose Ledger takes it.
    pub state: String,
    /// What the core follows it by: one write per slot at a time.
    pub slot: Vec<u8>,
    /// The parts of its request id (the same write retried is the same request).
    pub request: Vec<Vec<u8>>,
    /// The command.
    pub command: LedgerCommand,
}

/// Why the governor does not take a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Only the president assigns and reopens tasks.
    #[error("only the president {what}")]
    NotPresident {
        /// What it tried.
        what: &'static str,
    },
    /// This node governs no state that fits the request.
    #[error("this node governs no state {what}")]
    NotGoverned {
        /// Which.
        what: String,
    },
    /// A proposal for a city from a member not holding its lease.
    #[error("{sender} is not the mayor of {city}")]
    NotMayor {
        /// The sender.
        sender: NodeKey,
        /// The city.
        city: String,
    },
    /// A mayor proposed something that is not an assignment or an outcome.
    #[error("a mayor proposes only assignments and outcomes")]
    NotAMayorsCommand,
    /// Nothing to do.
    #[error("no tasks")]
    Empty,
}

impl Refused {
    /// The `reason` label of `aamas_rpc_refused_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Refused::NotPresident { .. } => "not_the_president",
            Refused::NotGoverned { .. } => "not_governed_here",
            Refused::NotMayor { .. } => "not_the_mayor",
            Refused::NotAMayorsCommand => "not_a_mayors_command",
            Refused::Empty => "empty",
        }
    }
}

/// A request from another role.
#[derive(Debug)]
pub enum Request {
    /// The president adds tasks of `project`'s `phase` to `state`.
    AssignTasks {
        /// The sender.
        sender: NodeKey,
        /// The state they are for (as their specs name it), if this node governs it.
        state: Option<String>,
        /// The project.
        project: String,
        /// The phase.
        phase: Phase,
        /// The tasks.
        tasks: Vec<NewTask>,
    },
    /// The president gives an escalated task `attempts` more.
    Reopen {
        /// The sender.
        sender: NodeKey,
        /// The governed state whose Ledger holds the task, if any.
        state: Option<String>,
        /// The task.
        key: TaskKey,
        /// More attempts.
        attempts: u32,
        /// Which reopening this is.
        reopening: u32,
    },
    /// A mayor proposes an assignment or an outcome for its city.
    Propose {
        /// The sender.
        sender: NodeKey,
        /// The governed state that has the city, if any.
        state: Option<String>,
        /// The city.
        city: String,
        /// Who holds the city's lease now, in that state's Ledger.
        lease_holder: Option<NodeKey>,
        /// The command.
        command: LedgerCommand,
    },
}

/// What a write in flight is for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Purpose {
    Escalation,
    Cities { state: String },
    Mayor,
    Forget { project: String },
}

/// The governor's state: soft, rebuilt from the Ledger by the next ticks.
#[derive(Debug)]
pub struct Governor {
    me: NodeKey,
    /// The last progress reported per (state, project), and when.
    reported: BTreeMap<(String, String), (u64, StateProgress)>,
    /// Reports under way, with what they carry.
    reporting: BTreeMap<(String, String), StateProgress>,
    /// Projects with tasks here that the Registry does not list, and since when.
    unlisted: BTreeMap<String, u64>,
    /// When each state last opened or closed a city.
    city_changed: BTreeMap<String, u64>,
    /// The policy's city thresholds ([`Governor::set_scaling`]).
    scaling: Scaling,
    /// Writes under way, by slot.
    writing: BTreeMap<Vec<u8>, Purpose>,
    queued: VecDeque<Command>,
}

impl Governor {
    /// The core of governor `me`, knowing nothing yet.
    pub fn new(me: NodeKey) -> Self {
        Self {
            me,
            reported: BTreeMap::new(),
            reporting: BTreeMap::new(),
            unlisted: BTreeMap::new(),
            city_changed: BTreeMap::new(),
            scaling: Scaling::default(),
            writing: BTreeMap::new(),
            queued: VecDeque::new(),
        }
    }

    /// Judges cities by the policy's `[scaling]` from now on.
    pub fn set_scaling(&mut self, scaling: Scaling) {
        self.scaling = scaling;
    }

    /// Takes one input at `now_ms`.
    pub fn handle(&mut self, now_ms: u64, input: Input<'_>) {
        match input {
            Input::Tick { states, president } => {
                for look in states {
                    self.escalate(look);
                    if !self.keep_cities(now_ms, look) {
                        self.keep_mayors(now_ms, look);
                    }
                    self.forget_archived(now_ms, look);
                    if let Some(president) = president {
                        self.report(now_ms, look, president);
                    }
                }
                // Bounded by what is governed now.
                let governed: BTreeSet<&str> = states.iter().map(|s| s.state.as_str()).collect();
                let present: BTreeSet<(&str, &str)> = states
                    .iter()
                    .flat_map(|look| {
                        look.tasks
                            .keys()
                            .map(move |key| (look.state.as_str(), key.project.as_str()))
                    })
                    .collect();
                let projects: BTreeSet<&str> = present.iter().map(|(_, p)| *p).collect();
                self.reported
                    .retain(|(state, project), _| present.contains(&(state, project)));
                self.unlisted
                    .retain(|project, _| projects.contains(project.as_str()));
                self.city_changed
                    .retain(|state, _| governed.contains(state.as_str()));
            }
            Input::Written { slot, committed } => {
                let Some(purpose) = self.writing.remove(&slot) else {
                    return;
                };
                if !committed {
                    return;
                }
                match purpose {
                    Purpose::Cities { state } => {
                        self.city_changed.insert(state, now_ms);
                    }
                    Purpose::Forget { project } => {
                        self.unlisted.remove(&project);
                    }
                    Purpose::Escalation | Purpose::Mayor => {}
                }
            }
            Input::Reported {
                state,
                project,
                acknowledged,
            } => {
                let slot = (state, project);
                if let Some(progress) = self.reporting.remove(&slot)
                    && acknowledged
                {
                    self.reported.insert(slot, (now_ms, progress));
                }
            }
        }
    }

    /// Judges a request from another role: the writes that answer it, to be committed
    /// before it is acknowledged. Reads no state of the core, so the driver answers it
    /// at once instead of queueing it behind a round.
    pub fn judge(request: Request, president: Option<NodeKey>) -> Result<Vec<Write>, Refused> {
        match request {
            Request::AssignTasks {
                sender,
                state,
                project,
                phase,
                tasks,
            } => {
                if president != Some(sender) {
                    return Err(Refused::NotPresident {
                        what: "assigns tasks",
                    });
                }
                if tasks.is_empty() {
                    return Err(Refused::Empty);
                }
                let state = state.ok_or_else(|| Refused::NotGoverned {
                    what: "the tasks are for".into(),
                })?;
                Ok(tasks
                    .into_iter()
                    .map(|task| {
                        let request = vec![
                            b"task".to_vec(),
                            project.as_bytes().to_vec(),
                            task.name.as_bytes().to_vec(),
                        ];
                        Write {
                            state: state.to_string(),
                            slot: request.concat(),
                            request,
                            command: LedgerCommand::AddTask {
                                key: TaskKey {
                                    project: project.to_string(),
                                    task: task.name,
                                },
                                phase,
                                spec: task.spec,
                                max_attempts: task.max_attempts,
                            },
                        }
                    })
                    .collect())
            }
            Request::Reopen {
                sender,
                state,
                key,
                attempts,
                reopening,
            } => {
                if president != Some(sender) {
                    return Err(Refused::NotPresident {
                        what: "reopens tasks",
                    });
                }
                let state = state.ok_or_else(|| Refused::NotGoverned {
                    what: format!("holding {key}"),
                })?;
                let request = vec![
                    [
                        b"reopen".as_slice(),
                        key.project.as_bytes(),
                        key.task.as_bytes(),
                        &reopening.to_be_bytes(),
                    ]
                    .concat(),
                ];
                Ok(vec![Write {
                    state: state.to_string(),
                    slot: request.concat(),
                    request,
                    command: LedgerCommand::ReopenTask {
                        key,
                        attempts,
                        reopening,
                    },
                }])
            }
            Request::Propose {
                sender,
                state,
                city,
                lease_holder,
                command,
            } => {
                let state = state.ok_or_else(|| Refused::NotGoverned {
                    what: format!("with city {city}"),
                })?;
                if lease_holder != Some(sender) {
                    return Err(Refused::NotMayor { sender, city });
                }
                // An assignment's request names its worker and city: two proposals of
                // the same attempt to different workers (a mayor whose copy of the Ledger
                // lagged its own commit) must not share an id, or the second would be
                // answered as a retry of the first, and its worker would run an attempt
                // that the Ledger gave to another (whose outcome then counts for
                // nothing: the task waited for its whole timeout).
                let (what, key, attempt, who): (&[u8], _, _, Vec<u8>) = match &command {
                    LedgerCommand::AssignTask {
                        key,
                        attempt,
                        worker,
                        city,
                    } => (
                        b"assign",
                        key,
                        attempt,
                        [&worker.0[..], city.as_bytes()].concat(),
                    ),
                    LedgerCommand::CompleteTask { key, attempt, .. } => {
                        (b"complete", key, attempt, Vec::new())
                    }
                    LedgerCommand::FailTask { key, attempt, .. } => {
                        (b"fail", key, attempt, Vec::new())
                    }
                    LedgerCommand::ChargeAttempt { key, attempt, .. } => {
                        (b"charge", key, attempt, Vec::new())
                    }
                    _ => return Err(Refused::NotAMayorsCommand),
                };
                let request = vec![
                    [
                        what,
                        key.project.as_bytes(),
                        key.task.as_bytes(),
                        &attempt.to_be_bytes(),
                        &who,
                    ]
                    .concat(),
                ];
                Ok(vec![Write {
                    state: state.to_string(),
                    slot: request.concat(),
                    request,
                    command,
                }])
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
            self.reporting.len() <= MAX_REPORTS_IN_FLIGHT,
            "reports over their bound"
        );
        assert!(
            self.writing.len() <= MAX_WRITES_IN_FLIGHT,
            "writes over their bound"
        );
        for ((state, project), (_, progress)) in &self.reported {
            assert_eq!(
                &progress.project, project,
                "{state}: progress filed under another project"
            );
        }
    }

    fn write(
        &mut self,
        state: &str,
        slot: Vec<u8>,
        request: Vec<Vec<u8>>,
        command: LedgerCommand,
        purpose: Purpose,
    ) -> bool {
        if self.writing.contains_key(&slot) || self.writing.len() >= MAX_WRITES_IN_FLIGHT {
            return false;
        }
        self.writing.insert(slot.clone(), purpose);
        self.queued.push_back(Command::Write(Write {
            state: state.to_string(),
            slot,
            request,
            command,
        }));
        true
    }

    /// Tasks that used up their attempts go up to the president.
    fn escalate(&mut self, look: &StateLook) {
        for (key, task) in &look.tasks {
            if task.status != TaskStatus::Failed {
                continue;
            }
            // After each reopening the task can fail and go up again: a new request.
            let request = vec![
                b"escalate".to_vec(),
                key.project.as_bytes().to_vec(),
                key.task.as_bytes().to_vec(),
                task.reopened.to_be_bytes().to_vec(),
            ];
            let reason = task.failure.clone().unwrap_or_default();
            self.write(
                &look.state,
                request.concat(),
                request,
                LedgerCommand::EscalateTask {
                    key: key.clone(),
                    reason: format!("failed after every attempt: {reason}"),
                },
                Purpose::Escalation,
            );
        }
    }

    /// Opens or closes a city when the queue asks for it ([`crate::roles::cities::scale`]);
    /// whether a change is under way (mayors wait for the city list it commits).
    fn keep_cities(&mut self, now_ms: u64, look: &StateLook) -> bool {
        let slot = [b"cities".as_slice(), look.state.as_bytes()].concat();
        if self.writing.contains_key(&slot) {
            return true;
        }
        let mut assigned: BTreeMap<&str, usize> = BTreeMap::new();
        let mut pending = 0;
        for task in look.tasks.values() {
            match task.status {
                TaskStatus::Pending => pending += 1,
                TaskStatus::Assigned => {
                    if let Some(city) = task.city.as_deref() {
                        *assigned.entry(city).or_default() += 1;
                    }
                }
                _ => {}
            }
        }
        let loads: Vec<CityLoad> = look
            .cities
            .keys()
            .map(|name| CityLoad {
                name: name.clone(),
                assigned: assigned.get(name.as_str()).copied().unwrap_or(0),
            })
            .collect();
        let possible = look.eligible.iter().filter(|c| c.alive).count();
        let last = self.city_changed.get(&look.state).copied();
        let bounds = crate::roles::cities::CityBounds {
            rules: &self.scaling,
            max_cities: possible,
        };
        let (what, name, command) =
            match crate::roles::cities::scale(&look.state, &loads, pending, bounds, last, now_ms) {
                CityChange::Keep => return false,
                CityChange::Open(name) => ("open", name.clone(), LedgerCommand::AddCity { name }),
                CityChange::Close(name) => {
                    ("close", name.clone(), LedgerCommand::RemoveCity { name })
                }
            };
        let request = vec![
            b"cities".to_vec(),
            what.as_bytes().to_vec(),
            name.into_bytes(),
            now_ms.to_be_bytes().to_vec(),
        ];
        let state = look.state.clone();
        self.write(
            &look.state,
            slot,
            request,
            command,
            Purpose::Cities { state },
        )
    }

    /// Each city with a mayor on a lease: renewed at half time, replaced once it lapsed;
    /// each city prefers a voter that is not the mayor of another.
    fn keep_mayors(&mut self, now_ms: u64, look: &StateLook) {
        let alive = |key: &NodeKey| look.eligible.iter().any(|c| c.key == *key && c.alive);
        let holders: BTreeMap<&str, NodeKey> = look
            .cities
            .iter()
            .filter_map(|(name, city)| {
                let lease = city.mayor.as_ref().filter(|lease| lease.holds_at(now_ms))?;
                Some((name.as_str(), lease.mayor))
            })
            .collect();
        let mut writes = Vec::new();
        for (name, city) in &look.cities {
            let busy_elsewhere: BTreeSet<NodeKey> = holders
                .iter()
                .filter(|(other, _)| **other != name.as_str())
                .map(|(_, mayor)| *mayor)
                .collect();
            let free: Vec<Candidate> = look
                .eligible
                .iter()
                .filter(|c| !busy_elsewhere.contains(&c.key))
                .cloned()
                .collect();
            let action = mayor_action(city.mayor.as_ref(), now_ms, self.me, alive, || {
                pick_mayor(&look.state, self.me, &free)
                    .or_else(|| pick_mayor(&look.state, self.me, &look.eligible))
            });
            let (mayor, command) = match action {
                MayorAction::Keep | MayorAction::WaitForLapse => continue,
                MayorAction::Renew(mayor) => (
                    mayor,
                    LedgerCommand::RenewLease {
                        city: name.clone(),
                        mayor,
                        now_ms,
                        until_ms: now_ms + MAYOR_LEASE_MS,
                    },
                ),
                MayorAction::Appoint(mayor) => (
                    mayor,
                    LedgerCommand::AppointMayor {
                        city: name.clone(),
                        mayor,
                        now_ms,
                        until_ms: now_ms + MAYOR_LEASE_MS,
                    },
                ),
            };
            let slot = [b"mayor".as_slice(), name.as_bytes()].concat();
            let request = vec![
                b"mayor".to_vec(),
                name.as_bytes().to_vec(),
                mayor.0.to_vec(),
                now_ms.to_be_bytes().to_vec(),
            ];
            writes.push((slot, request, command));
        }
        for (slot, request, command) in writes {
            self.write(&look.state, slot, request, command, Purpose::Mayor);
        }
    }

    /// Forgets the tasks of projects the Registry has gone without for
    /// [`ARCHIVE_GRACE_MS`] (archived).
    fn forget_archived(&mut self, now_ms: u64, look: &StateLook) {
        let projects: BTreeSet<&str> = look.tasks.keys().map(|k| k.project.as_str()).collect();
        for project in projects {
            if look.projects.contains_key(project) {
                self.unlisted.remove(project);
                continue;
            }
            let since = *self.unlisted.entry(project.to_string()).or_insert(now_ms);
            if now_ms.saturating_sub(since) < ARCHIVE_GRACE_MS {
                continue;
            }
            let request = vec![
                b"forget".to_vec(),
                project.as_bytes().to_vec(),
                since.to_be_bytes().to_vec(),
            ];
            self.write(
                &look.state,
                [b"forget".as_slice(), project.as_bytes()].concat(),
                request,
                LedgerCommand::ForgetProject {
                    project: project.to_string(),
                },
                Purpose::Forget {
                    project: project.to_string(),
                },
            );
        }
    }

    /// Reports each running project whose progress changed, or went unreported for
    /// [`PROGRESS_REFRESH_MS`].
    fn report(&mut self, now_ms: u64, look: &StateLook, president: NodeKey) {
        let mut by_project: BTreeMap<&str, StateProgress> = BTreeMap::new();
        for (key, task) in &look.tasks {
            if look.projects.get(&key.project) != Some(&true) {
                continue;
            }
            let entry = by_project
                .entry(key.project.as_str())
                .or_insert_with(|| StateProgress {
                    project: key.project.clone(),
                    tasks: BTreeMap::new(),
                });
            entry.tasks.insert(
                key.task.clone(),
                (
                    task.phase,
                    TaskReport {
                        status: task.status,
                        attempt: task.attempt,
                        reason: task.failure.clone(),
                        transient: task.transient,
                        reopened: task.reopened,
                    },
                ),
            );
        }
        for (project, progress) in by_project {
            if self.reporting.len() >= MAX_REPORTS_IN_FLIGHT {
                return;
            }
            let slot = (look.state.clone(), project.to_string());
            if self.reporting.contains_key(&slot) {
                continue;
            }
            let due = self.reported.get(&slot).is_none_or(|(at, last)| {
                *last != progress || now_ms.saturating_sub(*at) >= PROGRESS_REFRESH_MS
            });
            if !due {
                continue;
            }
            self.reporting.insert(slot, progress.clone());
            self.queued.push_back(Command::Report {
                president,
                state: look.state.clone(),
                progress,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aamas_consensus::ledger::Lease;

    fn node(n: u8) -> NodeKey {
        NodeKey([n; 32])
    }

    fn key(task: &str) -> TaskKey {
        TaskKey {
            project: "p".into(),
            task: task.into(),
        }
    }

    fn task(status: TaskStatus, city: Option<&str>) -> TaskLook {
        TaskLook {
            phase: Phase::Development,
            status,
            attempt: u32::from(status != TaskStatus::Pending),
            city: city.map(str::to_string),
            failure: (status == TaskStatus::Failed).then(|| "exit 1".to_string()),
            transient: false,
            reopened: 0,
        }
    }

    fn voter(n: u8, alive: bool) -> Candidate {
        Candidate {
            key: node(n),
            state: Some("s".into()),
            alive,
            load: 0,
        }
    }

    /// State `s` with city `s-1` led by node 2 until `until`, voters 1 (the governor),
    /// 2 and 3, and project `p` running.
    fn look(tasks: Vec<(TaskKey, TaskLook)>, until: u64) -> StateLook {
        StateLook {
            state: "s".into(),
            tasks: tasks.into_iter().collect(),
            cities: BTreeMap::from([(
                "s-1".to_string(),
                City {
                    mayor: Some(Lease {
                        mayor: node(2),
                        until_ms: until,
                        term: 1,
                    }),
                },
            )]),
            projects: BTreeMap::from([("p".to_string(), true)]),
            eligible: vec![voter(1, true), voter(2, true), voter(3, true)],
        }
    }

    fn tick(
        governor: &mut Governor,
        now: u64,
        states: &[StateLook],
        president: Option<u8>,
    ) -> Vec<Command> {
        governor.handle(
            now,
            Input::Tick {
                states,
                president: president.map(node),
            },
        );
        governor.validate();
        governor.drain().collect()
    }

    fn writes(commands: &[Command]) -> Vec<&LedgerCommand> {
        commands
            .iter()
            .filter_map(|c| match c {
                Command::Write(write) => Some(&write.command),
                Command::Report { .. } => None,
            })
            .collect()
    }

    #[test]
    fn tasks_are_added_only_for_the_president_of_a_governed_state() {
        let tasks = vec![NewTask {
            name: "build".into(),
            spec: vec![1, 2],
            max_attempts: 3,
        }];
        let assign = |sender: u8, state: Option<&'static str>| Request::AssignTasks {
            sender: node(sender),
            state: state.map(str::to_string),
            project: "p".into(),
            phase: Phase::Development,
            tasks: tasks.clone(),
        };
        assert_eq!(
            Governor::judge(assign(9, Some("s")), Some(node(5))),
            Err(Refused::NotPresident {
                what: "assigns tasks"
            })
        );
        assert!(matches!(
            Governor::judge(assign(5, None), Some(node(5))),
            Err(Refused::NotGoverned { .. })
        ));
        let writes =
            Governor::judge(assign(5, Some("s")), Some(node(5))).expect("as the test sets it up");
        assert_eq!(
            writes,
            vec![Write {
                state: "s".into(),
                slot: b"taskpbuild".to_vec(),
                request: vec![b"task".to_vec(), b"p".to_vec(), b"build".to_vec()],
                command: LedgerCommand::AddTask {
                    key: key("build"),
                    phase: Phase::Development,
                    spec: vec![1, 2],
                    max_attempts: 3,
                },
            }]
        );
    }

    #[test]
    fn a_mayors_assignment_and_result_are_committed_only_from_the_lease_holder() {
        let complete = LedgerCommand::CompleteTask {
            key: key("a"),
            attempt: 2,
            result_digest: [7; 32],
            usage: None,
        };
        let propose = |sender: u8, command: LedgerCommand| Request::Propose {
            sender: node(sender),
            state: Some("s".into()),
            city: "s-1".into(),
            lease_holder: Some(node(2)),
            command,
        };
        let writes =
            Governor::judge(propose(2, complete.clone()), None).expect("as the test sets it up");
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].command, complete);
        assert_eq!(writes[0].request, vec![b"completepa\0\0\0\x02".to_vec()]);
        let assign = LedgerCommand::AssignTask {
            key: key("a"),
            attempt: 1,
            city: "s-1".into(),
            worker: node(4),
        };
        assert_eq!(
            Governor::judge(propose(2, assign.clone()), None).expect("as the test sets it up")[0]
                .command,
            assign
        );
        assert_eq!(
            Governor::judge(propose(3, complete), None),
            Err(Refused::NotMayor {
                sender: node(3),
                city: "s-1".into()
            })
        );
        assert_eq!(
            Governor::judge(
                propose(
                    2,
                    LedgerCommand::ForgetProject {
                        project: "p".into()
                    }
                ),
                None
            ),
            Err(Refused::NotAMayorsCommand)
        );
    }

    #[test]
    fn two_assignments_of_one_attempt_to_different_workers_are_different_requests() {
        let assign = |worker: u8| Request::Propose {
            sender: node(2),
            state: Some("s".into()),
            city: "s-1".into(),
            lease_holder: Some(node(2)),
            command: LedgerCommand::AssignTask {
                key: key("a"),
                attempt: 1,
                city: "s-1".into(),
                worker: node(worker),
            },
        };
        let request = |worker: u8| {
            Governor::judge(assign(worker), None).expect("from the lease holder")[0]
                .request
                .clone()
        };
        // The same assignment retried is the same request; another worker's is not
        // (the Ledger then refuses it: the attempt was taken).
        assert_eq!(request(4), request(4));
        assert_ne!(request(4), request(5));
    }

    #[test]
    fn a_failed_task_is_escalated_once_until_the_write_finishes() {
        let mut governor = Governor::new(node(1));
        let states = [look(
            vec![(key("a"), task(TaskStatus::Failed, Some("s-1")))],
            100_000,
        )];
        let escalation = LedgerCommand::EscalateTask {
            key: key("a"),
            reason: "failed after every attempt: exit 1".into(),
        };
        let first = tick(&mut governor, 1_000, &states, None);
        assert_eq!(writes(&first), vec![&escalation]);
        // Under way: not written twice.
        assert_eq!(
            writes(&tick(&mut governor, 1_050, &states, None)),
            Vec::<&LedgerCommand>::new()
        );
        // Refused (a lost leadership, say): tried again on the next tick.
        let Command::Write(write) = &first[0] else {
            panic!("a write")
        };
        governor.handle(
            1_100,
            Input::Written {
                slot: write.slot.clone(),
                committed: false,
            },
        );
        assert_eq!(
            writes(&tick(&mut governor, 1_150, &states, None)),
            vec![&escalation]
        );
    }

    #[test]
    fn a_deep_queue_opens_a_city_and_an_empty_one_closes_after_the_cool_down() {
        let mut governor = Governor::new(node(1));
        let pending: Vec<(TaskKey, TaskLook)> = (0..200)
            .map(|n| (key(&format!("t{n}")), task(TaskStatus::Pending, None)))
            .collect();
        let deep = [look(pending, 100_000)];
        let opened = tick(&mut governor, 1_000, &deep, None);
        assert_eq!(
            writes(&opened),
            vec![&LedgerCommand::AddCity { name: "s-2".into() }]
        );
        let Command::Write(write) = &opened[0] else {
            panic!("a write")
        };
        // While the change is under way, mayors wait for the city list.
        assert!(tick(&mut governor, 1_010, &deep, None).is_empty());
        governor.handle(
            1_020,
            Input::Written {
                slot: write.slot.clone(),
                committed: true,
            },
        );
        // Now two cities, an empty queue: the new city (without a mayor yet) gets one...
        let mut quiet = look(Vec::new(), 100_000);
        quiet.cities.insert("s-2".into(), City::default());
        assert_eq!(
            writes(&tick(&mut governor, 2_000, &[quiet.clone()], None)),
            vec![&LedgerCommand::AppointMayor {
                city: "s-2".into(),
                mayor: node(3),
                now_ms: 2_000,
                until_ms: 2_000 + MAYOR_LEASE_MS,
            }]
        );
        // ...and is closed only once the cool-down since it opened has passed.
        let closing = tick(
            &mut governor,
            1_020 + Scaling::default().city_cooldown_ms(),
            &[quiet],
            None,
        );
        assert_eq!(
            writes(&closing),
            vec![&LedgerCommand::RemoveCity { name: "s-2".into() }]
        );
    }

    #[test]
    fn progress_goes_to_the_president_per_running_project_when_it_changes() {
        let mut governor = Governor::new(node(1));
        let mut state = look(
            vec![
                (key("a"), task(TaskStatus::Succeeded, Some("s-1"))),
                (
                    TaskKey {
                        project: "done".into(),
                        task: "x".into(),
                    },
                    task(TaskStatus::Succeeded, Some("s-1")),
                ),
            ],
            100_000,
        );
        state.projects.insert("done".into(), false);
        let sent = tick(&mut governor, 1_000, &[state.clone()], Some(5));
        let reports: Vec<&Command> = sent
            .iter()
            .filter(|c| matches!(c, Command::Report { .. }))
            .collect();
        // Only the running project; a finished one is of no use to the president.
        assert_eq!(reports.len(), 1);
        let Command::Report {
            president,
            progress,
            ..
        } = reports[0]
        else {
            unreachable!()
        };
        assert_eq!((*president, progress.project.as_str()), (node(5), "p"));
        governor.handle(
            1_010,
            Input::Reported {
                state: "s".into(),
                project: "p".into(),
                acknowledged: true,
            },
        );
        // Unchanged: not again before the refresh.
        let quiet = |c: &Command| matches!(c, Command::Report { .. });
        assert!(
            !tick(&mut governor, 1_500, &[state.clone()], Some(5))
                .iter()
                .any(quiet)
        );
        assert!(
            tick(
                &mut governor,
                1_010 + PROGRESS_REFRESH_MS,
                &[state.clone()],
                Some(5)
            )
            .iter()
            .any(quiet)
        );
        // No president: nothing to report to.
        let mut fresh = Governor::new(node(1));
        assert!(!tick(&mut fresh, 0, &[state], None).iter().any(quiet));
    }

    #[test]
    fn an_archived_projects_tasks_are_forgotten_after_the_grace() {
        let mut governor = Governor::new(node(1));
        let mut state = look(
            vec![(key("a"), task(TaskStatus::Succeeded, Some("s-1")))],
            100_000,
        );
        state.projects.clear();
        assert!(writes(&tick(&mut governor, 1_000, &[state.clone()], None)).is_empty());
        assert_eq!(
            writes(&tick(
                &mut governor,
                1_000 + ARCHIVE_GRACE_MS,
                &[state],
                None
            )),
            vec![&LedgerCommand::ForgetProject {
                project: "p".into()
            }]
        );
    }
}
