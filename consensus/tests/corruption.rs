//! What the store does with a damaged database: a clear error, never a panic, and never
//! a wrong answer.

// openraft's StorageError is large; these tests return it.
#![allow(clippy::result_large_err)]

use std::path::Path;

use aamas_consensus::Groups;
use aamas_consensus::testing::MemRouter;
use aamas_consensus::{RaftConfig, Store, StoreConfig, StoreError};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::{Entry, EntryPayload, LogId, RaftLogReader};

fn entries(range: std::ops::Range<u64>) -> Vec<Entry<aamas_consensus::TypeConfig>> {
    range
        .map(|index| Entry {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        })
        .collect()
}

/// Writes 200 entries to group 7 and flushes them into SST files.
async fn populated(dir: &Path) {
    let store = Store::open(dir, StoreConfig::default()).expect("open");
    let (mut log, _) = store.group(7).expect("group");
    log.blocking_append(entries(1..201)).await.expect("append");
    store.flush().expect("flush");
}

/// Flips one byte in the middle of every non-empty file whose name passes `pick`.
fn corrupt_files(dir: &Path, pick: impl Fn(&str) -> bool) -> usize {
    let mut corrupted = 0;
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if pick(&name) {
            let mut bytes = std::fs::read(&path).expect("read");
            if bytes.is_empty() {
                continue;
            }
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0xff;
            std::fs::write(&path, bytes).expect("write");
            corrupted += 1;
        }
    }
    corrupted
}

#[tokio::test]
async fn a_checksum_mismatch_in_the_log_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    populated(dir.path()).await;
    assert!(
        corrupt_files(dir.path(), |name| name.ends_with(".sst")) > 0,
        "the flush wrote SST files"
    );
    match Store::open(dir.path(), StoreConfig::default()) {
        // RocksDB may notice the damage when it opens the files ...
        Err(StoreError::Open { path, .. }) => assert_eq!(path, dir.path()),
        // ... or when it reads the damaged block: then every read of it fails.
        Ok(store) => {
            let (mut log, _) = store.group(7).expect("group");
            let read = log.try_get_log_entries(1..201).await;
            let state = log.get_log_state().await;
            assert!(
                read.is_err() || state.is_err(),
                "a corrupt block was read without an error"
            );
        }
        Err(other) => panic!("unexpected error: {other}"),
    }
}

#[tokio::test]
async fn a_corrupt_manifest_refuses_to_open_and_names_the_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    populated(dir.path()).await;
    assert!(corrupt_files(dir.path(), |name| name.starts_with("MANIFEST")) > 0);
    let error = Store::open(dir.path(), StoreConfig::default()).expect_err("must refuse");
    let text = error.to_string();
    assert!(text.contains(&dir.path().display().to_string()), "{text}");
    assert!(
        text.contains("no other aamas node"),
        "the message says what to check: {text}"
    );
}

#[tokio::test]
async fn an_undecodable_log_entry_stops_the_group_instead_of_serving_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path(), StoreConfig::default()).expect("open");
        let (mut log, _) = store.group(7).expect("group");
        log.blocking_append(entries(1..11)).await.expect("append");
        // Bytes that are no Entry, where entry 10 was: as if a bug or a bad disk wrote them.
        store.put_raw_log_entry_for_tests(7, 10, b"\xff\xff\xff not an entry");
    }
    let store = Store::open(dir.path(), StoreConfig::default()).expect("reopen");
    let (mut log, _) = store.group(7).expect("group");
    assert!(log.try_get_log_entries(1..11).await.is_err());
    assert!(
        log.get_log_state().await.is_err(),
        "the last entry cannot be decoded"
    );
    // Raft refuses to start the group on it: it never serves or acknowledges from a log it
    // cannot read.
    let router = MemRouter::new();
    let groups =
        Groups::new(1, store, &RaftConfig::default(), router.transport(1)).expect("groups");
    assert!(groups.open(7).await.is_err());
}
