//! A running node: identity, swarm, Raft groups, admission, and the president's duties.
//!
//! ```text
//!   DATA_DIR/identity.key  ed25519 + X25519 (0600)
//!   DATA_DIR/mesh          which mesh this node belongs to, and whether it founded it
//!   DATA_DIR/raft/         RocksDB: every Raft group of this node
//!   DATA_DIR/api.token     bearer token of the control API (0600)
//!   DATA_DIR/api.addr      the control API's bound address
//!   DATA_DIR/listen.addrs  where libp2p listened: a restart takes the same ports
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aamas_consensus::registry::{DEFAULT_STATES, Registry, RegistryCommand, RegistryResponse};
use aamas_consensus::{
    Command, FEDERAL_GROUP, Group, Groups, MemberNode, NodeId, RaftConfig, Request, Store,
    StoreConfig, WriteError,
};
use aamas_protocol::{Identity, MeshId, NodeKey};
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

use crate::messaging::{Authority, Inbox, Topics};
use crate::net::swarm::{self, Gossip, Inbound, NodeHandle};
use crate::net::transport::{Libp2pTransport, PeerBook};
use crate::net::wire::{JoinRequest, JoinResponse, Rpc, RpcResponse};
use crate::token::JoinToken;

pub use crate::roles::president::{FEDERAL_VOTERS, LEARNERS_PER_TICK, VOTER_DEAD_TIMEOUT_MS};
/// Inbound requests handled at once.
pub const MAX_INBOUND_IN_FLIGHT: usize = 64;
/// How often the president reconciles voters and liveness.
pub const PRESIDENT_TICK: Duration = Duration::from_millis(500);
/// Tasks a worker runs at once by default (its capacity in the Registry).
pub const WORKER_CAPACITY: u32 = 4;
/// Most tasks a worker may run at once.
pub const MAX_WORKER_CAPACITY: u32 = 1_024;
/// How a join refusal that is worth retrying begins.
const ADMISSION_NOT_COMMITTED: &str = "could not commit the admission";
/// Least time between two changes of the federal membership that add learners, unless
/// a full batch is waiting. openraft rebuilds every replication stream on a membership
/// change and ignores the answers to what the old streams sent, so changes every tick
/// during a mesh's formation kept learners from ever catching up.
pub const LEARNER_CHANGE_GAP: Duration = Duration::from_secs(2);
/// The gap grows by this much per member: a change rebuilds one stream per member.
pub const LEARNER_CHANGE_GAP_PER_MEMBER: Duration = Duration::from_millis(10);
/// The most the gap grows to.
pub const MAX_LEARNER_CHANGE_GAP: Duration = Duration::from_secs(15);

/// Least time between two learner changes in a group of `members`: [`LEARNER_CHANGE_GAP`],
/// or [`LEARNER_CHANGE_GAP_PER_MEMBER`] per member when that is longer, at most
/// [`MAX_LEARNER_CHANGE_GAP`].
pub fn learner_change_gap(members: usize) -> Duration {
    let per_member =
        LEARNER_CHANGE_GAP_PER_MEMBER.saturating_mul(u32::try_from(members).unwrap_or(u32::MAX));
    per_member.clamp(LEARNER_CHANGE_GAP, MAX_LEARNER_CHANGE_GAP)
}
/// How many times a restarted member goes round the members it knows to re-announce
/// its addresses.
pub const JOIN_ATTEMPTS: usize = 20;
/// How long a joiner follows redirects and retries a busy or changing president before
/// it gives up. A president admitting hundreds of joiners at once refuses some as busy
/// for many seconds; twenty quick retries (the old bound) gave up on a 1,000-node
/// simulated mesh at its 486th member.
pub const JOIN_PATIENCE: Duration = Duration::from_secs(120);
/// First pause between join attempts; it doubles up to [`JOIN_RETRY_MAX`].
pub const JOIN_RETRY_MIN: Duration = Duration::from_millis(250);
/// Longest pause between join attempts.
pub const JOIN_RETRY_MAX: Duration = Duration::from_secs(4);
/// How long a restarted member tries one member when it re-announces itself.
const ANNOUNCE_PATIENCE: Duration = Duration::from_secs(2);

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The Raft node id of a member: the first 8 bytes of SHA-256 of its node key.
pub fn node_id(key: &NodeKey) -> NodeId {
    let digest = Sha256::digest(key.0);
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes)
}

/// The libp2p peer id of a node key.
pub fn peer_id(key: &NodeKey) -> Result<PeerId, NodeError> {
    PeerId::from_bytes(&key.peer_id_bytes()).map_err(|error| NodeError::Invalid(error.to_string()))
}

/// Why [`Node::ask_within`] has no answer.
#[derive(Debug, thiserror::Error)]
pub enum AskError {
    /// The member's key does not make a peer id.
    #[error(transparent)]
    Key(#[from] NodeError),
    /// The request failed on the network.
    #[error(transparent)]
    Network(#[from] swarm::NetworkError),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
}

/// Errors of running a node.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Reading or writing the data dir failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The identity could not be loaded.
    #[error(transparent)]
    Identity(#[from] aamas_protocol::IdentityError),
    /// The data dir belongs to no mesh.
    #[error(
        "{0} is not part of a mesh yet: run `aamas init --data-dir {0}` to found one, or start the \
         node with `--join ADDR --token TOKEN`"
    )]
    NoMesh(String),
    /// `init` on a data dir that already has a mesh.
    #[error("{path} already belongs to mesh {mesh}; use another --data-dir")]
    AlreadyInitialised {
        /// The data dir.
        path: String,
        /// Its mesh.
        mesh: MeshId,
    },
    /// The join was refused.
    #[error("join refused: {0}")]
    JoinRefused(String),
    /// A value is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The network failed.
    #[error(transparent)]
    Network(#[from] swarm::NetworkError),
    /// The Raft store failed.
    #[error(transparent)]
    Store(#[from] aamas_consensus::StoreError),
    /// A crashed node's tasks still held its Raft database after the limit.
    #[error(
        "the Raft database at {path} is still open {limit:?} after the crash: a task of \
         the crashed node still holds it",
        limit = CRASH_CLOSE_LIMIT
    )]
    StillOpen {
        /// The database directory.
        path: String,
    },
    /// A leaving node could not give up its place in some groups (they go on without
    /// it, and replace it as dead once it is gone).
    #[error("left, but still in: {0}")]
    Resign(String),
    /// A Raft group failed (boxed: openraft's errors are large).
    #[error(transparent)]
    Group(Box<aamas_consensus::GroupError>),
    /// A Raft group's core stopped for good while the node ran (a storage write failed):
    /// the node exits rather than stay up unable to write.
    #[error(
        "Raft group {group} stopped: {reason}. This node cannot write its data dir \
         {data_dir}{hint}; it stopped rather than go on half-working. What it acknowledged \
         is on its disk and on the group's other members; start it again (systemd's \
         Restart=on-failure does) once the cause is fixed"
    )]
    GroupStopped {
        /// The group.
        group: aamas_consensus::GroupId,
        /// Why, as openraft gave it.
        reason: String,
        /// The data dir.
        data_dir: String,
        /// What to do about it, when the cause is known.
        hint: String,
    },
}

impl From<aamas_consensus::GroupError> for NodeError {
    fn from(error: aamas_consensus::GroupError) -> Self {
        NodeError::Group(Box::new(error))
    }
}

/// Which mesh a data dir belongs to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeshFile {
    /// The mesh id.
    pub mesh: MeshId,
    /// Its human name.
    pub name: String,
    /// Whether this node founded it (and so founds the federal group).
    pub founder: bool,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::Io {
        path: path.to_owned(),
        source,
    }
}

impl MeshFile {
    fn path(data_dir: &Path) -> PathBuf {
        data_dir.join("mesh")
    }

    /// Reads the mesh file of `data_dir`, if it has one.
    pub fn load(data_dir: &Path) -> Result<Option<Self>, NodeError> {
        let path = Self::path(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => postcard::from_bytes(&bytes)
                .map(Some)
                .map_err(|error| NodeError::Io {
                    path: path.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidData, error),
                }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(NodeError::Io { path, source }),
        }
    }

    fn save(&self, data_dir: &Path) -> Result<(), NodeError> {
        let path = Self::path(data_dir);
        let bytes =
            postcard::to_stdvec(self).map_err(|error| NodeError::Invalid(error.to_string()))?;
        std::fs::write(&path, bytes).map_err(io_error(&path))
    }
}

/// What `aamas init` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Founded {
    /// The founder's peer id.
    pub peer_id: String,
    /// The new mesh's id.
    pub mesh_id: String,
    /// A join token for the next node.
    pub token: String,
}

fn identity_path(data_dir: &Path) -> PathBuf {
    data_dir.join("identity.key")
}

fn create_data_dir(data_dir: &Path) -> Result<(), NodeError> {
    std::fs::create_dir_all(data_dir).map_err(io_error(data_dir))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_error(data_dir))?;
    }
    Ok(())
}

/// Founds a mesh in `data_dir`: an identity, a mesh id, and a first join token, valid
/// for `token_ttl` and `token_uses` admissions.
pub fn init(
    data_dir: &Path,
    name: &str,
    token_ttl: Duration,
    token_uses: u32,
) -> Result<Founded, NodeError> {
    create_data_dir(data_dir)?;
    if let Some(existing) = MeshFile::load(data_dir)? {
        return Err(NodeError::AlreadyInitialised {
            path: data_dir.display().to_string(),
            mesh: existing.mesh,
        });
    }
    let (identity, _) = Identity::load_or_create(&identity_path(data_dir))?;
    let mesh = MeshId::random().map_err(|error| NodeError::Invalid(error.to_string()))?;
    MeshFile {
        mesh,
        name: name.into(),
        founder: true,
    }
    .save(data_dir)?;
    let token = issue_token(&identity, mesh, token_ttl, token_uses)?;
    let policy = data_dir.join(crate::driver::policy::POLICY_FILE);
    if !policy.exists() {
        std::fs::write(&policy, crate::governance::policy::DEFAULT_POLICY)
            .map_err(io_error(&policy))?;
    }
    Ok(Founded {
        peer_id: identity.node_key().peer_id(),
        mesh_id: mesh.to_string(),
        token,
    })
}

/// A new join token signed by `identity`, valid for `ttl` and `uses` admissions.
pub fn issue_token(
    identity: &Identity,
    mesh: MeshId,
    ttl: Duration,
    uses: u32,
) -> Result<String, NodeError> {
    if uses == 0 || uses > crate::token::MAX_TOKEN_USES {
        let max = crate::token::MAX_TOKEN_USES;
        return Err(NodeError::Invalid(format!(
            "a join token allows 1 to {max} uses, not {uses}"
        )));
    }
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    JoinToken::issue(identity, mesh, now_ms().saturating_add(ttl_ms), uses)
        .map(|token| token.encode())
        .map_err(|error| NodeError::Invalid(error.to_string()))
}

/// How to run a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Where identity, mesh file, Raft database and API files live.
    pub data_dir: PathBuf,
    /// libp2p listen addresses.
    pub listen: Vec<Multiaddr>,
    /// The control API's address (port 0 picks one); `None` serves no API (the
    /// simulator's nodes).
    pub api: Option<SocketAddr>,
    /// Join this mesh through this address with this token.
    pub join: Option<(Multiaddr, String)>,
    /// This node's skills.
    pub skills: Vec<String>,
    /// The executors this node runs tasks with (shell is off by default).
    pub executors: crate::exec::ExecutorSet,
    /// How shell tasks are confined (Landlock by default; see
    /// [`crate::exec::sandbox`]).
    pub shell_sandbox: crate::exec::sandbox::ShellSandbox,
    /// Raft timing.
    pub raft: RaftConfig,
    /// fsync every Raft write.
    pub fsync: bool,
    /// Discover peers on the local network with mDNS.
    pub mdns: bool,
    /// Tasks this node runs at once as a worker.
    pub capacity: u32,
    /// The simulator's fault layer; `None` on real nodes.
    pub faults: Option<Arc<dyn crate::net::faults::Faults>>,
    /// RocksDB memtable size per column family; `None` keeps RocksDB's default (the
    /// simulator sets it small, see `StoreConfig::memtable_bytes`).
    pub memtable_bytes: Option<usize>,
    /// A RocksDB block cache and memtable budget shared with other nodes in this process
    /// (the simulator's); `None` on real nodes, whose database has its own.
    pub shared_memory: Option<aamas_consensus::SharedMemory>,
    /// Run Kademlia peer routing (see `swarm::SwarmConfig::kademlia`).
    pub kademlia: bool,
    /// How connections are checked for life (see `swarm::Liveness`); `None` is the
    /// default for real nodes.
    pub liveness: Option<swarm::Liveness>,
    /// A shell command this node runs, as president, when the mesh wants more workers
    /// (see [`crate::driver::scaling`]); `None` runs nothing.
    pub scale_hook: Option<String>,
    /// The largest output a task may produce here (`None`:
    /// [`crate::driver::artifacts::DEFAULT_MAX_ARTIFACT_BYTES`]); a larger one fails its
    /// task, and this node keeps no copy of a larger artefact for others.
    pub max_artifact_bytes: Option<usize>,
}

/// Why this node could not give up its place in a group (see `Node::resign`).
#[derive(Debug, thiserror::Error)]
pub enum ResignError {
    /// The group has no leader to ask.
    #[error("the group has no leader")]
    NoLeader,
    /// This node is the group's only voter: nobody can take it over.
    #[error("this node is the group's only voter")]
    OnlyVoter,
    /// This node leads the group and could not hand it over.
    #[error("handing over the lead failed")]
    HandOverFailed,
    /// The leader did not answer within the ask's limit.
    #[error("the leader did not answer in time")]
    LeaderSilent,
    /// The leader is not in the peer book.
    #[error("the leader {0} is not in the peer book")]
    LeaderUnknown(NodeId),
    /// The leader refused or the request failed.
    #[error(transparent)]
    Unacked(crate::net::swarm::Unacked),
}

