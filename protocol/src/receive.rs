//! The receive pipeline: one function from bytes to a typed verdict.
//!
//! ```text
//!  bytes ─► size ─► version ─► structure ─► mesh ─► signature ─► replay ─► decrypt ─► Delivery
//!            │        │           │          │         │            │          │
//!            └────────┴───────────┴──────────┴─────────┴────────────┴──────────┴─► Rejection
//! ```
//!
//! Cheap checks run first so that hostile traffic is turned away before it costs a
//! signature verification, and nothing is decrypted before the sender is proven. The
//! pipeline is pure: time comes in as `now_ms`; its only state is the bounded replay
//! guard it owns.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use ed25519_dalek::VerifyingKey;

use crate::codec::{self, DecodeError, Limits, RECIPIENT_BYTES, WireAudience};
use crate::envelope::{self, GroupKey, Header};
use crate::identity::{Identity, IdentityError, PublicIdentity};
use crate::ids::{MeshId, MessageId, NodeKey};
use crate::message::{MessageKind, Payload};

/// A member's signing key, parsed once when the member is admitted (parsing an ed25519
/// key costs a point decompression; the receive path should not pay it per message).
#[derive(Debug, Clone, Copy)]
pub struct MemberKey(VerifyingKey);

impl MemberKey {
    /// Parses a node key; fails if it is not a valid ed25519 point.
    pub fn new(node: NodeKey) -> Result<Self, IdentityError> {
        VerifyingKey::from_bytes(&node.0)
            .map(Self)
            .map_err(|_| IdentityError::BadNodeKey)
    }
}

/// What the receiver needs to know about the mesh: its members' keys and the group keys.
/// `node/` keeps one built from the Registry.
pub trait Directory {
    /// The signing key of a current member, or `None` for a non-member.
    fn member_key(&self, node: &NodeKey) -> Option<&MemberKey>;
    /// The group key of `epoch`, if this node holds it.
    fn group_key(&self, epoch: u64) -> Option<&GroupKey>;
}

/// A simple [`Directory`]: members and the most recent group keys.
#[derive(Debug, Default)]
pub struct Roster {
    members: HashMap<NodeKey, (MemberKey, PublicIdentity)>,
    group_keys: BTreeMap<u64, GroupKey>,
}

/// How many group-key epochs a [`Roster`] keeps, so that messages sealed just before a
/// rotation can still be opened.
pub const GROUP_KEY_EPOCHS_KEPT: usize = 4;

impl Roster {
    /// An empty roster.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a member after checking its encryption-key binding.
    pub fn insert(&mut self, member: PublicIdentity) -> Result<(), IdentityError> {
        member.verify()?;
        let key = MemberKey::new(member.node)?;
        self.members.insert(member.node, (key, member));
        Ok(())
    }

    /// Removes a member.
    pub fn remove(&mut self, node: &NodeKey) -> Option<PublicIdentity> {
        self.members.remove(node).map(|(_, public)| public)
    }

    /// A member's public identity.
    pub fn get(&self, node: &NodeKey) -> Option<&PublicIdentity> {
        self.members.get(node).map(|(_, public)| public)
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Adds a group key, keeping only the newest [`GROUP_KEY_EPOCHS_KEPT`] epochs.
    pub fn insert_group_key(&mut self, key: GroupKey) {
        self.group_keys.insert(key.epoch(), key);
        while self.group_keys.len() > GROUP_KEY_EPOCHS_KEPT {
            self.group_keys.pop_first();
        }
    }
}

impl Directory for Roster {
    fn member_key(&self, node: &NodeKey) -> Option<&MemberKey> {
        self.members.get(node).map(|(key, _)| key)
    }

    fn group_key(&self, epoch: u64) -> Option<&GroupKey> {
        self.group_keys.get(&epoch)
    }
}

/// Bounds and windows of the receive pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiverConfig {
    /// Size limits.
    pub limits: Limits,
    /// How far in the future a `created_ms` may be (sender clock ahead of ours).
    pub max_clock_skew_ms: u64,
    /// Longest lifetime (`expires_ms - created_ms`) accepted; bounds how long an id must
    /// be remembered.
    pub max_lifetime_ms: u64,
    /// How many message ids the replay cache holds.
    pub max_seen_ids: usize,
    /// How many senders' sequence windows are tracked.
    pub max_tracked_senders: usize,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            max_clock_skew_ms: 30_000,
            max_lifetime_ms: 10 * 60_000,
            max_seen_ids: 65_536,
            max_tracked_senders: 16_384,
        }
    }
}

