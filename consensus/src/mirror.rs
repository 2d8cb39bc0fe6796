//! A copy of a group's state machine on a node outside the group.
//!
//! Raft replicates every entry to every voter and learner from the leader, one stream
//! each. A thousand-member mesh in which every member was a federal learner spent most of
//! its president's time on those streams. A mirror is fed instead by any member of the
//! group (a *relay*): it asks for the committed entries after the last one it applied,
//! and applies them in order, or a snapshot when the relay's log no longer holds them.
//!
//! ```text
//!   leader ──Raft──► voters, learners (relays) ──catch_up(after)──► mirrors
//! ```
//!
//! Only committed entries leave a relay (up to what it has applied), and committed
//! entries are the same on every member, so a mirror may switch relays at any point: it
//! takes entries only when they continue its log exactly (index and term of the one
//! before them). A mirror is never more than a stale copy: it shows nothing uncommitted,
//! and writes still go to the group's leader.

use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use openraft::storage::{RaftLogReader, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{Entry, LogId, SnapshotMeta, StoredMembership};
use serde::{Deserialize, Serialize};

use crate::groups::Group;
use crate::machine::Machine;
use crate::store::{StateMachineStore, Store};
use crate::types::{GroupId, MemberNode, NodeId, TypeConfig};

/// What a relay sends a mirror that has applied up to some entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Catchup {
    /// The relay has applied nothing after it.
    UpToDate,
    /// The committed entries right after it, in order.
    Entries(Vec<Entry<TypeConfig>>),
    /// The relay's snapshot: its log no longer holds the entries right after it, or it is
    /// far behind.
    Snapshot {
        /// What the snapshot covers.
        meta: SnapshotMeta<NodeId, MemberNode>,
        /// The state machine, as the group's snapshots encode it.
        data: Vec<u8>,
    },
}

/// Bounds of one catch-up answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatchupLimits {
    /// Most entries in one answer; a mirror further behind than this gets the snapshot
    /// (when the relay has one past the mirror).
    pub max_entries: usize,
    /// Most bytes of entries in one answer (always at least one entry); a snapshot
    /// larger than this is refused with [`CatchupError::TooLarge`].
    pub max_bytes: usize,
}

/// Why a relay cannot answer a catch-up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatchupError {
    /// Reading the log or the snapshot failed.
    #[error("reading the log failed: {0}")]
    Storage(#[from] openraft::StorageError<NodeId>),
    /// The entries the mirror needs are gone from the log and no snapshot covers them.
    #[error("the log no longer holds the entries after index {after} and no snapshot covers them")]
    Missing {
        /// The mirror's last applied index.
        after: u64,
    },
    /// The snapshot the mirror needs is larger than an answer may be.
    #[error("the snapshot is {bytes} bytes, more than the {limit} an answer may carry")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
}

impl Group {
    /// What a mirror that has applied up to `after` (`None`: nothing) is missing: the
    /// committed entries after it (within `limits`), or this member's snapshot when its
    /// log no longer continues from `after` or the mirror is more than
    /// `limits.max_entries` behind.
    pub async fn catch_up(
        &self,
        after: Option<LogId<NodeId>>,
        limits: CatchupLimits,
    ) -> Result<Catchup, CatchupError> {
        let (applied, purged) = {
            let metrics = self.raft().metrics();
            let metrics = metrics.borrow();
            (metrics.last_applied, metrics.purged)
        };
        let Some(applied) = applied else {
            return Ok(Catchup::UpToDate);
        };
        let next = after.map_or(0, |id| id.index.saturating_add(1));
        if next > applied.index {
            return Ok(Catchup::UpToDate);
        }
        let behind = applied.index - next + 1;
        let max_entries = u64::try_from(limits.max_entries.max(1)).unwrap_or(u64::MAX);
        if behind > max_entries
            && let Some(snapshot) = self.snapshot_past(after, limits).await?
        {
            return Ok(snapshot);
        }
        let mut log = self.log();
        // The entry the mirror applied last must be in this log with the same term (or
        // be the last one purged from it), so that what follows continues it.
        let anchored = after.is_some() && after != purged;
        let from = if anchored {
            after.map_or(0, |id| id.index)
        } else {
            next
        };
        let last = applied.index.min(next.saturating_add(max_entries - 1));
        let mut entries = log.try_get_log_entries(from..=last).await?.into_iter();
        let continues = match after {
            Some(after) if anchored => entries.next().is_some_and(|entry| entry.log_id == after),
            _ => true,
        };
        let mut taken = Vec::new();
        let mut bytes = 0_usize;
        if continues {
            for entry in entries {
                if entry.log_id.index != next + taken.len() as u64 {
                    break;
                }
                let size =
                    postcard::serialize_with_flavor(&entry, postcard::ser_flavors::Size::default())
                        .unwrap_or(usize::MAX);
                bytes = bytes.saturating_add(size);
                if !taken.is_empty() && bytes > limits.max_bytes {
                    break;
                }
                taken.push(entry);
            }
        }
        if !taken.is_empty() {
            return Ok(Catchup::Entries(taken));
        }
        self.snapshot_past(after, limits)
            .await?
            .ok_or(CatchupError::Missing {
                after: after.map_or(0, |id| id.index),
            })
    }

