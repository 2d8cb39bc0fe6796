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

use crate::net::swarm::NodeHandle;
use crate::net::wire::{Rpc, RpcResponse};

/// A peer and the addresses to dial it at.
pub type PeerAddrs = (PeerId, Vec<Multiaddr>);

/// Where each Raft node id lives on the network.
#[derive(Clone, Debug, Default)]
pub struct PeerBook {
    peers: Arc<RwLock<HashMap<NodeId, Listing>>>,
}

#[derive(Debug)]
struct Listing {
    peer: PeerId,
    addrs: Vec<Multiaddr>,
    /// A hash of the Registry's address strings this listing was parsed from, if it was.
    source: Option<u64>,
}

impl PeerBook {
    /// Records (or replaces) where `node` is.
    pub fn insert(&self, node: NodeId, peer: PeerId, addrs: Vec<Multiaddr>) {
        self.peers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                node,
                Listing {
                    peer,
                    addrs,
                    source: None,
                },
            );
    }

    /// Records where `node` is from its Registry entry's address strings, unless the
    /// book already holds what those strings say: every node re-reads every member's
    /// entry whenever the Registry changes, and parsing them all each time was a
    /// noticeable share of a thousand-node mesh's CPU. Unparsable strings are skipped.
    /// Returns whether the listing changed.
    pub fn insert_listed(&self, node: NodeId, peer: PeerId, addrs: &[String]) -> bool {
        let source = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            addrs.hash(&mut hasher);
            hasher.finish()
        };
        let unchanged = self
            .peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&node)
            .is_some_and(|listing| listing.peer == peer && listing.source == Some(source));
        if unchanged {
            return false;
        }
        let listing = Listing {
            peer,
            addrs: addrs.iter().filter_map(|addr| addr.parse().ok()).collect(),
            source: Some(source),
        };
        self.peers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(node, listing);
        true
    }

    /// Where `node` is, if known.
    pub fn get(&self, node: NodeId) -> Option<PeerAddrs> {
        self.peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&node)
            .map(|listing| (listing.peer, listing.addrs.clone()))
    }

    /// Forgets `node` (an evicted member); returns whether it was listed.
    pub fn remove(&self, node: NodeId) -> bool {
        self.peers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&node)
            .is_some()
    }

    /// The peer id of `node`, if known.
    pub fn peer(&self, node: NodeId) -> Option<PeerId> {
        self.peers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&node)
            .map(|listing| listing.peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(text: &str) -> Vec<Multiaddr> {
        text.parse().into_iter().collect()
    }

    #[test]
    fn a_listing_is_parsed_again_only_when_its_strings_change() {
        let book = PeerBook::default();
        let peer = PeerId::random();
        let first = vec!["/memory/1".to_string(), "not an address".to_string()];
        assert!(book.insert_listed(7, peer, &first));
        assert_eq!(book.get(7), Some((peer, addrs("/memory/1"))));
        assert!(!book.insert_listed(7, peer, &first));
        let moved = vec!["/memory/2".to_string()];
        assert!(book.insert_listed(7, peer, &moved));
        assert_eq!(
            book.get(7).map(|(_, addrs)| addrs),
            Some(addrs("/memory/2"))
        );
        // A listing from elsewhere (a join answer) is replaced by the Registry's.
        book.insert(7, peer, Vec::new());
        assert!(book.insert_listed(7, peer, &moved));
        assert_eq!(book.peer(7), Some(peer));
        assert_eq!(book.peer(8), None);
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