/// A message this node can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The verified header.
    pub header: Header,
    /// The decrypted payload; its kind equals `header.kind`.
    pub payload: Payload,
}

/// The verdict on a valid envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Addressed to this node (or to the group) and opened.
    Opened(Opened),
    /// Valid, signed by a member, fresh, but addressed to others: forward it, do not read it.
    Relay(Header),
}

/// Whether gossip should penalise the peer that forwarded a rejected message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Invalid on its face: any honest forwarder would have dropped it. Penalise.
    Reject,
    /// Not acceptable here and now (old, duplicate, unknown yet), but an honest
    /// forwarder may not have known. Drop without penalty.
    Ignore,
}

/// Why an envelope was not accepted. One variant per reason, each with a metric label
/// ([`Rejection::reason`]) and a gossip [`Disposition`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// Larger than `max_message_bytes` (checked before anything is read).
    #[error("oversized: {len} bytes, limit {max}")]
    Oversized {
        /// Input length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Unknown protocol version.
    #[error("unsupported version {found}")]
    UnsupportedVersion {
        /// The version byte.
        found: u8,
    },
    /// Input ends inside the envelope.
    #[error("truncated: {len} bytes")]
    Truncated {
        /// Input length.
        len: usize,
    },
    /// Not a valid encoding.
    #[error("malformed: {reason}")]
    Malformed {
        /// What the decoder found.
        reason: &'static str,
    },
    /// Extra bytes between the body and the signature.
    #[error("{extra} trailing bytes")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// More recipients than `max_recipients`.
    #[error("{count} recipients, limit {max}")]
    TooManyRecipients {
        /// How many.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Audience and wrapped keys disagree.
    #[error("key list mismatch: {reason}")]
    KeyListMismatch {
        /// What disagrees.
        reason: &'static str,
    },
    /// Topic too long.
    #[error("topic of {len} bytes too long")]
    TopicTooLong {
        /// Its length.
        len: usize,
    },
    /// Belongs to another mesh.
    #[error("mesh {found} is not this mesh ({expected})")]
    WrongMesh {
        /// This node's mesh.
        expected: MeshId,
        /// The envelope's mesh.
        found: MeshId,
    },
    /// The sender is not a member.
    #[error("sender {sender} is not a member")]
    UnknownSender {
        /// The claimed sender.
        sender: NodeKey,
    },
    /// The signature does not verify under the sender's key.
    #[error("bad signature from {sender}")]
    BadSignature {
        /// The claimed sender.
        sender: NodeKey,
    },
    /// Past its expiry time.
    #[error("expired at {expires_ms}, now {now_ms}")]
    Expired {
        /// Its expiry.
        expires_ms: u64,
        /// Our clock.
        now_ms: u64,
    },
    /// Created further in the future than the allowed clock skew.
    #[error("created at {created_ms}, ahead of our clock {now_ms} by more than the allowed skew")]
    NotYetValid {
        /// Its creation time.
        created_ms: u64,
        /// Our clock.
        now_ms: u64,
    },
    /// Lifetime longer than `max_lifetime_ms` (or expiring before it was created).
    #[error("lifetime of {lifetime_ms} ms is not within (0, {max} ms]")]
    BadLifetime {
        /// `expires_ms - created_ms`, saturating at 0.
        lifetime_ms: u64,
        /// The limit.
        max: u64,
    },
    /// This message id was seen before.
    #[error("message {id} already received")]
    Replayed {
        /// The id.
        id: MessageId,
    },
    /// The sender already used this sequence number (with another id).
    #[error("sequence {sequence} already used by the sender")]
    DuplicateSequence {
        /// The sequence number.
        sequence: u64,
    },
    /// Too far behind the sender's newest sequence to tell whether it is a replay.
    #[error("sequence {sequence} is too far behind the sender's newest {newest}")]
    StaleSequence {
        /// The sequence number.
        sequence: u64,
        /// The sender's highest sequence seen.
        newest: u64,
    },
    /// Sealed for a group-key epoch this node does not hold.
    #[error("group key epoch {epoch} is not known here")]
    UnknownGroupEpoch {
        /// The epoch.
        epoch: u64,
    },
    /// Our wrapped content key does not open with our key.
    #[error("the content key wrapped for this node does not open")]
    KeyUnwrapFailed,
    /// The ciphertext does not decrypt under the content key.
    #[error("the payload does not decrypt")]
    DecryptFailed,
    /// The decrypted payload is not a valid payload encoding.
    #[error("the decrypted payload is malformed")]
    PayloadMalformed,
    /// The payload's kind differs from the header's.
    #[error("header says {header:?}, payload is {payload:?}")]
    KindMismatch {
        /// The header's kind.
        header: MessageKind,
        /// The payload's kind.
        payload: MessageKind,
    },
}

impl Rejection {
    /// A stable snake_case label for metrics (one per variant).
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Oversized { .. } => "oversized",
            Rejection::UnsupportedVersion { .. } => "unsupported_version",
            Rejection::Truncated { .. } => "truncated",
            Rejection::Malformed { .. } => "malformed",
            Rejection::TrailingBytes { .. } => "trailing_bytes",
            Rejection::TooManyRecipients { .. } => "too_many_recipients",
            Rejection::KeyListMismatch { .. } => "key_list_mismatch",
            Rejection::TopicTooLong { .. } => "topic_too_long",
            Rejection::WrongMesh { .. } => "wrong_mesh",
            Rejection::UnknownSender { .. } => "unknown_sender",
            Rejection::BadSignature { .. } => "bad_signature",
            Rejection::Expired { .. } => "expired",
            Rejection::NotYetValid { .. } => "not_yet_valid",
            Rejection::BadLifetime { .. } => "bad_lifetime",
            Rejection::Replayed { .. } => "replayed",
            Rejection::DuplicateSequence { .. } => "duplicate_sequence",
            Rejection::StaleSequence { .. } => "stale_sequence",
            Rejection::UnknownGroupEpoch { .. } => "unknown_group_epoch",
            Rejection::KeyUnwrapFailed => "key_unwrap_failed",
            Rejection::DecryptFailed => "decrypt_failed",
            Rejection::PayloadMalformed => "payload_malformed",
            Rejection::KindMismatch { .. } => "kind_mismatch",
        }
    }

    /// Whether gossip should penalise the forwarder.
    ///
    /// Structural faults and bad signatures are `Reject`: every node checks them before
    /// forwarding. Freshness, membership and epochs can differ between honest nodes
    /// (clock skew, a Registry a moment behind), and decryption faults are visible only
    /// to recipients after others forwarded in good faith: those are `Ignore`.
    pub fn disposition(&self) -> Disposition {
        match self {
            Rejection::Oversized { .. }
            | Rejection::Truncated { .. }
            | Rejection::Malformed { .. }
            | Rejection::TrailingBytes { .. }
            | Rejection::TooManyRecipients { .. }
            | Rejection::KeyListMismatch { .. }
            | Rejection::TopicTooLong { .. }
            | Rejection::WrongMesh { .. }
            | Rejection::BadSignature { .. }
            | Rejection::BadLifetime { .. } => Disposition::Reject,
            Rejection::UnsupportedVersion { .. }
            | Rejection::UnknownSender { .. }
            | Rejection::Expired { .. }
            | Rejection::NotYetValid { .. }
            | Rejection::Replayed { .. }
            | Rejection::DuplicateSequence { .. }
            | Rejection::StaleSequence { .. }
            | Rejection::UnknownGroupEpoch { .. }
            | Rejection::KeyUnwrapFailed
            | Rejection::DecryptFailed
            | Rejection::PayloadMalformed
            | Rejection::KindMismatch { .. } => Disposition::Ignore,
        }
    }
}

