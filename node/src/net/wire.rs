//! The request-response protocol between nodes: Raft RPCs addressed by group, and joins.
//! postcard, with a 4-byte big-endian length prefix checked before allocation.

use std::io;

use aamas_consensus::{GroupId, NodeId, RemoteResult, TransportError, TypeConfig};
use aamas_protocol::{MeshId, PublicIdentity};
use futures::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use libp2p::StreamProtocol;
use openraft::error::InstallSnapshotError;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// The protocol name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/aamas/rpc/1");
/// Largest request or response accepted (a snapshot chunk is at most 1 MiB).
pub const MAX_RPC_BYTES: usize = 4 << 20;

/// A request from one node to another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Rpc {
    /// Raft AppendEntries for a group.
    Append {
        /// The group.
        group: GroupId,
        /// The request.
        rpc: AppendEntriesRequest<TypeConfig>,
    },
    /// Raft Vote for a group.
    Vote {
        /// The group.
        group: GroupId,
        /// The request.
        rpc: VoteRequest<NodeId>,
    },
    /// Raft InstallSnapshot chunk for a group.
    Snapshot {
        /// The group.
        group: GroupId,
        /// The request.
        rpc: InstallSnapshotRequest<TypeConfig>,
    },
    /// A node asks to be admitted.
    Join(JoinRequest),
    /// A leader that is leaving asks a caught-up voter to start an election now rather
    /// than after an election timeout.
    Campaign {
        /// The group.
        group: GroupId,
    },
    /// A sealed envelope (a work Command or Report) for the receiver.
    Envelope(Vec<u8>),
    /// A user's project spec (TOML), for the president to accept.
    SubmitProject {
        /// The spec's text.
        spec: String,
        /// The client's request id, so that a retry returns the first project.
        request: Option<String>,
        /// The operator's reason to override soft policy rules.
        override_reason: Option<String>,
    },
    /// A user's change of a project's phase, for the president.
    ChangeProject {
        /// The project.
        id: String,
        /// "hold", "resume", "advance", "archive", "approve" or "reject".
        action: String,
        /// A person's note on an approval or rejection.
        note: Option<String>,
    },
    /// An operator's revocation of a join token (its text), for the president.
    RevokeToken {
        /// The token.
        token: String,
    },
    /// An operator's policy document, for the president to put in force.
    ApplyPolicy {
        /// The document (TOML).
        text: String,
    },
    /// A PerformanceAlert a mayor raised, for the president to record.
    RaiseAlert {
        /// The alert.
        alert: aamas_consensus::registry::Alert,
    },
    /// An operator's acknowledgement of an alert, for the president.
    AckAlert {
        /// The alert's id.
        id: u64,
        /// The operator's note.
        note: String,
    },
    /// A ResourceRequest: from a mayor whose tasks wait to its governor, and from the
    /// governor (its `via`) to the president.
    RaiseResourceRequest {
        /// The request.
        request: aamas_consensus::registry::ResourceRequest,
    },
    /// An operator's limit on a state's resource, for the president.
    SetLimit {
        /// The state.
        state: String,
        /// The resource.
        resource: aamas_consensus::resources::Resource,
        /// The limit; `None` removes it.
        limit: Option<aamas_consensus::resources::Limit>,
    },
    /// An operator's decision on a ResourceRequest, for the president.
    DecideResourceRequest {
        /// The request's id.
        id: u64,
        /// Approve or deny.
        approve: bool,
        /// How much to raise the limit by (default: what was asked).
        amount: Option<u64>,
        /// The operator's note.
        note: String,
    },
    /// A state's resource accounts, from a node that holds its Ledger.
    StateAccounts {
        /// The state.
        state: String,
    },
    /// An operator's eviction of a member, for the president.
    EvictMember {
        /// The member.
        node: aamas_protocol::NodeKey,
    },
    /// A governor tells the president who governs a state.
    GovernorReport {
        /// The state.
        state: String,
        /// Who governs it, its voters and mayors.
        record: aamas_consensus::registry::GovernorRecord,
    },
    /// A node outside the federal group asks a member of it (a relay) for the committed
    /// Registry entries after the last one its mirror applied (see
    /// [`aamas_consensus::Mirror`]); the relay holds the request up to `wait_ms` (at most
    /// the driver's `MIRROR_WAIT`) until it has something newer.
    Mirror {
        /// The group (only the federal group is served).
        group: GroupId,
        /// The last entry the mirror applied.
        after: Option<openraft::LogId<NodeId>>,
        /// How long the relay may wait for newer entries, in milliseconds.
        wait_ms: u64,
    },
    /// A member that leaves for good asks a group's leader to take it out of the group.
    /// For the federal group that is leaving the mesh: the president also marks it as
    /// left in the Registry.
    Resign {
        /// The group.
        group: GroupId,
    },
    /// The president asks a member of a state's group whom it follows, to confirm a
    /// governor's report before recording it.
    Leadership {
        /// The group.
        group: GroupId,
    },
    /// A worker asks a voter of its task's state to keep a copy of an output: the voter
    /// pulls it from the worker ([`Rpc::ArtifactRange`]) and answers Ack once it is on
    /// its disk.
    Replicate {
        /// The project.
        project: String,
        /// SHA-256 of the bytes.
        digest: [u8; 32],
        /// Its size in bytes.
        size: u64,
        /// The bytes themselves when they fit in one chunk (at most 256 KiB): nothing
        /// to pull.
        inline: Option<Vec<u8>>,
    },
    /// A range of an artefact this member holds (at most 256 KiB).
    ArtifactRange {
        /// The project.
        project: String,
        /// SHA-256 of the bytes.
        digest: [u8; 32],
        /// From this byte.
        offset: u64,
        /// At most this many bytes.
        max: u32,
    },
    /// The tasks of a project in the state Ledgers this member holds a copy of.
    ProjectTasks {
        /// The project.
        project: String,
    },
    // New variants go last: postcard writes a variant's index.
    /// The leader's read index of a group, for a linearizable read on the asker.
    ReadIndex {
        /// The group.
        group: GroupId,
    },
}

