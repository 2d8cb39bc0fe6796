//! # aamas-node
//!
//! One `aamas` node, in folders by responsibility:
//!
//! ```text
//!   net/        the network: the swarm task (libp2p TCP/QUIC, Noise, Yamux, gossipsub,
//!               request-response), the wire protocol, openraft's transport, the fault layer
//!   messaging   the receive pipeline every envelope goes through (open, verify, judge the
//!               sender, drop replays), the gossip topics, and the sealer
//!   roles/      the pure role cores: president, governor, mayor, worker, authority
//!               (who may send what), cities (scaling); no IO, clock or randomness
//!   driver/     a running node: start and stop, admission, liveness, the federal and
//!               state duties, the work driver (one task owning the four role cores),
//!               Registry mirrors, projects
//!   governance/ pure cores of governance: the policy document and its decisions
//!   exec/       what runs a task: builtin, shell, llm
//!   spec/       the project spec: types (mod), parse (TOML), check (before anything runs)
//!   api         the localhost control API (axum, bearer tokens)
//!   access      the API's scoped tokens (read, submit, operate, admin)
//!   events      the node's bounded event bus: the seed's five events and role changes
//!   metrics     Prometheus metrics; token: join tokens
//! ```
//!
//! ```text
//!   aamas (cli) ──► run/start ──► driver::runtime::start ──► net::swarm task ◄──► peers
//!                         │                        │
//!                         ├── Groups (aamas-consensus, RocksDB) ◄── Raft RPCs
//!                         ├── roles/* cores ◄── committed entries, messages, timers
//!                         └── api (axum, bearer token)
//! ```
//!
//! Imports go down only: `net`, `roles`, `spec`, `exec`, `messaging`, `events` and `metrics`
//! never import `driver` or `api`, the driver never imports `api` (the crate root hands
//! it the API's start), and `roles` imports nothing with IO (`make layering`).

pub mod access;
pub mod api;
pub mod driver;
pub mod events;
pub mod exec;
pub mod governance;
pub mod messaging;
pub mod metrics;
pub mod net;
pub mod roles;
pub mod spec;
pub mod token;

pub use driver::runtime::{
    Founded, Hierarchy, MemberView, NodeConfig, NodeError, Running, StateView, Status, init,
};

/// Starts a node ([`driver::runtime::start`]) with its control API ([`api::serve`]) when
/// the config names an address.
pub async fn start(config: NodeConfig) -> Result<Running, NodeError> {
    driver::runtime::start(config, |node, addr| Box::pin(api::serve(node, addr))).await
}

/// Runs a node until `shutdown` resolves, then stops it; or until one of its Raft
/// groups stops for good (a write to its disk failed, say), then stops it at once, as a
/// crash would, and returns why ([`NodeError::GroupStopped`]): a node that cannot write
/// must not go on answering as if it could.
pub async fn run(
    config: NodeConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), NodeError> {
    let running = start(config).await?;
    let stopped = tokio::select! {
        () = shutdown => None,
        error = running.group_stopped() => Some(error),
    };
    match stopped {
        None => {
            running.stop().await;
            Ok(())
        }
        Some(error) => {
            tracing::error!(%error, "stopping");
            if let Err(crash) = running.crash().await {
                tracing::warn!(%crash, "stopping after the group stopped");
            }
            Err(error)
        }
    }
}
