//! # aamas-node
//!
//! The node runtime: one task owns the libp2p swarm (`swarm`), Raft RPCs and joins travel
//! over request-response (`wire`, `transport`), the federal Raft group elects the
//! president, who admits members with join tokens (`token`) and keeps the voters healthy
//! (`runtime`), and a localhost control API serves status (`api`).
//!
//! ```text
//!   aamas (cli) ──► runtime::run ──► swarm task ◄──► peers (TCP/QUIC, Noise, Yamux)
//!                         │              │
//!                         ├── Groups (aamas-consensus, RocksDB) ◄── Raft RPCs
//!                         └── api (axum, bearer token)
//! ```
//!
//! Also: state groups, governors and mayors (`roles`), projects through the hierarchy
//! (`work`, `projects`, `spec`, `executor`), gossip judged by the receive pipeline
//! (`messaging`), Registry copies outside the federal group (`mirroring`), metrics
//! (`metrics`), and a fault layer the simulator plugs into the
//! swarm (`faults`).
//!
//! The role logic lives in pure cores, each a state machine fed with the time and what
//! happened and drained of commands, with no IO, clock or randomness inside (`make
//! layering` checks): `president` (placement, federal voters, phases, escalations),
//! `governor` (cities, mayors, escalations, progress reports, what other roles may ask),
//! `mayor` (dispatch, outcomes, lost workers, retries), `worker` (attempts and their
//! deliveries), `authority` (who may send what) and `cities` (scaling). `work`, `roles`
//! and `runtime` drive them.

pub mod api;
pub mod authority;
pub mod cities;
pub mod executor;
pub mod faults;
pub mod governor;
pub mod mayor;
pub mod messaging;
pub mod metrics;
pub mod mirroring;
pub mod president;
pub mod projects;
pub mod roles;
pub mod runtime;
pub mod spec;
pub mod swarm;
pub mod token;
pub mod transport;
pub mod wire;
pub mod work;
pub mod worker;

pub use runtime::{
    Founded, Hierarchy, MemberView, NodeConfig, NodeError, Running, StateView, Status, init, run,
    start,
};