/// The answer to an [`Rpc`].
#[derive(Debug, Serialize, Deserialize)]
pub enum RpcResponse {
    /// To [`Rpc::Append`].
    Append(Result<RemoteResult<AppendEntriesResponse<NodeId>>, TransportError>),
    /// To [`Rpc::Vote`].
    Vote(Result<RemoteResult<VoteResponse<NodeId>>, TransportError>),
    /// To [`Rpc::Snapshot`].
    Snapshot(
        Result<RemoteResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError>, TransportError>,
    ),
    /// To [`Rpc::Join`].
    Join(JoinResponse),
    /// Done.
    Ack,
    /// To [`Rpc::ApplyPolicy`]: the version now in force.
    PolicyApplied {
        /// Its version.
        version: u64,
    },
    /// To [`Rpc::SubmitProject`]: the new project's id.
    Submitted {
        /// Its id.
        id: String,
    },
    /// To [`Rpc::Mirror`]: what the mirror is missing, and the relay's view of the term and
    /// its leader.
    Mirror {
        /// The federal term the relay is in.
        term: u64,
        /// The president the relay follows in it, if any.
        leader: Option<NodeId>,
        /// The entries or snapshot.
        catchup: aamas_consensus::Catchup,
    },
    /// To [`Rpc::Leadership`]: the leader the answering member follows and its term
    /// (no leader when it is not a member of the group).
    Leadership {
        /// The leader.
        leader: Option<NodeId>,
        /// The term.
        term: u64,
    },
    /// To [`Rpc::ArtifactRange`]: the artefact's whole size and the bytes asked for.
    ArtifactRange {
        /// The artefact's size.
        total: u64,
        /// The range.
        bytes: Vec<u8>,
    },
    /// To [`Rpc::ProjectTasks`].
    Tasks(Vec<TaskView>),
    /// A state's resource accounts and its Ledger's clock, or `None` when this node holds
    /// no copy of its Ledger.
    Accounts(Option<StateAccounts>),
    /// The sender is not allowed to make this request.
    Refused {
        /// Why.
        reason: String,
    },
    /// To an [`Rpc::Envelope`] that carried several work messages: one answer each, in
    /// order; `None` acknowledges it, `Some` is why it was refused.
    Each(Vec<Option<String>>),
    // New variants go last: postcard writes a variant's index.
    /// To [`Rpc::ReadIndex`]: the index a linearizable read must see, or why the leader
    /// could not give one.
    ReadIndex(Result<u64, String>),
}

