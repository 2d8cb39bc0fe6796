//! How Raft RPCs leave a node: a transport trait addressed by group id, and the openraft
//! network factory built on it.
//!
//! ```text
//!   Raft (group g) ──RaftNetwork──► GroupNetwork { g, target } ──RaftTransport──► node/ (libp2p)
//!                                                                             └─► MemRouter (tests)
//!   remote node ──► Groups::handle_* (g, rpc) ──► the Raft of group g
//! ```

use std::future::Future;
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::types::{GroupId, MemberNode, NodeId, TypeConfig};

/// Why an RPC did not get an answer from the target's Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The target could not be reached (no connection, dialling failed, timed out).
    #[error("node {target} is unreachable: {reason}")]
    Unreachable {
        /// The target node.
        target: NodeId,
        /// What failed.
        reason: String,
    },
    /// The target answered, but it does not run that group.
    #[error("node {target} does not run group {group}")]
    NoSuchGroup {
        /// The target node.
        target: NodeId,
        /// The group.
        group: GroupId,
    },
    /// The exchange failed in a way that may not repeat (bad response, codec error).
    #[error("RPC to node {target} failed: {reason}")]
    Failed {
        /// The target node.
        target: NodeId,
        /// What failed.
        reason: String,
    },
}

/// Answer of a remote Raft to an RPC: its own result, which may be a Raft error.
pub type RemoteResult<T, E = openraft::error::Infallible> = Result<T, RaftError<NodeId, E>>;

/// Carries Raft RPCs of any group to another node. `node/` implements it over libp2p;
/// [`crate::testing::MemRouter`] implements it in memory for tests.
pub trait RaftTransport: Clone + Send + Sync + 'static {
    /// Sends an AppendEntries of `group` to `target`.
    fn append_entries(
        &self,
        group: GroupId,
        target: NodeId,
        rpc: AppendEntriesRequest<TypeConfig>,
    ) -> impl Future<Output = Result<RemoteResult<AppendEntriesResponse<NodeId>>, TransportError>> + Send;

    /// Sends a Vote of `group` to `target`.
    fn vote(
        &self,
        group: GroupId,
        target: NodeId,
        rpc: VoteRequest<NodeId>,
    ) -> impl Future<Output = Result<RemoteResult<VoteResponse<NodeId>>, TransportError>> + Send;

    /// Sends one snapshot chunk of `group` to `target`.
    fn install_snapshot(
        &self,
        group: GroupId,
        target: NodeId,
        rpc: InstallSnapshotRequest<TypeConfig>,
    ) -> impl Future<
        Output = Result<
            RemoteResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError>,
            TransportError,
        >,
    > + Send;
}

/// openraft's network factory for one group over a [`RaftTransport`].
#[derive(Debug, Clone)]
pub struct GroupNetworkFactory<T> {
    group: GroupId,
    transport: T,
}

impl<T> GroupNetworkFactory<T> {
    /// The factory of `group`.
    pub fn new(group: GroupId, transport: T) -> Self {
        Self { group, transport }
    }
}

/// openraft's connection to one target in one group.
#[derive(Debug, Clone)]
pub struct GroupNetwork<T> {
    group: GroupId,
    target: NodeId,
    transport: T,
    /// Bytes of entries the next AppendEntries may carry: halved when one goes
    /// unanswered in time, doubled back (up to [`MAX_APPEND_BYTES`]) when one is answered.
    append_bytes: usize,
}

impl<T: RaftTransport> RaftNetworkFactory<TypeConfig> for GroupNetworkFactory<T> {
    type Network = GroupNetwork<T>;

    async fn new_client(&mut self, target: NodeId, _node: &MemberNode) -> Self::Network {
        GroupNetwork {
            group: self.group,
            target,
            transport: self.transport.clone(),
            append_bytes: MAX_APPEND_BYTES,
        }
    }
}

/// Most bytes of log entries in one AppendEntries (at least one entry is always sent).
///
/// openraft 0.9 times an AppendEntries out after one heartbeat interval and then sends
/// the same entries again, so a payload too large to cross within a heartbeat would be
/// resent forever (a catching-up learner, a burst of batched writes). Sending a bounded
/// prefix and answering `PartialSuccess` for it makes every round trip small and every
/// one progress.
pub const MAX_APPEND_BYTES: usize = 128 * 1024;
/// The least the per-target limit falls to after unanswered AppendEntries.
pub const MIN_APPEND_BYTES: usize = 8 * 1024;

