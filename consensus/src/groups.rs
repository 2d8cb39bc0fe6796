//! The Raft groups a node runs, all on one [`Store`] and one [`RaftTransport`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::error::{
    CheckIsLeaderError, ClientWriteError, InitializeError, InstallSnapshotError, RaftError,
};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{Raft, SnapshotPolicy};

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::machine::{Batch, Machine, Request, Response};
use crate::network::{GroupNetworkFactory, RaftTransport, RemoteResult, TransportError};
use crate::store::{LogStore, StateMachineStore, Store};
use crate::types::{GroupId, MemberNode, NodeId, TypeConfig};

/// Raft timing and log compaction, shared by every group on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftConfig {
    /// Lower bound of the randomised election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomised election timeout.
    pub election_timeout_max_ms: u64,
    /// Leader heartbeat period; must be below the election timeout.
    pub heartbeat_interval_ms: u64,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_after_entries: u64,
    /// Entries already in a snapshot that stay in the log for slow followers.
    pub log_entries_kept_after_snapshot: u64,
    /// Most entries in one AppendEntries.
    pub max_entries_per_append: u64,
    /// Writes waiting to be proposed, per group; callers wait while it is full.
    pub max_pending_writes: usize,
    /// Most requests committed together in one log entry (group commit).
    pub max_requests_per_entry: usize,
    /// Log entries being committed at once per group.
    pub max_entries_in_flight: usize,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            heartbeat_interval_ms: 50,
            snapshot_after_entries: 5_000,
            log_entries_kept_after_snapshot: 1_000,
            max_entries_per_append: 300,
            max_pending_writes: 4_096,
            max_requests_per_entry: 256,
            max_entries_in_flight: 2,
        }
    }
}

impl RaftConfig {
    fn to_openraft(&self) -> Result<Arc<openraft::Config>, GroupError> {
        if self.max_pending_writes == 0
            || self.max_requests_per_entry == 0
            || self.max_entries_in_flight == 0
        {
            return Err(GroupError::Config(
                "max_pending_writes, max_requests_per_entry and max_entries_in_flight must be at least 1".into(),
            ));
        }
        let config = openraft::Config {
            cluster_name: "aamas".into(),
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            heartbeat_interval: self.heartbeat_interval_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_after_entries),
            max_in_snapshot_log_to_keep: self.log_entries_kept_after_snapshot,
            max_payload_entries: self.max_entries_per_append,
            install_snapshot_timeout: self.election_timeout_max_ms.max(200),
            ..openraft::Config::default()
        };
        config
            .validate()
            .map(Arc::new)
            .map_err(|error| GroupError::Config(error.to_string()))
    }
}

/// Errors of opening and driving groups.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// The Raft configuration is inconsistent.
    #[error("invalid Raft configuration: {0}")]
    Config(String),
    /// The group's storage failed; the group is stopped.
    #[error("group {group}: storage failed: {source}")]
    Storage {
        /// The group.
        group: GroupId,
        /// The storage error.
        source: openraft::StorageError<NodeId>,
    },
    /// openraft stopped the group (a storage failure, or shutdown).
    #[error("group {group} has stopped: {source}")]
    Fatal {
        /// The group.
        group: GroupId,
        /// Why.
        source: openraft::error::Fatal<NodeId>,
    },
    /// The group is not open on this node.
    #[error("group {group} is not open on this node")]
    NotOpen {
        /// The group.
        group: GroupId,
    },
    /// Initialising the group's membership failed.
    #[error("group {group}: initialisation failed: {source}")]
    Initialize {
        /// The group.
        group: GroupId,
        /// Why.
        source: RaftError<NodeId, InitializeError<NodeId, MemberNode>>,
    },
}

/// Errors of a write through a group.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// This node is not the leader; retry at `leader` (if known).
    #[error("not the leader of the group; the leader is {leader:?}")]
    NotLeader {
        /// The current leader, if known.
        leader: Option<NodeId>,
    },
    /// The write could not be committed (the group stopped, or a membership change failed).
    #[error("write failed: {0}")]
    Failed(String),
    /// Committed, and refused by the state machine (a Registry or Ledger rule): retrying
    /// the same command is refused again. The caller that reads the answer makes it.
    #[error("{0}")]
    Rejected(String),
    /// No answer in time (no quorum, or a leader cut off): the write may still commit,
    /// so retry with the same request id.
    #[error("no commit within {after:?}; it may still commit: retry with the same request id")]
    TimedOut {
        /// How long the caller waited.
        after: Duration,
    },
}

