//! Governance (seed §6): pure cores, like [`crate::roles`]: they take plain values and
//! decide; the driver gathers the values, counts the decisions and acts on them.
//!
//! ```text
//!   policy   the policy document: parse and check (errors name their line), and the
//!            decisions at submission and admission, with tier presets (seed §12)
//! ```

pub mod policy;
