//! Artefacts: the outputs of tasks, kept on disk by content digest beside the Raft
//! groups, in the node's one RocksDB (column family `artifacts`).
//!
//! ```text
//!   cf "artifacts"   project id ‖ 0x00 ‖ SHA-256 of the bytes (32 B)  → the bytes
//! ```
//!
//! The Ledger commits only a task's result digest; the bytes live here, on the worker
//! that produced them and on the voters of the task's state, which the node copies them
//! to before the result is proposed. A put checks the digest, so what is stored is what
//! was named. Keys start with the project so that archiving a project removes its
//! artefacts with one range delete. Reads hand out bounded ranges: artefacts move
//! between nodes in chunks, never in one message.

use std::collections::BTreeSet;
use std::sync::Arc;

use rocksdb::{DB, Direction, IteratorMode, WriteBatch};
use sha2::{Digest as _, Sha256};

use crate::store::{CF_ARTIFACTS, write_options};

/// A content digest: SHA-256 of an artefact's bytes.
pub type ArtifactDigest = [u8; 32];

/// The SHA-256 of `bytes`.
pub fn artifact_digest(bytes: &[u8]) -> ArtifactDigest {
    Sha256::digest(bytes).into()
}

/// Why an artefact could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The bytes do not hash to the digest they were stored under.
    #[error("the bytes hash to {found}, not to the artefact's digest {expected}")]
    DigestMismatch {
        /// The digest named (hex).
        expected: String,
        /// The digest of the bytes (hex).
        found: String,
    },
    /// A project id that cannot be a key (empty, or with a 0 byte).
    #[error("{0:?} is not a project id")]
    BadProject(String),
    /// RocksDB failed.
    #[error("artefact storage failed: {0}")]
    Storage(#[from] rocksdb::Error),
}

/// The artefacts of one node. Cheap to clone.
#[derive(Clone)]
pub struct Artifacts {
    db: Arc<DB>,
    fsync: bool,
}

impl std::fmt::Debug for Artifacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Artifacts")
            .field("fsync", &self.fsync)
            .finish()
    }
}

fn key(project: &str, digest: &ArtifactDigest) -> Result<Vec<u8>, ArtifactError> {
    if project.is_empty() || project.as_bytes().contains(&0) {
        return Err(ArtifactError::BadProject(project.to_string()));
    }
    Ok([project.as_bytes(), &[0], digest].concat())
}

