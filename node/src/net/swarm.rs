//! The one task that owns the libp2p `Swarm`, and the [`NodeHandle`] everything else uses
//! to talk to it over bounded channels.
//!
//! ```text
//!   NodeHandle ──Command (bounded)──► swarm task ──► libp2p (TCP/QUIC, Noise, Yamux)
//!   inbound RPC ◄──Inbound (bounded)── swarm task ◄── peers
//!   gossip      ◄──Gossip  (bounded)── swarm task ◄── gossipsub (held until validated)
//! ```
//!
//! Behaviours: request-response (Raft RPCs, joins), gossipsub v1.1 with explicit
//! validation and peer scoring, identify, ping, mDNS (optional), and connection limits.
//!
//! Kademlia (peer routing) is optional ([`SwarmConfig::kademlia`]): its bootstrap
//! queries dial every member they learn of, so with it every node ends up connected to
//! every other (a hundred simulated nodes each held 108 connections with it, 27
//! without; memory per node fell from 12.9 to 4.8 MiB; see docs/PERFORMANCE.md). Every
//! member's addresses are in the Registry, so peer routing adds little; but without it
//! two 50-node scenarios (a restart, a leaving leader's hand-over) failed at times, so
//! it stays on unless turned off.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt as _;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageAuthenticity};
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Swarm, allow_block_list, connection_limits, identify, kad, mdns, noise,
    ping, tcp, yamux,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{mpsc, oneshot, watch};

use crate::net::faults::{CUT_CHECK, Cut, Fate, Faults, MAX_DELAYED};
use crate::net::wire::{Codec, PROTOCOL, Rpc, RpcResponse};

/// Bound of the command and inbound queues.
pub const QUEUE_CAPACITY: usize = 1024;
/// Bound of the queue of gossip messages waiting for validation; when it is full, new
/// messages are ignored (without penalty) rather than queued.
pub const GOSSIP_QUEUE_CAPACITY: usize = 4096;
/// How long an RPC may take before the caller gets an error.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest gossip message accepted from the wire. Above the envelope limit on purpose,
/// so that oversized envelopes reach the receive pipeline and are counted.
pub const GOSSIP_MAX_TRANSMIT_BYTES: usize = 256 * 1024;
/// Most established connections in total. The president keeps one to every member it
/// replicates the Registry to, so this bounds a mesh's size (see docs/PERFORMANCE.md).
pub const MAX_CONNECTIONS: u32 = 2048;
/// Most established connections to one peer.
pub const MAX_CONNECTIONS_PER_PEER: u32 = 2;
/// Most connections being set up at once, each way.
pub const MAX_PENDING_CONNECTIONS: u32 = 128;

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    /// Evicted members: their connections are closed and refused.
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    /// The simulator's cuts (only with a fault layer): connections across one refused.
    cut: Toggle<Cut>,
    rpc: request_response::Behaviour<Codec>,
    gossip: gossipsub::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    kad: Toggle<kad::Behaviour<kad::store::MemoryStore>>,
}

/// How to build the swarm.
#[derive(Debug, Clone, Default)]
pub struct SwarmConfig {
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Addresses this node listened on before (a restart's previous run): a listen
    /// address with port 0 takes the port it had then when that port is free, so that
    /// the addresses the other members hold for it stay good (see [`preferred`]).
    pub previous: Vec<Multiaddr>,
    /// Discover peers on the local network with mDNS.
    pub mdns: bool,
    /// Counts every byte written to a TCP or in-process connection (below Noise, so
    /// framing and encryption included; QUIC is not counted).
    pub bytes_sent: Counter,
    /// Run Kademlia peer routing. Real nodes do; the simulator turns it off above 60
    /// nodes, where its bootstrap queries would connect every node to every other.
    pub kademlia: bool,
    /// Connections open now (to any peer, in either direction).
    pub connections: Gauge,
    /// Connections established since start.
    pub connections_opened: Counter,
    /// The simulator's fault layer; `None` on real nodes.
    pub faults: Option<Arc<dyn Faults>>,
    /// How each connection is checked for life; `None` is [`Liveness::default`].
    pub liveness: Option<Liveness>,
}

/// How a connection is checked for life. A link that is cut (not closed) leaves a TCP
/// connection that looks established for minutes; a ping that gets no answer within
/// `timeout` closes it, so that liveness, which follows the open connections, sees the
/// peer go within `interval + timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// How often each connection is pinged.
    pub interval: Duration,
    /// How long a ping may go unanswered before its connection is closed.
    pub timeout: Duration,
}