/// How long [`Group::write`] waits for its commit before giving up on it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The shortest silence after which a follower or learner no longer counts as hearing
/// a leader ([`Group::hears_a_leader`]).
pub const MIN_LEADER_SILENCE: Duration = Duration::from_secs(5);

/// Errors of a linearizable read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// This node is not the leader; read at `leader` (if known).
    #[error("not the leader of the group; the leader is {leader:?}")]
    NotLeader {
        /// The current leader, if known.
        leader: Option<NodeId>,
    },
    /// Leadership could not be confirmed with a quorum.
    #[error("read failed: {0}")]
    Failed(String),
}

/// A write that is committed and applied on the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Its index in the group's log.
    pub index: u64,
    /// What the state machine answered.
    pub response: Response,
}

/// One Raft group on this node: its Raft handle and its state machine.
#[derive(Clone)]
pub struct Group {
    id: GroupId,
    raft: Raft<TypeConfig>,
    log: LogStore,
    machine: StateMachineStore,
    proposals: mpsc::Sender<Proposal>,
    /// When a leader last reached this member (an AppendEntries or snapshot chunk it
    /// took): see [`Group::hears_a_leader`].
    contact: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

/// A write waiting for the batcher.
struct Proposal {
    request: Request,
    reply: oneshot::Sender<Result<Committed, WriteError>>,
}

/// Group commit: openraft 0.9 makes each log append wait for its fsync before it takes
/// the next, so concurrent writes proposed one by one would cost one fsync each. The
/// batcher takes every write that is waiting (up to `max_requests_per_entry`) into one
/// entry. It acquires an in-flight slot *before* draining the queue, so the longer a
/// commit takes, the larger the next batch grows.
async fn batcher(
    group: GroupId,
    raft: Raft<TypeConfig>,
    mut proposals: mpsc::Receiver<Proposal>,
    max_requests_per_entry: usize,
    in_flight: Arc<Semaphore>,
) {
    while let Some(first) = proposals.recv().await {
        let Ok(slot) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let mut batch = vec![first];
        while batch.len() < max_requests_per_entry {
            match proposals.try_recv() {
                Ok(proposal) => batch.push(proposal),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let (requests, replies): (Vec<Request>, Vec<_>) = batch
                .into_iter()
                .map(|proposal| (proposal.request, proposal.reply))
                .unzip();
            let result = raft.client_write(Batch { requests }).await;
            drop(slot);
            match result {
                Ok(written) => {
                    let index = written.log_id.index;
                    let mut responses = written.data.responses.into_iter();
                    for reply in replies {
                        let answer = match responses.next() {
                            Some(response) => Ok(Committed { index, response }),
                            None => Err(WriteError::Failed(
                                "the state machine answered fewer requests than the entry held"
                                    .into(),
                            )),
                        };
                        let _ = reply.send(answer);
                    }
                }
                Err(error) => {
                    let leader = match &error {
                        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
                            Some(forward.leader_id)
                        }
                        _ => None,
                    };
                    tracing::debug!(group, %error, "batch not committed");
                    for reply in replies {
                        let answer = match leader {
                            Some(leader) => Err(WriteError::NotLeader { leader }),
                            None => Err(WriteError::Failed(error.to_string())),
                        };
                        let _ = reply.send(answer);
                    }
                }
            }
        });
    }
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Group {
    /// The group's id.
    pub fn id(&self) -> GroupId {
        self.id
    }

    /// The openraft handle (metrics, membership changes, waits).
    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    /// Proposes `request`; returns its response and log index once committed and applied
    /// here. Only the leader accepts writes. Concurrent writes are committed together
    /// (see `batcher`); a caller waits while `max_pending_writes` writes are queued.
    pub async fn write(&self, request: Request) -> Result<Committed, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.proposals
            .send(Proposal { request, reply })
            .await
            .map_err(|_| WriteError::Failed(format!("group {} has stopped", self.id)))?;
        match tokio::time::timeout(WRITE_TIMEOUT, answer).await {
            Ok(answer) => answer.map_err(|_| {
                WriteError::Failed(format!("group {} stopped before answering", self.id))
            })?,
            Err(_) => Err(WriteError::TimedOut {
                after: WRITE_TIMEOUT,
            }),
        }
    }

