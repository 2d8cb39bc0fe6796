//! The president's core: where a newcomer is placed, who votes in the federal group, and
//! how each running project's phase is planned, advanced or failed. Pure, in the style of
//! openraft's engine: the driver feeds [`Input`]s with the time, the core queues
//! [`Command`]s, and the driver drains them ([`President::drain`]) into Registry
//! proposals and sealed messages to governors, whose completions come back as inputs.
//! Admission placement ([`place`]) and the federal group's membership
//! ([`plan_federal`]) are pure decisions the driver carries out through Raft.
//!
//! ```text
//!   Progress(state, projects)            what a governor reports, one project at a time
//!   Tick(running projects, governors) ──► AssignTasks  (ready tasks of the phase, by state)
//!                                     ──► Propose SetProjectProgress (the counts changed)
//!                                     ──► Propose AdvancePhase + PhaseTransition (all done)
//!                                     ──► Reopen       (an escalation worth another round)
//!                                     ──► Propose FailProject (an escalation that is not)
//!   Assigned(project, phase, state, ok) / Proposed(slot, ok)   completions
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use aamas_consensus::NodeId;
use aamas_consensus::ledger::{TaskKey, TaskStatus};
use aamas_consensus::registry::{PhaseProgress, RegistryCommand};
use aamas_protocol::{Event, NodeKey, Phase};

use crate::roles::governor::{NewTask, StateProgress, TaskReport};
use crate::spec::{PhaseSpec, ProjectSpec, TaskSpec};

/// Most voters of the federal group.
pub const FEDERAL_VOTERS: usize = 5;
/// A voter not heard from for this long is replaced.
pub const VOTER_DEAD_TIMEOUT_MS: u64 = 10_000;
/// A member heard from within this window counts as alive for joining the group.
pub const FEDERAL_ALIVE_MS: u64 = 2_000;
/// Most members the president adds as federal learners per tick (in one membership
/// change).
pub const LEARNERS_PER_TICK: usize = 256;
/// How often the president resends tasks a state has not reported yet.
pub const ASSIGN_RESEND_MS: u64 = 1_000;
/// How many more attempts a reopened task gets.
pub const REOPEN_ATTEMPTS: u32 = 2;
/// How often the president reopens one task.
pub const MAX_REOPENINGS: u32 = 1;
/// Proposals under way at once.
pub const MAX_PROPOSALS_IN_FLIGHT: usize = 1_024;
/// The longest failure reason a project keeps.
pub const MAX_FAILURE_REASON: usize = 900;

/// The state a newcomer with `skills` is placed in: a state named like one of its skills,
/// else the least populated (`states`: each state's members), name order breaking ties.
pub fn place(skills: &[String], states: &BTreeMap<String, usize>) -> Option<String> {
    skills
        .iter()
        .find(|skill| states.contains_key(*skill))
        .cloned()
        .or_else(|| {
            states
                .iter()
                .min_by_key(|(name, members)| (**members, (*name).clone()))
                .map(|(name, _)| name.clone())
        })
}

/// What the president decides about an escalated task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Give it another round of attempts.
    Reassign,
    /// Fail the phase (and the project) with the task's reason.
    FailPhase,
}

/// The president's decision: a task lost to faults of the moment (a lost worker, a
/// timeout, an unreachable service: [`TaskReport::transient`], recorded from the
/// failure's type) is reassigned, at most [`MAX_REOPENINGS`] times; a task that failed on
/// its merits (a non-zero exit, a refused request, a bad reply) fails the phase, whatever
/// words its output or reason holds.
pub fn decide(report: &TaskReport) -> Decision {
    if report.transient && report.reopened < MAX_REOPENINGS {
        Decision::Reassign
    } else {
        Decision::FailPhase
    }
}

