//! The work driver: one task per node that owns the worker's, mayor's, governor's and
//! president's cores ([`crate::roles`]) and is the only code that touches them.
//!
//! ```text
//!   inbound Execute ─────────────────────┐                 ┌─► executor runs
//!   finished executions, deliveries,     ├─► Input queue ─►│   proposals to Raft
//!   proposals, reports (completions)  ───┘   (bounded)     │   sealed sends
//!   applied entries, reports ─► wake ─► round: reads ─►────┘   (spawned; each ends
//!   timer (leases, timeouts, retries) ─► round                 as an Input)
//! ```
//!
//! Everything that happens to the work roles reaches the driver as an [`Input`] on one
//! bounded queue ([`WORK_INPUTS`]): an Execute a mayor sent, a governor's report to the
//! president, and the completion of every command the driver started (an execution, a delivery, a
//! proposal, a report). A round — when a group open on this node applied an entry, a
//! governor's report arrived, or [`WORK_TICK`] passed ([`WORK_IDLE_TICK`] on a node with
//! nothing of its own due) — reads the Ledgers and the
//! Registry and hands each core its look. Commands are carried out by spawned tasks that
//! never touch a core: they report back as inputs. No lock guards role state, and a
//! round and an input never interleave.
//!
//! A round or an input that panics (a bug) is counted in
//! `aamas_duty_panics_total{duty="work"}` and logged; the driver goes on.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use aamas_consensus::ledger::TaskKey;
use aamas_consensus::{Group, GroupId};
use aamas_protocol::{NodeKey, Phase};
use tokio::sync::{mpsc, oneshot};

use crate::driver::runtime::{Node, now_ms};
use crate::driver::work::{
    AttemptOutcome, StateProgress, WORK_MIN_GAP, WORK_TICK, WorkError, WorkerCommand,
};
use crate::events::Role;
use crate::spec::TaskSpec;

/// Most inputs queued for the driver. A sender waits for room (inbound handlers are
/// bounded by the inbound slots, completions by the commands in flight), so nothing is
/// dropped, and memory stays bounded.
pub const WORK_INPUTS: usize = 4_096;

/// What a mayor has in flight for one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Sending {
    Proposal,
    Execute,
}

/// The work roles' cores and the driver's own bookkeeping, owned by the driver task.
pub(crate) struct Cores {
    /// Worker: attempts running here and their deliveries ([`crate::roles::worker`]).
    pub(crate) worker: crate::roles::worker::Worker<AttemptOutcome>,
    /// Mayor: dispatch, losses and retries ([`crate::roles::mayor`]).
    pub(crate) mayor: crate::roles::mayor::Mayor,
    /// Mayor: deliveries in flight, so a slow one is not started twice.
    pub(crate) sending: BTreeSet<(TaskKey, u32, Sending)>,
    /// Governor: cities, mayors, escalations and reports ([`crate::roles::governor`]).
    pub(crate) governor: crate::roles::governor::Governor,
    /// President: phases planned, advanced and failed ([`crate::roles::president`]).
    pub(crate) president: crate::roles::president::President,
    /// The groups whose applied entries wake the driver (one watcher each).
    pub(crate) watched: BTreeSet<GroupId>,
    /// The roles this node held at the end of the last round (for RoleChange events).
    pub(crate) roles: BTreeSet<Role>,
}

impl Cores {
    /// The cores of node `me`, a worker that runs `capacity` attempts at once.
    pub(crate) fn new(me: NodeKey, capacity: usize) -> Self {
        Self {
            worker: crate::roles::worker::Worker::new(capacity),
            mayor: crate::roles::mayor::Mayor::new(),
            sending: BTreeSet::new(),
            governor: crate::roles::governor::Governor::new(me),
            president: crate::roles::president::President::new(),
            watched: BTreeSet::new(),
            roles: BTreeSet::new(),
        }
    }

    /// Whether something here is due at a time of its own (a lease, a timeout, a
    /// delivery's retry): this node held a role at the last round, runs or delivers an
    /// attempt, or has a mayor's delivery in flight.
    pub(crate) fn keeps_watch(&self) -> bool {
        !self.roles.is_empty() || self.worker.holds_attempts() || !self.sending.is_empty()
    }
}

/// An assignment a mayor's proposal committed, to hand to its worker at once.
pub(crate) struct Committed {
    pub(crate) city: String,
    pub(crate) worker: NodeKey,
    pub(crate) spec: Vec<u8>,
    pub(crate) group: Group,
    pub(crate) started: std::time::Instant,
}

