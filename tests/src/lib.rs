//! # aamas-tests
//!
//! Multi-process integration tests that drive the real `aamas` binary on loopback
//! (`tests/mesh.rs`). They find the binary next to their own executable in the target
//! directory, or at `AAMAS_BIN`.