/// The shared state of a running node.
pub struct Node {
    /// This node itself, for work that must outlive a borrowed call (the courier's
    /// carriers); it never keeps the node alive.
    pub(crate) this: std::sync::Weak<Node>,
    pub(crate) identity: Identity,
    pub(crate) mesh: MeshFile,
    pub(crate) handle: NodeHandle,
    pub(crate) groups: Groups<Libp2pTransport>,
    pub(crate) book: PeerBook,
    pub(crate) data_dir: PathBuf,
    pub(crate) metrics: crate::metrics::Metrics,
    pub(crate) inbox: Inbox,
    pub(crate) topics: Topics,
    sealer: Mutex<aamas_protocol::Sealer>,
    pub(crate) work: crate::driver::work::WorkState,
    /// Task outputs kept here, and the limits of moving them
    /// ([`crate::driver::artifacts`]).
    pub(crate) artifacts: crate::driver::artifacts::ArtifactState,
    /// What this node's roles decided or committed, and its role changes
    /// ([`crate::events`]).
    pub(crate) events: crate::events::EventBus,
    /// The newest group key this node holds, which seals the events it emits
    /// ([`crate::driver::mesh_events`]).
    pub(crate) group_key: Mutex<Option<aamas_protocol::GroupKey>>,
    /// The hierarchy in the Registry as this node last saw it, for its changes' events.
    pub(crate) hierarchy_seen: Mutex<crate::driver::mesh_events::HierarchySeen>,
    /// States whose topic this node joined to stream their events.
    pub(crate) states_followed: Mutex<BTreeSet<String>>,
    skills: Vec<String>,
    capacity: u32,
    /// Set when the node stops or crashes: ends every task started by [`Node::spawn`].
    stopping: tokio::sync::watch::Sender<bool>,
    /// When each member was last seen connected (ms); members get a grace period from
    /// when this node first heard of them.
    liveness: Mutex<HashMap<NodeId, u64>>,
    /// Members that resigned from a group this node leads, with when (ms).
    resigned: Mutex<HashMap<NodeId, u64>>,
    /// The last [`DELIVERY_LOG`] gossip envelopes accepted, with when (for the simulator's
    /// delivery and propagation figures).
    deliveries: Mutex<std::collections::VecDeque<(aamas_protocol::MessageId, std::time::Instant)>>,
    /// Peer ids of node keys, computed once each (a peer id costs an encoding and a
    /// hash; ticks look up every member's).
    peer_ids: Mutex<HashMap<NodeKey, (NodeId, PeerId)>>,
    /// The Registry's members by peer id, as of the last [`Node::reconcile_liveness`].
    member_peers: Mutex<HashMap<PeerId, NodeId>>,
    /// The policy in force, parsed, with its version (see [`Node::policy`]).
    pub(crate) policy_cache: Mutex<Option<(u64, Arc<crate::governance::policy::Policy>)>>,
    /// The states the president left without a group under the policy's tier, each
    /// counted once while it waits.
    pub(crate) ungoverned_by_tier: Mutex<BTreeSet<String>>,
    /// Held while the president arbitrates ResourceRequests: a round and a request just
    /// raised must not both see the same room in a pool and approve past it. It keeps
    /// the last verdict on each open request, so each new verdict is counted once.
    pub(crate) arbitrating:
        tokio::sync::Mutex<std::collections::BTreeMap<u64, crate::governance::policy::Verdict>>,
    /// Held while the president places a newcomer in a state: two admissions at once
    /// must not both count the states before either placement commits, and put both
    /// newcomers in the same least-populated state.
    placing: tokio::sync::Mutex<()>,
    /// This node's view, as a mayor, of its workers' outcomes.
    pub(crate) monitor: Mutex<crate::governance::monitor::Monitor>,
    /// When this node, as a mayor, last asked about each state's resource.
    pub(crate) resource_asks: Mutex<BTreeMap<crate::driver::resources::Ask, (u64, u64)>>,
    /// The communication policy's bound on work messages per sender.
    pub(crate) rate: Mutex<crate::governance::rate::RateLimiter<NodeKey>>,
    /// The operator's scale hook (`--scale-hook`).
    pub(crate) scale_hook: Option<String>,
    /// When the scale hook last ran.
    pub(crate) scale_hook_ran: Mutex<Option<u64>>,
    /// When this node, as president, last moved a member between states.
    pub(crate) state_moved: Mutex<Option<u64>>,
    /// Evicted members this node has blocked (see [`Node::enforce_evictions`]).
    pub(crate) blocked: Mutex<std::collections::HashSet<PeerId>>,
    /// The Registry's members version at the last rebuild of the book and the roster.
    members_seen: Mutex<Option<u64>>,
    /// The Registry's applied index and the president when the book and the inbox were
    /// last rebuilt, the members that rebuild saw, and when it ran (see
    /// [`Node::registry_look`]).
    registry_version: Mutex<RebuildMark>,
    /// When this node (as president) last added federal learners.
    learners_added: Mutex<Option<std::time::Instant>>,
    /// Wakes the work roles at once: a group this node holds applied an entry, or a
    /// governor's report arrived (see [`crate::driver::work::WORK_TICK`]).
    pub(crate) work_wake: Arc<tokio::sync::Notify>,
    /// Bumped when something a duty reacts to changed: the Registry copy or the
    /// president, a group's leader, a connection (see [`Pace`]).
    pub(crate) changes: tokio::sync::watch::Sender<u64>,
    /// Whether this node held a work role (president, governor, mayor) at the last work
    /// round: such a node decides on liveness, so its duties keep their quick pace.
    pub(crate) on_duty: std::sync::atomic::AtomicBool,
    /// This node's copy of the Registry while it is outside the federal group (see
    /// `crate::driver::mirroring`).
    pub(crate) mirror: aamas_consensus::Mirror,
    /// The member that admitted this node: the relay its mirror asks first.
    pub(crate) relay_hint: Mutex<Option<NodeId>>,
    /// Whether the mirror was written to disk with this node admitted in it.
    pub(crate) mirror_saved_admitted: std::sync::atomic::AtomicBool,
    /// Whether this node's federal copy may not start elections: see
    /// [`Node::govern_federal_elections`].
    pub(crate) federal_elections_off: std::sync::atomic::AtomicBool,
}

/// What the last rebuild of the book and the inbox saw: the Registry's applied index
/// and the president, the members, and when.
type RebuildMark = (
    Option<(u64, Option<NodeId>)>,
    usize,
    Option<std::time::Instant>,
);

/// Least time between two rebuilds of the book and the inbox while only the Registry
/// changes (the president's change rebuilds at once): none below 200 members (every
/// tick that sees a change rebuilds, as small meshes always did), then one tick per 200
/// members, at most 5 s. A new member's messages are ignored as from an unknown sender
/// until the next rebuild.
pub fn rebuild_gap(members: usize) -> Duration {
    (PRESIDENT_TICK * u32::try_from(members / 200).unwrap_or(u32::MAX)).min(Duration::from_secs(5))
}

/// A node with enough connections still looks for missing links into other states
/// this often, at the first round after it (see `Node::connect_to_neighbours`). Each
/// look ranks every member, and a lost link into another state leaves the others.
pub const NEIGHBOUR_LOOK_EVERY: Duration = Duration::from_secs(15);

/// How long a member that resigned from a group counts as gone, whether or not it is
/// still connected (see [`Node::last_seen`]).
pub const RESIGNED_FOR_MS: u64 = 60_000;

/// How long a leaving node tries to give up its seat in one group (see
/// [`Running::leave`]).
pub const RESIGN_LIMIT: Duration = Duration::from_secs(10);
/// How long one request to leave a group may wait for the leader's answer.
pub const RESIGN_ASK_LIMIT: Duration = Duration::from_secs(3);

/// How long a leader that hands over waits for the successor to take the campaign
/// request, and then to win. Each new request starts another election, so a wait cut
/// short by load (a dev build of a 50-node simulation answered later than a second)
/// makes the next try disrupt the one under way.
pub const HAND_OVER_WAIT: Duration = Duration::from_secs(3);

/// How many accepted gossip envelopes a node remembers for [`Node::deliveries`].
pub const DELIVERY_LOG: usize = 4_096;
/// How many known voters of a state the president asks to confirm a governor's report.
pub const LEADERSHIP_ASKED: usize = 3;
/// How long the president waits for a voter's answer about a state's leadership.
pub const LEADERSHIP_TIMEOUT: Duration = Duration::from_secs(2);

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("peer_id", &self.handle.peer_id())
            .finish_non_exhaustive()
    }
}

/// A snapshot of what this node knows, for `status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Status {
    /// This node.
    pub peer_id: String,
    /// Its roles: "president", "governor", "mayor", "worker".
    pub roles: Vec<String>,
    /// The president's peer id, if known.
    pub president: Option<String>,
    /// The state this node is placed in.
    pub state: Option<String>,
    /// Active members in the Registry (this node's copy).
    pub members: usize,
    /// The federal group's term.
    pub term: u64,
    /// Where this node listens.
    pub listen_addrs: Vec<String>,
    /// The mesh's group key as this node knows it (events are sealed under it).
    #[serde(default)]
    pub group_key: GroupKeyView,
    /// This node's wall clock when it answered (ms since the Unix epoch), to compare
    /// with other nodes' and the operator's: leases and timers keep monotonic time, but
    /// token expiry, resource periods and events' times read this one.
    #[serde(default)]
    pub clock_ms: u64,
}

/// The mesh's group key, as one node sees it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct GroupKeyView {
    /// The Registry's current epoch (0: no key yet).
    pub epoch: u64,
    /// The members it is wrapped for, by peer id.
    pub recipients: usize,
    /// The newest epoch this node holds the key of.
    pub held: u64,
}

/// The hierarchy as this node's Registry copy has it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Hierarchy {
    /// The president's peer id, if known.
    pub president: Option<String>,
    /// The federal group's voters' peer ids.
    pub federal_voters: Vec<String>,
    /// Every state, in name order.
    pub states: Vec<StateView>,
    /// Members not placed in a state yet.
    pub unplaced: Vec<String>,
}

/// One state of the hierarchy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct StateView {
    /// Its name.
    pub name: String,
    /// Its governor's peer id, once its group has a leader that reported itself.
    pub governor: Option<String>,
    /// The governor's term in the state group.
    pub term: u64,
    /// The state group's voters' peer ids.
    pub voters: Vec<String>,
    /// Its mayors' peer ids.
    pub mayors: Vec<String>,
    /// Its cities, their mayors and queues.
    pub cities: Vec<CityView>,
    /// Its workers' peer ids.
    pub workers: Vec<String>,
}

/// One city of a state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct CityView {
    /// Its name.
    pub name: String,
    /// Its mayor's peer id, while a lease holds.
    pub mayor: Option<String>,
    /// Its queue: pending tasks that fall to it and tasks assigned through it. Known only
    /// on a node that holds a copy of the state's Ledger (a voter of the state).
    pub queue: Option<u64>,
}

/// One member as `members` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct MemberView {
    /// Its peer id.
    pub peer_id: String,
    /// Its state.
    pub state: Option<String>,
    /// Its roles.
    pub roles: Vec<String>,
    /// Whether this node has a connection to it (always true for itself).
    pub alive: bool,
}

pub(crate) fn request_id(parts: &[&[u8]]) -> u128 {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    u128::from_be_bytes(bytes)
}

/// The roles of a member, in rank order; every member is a worker.
fn roles(is_president: bool, is_governor: bool, is_mayor: bool) -> Vec<String> {
    [
        (is_president, "president"),
        (is_governor, "governor"),
        (is_mayor, "mayor"),
        (true, "worker"),
    ]
    .into_iter()
    .filter(|(holds, _)| *holds)
    .map(|(_, role)| role.to_string())
    .collect()
}

/// Who governs and who is mayor, by peer id, as the Registry records it.
fn recorded_roles(registry: &Registry) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut governors = BTreeSet::new();
    let mut mayors = BTreeSet::new();
    for info in registry.states().values() {
        if let Some(record) = &info.governor {
            governors.insert(record.node.peer_id());
            mayors.extend(record.mayors.values().flatten().map(NodeKey::peer_id));
        }
    }
    (governors, mayors)
}

impl Node {
    pub(crate) fn federal(&self) -> Option<Group> {
        self.groups.get(FEDERAL_GROUP)
    }

    pub(crate) fn me(&self) -> NodeId {
        node_id(&self.identity.node_key())
    }

