//! The openraft type configuration shared by every Raft group.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// A member's id inside Raft groups. openraft needs a `Copy + Default` integer; `node/` maps
/// each libp2p peer id to one.
pub type NodeId = u64;

/// Names a Raft group within a node's database (the federal group, or one state group).
pub type GroupId = u64;

/// Identifies a client request; applying the same request twice has the effect of once.
pub type RequestId = u128;

/// What a Raft member's node information carries: how to reach it over libp2p.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    /// The member's libp2p peer id (base58).
    pub peer_id: String,
    /// Its listen addresses (multiaddrs).
    pub addrs: Vec<String>,
}

openraft::declare_raft_types!(
    /// The openraft type configuration of every AAMAS Raft group.
    pub TypeConfig:
        D = crate::machine::Batch,
        R = crate::machine::BatchResponse,
        NodeId = NodeId,
        Node = MemberNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
);