impl From<DecodeError> for Rejection {
    fn from(error: DecodeError) -> Self {
        match error {
            DecodeError::Oversized { len, max } => Rejection::Oversized { len, max },
            DecodeError::UnsupportedVersion { found } => Rejection::UnsupportedVersion { found },
            DecodeError::Truncated { len } => Rejection::Truncated { len },
            DecodeError::Malformed { reason } => Rejection::Malformed { reason },
            DecodeError::TrailingBytes { extra } => Rejection::TrailingBytes { extra },
            DecodeError::TooManyRecipients { count, max } => {
                Rejection::TooManyRecipients { count, max }
            }
            DecodeError::KeyListMismatch { reason } => Rejection::KeyListMismatch { reason },
            DecodeError::TopicTooLong { len } => Rejection::TopicTooLong { len },
        }
    }
}

/// Size of the per-sender window of recently seen sequence numbers. Messages from one
/// sender may arrive out of order by up to this many sequence numbers (gossip reorders).
pub const SEQUENCE_WINDOW: u64 = 1024;
const WINDOW_WORDS: usize = (SEQUENCE_WINDOW / 64) as usize;

/// Which of a sender's last [`SEQUENCE_WINDOW`] sequence numbers were seen.
#[derive(Debug, Clone)]
struct SequenceWindow {
    newest: u64,
    /// Bit `i` set: `newest - i` was seen.
    seen: [u64; WINDOW_WORDS],
    touched_ms: u64,
}

