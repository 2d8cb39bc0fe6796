//! The wire format of an envelope, and its zero-copy decoder.
//!
//! ```text
//!  ┌─────────┬──────────────────────────┬───────────────────────────┬───────────┐
//!  │ version │ header (postcard)        │ body (postcard)           │ signature │
//!  │ 1 byte  │ mesh, id, sender, seq,   │ wrapped keys, ciphertext  │ 64 bytes  │
//!  │         │ times, kind, topic,      │                           │ ed25519   │
//!  │         │ audience                 │                           │           │
//!  └─────────┴──────────────────────────┴───────────────────────────┴───────────┘
//!  ◄──── header bytes: HPKE aad and content aad ──►
//!  ◄──────────────────── signed bytes (exactly as received) ────────►
//! ```
//!
//! Decoding borrows from the input and allocates nothing: recipients, wrapped keys and the
//! ciphertext are byte slices whose lengths are checked against the configured
//! [`Limits`] before anything is built from them, so a hostile length prefix costs no
//! memory.

use serde::{Deserialize, Serialize, Serializer};

use crate::ids::{MeshId, MessageId, NodeKey};
use crate::message::MessageKind;

/// The protocol version this build speaks: the first byte of every envelope.
pub const PROTOCOL_VERSION: u8 = 1;
/// Length of the trailing ed25519 signature.
pub const SIGNATURE_BYTES: usize = 64;
/// Length of one recipient's name in the audience list.
pub const RECIPIENT_BYTES: usize = 32;
/// Length of one HPKE-wrapped content key: encapsulated X25519 key (32) + sealed
/// 32-byte key with its 16-byte tag.
pub const HPKE_WRAP_BYTES: usize = 32 + 48;
/// Length of a group-wrapped content key: XChaCha20-Poly1305 nonce (24) + sealed key (48).
pub const GROUP_WRAP_BYTES: usize = 24 + 48;
/// Longest topic name accepted.
pub const MAX_TOPIC_BYTES: usize = 256;
/// Hard protocol ceiling on recipients per envelope; [`Limits::max_recipients`] may only
/// lower it.
pub const MAX_RECIPIENTS_CEILING: usize = 4096;
/// Hard protocol ceiling on envelope size; [`Limits::max_message_bytes`] may only lower it.
pub const MAX_MESSAGE_BYTES_CEILING: usize = 4 << 20;

/// Size limits, checked before any allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest encoded envelope accepted or produced, in bytes. The default matches
    /// gossipsub's default maximum transmit size (64 KiB).
    pub max_message_bytes: usize,
    /// Most recipients one envelope may name.
    pub max_recipients: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: 64 * 1024,
            max_recipients: 256,
        }
    }
}

impl Limits {
    /// The limits clamped to the protocol's hard ceilings.
    pub fn clamped(self) -> Self {
        Self {
            max_message_bytes: self.max_message_bytes.min(MAX_MESSAGE_BYTES_CEILING),
            max_recipients: self.max_recipients.min(MAX_RECIPIENTS_CEILING),
        }
    }
}

/// Who can open an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum WireAudience<'a> {
    /// Named members; `RECIPIENT_BYTES` per member, each with an HPKE-wrapped key.
    Members(#[serde(borrow, serialize_with = "as_bytes")] &'a [u8]),
    /// Every holder of the mesh group key of this epoch.
    Group(u64),
}

/// The clear-text header, as it sits on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireHeader<'a> {
    pub mesh: MeshId,
    pub id: MessageId,
    pub sender: NodeKey,
    pub sequence: u64,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub kind: MessageKind,
    #[serde(borrow)]
    pub topic: &'a str,
    #[serde(borrow)]
    pub audience: WireAudience<'a>,
}

/// Wrapped keys and ciphertext, as they sit on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireBody<'a> {
    #[serde(borrow, serialize_with = "as_bytes")]
    pub wrapped_keys: &'a [u8],
    #[serde(borrow, serialize_with = "as_bytes")]
    pub ciphertext: &'a [u8],
}

fn as_bytes<S: Serializer>(bytes: &&[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

/// An envelope decoded from bytes but not yet verified: every field borrows the input.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawEnvelope<'a> {
    pub header: WireHeader<'a>,
    /// Version byte and header, the associated data of every seal.
    pub header_bytes: &'a [u8],
    /// Everything before the signature, exactly as received.
    pub signed_bytes: &'a [u8],
    pub body: WireBody<'a>,
    pub signature: &'a [u8; SIGNATURE_BYTES],
}

impl<'a> RawEnvelope<'a> {
    /// The recipients named by the header (empty for group messages).
    pub fn recipients(&self) -> impl ExactSizeIterator<Item = NodeKey> + 'a {
        let bytes = match self.header.audience {
            WireAudience::Members(bytes) => bytes,
            WireAudience::Group(_) => &[],
        };
        bytes.chunks_exact(RECIPIENT_BYTES).map(|chunk| {
            let mut key = [0u8; RECIPIENT_BYTES];
            key.copy_from_slice(chunk);
            NodeKey(key)
        })
    }
}

