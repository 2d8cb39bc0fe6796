//! # aamas-sim
//!
//! Will hold the simulator (issue [5/5]): many real node runtimes in one process over
//! libp2p's memory transport with fault injection, scenarios, invariant checkers and
//! reports.
//!
//! Nothing is implemented here yet.
