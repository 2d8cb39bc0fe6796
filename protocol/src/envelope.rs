//! Sealing: a payload encrypted once under a fresh content key, the key wrapped for each
//! recipient (HPKE, RFC 9180) or for the mesh group key, and the whole signed.
//!
//! ```text
//!  payload ──postcard──► plaintext ──ChaCha20-Poly1305(content key, aad = header)──► ciphertext
//!  content key ──ChaCha20-Poly1305(HPKE export(session, message id), aad = header)──► per recipient
//!             └─XChaCha20-Poly1305(group key of epoch E, aad = header)──────────────► group
//!  "aamas/1 envelope" ‖ version ‖ header ‖ body ──ed25519──► signature
//! ```
//!
//! # HPKE sessions
//! Each sender keeps one HPKE base-mode context per recipient (a *session*: suite
//! DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305, `info` naming both
//! parties). The key that wraps a message's content key is the context's exported secret
//! (RFC 9180 §5.3) for the exporter context `"aamas/1 content-key wrap" ‖ message id`:
//! unique per message, so its AEAD nonce can be zero, and independent of delivery order,
//! so gossip may reorder or drop messages freely. Every wrapped key carries the session's
//! encapsulated key `enc`; a receiver decapsulates once per session and caches the
//! context, so the X25519 operation is paid per session, not per message. Sessions rotate
//! after [`SESSION_LIFETIME_MS`] or [`SESSION_MAX_MESSAGES`], bounding how much traffic
//! one ephemeral key protects.
//!
//! Binding the header as associated data of every seal means that a relay cannot move a
//! ciphertext or a wrapped key into another envelope, even one it could sign itself.

use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload as AeadPayload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, XChaCha20Poly1305, XNonce};
use ed25519_dalek::Signer as _;
use hpke::aead::ChaCha20Poly1305 as HpkeChaCha;
use hpke::kdf::HkdfSha256;
use hpke::{Deserializable as _, OpModeR, OpModeS, Serializable as _};
use zeroize::Zeroizing;

use crate::codec::{
    self, GROUP_WRAP_BYTES, HPKE_WRAP_BYTES, Limits, MAX_TOPIC_BYTES, RawEnvelope, WireAudience,
    WireBody, WireHeader,
};
use crate::identity::{Identity, KemPrivateKey, KemPublicKey, KemSuite, PublicIdentity};
use crate::ids::{MeshId, MessageId, NodeKey, RandomError, fill_random};
use crate::message::{MessageKind, Payload};

/// HPKE `info` prefix of a session; the sender's and recipient's node keys follow.
const SESSION_INFO: &[u8] = b"aamas/1 hpke session";
/// HPKE exporter-context prefix for a message's wrap key; the message id follows.
const WRAP_EXPORT_CONTEXT: &[u8] = b"aamas/1 content-key wrap";
/// A sender starts a new HPKE session with a recipient after this long.
pub const SESSION_LIFETIME_MS: u64 = 10 * 60_000;
/// ... or after this many messages in one session.
pub const SESSION_MAX_MESSAGES: u64 = 1 << 20;
/// How many HPKE sessions a sealer or a receiver keeps (oldest evicted first).
pub const MAX_SESSIONS: usize = 4096;

type SenderContext = hpke::aead::AeadCtxS<HpkeChaCha, HkdfSha256, KemSuite>;
type ReceiverContext = hpke::aead::AeadCtxR<HpkeChaCha, HkdfSha256, KemSuite>;

fn session_info(sender: &NodeKey, recipient: &NodeKey) -> [u8; 20 + 64] {
    let mut info = [0u8; 20 + 64];
    info[..20].copy_from_slice(SESSION_INFO);
    info[20..52].copy_from_slice(&sender.0);
    info[52..].copy_from_slice(&recipient.0);
    info
}

/// The wrap key of message `id` in a session: an HPKE exported secret.
fn wrap_key(
    export: impl FnOnce(&[u8], &mut [u8]) -> Result<(), hpke::HpkeError>,
    id: &MessageId,
) -> Option<Zeroizing<[u8; 32]>> {
    let mut context = [0u8; 24 + 16];
    context[..24].copy_from_slice(WRAP_EXPORT_CONTEXT);
    context[24..].copy_from_slice(&id.0);
    let mut key = Zeroizing::new([0u8; 32]);
    export(&context, &mut key[..]).ok()?;
    Some(key)
}

