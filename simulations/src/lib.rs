//! # aamas-sim
//!
//! Many real node runtimes (`aamas_node::start`, the same code as `aamas node`) in one
//! process over libp2p's memory transport, with storage in temporary dirs; a fault layer
//! between each node and the network (loss, delay, partitions) plus crashes and
//! restarts; scenarios (TOML files of steps) drive them, checkers watch invariants while
//! they run, and a report sums it up.
//!
//! ```text
//!   ScenarioFile (scenarios/*.toml or --file) ── steps ──► Sim
//!   Sim ── slots: real runtimes over /memory, each with the shared SimFaults
//!       ── every wait observes: claimed presidents and governors, committed results
//!          (Checker), president changes (timeline), the progress line
//!       ── probes: gossip delivery and propagation, timed at every node
//!       ── flood: an outsider and a member send hostile traffic
//!   Report ── table on stdout, report.json, latency.svg, timeline.svg
//! ```

pub mod checker;
pub mod faults;
mod flood;
pub mod report;
pub mod scenario;
pub mod sim;

pub use checker::{Checker, Violation};
pub use report::Report;
pub use scenario::{ScenarioFile, Step, Target};
pub use sim::{Sim, SimConfig};