/// Lower-case hex of a digest.
pub fn hex(digest: &ArtifactDigest) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Artifacts {
    pub(crate) fn new(db: Arc<DB>, fsync: bool) -> Self {
        Self { db, fsync }
    }

    fn cf(&self) -> &rocksdb::ColumnFamily {
        // Created with the database (`Store::open`), never dropped.
        self.db
            .cf_handle(CF_ARTIFACTS)
            .expect("the artifacts column family exists")
    }

    /// Stores `bytes` as an artefact of `project`, after checking that they hash to
    /// `digest`; durable when it returns (fsync unless the store was opened without).
    /// Storing an artefact held already is a no-op.
    pub fn put(
        &self,
        project: &str,
        digest: &ArtifactDigest,
        bytes: &[u8],
    ) -> Result<(), ArtifactError> {
        let found = artifact_digest(bytes);
        if found != *digest {
            return Err(ArtifactError::DigestMismatch {
                expected: hex(digest),
                found: hex(&found),
            });
        }
        let key = key(project, digest)?;
        if self.has(project, digest)? {
            return Ok(());
        }
        self.db
            .put_cf_opt(self.cf(), key, bytes, &write_options(self.fsync))?;
        Ok(())
    }

    /// Whether this node holds the artefact.
    pub fn has(&self, project: &str, digest: &ArtifactDigest) -> Result<bool, ArtifactError> {
        let key = key(project, digest)?;
        Ok(self.db.get_pinned_cf(self.cf(), key)?.is_some())
    }

    /// The whole artefact, when this node holds it.
    pub fn get(
        &self,
        project: &str,
        digest: &ArtifactDigest,
    ) -> Result<Option<Vec<u8>>, ArtifactError> {
        let key = key(project, digest)?;
        Ok(self.db.get_cf(self.cf(), key)?)
    }

    /// At most `max` bytes of the artefact from `offset`, and its whole size; `None`
    /// when this node does not hold it. An offset past the end gives no bytes.
    pub fn range(
        &self,
        project: &str,
        digest: &ArtifactDigest,
        offset: u64,
        max: usize,
    ) -> Result<Option<(u64, Vec<u8>)>, ArtifactError> {
        let key = key(project, digest)?;
        let Some(bytes) = self.db.get_pinned_cf(self.cf(), key)? else {
            return Ok(None);
        };
        let total = bytes.len() as u64;
        let start = usize::try_from(offset.min(total)).unwrap_or(bytes.len());
        let end = start.saturating_add(max).min(bytes.len());
        Ok(Some((total, bytes[start..end].to_vec())))
    }

    /// Removes every artefact of `project`; returns how many there were.
    pub fn remove_project(&self, project: &str) -> Result<usize, ArtifactError> {
        let from = key(project, &[0; 32])?;
        let to = key(project, &[0xFF; 32])?;
        let count = self
            .db
            .iterator_cf(self.cf(), IteratorMode::From(&from, Direction::Forward))
            .take_while(|item| item.as_ref().is_ok_and(|(key, _)| key.as_ref() <= &to[..]))
            .count();
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf(), &from, &[&to[..], &[0]].concat());
        self.db.write_opt(batch, &write_options(self.fsync))?;
        Ok(count)
    }

    /// The projects this node holds artefacts of.
    pub fn projects(&self) -> Result<BTreeSet<String>, ArtifactError> {
        let mut projects = BTreeSet::new();
        let mut from: Vec<u8> = Vec::new();
        loop {
            let mut items = self
                .db
                .iterator_cf(self.cf(), IteratorMode::From(&from, Direction::Forward));
            let Some(item) = items.next() else { break };
            let (key, _) = item?;
            let Some(end) = key.iter().position(|b| *b == 0) else {
                break;
            };
            let project = String::from_utf8_lossy(&key[..end]).into_owned();
            // Skip to the first key after this project's.
            from = [&key[..end], &[1]].concat();
            projects.insert(project);
        }
        Ok(projects)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Store, StoreConfig};

    fn store() -> (tempfile::TempDir, Artifacts) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), StoreConfig::default()).expect("open");
        (dir, store.artifacts())
    }

    #[test]
    fn an_artefact_is_kept_by_its_digest_and_read_in_ranges() {
        let (_dir, artifacts) = store();
        let bytes: Vec<u8> = (0..1_000u32).map(|i| (i % 251) as u8).collect();
        let digest = artifact_digest(&bytes);
        assert!(!artifacts.has("p1", &digest).expect("has"));
        artifacts.put("p1", &digest, &bytes).expect("put");
        artifacts
            .put("p1", &digest, &bytes)
            .expect("a second put is a no-op");
        assert_eq!(
            artifacts.get("p1", &digest).expect("get"),
            Some(bytes.clone())
        );
        assert_eq!(
            artifacts.range("p1", &digest, 990, 64).expect("range"),
            Some((1_000, bytes[990..].to_vec()))
        );
        assert_eq!(
            artifacts.range("p1", &digest, 5_000, 64).expect("range"),
            Some((1_000, Vec::new()))
        );
        assert_eq!(artifacts.get("p2", &digest).expect("get"), None);
    }

    #[test]
    fn bytes_that_do_not_match_their_digest_are_refused() {
        let (_dir, artifacts) = store();
        let digest = artifact_digest(b"what was named");
        let error = artifacts
            .put("p1", &digest, b"something else")
            .expect_err("mismatch");
        assert!(
            matches!(error, ArtifactError::DigestMismatch { .. }),
            "{error}"
        );
        assert!(!artifacts.has("p1", &digest).expect("has"));
        assert!(matches!(
            artifacts.put("a\0b", &digest, b"what was named"),
            Err(ArtifactError::BadProject(_))
        ));
    }

    #[test]
    fn removing_a_project_removes_only_its_artefacts_and_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (b"first".to_vec(), b"second".to_vec());
        {
            let store = Store::open(dir.path(), StoreConfig::default()).expect("open");
            let artifacts = store.artifacts();
            artifacts.put("p1", &artifact_digest(&a), &a).expect("put");
            artifacts.put("p1", &artifact_digest(&b), &b).expect("put");
            artifacts.put("p10", &artifact_digest(&a), &a).expect("put");
            assert_eq!(
                artifacts.projects().expect("projects"),
                BTreeSet::from(["p1".to_string(), "p10".to_string()])
            );
            assert_eq!(artifacts.remove_project("p1").expect("remove"), 2);
        }
        let store = Store::open(dir.path(), StoreConfig::default()).expect("reopen");
        let artifacts = store.artifacts();
        assert!(!artifacts.has("p1", &artifact_digest(&a)).expect("has"));
        assert_eq!(
            artifacts.get("p10", &artifact_digest(&a)).expect("get"),
            Some(a)
        );
        assert_eq!(
            artifacts.projects().expect("projects"),
            BTreeSet::from(["p10".to_string()])
        );
    }
}