struct SenderSession {
    encryption: crate::identity::EncryptionKey,
    encapsulated: [u8; 32],
    context: SenderContext,
    started_ms: u64,
    messages: u64,
}

/// A sender's HPKE sessions, one per (sender, recipient).
#[derive(Default)]
struct SenderSessions {
    sessions: std::collections::HashMap<(NodeKey, NodeKey), SenderSession>,
    order: std::collections::VecDeque<(NodeKey, NodeKey)>,
}

impl std::fmt::Debug for SenderSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderSessions")
            .field("sessions", &self.sessions.len())
            .finish()
    }
}

impl SenderSessions {
    /// The session with `member`, started or rotated as needed.
    fn session(
        &mut self,
        sender: NodeKey,
        member: &PublicIdentity,
        now_ms: u64,
    ) -> Result<&mut SenderSession, SealError> {
        let slot = (sender, member.node);
        let fresh = self.sessions.get(&slot).is_some_and(|session| {
            session.encryption == member.encryption
                && now_ms.saturating_sub(session.started_ms) < SESSION_LIFETIME_MS
                && session.messages < SESSION_MAX_MESSAGES
        });
        if !fresh {
            let public = KemPublicKey::from_bytes(&member.encryption.0)
                .map_err(|_| SealError::Wrap { node: member.node })?;
            let (encapsulated, context) = hpke::setup_sender::<HpkeChaCha, HkdfSha256, KemSuite>(
                &OpModeS::Base,
                &public,
                &session_info(&sender, &member.node),
            )
            .map_err(|_| SealError::Wrap { node: member.node })?;
            let mut enc = [0u8; 32];
            enc.copy_from_slice(&encapsulated.to_bytes());
            if self
                .sessions
                .insert(
                    slot,
                    SenderSession {
                        encryption: member.encryption,
                        encapsulated: enc,
                        context,
                        started_ms: now_ms,
                        messages: 0,
                    },
                )
                .is_none()
            {
                self.order.push_back(slot);
            }
            while self.sessions.len() > MAX_SESSIONS {
                match self.order.pop_front() {
                    Some(old) if old != slot => {
                        self.sessions.remove(&old);
                    }
                    Some(old) => self.order.push_back(old),
                    None => break,
                }
            }
        }
        self.sessions
            .get_mut(&slot)
            .ok_or(SealError::Wrap { node: member.node })
    }
}

/// A receiver's cached HPKE contexts, keyed by sender and encapsulated key.
#[derive(Default)]
pub(crate) struct ReceiverSessions {
    contexts: std::collections::HashMap<(NodeKey, [u8; 32]), ReceiverContext>,
    order: std::collections::VecDeque<(NodeKey, [u8; 32])>,
}

impl std::fmt::Debug for ReceiverSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiverSessions")
            .field("sessions", &self.contexts.len())
            .finish()
    }
}
/// Prefix of the signed bytes, so that an envelope signature can never be mistaken for a
/// signature of another protocol that uses the same ed25519 key (libp2p signs its own
/// records with the node's key too).
pub(crate) const SIGNATURE_CONTEXT: &[u8] = b"aamas/1 envelope";

/// The clear-text header of a verified envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The mesh it belongs to.
    pub mesh: MeshId,
    /// Its unique id.
    pub id: MessageId,
    /// Who signed it.
    pub sender: NodeKey,
    /// The sender's sequence number (increasing per sender).
    pub sequence: u64,
    /// When it was sealed, ms since the Unix epoch by the sender's clock.
    pub created_ms: u64,
    /// When it stops being valid, same clock.
    pub expires_ms: u64,
    /// Its kind.
    pub kind: MessageKind,
    /// The topic it was published on.
    pub topic: String,
    /// Who can open it.
    pub audience: Audience,
}

