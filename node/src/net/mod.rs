//! The network: everything that moves bytes between nodes, and nothing that decides
//! what they mean.
//!
//! ```text
//!   swarm      the one task that owns the libp2p Swarm (TCP/QUIC, Noise, Yamux,
//!              request-response, gossipsub, identify, ping), behind a NodeHandle
//!   wire       the request-response protocol: Raft RPCs by group, joins, work envelopes
//!   transport  openraft's RaftTransport over the swarm, and the peer book
//!   faults     a fault layer the simulator plugs between a node and the network
//! ```
//!
//! Nothing here imports `roles`, `driver`, `messaging` or `api` (`make layering`
//! checks): the network carries what the layers above hand it.

pub mod faults;
pub mod swarm;
pub mod transport;
pub mod wire;
