//! The one task that owns the libp2p `Swarm`, and the [`NodeHandle`] everything else uses
//! to talk to it over bounded channels.
//!
//! ```text
//!   NodeHandle ──Command (bounded)──► swarm task ──► libp2p (TCP/QUIC, Noise, Yamux)
//!   inbound RPC ◄──Inbound (bounded)── swarm task ◄── peers
//! ```

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt as _;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, noise, ping, tcp, yamux};
use tokio::sync::{mpsc, oneshot};

use crate::wire::{Codec, PROTOCOL, Rpc, RpcResponse};

/// Bound of the command and inbound queues.
pub const QUEUE_CAPACITY: usize = 1024;
/// How long an RPC may take before the caller gets an error.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(NetworkBehaviour)]
struct Behaviour {
    rpc: request_response::Behaviour<Codec>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

/// Errors of the network layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetworkError {
    /// The swarm could not be built or could not listen.
    #[error("network setup failed: {0}")]
    Setup(String),
    /// The swarm task has stopped.
    #[error("the network task has stopped")]
    Stopped,
    /// The request failed (dial failure, timeout, connection closed, ...).
    #[error("request to {peer} failed: {reason}")]
    Request {
        /// The peer.
        peer: PeerId,
        /// What failed.
        reason: String,
    },
}

enum Command {
    Request {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        rpc: Rpc,
        reply: oneshot::Sender<Result<RpcResponse, NetworkError>>,
    },
    Respond {
        channel: ResponseChannel<RpcResponse>,
        response: RpcResponse,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    ConnectedPeers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<PeerId, NetworkError>>,
    },
}

/// A request that arrived from a peer; answer it with [`NodeHandle::respond`].
pub struct Inbound {
    /// Who sent it (authenticated by Noise).
    pub peer: PeerId,
    /// What it asks.
    pub rpc: Rpc,
    /// Where the answer goes.
    pub channel: ResponseChannel<RpcResponse>,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// A cheap, cloneable handle to the swarm task.
#[derive(Clone, Debug)]
pub struct NodeHandle {
    commands: mpsc::Sender<Command>,
    peer_id: PeerId,
}

impl NodeHandle {
    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Sends `rpc` to `peer` (dialling `addrs` if not connected) and waits for the answer.
    pub async fn request(
        &self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        rpc: Rpc,
    ) -> Result<RpcResponse, NetworkError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Request {
                peer,
                addrs,
                rpc,
                reply,
            })
            .await
            .map_err(|_| NetworkError::Stopped)?;
        answer.await.map_err(|_| NetworkError::Stopped)?
    }

    /// Answers an inbound request.
    pub async fn respond(&self, channel: ResponseChannel<RpcResponse>, response: RpcResponse) {
        let _ = self
            .commands
            .send(Command::Respond { channel, response })
            .await;
    }

    /// The addresses this node listens on.
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::ListenAddrs { reply })
            .await
            .is_err()
        {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }

    /// Connects to `addr` and returns the peer id that answered there (authenticated by
    /// Noise).
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, NetworkError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Dial { addr, reply })
            .await
            .map_err(|_| NetworkError::Stopped)?;
        answer.await.map_err(|_| NetworkError::Stopped)?
    }

    /// The peers this node has a connection to.
    pub async fn connected_peers(&self) -> Vec<PeerId> {
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::ConnectedPeers { reply })
            .await
            .is_err()
        {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }
}

/// Builds the swarm, starts listening on `listen`, and spawns its task. Inbound requests
/// arrive on the returned receiver.
pub async fn start(
    keypair: libp2p::identity::Keypair,
    listen: &[Multiaddr],
) -> Result<(NodeHandle, mpsc::Receiver<Inbound>), NetworkError> {
    let setup = |error: &dyn std::fmt::Display| NetworkError::Setup(error.to_string());
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|error| setup(&error))?
        .with_quic()
        .with_behaviour(|key| Behaviour {
            rpc: request_response::Behaviour::new(
                [(PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(RPC_TIMEOUT)
                    .with_max_concurrent_streams(256),
            ),
            identify: identify::Behaviour::new(identify::Config::new(
                "/aamas/1".into(),
                key.public(),
            )),
            ping: ping::Behaviour::new(ping::Config::new()),
        })
        .map_err(|error| setup(&error))?
        .with_swarm_config(|config| config.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    for addr in listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|error| setup(&error))?;
    }
    // Wait until every listener has an address, so that callers can publish them.
    let mut pending = listen.len();
    while pending > 0 {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                pending -= 1;
            }
            SwarmEvent::ListenerError { error, .. } => return Err(setup(&error)),
            SwarmEvent::ListenerClosed {
                reason: Err(error), ..
            } => return Err(setup(&error)),
            _ => {}
        }
    }
    let peer_id = *swarm.local_peer_id();
    let (commands, command_rx) = mpsc::channel(QUEUE_CAPACITY);
    let (inbound_tx, inbound_rx) = mpsc::channel(QUEUE_CAPACITY);
    tokio::spawn(run(swarm, command_rx, inbound_tx));
    Ok((NodeHandle { commands, peer_id }, inbound_rx))
}