/// Who can open an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// These members, each with its own wrapped key.
    Members(Vec<NodeKey>),
    /// Every holder of the mesh group key of this epoch.
    Group {
        /// The group key's epoch.
        epoch: u64,
    },
}

impl Header {
    pub(crate) fn from_raw(raw: &RawEnvelope<'_>) -> Self {
        let header = &raw.header;
        Self {
            mesh: header.mesh,
            id: header.id,
            sender: header.sender,
            sequence: header.sequence,
            created_ms: header.created_ms,
            expires_ms: header.expires_ms,
            kind: header.kind,
            topic: header.topic.to_owned(),
            audience: match header.audience {
                WireAudience::Members(_) => Audience::Members(raw.recipients().collect()),
                WireAudience::Group(epoch) => Audience::Group { epoch },
            },
        }
    }
}

/// The mesh's shared broadcast key of one epoch. Rotated (new epoch) when a member leaves;
/// distributed to members by `node/`, wrapped per member.
pub struct GroupKey {
    epoch: u64,
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupKey")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl GroupKey {
    /// A fresh random key for `epoch`.
    pub fn generate(epoch: u64) -> Result<Self, RandomError> {
        let mut key = Zeroizing::new([0u8; 32]);
        fill_random(&mut key[..])?;
        Ok(Self { epoch, key })
    }

    /// A key received from the mesh.
    pub fn from_bytes(epoch: u64, key: [u8; 32]) -> Self {
        Self {
            epoch,
            key: Zeroizing::new(key),
        }
    }

    /// Its epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The secret key bytes, for wrapping it to a member.
    pub fn secret_bytes(&self) -> &[u8; 32] {
        &self.key
    }

    /// This key sealed for `member` alone (HPKE base mode to its X25519 key, bound to
    /// the mesh, the epoch and the member): [`WRAPPED_GROUP_KEY_BYTES`] bytes that only
    /// the member's secret opens. The Registry keeps one per member and epoch.
    pub fn wrap_for(&self, mesh: MeshId, member: &PublicIdentity) -> Result<Vec<u8>, SealError> {
        let refused = || SealError::Wrap { node: member.node };
        let public = KemPublicKey::from_bytes(&member.encryption.0).map_err(|_| refused())?;
        let info = group_key_info(mesh, self.epoch, &member.node);
        let (encapsulated, sealed) = hpke::single_shot_seal::<HpkeChaCha, HkdfSha256, KemSuite>(
            &OpModeS::Base,
            &public,
            &info,
            &self.key[..],
            &[],
        )
        .map_err(|_| refused())?;
        let mut wrapped = Vec::with_capacity(WRAPPED_GROUP_KEY_BYTES);
        wrapped.extend_from_slice(&encapsulated.to_bytes());
        wrapped.extend_from_slice(&sealed);
        Ok(wrapped)
    }

    /// Opens a key of `epoch` that [`GroupKey::wrap_for`] sealed for `me`; `None` when it
    /// was sealed for another member, mesh or epoch, or is malformed.
    pub fn unwrap(mesh: MeshId, epoch: u64, wrapped: &[u8], me: &Identity) -> Option<Self> {
        if wrapped.len() != WRAPPED_GROUP_KEY_BYTES {
            return None;
        }
        let (encapsulated, sealed) = wrapped.split_at(32);
        let encapsulated = <KemSuite as hpke::Kem>::EncappedKey::from_bytes(encapsulated).ok()?;
        let info = group_key_info(mesh, epoch, &me.node_key());
        let key = Zeroizing::new(
            hpke::single_shot_open::<HpkeChaCha, HkdfSha256, KemSuite>(
                &OpModeR::Base,
                me.encryption_secret(),
                &encapsulated,
                &info,
                sealed,
                &[],
            )
            .ok()?,
        );
        let key: [u8; 32] = key.as_slice().try_into().ok()?;
        Some(Self::from_bytes(epoch, key))
    }
}

/// HPKE `info` prefix of a wrapped group key; the mesh, the epoch and the member follow.
const GROUP_KEY_INFO: &[u8] = b"aamas/1 group key";
/// Size of a group key wrapped for one member: the encapsulated key, the key, its tag.
pub const WRAPPED_GROUP_KEY_BYTES: usize = 32 + 32 + 16;

