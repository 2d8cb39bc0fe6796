//! # aamas-node
//!
//! Will hold the node runtime (issue [3/5]): the libp2p swarm, admission, the Raft
//! transport, the roles (president, governor, mayor, worker), executors, governance and
//! the control API.
//!
//! Nothing is implemented here yet; its tests already check that the protocol's identity
//! is the one libp2p uses (`tests/peer_id.rs`).