    /// This member's snapshot, if it covers more than `after`.
    async fn snapshot_past(
        &self,
        after: Option<LogId<NodeId>>,
        limits: CatchupLimits,
    ) -> Result<Option<Catchup>, CatchupError> {
        let mut machine = self.machine();
        let Some(snapshot) = machine.get_current_snapshot().await? else {
            return Ok(None);
        };
        if snapshot.meta.last_log_id <= after {
            return Ok(None);
        }
        let data = snapshot.snapshot.into_inner();
        if data.len() > limits.max_bytes {
            return Err(CatchupError::TooLarge {
                bytes: data.len(),
                limit: limits.max_bytes,
            });
        }
        Ok(Some(Catchup::Snapshot {
            meta: snapshot.meta,
            data,
        }))
    }
}

/// Why a mirror did not take an answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MirrorError {
    /// The entries do not continue the mirror's log.
    #[error("the entries start at index {got}, and this mirror needs index {expected} next")]
    Gap {
        /// The index the mirror needs.
        expected: u64,
        /// The index the answer started at.
        got: u64,
    },
    /// Applying or storing failed (a snapshot that cannot be decoded, a disk error).
    #[error("the mirror's storage failed: {0}")]
    Storage(#[from] openraft::StorageError<NodeId>),
}

/// A node's copy of one group's state machine, kept by catching up from members of the
/// group (see the module documentation).
#[derive(Clone)]
pub struct Mirror {
    group: GroupId,
    machine: StateMachineStore,
    /// The last applied index plus one (0: nothing applied), for cheap synchronous reads.
    applied: Arc<AtomicU64>,
    /// The highest term a relay reported, and the leader it named in it.
    leader: Arc<Mutex<(u64, Option<NodeId>)>>,
    /// The applied index (plus one) of the last snapshot written to disk, and when.
    saved: Arc<Mutex<(u64, std::time::Instant)>>,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror")
            .field("group", &self.group)
            .field("applied", &self.applied_index())
            .finish_non_exhaustive()
    }
}

impl Mirror {
    /// The mirror of `group` in `store`, starting from the last snapshot it took (the
    /// entries it applied after that are fetched again).
    pub async fn open(store: &Store, group: GroupId) -> Result<Self, MirrorError> {
        let mut machine = store.mirror_machine(group)?;
        let (applied, _) = machine.applied_state().await?;
        let applied = applied.map_or(0, |id| id.index + 1);
        Ok(Self {
            group,
            machine,
            applied: Arc::new(AtomicU64::new(applied)),
            leader: Arc::new(Mutex::new((0, None))),
            saved: Arc::new(Mutex::new((applied, std::time::Instant::now()))),
        })
    }

    /// The group it mirrors.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The index of the last entry it applied.
    pub fn applied_index(&self) -> Option<u64> {
        self.applied.load(Ordering::Acquire).checked_sub(1)
    }