fn group_key_info(mesh: MeshId, epoch: u64, member: &NodeKey) -> Vec<u8> {
    let mut info = Vec::with_capacity(GROUP_KEY_INFO.len() + 16 + 8 + 32);
    info.extend_from_slice(GROUP_KEY_INFO);
    info.extend_from_slice(&mesh.0);
    info.extend_from_slice(&epoch.to_be_bytes());
    info.extend_from_slice(&member.0);
    info
}

/// Who an envelope is sealed for.
#[derive(Debug, Clone, Copy)]
pub enum To<'a> {
    /// These members (their identities, verified when they were admitted).
    Members(&'a [PublicIdentity]),
    /// Every holder of this group key.
    Group(&'a GroupKey),
}

/// A sealed, signed, encoded envelope, ready for the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Its message id.
    pub id: MessageId,
    /// Its sequence number.
    pub sequence: u64,
    /// The encoded envelope.
    pub bytes: Vec<u8>,
}

/// Errors of sealing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// `To::Members` with an empty list.
    #[error("an envelope needs at least one recipient")]
    NoRecipients,
    /// More recipients than the limit.
    #[error("{count} recipients exceed the limit of {max}; use the group key for broadcasts")]
    TooManyRecipients {
        /// How many were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The same member twice in the recipient list.
    #[error("recipient {node} is listed twice")]
    DuplicateRecipient {
        /// The duplicate.
        node: NodeKey,
    },
    /// Topic longer than the protocol allows.
    #[error("topic of {len} bytes exceeds {MAX_TOPIC_BYTES}")]
    TopicTooLong {
        /// Its length.
        len: usize,
    },
    /// The envelope would exceed `max_message_bytes`, so peers would drop it.
    #[error("sealed envelope of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `ttl_ms` is zero or makes `expires_ms` overflow.
    #[error("time to live of {ttl_ms} ms is not usable")]
    BadTtl {
        /// The requested time to live.
        ttl_ms: u64,
    },
    /// Serialisation failed.
    #[error("encoding the envelope failed: {0}")]
    Encode(#[from] postcard::Error),
    /// A recipient's encryption key or the HPKE seal was rejected.
    #[error("wrapping the content key for {node} failed")]
    Wrap {
        /// The recipient.
        node: NodeKey,
    },
    /// The AEAD refused to seal (cannot happen for sizes within the limits).
    #[error("encrypting the payload failed")]
    Encrypt,
    /// The operating system's random number generator failed.
    #[error(transparent)]
    Random(#[from] RandomError),
}

/// Hands out per-sender sequence numbers that keep increasing across restarts without
/// being stored: the first number of a run is the run's start time in ms shifted left by
/// 20 bits, so a restarted node starts above everything it sent before as long as it sent
/// fewer than 2^20 (about a million) messages per millisecond of its previous run's
/// length.
#[derive(Debug, Clone)]
pub struct Sequencer {
    next: u64,
}

impl Sequencer {
    /// Starts a run at `start_ms` (ms since the Unix epoch).
    pub fn new(start_ms: u64) -> Self {
        Self {
            next: start_ms.saturating_mul(1 << 20),
        }
    }

    /// The next sequence number.
    pub fn next_sequence(&mut self) -> u64 {
        let sequence = self.next;
        self.next = self.next.saturating_add(1);
        sequence
    }
}

/// Seals envelopes for one sender in one mesh.
#[derive(Debug)]
pub struct Sealer {
    mesh: MeshId,
    limits: Limits,
    sequencer: Sequencer,
    sessions: SenderSessions,
}

/// What to seal: everything about an envelope that the caller chooses.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// Topic to publish on.
    pub topic: &'a str,
    /// Content.
    pub payload: &'a Payload,
    /// Who can open it.
    pub to: To<'a>,
    /// Time to live from `now_ms`.
    pub ttl_ms: u64,
}

impl Sealer {
    /// A sealer for `mesh` whose sequence numbers start at `start_ms` (see [`Sequencer`]).
    pub fn new(mesh: MeshId, limits: Limits, start_ms: u64) -> Self {
        Self {
            mesh,
            limits: limits.clamped(),
            sequencer: Sequencer::new(start_ms),
            sessions: SenderSessions::default(),
        }
    }

    /// The mesh this sealer seals for.
    pub fn mesh(&self) -> MeshId {
        self.mesh
    }

    /// Seals, signs and encodes `outgoing` as `identity` at `now_ms`.
    pub fn seal(
        &mut self,
        identity: &Identity,
        now_ms: u64,
        outgoing: Outgoing<'_>,
    ) -> Result<Sealed, SealError> {
        let Outgoing {
            topic,
            payload,
            to,
            ttl_ms,
        } = outgoing;
        if topic.len() > MAX_TOPIC_BYTES {
            return Err(SealError::TopicTooLong { len: topic.len() });
        }
        let expires_ms = now_ms
            .checked_add(ttl_ms)
            .filter(|_| ttl_ms > 0)
            .ok_or(SealError::BadTtl { ttl_ms })?;
        let recipients = match to {
            To::Members(members) => Some(self.recipient_list(members)?),
            To::Group(_) => None,
        };
        let audience = match (&recipients, to) {
            (Some(list), _) => WireAudience::Members(list),
            (None, To::Group(group)) => WireAudience::Group(group.epoch),
            (None, To::Members(_)) => return Err(SealError::NoRecipients),
        };
        let id = MessageId::random()?;
        let sequence = self.sequencer.next_sequence();
        let header = WireHeader {
            mesh: self.mesh,
            id,
            sender: identity.node_key(),
            sequence,
            created_ms: now_ms,
            expires_ms,
            kind: payload.kind(),
            topic,
            audience,
        };
        let mut bytes = Vec::with_capacity(1024);
        codec::encode_header(&header, &mut bytes)?;
        let header_len = bytes.len();

        let mut content_key = Zeroizing::new([0u8; 32]);
        fill_random(&mut content_key[..])?;
        let wrapped_keys = match to {
            To::Members(members) => self.wrap_for_members(
                identity.node_key(),
                members,
                now_ms,
                id,
                &content_key,
                &bytes[..header_len],
            )?,
            To::Group(group) => wrap_for_group(group, &content_key, &bytes[..header_len])?,
        };
        let plaintext = Zeroizing::new(postcard::to_stdvec(payload)?);
        // A content key is used for exactly one message, so the all-zero nonce is safe.
        let ciphertext = ChaCha20Poly1305::new(&Key::from(*content_key))
            .encrypt(
                &Nonce::default(),
                AeadPayload {
                    msg: &plaintext,
                    aad: &bytes[..header_len],
                },
            )
            .map_err(|_| SealError::Encrypt)?;
        codec::encode_body(
            &WireBody {
                wrapped_keys: &wrapped_keys,
                ciphertext: &ciphertext,
            },
            &mut bytes,
        )?;
        let signature = identity
            .signing_key()
            .sign(&signed_message(&bytes))
            .to_bytes();
        bytes.extend_from_slice(&signature);
        if bytes.len() > self.limits.max_message_bytes {
            return Err(SealError::TooLarge {
                len: bytes.len(),
                max: self.limits.max_message_bytes,
            });
        }
        Ok(Sealed {
            id,
            sequence,
            bytes,
        })
    }

    fn wrap_for_members(
        &mut self,
        sender: NodeKey,
        members: &[PublicIdentity],
        now_ms: u64,
        id: MessageId,
        content_key: &[u8; 32],
        header_bytes: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let mut wrapped = Vec::with_capacity(members.len() * HPKE_WRAP_BYTES);
        for member in members {
            let session = self.sessions.session(sender, member, now_ms)?;
            session.messages += 1;
            let key = wrap_key(|context, out| session.context.export(context, out), &id)
                .ok_or(SealError::Wrap { node: member.node })?;
            // The wrap key is unique to this message id, so the zero nonce is never reused.
            let sealed_key = ChaCha20Poly1305::new(&Key::from(*key))
                .encrypt(
                    &Nonce::default(),
                    AeadPayload {
                        msg: content_key,
                        aad: header_bytes,
                    },
                )
                .map_err(|_| SealError::Encrypt)?;
            // The wire format has fixed-size records; other sizes would be a bug.
            assert_eq!(
                session.encapsulated.len() + sealed_key.len(),
                HPKE_WRAP_BYTES
            );
            wrapped.extend_from_slice(&session.encapsulated);
            wrapped.extend_from_slice(&sealed_key);
        }
        Ok(wrapped)
    }

    fn recipient_list(&self, members: &[PublicIdentity]) -> Result<Vec<u8>, SealError> {
        if members.is_empty() {
            return Err(SealError::NoRecipients);
        }
        if members.len() > self.limits.max_recipients {
            return Err(SealError::TooManyRecipients {
                count: members.len(),
                max: self.limits.max_recipients,
            });
        }
        let mut list = Vec::with_capacity(members.len() * codec::RECIPIENT_BYTES);
        for (index, member) in members.iter().enumerate() {
            if members[..index]
                .iter()
                .any(|earlier| earlier.node == member.node)
            {
                return Err(SealError::DuplicateRecipient { node: member.node });
            }
            list.extend_from_slice(&member.node.0);
        }
        Ok(list)
    }
}

/// The bytes an envelope signature covers: a context label, then the envelope up to
/// the signature exactly as encoded.
pub(crate) fn signed_message(signed_bytes: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNATURE_CONTEXT.len() + signed_bytes.len());
    message.extend_from_slice(SIGNATURE_CONTEXT);
    message.extend_from_slice(signed_bytes);
    message
}

