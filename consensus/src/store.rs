//! RocksDB storage for many Raft groups in one database.
//!
//! Durability rule: nothing is acknowledged to openraft before RocksDB has written it,
//! with `fsync` when [`StoreConfig::fsync`] is on (the default). A write error is returned
//! to openraft, which stops the group (it never acknowledges what it did not persist).

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    Entry, EntryPayload, LogId, LogState, RaftLogReader, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use rocksdb::{
    ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::RwLock;

use crate::machine::{Applied, BatchResponse, Machine};
use crate::types::{GroupId, MemberNode, NodeId, TypeConfig};

const CF_LOG: &str = "raft_log";
const CF_META: &str = "raft_meta";
const CF_SM: &str = "raft_sm";
/// Task outputs by project and digest ([`crate::artifacts`]).
pub(crate) const CF_ARTIFACTS: &str = "artifacts";

const META_VOTE: &[u8] = b"vote";
const META_COMMITTED: &[u8] = b"committed";
const META_PURGED: &[u8] = b"purged";
const SM_SNAPSHOT: &[u8] = b"snapshot";
const SM_MIRROR_SNAPSHOT: &[u8] = b"mirror-snapshot";
/// The key, in the meta family, of the database's format version. Group keys are
/// eight bytes of group id and a suffix, so this one cannot collide with them.
const META_FORMAT: &[u8] = b"format";

/// The on-disk format this build reads and writes. Version 5: a Ledger keeps resource
/// accounts and limits and a task what its attempts used (`Task::used`); a Registry
/// state keeps limits, and the Registry ResourceRequests. Version 4: a Ledger task keeps the
/// model use of its result (`Task::usage`), a Registry project its gates' decisions
/// (`Project::gates`) and may await approval; specs carry gates, prompts and llm
/// context. Version 3: a Ledger task records
/// whether its failure was transient (`FailTask::transient`), a Registry project the
/// member it was submitted through (`Project::owner`). Version 2: log ids carry a
/// term only (openraft's `single-term-leader`, standard Raft's one leader per term);
/// version 1 (unmarked) carried (term, node).
pub const STORE_FORMAT: u32 = 5;

type StoreResult<T> = Result<T, StorageError<NodeId>>;

/// How a node's Raft database is opened.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Sync every acknowledged write to disk. Turn off only for tests and simulations.
    pub fsync: bool,
    /// Memtable size of each column family; `None` keeps RocksDB's 64 MiB. RocksDB
    /// preallocates its write-ahead log at about this size, so a simulator running a
    /// thousand databases sets it small (1 MiB).
    pub memtable_bytes: Option<usize>,
    /// One block cache and one memtable budget shared with other databases in this
    /// process (the simulator's thousand nodes); `None` gives this database its own.
    pub shared: Option<SharedMemory>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            fsync: true,
            memtable_bytes: None,
            shared: None,
        }
    }
}

/// A RocksDB block cache and write-buffer manager that many databases in one process
/// share, so that their memory has one bound instead of one each: a thousand databases
/// with RocksDB's defaults would each keep their own cache and memtables.
#[derive(Clone)]
pub struct SharedMemory {
    cache: rocksdb::Cache,
    write_buffers: rocksdb::WriteBufferManager,
    cache_bytes: usize,
    memtables_bytes: usize,
}

impl SharedMemory {
    /// A block cache of `cache_bytes` and a budget of `memtables_bytes` for the
    /// memtables of every database opened with it. When the memtables reach the
    /// budget, RocksDB flushes the largest; writers are not stalled.
    pub fn new(cache_bytes: usize, memtables_bytes: usize) -> Self {
        Self {
            cache: rocksdb::Cache::new_lru_cache(cache_bytes),
            write_buffers: rocksdb::WriteBufferManager::new_write_buffer_manager(
                memtables_bytes,
                false,
            ),
            cache_bytes,
            memtables_bytes,
        }
    }

    /// Bytes the memtables of every database sharing this budget hold now.
    pub fn memtables_in_use_bytes(&self) -> usize {
        self.write_buffers.get_usage()
    }
}

impl Debug for SharedMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedMemory")
            .field("cache_bytes", &self.cache_bytes)
            .field("memtables_bytes", &self.memtables_bytes)
            .field("memtables_in_use_bytes", &self.memtables_in_use_bytes())
            .finish()
    }
}