/// Why bytes are not a well-formed envelope. Each maps to a distinct
/// [`Rejection`](crate::Rejection).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Larger than `max_message_bytes`; nothing was read past the length.
    #[error("envelope of {len} bytes exceeds the limit of {max} bytes")]
    Oversized {
        /// Input length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The first byte names a protocol version this build does not speak.
    #[error("envelope version {found} is not supported (this build speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion {
        /// The version byte.
        found: u8,
    },
    /// The input ends inside the envelope.
    #[error("envelope is truncated ({len} bytes)")]
    Truncated {
        /// Input length.
        len: usize,
    },
    /// Bytes that cannot be an envelope (bad tag, bad varint, invalid UTF-8, ...).
    #[error("envelope is malformed: {reason}")]
    Malformed {
        /// What the decoder found.
        reason: &'static str,
    },
    /// Well-formed envelope followed by extra bytes before the signature.
    #[error("envelope has {extra} unexpected bytes before its signature")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// More recipients than `max_recipients`.
    #[error("envelope names {count} recipients, the limit is {max}")]
    TooManyRecipients {
        /// How many the header names.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Recipients, wrapped keys and audience disagree in size or number.
    #[error("envelope's key list does not match its audience: {reason}")]
    KeyListMismatch {
        /// What disagrees.
        reason: &'static str,
    },
    /// Topic longer than [`MAX_TOPIC_BYTES`].
    #[error("envelope topic of {len} bytes exceeds {MAX_TOPIC_BYTES}")]
    TopicTooLong {
        /// Its length.
        len: usize,
    },
}

fn map_postcard(error: postcard::Error, len: usize) -> DecodeError {
    match error {
        postcard::Error::DeserializeUnexpectedEnd => DecodeError::Truncated { len },
        postcard::Error::DeserializeBadVarint => DecodeError::Malformed {
            reason: "bad varint",
        },
        postcard::Error::DeserializeBadUtf8 => DecodeError::Malformed {
            reason: "topic is not UTF-8",
        },
        postcard::Error::DeserializeBadEnum => DecodeError::Malformed {
            reason: "unknown enum tag",
        },
        _ => DecodeError::Malformed {
            reason: "not a valid envelope encoding",
        },
    }
}

/// Decodes `bytes` into a borrowed envelope, checking size, version, structure and limits.
/// Performs no allocation and no cryptography.
pub(crate) fn decode(bytes: &[u8], limits: Limits) -> Result<RawEnvelope<'_>, DecodeError> {
    let limits = limits.clamped();
    let len = bytes.len();
    if len > limits.max_message_bytes {
        return Err(DecodeError::Oversized {
            len,
            max: limits.max_message_bytes,
        });
    }
    let Some((&version, _)) = bytes.split_first() else {
        return Err(DecodeError::Truncated { len });
    };
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion { found: version });
    }
    if len < 1 + SIGNATURE_BYTES {
        return Err(DecodeError::Truncated { len });
    }
    let (signed_bytes, signature) = bytes.split_at(len - SIGNATURE_BYTES);
    let signature: &[u8; SIGNATURE_BYTES] = signature
        .try_into()
        .map_err(|_| DecodeError::Truncated { len })?;

    let (header, rest) = postcard::take_from_bytes::<WireHeader<'_>>(&signed_bytes[1..])
        .map_err(|error| map_postcard(error, len))?;
    let header_bytes = &signed_bytes[..signed_bytes.len() - rest.len()];
    let (body, rest) = postcard::take_from_bytes::<WireBody<'_>>(rest)
        .map_err(|error| map_postcard(error, len))?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes { extra: rest.len() });
    }
    if header.topic.len() > MAX_TOPIC_BYTES {
        return Err(DecodeError::TopicTooLong {
            len: header.topic.len(),
        });
    }
    match header.audience {
        WireAudience::Members(recipients) => {
            if recipients.len() % RECIPIENT_BYTES != 0 {
                return Err(DecodeError::KeyListMismatch {
                    reason: "recipient list is not a whole number of keys",
                });
            }
            let count = recipients.len() / RECIPIENT_BYTES;
            if count > limits.max_recipients {
                return Err(DecodeError::TooManyRecipients {
                    count,
                    max: limits.max_recipients,
                });
            }
            if count == 0 {
                return Err(DecodeError::KeyListMismatch {
                    reason: "no recipients",
                });
            }
            if body.wrapped_keys.len() != count * HPKE_WRAP_BYTES {
                return Err(DecodeError::KeyListMismatch {
                    reason: "one wrapped key per recipient expected",
                });
            }
        }
        WireAudience::Group(_) => {
            if body.wrapped_keys.len() != GROUP_WRAP_BYTES {
                return Err(DecodeError::KeyListMismatch {
                    reason: "a group envelope carries exactly one group-wrapped key",
                });
            }
        }
    }
    Ok(RawEnvelope {
        header,
        header_bytes,
        signed_bytes,
        body,
        signature,
    })
}

/// Encodes the version byte and header; the caller appends body and signature.
pub(crate) fn encode_header(
    header: &WireHeader<'_>,
    out: &mut Vec<u8>,
) -> Result<(), postcard::Error> {
    out.push(PROTOCOL_VERSION);
    let encoded = postcard::to_extend(header, std::mem::take(out))?;
    *out = encoded;
    Ok(())
}

/// Appends the encoded body.
pub(crate) fn encode_body(body: &WireBody<'_>, out: &mut Vec<u8>) -> Result<(), postcard::Error> {
    let encoded = postcard::to_extend(body, std::mem::take(out))?;
    *out = encoded;
    Ok(())
}
