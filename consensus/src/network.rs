//! How Raft RPCs leave a node: a transport trait addressed by group id, and the openraft
//! network factory built on it.
//!
//! ```text
//!   Raft (group g) ──RaftNetwork──► GroupNetwork { g, target } ──RaftTransport──► node/ (libp2p)
//!                                                                             └─► MemRouter (tests)
//!   remote node ──► Groups::handle_* (g, rpc) ──► the Raft of group g
//! ```

use std::future::Future;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
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
}

impl<T: RaftTransport> RaftNetworkFactory<TypeConfig> for GroupNetworkFactory<T> {
    type Network = GroupNetwork<T>;

    async fn new_client(&mut self, target: NodeId, _node: &MemberNode) -> Self::Network {
        GroupNetwork {
            group: self.group,
            target,
            transport: self.transport.clone(),
        }
    }
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
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, MemberNode, RaftError<NodeId>>>
    {
        into_rpc(
            self.target,
            self.transport
                .append_entries(self.group, self.target, rpc)
                .await,
        )
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