/// Errors opening the database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// RocksDB refused to open the database.
    #[error(
        "cannot open the Raft database at {path}: {source}; check that no other aamas node \
         uses this data dir, that the disk has space, and that the files are readable"
    )]
    Open {
        /// The database directory.
        path: PathBuf,
        /// RocksDB's error.
        source: rocksdb::Error,
    },
    /// The database was written in another on-disk format.
    #[error(
        "the Raft database at {path} is in format {found}, and this aamas reads format \
         {expected}; use the aamas release that wrote it, or start this node on a new \
         data dir and join it to the mesh again"
    )]
    Format {
        /// The database directory.
        path: PathBuf,
        /// The format found (1 when the database carries no marker).
        found: u32,
        /// [`STORE_FORMAT`].
        expected: u32,
    },
}

/// One RocksDB holding the logs, votes and state machines of every Raft group on a node.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
    config: StoreConfig,
}

impl Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.db.path())
            .field("config", &self.config)
            .finish()
    }
}

impl Store {
    /// Opens (creating if needed) the database in `path`.
    pub fn open(path: &Path, config: StoreConfig) -> Result<Self, StoreError> {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_paranoid_checks(true);
        // RocksDB's own info log: a few small files, not an unbounded one per database.
        options.set_keep_log_file_num(2);
        options.set_max_log_file_size(1 << 20);
        let table_options = config.shared.as_ref().map(|shared| {
            let mut table = rocksdb::BlockBasedOptions::default();
            table.set_block_cache(&shared.cache);
            table
        });
        if let Some(shared) = &config.shared {
            options.set_write_buffer_manager(&shared.write_buffers);
        }
        let family_options = || {
            let mut family = Options::default();
            if let Some(bytes) = config.memtable_bytes {
                family.set_write_buffer_size(bytes);
            }
            if let Some(table) = &table_options {
                family.set_block_based_table_factory(table);
            }
            family
        };
        if let Some(bytes) = config.memtable_bytes {
            options.set_write_buffer_size(bytes);
            options.set_db_write_buffer_size(bytes * 4);
        }
        let families = [CF_LOG, CF_META, CF_SM, CF_ARTIFACTS]
            .into_iter()
            .map(|name| ColumnFamilyDescriptor::new(name, family_options()));
        let db = DB::open_cf_descriptors(&options, path, families).map_err(|source| {
            StoreError::Open {
                path: path.to_owned(),
                source,
            }
        })?;
        check_format(&db, path)?;
        Ok(Self {
            db: Arc::new(db),
            config,
        })
    }

    /// The task outputs kept on this node ([`crate::artifacts`]).
    pub fn artifacts(&self) -> crate::artifacts::Artifacts {
        crate::artifacts::Artifacts::new(self.db.clone(), self.config.fsync)
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        self.db.path()
    }

    /// A watch that tells when this database has been closed: when the last clone of
    /// this store, and of every log and state-machine store taken from it, is dropped.
    pub fn watch_close(&self) -> CloseWatch {
        CloseWatch(Arc::downgrade(&self.db))
    }

    /// Flushes every column family's memtable to SST files (and syncs them).
    pub fn flush(&self) -> Result<(), rocksdb::Error> {
        for name in [CF_LOG, CF_META, CF_SM, CF_ARTIFACTS] {
            if let Some(cf) = self.db.cf_handle(name) {
                self.db.flush_cf(cf)?;
            }
        }
        Ok(())
    }

