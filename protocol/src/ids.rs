//! Names on the wire: mesh ids, message ids, node keys, and fixed-size byte arrays.

use std::fmt;

use serde::de::{Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Fills `buf` from the operating system's CSPRNG.
///
/// The only source of randomness in this crate: message ids, content keys, key-wrap
/// nonces and new identities all come from here (HPKE's ephemeral keys come from the
/// same OS source inside the `hpke` crate).
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), RandomError> {
    getrandom::fill(buf).map_err(|source| RandomError {
        reason: source.to_string(),
    })
}

/// The operating system could not provide random bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the operating system's random number generator failed: {reason}")]
pub struct RandomError {
    reason: String,
}

/// A fixed-size byte array that serialises as exactly `N` bytes (no length prefix).
///
/// serde only derives array support up to 32 elements; signatures (64 bytes) and wrapped
/// keys (48 bytes) need more.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ByteArray<const N: usize>(pub [u8; N]);

impl<const N: usize> fmt::Debug for ByteArray<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl<const N: usize> Serialize for ByteArray<N> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut tuple = serializer.serialize_tuple(N)?;
        for byte in &self.0 {
            tuple.serialize_element(byte)?;
        }
        tuple.end()
    }
}

impl<'de, const N: usize> Deserialize<'de> for ByteArray<N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ArrayVisitor<const N: usize>;
        impl<'de, const N: usize> Visitor<'de> for ArrayVisitor<N> {
            type Value = ByteArray<N>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{N} bytes")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = [0u8; N];
                for (index, slot) in out.iter_mut().enumerate() {
                    *slot = seq
                        .next_element()?
                        .ok_or_else(|| A::Error::invalid_length(index, &self))?;
                }
                Ok(ByteArray(out))
            }
        }
        deserializer.deserialize_tuple(N, ArrayVisitor::<N>)
    }
}

pub(crate) fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for byte in bytes {
        write!(f, "{byte:02x}")?;
    }
    Ok(())
}

/// Parses exactly `N` bytes of lowercase or uppercase hex.
fn parse_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let text = text.as_bytes();
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (slot, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        let high = (pair[0] as char).to_digit(16)?;
        let low = (pair[1] as char).to_digit(16)?;
        *slot = u8::try_from(high * 16 + low).ok()?;
    }
    Some(out)
}

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// A fresh random value from the operating system's CSPRNG.
            pub fn random() -> Result<Self, RandomError> {
                let mut bytes = [0u8; $len];
                fill_random(&mut bytes)?;
                Ok(Self(bytes))
            }

            /// Parses the hex form printed by `Display`.
            pub fn from_hex(text: &str) -> Option<Self> {
                parse_hex::<$len>(text).map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_hex(f, &self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "("))?;
                write_hex(f, &self.0)?;
                write!(f, ")")
            }
        }
    };
}

hex_id!(
    /// Names one mesh. Every envelope carries it, so that two meshes sharing a network
    /// never accept each other's messages.
    MeshId,
    16
);

hex_id!(
    /// A random 128-bit message id, unique per envelope; the replay cache is keyed by it.
    MessageId,
    16
);

/// A node's public ed25519 signing key: its name on the wire.
///
/// It is the same key that libp2p uses for the node, so the libp2p `PeerId` derives from
/// it ([`NodeKey::peer_id`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeKey(pub [u8; 32]);

/// Length of a libp2p `PeerId` for an ed25519 key: an identity multihash of the protobuf
/// `PublicKey { Type = Ed25519, Data = key }`.
pub const PEER_ID_BYTES: usize = 38;

impl NodeKey {
    /// The binary libp2p `PeerId` of this key.
    ///
    /// libp2p inlines keys of at most 42 encoded bytes with the identity multihash
    /// (code 0x00), so an ed25519 `PeerId` is `00 24` followed by the protobuf encoding
    /// of the public key: `08 01` (field 1, KeyType::Ed25519 = 1) `12 20` (field 2,
    /// 32 bytes) and the key itself. `node/` cross-checks this against libp2p.
    pub fn peer_id_bytes(&self) -> [u8; PEER_ID_BYTES] {
        let mut out = [0u8; PEER_ID_BYTES];
        out[..6].copy_from_slice(&[0x00, 0x24, 0x08, 0x01, 0x12, 0x20]);
        out[6..].copy_from_slice(&self.0);
        out
    }

    /// The libp2p `PeerId` of this key in its usual base58 text form (`12D3KooW…`).
    pub fn peer_id(&self) -> String {
        bs58::encode(self.peer_id_bytes()).into_string()
    }

    /// Parses a base58 libp2p `PeerId` of an ed25519 key back into the key.
    pub fn from_peer_id(text: &str) -> Option<Self> {
        let mut buf = [0u8; PEER_ID_BYTES + 1];
        let len = bs58::decode(text).onto(&mut buf[..]).ok()?;
        if len != PEER_ID_BYTES || buf[..6] != [0x00, 0x24, 0x08, 0x01, 0x12, 0x20] {
            return None;
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&buf[6..PEER_ID_BYTES]);
        Some(Self(key))
    }
}

impl fmt::Display for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.peer_id())
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey({})", self.peer_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_array_encodes_without_length_prefix() {
        let value = ByteArray([7u8; 64]);
        let bytes = postcard::to_stdvec(&value).expect("encode");
        assert_eq!(bytes.len(), 64);
        let back: ByteArray<64> = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, value);
        assert!(postcard::from_bytes::<ByteArray<64>>(&bytes[..63]).is_err());
    }

    #[test]
    fn hex_ids_round_trip_and_reject_bad_text() {
        let mesh = MeshId([0xab; 16]);
        assert_eq!(MeshId::from_hex(&mesh.to_string()), Some(mesh));
        assert_eq!(MeshId::from_hex("abc"), None);
        assert_eq!(MeshId::from_hex(&"zz".repeat(16)), None);
    }

    #[test]
    fn peer_id_text_round_trips() {
        let key = NodeKey([42u8; 32]);
        let text = key.peer_id();
        assert!(text.starts_with("12D3KooW"), "{text}");
        assert_eq!(NodeKey::from_peer_id(&text), Some(key));
        assert_eq!(NodeKey::from_peer_id("12D3KooW"), None);
        assert_eq!(NodeKey::from_peer_id("not base58 0OIl"), None);
    }
}