/// Keeps the longest prefix of `entries` within `limit` bytes (postcard), and at least
/// one entry; returns the log id of the last entry kept when some were cut.
fn trim_to_bytes(
    entries: &mut Vec<openraft::Entry<TypeConfig>>,
    limit: usize,
) -> Option<openraft::LogId<NodeId>> {
    if entries.len() < 2 {
        return None;
    }
    let mut total = 0usize;
    let mut keep = entries.len();
    for (at, entry) in entries.iter().enumerate() {
        total = total.saturating_add(postcard::to_stdvec(entry).map_or(usize::MAX, |b| b.len()));
        if total > limit {
            keep = at.max(1);
            break;
        }
    }
    if keep == entries.len() {
        return None;
    }
    entries.truncate(keep);
    entries.last().map(|entry| entry.log_id)
}

/// Maps a transport result into openraft's RPC result: an unreachable peer makes openraft
/// back off; any other failure is a network error; the remote's own error is passed on.
fn into_rpc<R, E: std::error::Error>(
    target: NodeId,
    result: Result<RemoteResult<R, E>, TransportError>,
) -> Result<R, RPCError<NodeId, MemberNode, RaftError<NodeId, E>>> {
    match result {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(remote)) => Err(RPCError::RemoteError(RemoteError::new(target, remote))),
        Err(error @ TransportError::Unreachable { .. }) => {
            Err(RPCError::Unreachable(Unreachable::new(&error)))
        }
        Err(error) => Err(RPCError::Network(NetworkError::new(&error))),
    }
}

impl<T: RaftTransport> RaftNetwork<TypeConfig> for GroupNetwork<T> {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>>
    {
        let mut rpc = rpc;
        let trimmed_to = trim_to_bytes(&mut rpc.entries, self.append_bytes);
        let sending = self.transport.append_entries(self.group, self.target, rpc);
        // Answer just before openraft's own timeout (the hard TTL, one heartbeat):
        // openraft resends at once after a timeout, but backs off after `Unreachable`,
        // so a slow target is not flooded with the very requests it is too slow to
        // answer.
        let patience = option.hard_ttl().saturating_sub(option.hard_ttl() / 10);
        let Ok(result) = tokio::time::timeout(patience, sending).await else {
            self.append_bytes = (self.append_bytes / 2).max(MIN_APPEND_BYTES);
            let late = TransportError::Unreachable {
                target: self.target,
                reason: format!("no answer to AppendEntries within {patience:?}; backing off"),
            };
            return Err(RPCError::Unreachable(Unreachable::new(&late)));
        };
        let response = into_rpc(self.target, result)?;
        self.append_bytes = self.append_bytes.saturating_mul(2).min(MAX_APPEND_BYTES);
        Ok(match (response, trimmed_to) {
            // The target took what was sent: openraft sends the rest next.
            (AppendEntriesResponse::Success, Some(last)) => {
                AppendEntriesResponse::PartialSuccess(Some(last))
            }
            (response, _) => response,
        })
    }