    /// The groups that have voted or been voted for on this node: the ones it took part
    /// in and must reopen after a restart, in id order.
    pub fn known_groups(&self) -> Result<Vec<GroupId>, rocksdb::Error> {
        let Some(cf) = self.db.cf_handle(CF_META) else {
            return Ok(Vec::new());
        };
        let mut groups = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (key, _) = item?;
            if key.len() == 8 + META_VOTE.len() && key.ends_with(META_VOTE) {
                let mut id = [0u8; 8];
                id.copy_from_slice(&key[..8]);
                groups.push(GroupId::from_be_bytes(id));
            }
        }
        Ok(groups)
    }

    /// Writes raw bytes where a log entry belongs, bypassing every check. For tests of
    /// what the store does with damaged data; never call it elsewhere.
    #[doc(hidden)]
    pub fn put_raw_log_entry_for_tests(&self, group: GroupId, index: u64, bytes: &[u8]) {
        if let Some(cf) = self.db.cf_handle(CF_LOG)
            && let Err(error) = self.db.put_cf(cf, log_key(group, index), bytes)
        {
            tracing::error!(%error, "test hook failed to write");
        }
    }

    /// The log and state-machine stores of `group`. Reopening a group after a restart
    /// recovers its log, vote, committed index and last snapshot.
    pub fn group(&self, group: GroupId) -> StoreResult<(LogStore, StateMachineStore)> {
        let log = LogStore {
            db: self.db.clone(),
            group,
            fsync: self.config.fsync,
        };
        let machine = StateMachineStore::open(self.db.clone(), group, self.config.fsync)?;
        Ok((log, machine))
    }

    /// The state machine of a mirror of `group` on this node (see [`crate::Mirror`]).
    pub(crate) fn mirror_machine(&self, group: GroupId) -> StoreResult<StateMachineStore> {
        StateMachineStore::open_mirror(self.db.clone(), group, self.config.fsync)
    }
}

/// One Raft group's vote as a node's database holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PersistedVote {
    /// The group.
    pub group: GroupId,
    /// The vote's term.
    pub term: u64,
    /// Whom the node voted for (itself, when it stood).
    pub voted_for: Option<NodeId>,
    /// Whether a quorum granted it: `voted_for` led the group in `term`.
    pub committed: bool,
}

/// The vote of every group in the node database at `path` (a node's `DATA_DIR/raft`),
/// read without taking the database: RocksDB's read-only open, which a running node does
/// not prevent (it reads the writes not yet flushed from RocksDB's own log; its info log
/// goes to `raft.reads/`). For checkers outside the node, which trust its disk rather
/// than what it says.
pub fn read_votes(path: &Path) -> Result<Vec<PersistedVote>, StoreError> {
    let open_error = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let db = open_from_outside(path, &[CF_META])?;
    let cf = family_from_outside(&db, path, CF_META)?;
    let mut votes = Vec::new();
    for item in db.iterator_cf(cf, IteratorMode::Start) {
        let (key, value) = item.map_err(open_error)?;
        if key.len() != 8 + META_VOTE.len() || !key.ends_with(META_VOTE) {
            continue;
        }
        let Some(group) = group_of(&key) else {
            continue;
        };
        // A value that does not decode is skipped: the node itself would refuse it.
        let Ok(vote) = postcard::from_bytes::<Vote<NodeId>>(&value) else {
            continue;
        };
        votes.push(PersistedVote {
            group,
            term: vote.leader_id().get_term(),
            voted_for: vote.leader_id().voted_for(),
            committed: vote.is_committed(),
        });
    }
    Ok(votes)
}

/// One Raft group's log as a node's database holds it: what [`read_logs`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistedLog {
    /// The group.
    pub group: GroupId,
    /// The last entry the node knew to be committed, by index; `None` when it had saved
    /// none. It is saved without an fsync, so after a crash it may lag: never run ahead.
    pub committed: Option<u64>,
    /// The entries kept (those not purged into a snapshot), in index order.
    pub entries: Vec<PersistedEntry>,
}

/// One log entry as a node's database holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PersistedEntry {
    /// Its index.
    pub index: u64,
    /// The term of the leader that appended it.
    pub term: u64,
    /// The first eight bytes of the SHA-256 of its stored bytes, which hold its log id
    /// and payload: two nodes that hold the same entry hold the same digest.
    pub digest: u64,
}

