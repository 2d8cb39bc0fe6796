//! openraft's own storage conformance suite against the RocksDB store: once for a group
//! alone in its database, and once for a group sharing the database with other groups
//! that hold logs, votes and snapshots of their own.

// openraft's StorageError is large; the suite returns it.
#![allow(clippy::result_large_err)]

use aamas_consensus::ledger::LedgerCommand;
use aamas_consensus::registry::RegistryCommand;
use aamas_consensus::{
    Batch, Command, FEDERAL_GROUP, LogStore, Outcome, Request, StateMachineStore, Store,
    StoreConfig, TypeConfig,
};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    Entry, EntryPayload, LogId, RaftLogReader, RaftSnapshotBuilder, StorageError, Vote,
};
use tempfile::TempDir;

type Built = (TempDir, LogStore, StateMachineStore);

struct Alone;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Alone {
    async fn build(&self) -> Result<Built, StorageError<u64>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), StoreConfig::default()).expect("open");
        let (log, machine) = store.group(1)?;
        Ok((dir, log, machine))
    }
}

/// Groups 1 and 3 get a log, a vote, applied entries and a snapshot before group 2 is
/// handed to the suite; the suite then sees only group 2.
struct Shared;

fn entry(term: u64, index: u64, key: &str) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(term, 9), index),
        payload: EntryPayload::Normal(Batch::from(Request {
            id: u128::from(index),
            command: Command::Ledger(LedgerCommand::AddCity {
                name: format!("{key}-{index}"),
            }),
        })),
    }
}

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Shared {
    async fn build(&self) -> Result<Built, StorageError<u64>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), StoreConfig::default()).expect("open");
        for neighbour in [1u64, 3] {
            let (mut log, mut machine) = store.group(neighbour)?;
            let entries: Vec<_> = (0..20).map(|index| entry(7, index, "neighbour")).collect();
            log.blocking_append(entries.clone()).await?;
            log.save_vote(&Vote::new(7, 9)).await?;
            log.save_committed(Some(entries[19].log_id)).await?;
            machine.apply(entries).await?;
            machine
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await?;
        }
        let (log, machine) = store.group(2)?;
        Ok((dir, log, machine))
    }
}

#[test]
fn a_group_alone_passes_the_openraft_storage_suite() -> Result<(), StorageError<u64>> {
    Suite::test_all(Alone)
}

#[test]
fn a_group_sharing_the_database_passes_the_openraft_storage_suite() -> Result<(), StorageError<u64>>
{
    Suite::test_all(Shared)
}

#[tokio::test]
async fn groups_do_not_see_each_other_and_survive_a_reopen() -> Result<(), StorageError<u64>> {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(dir.path(), StoreConfig::default()).expect("open");
        for group in 1..=3u64 {
            let (mut log, mut machine) = store.group(group)?;
            let entries: Vec<_> = (1..=group * 5)
                .map(|index| entry(group, index, &format!("g{group}")))
                .collect();
            log.blocking_append(entries.clone()).await?;
            log.save_vote(&Vote::new(group, 1)).await?;
            machine.apply(entries).await?;
            machine
                .get_snapshot_builder()
                .await
                .build_snapshot()
                .await?;
        }
        log_purge_and_check(&store).await?;
    }
    // Reopen: every group's log, vote and snapshot is back, and only its own.
    let store = Store::open(dir.path(), StoreConfig::default()).expect("reopen");
    for group in 1..=3u64 {
        let (mut log, mut machine) = store.group(group)?;
        assert_eq!(log.read_vote().await?, Some(Vote::new(group, 1)));
        let state = log.get_log_state().await?;
        assert_eq!(state.last_log_id.map(|id| id.index), Some(group * 5));
        let entries = log.try_get_log_entries(0..1000).await?;
        let first = if group == 2 { 4 } else { 1 };
        assert_eq!(entries.len() as u64, group * 5 - first + 1, "group {group}");
        assert!(entries.iter().all(|e| e.log_id.leader_id.term == group));
        let (applied, _) = machine.applied_state().await?;
        assert_eq!(applied.map(|id| id.index), Some(group * 5));
        let cities = machine
            .with(|m| m.ledger().map(|ledger| ledger.cities().len()))
            .await;
        assert_eq!(
            cities,
            Some((group * 5) as usize),
            "group {group} recovered its state"
        );
    }
    Ok(())
}

async fn log_purge_and_check(store: &Store) -> Result<(), StorageError<u64>> {
    // Purging group 2 up to index 3 leaves groups 1 and 3 whole.
    let (mut log, _) = store.group(2)?;
    let purge_at = log.try_get_log_entries(3..4).await?[0].log_id;
    log.purge(purge_at).await?;
    assert_eq!(
        log.get_log_state().await?.last_purged_log_id,
        Some(purge_at)
    );
    Ok(())
}

fn at(index: u64, command: Command, id: u128) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Batch::from(Request { id, command })),
    }
}

#[tokio::test]
async fn a_retried_registry_command_applies_once() -> Result<(), StorageError<u64>> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), StoreConfig::default()).expect("open");
    let (_, mut machine) = store.group(FEDERAL_GROUP)?;
    let spend = |amount| {
        Command::Registry(RegistryCommand::Spend {
            state: "technical".into(),
            amount,
        })
    };
    let add = Command::Registry(RegistryCommand::AddState {
        name: "technical".into(),
        budget: 100,
    });
    machine.apply([at(1, add, 1), at(2, spend(30), 2)]).await?;
    // The same request (id 2) again, as a client retrying after a failover would send it.
    let retry = machine.apply([at(3, spend(30), 2)]).await?;
    assert!(retry[0].responses[0].duplicate);
    // A new request with the same content is a new effect.
    let fresh = machine.apply([at(4, spend(30), 3)]).await?;
    assert!(!fresh[0].responses[0].duplicate);
    let spent = machine
        .with(|m| m.registry().map(|r| r.states()["technical"].spent))
        .await;
    assert_eq!(spent, Some(60), "two spends of 30, not three");
    Ok(())
}

#[tokio::test]
async fn a_retried_ledger_command_applies_once() -> Result<(), StorageError<u64>> {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), StoreConfig::default()).expect("open");
    let (_, mut machine) = store.group(1)?;
    let use_tokens = Command::Ledger(LedgerCommand::RecordResourceUse {
        resource: "tokens".into(),
        amount: 5,
    });
    machine.apply([at(1, use_tokens.clone(), 10)]).await?;
    let retry = machine.apply([at(2, use_tokens, 10)]).await?;
    assert!(retry[0].responses[0].duplicate);
    let used = machine
        .with(|m| m.ledger().map(|l| l.resource_use().get("tokens").copied()))
        .await;
    assert_eq!(used, Some(Some(5)), "resource use counted once");
    // A command for the other kind of group changes nothing.
    let wrong = machine
        .apply([at(
            3,
            Command::Registry(RegistryCommand::AddState {
                name: "x".into(),
                budget: 1,
            }),
            11,
        )])
        .await?;
    assert_eq!(wrong[0].responses[0].outcome, Outcome::WrongGroup);
    Ok(())
}
