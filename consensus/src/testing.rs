//! An in-memory [`RaftTransport`] for tests of many Raft groups in one process.
//!
//! It stands in for the libp2p transport of `node/` in this crate's tests only. Each node
//! gets a [`MemTransport`] from the shared [`MemRouter`]; a node marked down neither
//! sends nor receives, as if its process were dead or cut off.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use openraft::error::InstallSnapshotError;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use crate::groups::Groups;
use crate::network::{RaftTransport, RemoteResult, TransportError};
use crate::types::{GroupId, NodeId, TypeConfig};

#[derive(Default)]
struct RouterState {
    nodes: HashMap<NodeId, Groups<MemTransport>>,
    down: HashSet<NodeId>,
}

/// Connects the [`Groups`] of several nodes in one process.
#[derive(Clone, Default)]
pub struct MemRouter {
    state: Arc<Mutex<RouterState>>,
}

impl std::fmt::Debug for MemRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemRouter").finish_non_exhaustive()
    }
}

impl MemRouter {
    /// An empty router.
    pub fn new() -> Self {
        Self::default()
    }

    /// The transport node `node` sends through.
    pub fn transport(&self, node: NodeId) -> MemTransport {
        MemTransport {
            router: self.clone(),
            me: node,
        }
    }

    /// Makes `node`'s groups reachable (and marks it up).
    pub fn register(&self, node: NodeId, groups: Groups<MemTransport>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.nodes.insert(node, groups);
        state.down.remove(&node);
    }

    /// Removes `node` (its process is gone).
    pub fn unregister(&self, node: NodeId) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.nodes.remove(&node);
    }

    /// Cuts `node` off (`down = true`) or reconnects it.
    pub fn set_down(&self, node: NodeId, down: bool) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if down {
            state.down.insert(node);
        } else {
            state.down.remove(&node);
        }
    }

    /// Whether `node` is registered and not down.
    pub fn is_up(&self, node: NodeId) -> bool {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.nodes.contains_key(&node) && !state.down.contains(&node)
    }

    fn route(&self, from: NodeId, to: NodeId) -> Result<Groups<MemTransport>, TransportError> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let unreachable = |reason: &str| TransportError::Unreachable {
            target: to,
            reason: reason.into(),
        };
        if state.down.contains(&from) {
            return Err(unreachable("the sender is cut off"));
        }
        if state.down.contains(&to) {
            return Err(unreachable("the target is cut off"));
        }
        state
            .nodes
            .get(&to)
            .cloned()
            .ok_or_else(|| unreachable("no such node"))
    }
}

/// One node's view of the [`MemRouter`].
#[derive(Clone, Debug)]
pub struct MemTransport {
    router: MemRouter,
    me: NodeId,
}

impl RaftTransport for MemTransport {
    async fn append_entries(
        &self,
        group: GroupId,
        target: NodeId,
        rpc: AppendEntriesRequest<TypeConfig>,
    ) -> Result<RemoteResult<AppendEntriesResponse<NodeId>>, TransportError> {
        self.router
            .route(self.me, target)?
            .handle_append_entries(group, rpc)
            .await
    }

    async fn vote(
        &self,
        group: GroupId,
        target: NodeId,
        rpc: VoteRequest<NodeId>,
    ) -> Result<RemoteResult<VoteResponse<NodeId>>, TransportError> {
        self.router
            .route(self.me, target)?
            .handle_vote(group, rpc)
            .await
    }

    async fn install_snapshot(
        &self,
        group: GroupId,
        target: NodeId,
        rpc: InstallSnapshotRequest<TypeConfig>,
    ) -> Result<RemoteResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError>, TransportError>
    {
        self.router
            .route(self.me, target)?
            .handle_install_snapshot(group, rpc)
            .await
    }
}