async fn run(
    mut swarm: Swarm<Behaviour>,
    mut commands: mpsc::Receiver<Command>,
    inbound: mpsc::Sender<Inbound>,
) {
    let mut pending: HashMap<
        OutboundRequestId,
        oneshot::Sender<Result<RpcResponse, NetworkError>>,
    > = HashMap::new();
    let mut dials: HashMap<
        libp2p::swarm::ConnectionId,
        oneshot::Sender<Result<PeerId, NetworkError>>,
    > = HashMap::new();
    loop {
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else { break };
                match command {
                    Command::Request { peer, addrs, rpc, reply } => {
                        for addr in addrs {
                            swarm.add_peer_address(peer, addr);
                        }
                        let id = swarm.behaviour_mut().rpc.send_request(&peer, rpc);
                        pending.insert(id, reply);
                    }
                    Command::Respond { channel, response } => {
                        if swarm.behaviour_mut().rpc.send_response(channel, response).is_err() {
                            tracing::debug!("response dropped: the requester went away");
                        }
                    }
                    Command::ListenAddrs { reply } => {
                        let _ = reply.send(swarm.listeners().cloned().collect());
                    }
                    Command::ConnectedPeers { reply } => {
                        let _ = reply.send(swarm.connected_peers().copied().collect());
                    }
                    Command::Dial { addr, reply } => {
                        let options = libp2p::swarm::dial_opts::DialOpts::unknown_peer_id().address(addr.clone()).build();
                        let connection = options.connection_id();
                        match swarm.dial(options) {
                            Ok(()) => {
                                dials.insert(connection, reply);
                            }
                            Err(error) => {
                                let _ = reply.send(Err(NetworkError::Setup(format!("cannot dial {addr}: {error}"))));
                            }
                        }
                    }
                }
            }
            event = swarm.select_next_some() => match event {
                SwarmEvent::Behaviour(BehaviourEvent::Rpc(request_response::Event::Message { peer, message, .. })) => match message {
                    request_response::Message::Request { request, channel, .. } => {
                        if inbound.try_send(Inbound { peer, rpc: request, channel }).is_err() {
                            tracing::warn!(%peer, "inbound queue full: request dropped");
                        }
                    }
                    request_response::Message::Response { request_id, response } => {
                        if let Some(reply) = pending.remove(&request_id) {
                            let _ = reply.send(Ok(response));
                        }
                    }
                },
                SwarmEvent::Behaviour(BehaviourEvent::Rpc(request_response::Event::OutboundFailure { request_id, error, peer, .. })) => {
                    if let Some(reply) = pending.remove(&request_id) {
                        let _ = reply.send(Err(NetworkError::Request { peer, reason: error.to_string() }));
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                    for addr in info.listen_addrs {
                        swarm.add_peer_address(peer_id, addr);
                    }
                }
                SwarmEvent::ConnectionEstablished { peer_id, connection_id, .. } => {
                    tracing::debug!(%peer_id, "connected");
                    if let Some(reply) = dials.remove(&connection_id) {
                        let _ = reply.send(Ok(peer_id));
                    }
                }
                SwarmEvent::OutgoingConnectionError { connection_id, error, .. } => {
                    if let Some(reply) = dials.remove(&connection_id) {
                        let _ = reply.send(Err(NetworkError::Setup(format!("dial failed: {error}"))));
                    }
                }
                SwarmEvent::ConnectionClosed { peer_id, .. } => tracing::debug!(%peer_id, "disconnected"),
                _ => {}
            }
        }
    }
}
