//! The role cores: pure state machines, one per responsibility, in the style of
//! openraft's engine and str0m's `Rtc`. Each is fed the time and what happened
//! (`handle(now, input)`), queues typed commands that the driver drains and carries
//! out, and checks its own invariants (`validate()`).
//!
//! ```text
//!   president  admission placement, federal voters, phases planned/advanced/failed,
//!              escalations decided
//!   governor   cities opened and closed, mayors appointed, escalations, progress
//!              reports, and what the president and mayors may ask of it
//!   mayor      dispatch by skill and capacity, outcomes, lost workers, retries
//!   worker     attempts in free slots, outcomes delivered until acknowledged
//!   authority  who may send what to whom (every inbound Raft RPC and work message)
//!   cities     how many cities a state's queue needs, and which city a task goes to
//! ```
//!
//! No tokio, libp2p, openraft, RocksDB, clock or randomness inside, and no import of
//! `net`, `driver`, `messaging` or `api` (`make layering` checks).

pub mod authority;
pub mod cities;
pub mod governor;
pub mod mayor;
pub mod president;
pub mod worker;
