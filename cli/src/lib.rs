//! # aamas-cli
//!
//! Will hold the `aamas` binary (issue [3/5]): argument parsing and configuration only;
//! every behaviour lives in `aamas-node`.
//!
//! Nothing is implemented here yet.
