//! # aamas-tests
//!
//! Will hold the multi-process integration tests that drive the real `aamas` binary on
//! loopback (issues [3/5] and [4/5]).
//!
//! Nothing is implemented here yet.