impl SequenceWindow {
    fn new(sequence: u64, now_ms: u64) -> Self {
        let mut seen = [0u64; WINDOW_WORDS];
        seen[0] = 1;
        Self {
            newest: sequence,
            seen,
            touched_ms: now_ms,
        }
    }

    fn check(&self, sequence: u64) -> Result<(), Rejection> {
        if sequence > self.newest {
            return Ok(());
        }
        let back = self.newest - sequence;
        if back >= SEQUENCE_WINDOW {
            return Err(Rejection::StaleSequence {
                sequence,
                newest: self.newest,
            });
        }
        let (word, bit) = ((back / 64) as usize, back % 64);
        if self.seen[word] & (1 << bit) != 0 {
            return Err(Rejection::DuplicateSequence { sequence });
        }
        Ok(())
    }

    /// Marks `sequence` seen; call only after `check` passed.
    fn record(&mut self, sequence: u64, now_ms: u64) {
        self.touched_ms = now_ms;
        if sequence > self.newest {
            self.shift(sequence - self.newest);
            self.newest = sequence;
        }
        let back = self.newest - sequence;
        let (word, bit) = ((back / 64) as usize, back % 64);
        self.seen[word] |= 1 << bit;
    }

    /// Moves every bit `by` places towards older positions.
    fn shift(&mut self, by: u64) {
        if by >= SEQUENCE_WINDOW {
            self.seen = [0; WINDOW_WORDS];
            return;
        }
        let words = (by / 64) as usize;
        let bits = (by % 64) as u32;
        for index in (0..WINDOW_WORDS).rev() {
            let from = index.checked_sub(words);
            let high = from.map_or(0, |from| self.seen[from]);
            let low = from
                .and_then(|from| from.checked_sub(1))
                .map_or(0, |from| self.seen[from]);
            self.seen[index] = if bits == 0 {
                high
            } else {
                (high << bits) | (low >> (64 - bits))
            };
        }
    }
}

/// Remembers message ids and per-sender sequence windows, both bounded.
///
/// A replayed envelope is caught by its id while the id is cached, and by its sender's
/// sequence window after the id has been evicted; beyond the window it is refused as
/// stale. Bound: if the sender's window is evicted too (more than `max_tracked_senders`
/// senders more recent than it) and its id is gone, a replay within the message's
/// lifetime is not detected; size both caches above the mesh's membership and traffic
/// per lifetime.
#[derive(Debug)]
struct ReplayGuard {
    ids: HashSet<MessageId>,
    /// Insertion order, for FIFO eviction; each with its expiry.
    order: VecDeque<(MessageId, u64)>,
    windows: HashMap<NodeKey, SequenceWindow>,
}

impl ReplayGuard {
    fn new() -> Self {
        Self {
            ids: HashSet::new(),
            order: VecDeque::new(),
            windows: HashMap::new(),
        }
    }

    fn check(
        &self,
        header: &codec::WireHeader<'_>,
        now_ms: u64,
        config: &ReceiverConfig,
    ) -> Result<(), Rejection> {
        if header.expires_ms <= now_ms {
            return Err(Rejection::Expired {
                expires_ms: header.expires_ms,
                now_ms,
            });
        }
        if header.created_ms > now_ms.saturating_add(config.max_clock_skew_ms) {
            return Err(Rejection::NotYetValid {
                created_ms: header.created_ms,
                now_ms,
            });
        }
        let lifetime_ms = header.expires_ms.saturating_sub(header.created_ms);
        if lifetime_ms == 0 || lifetime_ms > config.max_lifetime_ms {
            return Err(Rejection::BadLifetime {
                lifetime_ms,
                max: config.max_lifetime_ms,
            });
        }
        if self.ids.contains(&header.id) {
            return Err(Rejection::Replayed { id: header.id });
        }
        if let Some(window) = self.windows.get(&header.sender) {
            window.check(header.sequence)?;
        }
        Ok(())
    }