    /// Reads the state machine linearizably: the leader confirms its leadership with a
    /// quorum (read index) and waits until it has applied up to that point.
    pub async fn read<R>(&self, read: impl FnOnce(&Machine) -> R) -> Result<R, ReadError> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(self.machine.with(read).await),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                Err(ReadError::NotLeader {
                    leader: forward.leader_id,
                })
            }
            Err(error) => Err(ReadError::Failed(error.to_string())),
        }
    }

    /// A read index for a linearizable read on another member: the leader confirms its
    /// leadership with a quorum and answers the log index a read must see (its commit
    /// index then, applied here before it answers). A member that has applied up to it
    /// reads its own copy as the leader would have.
    pub async fn read_index(&self) -> Result<u64, ReadError> {
        match self.raft.ensure_linearizable().await {
            Ok(read) => Ok(read.map_or(0, |log_id| log_id.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                Err(ReadError::NotLeader {
                    leader: forward.leader_id,
                })
            }
            Err(error) => Err(ReadError::Failed(error.to_string())),
        }
    }

    /// Reads this member's copy of the state machine, without any coordination: it may be
    /// behind the leader (stale), but never shows anything uncommitted.
    pub async fn read_local<R>(&self, read: impl FnOnce(&Machine) -> R) -> R {
        self.machine.with(read).await
    }

    /// This member's log (read by [`crate::Mirror`]'s catch-up).
    pub(crate) fn log(&self) -> LogStore {
        self.log.clone()
    }

    /// This member's state machine (read by [`crate::Mirror`]'s catch-up).
    pub(crate) fn machine(&self) -> StateMachineStore {
        self.machine.clone()
    }

    /// The current leader, as this member knows it.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    /// The term in which `me` leads this group: `Some` only while `me` is the leader
    /// and its vote as leader is committed (a quorum granted it). A node whose metrics
    /// still name it leader a moment after a higher vote arrived, or a candidate, claims
    /// nothing, so no two nodes ever claim one term.
    pub fn leading_term(&self, me: NodeId) -> Option<u64> {
        let watch = self.raft.metrics();
        let metrics = watch.borrow();
        let vote = &metrics.vote;
        (metrics.current_leader == Some(me)
            && vote.is_committed()
            && vote.leader_id().voted_for() == Some(me))
        .then(|| vote.leader_id().get_term())
    }

    /// The group's voters, as this member knows them.
    pub fn voters(&self) -> std::collections::BTreeSet<NodeId> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// Whether `node` is a voter or learner of this group, as this member knows it.
    pub fn has_member(&self, node: NodeId) -> bool {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&node)
            .is_some()
    }

    /// The current term, and whether `node` is a voter or learner of the latest
    /// membership this member knows (`None` while it knows none: a member being added
    /// learns the membership from its leader's first entries). One read of the metrics,
    /// for the checks of every inbound Raft RPC.
    ///
    /// A member of the last membership this node applied counts too: a follower may hold
    /// a membership change that was never committed (its leader died), and a new leader
    /// elected under the committed membership must still reach it to overwrite that
    /// change. Judged by the latest membership alone, such a follower refused the new
    /// leader for good (seen in a 1,000-node president-failover run).
    pub async fn term_and_membership_of(&self, node: NodeId) -> (u64, Option<bool>) {
        let (term, member) = {
            let watch = self.raft.metrics();
            let metrics = watch.borrow();
            let membership = metrics.membership_config.membership();
            let known = membership.nodes().next().is_some();
            let member = known.then(|| membership.get_node(&node).is_some());
            (metrics.current_term, member)
        };
        if member == Some(false) && self.machine.applied_membership_has(node).await {
            return (term, Some(true));
        }
        (term, member)
    }

    /// This member's vote, when it is newer than `than`. A member refuses a leader's
    /// AppendEntries or snapshot from a sender outside the group, but a leader of an older
    /// term must still learn that it is one: a president cut off and replaced while it
    /// was away otherwise goes on leading the members it took with it, for good, when
    /// the partition heals. Told the newer vote (as Raft tells any stale leader), it
    /// steps down.
    pub fn newer_vote(&self, than: &openraft::Vote<NodeId>) -> Option<openraft::Vote<NodeId>> {
        let vote = self.raft.metrics().borrow().vote;
        (vote > *than).then_some(vote)
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// Whether this member is in touch with a leader: it leads, or a leader's
    /// AppendEntries or snapshot reached it within the silence window (twice the longest
    /// election timeout, at least [`MIN_LEADER_SILENCE`]). A learner that was removed
    /// from the group is never told so (the leader stops replicating to it) and goes on
    /// naming the old leader; this is how it finds out that nobody replicates to it.
    pub fn hears_a_leader(&self) -> bool {
        let (me, leader) = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            (metrics.id, metrics.current_leader)
        };
        match leader {
            None => false,
            Some(leader) if leader == me => true,
            Some(_) => {
                let window = Duration::from_millis(self.raft.config().election_timeout_max)
                    .saturating_mul(2)
                    .max(MIN_LEADER_SILENCE);
                self.contact
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .is_some_and(|at| at.elapsed() <= window)
            }
        }
    }

    /// Notes that a leader reached this member now.
    fn heard_a_leader(&self) {
        *self
            .contact
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(std::time::Instant::now());
    }

    /// The index of the last entry applied here.
    pub fn applied_index(&self) -> Option<u64> {
        self.raft.metrics().borrow().last_applied.map(|id| id.index)
    }

    /// Waits until an entry at `index` or later is applied here, up to `timeout`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "applied")
            .await
            .is_ok()
    }

    /// Waits until this member knows a leader, up to `timeout`; returns it.
    pub async fn wait_leader(&self, timeout: Duration) -> Option<NodeId> {
        self.raft
            .wait(Some(timeout))
            .metrics(|metrics| metrics.current_leader.is_some(), "leader known")
            .await
            .ok()
            .and_then(|metrics| metrics.current_leader)
    }
}