/// The log of every group in the node database at `path`, read without taking the
/// database, as [`read_votes`] does. For checkers outside the node: two entries with
/// the same index and term but different digests mean two leaders in one term, and two
/// committed entries that differ at one index mean a committed write lost.
pub fn read_logs(path: &Path) -> Result<Vec<PersistedLog>, StoreError> {
    let open_error = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let db = open_from_outside(path, &[CF_LOG, CF_META])?;
    let meta = family_from_outside(&db, path, CF_META)?;
    let log = family_from_outside(&db, path, CF_LOG)?;
    let mut logs: Vec<PersistedLog> = Vec::new();
    for item in db.iterator_cf(log, IteratorMode::Start) {
        let (key, value) = item.map_err(open_error)?;
        let (16, Some(group), Some(index)) = (key.len(), group_of(&key), index_of(&key)) else {
            continue;
        };
        // An entry that does not decode is skipped: the node itself would refuse it.
        let Ok(entry) = postcard::from_bytes::<Entry<TypeConfig>>(&value) else {
            continue;
        };
        let digest = Sha256::digest(&value);
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        if logs.last().is_none_or(|last| last.group != group) {
            let committed = db
                .get_cf(meta, group_key(group, META_COMMITTED))
                .map_err(open_error)?
                .and_then(|bytes| postcard::from_bytes::<Option<LogId<NodeId>>>(&bytes).ok())
                .flatten()
                .map(|log_id| log_id.index);
            logs.push(PersistedLog {
                group,
                committed,
                entries: Vec::new(),
            });
        }
        if let Some(last) = logs.last_mut() {
            last.entries.push(PersistedEntry {
                index,
                term: entry.log_id.leader_id.term,
                digest: u64::from_be_bytes(first),
            });
        }
    }
    Ok(logs)
}

/// The node database at `path`, opened read-only with `families`, as the checkers
/// outside the node read it ([`read_votes`], [`read_logs`]). RocksDB's info log of this
/// open goes beside the database (`raft.reads/`), not over the node's.
fn open_from_outside(path: &Path, families: &[&str]) -> Result<DB, StoreError> {
    let mut options = Options::default();
    options.set_db_log_dir(path.with_extension("reads"));
    options.set_keep_log_file_num(1);
    DB::open_cf_for_read_only(&options, path, families, false).map_err(|source| StoreError::Open {
        path: path.to_owned(),
        source,
    })
}

/// A column family of a database [`open_from_outside`]; a database without it is not
/// a node's (a format error).
fn family_from_outside<'db>(
    db: &'db DB,
    path: &Path,
    name: &str,
) -> Result<&'db rocksdb::ColumnFamily, StoreError> {
    db.cf_handle(name).ok_or_else(|| StoreError::Format {
        path: path.to_owned(),
        found: 0,
        expected: STORE_FORMAT,
    })
}

/// Marks a new database with [`STORE_FORMAT`]; refuses one in any other format.
fn check_format(db: &DB, path: &Path) -> Result<(), StoreError> {
    let open_error = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
    let format_error = |found| StoreError::Format {
        path: path.to_owned(),
        found,
        expected: STORE_FORMAT,
    };
    let Some(meta) = db.cf_handle(CF_META) else {
        return Ok(());
    };
    match db.get_cf(meta, META_FORMAT).map_err(open_error)? {
        Some(bytes) => {
            let found = <[u8; 4]>::try_from(bytes.as_slice())
                .map(u32::from_be_bytes)
                .unwrap_or(0);
            if found == STORE_FORMAT {
                Ok(())
            } else {
                Err(format_error(found))
            }
        }
        None => {
            let written_before = [CF_LOG, CF_META, CF_SM].into_iter().any(|name| {
                db.cf_handle(name)
                    .is_some_and(|cf| db.iterator_cf(cf, IteratorMode::Start).next().is_some())
            });
            if written_before {
                return Err(format_error(1));
            }
            db.put_cf_opt(
                meta,
                META_FORMAT,
                STORE_FORMAT.to_be_bytes(),
                &write_options(true),
            )
            .map_err(open_error)
        }
    }
}

/// Tells when a [`Store`]'s database has been closed (see [`Store::watch_close`]).
#[derive(Debug, Clone)]
pub struct CloseWatch(std::sync::Weak<DB>);

impl CloseWatch {
    /// Whether the database is closed (its lock released).
    pub fn is_closed(&self) -> bool {
        self.0.strong_count() == 0
    }

    /// Waits until the database is closed, at most `limit`; returns whether it is.
    pub async fn closed(&self, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.is_closed() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        true
    }
}

fn group_key(group: GroupId, suffix: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + suffix.len());
    key.extend_from_slice(&group.to_be_bytes());
    key.extend_from_slice(suffix);
    key
}

fn log_key(group: GroupId, index: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&group.to_be_bytes());
    key[8..].copy_from_slice(&index.to_be_bytes());
    key
}

