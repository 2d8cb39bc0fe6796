//! The driver: a running node, and the duties that feed the role cores
//! ([`crate::roles`]) with what happened and carry out their commands through Raft,
//! the network and the executors.
//!
//! ```text
//!   runtime    start/run/stop, admission, the president's federal duties, liveness,
//!              the inbound RPC pipeline
//!   work       projects through the hierarchy: the messages between the president,
//!              governors, mayors and workers, and the reads and writes behind them
//!   courier    work messages to one member leave together, one envelope per batch
//!   owner      the one task that owns those four cores and feeds them every input
//!   states     state groups, governors' voters and mayor leases
//!   mirroring  the Registry copies of members outside the federal group
//!   projects   projects as users see them: submit, list, show, change
//!   admin      join tokens (list, revoke) and members (evict), through the president
//!   alerts     PerformanceAlerts: raised by a mayor's monitor, recorded by the president
//!   performance  a node's figures as a worker (rates, times, CPU per result) and the
//!              mesh's phase transitions
//!   resources  accounts, limits and ResourceRequests: charged by mayors, limits copied
//!              by governors, requests carried up to the president
//!   scaling    on the president: whether the mesh wants more workers (gauges, the
//!              operator's scale hook)
//!   policy     the policy in force: applied through the president, consulted at
//!              submission and admission, each decision counted
//!   artifacts  task outputs: kept by the worker, copied to the state's voters before
//!              the result is reported, read by any member in chunks
//! ```
//!
//! The files of this folder share one `Node` (defined in `runtime`), whose methods
//! they each extend; the layers below (`net`, `roles`, `messaging`, `executor`,
//! `spec`) never import the driver.

pub mod admin;
pub mod alerts;
pub mod artifacts;
pub mod courier;
pub mod mesh_events;
pub mod mirroring;
pub(crate) mod owner;
pub mod performance;
pub mod policy;
pub mod projects;
pub mod resources;
pub mod runtime;
pub mod scaling;
pub mod states;
pub mod work;
