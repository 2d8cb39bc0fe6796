//! # aamas-protocol
//!
//! The AAMAS wire protocol, pure: who a node is, what a message is, and how a message is
//! sealed for its recipients, signed, encoded and checked on arrival. No async runtime,
//! no network, no storage; `node/` carries these bytes over libp2p.
//!
//! ```text
//!   identity ── Identity (ed25519 + X25519), PublicIdentity, key file
//!   ids      ── MeshId, MessageId, NodeKey (= libp2p PeerId), ByteArray
//!   message  ── MessageKind (seed §5.1), Event (seed §5.2), Payload, Phase
//!   codec    ── wire layout, Limits, zero-copy decoder
//!   envelope ── Sealer: payload ─ChaCha20-Poly1305─► ciphertext, key ─HPKE session/group key─► wrapped
//!   receive  ── Receiver: size → version → mesh → signature → replay → decrypt ─► Delivery
//! ```
//!
//! ## Example
//! ```
//! use aamas_protocol::*;
//!
//! let mesh = MeshId::random()?;
//! let (governor, worker) = (Identity::generate()?, Identity::generate()?);
//! let mut roster = Roster::new();
//! roster.insert(governor.public())?;
//! roster.insert(worker.public())?;
//!
//! let payload = Payload::Command(Command {
//!     priority: Priority::Normal,
//!     action: "assign_task".into(),
//!     body: b"build the thing".to_vec(),
//! });
//! let now_ms = 1_700_000_000_000;
//! let mut sealer = Sealer::new(mesh, Limits::default(), now_ms);
//! let sealed = sealer.seal(&governor, now_ms, Outgoing {
//!     topic: "aamas/1/demo/state/technical",
//!     payload: &payload,
//!     to: To::Members(&[worker.public()]),
//!     ttl_ms: 60_000,
//! })?;
//!
//! let mut receiver = Receiver::new(mesh, ReceiverConfig::default());
//! match receiver.receive(now_ms + 5, &sealed.bytes, &worker, &roster)? {
//!     Delivery::Opened(opened) => assert_eq!(opened.payload, payload),
//!     Delivery::Relay(_) => unreachable!("the worker is a recipient"),
//! }
//! // The same bytes again are a replay.
//! assert!(matches!(
//!     receiver.receive(now_ms + 6, &sealed.bytes, &worker, &roster),
//!     Err(Rejection::Replayed { .. })
//! ));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

mod codec;
mod envelope;
mod identity;
mod ids;
mod message;
mod receive;

pub use codec::{
    DecodeError, GROUP_WRAP_BYTES, HPKE_WRAP_BYTES, Limits, MAX_MESSAGE_BYTES_CEILING,
    MAX_RECIPIENTS_CEILING, MAX_TOPIC_BYTES, PROTOCOL_VERSION, RECIPIENT_BYTES, SIGNATURE_BYTES,
};
pub use envelope::{
    Audience, GroupKey, Header, MAX_SESSIONS, Outgoing, SESSION_LIFETIME_MS, SESSION_MAX_MESSAGES,
    SealError, Sealed, Sealer, Sequencer, To, WRAPPED_GROUP_KEY_BYTES,
};
pub use identity::{
    EncryptionKey, Identity, IdentityError, KEY_FILE_BYTES, PublicIdentity, verify_signature,
};
pub use ids::{ByteArray, MeshId, MessageId, NodeKey, PEER_ID_BYTES, RandomError};
pub use message::{
    Command, Escalation, Event, MessageKind, Notification, Payload, Phase, Priority, Query, Report,
    ResourceKind, Severity, TaskOutcome,
};
pub use receive::{
    Delivery, Directory, Disposition, GROUP_KEY_EPOCHS_KEPT, MemberKey, Opened, Receiver,
    ReceiverConfig, Rejection, Roster, SEQUENCE_WINDOW,
};

/// Decodes and structurally checks an envelope without verifying it (no signature, no
/// replay, no decryption). For tools and fuzzing; nodes use [`Receiver::receive`].
pub fn inspect(bytes: &[u8], limits: Limits) -> Result<Header, DecodeError> {
    let raw = codec::decode(bytes, limits)?;
    Ok(Header::from_raw(&raw))
}