/// The tasks of `phase` that can start: not handed out yet (`known`), every dependency
/// succeeded.
pub fn ready_tasks<'a>(
    phase: &'a PhaseSpec,
    known: &BTreeSet<&str>,
    succeeded: &BTreeSet<&str>,
) -> Vec<&'a TaskSpec> {
    phase
        .tasks
        .iter()
        .filter(|task| !known.contains(task.name.as_str()))
        .filter(|task| {
            task.depends_on
                .iter()
                .all(|dep| succeeded.contains(dep.as_str()))
        })
        .collect()
}

/// The federal group as its leader sees it.
#[derive(Debug, Clone)]
pub struct FederalView<'a> {
    /// The leader (this node).
    pub me: NodeId,
    /// Its voters.
    pub voters: &'a BTreeSet<NodeId>,
    /// Its learners (relays).
    pub learners: &'a BTreeSet<NodeId>,
    /// The active members, with their states.
    pub members: &'a BTreeMap<NodeId, Option<String>>,
    /// When each member was last heard from.
    pub last_seen: &'a BTreeMap<NodeId, u64>,
    /// Whether a membership change is under way (joint configuration).
    pub changing: bool,
    /// How many members the group should hold (voters and relays).
    pub wanted: usize,
    /// Whether enough time passed since learners were last added.
    pub learner_gap_passed: bool,
    /// Now.
    pub now_ms: u64,
}

/// One change of the federal membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FederalChange {
    /// Swap a dead voter for a live member.
    ReplaceVoter {
        /// The dead voter.
        dead: NodeId,
        /// Its replacement.
        with: NodeId,
    },
    /// Take a dead relay out of the group.
    RemoveRelay(NodeId),
    /// Add live members as learners, in one change.
    AddLearners(BTreeSet<NodeId>),
    /// Add a voter (the group has fewer than [`FEDERAL_VOTERS`]).
    AddVoter(NodeId),
}

/// The federal membership changes due now, in order: a dead voter replaced (then nothing
/// else this round), or a dead relay removed (likewise), or learners added and a voter
/// added.
pub fn plan_federal(view: &FederalView<'_>) -> Vec<FederalChange> {
    let seen = |id: NodeId| view.last_seen.get(&id).copied();
    let age = |id: NodeId| view.now_ms.saturating_sub(seen(id).unwrap_or(0));
    if view.changing {
        return Vec::new();
    }
    let candidates: BTreeMap<NodeId, aamas_consensus::MemberNode> = view
        .members
        .keys()
        .map(|id| (*id, aamas_consensus::MemberNode::default()))
        .collect();
    if let Ok(Some(replacement)) = aamas_consensus::plan_replacement(
        view.me,
        view.voters,
        &candidates,
        seen,
        view.now_ms,
        VOTER_DEAD_TIMEOUT_MS,
    ) {
        return vec![FederalChange::ReplaceVoter {
            dead: replacement.dead,
            with: replacement.with,
        }];
    }
    let alive = |id: NodeId| age(id) < FEDERAL_ALIVE_MS;
    if let Some(dead) = view
        .learners
        .iter()
        .copied()
        .find(|id| age(*id) >= VOTER_DEAD_TIMEOUT_MS)
    {
        return vec![FederalChange::RemoveRelay(dead)];
    }
    let mut changes = Vec::new();
    let in_group: BTreeSet<NodeId> = view.voters.union(view.learners).copied().collect();
    let live_in_group = in_group.iter().filter(|id| alive(**id)).count();
    let room = view
        .wanted
        .saturating_sub(live_in_group)
        .min(LEARNERS_PER_TICK);
    let missing: BTreeSet<NodeId> = view
        .members
        .keys()
        .copied()
        .filter(|id| !in_group.contains(id) && alive(*id))
        .take(room)
        .collect();
    if !missing.is_empty() && (view.learner_gap_passed || missing.len() >= LEARNERS_PER_TICK) {
        changes.push(FederalChange::AddLearners(missing));
    }
    if view.voters.len() < FEDERAL_VOTERS.min(view.members.len()) {
        // Spread voters over states: the next one from the state with fewest voters.
        let mut per_state: BTreeMap<Option<&str>, usize> = BTreeMap::new();
        for voter in view.voters {
            let state = view.members.get(voter).and_then(|s| s.as_deref());
            *per_state.entry(state).or_default() += 1;
        }
        if let Some(id) = view
            .members
            .iter()
            .filter(|(id, _)| !view.voters.contains(id) && alive(**id))
            .min_by_key(|(id, state)| {
                let state = state.as_deref();
                (per_state.get(&state).copied().unwrap_or(0), **id)
            })
            .map(|(id, _)| *id)
        {
            changes.push(FederalChange::AddVoter(id));
        }
    }
    changes
}