/// What reaches the driver.
pub(crate) enum Input {
    /// A mayor hands this worker an attempt that passed the authority's checks; the
    /// answer says whether the worker took it.
    Execute {
        mayor: NodeKey,
        key: TaskKey,
        attempt: u32,
        city: String,
        spec: TaskSpec,
        reply: oneshot::Sender<Result<(), WorkError>>,
    },
    /// The executor finished an attempt.
    Finished {
        key: TaskKey,
        attempt: u32,
        outcome: AttemptOutcome,
    },
    /// A delivery of an outcome to its mayor ended.
    OutcomeSent {
        key: TaskKey,
        attempt: u32,
        delivered: bool,
    },
    /// An attempt failed on `worker`: the mayor tries another one next.
    FailedOn { key: TaskKey, worker: NodeKey },
    /// A mayor's proposal ended; `committed` when it was an assignment that committed.
    Proposed {
        key: TaskKey,
        attempt: u32,
        committed: Option<Committed>,
    },
    /// A mayor's Execute ended; `delivered` when the worker took it.
    ExecuteSent {
        key: TaskKey,
        attempt: u32,
        delivered: bool,
    },
    /// A governor's Ledger write ended.
    Written { slot: Vec<u8>, committed: bool },
    /// A governor's progress report ended.
    Reported {
        state: String,
        project: String,
        acknowledged: bool,
    },
    /// A governor's progress report reached the president.
    Progress {
        state: String,
        projects: Vec<StateProgress>,
    },
    /// A president's proposal ended.
    PresidentProposed { slot: Vec<u8> },
    /// A president's Read ended.
    Read {
        project: String,
        phase: Phase,
        reading: crate::roles::president::Reading,
        output: Option<String>,
    },
    /// A president's AssignTasks ended.
    Assigned {
        project: String,
        phase: Phase,
        state: String,
        delivered: bool,
    },
    /// A group's watcher ended (the group closed).
    Unwatched(GroupId),
}

/// The sending end of the driver's queue.
#[derive(Clone)]
pub(crate) struct Inputs(mpsc::Sender<Input>);

impl Inputs {
    /// A queue of [`WORK_INPUTS`] and its receiving end, for [`drive`].
    pub(crate) fn new() -> (Self, mpsc::Receiver<Input>) {
        let (sender, receiver) = mpsc::channel(WORK_INPUTS);
        (Self(sender), receiver)
    }

    /// Queues `input`, waiting for room; `Err` once the driver is gone (stopping).
    pub(crate) async fn send(&self, input: Input) -> Result<(), WorkError> {
        self.0.send(input).await.map_err(|_| WorkError::Stopping)
    }

    /// Queues an input that carries a reply channel and waits for the answer.
    pub(crate) async fn ask<T>(
        &self,
        input: impl FnOnce(oneshot::Sender<T>) -> Input,
    ) -> Result<T, WorkError> {
        let (reply, answer) = oneshot::channel();
        self.send(input(reply)).await?;
        answer.await.map_err(|_| WorkError::Stopping)
    }
}

/// Runs the driver until the queue closes or the task is aborted.
pub(crate) async fn drive(node: Arc<Node>, mut cores: Cores, mut inputs: mpsc::Receiver<Input>) {
    let wake = node.work_wake.clone();
    let mut last = tokio::time::Instant::now();
    // The first round at once.
    let mut woken = true;
    last -= WORK_TICK;
    // Inputs applied since the last round: a due round waits for queued inputs (each is
    // short, and someone waits on most), but at most this many, so a flood of inputs
    // never starves it.
    let mut streak = 0;
    // The president's core asked for its next round now (a phase advanced, or a state
    // finished its tasks): a few times per phase, so the least gap does not apply.
    let mut urgent = false;
    loop {
        let due = if urgent {
            tokio::time::Instant::now()
        } else if woken {
            last + WORK_MIN_GAP
        } else if cores.keeps_watch() {
            last + WORK_TICK
        } else {
            last + WORK_IDLE_TICK
        };
        let round_first = streak >= MAX_INPUTS_BEFORE_A_ROUND;
        tokio::select! {
            biased;
            () = tokio::time::sleep_until(due), if round_first => {
                streak = 0;
                last = tokio::time::Instant::now();
                woken = false;
                urgent = false;
                round(&node, &mut cores).await;
            }
            input = inputs.recv() => {
                let Some(input) = input else { return };
                streak += 1;
                let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    node.apply(&mut cores, input);
                }));
                if applied.is_err() {
                    panicked(&node, "an input");
                }
                urgent |= cores.president.take_tick_wanted();
            }
            () = tokio::time::sleep_until(due), if !round_first => {
                streak = 0;
                last = tokio::time::Instant::now();
                woken = false;
                urgent = false;
                round(&node, &mut cores).await;
            }
            // Something happened: a round as soon as the least gap allows.
            () = wake.notified(), if !woken => woken = true,
        }
    }
}

/// How often the driver runs a round unwoken while this node holds no work role and no
/// attempt ([`Cores::keeps_watch`]): nothing of its own is then due at any time, and
/// whatever gives it work (a committed entry, an Execute) wakes it.
pub const WORK_IDLE_TICK: std::time::Duration = std::time::Duration::from_secs(4);

/// Most inputs the driver applies in a row while a round is due.
const MAX_INPUTS_BEFORE_A_ROUND: usize = 256;