fn wrap_for_group(
    group: &GroupKey,
    content_key: &[u8; 32],
    header_bytes: &[u8],
) -> Result<Vec<u8>, SealError> {
    let mut nonce = [0u8; 24];
    fill_random(&mut nonce)?;
    let sealed_key = XChaCha20Poly1305::new(&Key::from(*group.key))
        .encrypt(
            &XNonce::from(nonce),
            AeadPayload {
                msg: content_key,
                aad: header_bytes,
            },
        )
        .map_err(|_| SealError::Encrypt)?;
    let mut wrapped = Vec::with_capacity(GROUP_WRAP_BYTES);
    wrapped.extend_from_slice(&nonce);
    wrapped.extend_from_slice(&sealed_key);
    Ok(wrapped)
}

/// Checks the envelope's signature with the sender's key.
pub(crate) fn verify_signature(
    raw: &RawEnvelope<'_>,
    sender_key: &ed25519_dalek::VerifyingKey,
) -> bool {
    let signature = ed25519_dalek::Signature::from_bytes(raw.signature);
    let message = signed_message(raw.signed_bytes);
    // `verify_strict` rejects small-order keys and non-canonical signatures, so a valid
    // envelope has exactly one valid signature and cannot be re-signed into a new id.
    sender_key.verify_strict(&message, &signature).is_ok()
}