impl Default for Liveness {
    /// Real nodes: a ping a second, answered within 3 s (a loaded machine's round trip is
    /// milliseconds; a cut link is noticed in 4 s).
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
        }
    }
}

/// A gossip message held by gossipsub until [`NodeHandle::validate`] gives its verdict.
#[derive(Debug)]
pub struct Gossip {
    /// The peer that forwarded it (not necessarily its author).
    pub source: PeerId,
    /// gossipsub's id of it.
    pub id: gossipsub::MessageId,
    /// Its topic.
    pub topic: String,
    /// The envelope bytes.
    pub data: Vec<u8>,
}

/// What a node hears from the network.
#[derive(Debug)]
pub struct Incoming {
    /// Requests to answer.
    pub requests: mpsc::Receiver<Inbound>,
    /// Gossip to validate.
    pub gossip: mpsc::Receiver<Gossip>,
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

/// Why a request was not acknowledged (see [`acked`]).
#[derive(Debug, thiserror::Error)]
pub enum Unacked {
    /// The peer refused it, with its reason.
    #[error("{reason}")]
    Refused {
        /// The peer's reason, as it answered.
        reason: String,
    },
    /// The peer answered something other than an acknowledgement.
    #[error("unexpected answer {answer}")]
    Unexpected {
        /// The answer, for the log.
        answer: String,
    },
    /// The request never got an answer.
    #[error(transparent)]
    Network(#[from] NetworkError),
}

/// `Ok` when `answer` is an [`RpcResponse::Ack`]; otherwise why not.
pub fn acked(answer: Result<RpcResponse, NetworkError>) -> Result<(), Unacked> {
    match answer? {
        RpcResponse::Ack => Ok(()),
        RpcResponse::Refused { reason } => Err(Unacked::Refused { reason }),
        other => Err(Unacked::Unexpected {
            answer: format!("{other:?}"),
        }),
    }
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
    Subscribe {
        topic: String,
    },
    Publish {
        topic: String,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(), NetworkError>>,
    },
    Validate {
        id: gossipsub::MessageId,
        source: PeerId,
        acceptance: MessageAcceptance,
    },
    AddAddresses {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        connect: bool,
    },
    Block {
        peer: PeerId,
    },
    Shutdown,
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
    /// Counts connections opened and closed, so that duties can wake on a change.
    connection_changes: watch::Receiver<u64>,
}

impl NodeHandle {
    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// A receiver that sees a change each time a connection opens or closes.
    pub fn connection_changes(&self) -> watch::Receiver<u64> {
        self.connection_changes.clone()
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

    /// Subscribes to a gossip topic (idempotent).
    pub async fn subscribe(&self, topic: &str) {
        let topic = topic.to_string();
        let _ = self.commands.send(Command::Subscribe { topic }).await;
    }

    /// Publishes `data` on a gossip topic.
    pub async fn publish(&self, topic: &str, data: Vec<u8>) -> Result<(), NetworkError> {
        let (reply, answer) = oneshot::channel();
        let topic = topic.to_string();
        self.commands
            .send(Command::Publish { topic, data, reply })
            .await
            .map_err(|_| NetworkError::Stopped)?;
        answer.await.map_err(|_| NetworkError::Stopped)?
    }

    /// Gives gossipsub the verdict on a held message: accept (forward it), ignore (drop
    /// it), or reject (drop it and penalise `source`).
    pub async fn validate(
        &self,
        id: gossipsub::MessageId,
        source: PeerId,
        acceptance: MessageAcceptance,
    ) {
        let _ = self
            .commands
            .send(Command::Validate {
                id,
                source,
                acceptance,
            })
            .await;
    }

    /// Tells the swarm where a peer listens and, with `connect`, dials it
    /// unless already connected (without waiting for the outcome).
    pub async fn add_addresses(&self, peer: PeerId, addrs: Vec<Multiaddr>, connect: bool) {
        let _ = self
            .commands
            .send(Command::AddAddresses {
                peer,
                addrs,
                connect,
            })
            .await;
    }

    /// Closes every connection with `peer` and refuses its new ones from now on (an
    /// evicted member).
    pub async fn block(&self, peer: PeerId) {
        let _ = self.commands.send(Command::Block { peer }).await;
    }

    /// Stops the swarm task: every connection closes.
    pub async fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown).await;
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

fn gossip_config() -> Result<gossipsub::Config, NetworkError> {
    gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .max_transmit_size(GOSSIP_MAX_TRANSMIT_BYTES)
        // gossipsub's default (1 s): messages are pushed through the mesh at once; the
        // heartbeat only keeps the mesh and gossips message ids, and an idle mesh spends
        // much of its CPU in it and its peer scores.
        .heartbeat_interval(Duration::from_secs(1))
        .build()
        .map_err(|error| NetworkError::Setup(format!("gossipsub config: {error}")))
}

/// Peer scoring as gossipsub v1.1 defines it, except that many peers behind one IP
/// address are not penalised: meshes on one host (tests, the simulator, several nodes per
/// machine) are legitimate here, and admission, not IP diversity, keeps Sybils out.
///
/// Scores decay every [`SCORE_DECAY_INTERVAL`] rather than every second: the decay walks
/// every peer's counters for every topic, and in an idle mesh it was about 4% of the CPU.
/// Each counter decays by its per-second factor to the power of the interval, so a
/// penalty fades as fast as gossipsub's defaults intend, in coarser steps.
fn score_params() -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    let defaults = gossipsub::PeerScoreParams::default();
    let params = gossipsub::PeerScoreParams {
        ip_colocation_factor_weight: 0.0,
        decay_interval: SCORE_DECAY_INTERVAL,
        behaviour_penalty_decay: per_interval(defaults.behaviour_penalty_decay),
        slow_peer_decay: per_interval(defaults.slow_peer_decay),
        ..defaults
    };
    (params, gossipsub::PeerScoreThresholds::default())
}

/// How often peer scores decay (see [`score_params`]).
pub const SCORE_DECAY_INTERVAL: Duration = Duration::from_secs(5);

/// A per-second decay factor as the factor for one [`SCORE_DECAY_INTERVAL`].
fn per_interval(per_second: f64) -> f64 {
    per_second.powf(SCORE_DECAY_INTERVAL.as_secs_f64())
}

/// Scoring of one of our topics. Invalid messages (a `Reject` verdict) cost the forwarder
/// `INVALID_MESSAGE_WEIGHT` × their count squared, decaying by 70% a second (in steps of
/// [`SCORE_DECAY_INTERVAL`]): a peer that forwards four invalid messages in quick
/// succession is graylisted (-80) for a while. Delivery-rate penalties stay off: a quiet
/// mesh is not a faulty one.
fn topic_params() -> gossipsub::TopicScoreParams {
    let defaults = gossipsub::TopicScoreParams::default();
    gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: INVALID_MESSAGE_WEIGHT,
        invalid_message_deliveries_decay: per_interval(0.3),
        first_message_deliveries_decay: per_interval(defaults.first_message_deliveries_decay),
        ..defaults
    }
}

/// Score per invalid message squared; see [`topic_params`].
pub const INVALID_MESSAGE_WEIGHT: f64 = -5.0;

/// Builds the swarm, starts listening, and spawns its task. Inbound requests and gossip
/// arrive on the returned receivers.
pub async fn start(
    keypair: libp2p::identity::Keypair,
    config: &SwarmConfig,
) -> Result<(NodeHandle, Incoming), NetworkError> {
    let setup = |error: &dyn std::fmt::Display| NetworkError::Setup(error.to_string());
    let listen = &config.listen;
    let liveness = config.liveness.unwrap_or_default();
    let gossip_config = gossip_config()?;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_quic()
        // TCP and in-process connections (`/memory/N` addresses: the simulator runs many
        // nodes in one process over these), each with Noise and Yamux, and each counting
        // the bytes it writes.
        .with_other_transport(
            |key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                use libp2p::Transport as _;
                let sent = config.bytes_sent.clone();
                Ok(
                    tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                        .map(move |stream, _| Counted::new(stream, sent.clone()))
                        .upgrade(libp2p::core::upgrade::Version::V1)
                        .authenticate(noise::Config::new(key)?)
                        .multiplex(yamux::Config::default()),
                )
            },
        )
        .map_err(|error| setup(&error))?
        .with_other_transport(
            |key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                use libp2p::Transport as _;
                let sent = config.bytes_sent.clone();
                Ok(libp2p::core::transport::MemoryTransport::default()
                    .map(move |channel, _| Counted::new(channel, sent.clone()))
                    .upgrade(libp2p::core::upgrade::Version::V1)
                    .authenticate(noise::Config::new(key)?)
                    .multiplex(yamux::Config::default()))
            },
        )
        .map_err(|error| setup(&error))?
        .with_behaviour(
            |key| -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
                let peer = key.public().to_peer_id();
                let mut gossip = gossipsub::Behaviour::new(
                    MessageAuthenticity::Signed(key.clone()),
                    gossip_config,
                )?;
                let (params, thresholds) = score_params();
                gossip.with_peer_score(params, thresholds)?;
                let kad = config.kademlia.then(|| {
                    let mut kad = kad::Behaviour::new(peer, kad::store::MemoryStore::new(peer));
                    kad.set_mode(Some(kad::Mode::Server));
                    kad
                });
                let mdns = if config.mdns {
                    Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer)?)
                } else {
                    None
                };
                Ok(Behaviour {
                    blocked: allow_block_list::Behaviour::default(),
                    cut: Toggle::from(config.faults.clone().map(|faults| Cut::new(peer, faults))),
                    limits: connection_limits::Behaviour::new(
                        connection_limits::ConnectionLimits::default()
                            .with_max_established(Some(MAX_CONNECTIONS))
                            .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
                            .with_max_pending_incoming(Some(MAX_PENDING_CONNECTIONS))
                            .with_max_pending_outgoing(Some(MAX_PENDING_CONNECTIONS)),
                    ),
                    rpc: request_response::Behaviour::new(
                        [(PROTOCOL, ProtocolSupport::Full)],
                        request_response::Config::default()
                            .with_request_timeout(RPC_TIMEOUT)
                            .with_max_concurrent_streams(256),
                    ),
                    gossip,
                    identify: identify::Behaviour::new(identify::Config::new(
                        "/aamas/1".into(),
                        key.public(),
                    )),
                    ping: ping::Behaviour::new(
                        ping::Config::new()
                            .with_interval(liveness.interval)
                            .with_timeout(liveness.timeout),
                    ),
                    mdns: Toggle::from(mdns),
                    kad: Toggle::from(kad),
                })
            },
        )
        .map_err(|error| setup(&error))?
        .with_swarm_config(|config| config.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    for addr in listen {
        let reused = preferred(addr, &config.previous)
            .is_some_and(|previous| match swarm.listen_on(previous.clone()) {
                Ok(_) => true,
                Err(error) => {
                    tracing::info!(%previous, %error, "the previous port is taken; listening on a new one");
                    false
                }
            });
        if !reused {
            swarm
                .listen_on(addr.clone())
                .map_err(|error| setup(&error))?;
        }
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
    let (inbound_tx, requests) = mpsc::channel(QUEUE_CAPACITY);
    let (gossip_tx, gossip) = mpsc::channel(GOSSIP_QUEUE_CAPACITY);
    let (changes, connection_changes) = watch::channel(0);
    tokio::spawn(run(
        swarm,
        command_rx,
        Outlets {
            inbound: inbound_tx,
            gossip: gossip_tx,
        },
        config.faults.clone(),
        ConnectionCounters {
            open: config.connections.clone(),
            opened: config.connections_opened.clone(),
            changes,
        },
    ));
    Ok((
        NodeHandle {
            commands,
            peer_id,
            connection_changes,
        },
        Incoming { requests, gossip },
    ))
}

/// The address among `previous` that `addr` asks for when `addr` lets the system pick
/// its port (a TCP or UDP port 0): the same address but for a port that is not 0.
pub fn preferred(addr: &Multiaddr, previous: &[Multiaddr]) -> Option<Multiaddr> {
    use libp2p::multiaddr::Protocol;
    fn zeroed(addr: &Multiaddr) -> (Multiaddr, bool) {
        let mut any = false;
        let zeroed = addr
            .iter()
            .filter(|part| !matches!(part, Protocol::P2p(_)))
            .map(|part| match part {
                Protocol::Tcp(port) => {
                    any |= port == 0;
                    Protocol::Tcp(0)
                }
                Protocol::Udp(port) => {
                    any |= port == 0;
                    Protocol::Udp(0)
                }
                other => other,
            })
            .collect();
        (zeroed, any)
    }
    let (wanted, picks_port) = zeroed(addr);
    if !picks_port {
        return None;
    }
    previous.iter().find_map(|old| {
        let (template, zero) = zeroed(old);
        (!zero && template == wanted).then(|| {
            old.iter()
                .filter(|part| !matches!(part, Protocol::P2p(_)))
                .collect()
        })
    })
}

/// Tells the swarm, and Kademlia when it runs, where `peer` listens.
fn learn_address(swarm: &mut Swarm<Behaviour>, peer: PeerId, addr: Multiaddr) {
    swarm.add_peer_address(peer, addr.clone());
    if let Some(kad) = swarm.behaviour_mut().kad.as_mut() {
        kad.add_address(&peer, addr);
    }
}

/// The swarm task's count of connections.
struct ConnectionCounters {
    open: Gauge,
    opened: Counter,
    /// Bumped on every connection opened or closed.
    changes: watch::Sender<u64>,
}

/// Where the swarm task hands what arrives.
struct Outlets {
    inbound: mpsc::Sender<Inbound>,
    gossip: mpsc::Sender<Gossip>,
}

impl Outlets {
    fn request(&self, request: Inbound) {
        if let Err(mpsc::error::TrySendError::Full(request)) = self.inbound.try_send(request) {
            tracing::warn!(peer = %request.peer, "inbound queue full: request dropped");
        }
    }

    /// Hands a gossip message on, or gives it back when the queue is full.
    fn gossip(&self, held: Gossip) -> Option<Gossip> {
        match self.gossip.try_send(held) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(held)) => {
                tracing::warn!("gossip queue full: message ignored");
                Some(held)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => None,
        }
    }
}

