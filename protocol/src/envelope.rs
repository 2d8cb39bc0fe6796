//! Sealing: a payload encrypted once under a fresh content key, the key wrapped for each
//! recipient (HPKE, RFC 9180) or for the mesh group key, and the whole signed.
//!
//! ```text
//!  payload ──postcard──► plaintext ──ChaCha20-Poly1305(content key, aad = header)──► ciphertext
//!  content key ──HPKE base mode, X25519/HKDF-SHA256/ChaCha20-Poly1305, aad = header──► per recipient
//!             └─XChaCha20-Poly1305(group key of epoch E, aad = header)──────────────► group
//!  "aamas/1 envelope" ‖ version ‖ header ‖ body ──ed25519──► signature
//! ```
//!
//! Binding the header as associated data of both seals means that a relay cannot move a
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

/// HPKE `info` for wrapping a content key: names the protocol and purpose.
const WRAP_INFO: &[u8] = b"aamas/1 content-key wrap";
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
            To::Members(members) => wrap_for_members(members, &content_key, &bytes[..header_len])?,
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

fn wrap_for_members(
    members: &[PublicIdentity],
    content_key: &[u8; 32],
    header_bytes: &[u8],
) -> Result<Vec<u8>, SealError> {
    let mut wrapped = Vec::with_capacity(members.len() * HPKE_WRAP_BYTES);
    for member in members {
        let wrap_error = || SealError::Wrap { node: member.node };
        let public = KemPublicKey::from_bytes(&member.encryption.0).map_err(|_| wrap_error())?;
        let (encapsulated, sealed_key) =
            hpke::single_shot_seal::<HpkeChaCha, HkdfSha256, KemSuite>(
                &OpModeS::Base,
                &public,
                WRAP_INFO,
                content_key,
                header_bytes,
            )
            .map_err(|_| wrap_error())?;
        let encapsulated = encapsulated.to_bytes();
        // The wire format has fixed-size records; a suite producing other sizes is a bug.
        assert_eq!(encapsulated.len() + sealed_key.len(), HPKE_WRAP_BYTES);
        wrapped.extend_from_slice(&encapsulated);
        wrapped.extend_from_slice(&sealed_key);
    }
    Ok(wrapped)
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

/// Unwraps the content key wrapped for recipient number `index`.
pub(crate) fn unwrap_member_key(
    raw: &RawEnvelope<'_>,
    index: usize,
    secret: &KemPrivateKey,
) -> Option<Zeroizing<[u8; 32]>> {
    let start = index.checked_mul(HPKE_WRAP_BYTES)?;
    let record = raw.body.wrapped_keys.get(start..start + HPKE_WRAP_BYTES)?;
    let (encapsulated, sealed_key) = record.split_at(32);
    let encapsulated = <KemSuite as hpke::Kem>::EncappedKey::from_bytes(encapsulated).ok()?;
    let key = Zeroizing::new(
        hpke::single_shot_open::<HpkeChaCha, HkdfSha256, KemSuite>(
            &OpModeR::Base,
            secret,
            &encapsulated,
            WRAP_INFO,
            sealed_key,
            raw.header_bytes,
        )
        .ok()?,
    );
    key.as_slice().try_into().ok().map(Zeroizing::new)
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
