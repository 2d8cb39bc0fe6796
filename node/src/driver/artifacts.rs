//! Artefacts between nodes: a worker keeps a task's output on disk and has it copied to
//! the voters of the task's state before it reports the result; any member reads an
//! artefact from whoever holds it, in chunks.
//!
//! ```text
//!   worker: output ─► put (local) ─► Replicate{project, digest, size} ─► each state voter
//!                                     (the bytes inline when they fit in one chunk, else
//!                                     voter: ArtifactRange × n ◄── pulls from the worker),
//!                                            checks the digest, puts, answers Ack
//!           ─► outcome to the mayor once REPLICAS_WANTED voters hold it
//!   reader: Ledger copy or a voter's ProjectTasks ─► digest ─► ArtifactRange × n from a holder
//! ```
//!
//! Every transfer is bounded: chunks of [`ARTIFACT_CHUNK_BYTES`], artefacts of at most the
//! node's `max_artifact_bytes`, at most [`PULLS_AT_ONCE`] pulls served at once (more are
//! refused as busy, and the worker tries again), and every wait has a limit.

use std::collections::BTreeSet;
use std::time::Duration;

use aamas_consensus::artifacts::{ArtifactDigest, Artifacts, artifact_digest, hex};
use aamas_protocol::NodeKey;

use crate::driver::projects::TaskView;
use crate::driver::runtime::Node;
use crate::net::wire::{Rpc, RpcResponse};

/// Bytes of an artefact per message.
pub const ARTIFACT_CHUNK_BYTES: u32 = 256 << 10;
/// The largest output a task may produce unless the node is told otherwise
/// (`aamas node --max-artifact-bytes`); a larger one fails its task.
pub const DEFAULT_MAX_ARTIFACT_BYTES: usize = 4 << 20;
/// Copies besides the worker's that must exist before a result is reported (fewer when
/// the state has fewer other voters): with the worker's own, three, so that an artefact
/// outlives the loss of its worker and of one more node.
pub const REPLICAS_WANTED: usize = 2;
/// How long a worker keeps trying to place the copies before the attempt fails (as
/// unavailable: it is retried, possibly elsewhere).
pub const REPLICATION_LIMIT: Duration = Duration::from_secs(30);
/// How long one chunk or one copy request may take.
const ARTIFACT_ASK_LIMIT: Duration = Duration::from_secs(10);
/// How often a node looks for artefacts of projects that left the Registry.
pub const ARTIFACT_SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How long a project must have been absent from this node's Registry copy before its
/// artefacts are removed: archiving takes a project out of the Registry, and a copy
/// that lags (a mirror catching up) must not cost a project its artefacts.
pub const ARTIFACT_ABSENT_FOR: Duration = Duration::from_secs(600);
/// Holders asked when no state has voters yet.
const FALLBACK_HOLDERS: usize = 3;
/// Pulls this node serves at once for copies (each holds up to one artefact in memory).
pub const PULLS_AT_ONCE: usize = 8;
/// How often a state voter looks for artefacts of its state that it lacks.
pub const ARTIFACT_REPAIR_EVERY: Duration = Duration::from_secs(5);
/// Artefacts a voter pulls in one repair round at most.
pub const REPAIRS_PER_ROUND: usize = 16;
/// The longest a voter waits before trying again to repair an artefact it could not get
/// (the wait doubles from [`ARTIFACT_REPAIR_EVERY`]).
pub const REPAIR_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Artefacts whose failed repairs a voter remembers (more: it forgets them all and
/// starts again).
const MAX_REPAIR_FAILURES: usize = 4_096;

/// Repairs that failed: when each may be tried again, and how many times it failed.
pub type RepairFailures = std::sync::Mutex<
    std::collections::HashMap<(String, ArtifactDigest), (std::time::Instant, u32)>,
>;

/// Why an artefact could not be kept, copied or read.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactFailure {
    /// The output is larger than the node's cap.
    #[error(
        "the output is {size} bytes, over the artefact cap of {cap} bytes (aamas node --max-artifact-bytes)"
    )]
    TooLarge {
        /// Its size.
        size: u64,
        /// The cap.
        cap: usize,
    },
    /// Local storage failed.
    #[error(transparent)]
    Storage(#[from] aamas_consensus::artifacts::ArtifactError),
    /// Not enough voters took a copy in time.
    #[error("only {held} of {wanted} copies were placed in time: {last}")]
    NotReplicated {
        /// Copies placed.
        held: usize,
        /// Copies wanted.
        wanted: usize,
        /// The last failure seen.
        last: String,
    },
    /// No holder had it (or every holder failed).
    #[error("no member that should hold the artefact {digest} answered with it: {last}")]
    Unavailable {
        /// The digest (hex).
        digest: String,
        /// The last failure seen.
        last: String,
    },
    /// The task has no committed result (or the project has no such task).
    #[error("{0}")]
    NoResult(String),
    /// This node is busy serving copies.
    #[error("busy: this member is pulling as many copies as it takes at once; try again")]
    Busy,
}