    /// When `id` was last seen connected, if this node has heard of it. A member that
    /// resigned from one of this node's groups lately counts as never seen: it is still
    /// connected while it leaves, and must not be picked for the seat it just gave up.
    pub(crate) fn last_seen(&self, id: NodeId) -> Option<u64> {
        let resigned = self
            .resigned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            .is_some_and(|at| now_ms().saturating_sub(*at) < RESIGNED_FOR_MS);
        if resigned {
            return None;
        }
        self.liveness
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&id)
            .copied()
    }

    /// Whether each of `keys` was seen connected within `window_ms` of `now_ms`, in
    /// order; a member that resigned lately counts as unseen (see [`Node::last_seen`]).
    /// Each lock is taken once for all: the role duties ask this of every member.
    pub(crate) fn seen_within<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a NodeKey>,
        now_ms: u64,
        window_ms: u64,
    ) -> Vec<bool> {
        let ids: Vec<NodeId> = keys.into_iter().map(|key| self.id_of(key)).collect();
        let resigned = self
            .resigned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let liveness = self
            .liveness
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        ids.iter()
            .map(|id| {
                let resigned = resigned
                    .get(id)
                    .is_some_and(|at| now_ms.saturating_sub(*at) < RESIGNED_FOR_MS);
                !resigned
                    && liveness
                        .get(id)
                        .is_some_and(|seen| now_ms.saturating_sub(*seen) <= window_ms)
            })
            .collect()
    }

    /// The peer id of `key`, computed once.
    pub(crate) fn peer_of(&self, key: &NodeKey) -> Option<PeerId> {
        self.ids_of(key).map(|(_, peer)| peer)
    }

    /// The Raft node id of `key`, computed once (see [`Node::ids_of`]).
    pub(crate) fn id_of(&self, key: &NodeKey) -> NodeId {
        self.ids_of(key).map_or_else(|| node_id(key), |(id, _)| id)
    }

    /// The Raft node id and the peer id of `key`, computed once (each costs a hash; the
    /// ticks of a thousand-member mesh look up every member's).
    pub(crate) fn ids_of(&self, key: &NodeKey) -> Option<(NodeId, PeerId)> {
        let mut known = self
            .peer_ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(ids) = known.get(key) {
            return Some(*ids);
        }
        let ids = (node_id(key), peer_id(key).ok()?);
        known.insert(*key, ids);
        Some(ids)
    }

    /// Runs `work` in the background for as long as this node lives: it is dropped (and
    /// with it its hold on the node) when the node stops or crashes. Work that outlived
    /// its node would keep the node's database open and act for a node that is gone.
    pub(crate) fn spawn<F>(&self, work: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut stopping = self.stopping.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                () = work => {}
                _ = stopping.wait_for(|stopped| *stopped) => {}
            }
        });
    }

    /// Whether the book and the inbox should be rebuilt now: the president changed, or
    /// the Registry (its applied index) changed and the last rebuild is older than
    /// [`rebuild_gap`] for a mesh of this size. Each rebuild reads every member, so in a
    /// mesh of a thousand forming members a rebuild every tick on every node was a
    /// billion member reads a minute.
    fn registry_look(&self) -> RegistryLook {
        let version = self
            .registry_index()
            .map(|index| (index, self.president_and_term().0.map(|(id, _)| id)));
        let mut last = self
            .registry_version
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (seen, members, at) = &mut *last;
        if *seen == version {
            return RegistryLook::Unchanged;
        }
        let president_changed = seen.map(|(_, leader)| leader) != version.map(|(_, leader)| leader);
        let due = at.is_none_or(|at| at.elapsed() >= rebuild_gap(*members));
        if !(president_changed || due) {
            return RegistryLook::Deferred;
        }
        *seen = version;
        *at = Some(std::time::Instant::now());
        RegistryLook::Changed
    }

    /// Tells the duties that something they react to changed (see [`Pace`]).
    pub(crate) fn note_change(&self) {
        self.changes
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    /// Whether this node's duties should keep their quick pace: it is the president, or
    /// it held a work role at the last work round (see [`Node::on_duty`]).
    fn keeps_watch(&self) -> bool {
        self.on_duty.load(std::sync::atomic::Ordering::Relaxed)
            || self
                .federal()
                .is_some_and(|federal| federal.leader() == Some(self.me()))
    }

    /// Notes how many members the last rebuild saw (for [`rebuild_gap`]).
    fn rebuilt_with(&self, members: usize) {
        self.registry_version
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .1 = members;
    }

    /// Takes the Registry's members into the liveness map: new ones get their grace
    /// period from now, members that left are dropped. Reads every member, so it runs
    /// only when the Registry changed (see [`Node::registry_look`]).
    async fn reconcile_liveness(&self) {
        let now = now_ms();
        let members: Vec<NodeKey> = self
            .registry(|registry| registry.active_members().map(|(key, _)| *key).collect())
            .await
            .unwrap_or_default();
        let by_peer: HashMap<PeerId, NodeId> = members
            .iter()
            .filter_map(|key| {
                let (id, peer) = self.ids_of(key)?;
                Some((peer, id))
            })
            .collect();
        {
            let mut liveness = self
                .liveness
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let wanted: std::collections::HashSet<NodeId> = by_peer.values().copied().collect();
            liveness.retain(|id, _| wanted.contains(id));
            for id in wanted {
                liveness.entry(id).or_insert(now);
            }
        }
        *self
            .member_peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = by_peer;
    }

    /// Marks this node and the members it is connected to as seen now. Costs one lookup
    /// per connection, not one per member: every node runs it every tick.
    async fn update_liveness(&self) {
        let now = now_ms();
        let connected = self.handle.connected_peers().await;
        let me = self.handle.peer_id();
        let members = self
            .member_peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut liveness = self
            .liveness
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for peer in connected.iter().chain(std::iter::once(&me)) {
            if let Some(id) = members.get(peer) {
                liveness.insert(*id, now);
            }
        }
    }

    /// Before stopping, hands each group this node leads to its most caught-up voter:
    /// that voter campaigns at once, so the group has a new leader within a round trip
    /// instead of an election timeout after the heartbeats stop.
    async fn hand_over_leadership(&self) {
        for id in self.groups.ids() {
            self.hand_over(id).await;
        }
    }

    /// Hands `id`, if this node leads it, to its most caught-up voter (see
    /// [`Node::hand_over_leadership`]); whether another voter leads it afterwards.
    async fn hand_over(&self, id: aamas_consensus::GroupId) -> bool {
        let me = self.me();
        let Some(group) = self.groups.get(id) else {
            return false;
        };
        let metrics = group.raft().metrics().borrow().clone();
        if metrics.current_leader != Some(me) {
            return false;
        }
        let successor = metrics
            .replication
            .iter()
            .flatten()
            .filter(|(node, _)| **node != me)
            .filter(|(node, _)| {
                metrics
                    .membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == **node)
            })
            .max_by_key(|(_, matched)| matched.map(|log_id| log_id.index))
            .map(|(node, _)| *node);
        let Some(successor) = successor else {
            return false;
        };
        let Some((peer, addrs)) = self.book.get(successor) else {
            return false;
        };
        let campaign = self
            .handle
            .request(peer, addrs, Rpc::Campaign { group: id });
        match tokio::time::timeout(HAND_OVER_WAIT, campaign).await {
            Ok(Ok(RpcResponse::Ack)) => {
                // Stay (and vote) until the successor has won, for at most
                // HAND_OVER_WAIT: with two voters it needs this node's vote.
                let mut watch = group.raft().metrics();
                let won = tokio::time::timeout(
                    HAND_OVER_WAIT,
                    watch.wait_for(|m| m.current_leader.is_some_and(|leader| leader != me)),
                )
                .await
                .is_ok_and(|changed| changed.is_ok());
                tracing::info!(group = id, successor, won, "handed over leadership");
                won
            }
            other => {
                tracing::debug!(group = id, ?other, "handing over leadership failed");
                false
            }
        }
    }

    /// Gives up this node's place in group `id` (voter or learner) for good: hands the
    /// group over if it leads it, then asks the leader to take it out, for at most
    /// [`RESIGN_LIMIT`]. A state group this node is not in (any more) is done at once;
    /// outside the federal group, it still asks the president to mark it as left.
    async fn resign(&self, id: aamas_consensus::GroupId) -> Result<(), ResignError> {
        let me = self.me();
        let deadline = tokio::time::Instant::now() + RESIGN_LIMIT;
        let mut last = ResignError::NoLeader;
        loop {
            let Some(group) = self.groups.get(id) else {
                return Ok(());
            };
            let metrics = group.raft().metrics().borrow().clone();
            let membership = metrics.membership_config.membership();
            let mut leader = metrics.current_leader;
            if membership.get_node(&me).is_none() {
                // A member outside the federal group (a mirror) still leaves the mesh:
                // the president marks it as left in the Registry.
                if id != FEDERAL_GROUP {
                    return Ok(());
                }
                leader = self.president().map(|(president, _)| president);
            }
            if leader.is_none() && id == FEDERAL_GROUP {
                // A voter replaced while it was slow still counts itself in, but follows
                // no leader: the president it knows from its mirror takes it out.
                leader = self
                    .president()
                    .map(|(president, _)| president)
                    .filter(|president| *president != me);
            }
            match leader {
                Some(leader) if leader == me => {
                    if membership.voter_ids().all(|voter| voter == me) {
                        return Err(ResignError::OnlyVoter);
                    }
                    if !self.hand_over(id).await {
                        last = ResignError::HandOverFailed;
                    }
                }
                Some(leader) => match self.book.get(leader) {
                    Some((peer, addrs)) => {
                        let asked = self.handle.request(peer, addrs, Rpc::Resign { group: id });
                        // One ask may not take all the time left: a leader that is stuck
                        // or was deposed meanwhile is asked again, or its successor is.
                        let left = deadline
                            .saturating_duration_since(tokio::time::Instant::now())
                            .min(RESIGN_ASK_LIMIT);
                        match tokio::time::timeout(left, asked).await {
                            Ok(answer) => match crate::net::swarm::acked(answer) {
                                Ok(()) => return Ok(()),
                                Err(unacked) => last = ResignError::Unacked(unacked),
                            },
                            Err(_) => last = ResignError::LeaderSilent,
                        }
                    }
                    None => last = ResignError::LeaderUnknown(leader),
                },
                None => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(last);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Subscribes to the topic of this node's state once it is placed.
    async fn subscribe_to_state(&self) {
        let me = self.identity.node_key();
        let state = self
            .registry(|registry| registry.members().get(&me).and_then(|m| m.state.clone()))
            .await
            .flatten();
        if let Some(state) = state {
            self.handle.subscribe(&self.topics.state(&state)).await;
        }
    }

    /// Whether the Registry's members changed since the last call (see
    /// [`aamas_consensus::Registry::members_version`]).
    async fn members_changed(&self) -> bool {
        let Some(version) = self.registry(|registry| registry.members_version()).await else {
            return false;
        };
        let mut seen = self
            .members_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = *seen != Some(version);
        *seen = Some(version);
        changed
    }

    /// Rebuilds the inbox's authority from the Registry, and its roster too when the
    /// members changed: the roster and each member's state are read from every member,
    /// the president, governors and mayors from a few records.
    async fn update_inbox(&self, members_changed: bool) {
        let president = self
            .president()
            .and_then(|(_, peer)| NodeKey::from_peer_id(&peer));
        let snapshot = self
            .registry(|registry| {
                let mut authority = Authority {
                    president: president.filter(|key| registry.is_active(key)),
                    ..Authority::default()
                };
                for (state, info) in registry.states() {
                    if let Some(record) = &info.governor {
                        authority.governors.insert(state.clone(), record.node);
                        for mayor in record.mayors.values().flatten() {
                            authority.mayors.insert(*mayor, state.clone());
                        }
                    }
                }
                let members = members_changed.then(|| {
                    authority.states = registry
                        .active_members()
                        .filter_map(|(key, member)| Some((*key, member.state.clone()?)))
                        .collect();
                    registry
                        .active_members()
                        .map(|(_, member)| member.identity)
                        .collect::<Vec<aamas_protocol::PublicIdentity>>()
                });
                (members, authority)
            })
            .await;
        match snapshot {
            Some((Some(members), authority)) => {
                self.rebuilt_with(members.len());
                self.note_hierarchy(&authority, Some(&members));
                self.inbox.update(&members, authority);
            }
            Some((None, authority)) => {
                self.note_hierarchy(&authority, None);
                self.inbox.update_roles(authority);
            }
            None => {}
        }
    }

    /// Judges one gossip message and gives gossipsub the verdict.
    async fn handle_gossip(&self, gossip: Gossip) {
        let verdict = self.inbox.judge(
            &self.identity,
            now_ms(),
            &gossip.topic,
            &gossip.data,
            &self.metrics,
        );
        if let Some(opened) = &verdict.opened {
            tracing::debug!(sender = %opened.header.sender, kind = ?opened.header.kind, "message opened");
            self.take_event(opened);
        }
        if let Some(id) = verdict.accepted {
            let mut log = self
                .deliveries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if log.len() == DELIVERY_LOG {
                log.pop_front();
            }
            log.push_back((id, std::time::Instant::now()));
        }
        self.handle
            .validate(gossip.id, gossip.source, verdict.acceptance)
            .await;
    }

    fn seal_to(
        &self,
        topic: &str,
        payload: &aamas_protocol::Payload,
        to: aamas_protocol::To<'_>,
    ) -> Result<aamas_protocol::Sealed, aamas_protocol::SealError> {
        let mut sealer = self
            .sealer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        sealer.seal(
            &self.identity,
            now_ms(),
            aamas_protocol::Outgoing {
                topic,
                payload,
                to,
                ttl_ms: 60_000,
            },
        )
    }

    /// Seals `payload` for `recipients` on `topic`.
    pub(crate) fn seal(
        &self,
        topic: &str,
        payload: &aamas_protocol::Payload,
        recipients: &[aamas_protocol::PublicIdentity],
    ) -> Result<Vec<u8>, aamas_protocol::SealError> {
        self.seal_to(topic, payload, aamas_protocol::To::Members(recipients))
            .map(|sealed| sealed.bytes)
    }

    /// Seals `payload` for `to` and publishes it on `topic`.
    pub async fn publish(
        &self,
        topic: &str,
        payload: &aamas_protocol::Payload,
        to: aamas_protocol::To<'_>,
    ) -> Result<(), NodeError> {
        let sealed = self
            .seal_to(topic, payload, to)
            .map_err(|error| NodeError::Invalid(error.to_string()))?;
        self.handle.publish(topic, sealed.bytes).await?;
        Ok(())
    }

    /// Seals a probe for every member: a `probe` query on the `all` topic, sealed for
    /// this node only, so that every other member checks and relays it.
    pub fn seal_probe(&self) -> Result<aamas_protocol::Sealed, NodeError> {
        let payload = aamas_protocol::Payload::Query(aamas_protocol::Query {
            in_reply_to: None,
            question: "probe".into(),
            body: Vec::new(),
        });
        let me = [self.identity.public()];
        self.seal_to(
            &self.topics.all(),
            &payload,
            aamas_protocol::To::Members(&me),
        )
        .map_err(|error| NodeError::Invalid(error.to_string()))
    }

    /// Publishes a probe (see [`Node::seal_probe`]); the simulator times its arrival at
    /// each node with [`Node::deliveries`].
    pub async fn probe(&self) -> Result<aamas_protocol::MessageId, NodeError> {
        let sealed = self.seal_probe()?;
        self.handle
            .publish(&self.topics.all(), sealed.bytes)
            .await?;
        Ok(sealed.id)
    }

    /// Test hook: publishes `bytes` on the `all` topic as they are (the simulator's flood
    /// replays and tampers with a member's envelopes through it). Not reachable from the
    /// network, the API or the CLI.
    pub async fn publish_raw(&self, bytes: Vec<u8>) -> Result<(), NodeError> {
        self.handle.publish(&self.topics.all(), bytes).await?;
        Ok(())
    }

    /// The `all` topic's name.
    pub fn all_topic(&self) -> String {
        self.topics.all()
    }

    /// This node's mesh.
    pub fn mesh_id(&self) -> MeshId {
        self.mesh.mesh
    }

    /// Sends `rpc` to member `key` and waits at most `limit` for its answer: the peer id
    /// comes from the key, the addresses from the book when it has them.
    pub(crate) async fn ask_within(
        &self,
        key: &NodeKey,
        rpc: Rpc,
        limit: Duration,
    ) -> Result<RpcResponse, AskError> {
        let peer = peer_id(key)?;
        let addrs = self
            .book
            .get(node_id(key))
            .map(|(_, addrs)| addrs)
            .unwrap_or_default();
        match tokio::time::timeout(limit, self.handle.request(peer, addrs, rpc)).await {
            Ok(answer) => Ok(answer?),
            Err(_) => Err(AskError::NoAnswer(limit)),
        }
    }

    /// This node's libp2p peer id.
    pub fn peer_id(&self) -> PeerId {
        self.handle.peer_id()
    }

    /// Every metric, as `/metrics` serves them (OpenMetrics text).
    pub fn metrics_text(&self) -> String {
        self.metrics.encode()
    }

    /// Bytes this node has written to its connections.
    pub fn bytes_sent(&self) -> u64 {
        self.metrics.bytes_sent.get()
    }

    /// Connections open now, and connections established since start.
    pub fn connections(&self) -> (u64, u64) {
        (
            u64::try_from(self.metrics.connections.get()).unwrap_or(0),
            self.metrics.connections_opened.get(),
        )
    }

    /// Active members in this node's Registry copy.
    pub async fn member_count(&self) -> usize {
        self.registry(|registry| registry.active_members().count())
            .await
            .unwrap_or(0)
    }

    /// Members whose messages this node can check now: its inbox's roster, which follows
    /// the Registry copy at the next tick after it changes. Until a member is in it, that
    /// member's gossip is ignored here as from an unknown sender.
    pub fn checkable_members(&self) -> usize {
        self.inbox.known()
    }

    /// The president this node follows, the federal term, and whether it is the
    /// president itself: one snapshot, without a Registry read (cheap enough to poll a
    /// thousand nodes).
    pub fn president_claim(&self) -> (Option<String>, u64, bool) {
        let (president, term) = self.president_and_term();
        // A claim of this node's own presidency counts only with a committed vote.
        let leading = self
            .federal()
            .and_then(|federal| federal.leading_term(self.me()));
        let is_me = leading.is_some() && president.as_ref().is_some_and(|(id, _)| *id == self.me());
        (
            president.map(|(_, peer)| peer),
            leading.unwrap_or(term),
            is_me,
        )
    }

    /// The gossip envelopes this node accepted lately (at most [`DELIVERY_LOG`]), with
    /// when.
    pub fn deliveries(&self) -> Vec<(aamas_protocol::MessageId, std::time::Instant)> {
        self.deliveries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .copied()
            .collect()
    }

    pub(crate) async fn registry<R>(&self, read: impl FnOnce(&Registry) -> R) -> Option<R> {
        if self.mirror_is_ahead() {
            return self
                .mirror
                .read(|machine| machine.registry().map(read))
                .await;
        }
        self.federal()?
            .read_local(|machine| machine.registry().map(read))
            .await
    }

    /// Reads the Registry linearizably: the president confirms with a quorum that it
    /// still leads and names the index a read must see ([`Rpc::ReadIndex`]); this node
    /// reads its own copy once it has applied that far. What cannot be read so (no
    /// president, no quorum, a copy that does not catch up within
    /// [`LINEARIZABLE_READ_LIMIT`]) is an error, never a stale answer.
    pub async fn registry_linearizable<R>(
        &self,
        read: impl FnOnce(&Registry) -> R,
    ) -> Result<R, String> {
        if planted_stale_read() {
            tracing::warn!("{PLANTED_STALE_READ}: a consistent read answers from this copy");
            return self
                .registry(read)
                .await
                .ok_or_else(|| "this node holds no Registry copy".to_string());
        }
        let index = match self.federal() {
            Some(federal) if federal.leader() == Some(self.me()) => federal
                .read_index()
                .await
                .map_err(|error| error.to_string())?,
            _ => {
                let (_, peer) = self.president().ok_or("no president is known")?;
                let key =
                    NodeKey::from_peer_id(&peer).ok_or("the president's id is not a peer id")?;
                let rpc = Rpc::ReadIndex {
                    group: FEDERAL_GROUP,
                };
                match self.ask_within(&key, rpc, LINEARIZABLE_READ_LIMIT).await {
                    Ok(RpcResponse::ReadIndex(Ok(index))) => index,
                    Ok(RpcResponse::ReadIndex(Err(reason)) | RpcResponse::Refused { reason }) => {
                        return Err(format!("the president gave no read index: {reason}"));
                    }
                    Ok(other) => return Err(format!("the president answered {other:?}")),
                    Err(error) => return Err(format!("the president did not answer: {error}")),
                }
            }
        };
        let deadline = tokio::time::Instant::now() + LINEARIZABLE_READ_LIMIT;
        while self.registry_index().unwrap_or(0) < index {
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "this node's Registry copy did not reach index {index} within \
                     {LINEARIZABLE_READ_LIMIT:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.registry(read)
            .await
            .ok_or_else(|| "this node holds no Registry copy".to_string())
    }

    /// The index of the last Registry entry this node applied, in the federal group or
    /// in its mirror, whichever is further.
    fn registry_index(&self) -> Option<u64> {
        let federal = self.federal().and_then(|federal| federal.applied_index());
        federal.max(self.mirror.applied_index())
    }

    /// The federal leader's peer id, if known.
    pub(crate) fn president(&self) -> Option<(NodeId, String)> {
        self.president_and_term().0
    }

    /// The federal leader and the term, from one snapshot of the metrics, so that a
    /// leader is never paired with a later term it does not lead.
    fn president_and_term(&self) -> (Option<(NodeId, String)>, u64) {
        // Only the fields needed: on the president, a clone of the whole metrics copies
        // the replication progress of every member, and this runs for every message.
        let (leader, term) = self.federal().map_or((None, 0), |federal| {
            let metrics = federal.raft().metrics();
            let metrics = metrics.borrow();
            let leader = metrics.current_leader.and_then(|leader| {
                let node = metrics.membership_config.membership().get_node(&leader)?;
                Some((leader, node.peer_id.clone()))
            });
            (leader, metrics.current_term)
        });
        // Outside the federal group, the relays tell the president. A known leader
        // wins over none (a voter replaced while it was down campaigns alone, in
        // ever later terms), the later term between two.
        let (relayed, relayed_term) = self.mirror.leader();
        let relayed = relayed.map(|id| (id, String::new()));
        let (leader, term) = match (&leader, &relayed) {
            (Some(_), Some(_)) if relayed_term > term => (relayed, relayed_term),
            (None, Some(_)) => (relayed, relayed_term),
            (None, None) => (None, term.max(relayed_term)),
            _ => (leader, term),
        };
        let president = leader.and_then(|(leader, peer)| {
            // Learners (and voters promoted from them) have no peer id in the
            // membership; the book has it.
            if peer.is_empty() {
                Some((leader, self.book.peer(leader)?.to_string()))
            } else {
                Some((leader, peer))
            }
        });
        (president, term)
    }

    /// A subscriber to this node's event bus: the mesh's events as this node sees
    /// them, from now on (bounded: see [`crate::events`]).
    pub fn subscribe_events(
        &self,
    ) -> tokio::sync::broadcast::Receiver<Arc<crate::events::Stamped>> {
        self.events.subscribe()
    }

    /// What this node knows.
    pub async fn status(&self) -> Status {
        let me = self.identity.node_key();
        let (president, term) = self.president_and_term();
        let is_president = president.as_ref().is_some_and(|(id, _)| *id == self.me());
        let is_governor = !self.governed().await.is_empty();
        let (members, state, is_mayor, (epoch, recipients)) = self
            .registry(|registry| {
                let epoch = registry.group_key_epoch();
                (
                    registry.active_members().count(),
                    registry
                        .members()
                        .get(&me)
                        .and_then(|member| member.state.clone()),
                    recorded_roles(registry).1.contains(&me.peer_id()),
                    (
                        epoch,
                        registry.group_keys(epoch).map_or(0, |keys| keys.len()),
                    ),
                )
            })
            .await
            .unwrap_or((0, None, false, (0, 0)));
        self.metrics
            .members
            .set(i64::try_from(members).unwrap_or(i64::MAX));
        self.metrics.is_president.set(i64::from(is_president));
        self.metrics.governs.set(i64::from(is_governor));
        Status {
            peer_id: me.peer_id(),
            roles: roles(is_president, is_governor, is_mayor),
            president: president.map(|(_, peer)| peer),
            state,
            members,
            term,
            listen_addrs: self
                .handle
                .listen_addrs()
                .await
                .iter()
                .map(ToString::to_string)
                .collect(),
            group_key: GroupKeyView {
                epoch,
                recipients,
                held: self.group_key_epoch(),
            },
            clock_ms: now_ms(),
        }
    }

    /// The states this node governs, each with the term of its leadership (one snapshot
    /// of the group's metrics each, so that a term is never paired with a later one).
    pub async fn governs(&self) -> Vec<(String, u64)> {
        let me = self.me();
        let mut governs = Vec::new();
        for (state, group) in self.governed().await {
            if let Some(term) = group.leading_term(me) {
                governs.push((state, term));
            }
        }
        governs
    }

    /// The peers this node holds a connection to now.
    pub async fn connected_peers(&self) -> Vec<PeerId> {
        self.handle.connected_peers().await
    }

    /// Every member, as this node's Registry copy has them.
    pub async fn members(&self) -> Vec<MemberView> {
        let connected: BTreeSet<String> = self
            .handle
            .connected_peers()
            .await
            .iter()
            .map(ToString::to_string)
            .collect();
        let me = self.identity.node_key().peer_id();
        let president = self.president().map(|(_, peer)| peer);
        self.registry(|registry| {
            let (governors, mayors) = recorded_roles(registry);
            registry
                .active_members()
                .map(|(key, member)| {
                    let peer = key.peer_id();
                    MemberView {
                        alive: peer == me || connected.contains(&peer),
                        roles: roles(
                            president.as_deref() == Some(peer.as_str()),
                            governors.contains(&peer),
                            mayors.contains(&peer),
                        ),
                        peer_id: peer,
                        state: member.state.clone(),
                    }
                })
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    /// The tree president → governors → mayors → workers.
    pub async fn hierarchy(&self) -> Hierarchy {
        let president = self.president().map(|(_, peer)| peer);
        let queues = self.city_queues().await;
        let federal_voters: BTreeSet<NodeId> =
            self.federal_membership().await.voter_ids().collect();
        self.registry(|registry| Hierarchy {
            president: president.clone(),
            federal_voters: registry
                .active_members()
                .filter(|(key, _)| federal_voters.contains(&self.id_of(key)))
                .map(|(key, _)| key.peer_id())
                .collect(),
            states: registry
                .states()
                .iter()
                .map(|(name, info)| StateView {
                    name: name.clone(),
                    governor: info.governor.as_ref().map(|g| g.node.peer_id()),
                    term: info.governor.as_ref().map_or(0, |g| g.term),
                    voters: info
                        .governor
                        .as_ref()
                        .map(|g| g.voters.clone())
                        .or_else(|| info.group.as_ref().map(|g| g.voters.clone()))
                        .unwrap_or_default()
                        .iter()
                        .map(NodeKey::peer_id)
                        .collect(),
                    mayors: info
                        .governor
                        .iter()
                        .flat_map(|g| g.mayors.values().flatten())
                        .map(NodeKey::peer_id)
                        .collect(),
                    cities: info
                        .governor
                        .iter()
                        .flat_map(|g| g.mayors.iter())
                        .map(|(city, mayor)| CityView {
                            name: city.clone(),
                            mayor: mayor.as_ref().map(NodeKey::peer_id),
                            queue: queues.get(city).copied(),
                        })
                        .collect(),
                    workers: registry
                        .members_in_state(name)
                        .map(|(key, _)| key.peer_id())
                        .collect(),
                })
                .collect(),
            unplaced: registry
                .unplaced_members()
                .map(|(key, _)| key.peer_id())
                .collect(),
        })
        .await
        .unwrap_or(Hierarchy {
            president,
            federal_voters: Vec::new(),
            states: Vec::new(),
            unplaced: Vec::new(),
        })
    }

    /// The queue of every city of the state Ledgers this node holds a copy of.
    async fn city_queues(&self) -> BTreeMap<String, u64> {
        use aamas_consensus::ledger::TaskStatus;
        let mut queues = BTreeMap::new();
        for id in self.groups.ids() {
            let Some(group) = self.groups.get(id) else {
                continue;
            };
            let found: Vec<(String, u64)> = group
                .read_local(|machine| {
                    let Some(ledger) = machine.ledger() else {
                        return Vec::new();
                    };
                    let cities: Vec<String> = ledger.cities().keys().cloned().collect();
                    let mut counts: BTreeMap<&str, u64> =
                        cities.iter().map(|city| (city.as_str(), 0)).collect();
                    for (key, task) in ledger.tasks() {
                        let city = match task.status {
                            TaskStatus::Pending => crate::roles::cities::city_for(key, &cities),
                            TaskStatus::Assigned => task.city.as_deref(),
                            _ => None,
                        };
                        if let Some(count) = city.and_then(|city| counts.get_mut(city)) {
                            *count += 1;
                        }
                    }
                    counts
                        .into_iter()
                        .map(|(city, count)| (city.to_string(), count))
                        .collect()
                })
                .await;
            queues.extend(found);
        }
        queues
    }

    /// A new join token signed by this node, valid for `ttl` and `uses` admissions.
    pub fn create_token(&self, ttl: Duration, uses: u32) -> Result<String, NodeError> {
        issue_token(&self.identity, self.mesh.mesh, ttl, uses)
    }

    /// Refreshes the peer book from the Registry: parses only the entries whose
    /// addresses changed since the last refresh.
    async fn refresh_book(&self) {
        self.registry(|registry| {
            for (key, member) in registry.active_members() {
                if let Some((id, peer)) = self.ids_of(key) {
                    self.book.insert_listed(id, peer, &member.addrs);
                }
            }
        })
        .await;
    }

    pub(crate) async fn propose(
        &self,
        key: &[&[u8]],
        command: RegistryCommand,
    ) -> Result<(), WriteError> {
        let federal = self
            .federal()
            .ok_or_else(|| WriteError::Failed("the federal group is not open".into()))?;
        let committed = federal
            .write(Request {
                id: request_id(key),
                command: Command::Registry(command),
            })
            .await?;
        match committed.response.outcome {
            aamas_consensus::Outcome::Registry(RegistryResponse::Rejected { reason }) => Err(
                WriteError::Rejected(format!("the Registry refused it: {reason}")),
            ),
            _ => Ok(()),
        }
    }

    /// The founder's first acts as president: the default states and itself as member.
    async fn bootstrap(&self, listen: &[String]) -> Result<(), WriteError> {
        for state in DEFAULT_STATES {
            self.propose(
                &[b"bootstrap/state", state.as_bytes()],
                RegistryCommand::AddState {
                    name: state.into(),
                    budget: 1_000_000,
                },
            )
            .await?;
        }
        self.admit(
            self.identity.public(),
            listen.to_vec(),
            self.skills.clone(),
            self.capacity,
            None,
        )
        .await?;
        self.apply_founding_policy().await;
        Ok(())
    }

    async fn admit(
        &self,
        identity: aamas_protocol::PublicIdentity,
        addrs: Vec<String>,
        skills: Vec<String>,
        capacity: u32,
        token: Option<aamas_consensus::registry::TokenTerms>,
    ) -> Result<(), WriteError> {
        let key = identity.node.0;
        let addrs_key = addrs.join(",");
        self.propose(
            &[b"admit", &key, addrs_key.as_bytes()],
            RegistryCommand::AdmitMember {
                identity,
                addrs,
                skills: skills.iter().cloned().collect(),
                capacity: capacity.clamp(1, MAX_WORKER_CAPACITY),
                now_ms: now_ms(),
                token,
            },
        )
        .await?;
        // Place it: a state named like one of its skills, else the least populated
        // ([`crate::roles::president::place`]), one placement at a time.
        let _placing = self.placing.lock().await;
        let choice = self
            .registry(|registry| {
                let placed = registry
                    .members()
                    .get(&identity.node)
                    .and_then(|m| m.state.clone());
                if placed.is_some() {
                    return None;
                }
                let counts = registry.member_count_by_state();
                let states: BTreeMap<String, usize> = registry
                    .states()
                    .keys()
                    .map(|state| {
                        let members = counts.get(state.as_str()).copied().unwrap_or(0);
                        (state.clone(), members)
                    })
                    .collect();
                crate::roles::president::place(&skills, &states)
            })
            .await
            .flatten();
        if let Some(state) = choice {
            let request_key = [b"place".as_slice(), &key, state.as_bytes()].concat();
            self.propose(
                &[&request_key],
                RegistryCommand::PlaceMember {
                    node: identity.node,
                    state,
                },
            )
            .await?;
        }
        Ok(())
    }

    async fn handle_join(&self, peer: PeerId, request: JoinRequest) -> JoinResponse {
        let refused = |reason: String| JoinResponse::Refused { reason };
        let Some(federal) = self.federal() else {
            return refused("this node is not running the federal group yet".into());
        };
        if federal.leader() != Some(self.me()) {
            let president = self.president().and_then(|(id, peer)| {
                self.book
                    .get(id)
                    .map(|(_, addrs)| (peer, addrs.iter().map(ToString::to_string).collect()))
            });
            return JoinResponse::Redirect { president };
        }
        let already_member = self
            .registry(|registry| registry.is_active(&request.identity.node))
            .await
            .unwrap_or(false);
        // A member that restarted re-announces its addresses without a token.
        let mut terms = None;
        if !already_member {
            let token = match JoinToken::decode(&request.token) {
                Ok(token) => token,
                Err(error) => return refused(error.to_string()),
            };
            terms = Some(token.terms());
            if let Err(error) = token.verify(self.mesh.mesh, now_ms()) {
                return refused(error.to_string());
            }
            let issuer_is_member = self
                .registry(|registry| registry.is_active(&token.issuer))
                .await
                .unwrap_or(false);
            if !issuer_is_member {
                return refused(
                    crate::token::TokenError::UnknownIssuer {
                        issuer: token.issuer,
                    }
                    .to_string(),
                );
            }
        }
        if let Err(error) = request.identity.verify() {
            return refused(format!("the joining identity is invalid: {error}"));
        }
        if peer_id(&request.identity.node).ok() != Some(peer) {
            return refused("the identity does not match the connection's peer id".into());
        }
        if !already_member {
            let members = self
                .registry(|registry| registry.active_members().count())
                .await
                .unwrap_or_default();
            let facts = crate::governance::policy::admission_facts(
                &peer.to_base58(),
                &request.skills,
                request.capacity,
                u64::try_from(members).unwrap_or(u64::MAX),
            );
            let point = crate::governance::policy::Point::Admission;
            if let Err(reason) = self.judge(point, &[facts], None).await {
                return refused(reason);
            }
        }
        if let Err(error) = self
            .admit(
                request.identity,
                request.addrs.clone(),
                request.skills,
                request.capacity,
                terms,
            )
            .await
        {
            // A Registry rule (a token used up, revoked or expired; an evicted key) is
            // final; anything else is worth another try.
            return match error {
                WriteError::Rejected(reason) => refused(reason),
                error => refused(format!("{ADMISSION_NOT_COMMITTED}: {error}")),
            };
        }
        self.book.insert(
            node_id(&request.identity.node),
            peer,
            parse_addrs(&request.addrs),
        );
        let members = self
            .registry(|registry| {
                registry
                    .active_members()
                    .map(|(key, member)| (key.peer_id(), member.addrs.clone()))
                    .collect()
            })
            .await
            .unwrap_or_default();
        tracing::info!(%peer, "admitted a member");
        JoinResponse::Admitted {
            mesh: self.mesh.mesh,
            members,
        }
    }

    /// The Raft node id of `peer` when it is a member: one the Registry lists, or one
    /// admitted since the last reconcile or named by a join answer (in the book).
    fn member_id_of_peer(&self, peer: &PeerId) -> Option<NodeId> {
        let known = self
            .member_peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(peer)
            .copied();
        known.or_else(|| {
            let id = node_id(&NodeKey::from_peer_id(&peer.to_base58())?);
            (self.book.peer(id) == Some(*peer)).then_some(id)
        })
    }

    /// Counts a refusal under its reason and turns it into the answer.
    pub(crate) fn refuse(&self, refusal: &crate::roles::authority::Refusal) -> RpcResponse {
        self.metrics
            .rpc_refused
            .get_or_create(&crate::metrics::labels(&[("reason", refusal.label())]))
            .inc();
        RpcResponse::Refused {
            reason: refusal.to_string(),
        }
    }

    /// The newer vote to answer a leader's RPC that was refused for coming from outside
    /// `group` with, when this member's vote is newer than the leader's `vote` (see
    /// [`aamas_consensus::Group::newer_vote`]); counted. No answer for other refusals:
    /// the sender is not entitled to lead this group at all.
    fn tell_stale_leader(
        &self,
        group: aamas_consensus::GroupId,
        refusal: &crate::roles::authority::Refusal,
        vote: &openraft::Vote<NodeId>,
    ) -> Option<openraft::Vote<NodeId>> {
        if !matches!(refusal, crate::roles::authority::Refusal::NotInGroup { .. }) {
            return None;
        }
        let newer = self.groups.get(group)?.newer_vote(vote)?;
        self.metrics
            .rpc_refused
            .get_or_create(&crate::metrics::labels(&[(
                "reason",
                "not_in_group_told_newer_vote",
            )]))
            .inc();
        tracing::debug!(
            group,
            ?vote,
            ?newer,
            "told a stale leader outside the group of a newer vote"
        );
        Some(newer)
    }

    /// The checks of [`crate::roles::authority::raft`] for a Raft RPC of `sender` into `group`
    /// (opened here on first contact).
    async fn admit_raft(
        &self,
        sender: NodeId,
        group: aamas_consensus::GroupId,
        claim: crate::roles::authority::RaftClaim,
    ) -> Result<(), crate::roles::authority::Refusal> {
        self.open_on_contact(group).await;
        let (term, sender_in_group) = match self.groups.get(group) {
            Some(open) => open.term_and_membership_of(sender).await,
            None => Default::default(),
        };
        let view = crate::roles::authority::GroupView {
            group,
            term,
            sender_in_group,
        };
        crate::roles::authority::raft(sender, claim, &view)
    }

    /// Opens a state group on first contact: a governor adds this node as a learner or
    /// voter, or a voter asks for a vote, before this node knew it took part.
    async fn open_on_contact(&self, group: aamas_consensus::GroupId) {
        if group == FEDERAL_GROUP || self.groups.get(group).is_some() {
            return;
        }
        if self.state_of_group(group).await.is_some()
            && let Err(error) = self.groups.open(group).await
        {
            tracing::warn!(group, %error, "opening a state group on contact failed");
        }
    }

    async fn handle_governor_report(
        &self,
        sender: NodeId,
        state: String,
        record: aamas_consensus::registry::GovernorRecord,
    ) -> RpcResponse {
        if self.federal().and_then(|federal| federal.leader()) != Some(self.me()) {
            return RpcResponse::Refused {
                reason: "not the president".into(),
            };
        }
        let claimant = self.id_of(&record.node);
        let seen = if sender == claimant {
            self.leadership_seen(&state, claimant, record.term, &record.voters)
                .await
        } else {
            Vec::new()
        };
        if let Err(refusal) =
            crate::roles::authority::governor(sender, claimant, record.term, &seen)
        {
            tracing::debug!(state, %refusal, "governor report refused");
            return self.refuse(&refusal);
        }
        match self.record_governor(&state, record).await {
            Ok(()) => RpcResponse::Ack,
            Err(reason) => RpcResponse::Refused {
                reason: reason.to_string(),
            },
        }
    }

    /// What members of `state`'s group other than `claimant` say about its leadership:
    /// this node's own view when it is a member, else the answers of up to
    /// [`LEADERSHIP_ASKED`] active members, asked at once: first the voters the Registry
    /// knows (the founding voters and those of the last confirmed report), then the
    /// voters the report names (after churn the known ones may all have left; the
    /// answers are checked all the same, so naming a voter proves nothing by itself).
    async fn leadership_seen(
        &self,
        state: &str,
        claimant: NodeId,
        term: u64,
        claimed: &[NodeKey],
    ) -> Vec<crate::roles::authority::LeaderSeen> {
        use crate::roles::authority::LeaderSeen;
        let me = self.me();
        let known = self
            .registry(|registry| {
                let info = registry.states().get(state)?;
                let group = info.group.as_ref()?;
                let recorded = info
                    .governor
                    .iter()
                    .flat_map(|governor| governor.voters.iter());
                let mut voters: Vec<NodeKey> = Vec::new();
                for key in group.voters.iter().chain(recorded).chain(claimed) {
                    if registry.is_active(key) && !voters.contains(key) {
                        voters.push(*key);
                    }
                }
                Some((group.id, voters))
            })
            .await
            .flatten();
        let Some((group, voters)) = known else {
            return Vec::new();
        };
        if let Some(open) = self.groups.get(group)
            && open.has_member(me)
        {
            let own = LeaderSeen {
                voter: me,
                leader: open.leader(),
                term: open.term(),
            };
            if own.leader == Some(claimant) && own.term == term {
                return vec![own];
            }
        }
        let asked: Vec<(NodeId, PeerId, Vec<Multiaddr>)> = voters
            .iter()
            .filter_map(|key| {
                let (id, peer) = self.ids_of(key)?;
                let addrs = self
                    .book
                    .get(id)
                    .map(|(_, addrs)| addrs)
                    .unwrap_or_default();
                (id != claimant && id != me).then_some((id, peer, addrs))
            })
            .take(LEADERSHIP_ASKED)
            .collect();
        let answers = asked.into_iter().map(|(voter, peer, addrs)| async move {
            let request = self.handle.request(peer, addrs, Rpc::Leadership { group });
            match tokio::time::timeout(LEADERSHIP_TIMEOUT, request).await {
                Ok(Ok(RpcResponse::Leadership { leader, term })) => Some(LeaderSeen {
                    voter,
                    leader,
                    term,
                }),
                _ => None,
            }
        });
        futures::future::join_all(answers)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// A member leaves `group`, which this node leads: it is taken out of the group (and,
    /// for the federal group, marked as left in the Registry first, so that the president
    /// does not add it back as a learner).
    async fn handle_resign(&self, peer: PeerId, id: aamas_consensus::GroupId) -> RpcResponse {
        let refused = |reason: String| RpcResponse::Refused { reason };
        let Some(key) = NodeKey::from_peer_id(&peer.to_base58()) else {
            return refused("the peer id is not an ed25519 member key".into());
        };
        let node = node_id(&key);
        let Some(group) = self.groups.get(id) else {
            return refused(format!("group {id} is not open here"));
        };
        if group.leader() != Some(self.me()) {
            return refused(format!("not the leader of group {id}"));
        }
        self.resigned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(node, now_ms());
        if id == FEDERAL_GROUP {
            let at = now_ms().to_be_bytes();
            if let Err(error) = self
                .propose(
                    &[b"leave", &key.0, &at],
                    RegistryCommand::RemoveMember { node: key },
                )
                .await
            {
                return refused(format!("marking the member as left failed: {error}"));
            }
        }
        match aamas_consensus::remove_member(&group, node).await {
            Ok(aamas_consensus::Removal::Removed | aamas_consensus::Removal::NotInGroup) => {
                tracing::info!(group = id, %peer, "a member left the group");
                RpcResponse::Ack
            }
            Ok(other) => refused(format!("not removed from group {id}: {other:?}")),
            Err(error) => refused(error.to_string()),
        }
    }

    async fn handle_inbound(&self, inbound: Inbound) {
        use crate::roles::authority::RaftRpc;
        let Inbound { peer, rpc, channel } = inbound;
        let sender = self.member_id_of_peer(&peer);
        let response = match (rpc, sender) {
            (Rpc::Join(request), _) => RpcResponse::Join(self.handle_join(peer, request).await),
            // Everything else only from members: the peer book holds the Registry's members
            // and the members a join answer named.
            (_, None) => {
                tracing::debug!(%peer, "refused an RPC from a non-member");
                self.refuse(&crate::roles::authority::Refusal::NonMember)
            }
            (Rpc::GovernorReport { state, record }, Some(sender)) => {
                self.handle_governor_report(sender, state, record).await
            }
            (Rpc::Envelope(bytes), Some(_)) => self.handle_envelope(&bytes).await,
            // An operator's request another member forwarded to this node as president.
            (
                rpc @ (Rpc::SubmitProject { .. }
                | Rpc::ChangeProject { .. }
                | Rpc::RevokeToken { .. }
                | Rpc::EvictMember { .. }
                | Rpc::ApplyPolicy { .. }
                | Rpc::RaiseAlert { .. }
                | Rpc::AckAlert { .. }
                | Rpc::RaiseResourceRequest { .. }
                | Rpc::SetLimit { .. }
                | Rpc::DecideResourceRequest { .. }),
                Some(_),
            ) => match NodeKey::from_peer_id(&peer.to_base58()) {
                None => self.refuse(&crate::roles::authority::Refusal::NonMember),
                Some(requester) => self.handle_forwarded(requester, rpc).await,
            },
            (Rpc::Resign { group }, Some(_)) => self.handle_resign(peer, group).await,
            (
                Rpc::Replicate {
                    project,
                    digest,
                    size,
                    inline,
                },
                Some(_),
            ) => match NodeKey::from_peer_id(&peer.to_base58()) {
                None => self.refuse(&crate::roles::authority::Refusal::NonMember),
                Some(from) => {
                    self.handle_replicate(from, project, digest, size, inline)
                        .await
                }
            },
            (
                Rpc::ArtifactRange {
                    project,
                    digest,
                    offset,
                    max,
                },
                Some(_),
            ) => self.handle_artifact_range(&project, &digest, offset, max),
            (Rpc::ProjectTasks { project }, Some(_)) => {
                RpcResponse::Tasks(self.project_tasks(&project).await)
            }
            (Rpc::ReadIndex { group }, Some(_)) => {
                RpcResponse::ReadIndex(match self.groups.get(group) {
                    Some(open) => open.read_index().await.map_err(|error| error.to_string()),
                    None => Err(format!("group {group} is not open here")),
                })
            }
            (Rpc::StateAccounts { state }, Some(_)) => {
                RpcResponse::Accounts(self.local_accounts(&state).await)
            }
            (
                Rpc::Mirror {
                    group,
                    after,
                    wait_ms,
                },
                Some(_),
            ) => self.handle_mirror(group, after, wait_ms).await,
            (Rpc::Leadership { group }, Some(_)) => {
                let me = self.me();
                let (leader, term) = self
                    .groups
                    .get(group)
                    .filter(|open| open.has_member(me))
                    .map(|open| (open.leader(), open.term()))
                    .unwrap_or_default();
                RpcResponse::Leadership { leader, term }
            }
            (Rpc::Campaign { group }, Some(sender)) => match self.groups.get(group) {
                Some(open) => match crate::roles::authority::campaign(sender, group, open.leader())
                {
                    Err(refusal) => self.refuse(&refusal),
                    Ok(()) => match open.raft().trigger().elect().await {
                        Ok(()) => RpcResponse::Ack,
                        Err(error) => RpcResponse::Refused {
                            reason: error.to_string(),
                        },
                    },
                },
                None => RpcResponse::Refused {
                    reason: format!("group {group} is not open here"),
                },
            },
            (Rpc::Append { group, rpc }, Some(sender)) => {
                let claim = raft_claim(RaftRpc::Append, &rpc.vote);
                match self.admit_raft(sender, group, claim).await {
                    Ok(()) => {
                        RpcResponse::Append(self.groups.handle_append_entries(group, rpc).await)
                    }
                    Err(refusal) => match self.tell_stale_leader(group, &refusal, &rpc.vote) {
                        Some(vote) => RpcResponse::Append(Ok(Ok(
                            openraft::raft::AppendEntriesResponse::HigherVote(vote),
                        ))),
                        None => self.refuse(&refusal),
                    },
                }
            }
            (Rpc::Vote { group, rpc }, Some(sender)) => {
                let claim = raft_claim(RaftRpc::Vote, &rpc.vote);
                match self.admit_raft(sender, group, claim).await {
                    Ok(()) => RpcResponse::Vote(self.groups.handle_vote(group, rpc).await),
                    Err(refusal) => self.refuse(&refusal),
                }
            }
            (Rpc::Snapshot { group, rpc }, Some(sender)) => {
                let claim = raft_claim(RaftRpc::Snapshot, &rpc.vote);
                match self.admit_raft(sender, group, claim).await {
                    Ok(()) => {
                        RpcResponse::Snapshot(self.groups.handle_install_snapshot(group, rpc).await)
                    }
                    Err(refusal) => {
                        match self.tell_stale_leader(group, &refusal, &rpc.vote) {
                            Some(vote) => RpcResponse::Snapshot(Ok(Ok(
                                openraft::raft::InstallSnapshotResponse { vote },
                            ))),
                            None => self.refuse(&refusal),
                        }
                    }
                }
            }
        };
        self.handle.respond(channel, response).await;
    }

    /// The president keeps the federal group's voters at `FEDERAL_VOTERS` (or every
    /// member, when fewer) and replaces voters that stay unreachable.
    async fn president_tick(&self) {
        use crate::roles::president::FederalChange;
        let Some(federal) = self.federal() else {
            return;
        };
        if federal.leader() != Some(self.me()) {
            return;
        }
        self.found_state_groups().await;
        self.keep_group_key().await;
        let now = now_ms();
        // Keys and states only: a member's Raft entry (its peer id and addresses) is
        // read for the one a change adds, not for every member twice a second.
        let members: BTreeMap<NodeId, (NodeKey, Option<String>)> = self
            .registry(|registry| {
                registry
                    .active_members()
                    .map(|(key, member)| (self.id_of(key), (*key, member.state.clone())))
                    .collect()
            })
            .await
            .unwrap_or_default();
        let membership = federal.raft().metrics().borrow().membership_config.clone();
        let voters: BTreeSet<NodeId> = membership.membership().voter_ids().collect();
        let learners: BTreeSet<NodeId> = membership.membership().learner_ids().collect();
        let states: BTreeMap<NodeId, Option<String>> = members
            .iter()
            .map(|(id, (_, state))| (*id, state.clone()))
            .collect();
        let last_seen: BTreeMap<NodeId, u64> = members
            .keys()
            .chain(&voters)
            .chain(&learners)
            .filter_map(|id| Some((*id, self.last_seen(*id)?)))
            .collect();
        let gap = learner_change_gap(voters.len() + learners.len());
        let learner_gap_passed = self
            .learners_added
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_none_or(|at| at.elapsed() >= gap);
        // Every member holds a copy of the Registry. Besides the voters, the group has
        // learners (relays) up to `federal_members_wanted`; every other member mirrors a
        // relay (see `crate::driver::mirroring`).
        let view = crate::roles::president::FederalView {
            me: self.me(),
            voters: &voters,
            learners: &learners,
            members: &states,
            last_seen: &last_seen,
            changing: membership.membership().get_joint_config().len() > 1,
            wanted: crate::driver::mirroring::federal_members_wanted(members.len()),
            learner_gap_passed,
            now_ms: now,
        };
        for change in crate::roles::president::plan_federal(&view) {
            match change {
                FederalChange::ReplaceVoter { dead, with } => {
                    // Carried out by consensus, which plans it again from the same look.
                    let with_keys: Vec<NodeKey> = members
                        .get(&with)
                        .map(|(key, _)| *key)
                        .into_iter()
                        .collect();
                    let with_node = self.member_nodes(&with_keys).await;
                    match aamas_consensus::replace_dead_voter(
                        &federal,
                        &with_node,
                        |id| self.last_seen(id),
                        now,
                        VOTER_DEAD_TIMEOUT_MS,
                    )
                    .await
                    {
                        Ok(aamas_consensus::HealOutcome::Replaced(replacement)) => {
                            tracing::info!(?replacement, "replaced a dead federal voter");
                        }
                        Ok(outcome) => tracing::debug!(dead, with, ?outcome, "no federal swap"),
                        Err(error) => tracing::warn!(%error, "replacing a federal voter failed"),
                    }
                }
                // A relay dead for as long as a voter may be is taken out of the group:
                // its replication stream would dial it for ever. If it comes back, it
                // mirrors a relay until the president makes it a relay again.
                FederalChange::RemoveRelay(dead) => {
                    let change = openraft::ChangeMembers::RemoveNodes(BTreeSet::from([dead]));
                    match aamas_consensus::change_membership(&federal, change).await {
                        Ok(()) => tracing::info!(
                            relay = dead,
                            "took a dead relay out of the federal group"
                        ),
                        Err(error) => tracing::warn!(%error, "taking a dead relay out failed"),
                    }
                }
                // Newcomers join as learners in batches, one membership change for each
                // batch. A learner's entry in the membership is empty: every membership
                // change carries the whole membership to every member, and the transport
                // finds members through the book, not through openraft's node records.
                FederalChange::AddLearners(ids) => {
                    *self
                        .learners_added
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some(std::time::Instant::now());
                    let added = ids.len();
                    let nodes: BTreeMap<NodeId, MemberNode> = ids
                        .into_iter()
                        .map(|id| (id, MemberNode::default()))
                        .collect();
                    let change = openraft::ChangeMembers::AddNodes(nodes);
                    match aamas_consensus::change_membership(&federal, change).await {
                        Ok(()) => tracing::info!(added, "added federal learners"),
                        Err(error) => tracing::warn!(%error, "adding federal learners failed"),
                    }
                }
                FederalChange::AddVoters(ids) => {
                    let keys: Vec<NodeKey> = ids
                        .iter()
                        .filter_map(|id| members.get(id).map(|(key, _)| *key))
                        .collect();
                    let mut nodes = self.member_nodes(&keys).await;
                    let learners: Vec<(NodeId, MemberNode)> = ids
                        .iter()
                        .map(|id| (*id, nodes.remove(id).unwrap_or_default()))
                        .collect();
                    let mut new_voters = voters.clone();
                    new_voters.extend(ids.iter().copied());
                    match aamas_consensus::change_voters(&federal, learners, new_voters).await {
                        Ok(()) => tracing::info!(?ids, "added federal voters"),
                        Err(error) => tracing::warn!(%error, "adding voters failed"),
                    }
                }
            }
        }
    }
}

/// The environment variable of a planted bug: set to `1`, a consistent Registry read
/// ([`Node::registry_linearizable`]) answers from this node's copy without the
/// president's read index, as a plain read does. For the fault campaigns' test that the
/// stale-read checker catches it (`tests/tests/campaigns.rs`) and for nothing else; a
/// node with it set says so at every such read.
pub const PLANTED_STALE_READ: &str = "AAMAS_TEST_PLANTED_BUG_STALE_READ";

fn planted_stale_read() -> bool {
    static PLANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PLANTED.get_or_init(|| std::env::var(PLANTED_STALE_READ).is_ok_and(|v| v == "1"))
}

/// How long a linearizable Registry read waits for the president's read index, and then
/// for this node's copy to apply up to it.
pub const LINEARIZABLE_READ_LIMIT: Duration = Duration::from_secs(2);

pub(crate) fn parse_addrs(addrs: &[String]) -> Vec<Multiaddr> {
    addrs.iter().filter_map(|addr| addr.parse().ok()).collect()
}

/// The file in the data dir that keeps the addresses the node listened on, one per line.
const LISTEN_ADDRS_FILE: &str = "listen.addrs";

/// The addresses the node listened on in its previous run (none on a first start, or
/// when the file is unreadable: the node then listens where its configuration says).
fn previous_listen_addrs(data_dir: &Path) -> Vec<Multiaddr> {
    std::fs::read_to_string(data_dir.join(LISTEN_ADDRS_FILE))
        .map(|text| {
            text.lines()
                .take(64)
                .filter_map(|line| line.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Keeps where the node listens, so that a restart with a port-0 listen address takes
/// the same ports again: members that hold its old addresses still reach it (with every
/// port new, three members restarted in turn could each hold only stale addresses of
/// the others, and none would ever reach another).
fn save_listen_addrs(data_dir: &Path, listen: &[String]) {
    let path = data_dir.join(LISTEN_ADDRS_FILE);
    let temporary = path.with_extension("addrs.tmp");
    let written = std::fs::write(&temporary, listen.join("\n"))
        .and_then(|()| std::fs::rename(&temporary, &path));
    if let Err(error) = written {
        tracing::warn!(path = %path.display(), %error, "could not keep the listen addresses");
    }
}

/// Joins through `addr` with `token`, following redirects to the president.
async fn join(
    node: &Node,
    addr: Multiaddr,
    token: &str,
    skills: &[String],
) -> Result<(), NodeError> {
    let parsed =
        JoinToken::decode(token).map_err(|error| NodeError::JoinRefused(error.to_string()))?;
    // The token must at least parse before we contact anyone; the president checks it.
    let _ = parsed;
    let addr = resolve_join_addr(addr).await?;
    let target_peer = match addr.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(peer)) => peer,
        // No peer id in the address: connect and learn who answers there.
        _ => node
            .handle
            .dial(addr.clone())
            .await
            .map_err(|error| NodeError::JoinRefused(format!("cannot reach {addr}: {error}")))?,
    };
    join_through(node, target_peer, vec![addr], token, skills, JOIN_PATIENCE).await
}

/// How long a join address by name (`/dns4/HOST/...`) may take to resolve: in a
/// Kubernetes StatefulSet the first pod's name appears shortly after the others start.
pub const JOIN_RESOLVE_PATIENCE: Duration = Duration::from_secs(60);

/// A join address with its host name (`/dns/`, `/dns4/`, `/dns6/`) replaced by an
/// address the host resolves to (with the system's resolver, retried for
/// [`JOIN_RESOLVE_PATIENCE`]); any other address as it is. Only the join is dialled by
/// name: members know one another by the addresses they announce.
async fn resolve_join_addr(addr: Multiaddr) -> Result<Multiaddr, NodeError> {
    use libp2p::multiaddr::Protocol;
    let mut parts = addr.iter();
    let (host, want_v4, want_v6) = match parts.next() {
        Some(Protocol::Dns(host)) => (host.to_string(), true, true),
        Some(Protocol::Dns4(host)) => (host.to_string(), true, false),
        Some(Protocol::Dns6(host)) => (host.to_string(), false, true),
        _ => return Ok(addr),
    };
    let rest: Vec<Protocol<'_>> = parts.collect();
    let port = rest
        .iter()
        .find_map(|part| match part {
            Protocol::Tcp(port) | Protocol::Udp(port) => Some(*port),
            _ => None,
        })
        .ok_or_else(|| NodeError::JoinRefused(format!("{addr} names no TCP or UDP port")))?;
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(250);
    loop {
        let found = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map(|found| found.map(|socket| socket.ip()).collect::<Vec<_>>());
        let failure = match found {
            Ok(ips) => {
                let ip = ips
                    .into_iter()
                    .find(|ip| (ip.is_ipv4() && want_v4) || (ip.is_ipv6() && want_v6));
                match ip {
                    Some(ip) => {
                        let mut resolved = Multiaddr::from(ip);
                        for part in rest {
                            resolved.push(part);
                        }
                        tracing::info!(%addr, %resolved, "join address resolved");
                        return Ok(resolved);
                    }
                    None => format!("{host} has no address of that family"),
                }
            }
            Err(error) => error.to_string(),
        };
        if started.elapsed() >= JOIN_RESOLVE_PATIENCE {
            return Err(NodeError::JoinRefused(format!(
                "cannot resolve {host}: {failure}"
            )));
        }
        tracing::info!(%host, %failure, "join address not resolvable yet; trying again");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// A member that restarted tells the president its (possibly new) addresses, trying
/// every member it knows until one answers.
async fn announce(node: &Node) {
    node.refresh_book().await;
    let me = node.me();
    let known: Vec<(PeerId, Vec<Multiaddr>)> = node
        .registry(|registry| {
            registry
                .active_members()
                .filter(|(key, _)| node_id(key) != me)
                .filter_map(|(key, member)| Some((peer_id(key).ok()?, parse_addrs(&member.addrs))))
                .collect()
        })
        .await
        .unwrap_or_default();
    let mut pause = JOIN_RETRY_MIN;
    for round in 0..JOIN_ATTEMPTS {
        if round > 0 {
            // A round fails at once when every known address is stale: pause, so that
            // the rounds span long enough for a member to come back.
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(JOIN_RETRY_MAX);
        }
        for (peer, addrs) in &known {
            if join_through(
                node,
                *peer,
                addrs.clone(),
                "",
                &node.skills,
                ANNOUNCE_PATIENCE,
            )
            .await
            .is_ok()
            {
                tracing::info!("re-announced this member's addresses");
                return;
            }
        }
    }
    tracing::warn!("no member answered the re-announcement; peers may not reach this node");
}

async fn join_through(
    node: &Node,
    mut target_peer: PeerId,
    mut target_addrs: Vec<Multiaddr>,
    token: &str,
    skills: &[String],
    patience: Duration,
) -> Result<(), NodeError> {
    let give_up = tokio::time::Instant::now() + patience;
    let mut pause = JOIN_RETRY_MIN;
    let mut attempts = 0_u32;
    let listen: Vec<String> = node
        .handle
        .listen_addrs()
        .await
        .iter()
        .map(ToString::to_string)
        .collect();
    loop {
        attempts += 1;
        // The node asked to admit us starts replicating to us as soon as it commits the
        // admission, which may be before its answer arrives: take its Raft traffic.
        if let Some(key) = NodeKey::from_peer_id(&target_peer.to_base58()) {
            node.book
                .insert(node_id(&key), target_peer, target_addrs.clone());
        }
        let request = Rpc::Join(JoinRequest {
            token: token.to_string(),
            identity: node.identity.public(),
            addrs: listen.clone(),
            skills: skills.to_vec(),
            capacity: node.capacity,
        });
        match node
            .handle
            .request(target_peer, target_addrs.clone(), request)
            .await
        {
            Ok(RpcResponse::Join(JoinResponse::Admitted { members, .. })) => {
                // The member that admitted this node is in the federal group: the first
                // relay its Registry mirror asks.
                if let Some(key) = NodeKey::from_peer_id(&target_peer.to_base58()) {
                    *node
                        .relay_hint
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(node_id(&key));
                }
                for (peer, addrs) in members {
                    if let (Ok(peer), Some(key)) =
                        (peer.parse::<PeerId>(), NodeKey::from_peer_id(&peer))
                    {
                        node.book.insert(node_id(&key), peer, parse_addrs(&addrs));
                    }
                }
                tracing::info!("joined the mesh");
                return Ok(());
            }
            // The president lost its office while committing: ask again.
            Ok(RpcResponse::Join(JoinResponse::Refused { reason }))
                if reason.starts_with(ADMISSION_NOT_COMMITTED) =>
            {
                tracing::debug!(reason, "join: admission not committed, retrying");
            }
            Ok(RpcResponse::Join(JoinResponse::Refused { reason })) => {
                return Err(NodeError::JoinRefused(reason));
            }
            Ok(RpcResponse::Join(JoinResponse::Redirect {
                president: Some((peer, addrs)),
            })) => {
                if let Ok(peer) = peer.parse() {
                    target_peer = peer;
                    target_addrs = parse_addrs(&addrs);
                }
            }
            Ok(other) => tracing::debug!(?other, "join: no president yet, retrying"),
            Err(error) => tracing::debug!(%error, "join attempt failed, retrying"),
        }
        let now = tokio::time::Instant::now();
        if now + pause > give_up {
            return Err(NodeError::JoinRefused(format!(
                "no president admitted this node in {} s ({attempts} attempts); check the \
                 address and that the mesh is running",
                patience.as_secs()
            )));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(JOIN_RETRY_MAX);
    }
}

/// Starts the services a node serves beside itself (its control API) on `addr`: given
/// by the crate root ([`crate::start`]), so that the driver never names the API.
pub type Serve = fn(
    Arc<Node>,
    SocketAddr,
) -> futures::future::BoxFuture<
    'static,
    Result<(SocketAddr, tokio::task::JoinHandle<()>), NodeError>,
>;

/// A node started by [`start`]: its shared state, and the tasks to stop with it.
pub struct Running {
    /// The node.
    pub node: Arc<Node>,
    /// What serves other nodes and the user: inbound requests, gossip, the API. Stopped
    /// last, so that a leaving node still votes and answers while it hands over.
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The node's own duties (president, governor, work ticks). Stopped first.
    duties: Vec<tokio::task::JoinHandle<()>>,
    store: Store,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// How long [`Running::crash`] waits for the node's tasks to let go of its database.
pub const CRASH_CLOSE_LIMIT: Duration = Duration::from_secs(30);

/// How often a running node checks that its Raft groups still run.
pub const GROUP_CHECK: Duration = Duration::from_millis(500);

impl Running {
    /// Resolves once one of the node's Raft groups stopped for good (see
    /// [`aamas_consensus::Groups::stopped`]), with the error to stop the node with.
    pub async fn group_stopped(&self) -> NodeError {
        loop {
            if let Some((group, reason)) = self.node.groups.stopped() {
                let data_dir = self.node.data_dir.display().to_string();
                let hint = if reason.contains("No space left") {
                    ": its disk is full. Free space there".to_string()
                } else {
                    String::new()
                };
                return NodeError::GroupStopped {
                    group,
                    reason,
                    data_dir,
                    hint,
                };
            }
            tokio::time::sleep(GROUP_CHECK).await;
        }
    }

    /// Stops abruptly, as a crash would: no hand-over and no flush (the simulator's
    /// crash fault). Raft state already synced stays on disk.
    ///
    /// Returns once the node's RocksDB is closed, so that a restart on the same data
    /// dir can take its lock, or with [`NodeError::StillOpen`] when tasks still hold
    /// the database after [`CRASH_CLOSE_LIMIT`].
    pub async fn crash(self) -> Result<(), NodeError> {
        self.node.stopping.send_replace(true);
        for task in self.tasks.iter().chain(&self.duties) {
            task.abort();
        }
        self.node.groups.shutdown().await;
        self.node.handle.shutdown().await;
        let Running {
            node,
            mut tasks,
            duties,
            store,
        } = self;
        tasks.extend(duties);
        let closing = store.watch_close();
        let path = store.path().display().to_string();
        drop((node, store));
        for task in tasks {
            // Cancelled (the usual case) or finished: either way its future is dropped.
            let _ = task.await;
        }
        if closing.closed(CRASH_CLOSE_LIMIT).await {
            Ok(())
        } else {
            Err(NodeError::StillOpen { path })
        }
    }

    /// Leaves the mesh for good (the simulator's `leave` step; a member being retired):
    /// stops its duties, gives up its place in every group it is in, its state groups
    /// first, each within [`RESIGN_LIMIT`] (the last, the federal group's president also
    /// marks it as left in the Registry), then stops as [`Running::stop`] does.
    ///
    /// A group keeps its quorum this way: two of three voters leaving one after the other
    /// leave one voter that still decides, where two stopping would leave it stuck.
    /// Returns the groups it could not leave, with why; it stops either way.
    pub async fn leave(self) -> Result<(), NodeError> {
        tracing::info!("leaving the mesh: giving up every group seat");
        for task in &self.duties {
            task.abort();
        }
        let mut ids = self.node.groups.ids();
        // State groups first: once out of the federal group, this node is no member.
        ids.sort_by_key(|id| *id == FEDERAL_GROUP);
        let mut failed = Vec::new();
        for id in ids {
            if let Err(reason) = self.node.resign(id).await {
                tracing::warn!(group = id, %reason, "could not leave a group");
                failed.push(format!("group {id}: {reason}"));
            }
        }
        self.stop().await;
        if failed.is_empty() {
            Ok(())
        } else {
            Err(NodeError::Resign(failed.join("; ")))
        }
    }

    /// Stops gracefully (SIGTERM): stops the duties, hands over the groups this node
    /// leads (still answering votes meanwhile), stops Raft, flushes the store and closes
    /// the swarm. The node stays a member and a voter, to come back with its data dir.
    pub async fn stop(self) {
        tracing::info!("stopping: duties, Raft groups and the store");
        for task in &self.duties {
            task.abort();
        }
        self.node.hand_over_leadership().await;
        self.node.stopping.send_replace(true);
        for task in &self.tasks {
            task.abort();
        }
        self.node.groups.shutdown().await;
        if let Err(error) = self.store.flush() {
            tracing::warn!(%error, "flushing the Raft database failed");
        }
        self.node.handle.shutdown().await;
    }
}

/// Starts a node: identity, mesh, swarm, Raft groups, the API (`serve`, when the config
/// names an address); joins or rejoins the mesh.
pub async fn start(config: NodeConfig, serve: Serve) -> Result<Running, NodeError> {
    create_data_dir(&config.data_dir)?;
    if config.executors.shell {
        match config.shell_sandbox {
            crate::exec::sandbox::ShellSandbox::Landlock => {
                let note = crate::exec::sandbox::probe(&config.data_dir).map_err(|reason| {
                    NodeError::Invalid(format!(
                        "shell tasks cannot be sandboxed here: {reason}; start without shell \
                         (--executors builtin,llm), or with --shell-sandbox off to run them \
                         unconfined as this node's user"
                    ))
                })?;
                for note in note {
                    tracing::warn!("shell sandbox: {note}");
                }
            }
            crate::exec::sandbox::ShellSandbox::Off => tracing::warn!(
                "shell tasks run unconfined (--shell-sandbox off): they can read this node's \
                 key and data"
            ),
        }
    }
    let (identity, created) = Identity::load_or_create(&identity_path(&config.data_dir))?;
    if created {
        tracing::info!(peer_id = %identity.node_key(), "created a new identity");
    }
    let mesh = match (MeshFile::load(&config.data_dir)?, &config.join) {
        (Some(mesh), _) => mesh,
        (None, Some((_, token))) => {
            let token = JoinToken::decode(token)
                .map_err(|error| NodeError::JoinRefused(error.to_string()))?;
            let mesh = MeshFile {
                mesh: token.mesh,
                name: String::new(),
                founder: false,
            };
            mesh.save(&config.data_dir)?;
            mesh
        }
        (None, None) => return Err(NodeError::NoMesh(config.data_dir.display().to_string())),
    };
    let mut seed = *identity.signing_seed();
    let keypair = libp2p::identity::Keypair::ed25519_from_bytes(&mut seed)
        .map_err(|error| NodeError::Invalid(error.to_string()))?;
    let metrics = crate::metrics::Metrics::default();
    let previous = previous_listen_addrs(&config.data_dir);
    let swarm_config = swarm::SwarmConfig {
        listen: config.listen.clone(),
        previous,
        mdns: config.mdns,
        bytes_sent: metrics.bytes_sent.clone(),
        kademlia: config.kademlia,
        connections: metrics.connections.clone(),
        connections_opened: metrics.connections_opened.clone(),
        faults: config.faults.clone(),
        liveness: config.liveness,
    };
    let (handle, incoming) = swarm::start(keypair, &swarm_config).await?;
    let swarm::Incoming {
        requests: mut inbound,
        mut gossip,
    } = incoming;
    let book = PeerBook::default();
    let store = Store::open(
        &config.data_dir.join("raft"),
        StoreConfig {
            fsync: config.fsync,
            memtable_bytes: config.memtable_bytes,
            shared: config.shared_memory.clone(),
        },
    )?;
    let known_groups = store
        .known_groups()
        .map_err(|error| NodeError::Invalid(format!("reading the Raft database: {error}")))?;
    let flushing = store.clone();
    let artifacts = crate::driver::artifacts::ArtifactState::new(
        store.artifacts(),
        config
            .max_artifact_bytes
            .unwrap_or(crate::driver::artifacts::DEFAULT_MAX_ARTIFACT_BYTES),
    );
    let mirror = aamas_consensus::Mirror::open(&store, FEDERAL_GROUP)
        .await
        .map_err(|error| NodeError::Invalid(format!("opening the Registry mirror: {error}")))?;
    let me = node_id(&identity.node_key());
    let groups = Groups::new(
        me,
        store,
        &config.raft,
        Libp2pTransport::new(handle.clone(), book.clone()),
    )?;
    let federal = groups.open(FEDERAL_GROUP).await?;
    // Every group this node took part in before a restart, so it can vote and campaign.
    for group in known_groups {
        groups.open(group).await?;
    }
    let listen: Vec<String> = handle
        .listen_addrs()
        .await
        .iter()
        .map(ToString::to_string)
        .collect();
    book.insert(me, handle.peer_id(), parse_addrs(&listen));
    save_listen_addrs(&config.data_dir, &listen);
    let (work, cores, work_inputs) = crate::driver::work::WorkState::new(
        identity.node_key(),
        usize::try_from(config.capacity.clamp(1, MAX_WORKER_CAPACITY)).unwrap_or(1),
        crate::exec::LlmConfig::from_env(),
        config.executors,
        config.shell_sandbox,
    );
    // The executors' skills come from what runs here, never from `--skills`: a node that
    // claimed `shell` without running it would draw every shell task and refuse them.
    let mut skills: Vec<String> = config
        .skills
        .iter()
        .filter(|skill| *skill != crate::spec::SHELL_SKILL)
        .cloned()
        .collect();
    if skills.len() < config.skills.len() {
        tracing::warn!(
            "the skill `shell` comes with --executors builtin,llm,shell, not with --skills"
        );
    }
    if work.executors.has_llm() && !skills.iter().any(|skill| skill == crate::exec::LLM_SKILL) {
        skills.push(crate::exec::LLM_SKILL.into());
    }
    if config.executors.shell {
        skills.push(crate::spec::SHELL_SKILL.into());
    }
    let node = Arc::new_cyclic(|this| Node {
        this: this.clone(),
        artifacts,
        handle: handle.clone(),
        groups: groups.clone(),
        book,
        data_dir: config.data_dir.clone(),
        metrics,
        deliveries: Mutex::new(std::collections::VecDeque::new()),
        group_key: Mutex::new(None),
        hierarchy_seen: Mutex::new(Default::default()),
        states_followed: Mutex::new(BTreeSet::new()),
        peer_ids: Mutex::new(HashMap::new()),
        member_peers: Mutex::new(HashMap::new()),
        blocked: Mutex::new(std::collections::HashSet::new()),
        policy_cache: Mutex::new(None),
        ungoverned_by_tier: Mutex::new(BTreeSet::new()),
        arbitrating: tokio::sync::Mutex::new(std::collections::BTreeMap::new()),
        placing: tokio::sync::Mutex::new(()),
        monitor: Mutex::new(crate::governance::monitor::Monitor::default()),
        resource_asks: Mutex::new(BTreeMap::new()),
        scale_hook: config.scale_hook.clone(),
        rate: Mutex::new(crate::governance::rate::RateLimiter::default()),
        scale_hook_ran: Mutex::new(None),
        state_moved: Mutex::new(None),
        members_seen: Mutex::new(None),
        registry_version: Mutex::new((None, 0, None)),
        learners_added: Mutex::new(None),
        work_wake: Arc::new(tokio::sync::Notify::new()),
        changes: tokio::sync::watch::Sender::new(0),
        on_duty: std::sync::atomic::AtomicBool::new(false),
        mirror,
        relay_hint: Mutex::new(None),
        mirror_saved_admitted: std::sync::atomic::AtomicBool::new(false),
        federal_elections_off: std::sync::atomic::AtomicBool::new(false),
        inbox: Inbox::new(mesh.mesh),
        topics: Topics::new(mesh.mesh),
        sealer: Mutex::new(aamas_protocol::Sealer::new(
            mesh.mesh,
            crate::messaging::envelope_limits(),
            now_ms(),
        )),
        liveness: Mutex::new(HashMap::new()),
        resigned: Mutex::new(HashMap::new()),
        events: crate::events::EventBus::default(),
        work,
        stopping: tokio::sync::watch::Sender::new(false),
        skills,
        capacity: config.capacity.clamp(1, MAX_WORKER_CAPACITY),
        identity,
        mesh,
    });
    node.handle.subscribe(&node.topics.all()).await;
    node.handle.subscribe(&node.topics.federal()).await;

    // Judge gossip, one message at a time (the pipeline is CPU-bound and short).
    let judging = node.clone();
    let judge = tokio::spawn(async move {
        while let Some(message) = gossip.recv().await {
            judging.handle_gossip(message).await;
        }
    });

    // Serve inbound requests, a bounded number at a time.
    let mut tasks = Vec::new();
    let serving = node.clone();
    tasks.push(tokio::spawn(async move {
        // Raft traffic has slots of its own: handlers that wait for a commit (joins,
        // reports, work) must never starve the votes that would elect a leader to
        // commit them.
        let raft_slots = Arc::new(Semaphore::new(MAX_INBOUND_IN_FLIGHT));
        let other_slots = Arc::new(Semaphore::new(MAX_INBOUND_IN_FLIGHT));
        // Mirrors' catch-ups are held while there is nothing newer: slots of their own.
        let mirror_slots = Arc::new(Semaphore::new(crate::driver::mirroring::MAX_MIRROR_WAITERS));
        while let Some(request) = inbound.recv().await {
            let slots = match request.rpc {
                Rpc::Append { .. }
                | Rpc::Vote { .. }
                | Rpc::Snapshot { .. }
                | Rpc::Campaign { .. }
                | Rpc::Leadership { .. } => &raft_slots,
                Rpc::Mirror { .. } => &mirror_slots,
                _ => &other_slots,
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                // Busy: refuse at once (the sender retries) rather than hold up the
                // requests queued behind this one.
                serving
                    .metrics
                    .rpc_refused
                    .get_or_create(&crate::metrics::labels(&[("reason", "busy")]))
                    .inc();
                let node = serving.clone();
                serving.spawn(async move {
                    let busy = RpcResponse::Refused {
                        reason: "busy: too many requests in flight".into(),
                    };
                    node.handle.respond(request.channel, busy).await;
                });
                continue;
            };
            let node = serving.clone();
            serving.spawn(async move {
                node.handle_inbound(request).await;
                drop(slot);
            });
        }
    }));

    if let Some(addr) = config.api {
        let (api, serving) = serve(node.clone(), addr).await?;
        tasks.push(serving);
        tracing::info!(%api, "control API listening");
    }

    let already_member = node
        .registry(|registry| registry.is_active(&node.identity.node_key()))
        .await
        .unwrap_or(false);
    if already_member {
        // Restarted with its data dir: it is a member; tell the mesh where it is now.
        tracing::info!("already a member: rejoining with the data dir's state");
        let announcing = node.clone();
        node.spawn(async move { announce(&announcing).await });
    } else if node.mesh.founder {
        let voters = BTreeMap::from([(
            me,
            MemberNode {
                peer_id: handle.peer_id().to_string(),
                addrs: listen.clone(),
            },
        )]);
        groups.initialize(FEDERAL_GROUP, voters).await?;
        if federal.wait_leader(Duration::from_secs(10)).await == Some(me)
            && let Err(error) = node.bootstrap(&listen).await
        {
            tracing::warn!(%error, "bootstrap of the Registry failed");
        }
    } else if let Some((addr, token)) = &config.join {
        join(&node, addr.clone(), token, &node.skills).await?;
    } else {
        tracing::info!("waiting for the mesh to reach this node");
    }

    // Outside the federal group, the Registry comes from a relay.
    let following = node.clone();
    node.spawn(async move { following.follow_registry().await });

    // The president's duties and the bookkeeping every node does.
    // Connections opening and closing wake the duties.
    let mut connections = node.handle.connection_changes();
    let noting = node.clone();
    node.spawn(async move {
        while connections.changed().await.is_ok() {
            noting.note_change();
        }
    });
    let looked = Arc::new(Mutex::new(None::<std::time::Instant>));
    let president = duty(node.clone(), "president", DUTY_PACE, move |ticking| {
        let looked = looked.clone();
        async move {
            let look = ticking.registry_look();
            if look == RegistryLook::Changed {
                let members_changed = ticking.members_changed().await;
                if members_changed {
                    ticking.refresh_book().await;
                    ticking.reconcile_liveness().await;
                    ticking.enforce_evictions().await;
                }
                ticking.update_inbox(members_changed).await;
                ticking.learn_group_keys().await;
            }
            ticking.update_liveness().await;
            ticking.govern_federal_elections().await;
            ticking.subscribe_to_state().await;
            let look_anyway = {
                let mut looked = looked
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let due = looked.is_none_or(|at| at.elapsed() >= NEIGHBOUR_LOOK_EVERY);
                if due {
                    *looked = Some(std::time::Instant::now());
                }
                due
            };
            ticking.connect_to_neighbours(8, look_anyway).await;
            ticking.president_tick().await;
            look != RegistryLook::Unchanged || ticking.keeps_watch()
        }
    });
    // State groups and the governors' duties, apart so that a slow membership change in
    // one does not hold up the other.
    let governor = duty(
        node.clone(),
        "governor",
        DUTY_PACE,
        |governing| async move {
            governing.open_state_groups().await;
            let governs = governing.governor_tick().await;
            governs || governing.keeps_watch()
        },
    );
    // Artefacts of projects that left the Registry (archived) are removed.
    let absent: Arc<Mutex<HashMap<String, std::time::Instant>>> = Arc::default();
    let artifacts = duty(
        node.clone(),
        "artifacts",
        Pace::every(crate::driver::artifacts::ARTIFACT_SWEEP_EVERY),
        move |sweeping| {
            let absent = absent.clone();
            async move {
                sweeping.sweep_artifacts(&absent).await;
                true
            }
        },
    );
    // A state voter takes copies of its state's artefacts that it lacks.
    let failures: Arc<crate::driver::artifacts::RepairFailures> = Arc::default();
    let repair = duty(
        node.clone(),
        "artifact-repair",
        Pace::every(crate::driver::artifacts::ARTIFACT_REPAIR_EVERY),
        move |repairing| {
            let failures = failures.clone();
            async move {
                repairing.repair_artifacts(&failures).await;
                true
            }
        },
    );
    // The work roles' cores, owned by one task.
    let work = tokio::spawn(crate::driver::owner::drive(
        node.clone(),
        cores,
        work_inputs,
    ));
    tasks.push(judge);
    Ok(Running {
        node,
        tasks,
        duties: vec![president, governor, artifacts, repair, work],
        store: flushing,
    })
}

/// What a Raft RPC claims about itself (its vote's term and the node the vote is for),
/// for [`crate::roles::authority::raft`].
fn raft_claim(
    rpc: crate::roles::authority::RaftRpc,
    vote: &openraft::Vote<NodeId>,
) -> crate::roles::authority::RaftClaim {
    crate::roles::authority::RaftClaim {
        rpc,
        term: vote.leader_id().get_term(),
        named: vote.leader_id().voted_for(),
    }
}

/// How often a duty runs: every `quick` while its last round asked to stay quick (the
/// node holds a role that decides on time, or the round found a change), and otherwise
/// at a gap that doubles from `quick` up to `idle`. A change ([`Node::note_change`])
/// brings the next round forward, never closer than `quick` to the last one. An idle
/// member thus wakes a few times a minute instead of twice a second, and still reacts
/// to a change within `quick`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// The gap while there is something to watch over, and the least gap.
    pub quick: Duration,
    /// The longest gap while idle.
    pub idle: Duration,
}

impl Pace {
    /// A fixed pace: every `every`, whatever the rounds say.
    pub const fn every(every: Duration) -> Self {
        Self {
            quick: every,
            idle: every,
        }
    }

    /// The gap after a round that ran `gap` after the one before it.
    pub fn next(self, gap: Duration, stay_quick: bool) -> Duration {
        if stay_quick {
            self.quick
        } else {
            gap.saturating_mul(2).clamp(self.quick, self.idle)
        }
    }
}

/// The pace of the president's and the governors' duties (every member runs both). A
/// member that holds no role and saw no change looks every 8 s: nine in ten members of
/// an idle mesh are such, and a change wakes them at once.
pub const DUTY_PACE: Pace = Pace {
    quick: PRESIDENT_TICK,
    idle: Duration::from_secs(8),
};

/// What the Registry did since the book and the inbox were last rebuilt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RegistryLook {
    Unchanged,
    /// Changed, and the rebuild is due now.
    Changed,
    /// Changed, but the last rebuild is too recent (see [`rebuild_gap`]).
    Deferred,
}

/// Runs one of a node's duties at its [`Pace`]: a round returns whether the duty should
/// stay quick. A round that panics (a bug) is counted in `aamas_duty_panics_total{duty}`
/// and logged, and the duty goes on with its next round (at the quick pace), instead of
/// the node silently losing the role.
fn duty<F, Fut>(
    node: Arc<Node>,
    name: &'static str,
    pace: Pace,
    round: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(Arc<Node>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    use futures::FutureExt as _;
    tokio::spawn(async move {
        let mut changes = node.changes.subscribe();
        let mut gap = pace.quick;
        // The first round at once.
        let mut last = tokio::time::Instant::now()
            .checked_sub(gap)
            .unwrap_or_else(tokio::time::Instant::now);
        loop {
            let woken = tokio::select! {
                () = tokio::time::sleep_until(last + gap) => false,
                changed = changes.changed() => changed.is_ok(),
            };
            if woken {
                gap = pace.quick;
                tokio::time::sleep_until(last + gap).await;
            }
            last = tokio::time::Instant::now();
            let outcome = std::panic::AssertUnwindSafe(round(node.clone()))
                .catch_unwind()
                .await;
            let stay_quick = outcome.unwrap_or_else(|_| {
                node.metrics
                    .duty_panics
                    .get_or_create(&crate::metrics::labels(&[("duty", name)]))
                    .inc();
                tracing::error!(duty = name, "a round of this duty panicked; it goes on");
                true
            });
            gap = pace.next(gap, stay_quick);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_join_address_by_name_resolves_to_an_address_and_keeps_its_port_and_peer() {
        let peer = libp2p::PeerId::random();
        let named: Multiaddr = format!("/dns4/localhost/tcp/4001/p2p/{peer}")
            .parse()
            .expect("multiaddr");
        let resolved = resolve_join_addr(named).await.expect("localhost resolves");
        let expected: Multiaddr = format!("/ip4/127.0.0.1/tcp/4001/p2p/{peer}")
            .parse()
            .expect("multiaddr");
        assert_eq!(resolved, expected);
        let plain: Multiaddr = "/ip4/10.0.0.1/tcp/1".parse().expect("multiaddr");
        assert_eq!(
            resolve_join_addr(plain.clone()).await.expect("as is"),
            plain
        );
        let portless: Multiaddr = "/dns4/localhost".parse().expect("multiaddr");
        assert!(resolve_join_addr(portless).await.is_err());
    }

    #[test]
    fn learner_changes_space_out_as_the_group_grows() {
        assert_eq!(learner_change_gap(0), LEARNER_CHANGE_GAP);
        assert_eq!(learner_change_gap(50), LEARNER_CHANGE_GAP);
        assert_eq!(learner_change_gap(500), Duration::from_secs(5));
        assert_eq!(learner_change_gap(1_000), Duration::from_secs(10));
        assert_eq!(learner_change_gap(100_000), MAX_LEARNER_CHANGE_GAP);
        assert_eq!(learner_change_gap(usize::MAX), MAX_LEARNER_CHANGE_GAP);
    }

    #[test]
    fn an_idle_duty_slows_down_to_its_idle_pace_and_a_busy_one_stays_quick() {
        let pace = Pace {
            quick: Duration::from_millis(500),
            idle: Duration::from_secs(4),
        };
        let mut gap = pace.quick;
        let mut gaps = Vec::new();
        for _ in 0..5 {
            gap = pace.next(gap, false);
            gaps.push(gap.as_millis());
        }
        assert_eq!(gaps, [1_000, 2_000, 4_000, 4_000, 4_000]);
        assert_eq!(pace.next(gap, true), pace.quick);
        let fixed = Pace::every(Duration::from_secs(5));
        assert_eq!(
            fixed.next(Duration::from_secs(5), false),
            Duration::from_secs(5)
        );
        assert_eq!(
            fixed.next(Duration::from_secs(5), true),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn rebuilds_space_out_only_in_large_meshes() {
        assert_eq!(rebuild_gap(199), Duration::ZERO);
        assert_eq!(rebuild_gap(400), PRESIDENT_TICK * 2);
        assert_eq!(rebuild_gap(usize::MAX), Duration::from_secs(5));
    }
}