    fn record(&mut self, header: &codec::WireHeader<'_>, now_ms: u64, config: &ReceiverConfig) {
        while let Some(&(id, expires_ms)) = self.order.front() {
            if expires_ms > now_ms && self.order.len() < config.max_seen_ids.max(1) {
                break;
            }
            self.order.pop_front();
            self.ids.remove(&id);
        }
        self.ids.insert(header.id);
        self.order.push_back((header.id, header.expires_ms));

        match self.windows.entry(header.sender) {
            Entry::Occupied(mut entry) => entry.get_mut().record(header.sequence, now_ms),
            Entry::Vacant(entry) => {
                entry.insert(SequenceWindow::new(header.sequence, now_ms));
            }
        }
        if self.windows.len() > config.max_tracked_senders.max(1) {
            // Evict the least recently heard sender. A linear scan, but only senders that
            // passed the signature check (members) get here, so it is bounded by the
            // membership and rare once the map holds the members.
            let oldest = self
                .windows
                .iter()
                .filter(|(node, _)| **node != header.sender)
                .min_by_key(|(_, window)| window.touched_ms)
                .map(|(node, _)| *node);
            if let Some(node) = oldest {
                self.windows.remove(&node);
            }
        }
    }
}

/// The receive pipeline of one node in one mesh.
#[derive(Debug)]
pub struct Receiver {
    mesh: MeshId,
    config: ReceiverConfig,
    replay: ReplayGuard,
    sessions: envelope::ReceiverSessions,
}