struct Inner<T> {
    node: NodeId,
    store: Store,
    config: Arc<openraft::Config>,
    limits: RaftConfig,
    transport: T,
    // Read-mostly map from group id to handle; never held across an await.
    groups: RwLock<HashMap<GroupId, Group>>,
}

/// Every Raft group of one node.
pub struct Groups<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Groups<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Groups<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Groups")
            .field("node", &self.inner.node)
            .finish_non_exhaustive()
    }
}

impl<T: RaftTransport> Groups<T> {
    /// The groups of node `node`, stored in `store`, talking through `transport`.
    pub fn new(
        node: NodeId,
        store: Store,
        config: &RaftConfig,
        transport: T,
    ) -> Result<Self, GroupError> {
        Ok(Self {
            inner: Arc::new(Inner {
                node,
                store,
                config: config.to_openraft()?,
                limits: config.clone(),
                transport,
                groups: RwLock::new(HashMap::new()),
            }),
        })
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.inner.node
    }

    /// Opens `group` (recovering it from disk if it ran here before); returns the open
    /// group if it is already open.
    pub async fn open(&self, group: GroupId) -> Result<Group, GroupError> {
        if let Some(open) = self.get(group) {
            return Ok(open);
        }
        let (log, machine) = self
            .inner
            .store
            .group(group)
            .map_err(|source| GroupError::Storage { group, source })?;
        let network = GroupNetworkFactory::new(group, self.inner.transport.clone());
        let raft = Raft::new(
            self.inner.node,
            self.inner.config.clone(),
            network,
            log.clone(),
            machine.clone(),
        )
        .await
        .map_err(|source| GroupError::Fatal { group, source })?;
        let (proposals, queue) = mpsc::channel(self.inner.limits.max_pending_writes);
        tokio::spawn(batcher(
            group,
            raft.clone(),
            queue,
            self.inner.limits.max_requests_per_entry,
            Arc::new(Semaphore::new(self.inner.limits.max_entries_in_flight)),
        ));
        let opened = Group {
            id: group,
            raft,
            log,
            machine,
            proposals,
            contact: Arc::default(),
        };
        let mut groups = self
            .inner
            .groups
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Another task may have opened it meanwhile; keep the first.
        Ok(groups.entry(group).or_insert(opened).clone())
    }

