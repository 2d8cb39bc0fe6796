//! Governance (seed §6): pure cores, like [`crate::roles`]: they take plain values and
//! decide; the driver gathers the values, counts the decisions and acts on them.
//!
//! ```text
//!   policy   the policy document: parse and check (errors name their line), and the
//!            decisions at submission and admission, with tier presets (seed §12)
//!   monitor  a mayor's view of its workers' outcomes: failures in a row past the
//!            performance policy's threshold raise a PerformanceAlert
//!   scaling  whether the mesh needs more workers than it has (seed §9.2)
//!   rate     the communication policy's bound on messages per sender
//! ```

pub mod monitor;
pub mod policy;
pub mod rate;
pub mod scaling;