impl ReceiverSessions {
    pub(crate) fn len(&self) -> usize {
        self.contexts.len()
    }

    /// Unwraps the content key wrapped for recipient number `index` (this node, `me`),
    /// decapsulating the sender's session key only if it is not cached yet.
    pub(crate) fn unwrap_member_key(
        &mut self,
        raw: &RawEnvelope<'_>,
        index: usize,
        me: &NodeKey,
        secret: &KemPrivateKey,
    ) -> Option<Zeroizing<[u8; 32]>> {
        let start = index.checked_mul(HPKE_WRAP_BYTES)?;
        let record = raw
            .body
            .wrapped_keys
            .get(start..start.checked_add(HPKE_WRAP_BYTES)?)?;
        let (encapsulated, sealed_key) = record.split_at(32);
        let slot = (raw.header.sender, <[u8; 32]>::try_from(encapsulated).ok()?);
        let context = match self.contexts.entry(slot) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                let enc = <KemSuite as hpke::Kem>::EncappedKey::from_bytes(encapsulated).ok()?;
                let context = hpke::setup_receiver::<HpkeChaCha, HkdfSha256, KemSuite>(
                    &OpModeR::Base,
                    secret,
                    &enc,
                    &session_info(&raw.header.sender, me),
                )
                .ok()?;
                self.order.push_back(slot);
                entry.insert(context)
            }
        };
        let key = wrap_key(
            |exporter, out| context.export(exporter, out),
            &raw.header.id,
        )?;
        while self.contexts.len() > MAX_SESSIONS {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.contexts.remove(&old);
        }
        let content_key = Zeroizing::new(
            ChaCha20Poly1305::new(&Key::from(*key))
                .decrypt(
                    &Nonce::default(),
                    AeadPayload {
                        msg: sealed_key,
                        aad: raw.header_bytes,
                    },
                )
                .ok()?,
        );
        content_key.as_slice().try_into().ok().map(Zeroizing::new)
    }
}