impl Receiver {
    /// A receiver for envelopes of `mesh`.
    pub fn new(mesh: MeshId, config: ReceiverConfig) -> Self {
        let config = ReceiverConfig {
            limits: config.limits.clamped(),
            ..config
        };
        Self {
            mesh,
            config,
            replay: ReplayGuard::new(),
            sessions: envelope::ReceiverSessions::default(),
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &ReceiverConfig {
        &self.config
    }

    /// How many senders' HPKE sessions are cached (each saves an X25519 operation per
    /// message).
    pub fn cached_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Runs the pipeline on `bytes` received at `now_ms` by `identity`, in this order:
    /// size → version → structure → mesh → signature → replay → decrypt.
    ///
    /// A valid envelope is remembered by the replay guard whether or not it is addressed
    /// to this node, so a second copy is a [`Rejection::Replayed`].
    pub fn receive(
        &mut self,
        now_ms: u64,
        bytes: &[u8],
        identity: &Identity,
        directory: &impl Directory,
    ) -> Result<Delivery, Rejection> {
        let raw = codec::decode(bytes, self.config.limits)?;
        let header = &raw.header;
        if header.mesh != self.mesh {
            return Err(Rejection::WrongMesh {
                expected: self.mesh,
                found: header.mesh,
            });
        }
        let sender = header.sender;
        let Some(sender_key) = directory.member_key(&sender) else {
            return Err(Rejection::UnknownSender { sender });
        };
        if !envelope::verify_signature(&raw, &sender_key.0) {
            return Err(Rejection::BadSignature { sender });
        }
        self.replay.check(header, now_ms, &self.config)?;
        self.replay.record(header, now_ms, &self.config);

        let content_key = match header.audience {
            WireAudience::Members(recipients) => {
                let me = identity.node_key();
                let Some(index) = recipients
                    .chunks_exact(RECIPIENT_BYTES)
                    .position(|recipient| recipient == me.0)
                else {
                    return Ok(Delivery::Relay(Header::from_raw(&raw)));
                };
                self.sessions
                    .unwrap_member_key(&raw, index, &me, identity.encryption_secret())
                    .ok_or(Rejection::KeyUnwrapFailed)?
            }
            WireAudience::Group(epoch) => {
                let group = directory
                    .group_key(epoch)
                    .ok_or(Rejection::UnknownGroupEpoch { epoch })?;
                envelope::unwrap_group_key(&raw, group).ok_or(Rejection::KeyUnwrapFailed)?
            }
        };
        let plaintext =
            envelope::decrypt_content(&raw, &content_key).ok_or(Rejection::DecryptFailed)?;
        let payload: Payload =
            postcard::from_bytes(&plaintext).map_err(|_| Rejection::PayloadMalformed)?;
        if payload.kind() != header.kind {
            return Err(Rejection::KindMismatch {
                header: header.kind,
                payload: payload.kind(),
            });
        }
        Ok(Delivery::Opened(Opened {
            header: Header::from_raw(&raw),
            payload,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_window_accepts_reordering_and_refuses_duplicates_and_stale() {
        let mut window = SequenceWindow::new(1000, 0);
        assert_eq!(
            window.check(1000),
            Err(Rejection::DuplicateSequence { sequence: 1000 })
        );
        for sequence in [1005, 1001, 1003, 999, 1002] {
            window.check(sequence).expect("unseen");
            window.record(sequence, 0);
            assert_eq!(
                window.check(sequence),
                Err(Rejection::DuplicateSequence { sequence })
            );
        }
        window.check(1004).expect("a gap stays open");
        // Move far ahead: old numbers fall out of the window.
        window.record(1005 + SEQUENCE_WINDOW - 1, 0);
        assert_eq!(
            window.check(1005),
            Err(Rejection::DuplicateSequence { sequence: 1005 })
        );
        assert!(matches!(
            window.check(1004),
            Err(Rejection::StaleSequence { .. })
        ));
        window.record(5000 + 10 * SEQUENCE_WINDOW, 0);
        assert!(matches!(
            window.check(1005),
            Err(Rejection::StaleSequence { .. })
        ));
    }

    #[test]
    fn sequence_window_shift_matches_a_naive_set() {
        // Compare against a set of seen numbers over a pseudo-random walk.
        let mut window = SequenceWindow::new(10_000, 0);
        let mut seen = std::collections::BTreeSet::from([10_000u64]);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..5_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let newest = window.newest;
            let candidate = match x % 4 {
                0 => newest + 1 + x % 200,
                1 => newest.saturating_sub(x % (SEQUENCE_WINDOW + 50)),
                2 => newest + x % 3000,
                _ => newest.saturating_sub(x % 70),
            };
            let expected = if candidate + SEQUENCE_WINDOW <= newest {
                "stale"
            } else if seen.contains(&candidate) {
                "duplicate"
            } else {
                "ok"
            };
            let got = match window.check(candidate) {
                Ok(()) => "ok",
                Err(Rejection::DuplicateSequence { .. }) => "duplicate",
                Err(Rejection::StaleSequence { .. }) => "stale",
                Err(other) => panic!("unexpected {other:?}"),
            };
            assert_eq!(got, expected, "candidate {candidate} newest {newest}");
            if got == "ok" {
                window.record(candidate, 0);
                seen.insert(candidate);
            }
        }
    }

    #[test]
    fn every_rejection_reason_is_distinct() {
        let all = [
            Rejection::Oversized { len: 0, max: 0 },
            Rejection::UnsupportedVersion { found: 0 },
            Rejection::Truncated { len: 0 },
            Rejection::Malformed { reason: "" },
            Rejection::TrailingBytes { extra: 0 },
            Rejection::TooManyRecipients { count: 0, max: 0 },
            Rejection::KeyListMismatch { reason: "" },
            Rejection::TopicTooLong { len: 0 },
            Rejection::WrongMesh {
                expected: MeshId([0; 16]),
                found: MeshId([1; 16]),
            },
            Rejection::UnknownSender {
                sender: NodeKey([0; 32]),
            },
            Rejection::BadSignature {
                sender: NodeKey([0; 32]),
            },
            Rejection::Expired {
                expires_ms: 0,
                now_ms: 0,
            },
            Rejection::NotYetValid {
                created_ms: 0,
                now_ms: 0,
            },
            Rejection::BadLifetime {
                lifetime_ms: 0,
                max: 0,
            },
            Rejection::Replayed {
                id: MessageId([0; 16]),
            },
            Rejection::DuplicateSequence { sequence: 0 },
            Rejection::StaleSequence {
                sequence: 0,
                newest: 0,
            },
            Rejection::UnknownGroupEpoch { epoch: 0 },
            Rejection::KeyUnwrapFailed,
            Rejection::DecryptFailed,
            Rejection::PayloadMalformed,
            Rejection::KindMismatch {
                header: MessageKind::Command,
                payload: MessageKind::Report,
            },
        ];
        let reasons: HashSet<_> = all.iter().map(Rejection::reason).collect();
        assert_eq!(reasons.len(), all.len());
    }
}
