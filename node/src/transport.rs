//! Raft RPCs over libp2p: the [`RaftTransport`] of a real node.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use aamas_consensus::{GroupId, NodeId, RaftTransport, RemoteResult, TransportError, TypeConfig};
use libp2p::{Multiaddr, PeerId};
use openraft::error::InstallSnapshotError;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use crate::swarm::NodeHandle;
use crate::wire::{Rpc, RpcResponse};

/// A peer and the addresses to dial it at.
pub type PeerAddrs = (PeerId, Vec<Multiaddr>);

/// Where each Raft node id lives on the network.
#[derive(Clone, Debug, Default)]
pub struct PeerBook {
    peers: Arc<RwLock<HashMap<NodeId, PeerAddrs>>>,
}

impl PeerBook {
    /// Records (or replaces) where `node` is.
    pub fn insert(&self, node: NodeId, peer: PeerId, addrs: Vec<Multiaddr>) {
        self.peers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(node, (peer, addrs));
    }

    /// Where `node` is, if known.
    pub fn get(&self, node: NodeId) -> Option<PeerAddrs> {
        self.peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&node)
            .cloned()
    }
}

/// Sends Raft RPCs through the swarm.
#[derive(Clone, Debug)]
pub struct Libp2pTransport {
    handle: NodeHandle,
    book: PeerBook,
}

impl Libp2pTransport {
    /// A transport over `handle`, finding peers in `book`.
    pub fn new(handle: NodeHandle, book: PeerBook) -> Self {
        Self { handle, book }
    }

    async fn call(&self, target: NodeId, rpc: Rpc) -> Result<RpcResponse, TransportError> {
        let (peer, addrs) = self
            .book
            .get(target)
            .ok_or_else(|| TransportError::Unreachable {
                target,
                reason: "no known address".into(),
            })?;
        match self.handle.request(peer, addrs, rpc).await {
            Ok(RpcResponse::Refused { reason }) => Err(TransportError::Failed { target, reason }),
            Ok(response) => Ok(response),
            Err(error) => Err(TransportError::Unreachable {
                target,
                reason: error.to_string(),
            }),
        }
    }
}

fn unexpected(target: NodeId) -> TransportError {
    TransportError::Failed {
        target,
        reason: "the peer answered with the wrong kind of response".into(),
    }
}

impl RaftTransport for Libp2pTransport {
    async fn append_entries(
        &self,
        group: GroupId,
        target: NodeId,
        rpc: AppendEntriesRequest<TypeConfig>,
    ) -> Result<RemoteResult<AppendEntriesResponse<NodeId>>, TransportError> {
        match self.call(target, Rpc::Append { group, rpc }).await? {
            RpcResponse::Append(result) => result,
            _ => Err(unexpected(target)),
        }
    }

    async fn vote(
        &self,
        group: GroupId,
        target: NodeId,
        rpc: VoteRequest<NodeId>,
    ) -> Result<RemoteResult<VoteResponse<NodeId>>, TransportError> {
        match self.call(target, Rpc::Vote { group, rpc }).await? {
            RpcResponse::Vote(result) => result,
            _ => Err(unexpected(target)),
        }
    }

    async fn install_snapshot(
        &self,
        group: GroupId,
        target: NodeId,
        rpc: InstallSnapshotRequest<TypeConfig>,
    ) -> Result<RemoteResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError>, TransportError>
    {
        match self.call(target, Rpc::Snapshot { group, rpc }).await? {
            RpcResponse::Snapshot(result) => result,
            _ => Err(unexpected(target)),
        }
    }
}
