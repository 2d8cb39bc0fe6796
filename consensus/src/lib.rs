//! # aamas-consensus
//!
//! The hierarchy's replicated state (issue [2/5]), built on openraft 0.9 and RocksDB.
//!
//! ```text
//!   one RocksDB per node
//!   ├── cf "raft_log"   group id (8 B, big endian) ‖ log index (8 B)  → postcard(Entry)
//!   ├── cf "raft_meta"  group id ‖ "vote" | "committed" | "purged"    → postcard(..)
//!   ├── cf "raft_sm"    group id ‖ "snapshot"                          → postcard(snapshot)
//!   └── cf "artifacts"  project id ‖ 0 ‖ SHA-256                        → a task's output
//!
//!   Store::open(dir) ──group(id)──► (LogStore, StateMachineStore)  one pair per Raft group
//! ```
//!
//! Layout:
//! - `types`: the openraft type config (`TypeConfig`), node and group ids.
//! - `store`: RocksDB storage of many groups in one database (passes openraft's suite).
//! - `machine`: requests, idempotence by request id, and the per-group state machine.
//! - `registry`, `ledger`: the federal and state state machines (pure).
//! - `resources`: what attempts use, accounts per period, and limits (pure).
//! - `network`: the transport trait (`RaftTransport`) and openraft's network over it.
//! - `groups`: the groups a node runs; writes, linearizable reads, RPC handlers.
//! - `heal`: replacing dead voters.
//! - `mirror`: copies of a group's state machine on nodes outside it, fed by its members.
//! - `testing`: an in-memory transport for tests.

#![deny(missing_docs)]
// openraft's StorageError and RPCError are 200+ bytes and its traits return them by value;
// our helpers return the same types so that `?` carries them without conversions.
#![allow(clippy::result_large_err)]

pub mod artifacts;
mod groups;
mod heal;
pub mod ledger;
mod machine;
mod mirror;
mod network;
pub mod registry;
pub mod resources;
mod store;
pub mod testing;
mod types;

pub use groups::{Committed, Group, GroupError, Groups, RaftConfig, ReadError, WriteError};
pub use heal::{
    HealError, HealOutcome, LEARNER_CATCH_UP_LIMIT, Removal, Replacement, add_caught_up_learner,
    change_membership, change_voters, plan_replacement, remove_member, replace_dead_voter,
    while_leading,
};
pub use machine::{
    Batch, BatchResponse, Command, FEDERAL_GROUP, MAX_REMEMBERED_REQUESTS, Machine, Outcome,
    Request, Response,
};
pub use mirror::{Catchup, CatchupError, CatchupLimits, Mirror, MirrorError};
pub use network::{GroupNetwork, GroupNetworkFactory, RaftTransport, RemoteResult, TransportError};
pub use store::{
    CloseWatch, LogStore, PersistedEntry, PersistedLog, PersistedVote, STORE_FORMAT, SharedMemory,
    StateMachineStore, Store, StoreConfig, StoreError, read_logs, read_votes,
};
pub use types::{GroupId, MemberNode, NodeId, RequestId, TypeConfig};