    /// Founds `group` with these voters (once, on one node; a no-op if the group already
    /// has a membership).
    pub async fn initialize(
        &self,
        group: GroupId,
        voters: BTreeMap<NodeId, MemberNode>,
    ) -> Result<(), GroupError> {
        let open = self.get(group).ok_or(GroupError::NotOpen { group })?;
        match open.raft.initialize(voters).await {
            Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(source) => Err(GroupError::Initialize { group, source }),
        }
    }

    /// An open group.
    pub fn get(&self, group: GroupId) -> Option<Group> {
        self.inner
            .groups
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&group)
            .cloned()
    }

    /// The ids of the open groups.
    pub fn ids(&self) -> Vec<GroupId> {
        let mut ids: Vec<GroupId> = self
            .inner
            .groups
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .copied()
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The first open group (by id) whose Raft core stopped for good, with why: a
    /// storage write that failed (a full disk, say) stops openraft's core, and the group
    /// takes and replicates nothing on this node until it opens again (a restart).
    /// Groups stopped by [`Groups::shutdown`] are not open.
    pub fn stopped(&self) -> Option<(GroupId, String)> {
        let groups = self
            .inner
            .groups
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        groups
            .iter()
            .filter_map(|(id, group)| {
                let metrics = group.raft.metrics();
                let metrics = metrics.borrow();
                match &metrics.running_state {
                    Ok(()) | Err(openraft::error::Fatal::Stopped) => None,
                    Err(fatal) => Some((*id, fatal.to_string())),
                }
            })
            .min_by_key(|(id, _)| *id)
    }

    /// Stops every group (their state stays on disk).
    pub async fn shutdown(&self) {
        let groups: Vec<Group> = self
            .inner
            .groups
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain()
            .map(|(_, group)| group)
            .collect();
        for group in groups {
            if let Err(error) = group.raft.shutdown().await {
                tracing::warn!(group = group.id, %error, "raft shutdown failed");
            }
        }
    }

    fn target(&self, group: GroupId) -> Result<Group, TransportError> {
        self.get(group).ok_or(TransportError::NoSuchGroup {
            target: self.inner.node,
            group,
        })
    }

    /// Serves an AppendEntries for `group` that arrived from the network.
    pub async fn handle_append_entries(
        &self,
        group: GroupId,
        rpc: AppendEntriesRequest<TypeConfig>,
    ) -> Result<RemoteResult<AppendEntriesResponse<NodeId>>, TransportError> {
        let target = self.target(group)?;
        let answer = target.raft.append_entries(rpc).await;
        // A higher vote means the sender is no leader of ours; anything else (taken, or
        // a conflict the leader resolves next) is a leader in touch.
        if matches!(&answer, Ok(response) if !matches!(response, AppendEntriesResponse::HigherVote(_)))
        {
            target.heard_a_leader();
        }
        Ok(answer)
    }

    /// Serves a Vote for `group` that arrived from the network.
    pub async fn handle_vote(
        &self,
        group: GroupId,
        rpc: VoteRequest<NodeId>,
    ) -> Result<RemoteResult<VoteResponse<NodeId>>, TransportError> {
        Ok(self.target(group)?.raft.vote(rpc).await)
    }

    /// Serves a snapshot chunk for `group` that arrived from the network.
    pub async fn handle_install_snapshot(
        &self,
        group: GroupId,
        rpc: InstallSnapshotRequest<TypeConfig>,
    ) -> Result<RemoteResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError>, TransportError>
    {
        let target = self.target(group)?;
        let answer = target.raft.install_snapshot(rpc).await;
        if answer.is_ok() {
            target.heard_a_leader();
        }
        Ok(answer)
    }
}
