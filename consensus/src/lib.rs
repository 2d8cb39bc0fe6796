//! # aamas-consensus
//!
//! Will hold the hierarchy's replicated state (issue [2/5]): the openraft type config,
//! RocksDB log and state-machine storage for many Raft groups in one database, the
//! `Registry` (federal group) and `Ledger` (state groups) state machines, and the
//! transport trait that `aamas-node` implements over libp2p.
//!
//! Nothing is implemented here yet.
