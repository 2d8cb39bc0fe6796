//! Projects through the hierarchy.
//!
//! ```text
//!  user ─submit─► any node ─► president: SubmitProject (Registry)
//!  president ──Command AssignTasks──► governor: AddTask (Ledger)         ready tasks of the phase
//!  mayor (holds the city's lease, reads the Ledger):
//!      pending task ─Report Propose(AssignTask)─► governor commits ─Command Execute─► worker
//!  worker runs the executor ─Report Outcome─► mayor ─Report Propose(Complete|Fail)─► governor
//!  governor: failed tasks ─EscalateTask─► Ledger; ─Report Progress─► president
//!  president: every task of the phase succeeded → AdvancePhase (PhaseTransition);
//!             an escalated task → FailProject with the task's reason
//! ```
//!
//! Every message travels in a sealed, signed envelope over request-response — alone, or
//! under load with others for the same member ([`crate::driver::courier`]) — and is
//! answered with `Ack` only after its effect is committed, so senders retry until
//! acknowledged.
//! Every Ledger command is idempotent (request ids plus state checks), and the Ledger
//! refuses a second result for a task, so however often a task runs it has exactly one
//! committed result. Leaders, mayors and workers keep only soft state in memory; a
//! successor rebuilds it from the replicated log and from the next reports.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use aamas_consensus::ledger::{LedgerCommand, LedgerResponse, TaskKey, TaskStatus, TaskUsage};
use aamas_consensus::registry::{PhaseProgress, ProjectStatus, RegistryCommand};
use aamas_consensus::resources::Usage;
use aamas_consensus::{Command as RaftCommand, Group, Outcome, Request};
use aamas_protocol::{Command, Event, MessageKind, NodeKey, Payload, Phase, Priority, Report};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::driver::artifacts::ArtifactFailure;
use crate::driver::courier::{Lane, MAX_BATCH_ITEMS, MAX_CARRIERS, Parcel};
use crate::driver::mesh_events::Scope;
use crate::driver::owner::{Committed, Cores, Input, Inputs, Sending};
use crate::driver::runtime::{Node, now_ms, peer_id, request_id};
use crate::events::{BusEvent, Role};
use crate::exec::{ExecError, Execution, Executors, LlmConfig};
use crate::governance::policy::Policy;
use crate::net::wire::{Rpc, RpcResponse};
use crate::roles::mayor::WorkerFacts;
use crate::spec::{ProjectSpec, TaskSpec};

/// How often the president, governors, mayors and workers look at their work when
/// nothing wakes them: for leases, timeouts and retries. A committed entry in a group
/// this node holds, or a governor's report to the president, wakes them at once.
pub const WORK_TICK: Duration = Duration::from_millis(250);
/// The least time between the starts of two rounds of the work roles: commits under load
/// wake them continuously, and each round reads whole Ledgers, so under load they run as
/// often as they used to poll, and a quiet node reacts at once.
pub const WORK_MIN_GAP: Duration = Duration::from_millis(50);
/// How long one delivery attempt may take.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
pub use crate::roles::governor::{ARCHIVE_GRACE_MS, PROGRESS_REFRESH_MS};
pub use crate::roles::mayor::ASSIGNMENT_GRACE_MS;
pub use crate::roles::president::{
    ASSIGN_RESEND_MS, Decision, MAX_REOPENINGS, REOPEN_ATTEMPTS, decide, ready_tasks,
};
pub use crate::roles::worker::OUTCOME_DELIVERY_MS;
/// The action (or subject) of an envelope that carries several work messages: a
/// postcard list of each one's postcard.
pub const BATCH_ACTION: &str = "batch";
/// Largest output kept with a task outcome.
pub const MAX_OUTCOME_OUTPUT: usize = 64 << 10;
pub use crate::roles::governor::{NewTask, StateProgress, TaskReport};

/// Where a state a mayor dispatches for stands against its hard limits.
#[derive(Debug, Clone, Copy)]
enum Budget {
    /// No hard limit.
    Free,
    /// Hard limits, none spent: one task per worker at a time.
    Limited,
    /// A hard limit spent (resource, limit, used): nothing new is dispatched.
    Spent(
        (
            aamas_consensus::resources::Resource,
            aamas_consensus::resources::Limit,
            u64,
        ),
    ),
}

/// The work messages, carried in Command and Report payloads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Work {
    /// President → governor (Command): add these tasks to the state's Ledger.
    AssignTasks {
        /// The project.
        project: String,
        /// The phase.
        phase: Phase,
        /// The tasks.
        tasks: Vec<NewTask>,
    },
    /// Mayor → governor (Report): commit this Ledger command for the mayor's city.
    Propose {
        /// The mayor's city.
        city: String,
        /// The command: AssignTask, ChargeAttempt, CompleteTask or FailTask.
        command: LedgerCommand,
    },
    /// Mayor → worker (Command): run this attempt.
    Execute {
        /// The task.
        key: TaskKey,
        /// The attempt.
        attempt: u32,
        /// The city dispatching it (where the outcome goes).
        city: String,
        /// Its [`TaskSpec`], postcard.
        spec: Vec<u8>,
    },
    /// Worker → mayor (Report): what an attempt produced.
    Outcome {
        /// The task.
        key: TaskKey,
        /// The attempt.
        attempt: u32,
        /// The city that dispatched it.
        city: String,
        /// The result.
        result: Result<Execution, ExecError>,
    },
    /// President → governor (Command): give an escalated task more attempts.
    Reopen {
        /// The task.
        key: TaskKey,
        /// How many more attempts.
        attempts: u32,
        /// Which reopening this is, from 1.
        reopening: u32,
    },
    /// Governor → president (Report): every project's tasks in the state.
    Progress {
        /// The state.
        state: String,
        /// Per project.
        projects: Vec<StateProgress>,
    },
}

impl Work {
    fn action(&self) -> &'static str {
        match self {
            Work::AssignTasks { .. } => "assign_tasks",
            Work::Reopen { .. } => "reopen",
            Work::Propose { .. } => "propose",
            Work::Execute { .. } => "execute",
            Work::Outcome { .. } => "outcome",
            Work::Progress { .. } => "progress",
        }
    }

    fn kind(&self) -> MessageKind {
        match self {
            Work::AssignTasks { .. } | Work::Execute { .. } | Work::Reopen { .. } => {
                MessageKind::Command
            }
            Work::Propose { .. } | Work::Outcome { .. } | Work::Progress { .. } => {
                MessageKind::Report
            }
        }
    }
}

/// The digest committed for a result: SHA-256 of its output.
pub fn result_digest(execution: &Execution) -> [u8; 32] {
    execution
        .digest
        .unwrap_or_else(|| Sha256::digest(execution.output.as_bytes()).into())
}

pub use crate::roles::mayor::{Wanted, Worker, pick_worker};

/// What an attempt produced, as a worker delivers it.
pub(crate) type AttemptOutcome = Result<Execution, ExecError>;
/// A command of the worker core.
pub(crate) type WorkerCommand = crate::roles::worker::Command<AttemptOutcome>;

/// What the work roles share with the rest of the node: the executors, and the queue
/// into the driver that owns their cores ([`crate::driver::owner`]). Their soft state is
/// rebuilt from the log after a restart.
pub struct WorkState {
    pub(crate) executors: Executors,
    inputs: Inputs,
    /// Work messages waiting for an envelope, by recipient and kind.
    courier: crate::driver::courier::Courier<Result<(), WorkError>>,
}

impl std::fmt::Debug for WorkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkState").finish_non_exhaustive()
    }
}

impl WorkState {
    /// Work state for node `me`, a worker that runs `capacity` tasks at once, with the
    /// cores and the queue that [`crate::driver::owner::drive`] takes.
    pub(crate) fn new(
        me: NodeKey,
        capacity: usize,
        llm: Option<LlmConfig>,
        enabled: crate::exec::ExecutorSet,
        sandbox: crate::exec::sandbox::ShellSandbox,
    ) -> (Self, Cores, tokio::sync::mpsc::Receiver<Input>) {
        let (inputs, receiver) = Inputs::new();
        let state = Self {
            executors: Executors::new(llm, enabled).with_sandbox(sandbox),
            inputs,
            courier: crate::driver::courier::Courier::default(),
        };
        (state, Cores::new(me, capacity), receiver)
    }
}