/// Unwraps the content key of a group envelope.
pub(crate) fn unwrap_group_key(
    raw: &RawEnvelope<'_>,
    group: &GroupKey,
) -> Option<Zeroizing<[u8; 32]>> {
    let (nonce, sealed_key) = raw.body.wrapped_keys.split_at_checked(24)?;
    let nonce: [u8; 24] = nonce.try_into().ok()?;
    let key = Zeroizing::new(
        XChaCha20Poly1305::new(&Key::from(*group.key))
            .decrypt(
                &XNonce::from(nonce),
                AeadPayload {
                    msg: sealed_key,
                    aad: raw.header_bytes,
                },
            )
            .ok()?,
    );
    key.as_slice().try_into().ok().map(Zeroizing::new)
}

/// Decrypts the ciphertext with the content key.
pub(crate) fn decrypt_content(
    raw: &RawEnvelope<'_>,
    content_key: &[u8; 32],
) -> Option<Zeroizing<Vec<u8>>> {
    ChaCha20Poly1305::new(&Key::from(*content_key))
        .decrypt(
            &Nonce::default(),
            AeadPayload {
                msg: raw.body.ciphertext,
                aad: raw.header_bytes,
            },
        )
        .ok()
        .map(Zeroizing::new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Command, Priority};

    #[test]
    fn a_wrapped_group_key_opens_only_for_its_member_mesh_and_epoch() {
        let mesh = MeshId::random().expect("rng");
        let (member, other) = (
            Identity::generate().expect("rng"),
            Identity::generate().expect("rng"),
        );
        let key = GroupKey::generate(3).expect("rng");
        let wrapped = key.wrap_for(mesh, &member.public()).expect("wrap");
        assert_eq!(wrapped.len(), WRAPPED_GROUP_KEY_BYTES);
        let opened = GroupKey::unwrap(mesh, 3, &wrapped, &member).expect("opens");
        assert_eq!(opened.secret_bytes(), key.secret_bytes());
        assert_eq!(opened.epoch(), 3);
        assert!(GroupKey::unwrap(mesh, 3, &wrapped, &other).is_none());
        assert!(GroupKey::unwrap(mesh, 4, &wrapped, &member).is_none());
        let elsewhere = MeshId::random().expect("rng");
        assert!(GroupKey::unwrap(elsewhere, 3, &wrapped, &member).is_none());
        let mut flipped = wrapped.clone();
        flipped[40] ^= 1;
        assert!(GroupKey::unwrap(mesh, 3, &flipped, &member).is_none());
        assert!(GroupKey::unwrap(mesh, 3, &wrapped[..79], &member).is_none());
    }
    use crate::receive::{Delivery, Receiver, ReceiverConfig, Roster};

    const NOW_MS: u64 = 1_750_000_000_000;

    fn payload(text: &str) -> Payload {
        Payload::Command(Command {
            priority: Priority::Normal,
            action: text.into(),
            body: vec![],
        })
    }

    fn session_key_of(bytes: &[u8]) -> [u8; 32] {
        let raw = codec::decode(bytes, Limits::default()).expect("decode");
        raw.body.wrapped_keys[..32].try_into().expect("32 bytes")
    }

    struct Pair {
        mesh: MeshId,
        sender: Identity,
        recipient: Identity,
        roster: Roster,
    }

    fn pair() -> Pair {
        let sender = Identity::generate().expect("rng");
        let recipient = Identity::generate().expect("rng");
        let mut roster = Roster::new();
        roster.insert(sender.public()).expect("member");
        roster.insert(recipient.public()).expect("member");
        Pair {
            mesh: MeshId::random().expect("rng"),
            sender,
            recipient,
            roster,
        }
    }

    fn seal(pair: &Pair, sealer: &mut Sealer, now_ms: u64, text: &str) -> Sealed {
        sealer
            .seal(
                &pair.sender,
                now_ms,
                Outgoing {
                    topic: "t",
                    payload: &payload(text),
                    to: To::Members(&[pair.recipient.public()]),
                    ttl_ms: 60_000,
                },
            )
            .expect("seal")
    }

    fn open(pair: &Pair, receiver: &mut Receiver, now_ms: u64, sealed: &Sealed) -> Payload {
        match receiver
            .receive(now_ms, &sealed.bytes, &pair.recipient, &pair.roster)
            .expect("accept")
        {
            Delivery::Opened(opened) => opened.payload,
            Delivery::Relay(_) => panic!("recipient could not open"),
        }
    }

    #[test]
    fn messages_of_one_session_share_its_key_and_open_in_any_order() {
        let pair = pair();
        let mut sealer = Sealer::new(pair.mesh, Limits::default(), NOW_MS);
        let sealed: Vec<Sealed> = (0..4)
            .map(|i| seal(&pair, &mut sealer, NOW_MS + i, &format!("m{i}")))
            .collect();
        let first = session_key_of(&sealed[0].bytes);
        assert!(sealed.iter().all(|s| session_key_of(&s.bytes) == first));
        // Reverse order, and a receiver that never saw the first message.
        let mut receiver = Receiver::new(pair.mesh, ReceiverConfig::default());
        for (i, s) in sealed.iter().enumerate().rev().take(3) {
            assert_eq!(
                open(&pair, &mut receiver, NOW_MS, s),
                payload(&format!("m{i}"))
            );
        }
        assert_eq!(receiver.cached_sessions(), 1);
    }

    #[test]
    fn sessions_rotate_after_their_lifetime() {
        let pair = pair();
        let mut sealer = Sealer::new(pair.mesh, Limits::default(), NOW_MS);
        let early = seal(&pair, &mut sealer, NOW_MS, "early");
        let same = seal(&pair, &mut sealer, NOW_MS + SESSION_LIFETIME_MS - 1, "same");
        let late = seal(&pair, &mut sealer, NOW_MS + SESSION_LIFETIME_MS, "late");
        assert_eq!(session_key_of(&early.bytes), session_key_of(&same.bytes));
        assert_ne!(session_key_of(&early.bytes), session_key_of(&late.bytes));
        let mut receiver = Receiver::new(pair.mesh, ReceiverConfig::default());
        let now_ms = NOW_MS + SESSION_LIFETIME_MS;
        assert_eq!(open(&pair, &mut receiver, now_ms, &late), payload("late"));
        assert_eq!(
            open(&pair, &mut receiver, now_ms - 1, &same),
            payload("same")
        );
        assert_eq!(receiver.cached_sessions(), 2);
    }

    #[test]
    fn a_new_encryption_key_starts_a_new_session() {
        let mut pair = pair();
        let mut sealer = Sealer::new(pair.mesh, Limits::default(), NOW_MS);
        let before = seal(&pair, &mut sealer, NOW_MS, "before");
        // The recipient's identity is replaced (new keys, same sealer).
        pair.recipient = Identity::generate().expect("rng");
        pair.roster.insert(pair.recipient.public()).expect("member");
        let after = seal(&pair, &mut sealer, NOW_MS + 1, "after");
        assert_ne!(session_key_of(&before.bytes), session_key_of(&after.bytes));
        let mut receiver = Receiver::new(pair.mesh, ReceiverConfig::default());
        assert_eq!(
            open(&pair, &mut receiver, NOW_MS + 1, &after),
            payload("after")
        );
    }
}