    /// The last entry it applied.
    pub async fn applied(&self) -> Option<LogId<NodeId>> {
        let mut machine = self.machine.clone();
        machine.applied_state().await.ok().and_then(|(id, _)| id)
    }

    /// The group's membership as of the last entry it applied.
    pub async fn membership(&self) -> StoredMembership<NodeId, MemberNode> {
        let mut machine = self.machine.clone();
        machine
            .applied_state()
            .await
            .map(|(_, membership)| membership)
            .unwrap_or_default()
    }

    /// Runs `read` on the mirrored state machine.
    pub async fn read<R>(&self, read: impl FnOnce(&Machine) -> R) -> R {
        self.machine.with(read).await
    }

    /// Takes a relay's answer; returns how many entries it applied (a snapshot counts
    /// as one). A snapshot that covers no more than the mirror has is ignored.
    pub async fn take(&self, catchup: Catchup) -> Result<usize, MirrorError> {
        let mut machine = self.machine.clone();
        let (applied, _) = machine.applied_state().await?;
        let expected = applied.map_or(0, |id| id.index + 1);
        let taken = match catchup {
            Catchup::UpToDate => 0,
            Catchup::Entries(entries) => {
                if let Some((i, entry)) = entries
                    .iter()
                    .enumerate()
                    .find(|(i, entry)| entry.log_id.index != expected + *i as u64)
                {
                    return Err(MirrorError::Gap {
                        expected: expected + i as u64,
                        got: entry.log_id.index,
                    });
                }
                let count = entries.len();
                machine.apply(entries).await?;
                count
            }
            Catchup::Snapshot { meta, data } => {
                if meta.last_log_id <= applied {
                    return Ok(0);
                }
                machine
                    .install_snapshot(&meta, Box::new(Cursor::new(data)))
                    .await?;
                1
            }
        };
        let (now, _) = machine.applied_state().await?;
        self.applied
            .store(now.map_or(0, |id| id.index + 1), Ordering::Release);
        Ok(taken)
    }

    /// Writes the mirrored state to disk as a snapshot, so that after a restart the node
    /// starts from it (a mirror keeps what it applies in memory otherwise), when `now`
    /// is set, or when `every_entries` entries or `every` time passed since the last
    /// write and something was applied since. Returns whether it wrote.
    pub async fn save_if_due(
        &self,
        now: bool,
        every_entries: u64,
        every: std::time::Duration,
    ) -> Result<bool, MirrorError> {
        let applied = self.applied.load(Ordering::Acquire);
        let due = {
            let saved = self.saved.lock().unwrap_or_else(PoisonError::into_inner);
            applied > saved.0
                && (now || applied - saved.0 >= every_entries || saved.1.elapsed() >= every)
        };
        if !due {
            return Ok(false);
        }
        let mut machine = self.machine.clone();
        let snapshot = machine.build_snapshot().await?;
        let written = snapshot.meta.last_log_id.map_or(0, |id| id.index + 1);
        *self.saved.lock().unwrap_or_else(PoisonError::into_inner) =
            (written, std::time::Instant::now());
        Ok(true)
    }

    /// Notes the leader a relay named in `term`; an older term than one already noted
    /// is ignored, and so is an answer that names no leader. A relay between two
    /// leaders names none, and so does a member taken out of the group while it was cut
    /// off, which campaigns alone in ever later terms until it learns: taken as news, its
    /// later term hid the president every other member named, for good (seen after a
    /// partition healed in the 50-node `partition-heal` scenario).
    pub fn note_leader(&self, term: u64, leader: Option<NodeId>) {
        let Some(leader) = leader else {
            return;
        };
        let mut known = self.leader.lock().unwrap_or_else(PoisonError::into_inner);
        if term >= known.0 {
            *known = (term, Some(leader));
        }
    }

    /// The leader relays named last, and its term.
    pub fn leader(&self) -> (Option<NodeId>, u64) {
        let known = self.leader.lock().unwrap_or_else(PoisonError::into_inner);
        (known.1, known.0)
    }
}