    /// After `Unreachable`: 25 ms, doubling up to 500 ms (openraft's constant default),
    /// reset by the next answered RPC. A slow target is retried soon; a dead one every
    /// half second.
    fn backoff(&self) -> Backoff {
        Backoff::new((0..).map(|step: u32| {
            Duration::from_millis(25u64.saturating_mul(1 << step.min(5)).min(500))
        }))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, MemberNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        into_rpc(
            self.target,
            self.transport
                .install_snapshot(self.group, self.target, rpc)
                .await,
        )
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>> {
        into_rpc(
            self.target,
            self.transport.vote(self.group, self.target, rpc).await,
        )
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    use super::*;

    fn entries(count: u64, bytes: usize) -> Vec<Entry<TypeConfig>> {
        (1..=count)
            .map(|index| Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                payload: EntryPayload::Normal(crate::machine::Batch::from(
                    crate::machine::Request {
                        id: u128::from(index),
                        command: crate::machine::Command::Registry(
                            crate::registry::RegistryCommand::AddState {
                                name: "s".repeat(bytes),
                                budget: 0,
                            },
                        ),
                    },
                )),
            })
            .collect()
    }

    #[test]
    fn a_payload_within_the_limit_is_sent_whole() {
        let mut sending = entries(10, 100);
        assert_eq!(trim_to_bytes(&mut sending, 64 * 1024), None);
        assert_eq!(sending.len(), 10);
    }

    #[test]
    fn a_large_payload_is_cut_to_a_prefix_within_the_limit() {
        let mut sending = entries(10, 10_000);
        let last = trim_to_bytes(&mut sending, 35_000).expect("cut");
        assert_eq!(sending.len(), 3);
        assert_eq!(last.index, 3);
    }

    #[test]
    fn one_entry_over_the_limit_is_still_sent() {
        let mut sending = entries(4, 50_000);
        let last = trim_to_bytes(&mut sending, 10_000).expect("cut");
        assert_eq!((sending.len(), last.index), (1, 1));
        let mut alone = entries(1, 50_000);
        assert_eq!(trim_to_bytes(&mut alone, 10_000), None);
    }

    /// Answers AppendEntries with success, after a delay taken from a shared setting.
    #[derive(Clone)]
    struct Slow(std::sync::Arc<std::sync::Mutex<Duration>>);

    impl RaftTransport for Slow {
        async fn append_entries(
            &self,
            _group: GroupId,
            _target: NodeId,
            _rpc: AppendEntriesRequest<TypeConfig>,
        ) -> Result<RemoteResult<AppendEntriesResponse<NodeId>>, TransportError> {
            let delay = *self.0.lock().expect("lock");
            tokio::time::sleep(delay).await;
            Ok(Ok(AppendEntriesResponse::Success))
        }

        async fn vote(
            &self,
            _group: GroupId,
            target: NodeId,
            _rpc: VoteRequest<NodeId>,
        ) -> Result<RemoteResult<VoteResponse<NodeId>>, TransportError> {
            Err(TransportError::Failed {
                target,
                reason: "not in this test".into(),
            })
        }

        async fn install_snapshot(
            &self,
            _group: GroupId,
            target: NodeId,
            _rpc: InstallSnapshotRequest<TypeConfig>,
        ) -> Result<
            RemoteResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError>,
            TransportError,
        > {
            Err(TransportError::Failed {
                target,
                reason: "not in this test".into(),
            })
        }
    }

    fn request(count: u64, bytes: usize) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: openraft::Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: None,
            entries: entries(count, bytes),
        }
    }

    #[tokio::test]
    async fn a_late_answer_is_unreachable_and_shrinks_the_next_payload() {
        let delay = std::sync::Arc::new(std::sync::Mutex::new(Duration::from_secs(1)));
        let mut factory = GroupNetworkFactory::new(5, Slow(delay.clone()));
        let mut network = factory.new_client(2, &MemberNode::default()).await;
        let option = RPCOption::new(Duration::from_millis(100));

        let late = network
            .append_entries(request(100, 4_000), option.clone())
            .await;
        assert!(matches!(late, Err(RPCError::Unreachable(_))), "{late:?}");
        assert_eq!(network.append_bytes, MAX_APPEND_BYTES / 2);

        *delay.lock().expect("lock") = Duration::from_millis(1);
        let answered = network
            .append_entries(request(100, 4_000), option.clone())
            .await
            .expect("answered");
        // 64 KiB of 4 KB entries: a prefix of 100, acknowledged as a partial success.
        let Some(matching) = (match answered {
            AppendEntriesResponse::PartialSuccess(matching) => matching,
            other => panic!("expected a partial success, got {other:?}"),
        }) else {
            panic!("no matching log id");
        };
        assert!((10..20).contains(&matching.index), "{matching:?}");
        assert_eq!(network.append_bytes, MAX_APPEND_BYTES);
    }

    #[test]
    fn the_backoff_starts_short_and_is_capped() {
        let network = GroupNetwork {
            group: 1,
            target: 2,
            transport: Slow(Default::default()),
            append_bytes: MAX_APPEND_BYTES,
        };
        let steps: Vec<u128> = network.backoff().take(8).map(|d| d.as_millis()).collect();
        assert_eq!(steps, [25, 50, 100, 200, 400, 500, 500, 500]);
    }
}