/// A message the fault layer held back, coming due.
enum Due {
    Request {
        peer: PeerId,
        rpc: Rpc,
        reply: oneshot::Sender<Result<RpcResponse, NetworkError>>,
    },
    Inbound(Inbound),
    Gossip(Gossip),
}

/// Holds `due` back for `delay`, or gives it back when too many are held already.
fn hold(due: Due, delay: Duration, delayed: &mpsc::Sender<Due>) -> Option<Due> {
    match delayed.clone().try_reserve_owned() {
        Ok(slot) => {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                slot.send(due);
            });
            None
        }
        Err(_) => Some(due),
    }
}

async fn run(
    mut swarm: Swarm<Behaviour>,
    mut commands: mpsc::Receiver<Command>,
    outlets: Outlets,
    faults: Option<Arc<dyn Faults>>,
    connections: ConnectionCounters,
) {
    let me = *swarm.local_peer_id();
    let fate = |from: &PeerId, to: &PeerId| {
        faults
            .as_ref()
            .map_or(Fate::Deliver, |faults| faults.fate(from, to))
    };
    let (delayed, mut due) = mpsc::channel::<Due>(MAX_DELAYED);
    let mut pending: HashMap<
        OutboundRequestId,
        oneshot::Sender<Result<RpcResponse, NetworkError>>,
    > = HashMap::new();
    let mut dials: HashMap<
        libp2p::swarm::ConnectionId,
        oneshot::Sender<Result<PeerId, NetworkError>>,
    > = HashMap::new();
    let mut cut_check = tokio::time::interval(CUT_CHECK);
    cut_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cut_check.tick(), if faults.is_some() => {
                if let Some(faults) = &faults {
                    let cut: Vec<PeerId> = swarm
                        .connected_peers()
                        .filter(|peer| !faults.reachable(&me, peer))
                        .copied()
                        .collect();
                    for peer in cut {
                        tracing::debug!(%peer, "fault layer: connection cut");
                        let _ = swarm.disconnect_peer_id(peer);
                    }
                }
            }
            Some(item) = due.recv() => match item {
                Due::Request { peer, rpc, reply } => {
                    let id = swarm.behaviour_mut().rpc.send_request(&peer, rpc);
                    pending.insert(id, reply);
                }
                Due::Inbound(request) => outlets.request(request),
                Due::Gossip(held) => {
                    if let Some(held) = outlets.gossip(held) {
                        swarm.behaviour_mut().gossip.report_message_validation_result(&held.id, &held.source, MessageAcceptance::Ignore);
                    }
                }
            },
            command = commands.recv() => {
                let Some(command) = command else { break };
                match command {
                    Command::Request { peer, addrs, rpc, reply } => {
                        for addr in addrs {
                            learn_address(&mut swarm, peer, addr);
                        }
                        match fate(&me, &peer) {
                            Fate::Deliver => {
                                let id = swarm.behaviour_mut().rpc.send_request(&peer, rpc);
                                pending.insert(id, reply);
                            }
                            Fate::Delay(delay) => {
                                if let Some(Due::Request { reply, .. }) = hold(Due::Request { peer, rpc, reply }, delay, &delayed) {
                                    let _ = reply.send(Err(NetworkError::Request { peer, reason: "fault layer: too many delayed messages".into() }));
                                }
                            }
                            Fate::Drop => {
                                let _ = reply.send(Err(NetworkError::Request { peer, reason: "fault layer: message dropped".into() }));
                            }
                            Fate::Twice(delay) => {
                                // The copy's answer goes nowhere: its receiver is dropped.
                                let (unread, _) = oneshot::channel();
                                let copy = Due::Request { peer, rpc: rpc.clone(), reply: unread };
                                let id = swarm.behaviour_mut().rpc.send_request(&peer, rpc);
                                pending.insert(id, reply);
                                drop(hold(copy, delay, &delayed));
                            }
                        }
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
                    Command::Subscribe { topic } => {
                        let topic = IdentTopic::new(topic);
                        let gossip = &mut swarm.behaviour_mut().gossip;
                        if let Err(error) = gossip.set_topic_params(topic.clone(), topic_params()) {
                            tracing::warn!(error, "gossip topic scoring not set");
                        }
                        if let Err(error) = gossip.subscribe(&topic) {
                            tracing::warn!(%error, "gossip subscription failed");
                        }
                    }
                    Command::Publish { topic, data, reply } => {
                        let result = swarm
                            .behaviour_mut()
                            .gossip
                            .publish(IdentTopic::new(topic), data)
                            .map(|_| ())
                            .map_err(|error| NetworkError::Setup(format!("publish failed: {error}")));
                        let _ = reply.send(result);
                    }
                    Command::Validate { id, source, acceptance } => {
                        swarm.behaviour_mut().gossip.report_message_validation_result(&id, &source, acceptance);
                    }
                    Command::Shutdown => break,
                    Command::Block { peer } => {
                        if swarm.behaviour_mut().blocked.block_peer(peer) {
                            tracing::info!(%peer, "blocked an evicted member");
                        }
                    }
                    Command::AddAddresses { peer, addrs, connect } => {
                        for addr in &addrs {
                            learn_address(&mut swarm, peer, addr.clone());
                        }
                        if connect && !swarm.is_connected(&peer) {
                            let options = libp2p::swarm::dial_opts::DialOpts::peer_id(peer).addresses(addrs).build();
                            if let Err(error) = swarm.dial(options) {
                                tracing::debug!(%peer, %error, "dial failed");
                            }
                        }
                    }
                }
            }
            event = swarm.select_next_some() => match event {
                SwarmEvent::Behaviour(BehaviourEvent::Rpc(request_response::Event::Message { peer, message, .. })) => match message {
                    request_response::Message::Request { request, channel, .. } => {
                        let request = Inbound { peer, rpc: request, channel };
                        match fate(&peer, &me) {
                            Fate::Deliver | Fate::Twice(_) => outlets.request(request),
                            // Dropping the response channel closes the stream: the
                            // requester gets an error, as after a lost message.
                            Fate::Drop => drop(request),
                            Fate::Delay(delay) => drop(hold(Due::Inbound(request), delay, &delayed)),
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
                SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { peer, connection, result: Err(error) })) => {
                    // No answer in time: the link is cut or the peer is stuck. Close the
                    // connection so that liveness (which follows open connections) and
                    // the dialler see it; a live peer is dialled again.
                    tracing::debug!(%peer, %error, "ping failed; closing the connection");
                    swarm.close_connection(connection);
                }
                SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                    for addr in info.listen_addrs {
                        learn_address(&mut swarm, peer_id, addr);
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Gossip(gossipsub::Event::Message { propagation_source, message_id, message })) => {
                    let held = Gossip {
                        source: propagation_source,
                        id: message_id,
                        topic: message.topic.into_string(),
                        data: message.data,
                    };
                    let refused = match fate(&propagation_source, &me) {
                        Fate::Deliver | Fate::Twice(_) => outlets.gossip(held),
                        Fate::Drop => Some(held),
                        Fate::Delay(delay) => match hold(Due::Gossip(held), delay, &delayed) {
                            Some(Due::Gossip(held)) => Some(held),
                            _ => None,
                        },
                    };
                    if let Some(held) = refused {
                        swarm.behaviour_mut().gossip.report_message_validation_result(&held.id, &held.source, MessageAcceptance::Ignore);
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                    for (peer, addr) in found {
                        learn_address(&mut swarm, peer, addr.clone());
                        if !swarm.is_connected(&peer) && let Err(error) = swarm.dial(addr) {
                            tracing::debug!(%peer, %error, "mDNS dial failed");
                        }
                    }
                }
                SwarmEvent::ConnectionEstablished { peer_id, connection_id, .. } => {
                    tracing::debug!(%peer_id, "connected");
                    connections.open.inc();
                    connections.opened.inc();
                    connections.changes.send_modify(|count| *count = count.wrapping_add(1));
                    if let Some(reply) = dials.remove(&connection_id) {
                        let _ = reply.send(Ok(peer_id));
                    }
                }
                SwarmEvent::OutgoingConnectionError { connection_id, error, .. } => {
                    if let Some(reply) = dials.remove(&connection_id) {
                        let _ = reply.send(Err(NetworkError::Setup(format!("dial failed: {error}"))));
                    }
                }
                SwarmEvent::ConnectionClosed { peer_id, .. } => {
                    tracing::debug!(%peer_id, "disconnected");
                    connections.open.dec();
                    connections.changes.send_modify(|count| *count = count.wrapping_add(1));
                }
                _ => {}
            }
        }
    }
}

/// A connection that counts the bytes written to it.
#[derive(Debug)]
struct Counted<S> {
    inner: S,
    sent: Counter,
}

impl<S> Counted<S> {
    fn new(inner: S, sent: Counter) -> Self {
        Self { inner, sent }
    }
}

impl<S: futures::AsyncRead + Unpin> futures::AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: futures::AsyncWrite + Unpin> futures::AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &written {
            this.sent.inc_by(u64::try_from(*n).unwrap_or(u64::MAX));
        }
        written
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::preferred;
    use libp2p::Multiaddr;

    fn addr(text: &str) -> Multiaddr {
        text.parse().expect("multiaddr")
    }

    #[test]
    fn a_port_zero_address_prefers_its_previous_port() {
        let previous = [
            addr("/ip4/10.0.0.2/tcp/4100"),
            addr("/ip4/10.0.0.1/udp/4200/quic-v1"),
            addr("/ip4/10.0.0.1/tcp/4300/p2p/12D3KooWGtFKu26UcwF7MNUuUbyqjRDg5HMKz3oAitM8kq7Q3TmB"),
        ];
        assert_eq!(
            preferred(&addr("/ip4/10.0.0.1/tcp/0"), &previous),
            Some(addr("/ip4/10.0.0.1/tcp/4300"))
        );
        assert_eq!(
            preferred(&addr("/ip4/10.0.0.1/udp/0/quic-v1"), &previous),
            Some(addr("/ip4/10.0.0.1/udp/4200/quic-v1"))
        );
        // Another host, a fixed port, or nothing before: no preference.
        assert_eq!(preferred(&addr("/ip4/10.0.0.3/tcp/0"), &previous), None);
        assert_eq!(preferred(&addr("/ip4/10.0.0.1/tcp/5000"), &previous), None);
        assert_eq!(preferred(&addr("/ip4/10.0.0.1/tcp/0"), &[]), None);
    }
}
