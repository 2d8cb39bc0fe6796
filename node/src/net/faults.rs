//! A fault layer between a node and the network, for the simulator: it decides the fate
//! of each application message (an RPC or a gossip message) by who sends it to whom.
//!
//! ```text
//!   outbound request ──► fate(me, peer) ──► Deliver / Delay(d) / Drop (the caller gets an error)
//!   inbound request  ──► fate(peer, me) ──► Deliver / Delay(d) / Drop (the stream closes)
//!   inbound gossip   ──► fate(forwarder, me) ──► Deliver / Delay(d) / Drop (ignored, no penalty)
//! ```
//!
//! Loss and delay leave connections up: libp2p's own traffic (identify, ping, gossip
//! control messages) flows, as it would through a lossy network that still lets some
//! packets through. A cut ([`Faults::reachable`] false) is a partition as a real network
//! makes one: [`Cut`] refuses new connections across it, and the swarm closes those
//! already open within [`CUT_CHECK`], so liveness and healing see it. A node without a
//! fault layer (every real node) pays nothing for it.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};

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

    /// Whether `from` and `to` can hold a connection at all (false across a partition).
    fn reachable(&self, _from: &PeerId, _to: &PeerId) -> bool {
        true
    }
}

/// How often a node with a fault layer closes its connections that a cut made
/// unreachable.
pub const CUT_CHECK: Duration = Duration::from_millis(500);

/// Refuses connections across a cut, before the dial for a known peer and after the
/// handshake for an inbound one, as a network that lets no packet through would.
#[derive(Debug)]
pub(crate) struct Cut {
    me: PeerId,
    faults: Arc<dyn Faults>,
}

impl Cut {
    pub(crate) fn new(me: PeerId, faults: Arc<dyn Faults>) -> Self {
        Self { me, faults }
    }

    fn enforce(&self, peer: &PeerId) -> Result<(), ConnectionDenied> {
        if self.faults.reachable(&self.me, peer) {
            Ok(())
        } else {
            Err(ConnectionDenied::new(Unreachable(*peer)))
        }
    }
}

/// Why [`Cut`] refused a connection.
#[derive(Debug)]
struct Unreachable(PeerId);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "fault layer: {} is across a cut", self.0)
    }
}

impl std::error::Error for Unreachable {}

impl NetworkBehaviour for Cut {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = std::convert::Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.enforce(&peer)?;
        Ok(dummy::ConnectionHandler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: Option<PeerId>,
        _: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        if let Some(peer) = peer {
            self.enforce(&peer)?;
        }
        Ok(Vec::new())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.enforce(&peer)?;
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

/// Most messages held back by delays at once, per node; beyond it, delayed messages are
/// dropped (and counted as such by the simulator's delivery figures).
pub const MAX_DELAYED: usize = 4_096;