/// Why asking a member about an artefact, or pulling one from it, failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The member did not answer.
    #[error(transparent)]
    Ask(#[from] crate::driver::runtime::AskError),
    /// The member refused, with its reason.
    #[error("{0}")]
    Refused(String),
    /// An answer of the wrong kind.
    #[error("unexpected answer {0}")]
    Unexpected(String),
    /// The artefact is larger than this node takes.
    #[error("the artefact is {total} bytes, over this node's cap of {cap}")]
    TooLarge {
        /// Its size, as the holder says.
        total: u64,
        /// This node's cap.
        cap: usize,
    },
    /// The holder sent an empty chunk before the end.
    #[error("the holder sent an empty chunk before the end")]
    EmptyChunk,
    /// The bytes do not hash to the digest asked for.
    #[error("the bytes hash to {found}, not to {wanted}")]
    WrongDigest {
        /// Their digest (hex).
        found: String,
        /// The digest asked for (hex).
        wanted: String,
    },
}

/// A node's artefacts and the limits of moving them.
#[derive(Debug)]
pub struct ArtifactState {
    pub(crate) store: Artifacts,
    pub(crate) max_bytes: usize,
    pulls: tokio::sync::Semaphore,
}

impl ArtifactState {
    /// The artefacts in `store`, outputs of at most `max_bytes`.
    pub fn new(store: Artifacts, max_bytes: usize) -> Self {
        Self {
            store,
            max_bytes,
            pulls: tokio::sync::Semaphore::new(PULLS_AT_ONCE),
        }
    }
}

/// One artefact of a project, as `GET /api/v1/projects/{id}/artifacts` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ArtifactView {
    /// The task that produced it.
    pub task: String,
    /// The task's state.
    pub state: String,
    /// The task's phase.
    pub phase: String,
    /// Hex SHA-256 of the bytes (the task's committed result).
    pub digest: String,
}

fn parse_digest(hex_text: &str) -> Option<ArtifactDigest> {
    if hex_text.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex_text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(digest)
}

