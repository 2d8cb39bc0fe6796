//! A fault layer between a node and the network, for the simulator: it decides the fate
//! of each application message (an RPC or a gossip message) by who sends it to whom.
//!
//! ```text
//!   outbound request ──► fate(me, peer) ──► Deliver / Delay(d) / Drop (the caller gets an error)
//!   inbound request  ──► fate(peer, me) ──► Deliver / Delay(d) / Drop (the stream closes)
//!   inbound gossip   ──► fate(forwarder, me) ──► Deliver / Delay(d) / Drop (ignored, no penalty)
//! ```
//!
//! Connections themselves stay up: libp2p's own traffic (identify, ping, gossip
//! control messages) flows, as it would through a lossy or partitioned network that
//! still lets some packets through. A node without a fault layer (every real node) pays
//! nothing for it.

use std::time::Duration;

use libp2p::PeerId;

/// What happens to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// It goes through now.
    Deliver,
    /// It goes through after this long.
    Delay(Duration),
    /// It is lost.
    Drop,
}

/// Decides the fate of messages; shared by every node of a simulation.
pub trait Faults: Send + Sync + std::fmt::Debug {
    /// The fate of one message from `from` to `to`.
    fn fate(&self, from: &PeerId, to: &PeerId) -> Fate;
}

/// Most messages held back by delays at once, per node; beyond it, delayed messages are
/// dropped (and counted as such by the simulator's delivery figures).
pub const MAX_DELAYED: usize = 4_096;