/// A running project as the Registry has it.
#[derive(Debug, Clone)]
pub struct RunningProject<'a> {
    /// Its id.
    pub id: &'a str,
    /// Its current phase.
    pub phase: Phase,
    /// Its spec; `None` when it cannot be read.
    pub spec: Option<&'a ProjectSpec>,
    /// The phase's progress as last recorded.
    pub recorded: Option<PhaseProgress>,
}

/// What the president learns.
#[derive(Debug)]
pub enum Input<'a> {
    /// A governor reported projects of its state (its authority checked by the driver).
    Progress {
        /// The state.
        state: String,
        /// Each project's tasks in the state.
        projects: Vec<StateProgress>,
    },
    /// A look at the running projects and at which state has which governor.
    Tick {
        /// The running projects.
        projects: &'a [RunningProject<'a>],
        /// Each state's governor, of the states that have one.
        governors: &'a BTreeMap<String, NodeKey>,
    },
    /// A [`Command::AssignTasks`] finished.
    Assigned {
        /// The project.
        project: String,
        /// The phase.
        phase: Phase,
        /// The state.
        state: String,
        /// Whether the governor acknowledged them.
        delivered: bool,
    },
    /// A [`Command::Propose`] finished.
    Proposed {
        /// Its slot.
        slot: Vec<u8>,
    },
}

/// What the president asks the driver to do.
#[derive(Debug, Clone, PartialEq)]
#[expect(
    clippy::large_enum_variant,
    reason = "a command lives from one round's drain to its carrying out; a box per proposal buys nothing"
)]
pub enum Command {
    /// Commit `command` to the Registry under the request id made of `request`; then
    /// publish `announce`, if any; feed back [`Input::Proposed`].
    Propose {
        /// What the core follows it by.
        slot: Vec<u8>,
        /// The parts of its request id.
        request: Vec<Vec<u8>>,
        /// The command.
        command: RegistryCommand,
        /// The event to publish once it is committed.
        announce: Option<Event>,
    },
    /// Hand these tasks to `state`'s governor; feed back [`Input::Assigned`].
    AssignTasks {
        /// The governor.
        governor: NodeKey,
        /// The project.
        project: String,
        /// The phase.
        phase: Phase,
        /// The state.
        state: String,
        /// The tasks.
        tasks: Vec<NewTask>,
    },
    /// Ask `governor` to give an escalated task another round of attempts.
    Reopen {
        /// The governor.
        governor: NodeKey,
        /// The task.
        key: TaskKey,
        /// More attempts.
        attempts: u32,
        /// Which reopening this is.
        reopening: u32,
    },
}

/// The president's state: soft, rebuilt from the governors' next reports.
#[derive(Debug, Default)]
pub struct President {
    /// The latest report of each (project, state).
    progress: BTreeMap<(String, String), StateProgress>,
    /// When tasks were last sent to each (project, phase, state).
    sent: BTreeMap<(String, Phase, String), u64>,
    /// When each escalated task was last reopened.
    reopened: BTreeMap<TaskKey, u64>,
    /// Proposals under way.
    proposing: BTreeSet<Vec<u8>>,
    queued: VecDeque<Command>,
}