impl Node {
    /// Keeps a task's output here and copies it to the voters of `state` (or, without
    /// such voters, of every state); returns its digest once [`REPLICAS_WANTED`]
    /// of them hold it, or why not within [`REPLICATION_LIMIT`].
    pub(crate) async fn keep_output(
        &self,
        project: &str,
        state: &str,
        output: &[u8],
    ) -> Result<ArtifactDigest, ArtifactFailure> {
        let cap = self.artifacts.max_bytes;
        if output.len() > cap {
            return Err(ArtifactFailure::TooLarge {
                size: output.len() as u64,
                cap,
            });
        }
        let digest = artifact_digest(output);
        // Nothing to lose: any member can give the empty artefact.
        if output.is_empty() {
            return Ok(digest);
        }
        let started = std::time::Instant::now();
        self.artifacts.store.put(project, &digest, output)?;
        let targets = self.artifact_targets(Some(state)).await;
        let wanted = REPLICAS_WANTED.min(targets.len());
        let mut held: BTreeSet<NodeKey> = BTreeSet::new();
        let mut last = String::from("no voter answered");
        let deadline = tokio::time::Instant::now() + REPLICATION_LIMIT;
        let mut backoff = Duration::from_millis(50);
        while held.len() < wanted {
            let asks = targets
                .iter()
                .filter(|key| !held.contains(*key))
                .map(|key| {
                    let rpc = Rpc::Replicate {
                        project: project.to_string(),
                        digest,
                        size: output.len() as u64,
                        inline: (output.len() <= ARTIFACT_CHUNK_BYTES as usize)
                            .then(|| output.to_vec()),
                    };
                    async move { (*key, self.artifact_ask(*key, rpc).await) }
                });
            for (key, answer) in futures::future::join_all(asks).await {
                match answer {
                    Ok(RpcResponse::Ack) => {
                        held.insert(key);
                    }
                    Ok(RpcResponse::Refused { reason }) => last = reason,
                    Ok(other) => last = CopyError::Unexpected(format!("{other:?}")).to_string(),
                    Err(reason) => last = reason.to_string(),
                }
            }
            if held.len() >= wanted {
                break;
            }
            if tokio::time::Instant::now() + backoff > deadline {
                return Err(ArtifactFailure::NotReplicated {
                    held: held.len(),
                    wanted,
                    last,
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        self.metrics
            .artifact_copy_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.artifact_bytes_kept.inc_by(output.len() as u64);
        tracing::debug!(project, digest = %hex(&digest), copies = held.len(), "output kept");
        Ok(digest)
    }

    /// Who should hold the artefacts of `state`: its voters as the governor reported
    /// them and as the group was founded. Without a state (or when it has no voters):
    /// the voters of every state, else the first [`FALLBACK_HOLDERS`] active members by
    /// key (a mesh with no state group yet). This node is left out.
    async fn artifact_targets(&self, state: Option<&str>) -> Vec<NodeKey> {
        let me = self.identity.node_key();
        self.registry(|registry| {
            let voters_of = |wanted: Option<&str>| {
                let mut keys: BTreeSet<NodeKey> = BTreeSet::new();
                let states = registry
                    .states()
                    .iter()
                    .filter(|(name, _)| wanted.is_none_or(|wanted| wanted == name.as_str()));
                for (_, info) in states {
                    if let Some(governor) = &info.governor {
                        keys.extend(governor.voters.iter().copied());
                    }
                    if let Some(group) = &info.group {
                        keys.extend(group.voters.iter().copied());
                    }
                }
                keys.retain(|key| *key != me && registry.is_active(key));
                keys
            };
            let mut keys = voters_of(state);
            if keys.is_empty() && state.is_some() {
                keys = voters_of(None);
            }
            if keys.is_empty() {
                keys = registry
                    .active_members()
                    .map(|(key, _)| *key)
                    .filter(|key| *key != me)
                    .take(FALLBACK_HOLDERS)
                    .collect();
            }
            keys.into_iter().collect()
        })
        .await
        .unwrap_or_default()
    }

    /// Sends `rpc` to member `key` with [`ARTIFACT_ASK_LIMIT`].
    async fn artifact_ask(&self, key: NodeKey, rpc: Rpc) -> Result<RpcResponse, CopyError> {
        Ok(self.ask_within(&key, rpc, ARTIFACT_ASK_LIMIT).await?)
    }

    /// Pulls an artefact of `size` bytes (at most the cap) from `from`, chunk by chunk,
    /// and checks its digest.
    async fn pull(
        &self,
        from: NodeKey,
        project: &str,
        digest: &ArtifactDigest,
    ) -> Result<Vec<u8>, CopyError> {
        let mut bytes: Vec<u8> = Vec::new();
        loop {
            let rpc = Rpc::ArtifactRange {
                project: project.to_string(),
                digest: *digest,
                offset: bytes.len() as u64,
                max: ARTIFACT_CHUNK_BYTES,
            };
            match self.artifact_ask(from, rpc).await? {
                RpcResponse::ArtifactRange {
                    total,
                    bytes: chunk,
                } => {
                    if total > self.artifacts.max_bytes as u64 {
                        return Err(CopyError::TooLarge {
                            total,
                            cap: self.artifacts.max_bytes,
                        });
                    }
                    if chunk.is_empty() && (bytes.len() as u64) < total {
                        return Err(CopyError::EmptyChunk);
                    }
                    bytes.extend_from_slice(&chunk);
                    if bytes.len() as u64 >= total {
                        break;
                    }
                }
                RpcResponse::Refused { reason } => return Err(CopyError::Refused(reason)),
                other => return Err(CopyError::Unexpected(format!("{other:?}"))),
            }
        }
        let found = artifact_digest(&bytes);
        if found != *digest {
            return Err(CopyError::WrongDigest {
                found: hex(&found),
                wanted: hex(digest),
            });
        }
        Ok(bytes)
    }

    /// [`Rpc::Replicate`]: keeps the artefact that came inline, or pulls it from the
    /// member that asks.
    pub(crate) async fn handle_replicate(
        &self,
        from: NodeKey,
        project: String,
        digest: ArtifactDigest,
        size: u64,
        inline: Option<Vec<u8>>,
    ) -> RpcResponse {
        let refused = |reason: String| RpcResponse::Refused { reason };
        // Small enough to come with the request: checked against the digest by the put.
        if let Some(bytes) = inline {
            if bytes.len() > ARTIFACT_CHUNK_BYTES as usize || bytes.len() as u64 != size {
                return refused(format!(
                    "an inline copy must be its whole artefact, of at most {ARTIFACT_CHUNK_BYTES} bytes"
                ));
            }
            return match self.artifacts.store.put(&project, &digest, &bytes) {
                Ok(()) => RpcResponse::Ack,
                Err(error) => refused(error.to_string()),
            };
        }
        match self.artifacts.store.has(&project, &digest) {
            Ok(true) => return RpcResponse::Ack,
            Ok(false) => {}
            Err(error) => return refused(error.to_string()),
        }
        if size > self.artifacts.max_bytes as u64 {
            return refused(
                ArtifactFailure::TooLarge {
                    size,
                    cap: self.artifacts.max_bytes,
                }
                .to_string(),
            );
        }
        let Ok(_permit) = self.artifacts.pulls.try_acquire() else {
            return refused(ArtifactFailure::Busy.to_string());
        };
        let bytes = match self.pull(from, &project, &digest).await {
            Ok(bytes) => bytes,
            Err(reason) => return refused(format!("pulling the artefact failed: {reason}")),
        };
        match self.artifacts.store.put(&project, &digest, &bytes) {
            Ok(()) => RpcResponse::Ack,
            Err(error) => refused(error.to_string()),
        }
    }

    /// [`Rpc::ArtifactRange`]: a bounded range of an artefact held here.
    pub(crate) fn handle_artifact_range(
        &self,
        project: &str,
        digest: &ArtifactDigest,
        offset: u64,
        max: u32,
    ) -> RpcResponse {
        let max = max.min(ARTIFACT_CHUNK_BYTES) as usize;
        match self.artifacts.store.range(project, digest, offset, max) {
            Ok(Some((total, bytes))) => RpcResponse::ArtifactRange { total, bytes },
            Ok(None) => RpcResponse::Refused {
                reason: format!("this member does not hold artefact {}", hex(digest)),
            },
            Err(error) => RpcResponse::Refused {
                reason: error.to_string(),
            },
        }
    }

    /// Removes the artefacts of projects absent from the Registry for
    /// [`ARTIFACT_ABSENT_FOR`] (archived); `absent` remembers since when.
    pub(crate) async fn sweep_artifacts(
        &self,
        absent: &std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    ) {
        let held = match self.artifacts.store.projects() {
            Ok(held) => held,
            Err(error) => {
                tracing::warn!(%error, "cannot list the artefacts kept here");
                return;
            }
        };
        let Some(known) = self
            .registry(|registry| registry.projects().keys().cloned().collect::<BTreeSet<_>>())
            .await
        else {
            return;
        };
        let now = std::time::Instant::now();
        let due: Vec<String> = {
            let mut absent = absent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            absent.retain(|project, _| held.contains(project) && !known.contains(project));
            for project in held.iter().filter(|project| !known.contains(*project)) {
                absent.entry(project.clone()).or_insert(now);
            }
            absent
                .iter()
                .filter(|(_, since)| now.duration_since(**since) >= ARTIFACT_ABSENT_FOR)
                .map(|(project, _)| project.clone())
                .collect()
        };
        for project in due {
            match self.artifacts.store.remove_project(&project) {
                Ok(count) => {
                    tracing::info!(
                        project,
                        count,
                        "removed the artefacts of an archived project"
                    );
                    absent
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .remove(&project);
                }
                Err(error) => tracing::warn!(project, %error, "cannot remove artefacts"),
            }
        }
    }

    /// Where this node votes in a state group, pulls the artefacts of that state's
    /// succeeded tasks (of projects still in the Registry) that it does not hold, at
    /// most [`REPAIRS_PER_ROUND`] a round. A voter that replaced a dead one thus comes to
    /// hold what its predecessor held, and an artefact's copies do not dwindle as voters
    /// come and go (a worker places them on the voters of the moment only).
    pub(crate) async fn repair_artifacts(&self, failures: &RepairFailures) {
        let me = self.me();
        let now = std::time::Instant::now();
        let due = |project: &str, digest: &ArtifactDigest| {
            failures
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&(project.to_owned(), *digest))
                .is_none_or(|(next, _)| *next <= now)
        };
        let Some(known) = self
            .registry(|registry| registry.projects().keys().cloned().collect::<BTreeSet<_>>())
            .await
        else {
            return;
        };
        let empty = artifact_digest(b"");
        let mut missing: Vec<(String, String, ArtifactDigest)> = Vec::new();
        for group in self.groups.ids() {
            if group == aamas_consensus::FEDERAL_GROUP {
                continue;
            }
            let Some(open) = self.groups.get(group) else {
                continue;
            };
            if !open.voters().contains(&me) {
                continue;
            }
            let results: Vec<(String, String, ArtifactDigest)> = open
                .read_local(|machine| {
                    machine
                        .ledger()
                        .map(|ledger| {
                            ledger
                                .tasks()
                                .iter()
                                .filter(|(key, _)| known.contains(&key.project))
                                .filter_map(|(key, task)| {
                                    let digest = task.result_digest?;
                                    Some((key.project.clone(), key.task.clone(), digest))
                                })
                                .filter(|(_, _, digest)| *digest != empty)
                                .collect()
                        })
                        .unwrap_or_default()
                })
                .await;
            for (project, task, digest) in results {
                if missing.len() >= REPAIRS_PER_ROUND {
                    break;
                }
                if matches!(self.artifacts.store.has(&project, &digest), Ok(false))
                    && due(&project, &digest)
                {
                    missing.push((project, task, digest));
                }
            }
        }
        for (project, task, digest) in missing {
            let kept = match self.artifact(&project, &task).await {
                Ok(bytes) => self
                    .artifacts
                    .store
                    .put(&project, &digest, &bytes)
                    .map_err(|error| error.to_string()),
                Err(failure) => Err(failure.to_string()),
            };
            let mut failed = failures
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match kept {
                Ok(()) => {
                    failed.remove(&(project.clone(), digest));
                    self.metrics.artifacts_repaired.inc();
                    tracing::info!(
                        project,
                        task,
                        "took a copy of an artefact this voter lacked"
                    );
                }
                Err(reason) => {
                    tracing::debug!(project, task, reason, "could not repair an artefact yet");
                    if failed.len() >= MAX_REPAIR_FAILURES {
                        failed.clear();
                    }
                    let entry = failed.entry((project, digest)).or_insert((now, 0));
                    entry.1 = entry.1.saturating_add(1);
                    let wait = ARTIFACT_REPAIR_EVERY
                        .saturating_mul(1 << entry.1.min(8))
                        .min(REPAIR_BACKOFF_MAX);
                    entry.0 = std::time::Instant::now() + wait;
                }
            }
        }
    }

    /// The project's tasks: from the Ledger copies on this node, and for the other
    /// states from one of their voters ([`Rpc::ProjectTasks`]).
    pub async fn project_tasks_anywhere(&self, project: &str) -> Vec<TaskView> {
        let mut tasks = self.project_tasks(project).await;
        let have: BTreeSet<String> = tasks.iter().map(|task| task.state.clone()).collect();
        let states: Vec<(String, Vec<NodeKey>)> = self
            .registry(|registry| {
                registry
                    .states()
                    .iter()
                    .filter(|(name, _)| !have.contains(*name))
                    .map(|(name, info)| (name.clone(), info.known_voters()))
                    .collect()
            })
            .await
            .unwrap_or_default();
        let asks = states.into_iter().map(|(state, voters)| async move {
            for voter in voters {
                let rpc = Rpc::ProjectTasks {
                    project: project.to_string(),
                };
                if let Ok(RpcResponse::Tasks(found)) = self.artifact_ask(voter, rpc).await {
                    return found
                        .into_iter()
                        .filter(|task| task.state == state)
                        .collect();
                }
            }
            Vec::new()
        });
        for found in futures::future::join_all(asks).await {
            tasks.extend(found);
        }
        tasks.sort_by(|a, b| a.name.cmp(&b.name));
        tasks
    }

    /// The tasks in `state` of each of `projects`, with their project: from this node's
    /// copy of the state's Ledger when it holds one, else from the state's voters (the
    /// first that answers, for each project; eight projects asked at a time).
    pub async fn state_tasks(&self, state: &str, projects: &[String]) -> Vec<(String, TaskView)> {
        use futures::StreamExt as _;
        let mut local = false;
        for group in self.groups.ids() {
            if self.state_of_group(group).await.as_deref() == Some(state) {
                local = true;
                break;
            }
        }
        let voters: Vec<NodeKey> = if local {
            Vec::new()
        } else {
            self.registry(|registry| {
                registry
                    .states()
                    .get(state)
                    .map(|info| info.known_voters())
                    .unwrap_or_default()
            })
            .await
            .unwrap_or_default()
        };
        let asks: Vec<_> = projects
            .iter()
            .map(|project| self.tasks_in_state(project.clone(), state, local, &voters))
            .collect();
        futures::stream::iter(asks)
            .buffer_unordered(8)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// The tasks of `project` in `state`: from this node's copy when `local`, else from
    /// the first of `voters` that answers.
    async fn tasks_in_state(
        &self,
        project: String,
        state: &str,
        local: bool,
        voters: &[NodeKey],
    ) -> Vec<(String, TaskView)> {
        let mut found = Vec::new();
        if local {
            found = self.project_tasks(&project).await;
        } else {
            for voter in voters {
                let rpc = Rpc::ProjectTasks {
                    project: project.clone(),
                };
                if let Ok(RpcResponse::Tasks(tasks)) = self.artifact_ask(*voter, rpc).await {
                    found = tasks;
                    break;
                }
            }
        }
        found
            .into_iter()
            .filter(|task| task.state == state)
            .map(|task| (project.clone(), task))
            .collect()
    }

    /// The artefacts of a project: one per task with a committed result.
    pub async fn project_artifacts(&self, project: &str) -> Vec<ArtifactView> {
        self.project_tasks_anywhere(project)
            .await
            .into_iter()
            .filter_map(|task| {
                Some(ArtifactView {
                    digest: task.result?,
                    task: task.name,
                    state: task.state,
                    phase: task.phase,
                })
            })
            .collect()
    }

    /// The bytes of `task`'s artefact: from this node, or pulled from a holder (the
    /// state's voters, the task's worker, every state's voters) and checked against the
    /// digest the Ledger committed.
    pub async fn artifact(&self, project: &str, task: &str) -> Result<Vec<u8>, ArtifactFailure> {
        let tasks = self.project_tasks_anywhere(project).await;
        let Some(view) = tasks.into_iter().find(|view| view.name == task) else {
            return Err(ArtifactFailure::NoResult(format!(
                "project {project} has no task {task} (or no member of its state answered)"
            )));
        };
        let Some(digest) = view.result.as_deref().and_then(parse_digest) else {
            return Err(ArtifactFailure::NoResult(format!(
                "task {task} of project {project} has no committed result ({})",
                view.status
            )));
        };
        if digest == artifact_digest(b"") {
            return Ok(Vec::new());
        }
        if let Some(bytes) = self.artifacts.store.get(project, &digest)? {
            return Ok(bytes);
        }
        let mut holders = self.artifact_targets(Some(&view.state)).await;
        if let Some(worker) = view
            .worker
            .as_deref()
            .and_then(NodeKey::from_peer_id)
            .filter(|worker| !holders.contains(worker))
        {
            holders.push(worker);
        }
        for other in self.artifact_targets(None).await {
            if !holders.contains(&other) {
                holders.push(other);
            }
        }
        let mut last = String::from("no holder known");
        for holder in holders {
            match self.pull(holder, project, &digest).await {
                Ok(bytes) => return Ok(bytes),
                Err(reason) => last = format!("{}: {reason}", holder.peer_id()),
            }
        }
        Err(ArtifactFailure::Unavailable {
            digest: hex(&digest),
            last,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_digest_reads_back_from_its_hex() {
        let digest = artifact_digest(b"abc");
        assert_eq!(parse_digest(&hex(&digest)), Some(digest));
        assert_eq!(parse_digest("zz"), None);
        assert_eq!(parse_digest(&"g".repeat(64)), None);
    }
}
