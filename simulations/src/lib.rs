//! # aamas-sim
//!
//! Many real node runtimes (`aamas_node::start`, the same code as `aamas node`) in one
//! process over libp2p's memory transport, with storage in temporary dirs; scenarios
//! drive them, checkers watch invariants while they run, and a report sums it up.
//!
//! ```text
//!   Sim ── nodes: Vec<Option<Running>>   (crash = stop, restart = start on the same dir)
//!       ── Checker: every poll, (term, president) and each task's committed result
//!       ── Report: time to first president, failovers, tasks/s, violations → report.json
//! ```
//!
//! Status: a first slice of issue [5/5]: scenarios `steady` and `president-failover`,
//! crash and restart faults, two checkers. Not yet: message drop, delay and partitions,
//! the other scenarios, scenario files, plots, peak memory and bytes per node.

pub mod checker;
pub mod sim;

pub use checker::{Checker, Violation};
pub use sim::{Report, Scenario, Sim, SimConfig};