impl President {
    /// A president that knows nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one input at `now_ms`.
    pub fn handle(&mut self, now_ms: u64, input: Input<'_>) {
        match input {
            Input::Progress { state, projects } => {
                for progress in projects {
                    self.progress
                        .insert((progress.project.clone(), state.clone()), progress);
                }
            }
            Input::Tick {
                projects,
                governors,
            } => {
                // Bounded by the running projects.
                let running: BTreeSet<&str> = projects.iter().map(|p| p.id).collect();
                let current: BTreeSet<(&str, Phase)> =
                    projects.iter().map(|p| (p.id, p.phase)).collect();
                self.progress
                    .retain(|(project, _), _| running.contains(project.as_str()));
                self.sent
                    .retain(|(project, phase, _), _| current.contains(&(project.as_str(), *phase)));
                self.reopened
                    .retain(|key, _| running.contains(key.project.as_str()));
                for project in projects {
                    self.plan(now_ms, project, governors);
                }
            }
            Input::Assigned {
                project,
                phase,
                state,
                delivered,
            } => {
                if !delivered {
                    self.sent.remove(&(project, phase, state));
                }
            }
            Input::Proposed { slot } => {
                self.proposing.remove(&slot);
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
            self.proposing.len() <= MAX_PROPOSALS_IN_FLIGHT,
            "proposals over their bound"
        );
        for ((project, state), progress) in &self.progress {
            assert_eq!(
                &progress.project, project,
                "{state}: progress filed under another project"
            );
        }
    }

    fn propose(
        &mut self,
        request: Vec<Vec<u8>>,
        command: RegistryCommand,
        announce: Option<Event>,
    ) {
        let slot = request.concat();
        if self.proposing.len() >= MAX_PROPOSALS_IN_FLIGHT || !self.proposing.insert(slot.clone()) {
            return;
        }
        self.queued.push_back(Command::Propose {
            slot,
            request,
            command,
            announce,
        });
    }

    fn advance(&mut self, id: &str, phase: Phase) {
        self.propose(
            vec![
                b"advance".to_vec(),
                id.as_bytes().to_vec(),
                phase.as_str().as_bytes().to_vec(),
            ],
            RegistryCommand::AdvancePhase {
                id: id.to_string(),
                from: phase,
            },
            Some(Event::PhaseTransition {
                project: id.to_string(),
                from: Some(phase),
                to: phase.next().unwrap_or(phase),
            }),
        );
    }

    fn plan(
        &mut self,
        now_ms: u64,
        project: &RunningProject<'_>,
        governors: &BTreeMap<String, NodeKey>,
    ) {
        let id = project.id;
        let phase = project.phase;
        let Some(spec) = project.spec else {
            self.propose(
                vec![b"fail".to_vec(), id.as_bytes().to_vec()],
                RegistryCommand::FailProject {
                    id: id.to_string(),
                    reason: "its spec cannot be read".into(),
                },
                None,
            );
            return;
        };
        let Some(phase_spec) = spec.phase(phase) else {
            self.advance(id, phase);
            return;
        };
        // What the states report about this project's tasks of this phase.
        let mut reports: BTreeMap<String, (String, TaskReport)> = BTreeMap::new();
        for ((_, state), progress) in self.progress.range((id.to_string(), String::new())..) {
            if progress.project != id {
                break;
            }
            for (name, (task_phase, report)) in &progress.tasks {
                if *task_phase == phase {
                    reports.insert(name.clone(), (state.clone(), report.clone()));
                }
            }
        }
        let known: BTreeSet<&str> = reports.keys().map(String::as_str).collect();
        let succeeded: BTreeSet<&str> = reports
            .iter()
            .filter(|(_, (_, report))| report.status == TaskStatus::Succeeded)
            .map(|(name, _)| name.as_str())
            .collect();
        let is_failed = |report: &TaskReport| {
            matches!(report.status, TaskStatus::Escalated | TaskStatus::Failed)
        };
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let progress = PhaseProgress {
            tasks_total: count(phase_spec.tasks.len()),
            tasks_done: count(succeeded.len()),
            tasks_failed: count(reports.values().filter(|(_, r)| is_failed(r)).count()),
        };
        if project.recorded != Some(progress) {
            let key = [
                id.as_bytes(),
                phase.as_str().as_bytes(),
                &progress.tasks_total.to_be_bytes(),
                &progress.tasks_done.to_be_bytes(),
                &progress.tasks_failed.to_be_bytes(),
            ]
            .concat();
            self.propose(
                vec![b"progress".to_vec(), key],
                RegistryCommand::SetProjectProgress {
                    id: id.to_string(),
                    phase,
                    progress,
                },
                None,
            );
        }
        let failed = reports
            .iter()
            .find(|(_, (_, report))| is_failed(report))
            .map(|(name, (state, report))| (name.clone(), state.clone(), report.clone()));
        if let Some((name, state, report)) = failed {
            let reason = report
                .reason
                .clone()
                .unwrap_or_else(|| "no reason given".into());
            match decide(&report) {
                Decision::Reassign => {
                    let key = TaskKey {
                        project: id.to_string(),
                        task: name,
                    };
                    let recently = self
                        .reopened
                        .get(&key)
                        .is_some_and(|at| now_ms.saturating_sub(*at) < ASSIGN_RESEND_MS);
                    if let Some(governor) = governors.get(&state)
                        && !recently
                    {
                        self.reopened.insert(key.clone(), now_ms);
                        self.queued.push_back(Command::Reopen {
                            governor: *governor,
                            key,
                            attempts: REOPEN_ATTEMPTS,
                            reopening: report.reopened + 1,
                        });
                    }
                }
                Decision::FailPhase => {
                    let reason = format!(
                        "phase {} failed: task {name} in {state}: {reason}",
                        phase.as_str()
                    );
                    self.propose(
                        vec![
                            b"fail".to_vec(),
                            id.as_bytes().to_vec(),
                            phase.as_str().as_bytes().to_vec(),
                        ],
                        RegistryCommand::FailProject {
                            id: id.to_string(),
                            reason: reason.chars().take(MAX_FAILURE_REASON).collect(),
                        },
                        None,
                    );
                }
            }
            return;
        }
        if succeeded.len() == phase_spec.tasks.len() {
            self.advance(id, phase);
            return;
        }
        // Ready tasks, by the state that runs them: the one they name when it has a
        // governor, else the first (by name) that has one.
        let mut by_state: BTreeMap<String, Vec<NewTask>> = BTreeMap::new();
        for task in ready_tasks(phase_spec, &known, &succeeded) {
            let state = if governors.contains_key(&task.state) {
                task.state.clone()
            } else {
                match governors.keys().next() {
                    Some(state) => state.clone(),
                    None => continue,
                }
            };
            let mut task = task.clone();
            task.state = state.clone();
            by_state.entry(state).or_default().push(NewTask {
                name: task.name.clone(),
                spec: task.encode(),
                max_attempts: task.retries.saturating_add(1).clamp(1, 16),
            });
        }
        for (state, tasks) in by_state {
            let slot = (id.to_string(), phase, state.clone());
            let recently = self
                .sent
                .get(&slot)
                .is_some_and(|at| now_ms.saturating_sub(*at) < ASSIGN_RESEND_MS);
            let Some(governor) = governors.get(&state) else {
                continue;
            };
            if recently {
                continue;
            }
            self.sent.insert(slot, now_ms);
            self.queued.push_back(Command::AssignTasks {
                governor: *governor,
                project: id.to_string(),
                phase,
                state,
                tasks,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ExecutorSpec;

    fn node(n: u8) -> NodeKey {
        NodeKey([n; 32])
    }

    fn task(name: &str, state: &str, depends_on: &[&str]) -> TaskSpec {
        TaskSpec {
            name: name.into(),
            state: state.into(),
            skill: None,
            executor: ExecutorSpec::Builtin {
                action: "noop".into(),
            },
            input: String::new(),
            depends_on: depends_on.iter().map(|d| (*d).to_string()).collect(),
            timeout_secs: 10,
            retries: 1,
            budget: 0,
        }
    }

    /// Design has `a` (technical) and `b` (financial, after `a`); testing has `t`.
    fn spec() -> ProjectSpec {
        ProjectSpec {
            name: "p".into(),
            objectives: Vec::new(),
            budget: 0,
            phases: vec![
                PhaseSpec {
                    phase: Phase::Design,
                    tasks: vec![task("a", "technical", &[]), task("b", "financial", &["a"])],
                },
                PhaseSpec {
                    phase: Phase::Testing,
                    tasks: vec![task("t", "technical", &[])],
                },
            ],
        }
    }

    fn report(status: TaskStatus, transient: bool, reopened: u32) -> TaskReport {
        TaskReport {
            status,
            attempt: 1,
            reason: (status == TaskStatus::Escalated).then(|| "lost".to_string()),
            transient,
            reopened,
        }
    }

    fn progress(state: &str, tasks: &[(&str, TaskStatus)]) -> Input<'static> {
        Input::Progress {
            state: state.into(),
            projects: vec![StateProgress {
                project: "p".into(),
                tasks: tasks
                    .iter()
                    .map(|(name, status)| {
                        (
                            (*name).to_string(),
                            (Phase::Design, report(*status, false, 0)),
                        )
                    })
                    .collect(),
            }],
        }
    }

    fn governors() -> BTreeMap<String, NodeKey> {
        BTreeMap::from([
            ("technical".to_string(), node(1)),
            ("financial".to_string(), node(2)),
        ])
    }

    fn tick(
        president: &mut President,
        now: u64,
        phase: Phase,
        recorded: Option<PhaseProgress>,
    ) -> Vec<Command> {
        let spec = spec();
        let projects = [RunningProject {
            id: "p",
            phase,
            spec: Some(&spec),
            recorded,
        }];
        let governors = governors();
        president.handle(
            now,
            Input::Tick {
                projects: &projects,
                governors: &governors,
            },
        );
        president.validate();
        president.drain().collect()
    }

    fn counts(total: u32, done: u32, failed: u32) -> Option<PhaseProgress> {
        Some(PhaseProgress {
            tasks_total: total,
            tasks_done: done,
            tasks_failed: failed,
        })
    }

    #[test]
    fn a_newcomer_goes_to_the_state_of_its_skill_else_the_smallest() {
        let states = BTreeMap::from([
            ("financial".to_string(), 3),
            ("market".to_string(), 1),
            ("technical".to_string(), 1),
        ]);
        assert_eq!(
            place(&["financial".into()], &states).as_deref(),
            Some("financial")
        );
        assert_eq!(place(&["rust".into()], &states).as_deref(), Some("market"));
        assert_eq!(place(&[], &BTreeMap::new()), None);
    }

    #[test]
    fn a_phase_is_planned_ready_tasks_first_and_resent_only_when_due() {
        let mut president = President::new();
        let commands = tick(&mut president, 0, Phase::Design, counts(2, 0, 0));
        let [
            Command::AssignTasks {
                governor,
                state,
                tasks,
                ..
            },
        ] = commands.as_slice()
        else {
            panic!("one assignment: {commands:?}")
        };
        // `b` waits for `a`.
        assert_eq!((*governor, state.as_str()), (node(1), "technical"));
        assert_eq!(
            tasks.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            vec!["a"]
        );
        assert_eq!(tasks[0].max_attempts, 2);
        // Not acknowledged yet: not resent before ASSIGN_RESEND_MS...
        assert!(tick(&mut president, 500, Phase::Design, counts(2, 0, 0)).is_empty());
        // ...but at once when the delivery failed.
        president.handle(
            600,
            Input::Assigned {
                project: "p".into(),
                phase: Phase::Design,
                state: "technical".into(),
                delivered: false,
            },
        );
        assert_eq!(
            tick(&mut president, 601, Phase::Design, counts(2, 0, 0)).len(),
            1
        );
        // `a` succeeded: `b` goes to financial, and the counts are recorded.
        president.handle(700, progress("technical", &[("a", TaskStatus::Succeeded)]));
        let commands = tick(&mut president, 700, Phase::Design, counts(2, 0, 0));
        assert!(commands.iter().any(|c| matches!(
            c,
            Command::Propose { command: RegistryCommand::SetProjectProgress { progress, .. }, .. }
                if *progress == counts(2, 1, 0).expect("as the test sets it up")
        )));
        assert!(commands.iter().any(|c| matches!(
            c,
            Command::AssignTasks { state, tasks, .. }
                if state == "financial" && tasks.len() == 1 && tasks[0].name == "b"
        )));
    }

    #[test]
    fn a_task_for_a_state_without_governor_goes_to_one_that_has_one() {
        let mut president = President::new();
        let spec = spec();
        let projects = [RunningProject {
            id: "p",
            phase: Phase::Testing,
            spec: Some(&spec),
            recorded: counts(1, 0, 0),
        }];
        let governors = BTreeMap::from([("financial".to_string(), node(2))]);
        president.handle(
            0,
            Input::Tick {
                projects: &projects,
                governors: &governors,
            },
        );
        let commands: Vec<Command> = president.drain().collect();
        let [
            Command::AssignTasks {
                governor, tasks, ..
            },
        ] = commands.as_slice()
        else {
            panic!("{commands:?}")
        };
        assert_eq!(*governor, node(2));
        let moved = TaskSpec::decode(&tasks[0].spec).expect("as the test sets it up");
        assert_eq!(moved.state, "financial");
    }

    #[test]
    fn a_phase_whose_tasks_all_succeeded_is_advanced_once_with_its_event() {
        let mut president = President::new();
        president.handle(0, progress("technical", &[("a", TaskStatus::Succeeded)]));
        president.handle(0, progress("financial", &[("b", TaskStatus::Succeeded)]));
        let commands = tick(&mut president, 10, Phase::Design, counts(2, 2, 0));
        let advance = Command::Propose {
            slot: [b"advance".as_slice(), b"p", b"design"].concat(),
            request: vec![b"advance".to_vec(), b"p".to_vec(), b"design".to_vec()],
            command: RegistryCommand::AdvancePhase {
                id: "p".into(),
                from: Phase::Design,
            },
            announce: Some(Event::PhaseTransition {
                project: "p".into(),
                from: Some(Phase::Design),
                to: Phase::Development,
            }),
        };
        assert_eq!(commands, vec![advance.clone()]);
        // Under way: not proposed again until it finishes.
        assert!(tick(&mut president, 20, Phase::Design, counts(2, 2, 0)).is_empty());
        president.handle(
            30,
            Input::Proposed {
                slot: [b"advance".as_slice(), b"p", b"design"].concat(),
            },
        );
        assert_eq!(
            tick(&mut president, 40, Phase::Design, counts(2, 2, 0)),
            vec![advance]
        );
        // A phase the spec does not have is passed through.
        let commands = tick(&mut president, 50, Phase::Feasibility, None);
        assert!(matches!(
            commands.as_slice(),
            [Command::Propose {
                command: RegistryCommand::AdvancePhase {
                    from: Phase::Feasibility,
                    ..
                },
                ..
            }]
        ));
    }

    #[test]
    fn an_escalation_is_reassigned_once_when_transient_and_fails_the_phase_otherwise() {
        let escalated = |transient: bool, reopened: u32| Input::Progress {
            state: "technical".into(),
            projects: vec![StateProgress {
                project: "p".into(),
                tasks: BTreeMap::from([(
                    "a".to_string(),
                    (
                        Phase::Design,
                        report(TaskStatus::Escalated, transient, reopened),
                    ),
                )]),
            }],
        };
        let mut president = President::new();
        president.handle(0, escalated(true, 0));
        assert_eq!(
            tick(&mut president, 0, Phase::Design, counts(2, 0, 1)),
            vec![Command::Reopen {
                governor: node(1),
                key: TaskKey {
                    project: "p".into(),
                    task: "a".into()
                },
                attempts: REOPEN_ATTEMPTS,
                reopening: 1,
            }]
        );
        // Reopened already once: the phase fails, with the task's reason.
        president.handle(10, escalated(true, MAX_REOPENINGS));
        let commands = tick(&mut president, 10, Phase::Design, counts(2, 0, 1));
        let [
            Command::Propose {
                command: RegistryCommand::FailProject { reason, .. },
                ..
            },
        ] = commands.as_slice()
        else {
            panic!("{commands:?}")
        };
        assert_eq!(reason, "phase design failed: task a in technical: lost");
        // A failure on the task's merits fails it at once.
        let mut president = President::new();
        president.handle(0, escalated(false, 0));
        assert!(matches!(
            tick(&mut president, 0, Phase::Design, counts(2, 0, 1)).as_slice(),
            [Command::Propose {
                command: RegistryCommand::FailProject { .. },
                ..
            }]
        ));
        assert_eq!(
            decide(&report(TaskStatus::Escalated, true, 0)),
            Decision::Reassign
        );
    }

    #[test]
    fn reports_of_projects_no_longer_running_are_dropped() {
        let mut president = President::new();
        president.handle(0, progress("technical", &[("a", TaskStatus::Succeeded)]));
        let governors = governors();
        president.handle(
            1,
            Input::Tick {
                projects: &[],
                governors: &governors,
            },
        );
        president.validate();
        assert!(president.progress.is_empty() && president.sent.is_empty());
    }

    fn ids(ids: &[u64]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_dead_voter_is_replaced_by_a_live_member_before_anything_else() {
        let voters = ids(&[1, 2, 3]);
        let learners = ids(&[]);
        let members: BTreeMap<NodeId, Option<String>> =
            (1..=5).map(|id| (id, Some("s".to_string()))).collect();
        let now = 100_000;
        // 2 was last heard long ago; 4 and 5 are alive.
        let mut last_seen: BTreeMap<NodeId, u64> = (1..=5).map(|id| (id, now)).collect();
        last_seen.insert(2, now - VOTER_DEAD_TIMEOUT_MS - 1);
        let view = FederalView {
            me: 1,
            voters: &voters,
            learners: &learners,
            members: &members,
            last_seen: &last_seen,
            changing: false,
            wanted: 5,
            learner_gap_passed: true,
            now_ms: now,
        };
        assert_eq!(
            plan_federal(&view),
            vec![FederalChange::ReplaceVoter { dead: 2, with: 4 }]
        );
        // While a change is under way, nothing.
        assert!(
            plan_federal(&FederalView {
                changing: true,
                ..view.clone()
            })
            .is_empty()
        );
        // All alive: 4 and 5 join as learners, and one of them as a voter.
        let mut all_alive = last_seen.clone();
        all_alive.insert(2, now);
        let view = FederalView {
            last_seen: &all_alive,
            ..view
        };
        assert_eq!(
            plan_federal(&view),
            vec![
                FederalChange::AddLearners(ids(&[4, 5])),
                FederalChange::AddVoter(4)
            ]
        );
    }

    #[test]
    fn a_dead_relay_is_taken_out() {
        let voters = ids(&[1]);
        let learners = ids(&[7]);
        let members: BTreeMap<NodeId, Option<String>> = [(1, None), (7, None)].into();
        let last_seen = BTreeMap::from([(1, 50_000)]);
        let view = FederalView {
            me: 1,
            voters: &voters,
            learners: &learners,
            members: &members,
            last_seen: &last_seen,
            changing: false,
            wanted: 2,
            learner_gap_passed: true,
            now_ms: 50_000,
        };
        assert_eq!(plan_federal(&view), vec![FederalChange::RemoveRelay(7)]);
    }
}