/// Why a work message was not delivered, taken or committed. Crosses the wire as a
/// refusal's reason (its `Display`), so the sender's log says what the receiver thought.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkError {
    /// The message could not be encoded.
    #[error("encoding the work message failed: {0}")]
    Encode(postcard::Error),
    /// The message could not be sealed.
    #[error("sealing the work message failed: {0}")]
    Seal(aamas_protocol::SealError),
    /// The recipient is not an active member (or its key names no peer).
    #[error("the recipient {0} is not a member")]
    NotAMember(NodeKey),
    /// No answer within [`DELIVERY_TIMEOUT`].
    #[error("delivery timed out")]
    DeliveryTimedOut,
    /// The recipient did not acknowledge it.
    #[error(transparent)]
    Unacked(#[from] crate::net::swarm::Unacked),
    /// The authority refused an inbound message ([`crate::roles::authority`]).
    #[error(transparent)]
    Refused(crate::roles::authority::Refusal),
    /// The governor's core refused a request ([`crate::roles::governor::Governor::request`]).
    #[error(transparent)]
    Governor(crate::roles::governor::Refused),
    /// The worker's core refused an attempt ([`crate::roles::worker`]).
    #[error(transparent)]
    Worker(crate::roles::worker::Refused),
    /// The proposal was not committed (no leader, the group closed, a timeout...).
    #[error("the write was not committed: {0}")]
    NotCommitted(String),
    /// The Ledger refused the command.
    #[error("the Ledger refused it: {reason}")]
    LedgerRejected {
        /// The Ledger's reason.
        reason: String,
    },
    /// The Ledger holds the task with other content; the first version stands.
    #[error("the Ledger holds other content: {reason}")]
    LedgerConflict {
        /// The Ledger's reason.
        reason: String,
    },
    /// This node no longer leads the state the write was for.
    #[error("no longer the governor")]
    NoLongerGovernor,
    /// This node governs no state whose Ledger holds the task.
    #[error("this node governs no state holding {0}")]
    NotGoverned(TaskKey),
    /// This node does not hold the lease of the outcome's city.
    #[error("not the mayor of that city")]
    NotTheMayor,
    /// The mayor's Ledger replica has no such task.
    #[error("no such task {0}")]
    NoSuchTask(TaskKey),
    /// The mayor's Ledger replica has not seen the attempt yet; the worker retries.
    #[error("the mayor's copy of the Ledger is behind; retry")]
    Behind,
    /// The state has no governor that is a member right now.
    #[error("the state has no governor right now")]
    NoGovernor,
    /// A progress report reached a node that is not the president.
    #[error("not the president")]
    NotThePresident,
    /// A progress report from a member that is neither the state's governor nor a voter.
    #[error("{sender} does not govern {state}")]
    NotItsGovernor {
        /// Who sent it.
        sender: NodeKey,
        /// The state it reported on.
        state: String,
    },
    /// The node is stopping.
    #[error("the node is stopping")]
    Stopping,
    /// Too many work messages already wait for the recipient ([`crate::driver::courier`]).
    #[error(transparent)]
    Backlogged(#[from] crate::driver::courier::Backlogged),
    /// The envelope that carried it with others was not delivered, for this reason.
    #[error("the envelope carrying it was not delivered: {0}")]
    Undelivered(String),
}

/// The event a committed Ledger command is, for the event bus: an attempt's end
/// (TaskCompletion) or a task handed up (ErrorEscalation).
fn task_event(command: &LedgerCommand) -> Option<Event> {
    match command {
        LedgerCommand::CompleteTask {
            key,
            attempt,
            result_digest,
            ..
        } => Some(Event::TaskCompletion {
            project: key.project.clone(),
            task: key.task.clone(),
            attempt: *attempt,
            outcome: aamas_protocol::TaskOutcome::Succeeded {
                result_digest: *result_digest,
            },
        }),
        LedgerCommand::FailTask {
            key,
            attempt,
            reason,
            ..
        } => Some(Event::TaskCompletion {
            project: key.project.clone(),
            task: key.task.clone(),
            attempt: *attempt,
            outcome: aamas_protocol::TaskOutcome::Failed {
                reason: reason.clone(),
            },
        }),
        LedgerCommand::EscalateTask { key, reason } => Some(Event::ErrorEscalation {
            project: Some(key.project.clone()),
            task: Some(key.task.clone()),
            error: reason.clone(),
            // Handed up by the governor: one level above the mayor.
            level: 1,
        }),
        _ => None,
    }
}

impl Node {
    /// Delivers `work` to `to` through the courier ([`crate::driver::courier`]): alone
    /// when nothing else waits for `to`, else in one envelope with what does. `Ok` once
    /// `to` acknowledged it.
    pub(crate) async fn send_work(&self, to: NodeKey, work: &Work) -> Result<(), WorkError> {
        if to == self.identity.node_key() {
            // To itself (one node holding several roles): no envelope, no network; judged
            // by the message rules all the same, so that what they allow does not depend
            // on which roles share a node.
            if let Err(reason) = self.judge_message(to, work.action()).await {
                return Err(crate::net::swarm::Unacked::Refused { reason }.into());
            }
            return Box::pin(self.handle_work(to, work.clone())).await;
        }
        let bytes = postcard::to_stdvec(work).map_err(WorkError::Encode)?;
        let lane = (to, work.kind() == MessageKind::Command);
        let (reply, answer) = tokio::sync::oneshot::channel();
        let parcel = Parcel {
            bytes,
            action: work.action(),
            reply,
        };
        if self.work.courier.queue(lane, parcel)? {
            let Some(node) = self.this.upgrade() else {
                return Err(WorkError::Stopping);
            };
            self.spawn(async move { node.carry(lane).await });
        }
        // The carriers ahead of it and its own delivery, each bounded by DELIVERY_TIMEOUT.
        let patience = DELIVERY_TIMEOUT * (u32::try_from(MAX_CARRIERS).unwrap_or(1) + 1);
        match tokio::time::timeout(patience, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(WorkError::Stopping),
            Err(_) => Err(WorkError::DeliveryTimedOut),
        }
    }

    /// A carrier of `lane`: delivers what waits in it, a batch per envelope, until
    /// nothing does, and hands each message its answer.
    async fn carry(self: Arc<Self>, lane: Lane) {
        while let Some(batch) = self.work.courier.next(lane) {
            let count = batch.len();
            let mut replies = Vec::with_capacity(count);
            let mut items = Vec::with_capacity(count);
            for parcel in batch {
                items.push((parcel.action, parcel.bytes));
                replies.push(parcel.reply);
            }
            self.metrics.work_batch_messages.observe(count as f64);
            match self.deliver(lane, items).await {
                Ok(answers) => {
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(match answer {
                            None => Ok(()),
                            Some(reason) => {
                                Err(crate::net::swarm::Unacked::Refused { reason }.into())
                            }
                        });
                    }
                }
                Err(error) => {
                    let reason = error.to_string();
                    let mut error = Some(error);
                    for reply in replies {
                        let error = error
                            .take()
                            .unwrap_or_else(|| WorkError::Undelivered(reason.clone()));
                        let _ = reply.send(Err(error));
                    }
                }
            }
        }
    }

    /// Seals `items` (action, postcard of a [`Work`]) for `lane`'s member in one envelope
    /// and delivers it: one answer per item, in order (`None`: acknowledged).
    async fn deliver(
        &self,
        (to, command): Lane,
        mut items: Vec<(&'static str, Vec<u8>)>,
    ) -> Result<Vec<Option<String>>, WorkError> {
        let count = items.len();
        let (action, body) = match items.as_mut_slice() {
            [(action, body)] => (*action, std::mem::take(body)),
            _ => {
                let bodies: Vec<&Vec<u8>> = items.iter().map(|(_, body)| body).collect();
                let body = postcard::to_stdvec(&bodies).map_err(WorkError::Encode)?;
                (BATCH_ACTION, body)
            }
        };
        let payload = if command {
            Payload::Command(Command {
                priority: Priority::Normal,
                action: action.into(),
                body,
            })
        } else {
            Payload::Report(Report {
                subject: action.into(),
                event: None,
                body,
            })
        };
        let recipient = self
            .registry(|registry| registry.members().get(&to).map(|member| member.identity))
            .await
            .flatten()
            .ok_or(WorkError::NotAMember(to))?;
        let bytes = self
            .seal(&self.topics.direct(), &payload, &[recipient])
            .map_err(WorkError::Seal)?;
        let peer = peer_id(&to).map_err(|_| WorkError::NotAMember(to))?;
        let addrs = self
            .book
            .get(crate::driver::runtime::node_id(&to))
            .map(|(_, addrs)| addrs)
            .unwrap_or_default();
        let request = self.handle.request(peer, addrs, Rpc::Envelope(bytes));
        let answer = tokio::time::timeout(DELIVERY_TIMEOUT, request)
            .await
            .map_err(|_| WorkError::DeliveryTimedOut)?;
        if count == 1 {
            return Ok(vec![match crate::net::swarm::acked(answer) {
                Ok(()) => None,
                Err(crate::net::swarm::Unacked::Refused { reason }) => Some(reason),
                Err(other) => return Err(other.into()),
            }]);
        }
        match answer.map_err(crate::net::swarm::Unacked::from)? {
            RpcResponse::Each(answers) if answers.len() == count => Ok(answers),
            RpcResponse::Refused { reason } => {
                Err(crate::net::swarm::Unacked::Refused { reason }.into())
            }
            other => Err(crate::net::swarm::Unacked::Unexpected {
                answer: format!("{other:?} to a batch of {count}"),
            }
            .into()),
        }
    }

    /// An envelope that arrived over request-response.
    pub(crate) async fn handle_envelope(&self, bytes: &[u8]) -> RpcResponse {
        let refused = |reason: String| RpcResponse::Refused { reason };
        let opened = match self.inbox.open_direct(
            &self.identity,
            now_ms(),
            &self.topics.direct(),
            bytes,
            &self.metrics,
        ) {
            Ok(opened) => opened,
            // Who this node takes commands from, for the sender (whose view differs).
            Err(reason @ crate::messaging::DirectRefused::Unauthorised(_)) => {
                return refused(format!(
                    "{reason} (this node takes commands from president {}; its Registry \
                     copy names {})",
                    self.inbox
                        .president()
                        .map_or("none".to_string(), |key| key.peer_id()),
                    self.president()
                        .map_or("none".to_string(), |(_, peer)| peer)
                ));
            }
            Err(reason) => return refused(reason.to_string()),
        };
        let (action, body) = match &opened.payload {
            Payload::Command(command) => (&command.action, &command.body),
            Payload::Report(report) => (&report.subject, &report.body),
            _ => return refused("not a work message".into()),
        };
        if action == BATCH_ACTION {
            return self
                .handle_batch(opened.header.sender, opened.header.kind, body)
                .await;
        }
        let work: Work = match postcard::from_bytes(body) {
            Ok(work) => work,
            Err(error) => return refused(format!("malformed work message: {error}")),
        };
        if let Some(refusal) = self.over_rate(opened.header.sender, 1) {
            return refusal;
        }
        if work.kind() != opened.header.kind {
            return refused("the work message does not match the envelope's kind".into());
        }
        if let Err(reason) = self
            .judge_message(opened.header.sender, work.action())
            .await
        {
            return refused(reason);
        }
        match self.handle_work(opened.header.sender, work).await {
            Ok(()) => RpcResponse::Ack,
            Err(reason) => refused(reason.to_string()),
        }
    }

    /// Takes `messages` from `sender`'s allowance under the communication policy; over
    /// it, the refusal to answer with (counted).
    fn over_rate(&self, sender: NodeKey, messages: u32) -> Option<RpcResponse> {
        let mut rate = self
            .rate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if rate.allow(&sender, messages, now_ms()) {
            return None;
        }
        let per_sec = rate.rule().messages_per_sec;
        drop(rate);
        tracing::debug!(sender = %sender.peer_id(), messages, per_sec, "work messages over the rate; refused");
        Some(self.refuse(&crate::roles::authority::Refusal::RateLimited { per_sec }))
    }

    /// Several work messages in one envelope (from a sender's courier): each handled as
    /// if it had come alone, all at once, and answered in order.
    async fn handle_batch(&self, sender: NodeKey, kind: MessageKind, body: &[u8]) -> RpcResponse {
        let items: Vec<Vec<u8>> = match postcard::from_bytes(body) {
            Ok(items) => items,
            Err(error) => {
                return RpcResponse::Refused {
                    reason: format!("malformed batch: {error}"),
                };
            }
        };
        if items.is_empty() || items.len() > MAX_BATCH_ITEMS {
            return RpcResponse::Refused {
                reason: format!(
                    "a batch of {} work messages (1 to {MAX_BATCH_ITEMS})",
                    items.len()
                ),
            };
        }
        let count = u32::try_from(items.len()).unwrap_or(u32::MAX);
        if let Some(refusal) = self.over_rate(sender, count) {
            return refusal;
        }
        let answers = items.iter().map(|item| async move {
            let work: Work = match postcard::from_bytes(item) {
                Ok(work) => work,
                Err(error) => return Some(format!("malformed work message: {error}")),
            };
            if work.kind() != kind {
                return Some("the work message does not match the envelope's kind".into());
            }
            if let Err(reason) = self.judge_message(sender, work.action()).await {
                return Some(reason);
            }
            self.handle_work(sender, work)
                .await
                .err()
                .map(|reason| reason.to_string())
        });
        RpcResponse::Each(futures::future::join_all(answers).await)
    }

    async fn handle_work(&self, sender: NodeKey, work: Work) -> Result<(), WorkError> {
        match work {
            Work::AssignTasks {
                project,
                phase,
                tasks,
            } => {
                self.governor_add_tasks(sender, &project, phase, tasks)
                    .await
            }
            Work::Propose { city, command } => self.governor_commit(sender, &city, command).await,
            Work::Execute {
                key,
                attempt,
                city,
                spec,
            } => self.worker_execute(sender, key, attempt, city, spec).await,
            Work::Outcome {
                key,
                attempt,
                city,
                result,
            } => {
                self.mayor_outcome(sender, key, attempt, &city, result)
                    .await
            }
            Work::Reopen {
                key,
                attempts,
                reopening,
            } => self.governor_reopen(sender, key, attempts, reopening).await,
            Work::Progress { state, projects } => {
                self.president_progress(sender, state, projects).await
            }
        }
    }

    /// The state (and its group) this node leads whose Ledger holds the task `key`.
    async fn governing_task(&self, key: &TaskKey) -> Option<(String, Group)> {
        for (state, group) in self.governed().await {
            let holds = group
                .read_local(|machine| {
                    machine
                        .ledger()
                        .is_some_and(|ledger| ledger.tasks().contains_key(key))
                })
                .await;
            if holds {
                return Some((state, group));
            }
        }
        None
    }

    /// The state whose group this node leads and that holds `city`.
    async fn governing_city(&self, city: &str) -> Option<(String, Group)> {
        for (state, group) in self.governed().await {
            let has = group
                .read_local(|machine| {
                    machine
                        .ledger()
                        .is_some_and(|ledger| ledger.cities().contains_key(city))
                })
                .await;
            if has {
                return Some((state, group));
            }
        }
        None
    }

    /// Commits `command` to `group`'s Ledger; `Ok(true)` when it changed the Ledger,
    /// `Ok(false)` when its effect was there already (a retry).
    pub(crate) async fn ledger_write(
        &self,
        group: &Group,
        key: &[&[u8]],
        command: LedgerCommand,
    ) -> Result<bool, WorkError> {
        let event = task_event(&command);
        let applied = self.ledger_request(group, request_id(key), command).await?;
        if applied && let Some(event) = event {
            let scope = match self.state_of_group(group.id()).await {
                Some(state) => Scope::State(state),
                None => Scope::All,
            };
            self.emit(event, scope).await;
        }
        Ok(applied)
    }

    /// Test hook: commits a second, different result for a task of a state this node
    /// governs, breaking the one-result invariant so that a checker can be seen to fail.
    /// Not reachable from the network, the API or the CLI.
    pub async fn overwrite_result(&self, project: &str, task: &str) -> Result<(), WorkError> {
        let key = TaskKey {
            project: project.to_string(),
            task: task.to_string(),
        };
        let Some((_, group)) = self.governing_task(&key).await else {
            return Err(WorkError::NotGoverned(key));
        };
        let command = LedgerCommand::OverwriteResult {
            key: key.clone(),
            result_digest: [0xEE; 32],
        };
        self.ledger_request(
            &group,
            request_id(&[b"overwrite", task.as_bytes()]),
            command,
        )
        .await
        .map(|_| ())
    }

    async fn ledger_request(
        &self,
        group: &Group,
        id: u128,
        command: LedgerCommand,
    ) -> Result<bool, WorkError> {
        let request = Request {
            id,
            command: RaftCommand::Ledger(command),
        };
        let committed = group
            .write(request)
            .await
            .map_err(|error| WorkError::NotCommitted(error.to_string()))?;
        // A retried request id (`duplicate`) answers what the first one did: applied
        // then, not now.
        match committed.response.outcome {
            Outcome::Ledger(LedgerResponse::Rejected { reason }) => {
                Err(WorkError::LedgerRejected { reason })
            }
            Outcome::Ledger(LedgerResponse::Conflict { reason }) => {
                Err(WorkError::LedgerConflict { reason })
            }
            Outcome::Ledger(LedgerResponse::Duplicate) => Ok(false),
            _ => Ok(!committed.response.duplicate),
        }
    }

    /// The president's key, when this node knows who it is.
    pub(crate) fn president_key(&self) -> Option<NodeKey> {
        self.president()
            .and_then(|(_, peer)| NodeKey::from_peer_id(&peer))
    }

    /// Answers a request to the governor: the core ([`crate::roles::governor::Governor::request`])
    /// judges it and names the writes; they are committed before the sender is
    /// acknowledged. A write the Ledger refused as done before (a task added twice) is
    /// no error.
    async fn governor_request(
        &self,
        request: crate::roles::governor::Request,
    ) -> Result<(), WorkError> {
        let president = self.president_key();
        let judged = crate::roles::governor::Governor::judge(request, president);
        let writes = judged.map_err(|refused| {
            self.metrics
                .rpc_refused
                .get_or_create(&crate::metrics::labels(&[("reason", refused.label())]))
                .inc();
            WorkError::Governor(refused)
        })?;
        let governed = self.governed().await;
        let commits = writes.into_iter().map(|write| {
            let group = governed
                .iter()
                .find(|(state, _)| *state == write.state)
                .map(|(_, group)| group.clone());
            async move {
                let group = group.ok_or(WorkError::NoLongerGovernor)?;
                let parts: Vec<&[u8]> = write.request.iter().map(Vec::as_slice).collect();
                self.ledger_write(&group, &parts, write.command).await
            }
        });
        // All at once: the group's batcher commits them in a few log entries.
        for result in futures::future::join_all(commits).await {
            match result {
                // Added before with other content: the first version stands.
                Err(WorkError::LedgerConflict { .. }) => {}
                Err(error) => return Err(error),
                Ok(_) => {}
            }
        }
        Ok(())
    }

    async fn governor_add_tasks(
        &self,
        sender: NodeKey,
        project: &str,
        phase: Phase,
        tasks: Vec<NewTask>,
    ) -> Result<(), WorkError> {
        // Tasks go to the state named by the first task; the president groups them so.
        let named = tasks
            .first()
            .and_then(|task| crate::spec::TaskSpec::decode(&task.spec).ok())
            .map(|spec| spec.state);
        let governed = self.governed().await;
        let state = named.filter(|state| governed.iter().any(|(name, _)| name == state));
        self.governor_request(crate::roles::governor::Request::AssignTasks {
            sender,
            state,
            project: project.to_string(),
            phase,
            tasks,
        })
        .await
    }

    async fn governor_reopen(
        &self,
        sender: NodeKey,
        key: TaskKey,
        attempts: u32,
        reopening: u32,
    ) -> Result<(), WorkError> {
        let state = self.governing_task(&key).await.map(|(state, _)| state);
        self.governor_request(crate::roles::governor::Request::Reopen {
            sender,
            state,
            key,
            attempts,
            reopening,
        })
        .await
    }

    async fn governor_commit(
        &self,
        sender: NodeKey,
        city: &str,
        command: LedgerCommand,
    ) -> Result<(), WorkError> {
        let now = now_ms();
        let (state, lease_holder) = match self.governing_city(city).await {
            Some((state, group)) => {
                let holder = group
                    .read_local(|machine| {
                        machine
                            .ledger()
                            .and_then(|ledger| ledger.mayor_at(city, now).map(|lease| lease.mayor))
                    })
                    .await;
                (Some(state), holder)
            }
            None => (None, None),
        };
        self.governor_request(crate::roles::governor::Request::Propose {
            sender,
            state,
            city: city.to_string(),
            lease_holder,
            command,
        })
        .await
    }

    /// Runs an attempt a mayor hands this worker, after [`crate::roles::authority::execute`]
    /// and a check of the spec: only from the mayor of the task's city, only an attempt
    /// the Ledger (as far as this node sees it) assigned here.
    async fn worker_execute(
        &self,
        sender: NodeKey,
        key: TaskKey,
        attempt: u32,
        city: String,
        spec: Vec<u8>,
    ) -> Result<(), WorkError> {
        let view = self.execute_view(&key, &city, now_ms()).await;
        let checked = crate::roles::authority::execute(
            sender,
            self.identity.node_key(),
            &city,
            attempt,
            &view,
        )
        .and_then(|()| {
            let spec = TaskSpec::decode(&spec).map_err(|error| {
                crate::roles::authority::Refusal::BadSpec {
                    reason: error.to_string(),
                }
            })?;
            spec.validate()
                .map_err(|error| crate::roles::authority::Refusal::BadSpec {
                    reason: error.to_string(),
                })?;
            if !self.work.executors.allows(&spec.executor) {
                return Err(crate::roles::authority::Refusal::ExecutorOff {
                    executor: spec.executor.kind(),
                });
            }
            Ok(spec)
        });
        match checked {
            Ok(spec) => {
                self.work
                    .inputs
                    .ask(|reply| Input::Execute {
                        mayor: sender,
                        key,
                        attempt,
                        city,
                        spec,
                        reply,
                    })
                    .await?
            }
            Err(refusal) => {
                self.metrics
                    .rpc_refused
                    .get_or_create(&crate::metrics::labels(&[("reason", refusal.label())]))
                    .inc();
                tracing::debug!(task = %key, %sender, %refusal, "refused an Execute");
                Err(WorkError::Refused(refusal))
            }
        }
    }

    /// Carries out the worker core's commands in the background: runs the executor of an
    /// attempt just taken (`spec` is its spec), or delivers an outcome to its mayor.
    pub(crate) fn worker_carry_out(
        self: &Arc<Self>,
        commands: Vec<WorkerCommand>,
        spec: Option<TaskSpec>,
    ) {
        use crate::roles::worker::Command;
        for command in commands {
            match command {
                Command::Run { key, attempt } => {
                    let Some(spec) = spec.clone() else { continue };
                    let node = self.clone();
                    self.spawn(async move { node.run_attempt(key, attempt, spec).await });
                }
                Command::Deliver {
                    key,
                    attempt,
                    city,
                    mayor,
                    outcome,
                } => {
                    let node = self.clone();
                    self.spawn(async move {
                        let work = Work::Outcome {
                            key: key.clone(),
                            attempt,
                            city: city.clone(),
                            result: outcome,
                        };
                        // The mayor that sent the attempt first: the Registry's record
                        // of a city's mayor lags a change of lease, and an outcome sent
                        // only there waited for the task's whole timeout.
                        let mut sent = node.send_work(mayor, &work).await;
                        if sent.is_err()
                            && let Some(now_mayor) = node.mayor_of(&city).await
                            && now_mayor != mayor
                        {
                            sent = node.send_work(now_mayor, &work).await;
                        }
                        match &sent {
                            Ok(()) => tracing::debug!(%key, attempt, "outcome delivered"),
                            Err(reason) => {
                                tracing::debug!(%key, attempt, %reason, "outcome not delivered yet")
                            }
                        }
                        let _ = node
                            .work
                            .inputs
                            .send(Input::OutcomeSent {
                                key,
                                attempt,
                                delivered: sent.is_ok(),
                            })
                            .await;
                    });
                }
                Command::GaveUp { key, attempt } => {
                    tracing::warn!(%key, attempt, "no mayor took the outcome in time; dropped");
                }
            }
        }
    }

    async fn run_attempt(self: Arc<Self>, key: TaskKey, attempt: u32, spec: TaskSpec) {
        let timeout = Duration::from_secs(spec.timeout_secs.max(1));
        let started = std::time::Instant::now();
        let mut result = match self.fill_input(&key.project, &spec).await {
            Ok(input) => {
                self.work
                    .executors
                    .run(&spec.executor, &spec.name, &input, timeout)
                    .await
            }
            Err(error) => Err(error),
        };
        self.count_attempt(spec.executor.kind(), &result, started.elapsed());
        // The whole output becomes an artefact, on disk here and on the state's voters,
        // before the outcome (with only its start) goes to the mayor.
        if let Ok(execution) = &result {
            let execution_used = execution.used();
            match self
                .keep_output(&key.project, &spec.state, execution.output.as_bytes())
                .await
            {
                Ok(digest) => {
                    if let Ok(execution) = &mut result {
                        execution.digest = Some(digest);
                        execution.stored_bytes = execution.output.len() as u64;
                    }
                }
                Err(failure) => {
                    tracing::warn!(%key, attempt, %failure, "the output was not kept");
                    result = Err(match failure {
                        // The task itself is at fault: running it again gives the same.
                        ArtifactFailure::TooLarge { .. } => ExecError::Failed {
                            reason: failure.to_string(),
                            used: execution_used,
                        },
                        _ => ExecError::Unavailable {
                            reason: format!("the output could not be kept: {failure}"),
                            used: execution_used,
                        },
                    });
                }
            }
        }
        if let Ok(execution) = &mut result
            && execution.output.len() > MAX_OUTCOME_OUTPUT
        {
            let mut end = MAX_OUTCOME_OUTPUT;
            while !execution.output.is_char_boundary(end) {
                end -= 1;
            }
            execution.output.truncate(end);
            execution.output_truncated = true;
        }
        let _ = self
            .work
            .inputs
            .send(Input::Finished {
                key,
                attempt,
                outcome: result,
            })
            .await;
    }

    /// Counts one attempt this node ran: its outcome, how long it took and the CPU it
    /// used ([`crate::metrics::Metrics::attempts`] and the two after it).
    fn count_attempt(&self, executor: &str, result: &Result<Execution, ExecError>, took: Duration) {
        let (outcome, used) = match result {
            Ok(execution) => ("succeeded", execution.used()),
            Err(error) => (error.kind(), error.used()),
        };
        let labels = crate::metrics::labels(&[("executor", executor), ("outcome", outcome)]);
        self.metrics.attempts.get_or_create(&labels).inc();
        self.metrics
            .attempt_cpu_seconds
            .get_or_create(&labels)
            .inc_by(used.cpu_ms as f64 / 1_000.0);
        self.metrics
            .attempt_seconds
            .get_or_create(&crate::metrics::labels(&[("executor", executor)]))
            .observe(took.as_secs_f64());
        let millis = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        self.metrics
            .tallies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(executor.to_string())
            .or_default()
            .add(outcome, millis, used.cpu_ms);
    }

    /// The task's input with each `{{ outputs.NAME }}` replaced by task NAME's artefact
    /// (the spec check allowed only its dependencies and tasks of earlier phases). A
    /// missing or oversized output fails the attempt with the task's name: as
    /// unavailable (retried) when no holder answered, else as failed.
    async fn fill_input(&self, project: &str, spec: &TaskSpec) -> Result<String, ExecError> {
        let refs = crate::spec::output_refs(&spec.input);
        let context: &[String] = match &spec.executor {
            crate::spec::ExecutorSpec::Llm { context, .. } => context,
            _ => &[],
        };
        if refs.is_empty() && context.is_empty() {
            return Ok(spec.input.clone());
        }
        let cap = self.artifacts.max_bytes;
        let mut outputs: BTreeMap<String, String> = BTreeMap::new();
        let mut total = spec.input.len();
        let names = refs
            .iter()
            .map(|(_, name)| *name)
            .chain(context.iter().map(String::as_str));
        for name in names {
            if outputs.contains_key(name) {
                continue;
            }
            let reading =
                |reason: String| format!("task {} reads the output of {name}: {reason}", spec.name);
            let bytes = match self.artifact(project, name).await {
                Ok(bytes) => bytes,
                Err(failure @ ArtifactFailure::Unavailable { .. }) => {
                    return Err(ExecError::Unavailable {
                        reason: reading(failure.to_string()),
                        used: Usage::default(),
                    });
                }
                Err(failure) => {
                    return Err(ExecError::Failed {
                        reason: reading(failure.to_string()),
                        used: Usage::default(),
                    });
                }
            };
            total = total.saturating_add(bytes.len());
            if total > cap {
                return Err(ExecError::Failed {
                    reason: reading(format!(
                        "the input with the outputs it reads is over {cap} bytes \
                         (aamas node --max-artifact-bytes)"
                    )),
                    used: Usage::default(),
                });
            }
            let text = String::from_utf8(bytes).map_err(|_| ExecError::Failed {
                reason: reading("the output is not UTF-8 text".into()),
                used: Usage::default(),
            })?;
            outputs.insert(name.to_string(), text);
        }
        let filled = crate::spec::fill_outputs(&spec.input, |name| {
            outputs.get(name).cloned().ok_or(ExecError::Failed {
                reason: format!(
                    "task {} reads the output of {name}, which was not read",
                    spec.name
                ),
                used: Usage::default(),
            })
        })?;
        if context.is_empty() {
            return Ok(filled);
        }
        // Context first, each output under its task's name, then the task itself.
        let mut prompt = String::with_capacity(total + 64 * (context.len() + 1));
        prompt.push_str("Outputs of earlier tasks, for context:\n");
        for name in context {
            let output = outputs.get(name.as_str()).map_or("", String::as_str);
            prompt.push_str(&format!("\n=== Output of task {name} ===\n{output}\n"));
        }
        prompt.push_str("\n=== Your task ===\n");
        prompt.push_str(&filled);
        Ok(prompt)
    }

    /// Wakes the work roles whenever a group open here applies an entry, and the duties
    /// ([`Node::note_change`]) when it also changes leader: one watcher per group,
    /// ending with the group.
    fn watch_groups(self: &Arc<Self>, watched: &mut BTreeSet<aamas_consensus::GroupId>) {
        for id in self.groups.ids() {
            if watched.contains(&id) {
                continue;
            }
            let Some(group) = self.groups.get(id) else {
                continue;
            };
            watched.insert(id);
            let mut metrics = group.raft().metrics();
            let wake = self.work_wake.clone();
            let node = self.clone();
            self.spawn(async move {
                let seen = |metrics: &openraft::RaftMetrics<_, _>| {
                    (metrics.last_applied, metrics.current_leader)
                };
                let (mut applied, mut leader) = seen(&metrics.borrow());
                while metrics.changed().await.is_ok() {
                    let (now_applied, now_leader) = seen(&metrics.borrow());
                    if now_applied != applied {
                        applied = now_applied;
                        wake.notify_one();
                        node.note_change();
                    }
                    if now_leader != leader {
                        leader = now_leader;
                        node.note_change();
                    }
                }
                let _ = node.work.inputs.send(Input::Unwatched(id)).await;
            });
        }
    }

    /// The worker's duty: outcomes whose delivery is due again, or given up.
    fn worker_tick(self: &Arc<Self>, worker: &mut crate::roles::worker::Worker<AttemptOutcome>) {
        let _ = worker.handle(now_ms(), crate::roles::worker::Input::Tick);
        if cfg!(debug_assertions) {
            worker.validate();
        }
        let commands: Vec<WorkerCommand> = worker.drain().collect();
        if !commands.is_empty() {
            self.worker_carry_out(commands, None);
        }
    }

    /// What this worker knows about who may hand it `key`'s attempts in `city`: the
    /// Registry's mayor record, and its own replica of the state's Ledger when it has one.
    async fn execute_view(
        &self,
        key: &TaskKey,
        city: &str,
        now: u64,
    ) -> crate::roles::authority::ExecuteView {
        let mayor_of_record = self.mayor_of(city).await;
        let mut ledger = None;
        for id in self.groups.ids() {
            let Some(group) = self.groups.get(id) else {
                continue;
            };
            ledger = group
                .read_local(|machine| {
                    let ledger = machine.ledger()?;
                    ledger.cities().get(city)?;
                    Some(crate::roles::authority::LedgerSeen {
                        lease_holder: ledger.mayor_at(city, now).map(|lease| lease.mayor),
                        assigned: ledger
                            .tasks()
                            .get(key)
                            .map(|task| (task.attempt, task.worker)),
                    })
                })
                .await;
            if ledger.is_some() {
                break;
            }
        }
        crate::roles::authority::ExecuteView {
            mayor_of_record,
            ledger,
        }
    }

    /// The mayor of `city` as the Registry records it.
    async fn mayor_of(&self, city: &str) -> Option<NodeKey> {
        self.registry(|registry| {
            registry
                .states()
                .values()
                .filter_map(|info| info.governor.as_ref())
                .find_map(|record| record.mayors.get(city).copied().flatten())
        })
        .await
        .flatten()
    }

    async fn mayor_outcome(
        &self,
        sender: NodeKey,
        key: TaskKey,
        attempt: u32,
        city: &str,
        result: Result<Execution, ExecError>,
    ) -> Result<(), WorkError> {
        let group = self
            .mayor_group(city, now_ms())
            .await
            .ok_or(WorkError::NotTheMayor)?;
        let task = group
            .read_local(|machine| {
                machine
                    .ledger()
                    .and_then(|ledger| ledger.tasks().get(&key).cloned())
            })
            .await
            .ok_or_else(|| WorkError::NoSuchTask(key.clone()))?;
        // This replica has not seen the assignment yet: the worker retries shortly.
        if task.attempt < attempt {
            return Err(WorkError::Behind);
        }
        // A stale attempt (reassigned since) or another worker's: its outcome no longer
        // counts. Acknowledge so the worker stops retrying.
        if task.attempt != attempt
            || task.worker != Some(sender)
            || task.status != TaskStatus::Assigned
        {
            tracing::debug!(
                %key, attempt, current = task.attempt, status = ?task.status,
                "the outcome of an attempt that no longer counts: acknowledged, dropped"
            );
            return Ok(());
        }
        self.note_outcome(sender, &key.to_string(), attempt, result.is_ok())
            .await;
        // What the attempt used is charged before its outcome commits, once (a repeated
        // charge is a duplicate): a mayor reading the Ledger never sees a finished
        // attempt whose use is not yet counted against the state's limits. A failed or
        // timed-out attempt is charged what it used as well.
        let used = match &result {
            Ok(execution) => execution.used(),
            Err(error) => error.used(),
        };
        if !used.is_zero() && task.charged < attempt {
            let charge = LedgerCommand::ChargeAttempt {
                key: key.clone(),
                attempt,
                used,
                now_ms: now_ms(),
            };
            self.propose_to_governor(&group, city, charge).await?;
        }
        let command = match &result {
            Ok(execution) => LedgerCommand::CompleteTask {
                key: key.clone(),
                attempt,
                result_digest: result_digest(execution),
                usage: execution.usage.as_ref().map(|usage| TaskUsage {
                    model: usage
                        .model
                        .chars()
                        .take(aamas_consensus::ledger::MAX_MODEL_NAME_BYTES / 4)
                        .collect(),
                    prompt_tokens: usage.prompt_tokens,
                    completion_tokens: usage.completion_tokens,
                    cost_micros: usage.cost_micros,
                }),
            },
            Err(error) => {
                self.work
                    .inputs
                    .send(Input::FailedOn {
                        key: key.clone(),
                        worker: sender,
                    })
                    .await?;
                // At most 400 bytes, cut at a character boundary (`ExecError::reason`).
                let reason = error.reason();
                LedgerCommand::FailTask {
                    key: key.clone(),
                    attempt,
                    reason,
                    transient: error.retryable(),
                }
            }
        };
        let proposed = self.propose_to_governor(&group, city, command).await;
        tracing::debug!(%key, attempt, ok = proposed.is_ok(), "an outcome proposed to the governor");
        proposed
    }

    /// Whether this node holds the lease of `city` in `group`'s Ledger at `now`.
    async fn holds_lease(&self, group: &Group, city: &str, now: u64) -> bool {
        let me = self.identity.node_key();
        group
            .read_local(|machine| {
                machine
                    .ledger()
                    .and_then(|ledger| ledger.mayor_at(city, now))
                    .is_some_and(|lease| lease.mayor == me)
            })
            .await
    }

    /// The state group (open here) whose city `city` this node holds the lease of.
    async fn mayor_group(&self, city: &str, now: u64) -> Option<Group> {
        for id in self.groups.ids() {
            if let Some(group) = self.groups.get(id)
                && self.holds_lease(&group, city, now).await
            {
                return Some(group);
            }
        }
        None
    }

    /// The member that leads `group` (its governor), as far as this node knows.
    async fn group_leader_key(&self, group: &Group) -> Option<NodeKey> {
        let leader = group.leader()?;
        self.registry(|registry| {
            registry
                .active_members()
                .map(|(key, _)| *key)
                .find(|key| self.id_of(key) == leader)
        })
        .await
        .flatten()
    }

    async fn propose_to_governor(
        &self,
        group: &Group,
        city: &str,
        command: LedgerCommand,
    ) -> Result<(), WorkError> {
        let governor = self
            .group_leader_key(group)
            .await
            .ok_or(WorkError::NoGovernor)?;
        let work = Work::Propose {
            city: city.to_string(),
            command,
        };
        self.send_work(governor, &work).await
    }

    async fn president_progress(
        &self,
        sender: NodeKey,
        state: String,
        projects: Vec<StateProgress>,
    ) -> Result<(), WorkError> {
        if self.president().map(|(id, _)| id) != Some(self.me()) {
            return Err(WorkError::NotThePresident);
        }
        let governor = self
            .registry(|registry| {
                registry
                    .states()
                    .get(&state)
                    .and_then(|info| info.governor.as_ref().map(|g| g.node))
            })
            .await
            .flatten();
        // A governor that won an election a moment ago may not be recorded yet; any
        // voter of the state may report, the state's Ledger decides what is true.
        let voter = self
            .registry(|registry| {
                registry.states().get(&state).is_some_and(|info| {
                    info.governor
                        .as_ref()
                        .is_some_and(|g| g.voters.contains(&sender))
                        || info
                            .group
                            .as_ref()
                            .is_some_and(|g| g.voters.contains(&sender))
                })
            })
            .await
            .unwrap_or(false);
        if governor != Some(sender) && !voter {
            return Err(WorkError::NotItsGovernor { sender, state });
        }
        self.work
            .inputs
            .send(Input::Progress { state, projects })
            .await
    }

    /// One round of every work role this node holds.
    pub(crate) async fn work_round(self: &Arc<Self>, cores: &mut Cores) {
        if let Some(policy) = self.policy().await {
            self.rate
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .set_rule(policy.communication);
            if *cores.worker.priorities() != policy.resources.priority {
                cores
                    .worker
                    .set_priorities(policy.resources.priority.clone());
            }
        }
        self.watch_groups(&mut cores.watched);
        self.worker_tick(&mut cores.worker);
        let mut roles: BTreeSet<Role> = self.mayor_tick(cores).await;
        self.governor_work_tick(&mut cores.governor).await;
        self.president_work_tick(&mut cores.president).await;
        if self.president().map(|(id, _)| id) == Some(self.me()) {
            roles.insert(Role::President);
        }
        for (state, _) in self.governed().await {
            roles.insert(Role::Governor { state });
        }
        let changes = crate::events::role_changes(&cores.roles, &roles);
        self.on_duty
            .store(!roles.is_empty(), std::sync::atomic::Ordering::Relaxed);
        cores.roles = roles;
        for change in changes {
            if let BusEvent::RoleChange { role, gained } = &change {
                tracing::info!(?role, gained, "role changed");
            }
            self.events.publish(now_ms(), change, &self.metrics);
        }
    }

    /// The mayor's duty: hands the core ([`crate::roles::mayor::Mayor`]) a look at the cities
    /// this node holds the lease of, and carries out what it asks. Returns those cities.
    async fn mayor_tick(self: &Arc<Self>, cores: &mut Cores) -> BTreeSet<Role> {
        let now = now_ms();
        let me = self.identity.node_key();
        let mut states: Vec<crate::roles::mayor::StateTasks> = Vec::new();
        let mut groups: BTreeMap<String, Group> = BTreeMap::new();
        let mut held: BTreeSet<Role> = BTreeSet::new();
        let mut soft = Vec::new();
        // The policy, its dispatch rules and the workers' facts for them: looked up once
        // per tick, once a city has tasks (the facts only when the policy has such rules).
        let mut policy: Option<Arc<Policy>> = None;
        let mut dispatch: Option<Arc<BTreeMap<NodeKey, WorkerFacts>>> = None;
        let mut policy_looked = false;
        for id in self.groups.ids() {
            let Some(state) = self.state_of_group(id).await else {
                continue;
            };
            let Some(group) = self.groups.get(id) else {
                continue;
            };
            // The cities whose lease this node holds, and each one's tasks: its assigned
            // ones, and the pending ones that hash to it among the state's cities; and
            // every worker's running tasks in the state.
            let (mine, running, budget) = group
                .read_local(|machine| {
                    let mut running: BTreeMap<NodeKey, u32> = BTreeMap::new();
                    let Some(ledger) = machine.ledger() else {
                        return (Vec::new(), running, (Budget::Free, None));
                    };
                    let budget = match ledger.spent_limit() {
                        Some(spent) => Budget::Spent(spent),
                        None if ledger.limits().0.values().any(|l| l.hard) => Budget::Limited,
                        None => Budget::Free,
                    };
                    let budget = (budget, ledger.soft_limit_reached());
                    let all: Vec<String> = ledger.cities().keys().cloned().collect();
                    type Open = Vec<(TaskKey, aamas_consensus::ledger::Task)>;
                    let mut mine: BTreeMap<&str, Open> = all
                        .iter()
                        .filter(|city| {
                            ledger
                                .mayor_at(city, now)
                                .is_some_and(|lease| lease.mayor == me)
                        })
                        .map(|city| (city.as_str(), Vec::new()))
                        .collect();
                    // Most members of a state hold no city: they need no look at all.
                    if mine.is_empty() {
                        return (Vec::new(), running, budget);
                    }
                    // One pass over the tasks, each to its city.
                    for (key, task) in ledger.tasks() {
                        let city = match task.status {
                            TaskStatus::Pending => crate::roles::cities::city_for(key, &all),
                            TaskStatus::Assigned => {
                                if let Some(worker) = task.worker {
                                    *running.entry(worker).or_default() += 1;
                                }
                                task.city.as_deref()
                            }
                            _ => None,
                        };
                        if let Some(open) = city.and_then(|city| mine.get_mut(city)) {
                            open.push((key.clone(), task.clone()));
                        }
                    }
                    let mine: Vec<(String, Open)> = mine
                        .into_iter()
                        .map(|(city, open)| (city.to_string(), open))
                        .collect();
                    (mine, running, budget)
                })
                .await;
            let (budget, soft_reached) = budget;
            if let (false, Some(reached)) = (mine.is_empty(), soft_reached) {
                soft.push((state.clone(), reached));
            }
            // A city's lease makes its holder the mayor, whatever its queue.
            for (city, _) in &mine {
                held.insert(Role::Mayor {
                    state: state.clone(),
                    city: city.clone(),
                });
            }
            if mine.iter().all(|(_, tasks)| tasks.is_empty()) {
                continue;
            }
            if !policy_looked {
                policy_looked = true;
                policy = self.policy().await;
                if let Some(policy) = &policy {
                    dispatch = self.dispatch_rules(policy).await;
                }
            }
            let (held_cities, spent_workers, scoped_hard) = match &policy {
                Some(policy) => self.scoped_spent(policy, &state, &group, &mine).await,
                None => Default::default(),
            };
            let budget = match budget {
                Budget::Free if scoped_hard => Budget::Limited,
                budget => budget,
            };
            // A spent hard limit holds the pending tasks back, and asks the governor for
            // more; under a hard limit each worker runs one task of the state at a time.
            if let Budget::Spent(spent) = budget {
                let waiting = mine
                    .iter()
                    .flat_map(|(_, tasks)| tasks)
                    .filter(|(_, task)| task.status == TaskStatus::Pending)
                    .count();
                let governor = self.group_leader_key(&group).await;
                if let (true, Some(governor)) = (waiting > 0, governor) {
                    self.ask_for_resources(&state, governor, spent, waiting);
                }
            }
            // Every member can work; the state's own members come first.
            let workers: BTreeMap<NodeKey, Worker> = self
                .registry(|registry| {
                    registry
                        .active_members()
                        .map(|(key, member)| {
                            let capacity = match budget {
                                Budget::Free => member.capacity,
                                Budget::Limited | Budget::Spent(_) => member.capacity.min(1),
                            };
                            let worker = Worker {
                                skills: member.skills.clone(),
                                capacity,
                                in_state: member.state.as_deref() == Some(state.as_str()),
                            };
                            (*key, worker)
                        })
                        .collect()
                })
                .await
                .unwrap_or_default();
            for (city, _) in &mine {
                groups.insert(city.clone(), group.clone());
            }
            let rules = policy
                .as_ref()
                .zip(dispatch.as_ref())
                .map(|(policy, workers)| {
                    Arc::new(crate::roles::mayor::DispatchRules {
                        policy: policy.clone(),
                        state: state.clone(),
                        workers: workers.clone(),
                    })
                });
            states.push(crate::roles::mayor::StateTasks {
                workers,
                load: running,
                cities: mine,
                hold: matches!(budget, Budget::Spent(_)),
                rules,
                held_cities,
                spent_workers,
            });
        }
        for (state, reached) in soft {
            self.alert_soft_limit(&state, reached);
        }
        let alive: BTreeSet<NodeKey> = if states.is_empty() {
            BTreeSet::new()
        } else {
            self.alive_members().await
        };
        cores.mayor.handle(
            now,
            crate::roles::mayor::Input::Tick {
                states: &states,
                alive: &alive,
            },
        );
        if cfg!(debug_assertions) {
            cores.mayor.validate();
        }
        let commands: Vec<crate::roles::mayor::Command> = cores.mayor.drain().collect();
        if commands.is_empty() {
            return held;
        }
        // Specs by task, built only on ticks that have something to carry out.
        let tasks: HashMap<&TaskKey, &aamas_consensus::ledger::Task> = states
            .iter()
            .flat_map(|state| state.cities.iter())
            .flat_map(|(_, tasks)| tasks.iter().map(|(key, task)| (key, task)))
            .collect();
        let spec_of = |key: &TaskKey| tasks.get(key).map(|task| task.spec.clone());
        for command in commands {
            self.carry_out(&mut cores.sending, command, &groups, &spec_of, None);
        }
        held
    }

    /// Carries out one of the mayor core's commands in the background: a proposal to the
    /// governor of `groups[city]`, or an Execute to a worker, with the spec `spec_of` gives.
    pub(crate) fn carry_out(
        self: &Arc<Self>,
        sending: &mut BTreeSet<(TaskKey, u32, Sending)>,
        command: crate::roles::mayor::Command,
        groups: &BTreeMap<String, Group>,
        spec_of: &dyn Fn(&TaskKey) -> Option<Vec<u8>>,
        started: Option<std::time::Instant>,
    ) {
        use crate::roles::mayor::Command;
        match command {
            Command::Propose {
                city,
                command,
                then_execute,
            } => {
                let (key, attempt) = match &command {
                    LedgerCommand::AssignTask { key, attempt, .. }
                    | LedgerCommand::FailTask { key, attempt, .. } => (key.clone(), *attempt),
                    _ => return,
                };
                let Some(group) = groups.get(&city) else {
                    return;
                };
                let execute = match then_execute {
                    Some(worker) => match spec_of(&key) {
                        Some(spec) => Some((worker, spec)),
                        None => return,
                    },
                    None => None,
                };
                if sending.insert((key.clone(), attempt, Sending::Proposal)) {
                    self.spawn_proposal(group, &city, (key, attempt), command, execute);
                }
            }
            Command::Judged { fired } => {
                let fired = fired
                    .iter()
                    .map(|(rule, outcome)| (rule.as_str(), *outcome));
                self.count_fired(crate::governance::policy::Point::Dispatch, fired);
            }
            Command::Execute {
                city,
                worker,
                key,
                attempt,
            } => {
                if let Some(spec) = spec_of(&key)
                    && sending.insert((key.clone(), attempt, Sending::Execute))
                {
                    self.spawn_execute(worker, key, attempt, &city, spec, started);
                }
            }
        }
    }

    /// Proposes `command` to the governor in the background; once an assignment is
    /// committed, the driver tells the mayor core, which hands the attempt to its worker
    /// (`execute`) without waiting for the next round.
    fn spawn_proposal(
        self: &Arc<Self>,
        group: &Group,
        city: &str,
        slot: (TaskKey, u32),
        command: LedgerCommand,
        execute: Option<(NodeKey, Vec<u8>)>,
    ) {
        let (key, attempt) = slot;
        let node = self.clone();
        let group = group.clone();
        let city = city.to_string();
        let started = std::time::Instant::now();
        self.spawn(async move {
            let proposed = node.propose_to_governor(&group, &city, command).await;
            let committed = match proposed {
                Ok(()) => {
                    tracing::debug!(task = %key, attempt, "proposal committed");
                    execute.map(|(worker, spec)| Committed {
                        city,
                        worker,
                        spec,
                        group,
                        started,
                    })
                }
                Err(reason) => {
                    tracing::debug!(task = %key, %reason, "proposal not taken yet");
                    None
                }
            };
            let _ = node
                .work
                .inputs
                .send(Input::Proposed {
                    key,
                    attempt,
                    committed,
                })
                .await;
        });
    }

    fn spawn_execute(
        self: &Arc<Self>,
        worker: NodeKey,
        key: TaskKey,
        attempt: u32,
        city: &str,
        spec: Vec<u8>,
        started: Option<std::time::Instant>,
    ) {
        let node = self.clone();
        let city = city.to_string();
        self.spawn(async move {
            let work = Work::Execute {
                key: key.clone(),
                attempt,
                city,
                spec,
            };
            let sent = node.send_work(worker, &work).await;
            match &sent {
                Ok(()) => {
                    tracing::debug!(task = %key, attempt, "execute taken");
                    if let Some(started) = started {
                        node.metrics
                            .dispatch_seconds
                            .observe(started.elapsed().as_secs_f64());
                    }
                }
                Err(reason) => tracing::debug!(task = %key, %reason, "execute not delivered yet"),
            }
            let _ = node
                .work
                .inputs
                .send(Input::ExecuteSent {
                    key,
                    attempt,
                    delivered: sent.is_ok(),
                })
                .await;
        });
    }

    /// The governor's duty: hands the core ([`crate::roles::governor::Governor`]) a look at each
    /// state this node governs, and carries out what it asks in the background.
    async fn governor_work_tick(self: &Arc<Self>, governor: &mut crate::roles::governor::Governor) {
        let now = now_ms();
        let governed = self.governed().await;
        if governed.is_empty() {
            return;
        }
        let candidates = self.candidates().await;
        let mut looks = Vec::with_capacity(governed.len());
        for (state, group) in &governed {
            let (tasks, cities) = group
                .read_local(|machine| {
                    machine
                        .ledger()
                        .map(|ledger| {
                            let tasks: BTreeMap<TaskKey, crate::roles::governor::TaskLook> = ledger
                                .tasks()
                                .iter()
                                .map(|(key, task)| (key.clone(), task.into()))
                                .collect();
                            (tasks, ledger.cities().clone())
                        })
                        .unwrap_or_default()
                })
                .await;
            let named: BTreeSet<&str> = tasks.keys().map(|key| key.project.as_str()).collect();
            let projects: BTreeMap<String, bool> = self
                .registry(|registry| {
                    named
                        .iter()
                        .filter_map(|project| {
                            let listed = registry.projects().get(*project)?;
                            Some((
                                (*project).to_string(),
                                listed.status == ProjectStatus::Running,
                            ))
                        })
                        .collect()
                })
                .await
                // Without a copy of the Registry nothing counts as archived.
                .unwrap_or_else(|| named.iter().map(|p| ((*p).to_string(), true)).collect());
            let voters = group.voters();
            let eligible = candidates
                .iter()
                .filter(|c| voters.contains(&crate::driver::runtime::node_id(&c.key)))
                .cloned()
                .collect();
            looks.push(crate::roles::governor::StateLook {
                state: state.clone(),
                tasks,
                cities,
                projects,
                eligible,
            });
        }
        self.sync_limits(&governed).await;
        if let Some(policy) = self.policy().await {
            governor.set_scaling(policy.scaling);
        }
        let president = self.president_key();
        governor.handle(
            now,
            crate::roles::governor::Input::Tick {
                states: &looks,
                president,
            },
        );
        if cfg!(debug_assertions) {
            governor.validate();
        }
        let commands: Vec<crate::roles::governor::Command> = governor.drain().collect();
        for command in commands {
            self.governor_carry_out(command, &governed);
        }
    }

    /// Carries out one of the governor core's commands in the background; its completion
    /// goes back to the core.
    fn governor_carry_out(
        self: &Arc<Self>,
        command: crate::roles::governor::Command,
        governed: &[(String, Group)],
    ) {
        use crate::roles::governor::Command;
        let node = self.clone();
        match command {
            Command::Write(write) => {
                let group = governed
                    .iter()
                    .find(|(state, _)| *state == write.state)
                    .map(|(_, group)| group.clone());
                self.spawn(async move {
                    let result = match group {
                        Some(group) => {
                            let parts: Vec<&[u8]> =
                                write.request.iter().map(Vec::as_slice).collect();
                            node.ledger_write(&group, &parts, write.command.clone())
                                .await
                        }
                        None => Err(WorkError::NoLongerGovernor),
                    };
                    match &result {
                        Ok(_) => tracing::debug!(state = write.state, command = ?write.command, "committed"),
                        Err(reason) => {
                            tracing::debug!(state = write.state, %reason, "ledger write not committed")
                        }
                    }
                    let _ = node
                        .work
                        .inputs
                        .send(Input::Written {
                            slot: write.slot,
                            committed: result.is_ok(),
                        })
                        .await;
                });
            }
            Command::Report {
                president,
                state,
                progress,
            } => {
                self.spawn(async move {
                    let project = progress.project.clone();
                    let work = Work::Progress {
                        state: state.clone(),
                        projects: vec![progress],
                    };
                    let sent = node.send_work(president, &work).await;
                    if let Err(reason) = &sent {
                        tracing::debug!(state, %reason, "progress not delivered");
                    }
                    let _ = node
                        .work
                        .inputs
                        .send(Input::Reported {
                            state,
                            project,
                            acknowledged: sent.is_ok(),
                        })
                        .await;
                });
            }
        }
    }

    /// The president's duty: hands the core ([`crate::roles::president::President`]) the running
    /// projects and the states' governors, and carries out what it asks in the background.
    async fn president_work_tick(
        self: &Arc<Self>,
        president: &mut crate::roles::president::President,
    ) {
        if self.president().map(|(id, _)| id) != Some(self.me()) {
            return;
        }
        // The policy in force, read once for the round.
        let policy = self.policy().await;
        self.scale_check(policy.as_ref().map(|p| p.scaling).unwrap_or_default())
            .await;
        if let Some(policy) = policy {
            // Requests that waited for a pool to renew, the states of higher priority
            // first.
            if let Err(error) = self.arbitrate_requests(&policy, None).await {
                tracing::debug!(%error, "arbitrating ResourceRequests failed");
            }
            self.rebalance_states(&policy.scaling, &president.open_tasks_by_state())
                .await;
            president.set_policy(policy);
        }
        let now = now_ms();
        type Running = (
            String,
            Phase,
            Vec<u8>,
            Option<PhaseProgress>,
            BTreeMap<Phase, aamas_consensus::registry::PhaseGate>,
            NodeKey,
        );
        let looked: Option<(Vec<Running>, BTreeMap<String, NodeKey>)> = self
            .registry(|registry| {
                let running = registry
                    .projects()
                    .iter()
                    .filter(|(_, project)| project.status == ProjectStatus::Running)
                    .map(|(id, project)| {
                        (
                            id.clone(),
                            project.phase,
                            project.spec.clone(),
                            project.progress.get(&project.phase).copied(),
                            project.gates.clone(),
                            project.owner,
                        )
                    })
                    .collect();
                let governors = registry
                    .states()
                    .iter()
                    .filter_map(|(name, info)| Some((name.clone(), info.governor.as_ref()?.node)))
                    .collect();
                (running, governors)
            })
            .await;
        let Some((running, governors)) = looked else {
            return;
        };
        let specs: Vec<Option<ProjectSpec>> = running
            .iter()
            .map(|(_, _, spec, _, _, _)| ProjectSpec::from_bytes(spec).ok())
            .collect();
        let projects: Vec<crate::roles::president::RunningProject<'_>> = running
            .iter()
            .zip(&specs)
            .map(|((id, phase, _, recorded, gates, owner), spec)| {
                crate::roles::president::RunningProject {
                    id,
                    phase: *phase,
                    spec: spec.as_ref(),
                    recorded: *recorded,
                    gates,
                    owner: *owner,
                }
            })
            .collect();
        president.handle(
            now,
            crate::roles::president::Input::Tick {
                projects: &projects,
                governors: &governors,
            },
        );
        if cfg!(debug_assertions) {
            president.validate();
        }
        let commands: Vec<crate::roles::president::Command> = president.drain().collect();
        for command in commands {
            self.president_carry_out(command);
        }
    }

    /// Carries out one of the president core's commands in the background; its
    /// completion goes back to the core.
    fn president_carry_out(self: &Arc<Self>, command: crate::roles::president::Command) {
        use crate::roles::president::Command;
        let node = self.clone();
        match command {
            Command::Propose {
                slot,
                request,
                command,
                announce,
            } => self.spawn(async move {
                let parts: Vec<&[u8]> = request.iter().map(Vec::as_slice).collect();
                let transition = match &command {
                    RegistryCommand::AdvancePhase { id, from, .. } => Some((
                        id.clone(),
                        if from.next().is_some() {
                            "advanced"
                        } else {
                            "completed"
                        },
                    )),
                    RegistryCommand::FailProject { id, .. } => Some((id.clone(), "failed")),
                    _ => None,
                };
                match node.propose(&parts, command).await {
                    Ok(()) => {
                        if let Some((project, outcome)) = transition {
                            node.count_transition(&project, outcome).await;
                        }
                        if let Some(event) = announce {
                            if let Event::PhaseTransition { project, from, .. } = &event {
                                tracing::info!(
                                    project,
                                    from = from.map(|phase| phase.as_str()),
                                    "phase complete"
                                );
                            }
                            node.emit(event, Scope::All).await;
                        }
                    }
                    Err(error) => tracing::debug!(%error, "a president's proposal failed"),
                }
                let _ = node
                    .work
                    .inputs
                    .send(Input::PresidentProposed { slot })
                    .await;
            }),
            Command::AssignTasks {
                governor,
                project,
                phase,
                state,
                tasks,
            } => self.spawn(async move {
                let work = Work::AssignTasks {
                    project: project.clone(),
                    phase,
                    tasks,
                };
                let sent = node.send_work(governor, &work).await;
                if let Err(reason) = &sent {
                    tracing::debug!(%reason, "tasks not assigned yet");
                }
                let _ = node
                    .work
                    .inputs
                    .send(Input::Assigned {
                        project,
                        phase,
                        state,
                        delivered: sent.is_ok(),
                    })
                    .await;
            }),
            Command::Reopen {
                governor,
                key,
                attempts,
                reopening,
            } => self.spawn(async move {
                tracing::info!(task = %key, reopening, "reassigning an escalated task");
                let work = Work::Reopen {
                    key,
                    attempts,
                    reopening,
                };
                if let Err(reason) = node.send_work(governor, &work).await {
                    tracing::debug!(%reason, "reopening not delivered yet");
                }
            }),
            Command::Read {
                project,
                phase,
                reading,
                task,
            } => self.spawn(async move {
                let output = node.output_text(&project, &task).await;
                let _ = node
                    .work
                    .inputs
                    .send(Input::Read {
                        project,
                        phase,
                        reading,
                        output,
                    })
                    .await;
            }),
            Command::Judged { at, fired } => {
                for (rule, outcome) in &fired {
                    tracing::info!(
                        rule,
                        at = at.as_str(),
                        outcome = outcome.as_str(),
                        "policy rule fired"
                    );
                }
                self.count_fired(
                    at,
                    fired
                        .iter()
                        .map(|(rule, outcome)| (rule.as_str(), *outcome)),
                );
            }
        }
    }

    /// Counts a phase transition the president committed, and the project's time from
    /// submission when it ended (seed §7.1: phase transition success rate, project
    /// completion times).
    async fn count_transition(&self, project: &str, outcome: &'static str) {
        self.metrics
            .phase_transitions
            .get_or_create(&crate::metrics::labels(&[("outcome", outcome)]))
            .inc();
        if outcome == "advanced" {
            return;
        }
        let submitted = self
            .registry(|registry| registry.projects().get(project).map(|p| p.submitted_ms))
            .await
            .flatten();
        if let Some(submitted) = submitted {
            let took_ms = now_ms().saturating_sub(submitted);
            self.metrics
                .project_seconds
                .get_or_create(&crate::metrics::labels(&[("status", outcome)]))
                .observe(took_ms as f64 / 1_000.0);
        }
    }

    /// A gate or planning task's output as text, or `None` (logged with why) when it is
    /// not readable yet.
    async fn output_text(&self, project: &str, task: &str) -> Option<String> {
        match self.artifact(project, task).await {
            Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
            Err(failure) => {
                tracing::debug!(%project, %task, %failure, "a task's output is not readable yet");
                None
            }
        }
    }
}

impl TaskSpec {
    /// postcard.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// From postcard.
    pub fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::governance::policy::Escalation;
    use crate::spec::{ExecutorSpec, SHELL_SKILL};

    /// The largest outcome a worker sends (output at the cap, every character multi-byte,
    /// the longest failure reason aside) is sealed, travels and is opened by the mayor.
    #[test]
    fn an_outcome_with_output_at_the_cap_is_delivered() {
        use aamas_protocol::{Identity, MeshId, Outgoing, Sealer, To};
        let mesh = MeshId::random().expect("random");
        let (worker, mayor) = (
            Identity::generate().expect("identity"),
            Identity::generate().expect("identity"),
        );
        let output = "é".repeat(MAX_OUTCOME_OUTPUT / 2);
        assert_eq!(output.len(), MAX_OUTCOME_OUTPUT);
        let work = Work::Outcome {
            key: TaskKey {
                project: "p".repeat(64),
                task: "t".repeat(64),
            },
            attempt: u32::MAX,
            city: "c".repeat(64),
            result: Ok(Execution {
                output,
                output_truncated: true,
                digest: None,
                usage: None,
                cpu_ms: 0,
                memory_kib_s: 0,
                stored_bytes: 0,
            }),
        };
        let payload = Payload::Report(Report {
            subject: work.action().into(),
            event: None,
            body: postcard::to_stdvec(&work).expect("encode"),
        });
        let topics = crate::messaging::Topics::new(mesh);
        let now = 1_000_000;
        let to = [mayor.public()];
        let sealed = Sealer::new(mesh, crate::messaging::envelope_limits(), now)
            .seal(
                &worker,
                now,
                Outgoing {
                    topic: &topics.direct(),
                    payload: &payload,
                    to: To::Members(&to),
                    ttl_ms: 60_000,
                },
            )
            .expect("an outcome at the cap seals");
        assert!(sealed.bytes.len() <= crate::net::wire::MAX_RPC_BYTES);
        let inbox = crate::messaging::Inbox::new(mesh);
        inbox.update(
            &[worker.public(), mayor.public()],
            crate::messaging::Authority::default(),
        );
        let metrics = crate::metrics::Metrics::default();
        let opened = inbox
            .open_direct(&mayor, now, &topics.direct(), &sealed.bytes, &metrics)
            .expect("the mayor opens it");
        assert_eq!(opened.payload, payload);
    }

    fn key(n: u8) -> NodeKey {
        NodeKey([n; 32])
    }

    fn task(skill: Option<&str>, depends_on: &[&str], name: &str) -> TaskSpec {
        TaskSpec {
            name: name.into(),
            state: "technical".into(),
            skill: skill.map(str::to_string),
            executor: ExecutorSpec::Builtin {
                action: "noop".into(),
            },
            input: String::new(),
            depends_on: depends_on.iter().map(|d| d.to_string()).collect(),
            timeout_secs: 60,
            retries: 2,
            budget: 0,
        }
    }

    fn worker(skills: &[&str], in_state: bool) -> Worker {
        Worker {
            skills: skills.iter().map(|s| s.to_string()).collect(),
            capacity: 2,
            in_state,
        }
    }

    #[test]
    fn workers_are_picked_by_state_failure_skill_and_load() {
        let workers = BTreeMap::from([
            (key(1), worker(&[], true)),
            (key(2), worker(&["rust"], true)),
            (key(3), worker(&["rust"], false)),
        ]);
        let none = BTreeSet::new();
        let idle = BTreeMap::new();
        let all = |_: &NodeKey| true;
        let spec = task(Some("rust"), &[], "t");
        let wanted = Wanted {
            needs: None,
            prefers: spec.skill.as_deref(),
        };
        assert_eq!(
            pick_worker(wanted, &workers, &none, &idle, &none, all),
            Some(key(2))
        );
        // Failed there before: elsewhere, even outside the state.
        let failed = BTreeSet::from([key(2)]);
        assert_eq!(
            pick_worker(wanted, &workers, &failed, &idle, &none, all),
            Some(key(1))
        );
        // Full: skipped.
        let full = BTreeMap::from([(key(2), 2)]);
        assert_eq!(
            pick_worker(wanted, &workers, &none, &full, &none, all),
            Some(key(1))
        );
        // Only a member of another state is alive: it works for this state.
        let only_three = |k: &NodeKey| *k == key(3);
        assert_eq!(
            pick_worker(wanted, &workers, &none, &idle, &none, only_three),
            Some(key(3))
        );
        assert_eq!(
            pick_worker(wanted, &workers, &none, &idle, &none, |_: &NodeKey| false),
            None
        );
        // The policy denies the state's own workers: one of another state runs it.
        let own = BTreeSet::from([key(1), key(2)]);
        assert_eq!(
            pick_worker(wanted, &workers, &none, &idle, &own, all),
            Some(key(3))
        );
    }

    #[test]
    fn a_shell_task_goes_only_to_a_worker_that_runs_shell() {
        let workers = BTreeMap::from([
            (key(1), worker(&[], true)),
            (key(2), worker(&["rust"], true)),
            (key(3), worker(&[SHELL_SKILL], false)),
        ]);
        let none = BTreeSet::new();
        let idle = BTreeMap::new();
        let all = |_: &NodeKey| true;
        let shell = Wanted {
            needs: Some(SHELL_SKILL),
            prefers: Some("rust"),
        };
        // The state's own workers cannot run it: a member of another state that can
        // does, whatever the preferred skill.
        assert_eq!(
            pick_worker(shell, &workers, &none, &idle, &none, all),
            Some(key(3))
        );
        // Failed there before: still there, since no one else can.
        let failed = BTreeSet::from([key(3)]);
        assert_eq!(
            pick_worker(shell, &workers, &failed, &idle, &none, all),
            Some(key(3))
        );
        // Full or dead: no one, though others are free.
        let full = BTreeMap::from([(key(3), 2)]);
        assert_eq!(pick_worker(shell, &workers, &none, &full, &none, all), None);
        assert_eq!(
            pick_worker(shell, &workers, &none, &idle, &none, |k: &NodeKey| *k
                != key(3)),
            None
        );
        // A task that needs nothing stays in its state.
        assert_eq!(
            pick_worker(Wanted::default(), &workers, &none, &idle, &none, all),
            Some(key(1))
        );
    }

    #[test]
    fn the_president_reassigns_faults_of_the_moment_once_and_fails_the_rest() {
        let report = |reason: &str, transient: bool, reopened: u32| TaskReport {
            status: TaskStatus::Escalated,
            attempt: 3,
            reason: Some(reason.to_string()),
            transient,
            reopened,
        };
        let lost = "failed after every attempt: the worker was lost";
        assert_eq!(
            decide(&report(lost, true, 0), &Escalation::default()),
            Decision::Reassign
        );
        assert_eq!(
            decide(&report(lost, true, 1), &Escalation::default()),
            Decision::FailPhase
        );
        let exit = "failed after every attempt: task failed: exit status 3";
        assert_eq!(
            decide(&report(exit, false, 0), &Escalation::default()),
            Decision::FailPhase
        );
        // A task whose own output says "busy" or "timed out" failed on its merits.
        let printed = "failed after every attempt: task failed: busy, timed out, unavailable";
        assert_eq!(
            decide(&report(printed, false, 0), &Escalation::default()),
            Decision::FailPhase
        );
    }

    /// The failure's type, not its words, says whether it was a fault of the moment.
    #[test]
    fn only_timeouts_and_unreachable_services_are_transient() {
        use crate::exec::ExecError;
        assert!(
            ExecError::Timeout {
                after_ms: 1,
                used: Usage::default()
            }
            .retryable()
        );
        assert!(
            ExecError::Unavailable {
                reason: "connection refused".into(),
                used: Usage::default(),
            }
            .retryable()
        );
        let printed = ExecError::Failed {
            reason: "exit status 1: busy, timed out".into(),
            used: Usage::default(),
        };
        assert!(!printed.retryable());
        assert!(
            !ExecError::Misconfigured {
                reason: "no model".into()
            }
            .retryable()
        );
    }

    #[test]
    fn tasks_start_when_their_dependencies_succeeded() {
        let phase = crate::spec::PhaseSpec {
            phase: Phase::Design,
            tasks: vec![
                task(None, &[], "a"),
                task(None, &["a"], "b"),
                task(None, &["a", "b"], "c"),
            ],
            acceptance: Vec::new(),
            gate: crate::spec::GateSpec::default(),
            plan: None,
        };
        let names =
            |tasks: Vec<&TaskSpec>| tasks.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
        let empty = BTreeSet::new();
        assert_eq!(names(ready_tasks(&phase, &empty, &empty)), ["a"]);
        let known = BTreeSet::from(["a"]);
        assert!(ready_tasks(&phase, &known, &empty).is_empty());
        assert_eq!(names(ready_tasks(&phase, &known, &known)), ["b"]);
        let both = BTreeSet::from(["a", "b"]);
        assert_eq!(names(ready_tasks(&phase, &both, &both)), ["c"]);
    }
}