fn group_of(key: &[u8]) -> Option<GroupId> {
    key.get(..8)
        .and_then(|bytes| bytes.try_into().ok())
        .map(GroupId::from_be_bytes)
}

fn index_of(key: &[u8]) -> Option<u64> {
    key.get(8..16)
        .and_then(|bytes| bytes.try_into().ok())
        .map(u64::from_be_bytes)
}

pub(crate) fn write_options(fsync: bool) -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(fsync);
    options
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageIOError<NodeId>> {
    postcard::to_stdvec(value).map_err(|error| StorageIOError::write(&error))
}

/// The Raft log of one group.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    group: GroupId,
    fsync: bool,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("group", &self.group)
            .finish()
    }
}

impl LogStore {
    fn cf(&self, name: &str) -> StoreResult<&rocksdb::ColumnFamily> {
        self.db.cf_handle(name).ok_or_else(|| {
            StorageIOError::read(openraft::AnyError::error(format!(
                "column family {name} is missing"
            )))
            .into()
        })
    }

    fn get_meta<T: for<'de> Deserialize<'de>>(&self, name: &[u8]) -> StoreResult<Option<T>> {
        let cf = self.cf(CF_META)?;
        let Some(bytes) = self
            .db
            .get_cf(cf, group_key(self.group, name))
            .map_err(|error| StorageIOError::read(&error))?
        else {
            return Ok(None);
        };
        postcard::from_bytes(&bytes)
            .map(Some)
            .map_err(|error| StorageIOError::read(&error).into())
    }

    fn put_meta<T: Serialize>(&self, name: &[u8], value: &T, sync: bool) -> StoreResult<()> {
        let cf = self.cf(CF_META)?;
        self.db
            .put_cf_opt(
                cf,
                group_key(self.group, name),
                encode(value)?,
                &write_options(sync),
            )
            .map_err(|error| StorageIOError::write(&error).into())
    }