/// One round, a panic counted and survived.
async fn round(node: &Arc<Node>, cores: &mut Cores) {
    use futures::FutureExt as _;
    let started = std::time::Instant::now();
    let round = std::panic::AssertUnwindSafe(node.work_round(cores))
        .catch_unwind()
        .await;
    node.metrics
        .work_round_seconds
        .observe(started.elapsed().as_secs_f64());
    if round.is_err() {
        panicked(node, "a round");
    }
}

fn panicked(node: &Node, what: &str) {
    node.metrics
        .duty_panics
        .get_or_create(&crate::metrics::labels(&[("duty", "work")]))
        .inc();
    tracing::error!(what, "the work driver panicked; it goes on");
}

impl Node {
    /// Feeds one input to the core it is for and carries out what the core asks.
    fn apply(self: &Arc<Self>, cores: &mut Cores, input: Input) {
        let now = now_ms();
        match input {
            Input::Execute {
                mayor,
                key,
                attempt,
                city,
                spec,
                reply,
            } => {
                let taken = cores.worker.handle(
                    now,
                    crate::roles::worker::Input::Execute {
                        key: key.clone(),
                        attempt,
                        city,
                        state: spec.state.clone(),
                        mayor,
                    },
                );
                if let Err(crate::roles::worker::Refused::Reserved { .. }) = &taken {
                    self.count_fired(
                        crate::governance::policy::Point::Dispatch,
                        [("priority", crate::governance::policy::Outcome::Deferred)].into_iter(),
                    );
                }
                tracing::debug!(%key, attempt, taken = taken.is_ok(), "an Execute");
                let commands: Vec<WorkerCommand> = cores.worker.drain().collect();
                self.worker_carry_out(commands, Some(spec));
                let _ = reply.send(taken.map_err(WorkError::Worker));
            }
            Input::Finished {
                key,
                attempt,
                outcome,
            } => {
                let _ = cores.worker.handle(
                    now,
                    crate::roles::worker::Input::Finished {
                        key,
                        attempt,
                        outcome,
                    },
                );
                let commands: Vec<WorkerCommand> = cores.worker.drain().collect();
                self.worker_carry_out(commands, None);
            }
            Input::OutcomeSent {
                key,
                attempt,
                delivered,
            } => {
                let input = if delivered {
                    crate::roles::worker::Input::Delivered { key, attempt }
                } else {
                    crate::roles::worker::Input::Undelivered { key, attempt }
                };
                let _ = cores.worker.handle(now, input);
            }
            Input::FailedOn { key, worker } => {
                cores
                    .mayor
                    .handle(now, crate::roles::mayor::Input::FailedOn { key, worker });
            }
            Input::Proposed {
                key,
                attempt,
                committed,
            } => {
                cores
                    .sending
                    .remove(&(key.clone(), attempt, Sending::Proposal));
                if let Some(committed) = committed {
                    cores.mayor.handle(
                        now,
                        crate::roles::mayor::Input::Assigned {
                            city: committed.city.clone(),
                            key: key.clone(),
                            attempt,
                            worker: committed.worker,
                        },
                    );
                    let commands: Vec<crate::roles::mayor::Command> = cores.mayor.drain().collect();
                    let groups = BTreeMap::from([(committed.city, committed.group)]);
                    let spec_of =
                        |wanted: &TaskKey| (*wanted == key).then(|| committed.spec.clone());
                    for command in commands {
                        self.carry_out(
                            &mut cores.sending,
                            command,
                            &groups,
                            &spec_of,
                            Some(committed.started),
                        );
                    }
                }
            }
            Input::ExecuteSent {
                key,
                attempt,
                delivered,
            } => {
                cores
                    .sending
                    .remove(&(key.clone(), attempt, Sending::Execute));
                if delivered {
                    cores
                        .mayor
                        .handle(now, crate::roles::mayor::Input::Delivered { key, attempt });
                }
            }
            Input::Written { slot, committed } => {
                cores.governor.handle(
                    now,
                    crate::roles::governor::Input::Written { slot, committed },
                );
            }
            Input::Reported {
                state,
                project,
                acknowledged,
            } => {
                cores.governor.handle(
                    now,
                    crate::roles::governor::Input::Reported {
                        state,
                        project,
                        acknowledged,
                    },
                );
            }
            Input::Progress { state, projects } => {
                cores.president.handle(
                    now,
                    crate::roles::president::Input::Progress { state, projects },
                );
                self.work_wake.notify_one();
            }
            Input::PresidentProposed { slot } => {
                cores
                    .president
                    .handle(now, crate::roles::president::Input::Proposed { slot });
            }
            Input::Read {
                project,
                phase,
                reading,
                output,
            } => {
                cores.president.handle(
                    now,
                    crate::roles::president::Input::Read {
                        project,
                        phase,
                        reading,
                        output,
                    },
                );
                self.work_wake.notify_one();
            }
            Input::Assigned {
                project,
                phase,
                state,
                delivered,
            } => {
                cores.president.handle(
                    now,
                    crate::roles::president::Input::Assigned {
                        project,
                        phase,
                        state,
                        delivered,
                    },
                );
            }
            Input::Unwatched(id) => {
                cores.watched.remove(&id);
            }
        }
    }
}