/// One task as a state's Ledger has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskView {
    /// Its name.
    pub name: String,
    /// The state whose Ledger holds it.
    pub state: String,
    /// Its phase.
    pub phase: String,
    /// "pending", "assigned", "succeeded", "failed" or "escalated".
    pub status: String,
    /// Attempts made.
    pub attempt: u32,
    /// The worker of the latest attempt.
    pub worker: Option<String>,
    /// Hex SHA-256 of its one committed result.
    pub result: Option<String>,
    /// The last failure or escalation reason.
    pub reason: Option<String>,
    /// How often the president reopened it after an escalation.
    pub reopened: u32,
    /// What its result used of a model, when it called one.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub usage: Option<aamas_consensus::ledger::TaskUsage>,
    /// What its charged attempts used, in all, as measured by their workers.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub used: aamas_consensus::resources::Usage,
}

/// A state's resource accounts as its Ledger keeps them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateAccounts {
    /// The accounts: the state's, its cities' and its workers'.
    pub accounts: Vec<(
        aamas_consensus::ledger::AccountKey,
        aamas_consensus::resources::Account,
    )>,
    /// The Ledger's clock (the latest time a command carried), at which windows are read.
    pub clock_ms: u64,
    /// The Registry version of the limits the Ledger enforces.
    pub limits_version: u64,
}

/// A joining node's request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The join token's text.
    pub token: String,
    /// Who is joining.
    pub identity: PublicIdentity,
    /// Where it listens.
    pub addrs: Vec<String>,
    /// What it can do.
    pub skills: Vec<String>,
    /// Tasks it runs at once.
    pub capacity: u32,
}

/// The answer to a join.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum JoinResponse {
    /// Admitted: committed to the Registry.
    Admitted {
        /// The mesh.
        mesh: MeshId,
        /// Peer ids and addresses of the current members, to connect to.
        members: Vec<(String, Vec<String>)>,
    },
    /// Ask the president instead.
    Redirect {
        /// The president's peer id and addresses, if known.
        president: Option<(String, Vec<String>)>,
    },
    /// Refused; the reason says why (bad token, wrong mesh, ...).
    Refused {
        /// Why.
        reason: String,
    },
}

/// The request-response codec.
#[derive(Debug, Clone, Default)]
pub struct Codec;

async fn read_frame<T: AsyncRead + Unpin + Send, M: DeserializeOwned>(io: &mut T) -> io::Result<M> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_RPC_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message of {len} bytes exceeds {MAX_RPC_BYTES}"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    postcard::from_bytes(&buf).map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))
}

async fn write_frame<T: AsyncWrite + Unpin + Send, M: Serialize>(
    io: &mut T,
    message: &M,
) -> io::Result<()> {
    let bytes = postcard::to_stdvec(message)
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
    if bytes.len() > MAX_RPC_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("message of {} bytes exceeds {MAX_RPC_BYTES}", bytes.len()),
        ));
    }
    let len = u32::try_from(bytes.len())
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(&bytes).await?;
    io.close().await
}

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Rpc;
    type Response = RpcResponse;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Rpc> {
        read_frame(io).await
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<RpcResponse> {
        read_frame(io).await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Rpc,
    ) -> io::Result<()> {
        write_frame(io, &request).await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: RpcResponse,
    ) -> io::Result<()> {
        write_frame(io, &response).await
    }
}
