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
//!                                     ──► Read         (the gate's review task succeeded)
//!                                     ──► Propose AwaitApproval (a human gate)
//!   Assigned(project, phase, state, ok) / Proposed(slot, ok)   completions
//!   Read(project, phase, review round, output)                the review's text
//! ```
//!
//! A phase's gates come after its tasks. An llm gate is a review task
//! (`gate-review-<phase>-<round>`, an llm task of the reviewing state reading the
//! phase's outputs as context); its verdict is committed as a [`Review`], and a
//! rejection sends the tasks it names back as revisions (`<task>--r<round>`, the
//! original task with the feedback and its earlier output added), until a review
//! approves or the rounds run out and the phase fails with the last feedback. Later
//! tasks read the newest revision wherever they name the original. A human gate then
//! makes the project await a person's decision.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use aamas_consensus::NodeId;
use aamas_consensus::ledger::{TaskKey, TaskStatus};
use aamas_consensus::registry::{PhaseGate, PhaseProgress, RegistryCommand, Review};
use aamas_protocol::{Event, NodeKey, Phase};

use crate::governance::policy::{Escalation, Outcome, Point, Policy};
use crate::roles::governor::{NewTask, StateProgress, TaskReport};
use crate::spec::{ExecutorSpec, GateSpec, PhaseSpec, PlanSpec, ProjectSpec, TaskSpec};

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
/// How many more attempts a reopened task gets by default (the escalation policy's
/// `reopen_attempts`).
pub const REOPEN_ATTEMPTS: u32 = Escalation::DEFAULT.reopen_attempts;
/// How often the president reopens one task by default (the escalation policy's
/// `reopenings`).
pub const MAX_REOPENINGS: u32 = Escalation::DEFAULT.reopenings;
/// Proposals under way at once.
pub const MAX_PROPOSALS_IN_FLIGHT: usize = 1_024;
/// The longest failure reason a project keeps.
pub const MAX_FAILURE_REASON: usize = 900;
/// Completion length of a review task.
pub const REVIEW_MAX_TOKENS: u32 = 1_024;
/// How long one attempt of a review task may take, in seconds.
pub const REVIEW_TIMEOUT_SECS: u64 = 300;
/// How often the president asks again for a review's text it has not got.
pub const REVIEW_READ_RETRY_MS: u64 = 2_000;
/// Completion length of a planning task.
pub const PLAN_MAX_TOKENS: u32 = 4_096;
/// The state whose llm worker plans a phase when the spec names none.
pub const DEFAULT_PLANNER: &str = "technical";

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
/// failure's type) is reassigned, at most the escalation policy's `reopenings` times
/// ([`MAX_REOPENINGS`] by default); a task that failed on its merits (a non-zero exit, a
/// refused request, a bad reply) fails the phase, whatever words its output or reason
/// holds.
pub fn decide(report: &TaskReport, ladder: &Escalation) -> Decision {
    if report.transient && report.reopened < ladder.reopenings {
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
    /// Add voters, in one change (the group has fewer than [`FEDERAL_VOTERS`]): two
    /// from an odd count, so that the group never rests at two.
    AddVoters(BTreeSet<NodeId>),
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
    let wanted_voters = FEDERAL_VOTERS.min(view.members.len());
    if view.voters.len() < wanted_voters {
        // Two at a time from an odd count (1 to 3, 3 to 5): a group of two voters, or a
        // change whose old or new half has two, cannot elect once either is lost, and the
        // leader is the one most likely to be.
        let count = if view.voters.len() % 2 == 1 && wanted_voters - view.voters.len() >= 2 {
            2
        } else {
            1
        };
        // Spread voters over states: each next one from the state with fewest voters.
        let mut per_state: BTreeMap<Option<&str>, usize> = BTreeMap::new();
        for voter in view.voters {
            let state = view.members.get(voter).and_then(|s| s.as_deref());
            *per_state.entry(state).or_default() += 1;
        }
        let mut added = BTreeSet::new();
        for _ in 0..count {
            let Some((id, state)) = view
                .members
                .iter()
                .filter(|(id, _)| !view.voters.contains(id) && !added.contains(*id) && alive(**id))
                .min_by_key(|(id, state)| {
                    let state = state.as_deref();
                    (per_state.get(&state).copied().unwrap_or(0), **id)
                })
            else {
                break;
            };
            *per_state.entry(state.as_deref()).or_default() += 1;
            added.insert(*id);
        }
        // One live candidate where two were wanted still adds it: the log is then on two
        // disks, and the next round makes it three.
        if !added.is_empty() {
            changes.push(FederalChange::AddVoters(added));
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
    /// What the gates of its phases decided so far.
    pub gates: &'a BTreeMap<Phase, PhaseGate>,
    /// The member it was submitted through (what the policy's `owner` matches).
    pub owner: NodeKey,
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
    /// A [`Command::Read`] finished.
    Read {
        /// The project.
        project: String,
        /// The phase.
        phase: Phase,
        /// What was read.
        reading: Reading,
        /// The task's output, or `None` when it could not be read yet (the driver logs
        /// why).
        output: Option<String>,
    },
}

/// Which task's output a [`Command::Read`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// A planning task's reply, of this planning attempt.
    Plan {
        /// The planning attempt.
        attempt: u32,
    },
    /// A review task's verdict, of this review round.
    Review {
        /// The round.
        round: u32,
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
    /// Read the output of a phase's planning or review task; feed back [`Input::Read`].
    Read {
        /// The project.
        project: String,
        /// The phase.
        phase: Phase,
        /// Which planning attempt or review round.
        reading: Reading,
        /// The task.
        task: String,
    },
    /// Count a policy decision the core took: each rule that fired and how it acted
    /// (none: allowed).
    Judged {
        /// Where it was decided.
        at: Point,
        /// The rules that fired, by name, and how each acted.
        fired: Vec<(String, Outcome)>,
    },
}

/// The president's state: soft, rebuilt from the governors' next reports.
#[derive(Debug, Default)]
pub struct President {
    /// The time of the input being handled (stamped on the commands that end phases).
    now_ms: u64,
    /// The latest report of each (project, state).
    progress: BTreeMap<(String, String), StateProgress>,
    /// When tasks were last sent to each (project, phase, state).
    sent: BTreeMap<(String, Phase, String), u64>,
    /// When each escalated task was last reopened.
    reopened: BTreeMap<TaskKey, u64>,
    /// The escalation policy's ladder in force.
    ladder: Escalation,
    /// The policy in force, whose rules judge plans ([`President::set_policy`]).
    policy: Option<Arc<Policy>>,
    /// Reviews being read: when the read was asked for, and the names of the phase's
    /// tasks (what a review may send back).
    reading: BTreeMap<(String, Phase, u32), (u64, Vec<String>)>,
    /// Plans being read (when the read was asked for) and plans read (the planner's
    /// reply, checked at the next tick, which has the spec), by planning attempt.
    planning: BTreeMap<(String, Phase, u32), (u64, Option<String>)>,
    /// Proposals under way.
    proposing: BTreeSet<Vec<u8>>,
    /// Those of them that advance a phase.
    advancing: BTreeSet<Vec<u8>>,
    /// The progress write under way for each (project, phase), by slot: a newer count
    /// waits for it, so two writes never commit out of order and leave an older count.
    recording: BTreeMap<(String, Phase), Vec<u8>>,
    /// Whether something happened that the next tick acts on at once (see
    /// [`President::take_tick_wanted`]).
    tick_wanted: bool,
    queued: VecDeque<Command>,
}

impl President {
    /// A president that knows nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Open (pending or assigned) tasks by state, from the governors' latest reports.
    pub fn open_tasks_by_state(&self) -> BTreeMap<String, u64> {
        let mut open: BTreeMap<String, u64> = BTreeMap::new();
        for ((_, state), report) in &self.progress {
            let count = report
                .tasks
                .values()
                .filter(|(_, task)| {
                    matches!(
                        task.status,
                        aamas_consensus::ledger::TaskStatus::Pending
                            | aamas_consensus::ledger::TaskStatus::Assigned
                    )
                })
                .count();
            *open.entry(state.clone()).or_default() += count as u64;
        }
        open
    }

    /// Puts `policy` in force: its ladder, and its rules for the plans checked from now
    /// on.
    pub fn set_policy(&mut self, policy: Arc<Policy>) {
        self.ladder = policy.escalation;
        self.policy = Some(policy);
    }

    /// Takes one input at `now_ms`.
    pub fn handle(&mut self, now_ms: u64, input: Input<'_>) {
        self.now_ms = now_ms;
        match input {
            Input::Progress { state, projects } => {
                for progress in projects {
                    // A state that has just finished everything it holds of a project
                    // may have finished its phase.
                    let finished = !progress.tasks.is_empty()
                        && progress.tasks.values().all(|(_, report)| {
                            matches!(
                                report.status,
                                TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Escalated
                            )
                        });
                    let key = (progress.project.clone(), state.clone());
                    if finished && self.progress.get(&key) != Some(&progress) {
                        self.tick_wanted = true;
                    }
                    self.progress.insert(key, progress);
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
                self.recording
                    .retain(|(project, phase), _| current.contains(&(project.as_str(), *phase)));
                self.reopened
                    .retain(|key, _| running.contains(key.project.as_str()));
                self.reading
                    .retain(|(project, phase, _), _| current.contains(&(project.as_str(), *phase)));
                self.planning
                    .retain(|(project, phase, _), _| current.contains(&(project.as_str(), *phase)));
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
                self.recording.retain(|_, recording| *recording != slot);
                // The next phase (often one with nothing to do) starts at once.
                if self.advancing.remove(&slot) {
                    self.tick_wanted = true;
                }
            }
            Input::Read {
                project,
                phase,
                reading: Reading::Plan { attempt },
                output,
            } => {
                // Kept for the next tick; an unreadable output is asked for again after
                // REVIEW_READ_RETRY_MS.
                if let (Some(text), Some((_, read))) =
                    (output, self.planning.get_mut(&(project, phase, attempt)))
                {
                    *read = Some(text);
                }
            }
            Input::Read {
                project,
                phase,
                reading: Reading::Review { round },
                output,
            } => {
                let slot = (project, phase, round);
                let Some(text) = output else {
                    return; // asked again after REVIEW_READ_RETRY_MS
                };
                let Some((_, tasks)) = self.reading.get(&slot) else {
                    return;
                };
                let review = parse_review(&text, tasks);
                let (project, phase, round) = slot;
                let mut request = phase_request(b"review", &project, phase);
                request.push(round.to_be_bytes().to_vec());
                self.propose(
                    request,
                    RegistryCommand::RecordReview {
                        id: project,
                        phase,
                        round,
                        review,
                    },
                    None,
                );
            }
        }
    }

    /// The commands queued since the last drain, oldest first.
    pub fn drain(&mut self) -> impl Iterator<Item = Command> + '_ {
        self.queued.drain(..)
    }

    /// Whether the next [`Input::Tick`] should come now rather than after the driver's
    /// least gap between rounds, and clears the wish: a phase advance ended (the next
    /// phase, often empty, can start), or a state reported all its tasks of a project
    /// finished for the first time (the phase may be done). At most a few per phase of
    /// each project, so it never floods the driver.
    pub fn take_tick_wanted(&mut self) -> bool {
        std::mem::take(&mut self.tick_wanted)
    }

    /// Checks the invariants; only a bug breaks them.
    pub fn validate(&self) {
        assert!(
            self.proposing.len() <= MAX_PROPOSALS_IN_FLIGHT,
            "proposals over their bound"
        );
        assert!(
            self.advancing.is_subset(&self.proposing),
            "an advance followed that is not under way"
        );
        assert!(
            self.recording
                .values()
                .all(|slot| self.proposing.contains(slot)),
            "a progress write followed that is not under way"
        );
        for ((project, state), progress) in &self.progress {
            assert_eq!(
                &progress.project, project,
                "{state}: progress filed under another project"
            );
        }
    }

    /// Queues a proposal unless its slot is under way or too many are; the slot when
    /// queued.
    fn propose(
        &mut self,
        request: Vec<Vec<u8>>,
        command: RegistryCommand,
        announce: Option<Event>,
    ) -> Option<Vec<u8>> {
        let slot = request.concat();
        if self.proposing.len() >= MAX_PROPOSALS_IN_FLIGHT || !self.proposing.insert(slot.clone()) {
            return None;
        }
        self.queued.push_back(Command::Propose {
            slot: slot.clone(),
            request,
            command,
            announce,
        });
        Some(slot)
    }

    fn advance(&mut self, id: &str, phase: Phase) {
        let queued = self.propose(
            phase_request(b"advance", id, phase),
            RegistryCommand::AdvancePhase {
                id: id.to_string(),
                from: phase,
                now_ms: self.now_ms,
            },
            Some(Event::PhaseTransition {
                project: id.to_string(),
                from: Some(phase),
                to: phase.next().unwrap_or(phase),
            }),
        );
        self.advancing.extend(queued);
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
                    now_ms,
                },
                None,
            );
            return;
        };
        // Phases planned so far hold their planned tasks, as if written.
        let with_plans;
        let spec = if spec.phases.iter().any(|p| p.plan.is_some()) {
            with_plans = spec.with_plans(
                project
                    .gates
                    .iter()
                    .filter_map(|(phase, gate)| Some((*phase, gate.plan.as_deref()?))),
            );
            &with_plans
        } else {
            spec
        };
        let Some(phase_spec) = spec.phase(phase) else {
            self.advance(id, phase);
            return;
        };
        if let Some(plan) = &phase_spec.plan {
            self.planning(now_ms, spec, project, phase_spec, plan, governors);
            return;
        }
        let reviews: &[Review] = project
            .gates
            .get(&phase)
            .map_or(&[], |gate| gate.reviews.as_slice());
        // The phase's tasks as they run now: revisions in place of what reviews sent
        // back, each reading the newest revision of what it names.
        let newest = revised_names(spec, project.gates);
        let effective = PhaseSpec {
            phase,
            tasks: phase_spec
                .tasks
                .iter()
                .map(|task| effective_task(spec, task, &newest, reviews))
                .collect(),
            acceptance: Vec::new(),
            gate: GateSpec::default(),
            plan: None,
        };
        let reports = self.reports(id, phase);
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
        let done = effective
            .tasks
            .iter()
            .filter(|task| succeeded.contains(task.name.as_str()))
            .count();
        let progress = PhaseProgress {
            tasks_total: count(effective.tasks.len()),
            tasks_done: count(done),
            tasks_failed: count(reports.values().filter(|(_, r)| is_failed(r)).count()),
        };
        // What the Registry gets: counts stay consistent even while a failed review task
        // is counted.
        let written = PhaseProgress {
            tasks_failed: progress
                .tasks_failed
                .min(progress.tasks_total.saturating_sub(progress.tasks_done)),
            ..progress
        };
        // An earlier count of this phase still being written holds the newer one back
        // (it could land after it), and the phase ends only once its last count is
        // proposed: a phase that has ended is no longer looked at.
        let count_waits = project.recorded != Some(progress)
            && self.recording.contains_key(&(id.to_string(), phase));
        if project.recorded != Some(progress) && !count_waits {
            let key = [
                id.as_bytes(),
                phase.as_str().as_bytes(),
                &progress.tasks_total.to_be_bytes(),
                &progress.tasks_done.to_be_bytes(),
                &progress.tasks_failed.to_be_bytes(),
            ]
            .concat();
            let queued = self.propose(
                vec![b"progress".to_vec(), key],
                RegistryCommand::SetProjectProgress {
                    id: id.to_string(),
                    phase,
                    progress: written,
                },
                None,
            );
            if let Some(slot) = queued {
                self.recording.insert((id.to_string(), phase), slot);
            }
        }
        let failed = reports
            .iter()
            .find(|(_, (_, report))| is_failed(report))
            .map(|(name, (state, report))| (name.clone(), state.clone(), report.clone()));
        if let Some((name, state, report)) = failed {
            // The escalation may fail the project. Proposed together, the two writes
            // could commit in either order, and a reader that saw the project failed
            // could still read the older count: it waits until the last count is
            // committed.
            if project.recorded == Some(written) {
                self.escalated(now_ms, id, phase, name, state, &report, governors);
            }
            return;
        }
        if done == effective.tasks.len() {
            if count_waits {
                return;
            }
            if phase_spec.gate.llm
                && !self.llm_gate(now_ms, spec, project, &effective, &reports, governors)
            {
                return;
            }
            if phase_spec.gate.human {
                // As for an escalation: proposed with the last count, the two could
                // commit in either order, and a project awaiting approval would show
                // its phase unfinished. It waits until the count is committed.
                if project.recorded != Some(written) {
                    return;
                }
                self.propose(
                    phase_request(b"await", id, phase),
                    RegistryCommand::AwaitApproval {
                        id: id.to_string(),
                        phase,
                    },
                    None,
                );
                return;
            }
            self.advance(id, phase);
            return;
        }
        let ready: Vec<TaskSpec> = ready_tasks(&effective, &known, &succeeded)
            .into_iter()
            .cloned()
            .collect();
        self.assign(now_ms, id, phase, ready, governors);
    }

    /// What the states report about `id`'s tasks of `phase`: each task's state and
    /// report, by name.
    fn reports(&self, id: &str, phase: Phase) -> BTreeMap<String, (String, TaskReport)> {
        let mut reports = BTreeMap::new();
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
        reports
    }

    /// A phase an llm plans, not planned yet: runs the next attempt's planning task,
    /// reads its reply, and commits the plan if it passes [`crate::spec::check_plan`]
    /// or records why not (the next attempt's brief names it); once the attempts are
    /// spent, fails the phase with the last reason.
    fn planning(
        &mut self,
        now_ms: u64,
        spec: &ProjectSpec,
        project: &RunningProject<'_>,
        phase_spec: &PhaseSpec,
        plan: &PlanSpec,
        governors: &BTreeMap<String, NodeKey>,
    ) {
        let (id, phase) = (project.id, project.phase);
        let gate = project.gates.get(&phase);
        if gate.is_some_and(|gate| gate.plan.is_some()) {
            // `with_plans` left it out: it does not decode here.
            let reason = format!(
                "phase {}: its committed plan does not decode",
                phase.as_str()
            );
            self.fail(id, phase, &reason);
            return;
        }
        let refusals = gate.map_or(&[][..], |gate| gate.plan_refusals.as_slice());
        if refusals.len() >= plan.attempts as usize {
            let last = refusals.last().map_or("", String::as_str);
            let reason = format!(
                "phase {} could not be planned: {} plan{} refused, the last because {last}",
                phase.as_str(),
                refusals.len(),
                if refusals.len() == 1 { "" } else { "s" }
            );
            // Escalated from the president (level 2): a person has to change the spec or
            // the model.
            let escalation = Event::ErrorEscalation {
                project: Some(id.to_string()),
                task: Some(planning_task_name(phase, count_u32(refusals.len()))),
                error: reason.chars().take(MAX_FAILURE_REASON).collect(),
                level: 2,
            };
            self.fail_announcing(id, phase, &reason, Some(escalation));
            return;
        }
        let attempt = count_u32(refusals.len() + 1);
        let slot = (id.to_string(), phase, attempt);
        let request = |what: &[u8]| {
            let mut request = phase_request(what, id, phase);
            request.push(attempt.to_be_bytes().to_vec());
            request
        };
        if let Some((_, Some(reply))) = self.planning.get(&slot) {
            let mut judged = None;
            let checked = crate::spec::parse_plan(reply).and_then(|tasks| {
                crate::spec::check_plan(spec, phase, &tasks)?;
                // A plan that keeps the spec's rules is judged by the policy's, as the
                // written tasks were at submission.
                if let Some(policy) = &self.policy {
                    let owner = project.owner.peer_id();
                    let facts = crate::governance::policy::plan_facts(phase, &tasks, &owner);
                    let decision = policy.decide(Point::Planning, &facts, None);
                    let fired = decision
                        .fired
                        .iter()
                        .map(|(rule, outcome)| (rule.name.clone(), *outcome))
                        .collect();
                    judged = Some(fired);
                    if let Some(rule) = decision.denied_by() {
                        return Err(crate::spec::PlanError::Policy(rule.refusal()));
                    }
                }
                let encoded = crate::spec::encode_plan(&tasks);
                if encoded.len() > crate::spec::MAX_PLAN_BYTES {
                    return Err(crate::spec::PlanError::TooLong(encoded.len()));
                }
                Ok(encoded)
            });
            let command = match checked {
                Ok(encoded) => RegistryCommand::SetPlan {
                    id: id.to_string(),
                    phase,
                    plan: encoded,
                },
                Err(reason) => RegistryCommand::RefusePlan {
                    id: id.to_string(),
                    phase,
                    attempt,
                    reason: cut(
                        &reason.to_string(),
                        aamas_consensus::registry::MAX_FEEDBACK_BYTES,
                    ),
                },
            };
            // Counted once: while the proposal is under way the same reply is not
            // proposed (nor judged) again.
            if self.propose(request(b"plan"), command, None).is_some()
                && let Some(fired) = judged
            {
                self.queued.push_back(Command::Judged {
                    at: Point::Planning,
                    fired,
                });
            }
            return;
        }
        let task = planning_task(spec, phase_spec, plan, attempt, refusals.last());
        let reports = self.reports(id, phase);
        match reports.get(&task.name) {
            None => self.assign(now_ms, id, phase, vec![task], governors),
            Some((_, report)) if report.status == TaskStatus::Succeeded => {
                let recently = self
                    .planning
                    .get(&slot)
                    .is_some_and(|(at, _)| now_ms.saturating_sub(*at) < REVIEW_READ_RETRY_MS);
                if !recently {
                    self.planning.insert(slot, (now_ms, None));
                    self.queued.push_back(Command::Read {
                        project: id.to_string(),
                        phase,
                        reading: Reading::Plan { attempt },
                        task: task.name,
                    });
                }
            }
            Some((_, report))
                if matches!(report.status, TaskStatus::Escalated | TaskStatus::Failed) =>
            {
                let reason = format!(
                    "the planning task failed: {}",
                    report.reason.as_deref().unwrap_or("no reason given")
                );
                let command = RegistryCommand::RefusePlan {
                    id: id.to_string(),
                    phase,
                    attempt,
                    reason: cut(
                        &reason.to_string(),
                        aamas_consensus::registry::MAX_FEEDBACK_BYTES,
                    ),
                };
                self.propose(request(b"plan"), command, None);
            }
            Some(_) => {} // under way
        }
    }

    /// What to do about a task of the phase that failed or was escalated.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site; the arguments are what the decision reads"
    )]
    fn escalated(
        &mut self,
        now_ms: u64,
        id: &str,
        phase: Phase,
        name: String,
        state: String,
        report: &TaskReport,
        governors: &BTreeMap<String, NodeKey>,
    ) {
        let reason = report
            .reason
            .clone()
            .unwrap_or_else(|| "no reason given".into());
        match decide(report, &self.ladder) {
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
                        attempts: self.ladder.reopen_attempts,
                        reopening: report.reopened + 1,
                    });
                }
            }
            Decision::FailPhase => {
                let reason = format!(
                    "phase {} failed: task {name} in {state}: {reason}",
                    phase.as_str()
                );
                self.fail(id, phase, &reason);
            }
        }
    }

    fn fail(&mut self, id: &str, phase: Phase, reason: &str) {
        self.fail_announcing(id, phase, reason, None);
    }

    /// Fails the project, and publishes `announce` once that is committed.
    fn fail_announcing(&mut self, id: &str, phase: Phase, reason: &str, announce: Option<Event>) {
        self.propose(
            phase_request(b"fail", id, phase),
            RegistryCommand::FailProject {
                id: id.to_string(),
                reason: reason.chars().take(MAX_FAILURE_REASON).collect(),
                now_ms: self.now_ms,
            },
            announce,
        );
    }

    /// The llm gate of a phase whose tasks all succeeded: whether a review approved
    /// them. Until one has, runs the next round's review task and reads its verdict,
    /// or fails the phase once the rounds are spent.
    fn llm_gate(
        &mut self,
        now_ms: u64,
        spec: &ProjectSpec,
        project: &RunningProject<'_>,
        effective: &PhaseSpec,
        reports: &BTreeMap<String, (String, TaskReport)>,
        governors: &BTreeMap<String, NodeKey>,
    ) -> bool {
        let (id, phase) = (project.id, project.phase);
        let Some(phase_spec) = spec.phase(phase) else {
            return true;
        };
        let reviews: &[Review] = project
            .gates
            .get(&phase)
            .map_or(&[], |gate| gate.reviews.as_slice());
        if reviews.last().is_some_and(|review| review.approved) {
            return true;
        }
        let rounds = reviews.len();
        if rounds >= phase_spec.gate.review_rounds as usize {
            let feedback = reviews.last().map_or("", |review| review.feedback.as_str());
            let reason = format!(
                "phase {} failed its review after {rounds} round{}: {feedback}",
                phase.as_str(),
                if rounds == 1 { "" } else { "s" }
            );
            self.fail(id, phase, &reason);
            return false;
        }
        let round = count_u32(rounds + 1);
        let task = review_task(spec, phase_spec, effective, round);
        match reports.get(&task.name) {
            None => self.assign(now_ms, id, phase, vec![task], governors),
            Some((_, report)) if report.status == TaskStatus::Succeeded => {
                let slot = (id.to_string(), phase, round);
                let recently = self
                    .reading
                    .get(&slot)
                    .is_some_and(|(at, _)| now_ms.saturating_sub(*at) < REVIEW_READ_RETRY_MS);
                if !recently {
                    let names = phase_spec.tasks.iter().map(|t| t.name.clone()).collect();
                    self.reading.insert(slot, (now_ms, names));
                    self.queued.push_back(Command::Read {
                        project: id.to_string(),
                        phase,
                        reading: Reading::Review { round },
                        task: task.name,
                    });
                }
            }
            Some(_) => {} // under way; a failure is handled with the phase's others
        }
        false
    }

    /// Hands `tasks` to the governors of their states: the one they name when it has a
    /// governor, else the first (by name) that has one; at most once per
    /// [`ASSIGN_RESEND_MS`] for each (project, phase, state).
    fn assign(
        &mut self,
        now_ms: u64,
        id: &str,
        phase: Phase,
        tasks: Vec<TaskSpec>,
        governors: &BTreeMap<String, NodeKey>,
    ) {
        let mut by_state: BTreeMap<String, Vec<NewTask>> = BTreeMap::new();
        for mut task in tasks {
            let state = if governors.contains_key(&task.state) {
                task.state.clone()
            } else {
                match governors.keys().next() {
                    Some(state) => state.clone(),
                    None => continue,
                }
            };
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

/// The parts of the request id of a proposal about `id`'s `phase`.
fn phase_request(what: &[u8], id: &str, phase: Phase) -> Vec<Vec<u8>> {
    vec![
        what.to_vec(),
        id.as_bytes().to_vec(),
        phase.as_str().as_bytes().to_vec(),
    ]
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn cut(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// The name of a phase's planning task of `attempt`.
pub fn planning_task_name(phase: Phase, attempt: u32) -> String {
    format!("gate-plan-{}-{attempt}", phase.as_str())
}

/// The planning task of `attempt` for a phase an llm plans: an llm task of the planner
/// state that reads the previous phase's outputs as context and answers with the
/// phase's tasks in JSON; after a refusal, its brief says why.
pub fn planning_task(
    spec: &ProjectSpec,
    phase: &PhaseSpec,
    plan: &PlanSpec,
    attempt: u32,
    refused: Option<&String>,
) -> TaskSpec {
    let earlier: Vec<&TaskSpec> = spec
        .phases
        .iter()
        .filter(|p| p.phase < phase.phase)
        .flat_map(|p| p.tasks.iter())
        .collect();
    let taken: Vec<&str> = earlier.iter().map(|task| task.name.as_str()).collect();
    let context: Vec<String> = spec
        .phases
        .iter()
        .rfind(|p| p.phase < phase.phase)
        .map(|previous| {
            previous
                .tasks
                .iter()
                .take(crate::spec::MAX_CONTEXT_TASKS)
                .map(|task| task.name.clone())
                .collect()
        })
        .unwrap_or_default();
    let mut states: Vec<&str> = ["technical", "financial", "market", "operations"]
        .into_iter()
        .chain(earlier.iter().map(|task| task.state.as_str()))
        .collect();
    states.sort_unstable();
    states.dedup();
    let numbered = |items: &[String]| -> String {
        items
            .iter()
            .enumerate()
            .map(|(k, item)| format!("{}. {item}\n", k + 1))
            .collect()
    };
    let executors = if plan.allow_shell {
        "\"llm\" (a model writes the output from \"input\"), or \"shell\" (\"command\" runs \
         under sh -c)"
    } else {
        "\"llm\" (a model writes the output from \"input\")"
    };
    let mut input = format!(
        "Project: {}\nProject objectives:\n{}\nPhase to plan: {} (attempt {attempt} of {})\n\
         Phase objectives:\n{}\n\
         Plan the tasks of this phase: at most {} tasks, each done by one worker of one \
         state. Rules:\n\
         - name: unique, 1 to 64 characters of a-z, 0-9, - and _, not starting with \
         \"gate-\", and none of: {}\n\
         - state: one of {}\n\
         - executor: {}\n\
         - depends_on: names of tasks of this plan that must finish first (no cycles)\n\
         - context: names of tasks whose outputs the worker reads: tasks it depends on, \
         or tasks of earlier phases\n\
         - input: what the worker must produce; it may quote an output with \
         {{{{ outputs.<task> }}}} under the same rule as context\n\n\
         Reply with one JSON object and nothing else:\n\
         {{\"tasks\": [{{\"name\": \"...\", \"state\": \"...\", \"executor\": \"llm\", \
         \"input\": \"...\", \"depends_on\": [], \"context\": []}}]}}\n",
        spec.name,
        numbered(&spec.objectives),
        phase.phase.as_str(),
        plan.attempts,
        numbered(&plan.objectives),
        plan.max_tasks,
        if taken.is_empty() {
            "(none yet)".to_owned()
        } else {
            taken
                .iter()
                .take(64)
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        },
        states.join(", "),
        executors,
    );
    if let Some(reason) = refused {
        input.push_str(&format!(
            "\nYour previous plan was refused: {reason}\nFix that and plan again.\n"
        ));
    }
    TaskSpec {
        name: planning_task_name(phase.phase, attempt),
        state: plan
            .planner
            .clone()
            .unwrap_or_else(|| DEFAULT_PLANNER.to_owned()),
        skill: None,
        executor: ExecutorSpec::Llm {
            system: Some(format!(
                "You plan the {} phase of a software project for an organisation of AI \
                 agents (a president, governors of states, mayors and workers). You split \
                 the phase's objectives into a few well-scoped tasks and answer only with \
                 the JSON asked for.",
                phase.phase.as_str()
            )),
            max_tokens: PLAN_MAX_TOKENS,
            context,
        },
        input,
        depends_on: Vec::new(),
        timeout_secs: REVIEW_TIMEOUT_SECS,
        retries: crate::spec::DEFAULT_RETRIES,
        budget: 0,
    }
}

fn count_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The name of a phase's review task of `round`.
pub fn review_task_name(phase: Phase, round: u32) -> String {
    format!("gate-review-{}-{round}", phase.as_str())
}

/// The name of the revision of `task` that review round `round - 1` asked for.
pub fn revision_name(task: &str, round: u32) -> String {
    format!("{task}--r{round}")
}

/// Each task a review sent back, by its name in the spec, with the name of its newest
/// revision: a rejection in round `k` names revisions `--r{k+1}`.
pub fn revised_names(
    spec: &ProjectSpec,
    gates: &BTreeMap<Phase, PhaseGate>,
) -> BTreeMap<String, String> {
    let mut newest = BTreeMap::new();
    for (phase, gate) in gates {
        let Some(phase_spec) = spec.phase(*phase) else {
            continue;
        };
        for (k, review) in gate.reviews.iter().enumerate() {
            if review.approved {
                continue;
            }
            for name in &review.reopen {
                if phase_spec.tasks.iter().any(|task| &task.name == name) {
                    newest.insert(name.clone(), revision_name(name, count_u32(k + 2)));
                }
            }
        }
    }
    newest
}

/// `input` with each `{{ outputs.NAME }}` naming the newest revision of NAME.
fn renamed_refs(input: &str, newest: &BTreeMap<String, String>) -> String {
    crate::spec::fill_outputs(input, |name| {
        let name = newest.get(name).map_or(name, String::as_str);
        Ok::<_, std::convert::Infallible>(format!("{{{{ outputs.{name} }}}}"))
    })
    .unwrap_or_else(|never| match never {})
}

/// A task of the spec as it runs now: reading the newest revisions of what it names,
/// with its role prompt resolved (an llm task), and, when a review sent it back, as
/// its newest revision: the feedback and its earlier output added to its input, its
/// dependencies (all succeeded) dropped.
pub fn effective_task(
    spec: &ProjectSpec,
    task: &TaskSpec,
    newest: &BTreeMap<String, String>,
    reviews: &[Review],
) -> TaskSpec {
    let system = spec.system_prompt(task);
    let mut effective = task.clone();
    effective.input = renamed_refs(&task.input, newest);
    if let ExecutorSpec::Llm {
        system: prompt,
        context,
        ..
    } = &mut effective.executor
    {
        *prompt = system;
        for name in context.iter_mut() {
            if let Some(revision) = newest.get(name.as_str()) {
                name.clone_from(revision);
            }
        }
    }
    // The rounds of this phase that sent the task back, oldest first.
    let sent_back: Vec<(usize, &Review)> = reviews
        .iter()
        .enumerate()
        .filter(|(_, review)| !review.approved && review.reopen.contains(&task.name))
        .collect();
    if let Some((k, review)) = sent_back.last() {
        let previous = match sent_back.len() {
            1 => task.name.clone(),
            n => revision_name(&task.name, count_u32(sent_back[n - 2].0 + 2)),
        };
        effective.name = revision_name(&task.name, count_u32(k + 2));
        effective.depends_on.clear();
        effective.input = format!(
            "{}\n\nA reviewer sent your earlier output of this task back with this \
             feedback:\n{}\n\nYour earlier output:\n{{{{ outputs.{previous} }}}}\n",
            effective.input, review.feedback
        );
    }
    effective
}

/// The review task of `round` of a phase's llm gate: an llm task of the reviewing
/// state that reads the phase's outputs as context and answers with a verdict in JSON.
pub fn review_task(
    spec: &ProjectSpec,
    phase: &PhaseSpec,
    effective: &PhaseSpec,
    round: u32,
) -> TaskSpec {
    let first_state = phase
        .tasks
        .first()
        .map_or("technical", |t| t.state.as_str());
    let state = phase.gate.reviewer.as_deref().unwrap_or(first_state);
    let one_state = phase.tasks.iter().all(|task| task.state == first_state);
    let on_behalf = if one_state {
        format!("the governor of the {first_state} state")
    } else {
        "the president".to_owned()
    };
    let names: Vec<&str> = phase.tasks.iter().map(|task| task.name.as_str()).collect();
    let criteria: String = phase
        .acceptance
        .iter()
        .enumerate()
        .map(|(k, criterion)| format!("{}. {criterion}\n", k + 1))
        .collect();
    let input = format!(
        "Project: {}\nPhase: {} (review round {round} of {})\n\nAcceptance criteria:\n\
         {criteria}\nThe outputs of the phase's tasks are above, each under its task's \
         name. Judge whether together they meet every acceptance criterion. Reply with one \
         JSON object and nothing else:\n{{\"approved\": true or false, \"feedback\": \"what \
         is missing or wrong and how to fix it\", \"reopen\": [names of the tasks to redo, \
         from: {}]}}\n",
        spec.name,
        phase.phase.as_str(),
        phase.gate.review_rounds,
        names.join(", ")
    );
    TaskSpec {
        name: review_task_name(phase.phase, round),
        state: state.to_owned(),
        skill: None,
        executor: ExecutorSpec::Llm {
            system: Some(format!(
                "You review the {} phase of a software project on behalf of {on_behalf}, \
                 in an organisation of AI agents. You are strict and specific: you approve \
                 only work that meets every acceptance criterion.",
                phase.phase.as_str()
            )),
            max_tokens: REVIEW_MAX_TOKENS,
            context: effective
                .tasks
                .iter()
                .take(crate::spec::MAX_CONTEXT_TASKS)
                .map(|task| task.name.clone())
                .collect(),
        },
        input,
        depends_on: Vec::new(),
        timeout_secs: REVIEW_TIMEOUT_SECS,
        retries: crate::spec::DEFAULT_RETRIES,
        budget: 0,
    }
}

/// A reviewer's verdict from its reply: the first `{` to the last `}` read as
/// `{"approved": bool, "feedback": string, "reopen": [task names]}` (models often wrap
/// JSON in prose or a code fence). Names not among `tasks` are dropped; a rejection
/// naming none sends every task back. A reply that does not parse is a rejection
/// saying so, which spends the round, so a reviewer that cannot answer fails the phase
/// after its rounds rather than holding it.
pub fn parse_review(reply: &str, tasks: &[String]) -> Review {
    #[derive(serde::Deserialize)]
    struct Verdict {
        approved: bool,
        #[serde(default)]
        feedback: String,
        #[serde(default)]
        reopen: Vec<String>,
    }
    let max_feedback = aamas_consensus::registry::MAX_FEEDBACK_BYTES;
    let json = match (reply.find('{'), reply.rfind('}')) {
        (Some(start), Some(end)) if start < end => &reply[start..=end],
        _ => "",
    };
    match serde_json::from_str::<Verdict>(json) {
        Ok(verdict) => {
            let mut reopen: Vec<String> = verdict
                .reopen
                .into_iter()
                .filter(|name| tasks.contains(name))
                .collect();
            reopen.sort();
            reopen.dedup();
            if !verdict.approved && reopen.is_empty() {
                reopen = tasks.to_vec();
            }
            if verdict.approved {
                reopen.clear();
            }
            Review {
                approved: verdict.approved,
                feedback: cut(verdict.feedback.trim(), max_feedback),
                reopen,
            }
        }
        Err(error) => Review {
            approved: false,
            feedback: cut(
                &format!(
                    "the review could not be read as a verdict ({error}); it began: {}",
                    reply.chars().take(200).collect::<String>()
                ),
                max_feedback,
            ),
            reopen: Vec::new(),
        },
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
                    acceptance: Vec::new(),
                    gate: GateSpec::default(),
                    plan: None,
                },
                PhaseSpec {
                    phase: Phase::Testing,
                    tasks: vec![task("t", "technical", &[])],
                    acceptance: Vec::new(),
                    gate: GateSpec::default(),
                    plan: None,
                },
            ],
            prompts: BTreeMap::new(),
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
        tick_with(president, now, &spec(), &BTreeMap::new(), phase, recorded)
    }

    fn tick_with(
        president: &mut President,
        now: u64,
        spec: &ProjectSpec,
        gates: &BTreeMap<Phase, PhaseGate>,
        phase: Phase,
        recorded: Option<PhaseProgress>,
    ) -> Vec<Command> {
        let projects = [RunningProject {
            id: "p",
            phase,
            spec: Some(spec),
            recorded,
            gates,
            owner: node(9),
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

    /// [`spec`] with an llm and a human gate on design.
    fn gated_spec() -> ProjectSpec {
        let mut spec = spec();
        let design = &mut spec.phases[0];
        design.acceptance = vec!["every task has tests".into()];
        design.gate = GateSpec {
            llm: true,
            human: true,
            review_rounds: 2,
            reviewer: None,
        };
        spec.phases[1].tasks[0].input = "check {{ outputs.b }}".into();
        spec
    }

    fn rejected(feedback: &str, reopen: &[&str]) -> Review {
        Review {
            approved: false,
            feedback: feedback.into(),
            reopen: reopen.iter().map(|name| (*name).to_string()).collect(),
        }
    }

    /// The tasks of the one AssignTasks among `commands`.
    fn assigned(commands: &[Command]) -> Vec<TaskSpec> {
        let tasks: Vec<TaskSpec> = commands
            .iter()
            .filter_map(|command| match command {
                Command::AssignTasks { tasks, .. } => Some(tasks),
                _ => None,
            })
            .flatten()
            .map(|task| TaskSpec::decode(&task.spec).expect("a task spec"))
            .collect();
        assert!(!tasks.is_empty(), "nothing assigned: {commands:?}");
        tasks
    }

    fn proposed(commands: &[Command]) -> Vec<&RegistryCommand> {
        commands
            .iter()
            .filter_map(|command| match command {
                Command::Propose { command, .. } => Some(command),
                _ => None,
            })
            .collect()
    }

    /// Design is planned by an llm (at most 2 tasks, 2 attempts); testing has `t`.
    fn planned_spec() -> ProjectSpec {
        let mut spec = spec();
        let design = &mut spec.phases[0];
        design.tasks.clear();
        design.plan = Some(PlanSpec {
            objectives: vec!["a schema and its migration".into()],
            max_tasks: 2,
            attempts: 2,
            allow_shell: false,
            planner: None,
        });
        spec
    }

    /// Runs the planning task of `attempt` to success and hands the president `reply`;
    /// returns what the next tick proposes.
    fn plan_with(
        president: &mut President,
        spec: &ProjectSpec,
        gates: &BTreeMap<Phase, PhaseGate>,
        attempt: u32,
        reply: &str,
    ) -> Vec<RegistryCommand> {
        proposed(&plan_commands(president, spec, gates, attempt, reply))
            .into_iter()
            .cloned()
            .collect()
    }

    /// [`plan_with`], returning every command of the tick that judges the reply.
    fn plan_commands(
        president: &mut President,
        spec: &ProjectSpec,
        gates: &BTreeMap<Phase, PhaseGate>,
        attempt: u32,
        reply: &str,
    ) -> Vec<Command> {
        let name = planning_task_name(Phase::Design, attempt);
        let now = u64::from(attempt) * 10_000;
        let planning = assigned(&tick_with(president, now, spec, gates, Phase::Design, None));
        assert_eq!(planning.len(), 1);
        assert_eq!(planning[0].name, name);
        assert_eq!(planning[0].state, DEFAULT_PLANNER);
        // The brief describes `{{ outputs.<task> }}` without making a reference the
        // worker would try to fill.
        assert!(crate::spec::output_refs(&planning[0].input).is_empty());
        assert!(planning[0].input.contains("outputs.<task>"));
        president.handle(
            now,
            progress("technical", &[(&name, TaskStatus::Succeeded)]),
        );
        let commands = tick_with(president, now + 1, spec, gates, Phase::Design, None);
        assert!(
            commands.iter().any(|c| matches!(c, Command::Read { task, reading: Reading::Plan { attempt: a }, .. } if *task == name && *a == attempt)),
            "{commands:?}"
        );
        president.handle(
            now + 2,
            Input::Read {
                project: "p".into(),
                phase: Phase::Design,
                reading: Reading::Plan { attempt },
                output: Some(reply.into()),
            },
        );
        tick_with(president, now + 3, spec, gates, Phase::Design, None)
    }

    #[test]
    fn a_plan_is_judged_by_the_policy_rules_and_refused_with_the_rule_that_denied_it() {
        let spec = planned_spec();
        let mut gates: BTreeMap<Phase, PhaseGate> = BTreeMap::new();
        let mut president = President::new();
        let policy = crate::governance::policy::parse(
            "[[rule]]\nname = \"plans-stay-technical\"\ncategory = \"security\"\n\
             at = \"planning\"\nwhen = { executor = [\"llm\"] }\n\
             unless = { state = [\"technical\"] }\n\
             reason = \"planned tasks run in the technical state\"\n\
             [[rule]]\nname = \"no-finance-tasks\"\ncategory = \"security\"\n\
             at = \"submission\"\nenforcement = \"advisory\"\n\
             when = { state = [\"financial\"] }\n",
        )
        .expect("policy");
        president.set_policy(Arc::new(policy));
        let elsewhere = r#"{"tasks": [
            {"name": "schema", "state": "technical", "input": "s"},
            {"name": "ledger", "state": "financial", "input": "l"}]}"#;
        let commands = plan_commands(&mut president, &spec, &gates, 1, elsewhere);
        let refusal = match proposed(&commands).as_slice() {
            [RegistryCommand::RefusePlan { reason, .. }] => reason.clone(),
            other => panic!("not refused: {other:?}"),
        };
        assert!(refusal.contains("plans-stay-technical"), "{refusal}");
        assert!(refusal.contains("run in the technical state"), "{refusal}");
        // The submission rules judge planned tasks too; both decisions are counted.
        let judged: Vec<&Command> = commands
            .iter()
            .filter(|c| matches!(c, Command::Judged { .. }))
            .collect();
        assert_eq!(
            judged,
            [&Command::Judged {
                at: Point::Planning,
                fired: vec![
                    ("plans-stay-technical".into(), Outcome::Denied),
                    ("no-finance-tasks".into(), Outcome::Noted),
                ],
            }]
        );
        gates
            .entry(Phase::Design)
            .or_default()
            .plan_refusals
            .push(refusal);
        // A plan in the technical state passes and is counted as allowed.
        let technical = r#"{"tasks": [{"name": "schema", "state": "technical", "input": "s"}]}"#;
        let commands = plan_commands(&mut president, &spec, &gates, 2, technical);
        assert!(
            matches!(
                proposed(&commands).as_slice(),
                [RegistryCommand::SetPlan { .. }]
            ),
            "{commands:?}"
        );
        assert!(
            commands.contains(&Command::Judged {
                at: Point::Planning,
                fired: Vec::new(),
            }),
            "{commands:?}"
        );
    }

    #[test]
    fn a_planned_phase_runs_what_a_checked_plan_gives_after_refusing_a_bad_one() {
        let spec = planned_spec();
        let mut gates: BTreeMap<Phase, PhaseGate> = BTreeMap::new();
        let mut president = President::new();
        // A plan with a cycle is refused with the checker's reason.
        let cycle = r#"Here it is: {"tasks": [
            {"name": "x", "state": "technical", "input": "x", "depends_on": ["y"]},
            {"name": "y", "state": "technical", "input": "y", "depends_on": ["x"]}]}"#;
        let refusal = match plan_with(&mut president, &spec, &gates, 1, cycle).as_slice() {
            [
                RegistryCommand::RefusePlan {
                    attempt: 1, reason, ..
                },
            ] => reason.clone(),
            other => panic!("not refused: {other:?}"),
        };
        assert!(refusal.contains("cycle"), "{refusal}");
        gates
            .entry(Phase::Design)
            .or_default()
            .plan_refusals
            .push(refusal.clone());
        // The second attempt's brief names the reason; a good plan is committed.
        let planning = assigned(&tick_with(
            &mut president,
            15_000,
            &spec,
            &gates,
            Phase::Design,
            None,
        ));
        assert!(
            planning[0].input.contains(&refusal),
            "{}",
            planning[0].input
        );
        let good = r#"{"tasks": [
            {"name": "schema", "state": "technical", "input": "write the schema"},
            {"name": "migration", "state": "financial", "input": "migrate {{ outputs.schema }}",
             "depends_on": ["schema"]}]}"#;
        let plan = match plan_with(&mut president, &spec, &gates, 2, good).as_slice() {
            [RegistryCommand::SetPlan { plan, .. }] => plan.clone(),
            other => panic!("not committed: {other:?}"),
        };
        let tasks = crate::spec::decode_plan(&plan).expect("a plan");
        assert_eq!(tasks.len(), 2);
        gates.entry(Phase::Design).or_default().plan = Some(plan);
        // The planned tasks run like written ones: the ready one first.
        let first = assigned(&tick_with(
            &mut president,
            30_000,
            &spec,
            &gates,
            Phase::Design,
            None,
        ));
        let names: Vec<&str> = first.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["schema"]);
    }

    #[test]
    fn a_plan_over_its_bounds_is_refused_and_the_attempts_spent_fail_the_phase() {
        let spec = planned_spec();
        let mut gates: BTreeMap<Phase, PhaseGate> = BTreeMap::new();
        let mut president = President::new();
        let three = r#"{"tasks": [{"name": "a1", "state": "technical"},
            {"name": "a2", "state": "technical"}, {"name": "a3", "state": "technical"}]}"#;
        let shell = r#"{"tasks": [{"name": "s", "state": "technical", "executor": "shell",
            "command": "rm -rf /"}]}"#;
        for (attempt, reply, needle) in [(1, three, "at most 2"), (2, shell, "shell")] {
            let reason = match plan_with(&mut president, &spec, &gates, attempt, reply).as_slice() {
                [RegistryCommand::RefusePlan { reason, .. }] => reason.clone(),
                other => panic!("not refused: {other:?}"),
            };
            assert!(reason.contains(needle), "{reason}");
            gates
                .entry(Phase::Design)
                .or_default()
                .plan_refusals
                .push(reason);
        }
        let commands = tick_with(&mut president, 99_000, &spec, &gates, Phase::Design, None);
        assert!(
            commands.iter().any(|c| matches!(c, Command::Propose {
                announce: Some(Event::ErrorEscalation { task: Some(task), level: 2, .. }), ..
            } if task == "gate-plan-design-2")),
            "the failure is escalated: {commands:?}"
        );
        match proposed(&commands).as_slice() {
            [RegistryCommand::FailProject { reason, .. }] => {
                assert!(
                    reason.contains("could not be planned: 2 plans refused"),
                    "{reason}"
                );
                assert!(reason.contains("shell"), "{reason}");
            }
            other => panic!("the phase did not fail: {other:?}"),
        }
    }

    #[test]
    fn an_llm_gate_reviews_sends_tasks_back_with_the_feedback_and_reviews_again() {
        use TaskStatus::Succeeded as Done;
        let spec = gated_spec();
        let mut gates = BTreeMap::new();
        let mut president = President::new();
        president.handle(0, progress("technical", &[("a", Done)]));
        president.handle(0, progress("financial", &[("b", Done)]));
        // Every task succeeded: the first round's review runs, reading both outputs.
        let commands = tick_with(
            &mut president,
            0,
            &spec,
            &gates,
            Phase::Design,
            counts(2, 2, 0),
        );
        let review = &assigned(&commands)[0];
        assert_eq!(review.name, "gate-review-design-1");
        assert_eq!(review.state, "technical");
        let ExecutorSpec::Llm {
            context, system, ..
        } = &review.executor
        else {
            panic!("a review is an llm task: {review:?}")
        };
        assert_eq!(context, &["a", "b"]);
        assert!(
            system.as_deref().unwrap_or("").contains("the president"),
            "{system:?}"
        );
        assert!(
            review.input.contains("every task has tests"),
            "{}",
            review.input
        );
        assert!(review.validate().is_ok());
        assert!(
            proposed(&commands)
                .iter()
                .all(|c| !matches!(c, RegistryCommand::AdvancePhase { .. }))
        );

        // The review succeeded: its text is read, once per REVIEW_READ_RETRY_MS.
        president.handle(
            1,
            progress("technical", &[("a", Done), ("gate-review-design-1", Done)]),
        );
        let commands = tick_with(
            &mut president,
            2_000,
            &spec,
            &gates,
            Phase::Design,
            counts(2, 2, 0),
        );
        assert!(
            commands.iter().any(|c| matches!(c, Command::Read { reading: Reading::Review { round: 1 }, task, .. } if task == "gate-review-design-1")),
            "{commands:?}"
        );
        assert!(
            !tick_with(
                &mut president,
                2_500,
                &spec,
                &gates,
                Phase::Design,
                counts(2, 2, 0)
            )
            .iter()
            .any(|c| matches!(
                c,
                Command::Read {
                    reading: Reading::Review { .. },
                    ..
                }
            ))
        );
        president.handle(
            2_600,
            Input::Read {
                project: "p".into(),
                phase: Phase::Design,
                reading: Reading::Review { round: 1 },
                output: Some("Here it is:\n```json\n{\"approved\": false, \"feedback\": \"b has no tests\", \"reopen\": [\"b\", \"nope\"]}\n```".into()),
            },
        );
        let commands: Vec<Command> = president.drain().collect();
        let recorded = proposed(&commands);
        assert_eq!(
            recorded,
            vec![&RegistryCommand::RecordReview {
                id: "p".into(),
                phase: Phase::Design,
                round: 1,
                review: rejected("b has no tests", &["b"]),
            }]
        );

        // Committed: `b` runs again as its revision, with the feedback and its output.
        gates.insert(
            Phase::Design,
            PhaseGate {
                reviews: vec![rejected("b has no tests", &["b"])],
                ..PhaseGate::default()
            },
        );
        let commands = tick_with(
            &mut president,
            3_000,
            &spec,
            &gates,
            Phase::Design,
            counts(2, 2, 0),
        );
        let revision = &assigned(&commands)[0];
        assert_eq!(revision.name, "b--r2");
        assert!(revision.depends_on.is_empty());
        assert!(
            revision.input.contains("b has no tests"),
            "{}",
            revision.input
        );
        assert!(
            revision.input.contains("{{ outputs.b }}"),
            "{}",
            revision.input
        );
        assert_eq!(proposed(&commands).len(), 1, "the counts: 1 of 2 done now");
        // That count is committed (recorded below as 1 of 2 done).
        let count = commands
            .iter()
            .find_map(|c| match c {
                Command::Propose {
                    slot,
                    command: RegistryCommand::SetProjectProgress { .. },
                    ..
                } => Some(slot.clone()),
                _ => None,
            })
            .expect("a count");
        president.handle(3_500, Input::Proposed { slot: count });

        // The revision succeeded: round two reads it instead of `b`.
        president.handle(
            4_000,
            progress("financial", &[("b", Done), ("b--r2", Done)]),
        );
        let commands = tick_with(
            &mut president,
            4_000,
            &spec,
            &gates,
            Phase::Design,
            counts(2, 1, 0),
        );
        let review = &assigned(&commands)[0];
        assert_eq!(review.name, "gate-review-design-2");
        let ExecutorSpec::Llm { context, .. } = &review.executor else {
            panic!("{review:?}")
        };
        assert_eq!(context, &["a", "b--r2"]);

        // Approved: the human gate holds the project.
        gates
            .get_mut(&Phase::Design)
            .expect("design")
            .reviews
            .push(Review {
                approved: true,
                feedback: String::new(),
                reopen: Vec::new(),
            });
        let commands = tick_with(
            &mut president,
            5_000,
            &spec,
            &gates,
            Phase::Design,
            counts(2, 2, 0),
        );
        assert!(
            proposed(&commands).contains(&&RegistryCommand::AwaitApproval {
                id: "p".into(),
                phase: Phase::Design
            }),
            "{commands:?}"
        );
        assert!(
            !proposed(&commands)
                .iter()
                .any(|c| matches!(c, RegistryCommand::AdvancePhase { .. }))
        );

        // Later phases read the newest revision of what they name.
        let newest = revised_names(&spec, &gates);
        let testing = effective_task(&spec, &spec.phases[1].tasks[0], &newest, &[]);
        assert_eq!(testing.input, "check {{ outputs.b--r2 }}");
    }

    #[test]
    fn an_llm_gate_fails_the_phase_once_its_rounds_are_spent() {
        let spec = gated_spec();
        let gates = BTreeMap::from([(
            Phase::Design,
            PhaseGate {
                reviews: vec![rejected("no", &["a"]), rejected("still no tests", &["a"])],
                ..PhaseGate::default()
            },
        )]);
        let mut president = President::new();
        president.handle(
            0,
            progress(
                "technical",
                &[
                    ("a", TaskStatus::Succeeded),
                    ("a--r2", TaskStatus::Succeeded),
                    ("a--r3", TaskStatus::Succeeded),
                ],
            ),
        );
        president.handle(0, progress("financial", &[("b", TaskStatus::Succeeded)]));
        let commands = tick_with(
            &mut president,
            0,
            &spec,
            &gates,
            Phase::Design,
            counts(2, 2, 0),
        );
        let failed = proposed(&commands)
            .into_iter()
            .find_map(|command| match command {
                RegistryCommand::FailProject { reason, .. } => Some(reason.clone()),
                _ => None,
            })
            .expect("the phase fails");
        assert!(
            failed.contains("after 2 rounds: still no tests"),
            "{failed}"
        );
    }

    #[test]
    fn a_review_is_read_from_prose_fences_or_not_at_all() {
        let tasks = vec!["a".to_string(), "b".to_string()];
        let review = parse_review(
            "{\"approved\": true, \"feedback\": \"fine\", \"reopen\": [\"a\"]}",
            &tasks,
        );
        assert!(review.approved);
        assert!(review.reopen.is_empty(), "an approval sends nothing back");
        let review = parse_review(
            "no.\n{\"approved\": false, \"feedback\": \"x\"}\nthanks",
            &tasks,
        );
        assert!(!review.approved);
        assert_eq!(
            review.reopen, tasks,
            "a rejection naming nothing sends all back"
        );
        let review = parse_review("I think it is fine", &tasks);
        assert!(!review.approved);
        assert!(review.reopen.is_empty());
        assert!(
            review.feedback.contains("could not be read"),
            "{}",
            review.feedback
        );
        let long = format!(
            "{{\"approved\": false, \"feedback\": \"{}\"}}",
            "é".repeat(5_000)
        );
        let review = parse_review(&long, &tasks);
        assert!(review.feedback.len() <= aamas_consensus::registry::MAX_FEEDBACK_BYTES);
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
        let gates = BTreeMap::new();
        let projects = [RunningProject {
            id: "p",
            phase: Phase::Testing,
            spec: Some(&spec),
            recorded: counts(1, 0, 0),
            gates: &gates,
            owner: node(9),
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
        let advance = |now_ms: u64| Command::Propose {
            slot: [b"advance".as_slice(), b"p", b"design"].concat(),
            request: vec![b"advance".to_vec(), b"p".to_vec(), b"design".to_vec()],
            command: RegistryCommand::AdvancePhase {
                id: "p".into(),
                from: Phase::Design,
                now_ms,
            },
            announce: Some(Event::PhaseTransition {
                project: "p".into(),
                from: Some(Phase::Design),
                to: Phase::Development,
            }),
        };
        assert_eq!(commands, vec![advance(10)]);
        // Under way: not proposed again until it finishes.
        assert!(tick(&mut president, 20, Phase::Design, counts(2, 2, 0)).is_empty());
        president.handle(
            30,
            Input::Proposed {
                slot: [b"advance".as_slice(), b"p", b"design"].concat(),
            },
        );
        // Again, stamped with the time it is proposed at.
        assert_eq!(
            tick(&mut president, 40, Phase::Design, counts(2, 2, 0)),
            vec![advance(40)]
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
    fn an_advance_that_ended_and_a_state_newly_finished_want_the_next_tick_now() {
        let mut president = President::new();
        assert!(!president.take_tick_wanted());
        // A state with work left, then the same state finished: once, not on a repeat.
        president.handle(0, progress("technical", &[("a", TaskStatus::Assigned)]));
        assert!(!president.take_tick_wanted());
        president.handle(1, progress("technical", &[("a", TaskStatus::Succeeded)]));
        assert!(president.take_tick_wanted());
        assert!(!president.take_tick_wanted(), "taken once");
        president.handle(2, progress("technical", &[("a", TaskStatus::Succeeded)]));
        assert!(
            !president.take_tick_wanted(),
            "a report repeated is no news"
        );
        // An escalated task is finished too (the phase may fail).
        president.handle(3, progress("financial", &[("b", TaskStatus::Escalated)]));
        assert!(president.take_tick_wanted());

        // The end of an advance wants the next tick; the end of another proposal does not.
        president.handle(4, progress("financial", &[("b", TaskStatus::Succeeded)]));
        let _ = president.take_tick_wanted();
        let commands = tick(&mut president, 10, Phase::Design, counts(2, 2, 0));
        let slot = match commands.as_slice() {
            [
                Command::Propose {
                    slot,
                    command: RegistryCommand::AdvancePhase { .. },
                    ..
                },
            ] => slot.clone(),
            other => panic!("no advance: {other:?}"),
        };
        president.handle(
            20,
            Input::Proposed {
                slot: b"progress-p".to_vec(),
            },
        );
        assert!(!president.take_tick_wanted());
        president.handle(30, Input::Proposed { slot: slot.clone() });
        assert!(president.take_tick_wanted());
        president.handle(40, Input::Proposed { slot });
        assert!(!president.take_tick_wanted(), "an advance ends once");
    }

    /// The driver's answer that the design count `total`/`done`/`failed` of project `p`
    /// was written.
    fn count_written(total: u32, done: u32, failed: u32) -> Input<'static> {
        Input::Proposed {
            slot: [
                b"progress".as_slice(),
                b"p",
                b"design",
                &total.to_be_bytes(),
                &done.to_be_bytes(),
                &failed.to_be_bytes(),
            ]
            .concat(),
        }
    }

    #[test]
    fn a_newer_count_waits_for_the_earlier_one_and_the_phase_ends_after_the_last() {
        let mut president = President::new();
        president.handle(0, progress("technical", &[("a", TaskStatus::Assigned)]));
        president.handle(0, progress("financial", &[("b", TaskStatus::Succeeded)]));
        let first = match proposed(&tick(&mut president, 10, Phase::Design, None)).as_slice() {
            [RegistryCommand::SetProjectProgress { progress, .. }] => *progress,
            other => panic!("no count: {other:?}"),
        };
        assert_eq!(Some(first), counts(2, 1, 0));
        // Everything succeeded while the first count is still being written: nothing
        // is proposed, neither the newer count nor the advance.
        president.handle(20, progress("technical", &[("a", TaskStatus::Succeeded)]));
        assert!(tick(&mut president, 30, Phase::Design, None).is_empty());
        // Once it is written, the last count and the advance go together.
        president.handle(40, count_written(2, 1, 0));
        let commands = tick(&mut president, 50, Phase::Design, counts(2, 1, 0));
        assert!(
            matches!(
                proposed(&commands).as_slice(),
                [
                    RegistryCommand::SetProjectProgress { .. },
                    RegistryCommand::AdvancePhase { .. }
                ]
            ),
            "{commands:?}"
        );
    }

    #[test]
    fn a_phase_fails_only_once_its_last_count_is_committed() {
        let mut president = President::new();
        president.handle(0, progress("technical", &[("a", TaskStatus::Assigned)]));
        president.handle(0, progress("financial", &[("b", TaskStatus::Assigned)]));
        let first = match proposed(&tick(&mut president, 10, Phase::Design, None)).as_slice() {
            [RegistryCommand::SetProjectProgress { progress, .. }] => *progress,
            other => panic!("no count: {other:?}"),
        };
        assert_eq!(Some(first), counts(2, 0, 0));
        // A task fails for good while that count is still being written: neither the
        // newer count nor the failure is proposed.
        president.handle(20, progress("technical", &[("a", TaskStatus::Escalated)]));
        assert!(tick(&mut president, 30, Phase::Design, None).is_empty());
        president.handle(40, count_written(2, 0, 0));
        let commands = tick(&mut president, 50, Phase::Design, counts(2, 0, 0));
        assert!(
            matches!(
                proposed(&commands).as_slice(),
                [RegistryCommand::SetProjectProgress {
                    progress: PhaseProgress {
                        tasks_failed: 1,
                        ..
                    },
                    ..
                }]
            ),
            "{commands:?}"
        );
        // The failure only once that count is committed (both writes proposed together
        // could commit in either order, and a reader could see the project failed with
        // the older count).
        let commands = tick(&mut president, 60, Phase::Design, counts(2, 0, 1));
        assert!(
            matches!(
                proposed(&commands).as_slice(),
                [RegistryCommand::FailProject { .. }]
            ),
            "{commands:?}"
        );
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
            decide(
                &report(TaskStatus::Escalated, true, 0),
                &Escalation::default()
            ),
            Decision::Reassign
        );
        // The escalation policy sets the ladder: none, or more rungs.
        let none = Escalation {
            reopenings: 0,
            ..Escalation::default()
        };
        assert_eq!(
            decide(&report(TaskStatus::Escalated, true, 0), &none),
            Decision::FailPhase
        );
        let three = Escalation {
            reopenings: 3,
            ..Escalation::default()
        };
        assert_eq!(
            decide(&report(TaskStatus::Escalated, true, 2), &three),
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
        // All alive: 4 and 5 join as learners, and both as voters (3 to 5 in one change).
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
                FederalChange::AddVoters(ids(&[4, 5]))
            ]
        );
    }

    #[test]
    fn voters_are_added_two_at_a_time_from_an_odd_count_and_spread_over_states() {
        let members: BTreeMap<NodeId, Option<String>> = [
            (1, Some("a".to_string())),
            (2, Some("a".to_string())),
            (3, Some("b".to_string())),
            (4, Some("c".to_string())),
            (5, Some("c".to_string())),
        ]
        .into();
        let last_seen: BTreeMap<NodeId, u64> = (1..=5).map(|id| (id, 10_000)).collect();
        let learners = ids(&[2, 3, 4, 5]);
        let plan = |voters: &BTreeSet<NodeId>, members: &BTreeMap<NodeId, Option<String>>| {
            plan_federal(&FederalView {
                me: 1,
                voters,
                learners: &learners,
                members,
                last_seen: &last_seen,
                changing: false,
                wanted: 5,
                learner_gap_passed: true,
                now_ms: 10_000,
            })
        };
        // 1 to 3: never two. From state a's founder, the next two come from b and c.
        assert_eq!(
            plan(&ids(&[1]), &members),
            vec![FederalChange::AddVoters(ids(&[3, 4]))]
        );
        // An even count (a mesh that had two members) takes one, to three.
        assert_eq!(
            plan(&ids(&[1, 3]), &members),
            vec![FederalChange::AddVoters(ids(&[4]))]
        );
        // Four members want four voters: 3 to 4 is one.
        let four: BTreeMap<NodeId, Option<String>> = members
            .iter()
            .filter(|(id, _)| **id != 5)
            .map(|(id, state)| (*id, state.clone()))
            .collect();
        assert_eq!(
            plan(&ids(&[1, 3, 4]), &four),
            vec![FederalChange::AddVoters(ids(&[2]))]
        );
        // Five voters of five members: nothing.
        assert!(plan(&ids(&[1, 2, 3, 4, 5]), &members).is_empty());
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