    fn last_entry_id(&self) -> StoreResult<Option<LogId<NodeId>>> {
        let cf = self.cf(CF_LOG)?;
        let upper = log_key(self.group, u64::MAX);
        let mut iter = self
            .db
            .iterator_cf(cf, IteratorMode::From(&upper, Direction::Reverse));
        match iter.next() {
            Some(Ok((key, value))) if key.starts_with(&self.group.to_be_bytes()) => {
                let entry: Entry<TypeConfig> = postcard::from_bytes(&value)
                    .map_err(|error| StorageIOError::read_logs(&error))?;
                Ok(Some(entry.log_id))
            }
            Some(Err(error)) => Err(StorageIOError::read_logs(&error).into()),
            _ => Ok(None),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(start) => *start,
            Bound::Excluded(start) => start.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let cf = self.cf(CF_LOG)?;
        let mut entries = Vec::new();
        let from = log_key(self.group, start);
        for item in self
            .db
            .iterator_cf(cf, IteratorMode::From(&from, Direction::Forward))
        {
            let (key, value) = item.map_err(|error| StorageIOError::read_logs(&error))?;
            if !key.starts_with(&self.group.to_be_bytes()) {
                break;
            }
            let Some(index) = index_of(&key) else { break };
            if !range.contains(&index) {
                break;
            }
            entries.push(
                postcard::from_bytes(&value)
                    .map_err(|error| StorageIOError::read_log_at_index(index, &error))?,
            );
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StoreResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.get_meta(META_PURGED)?;
        let last_log_id = self.last_entry_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last_log_id.max(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StoreResult<()> {
        self.put_meta(META_VOTE, vote, self.fsync)
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<NodeId>>> {
        self.get_meta(META_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StoreResult<()> {
        // Not synced: the committed index only lets a restart re-apply committed entries
        // before the leader tells it the index again; losing the latest value loses no
        // data, and syncing it would add a second fsync to every commit's critical path.
        self.put_meta(META_COMMITTED, &committed, false)
    }

    async fn read_committed(&mut self) -> StoreResult<Option<LogId<NodeId>>> {
        Ok(self
            .get_meta::<Option<LogId<NodeId>>>(META_COMMITTED)?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let cf = self.cf(CF_LOG)?;
        let mut batch = WriteBatch::default();
        for entry in entries {
            batch.put_cf(cf, log_key(self.group, entry.log_id.index), encode(&entry)?);
        }
        // One write, one fsync for the whole batch: openraft hands us everything that
        // arrived together, which is what makes group commit possible.
        let result = self.db.write_opt(batch, &write_options(self.fsync));
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(error) => {
                callback.log_io_completed(Err(std::io::Error::other(error.to_string())));
                Err(StorageIOError::write_logs(&error).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        let cf = self.cf(CF_LOG)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            cf,
            log_key(self.group, log_id.index),
            log_key(self.group, u64::MAX),
        );
        batch.delete_cf(cf, log_key(self.group, u64::MAX));
        self.db
            .write_opt(batch, &write_options(self.fsync))
            .map_err(|error| StorageIOError::write_logs(&error).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        let log_cf = self.cf(CF_LOG)?;
        let meta_cf = self.cf(CF_META)?;
        let mut batch = WriteBatch::default();
        // The purge mark and the deletion commit together, so a crash never leaves a log
        // whose first entry disagrees with its purge mark.
        batch.put_cf(
            meta_cf,
            group_key(self.group, META_PURGED),
            encode(&log_id)?,
        );
        batch.delete_range_cf(
            log_cf,
            log_key(self.group, 0),
            log_key(self.group, log_id.index.saturating_add(1)),
        );
        self.db
            .write_opt(batch, &write_options(self.fsync))
            .map_err(|error| StorageIOError::write_logs(&error).into())
    }
}

/// A group's replicated state and what openraft needs to know about it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MachineState {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, MemberNode>,
    applied: Applied,
}

impl MachineState {
    fn new(group: GroupId) -> Self {
        Self {
            last_applied: None,
            membership: StoredMembership::default(),
            applied: Applied::new(group),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, MemberNode>,
    data: Vec<u8>,
}

/// The state machine of one group, kept in memory and snapshotted to RocksDB.
///
/// After a restart it starts from its last snapshot, and openraft re-applies the
/// committed log entries after it ([`LogStore`] keeps the committed index), so the state
/// equals what was committed.
#[derive(Clone)]
pub struct StateMachineStore {
    db: Arc<DB>,
    group: GroupId,
    /// Where its snapshot lives: the group's, or a mirror's of that group.
    snapshot_key: Vec<u8>,
    fsync: bool,
    state: Arc<RwLock<MachineState>>,
    snapshots_built: Arc<std::sync::atomic::AtomicU64>,
}

impl Debug for StateMachineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachineStore")
            .field("group", &self.group)
            .finish()
    }
}

impl StateMachineStore {
    fn open(db: Arc<DB>, group: GroupId, fsync: bool) -> StoreResult<Self> {
        Self::open_at(db, group, group_key(group, SM_SNAPSHOT), fsync)
    }

    /// The state machine of a mirror of `group` (see [`crate::Mirror`]): the same kind of
    /// machine, with its snapshot kept apart from the group's own.
    pub(crate) fn open_mirror(db: Arc<DB>, group: GroupId, fsync: bool) -> StoreResult<Self> {
        Self::open_at(db, group, group_key(group, SM_MIRROR_SNAPSHOT), fsync)
    }

    fn open_at(
        db: Arc<DB>,
        group: GroupId,
        snapshot_key: Vec<u8>,
        fsync: bool,
    ) -> StoreResult<Self> {
        let store = Self {
            db,
            group,
            snapshot_key,
            fsync,
            state: Arc::new(RwLock::new(MachineState::new(group))),
            snapshots_built: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        };
        if let Some(snapshot) = store.read_snapshot()? {
            let state: MachineState = postcard::from_bytes(&snapshot.data).map_err(|error| {
                StorageIOError::read_snapshot(Some(snapshot.meta.signature()), &error)
            })?;
            store
                .state
                .try_write()
                .map(|mut guard| *guard = state)
                .map_err(|error| StorageIOError::read_state_machine(&error))?;
        }
        Ok(store)
    }

    /// Runs `read` on this member's copy of the state machine (as applied here: not a
    /// linearizable read by itself; see `Group::read`).
    pub async fn with<R>(&self, read: impl FnOnce(&Machine) -> R) -> R {
        read(&self.state.read().await.applied.machine)
    }

    /// Whether `node` is a voter or learner of the last membership this state machine
    /// applied (a committed one).
    pub(crate) async fn applied_membership_has(&self, node: NodeId) -> bool {
        let state = self.state.read().await;
        state.membership.membership().get_node(&node).is_some()
    }

    fn cf(&self) -> StoreResult<&rocksdb::ColumnFamily> {
        self.db.cf_handle(CF_SM).ok_or_else(|| {
            StorageIOError::read_state_machine(openraft::AnyError::error(
                "column family raft_sm is missing",
            ))
            .into()
        })
    }

    fn read_snapshot(&self) -> StoreResult<Option<StoredSnapshot>> {
        let Some(bytes) = self
            .db
            .get_cf(self.cf()?, &self.snapshot_key)
            .map_err(|error| StorageIOError::read_snapshot(None, &error))?
        else {
            return Ok(None);
        };
        postcard::from_bytes(&bytes)
            .map(Some)
            .map_err(|error| StorageIOError::read_snapshot(None, &error).into())
    }

    fn write_snapshot(&self, snapshot: &StoredSnapshot) -> StoreResult<()> {
        let bytes = postcard::to_stdvec(snapshot).map_err(|error| {
            StorageIOError::write_snapshot(Some(snapshot.meta.signature()), &error)
        })?;
        self.db
            .put_cf_opt(
                self.cf()?,
                &self.snapshot_key,
                bytes,
                &write_options(self.fsync),
            )
            .map_err(|error| {
                StorageIOError::write_snapshot(Some(snapshot.meta.signature()), &error).into()
            })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StoreResult<Snapshot<TypeConfig>> {
        let state = self.state.read().await.clone();
        let data = postcard::to_stdvec(&state)
            .map_err(|error| StorageIOError::write_snapshot(None, &error))?;
        let built = self
            .snapshots_built
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
            snapshot_id: format!(
                "{}-{}-{built}",
                self.group,
                state.last_applied.map_or(0, |id| id.index)
            ),
        };
        let stored = StoredSnapshot { meta, data };
        self.write_snapshot(&stored)?;
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> StoreResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, MemberNode>)> {
        let state = self.state.read().await;
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StoreResult<Vec<BatchResponse>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut state = self.state.write().await;
        let mut responses = Vec::new();
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            let response = match &entry.payload {
                EntryPayload::Blank => BatchResponse::default(),
                EntryPayload::Normal(batch) => state.applied.apply_batch(batch),
                EntryPayload::Membership(membership) => {
                    state.membership =
                        StoredMembership::new(Some(entry.log_id), membership.clone());
                    BatchResponse::default()
                }
            };
            responses.push(response);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StoreResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, MemberNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StoreResult<()> {
        let data = snapshot.into_inner();
        let mut state: MachineState = postcard::from_bytes(&data)
            .map_err(|error| StorageIOError::read_snapshot(Some(meta.signature()), &error))?;
        // The snapshot's metadata is authoritative for what it covers.
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: postcard::to_stdvec(&state)
                .map_err(|error| StorageIOError::write_snapshot(Some(meta.signature()), &error))?,
        };
        // Persist before replacing the state: a crash in between leaves the new snapshot on
        // disk, from which the restart recovers.
        self.write_snapshot(&stored)?;
        *self.state.write().await = state;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot<TypeConfig>>> {
        Ok(self.read_snapshot()?.map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_db(path: &Path) -> DB {
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        DB::open_cf(&options, path, [CF_LOG, CF_META, CF_SM]).expect("raw open")
    }

    #[test]
    fn a_new_database_is_marked_and_reopens() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(Store::open(dir.path(), StoreConfig::default()).expect("first open"));
        let store = Store::open(dir.path(), StoreConfig::default()).expect("reopen");
        let meta = store.db.cf_handle(CF_META).expect("meta");
        let marker = store.db.get_cf(meta, META_FORMAT).expect("read");
        assert_eq!(marker.as_deref(), Some(&STORE_FORMAT.to_be_bytes()[..]));
    }

    #[test]
    fn an_unmarked_database_with_data_is_refused_as_format_1() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = raw_db(dir.path());
            let log = db.cf_handle(CF_LOG).expect("log");
            db.put_cf(log, log_key(0, 1), b"an entry of the old format")
                .expect("put");
        }
        match Store::open(dir.path(), StoreConfig::default()) {
            Err(StoreError::Format {
                found, expected, ..
            }) => assert_eq!((found, expected), (1, STORE_FORMAT)),
            other => panic!("expected a format error, got {other:?}"),
        }
    }

    #[test]
    fn a_database_of_another_format_is_refused_with_both_versions() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = raw_db(dir.path());
            let meta = db.cf_handle(CF_META).expect("meta");
            db.put_cf(meta, META_FORMAT, 9u32.to_be_bytes())
                .expect("put");
        }
        let error = Store::open(dir.path(), StoreConfig::default()).expect_err("refused");
        assert!(
            matches!(error, StoreError::Format { found: 9, .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("format 9"), "{error}");
    }

    #[tokio::test]
    async fn votes_are_read_from_outside_while_the_store_is_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), StoreConfig::default()).expect("open");
        let (mut federal, _) = store.group(0).expect("group 0");
        let (mut state, _) = store.group(5).expect("group 5");
        federal
            .save_vote(&Vote::new_committed(4, 2))
            .await
            .expect("save");
        state.save_vote(&Vote::new(7, 3)).await.expect("save");
        // Not flushed, and the node still holds the database.
        let mut votes = read_votes(dir.path()).expect("read");
        votes.sort_by_key(|vote| vote.group);
        assert_eq!(
            votes,
            vec![
                PersistedVote {
                    group: 0,
                    term: 4,
                    voted_for: Some(2),
                    committed: true
                },
                PersistedVote {
                    group: 5,
                    term: 7,
                    voted_for: Some(3),
                    committed: false
                },
            ]
        );
        let missing = read_votes(&dir.path().join("none")).expect_err("no database");
        assert!(matches!(missing, StoreError::Open { .. }), "{missing:?}");
    }

    #[tokio::test]
    async fn logs_are_read_from_outside_with_their_terms_digests_and_commit() {
        use openraft::storage::RaftLogStorageExt;
        let entry = |term, index, payload| Entry::<TypeConfig> {
            log_id: LogId::new(openraft::CommittedLeaderId::new(term, 0), index),
            payload,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), StoreConfig::default()).expect("open");
        let (mut federal, _) = store.group(0).expect("group 0");
        let (mut state, _) = store.group(5).expect("group 5");
        federal
            .blocking_append([
                entry(1, 1, EntryPayload::Blank),
                entry(2, 2, EntryPayload::Blank),
            ])
            .await
            .expect("append");
        federal
            .save_committed(Some(LogId::new(openraft::CommittedLeaderId::new(1, 0), 1)))
            .await
            .expect("commit");
        state
            .blocking_append([entry(3, 1, EntryPayload::Blank)])
            .await
            .expect("append");
        // Not flushed, and the node still holds the database.
        let logs = read_logs(dir.path()).expect("read");
        assert_eq!(logs.len(), 2, "{logs:?}");
        let (federal_log, state_log) = (&logs[0], &logs[1]);
        assert_eq!((federal_log.group, federal_log.committed), (0, Some(1)));
        assert_eq!((state_log.group, state_log.committed), (5, None));
        let terms = |log: &PersistedLog| {
            log.entries
                .iter()
                .map(|entry| (entry.index, entry.term))
                .collect::<Vec<_>>()
        };
        assert_eq!(terms(federal_log), vec![(1, 1), (2, 2)]);
        assert_eq!(terms(state_log), vec![(1, 3)]);
        // The same payload at another term or index is another entry.
        assert_ne!(federal_log.entries[0].digest, state_log.entries[0].digest);
        assert_ne!(federal_log.entries[0].digest, federal_log.entries[1].digest);
        let missing = read_logs(&dir.path().join("none")).expect_err("no database");
        assert!(matches!(missing, StoreError::Open { .. }), "{missing:?}");
    }

    #[tokio::test]
    async fn the_close_watch_sees_the_last_clone_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), StoreConfig::default()).expect("open");
        let (log, machine) = store.group(3).expect("group");
        let watch = store.watch_close();
        drop(store);
        drop(log);
        assert!(!watch.is_closed(), "the state machine still holds it");
        drop(machine);
        assert!(watch.closed(std::time::Duration::from_secs(1)).await);
        Store::open(dir.path(), StoreConfig::default()).expect("the lock is released");
    }
}
