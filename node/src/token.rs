//! Join tokens: a member's signed, expiring permission for a number of nodes to join one
//! mesh.
//!
//! Text form: `aamas1` followed by base58 of the postcard-encoded [`JoinToken`]. The
//! president admits a joiner only if the token names this mesh, has not expired, and is
//! signed by an active member of the Registry; the Registry records it by digest at its
//! first use, counts its uses down from the number it carries, and refuses it once they
//! are spent or it is revoked (`aamas token revoke`).

use aamas_protocol::{ByteArray, Identity, MeshId, NodeKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

const TOKEN_PREFIX: &str = "aamas1";
const TOKEN_CONTEXT: &[u8] = b"aamas/1 join token";
/// Longest token text accepted (a token is about 175 characters).
pub const MAX_TOKEN_CHARS: usize = 512;
/// Most admissions one token may allow.
pub const MAX_TOKEN_USES: u32 = 1_000_000;

/// The signed content of a join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// The mesh it admits to.
    pub mesh: MeshId,
    /// The member that signed it.
    pub issuer: NodeKey,
    /// When it stops admitting, ms since the Unix epoch.
    pub expires_ms: u64,
    /// How many nodes it admits in all (1 to [`MAX_TOKEN_USES`]).
    pub uses: u32,
    /// Makes every token distinct.
    pub nonce: [u8; 16],
    /// ed25519 signature by `issuer` over the fields above.
    pub signature: ByteArray<64>,
}

/// Why a token is refused. Each says what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a token at all.
    #[error(
        "the join token is malformed ({reason}); copy it again from `aamas init` or `aamas token create`"
    )]
    Malformed {
        /// What is wrong.
        reason: &'static str,
    },
    /// The signature does not verify: the token was altered or forged.
    #[error(
        "the join token's signature is invalid: it was altered or forged; ask a member for a new token"
    )]
    Forged,
    /// Expired.
    #[error(
        "the join token expired at {expires_ms} (now {now_ms}); create a new one with `aamas token create`"
    )]
    Expired {
        /// Its expiry.
        expires_ms: u64,
        /// The checker's clock.
        now_ms: u64,
    },
    /// For another mesh.
    #[error(
        "the join token is for mesh {token_mesh}, but this is mesh {mesh}; use a token from this mesh"
    )]
    OtherMesh {
        /// The token's mesh.
        token_mesh: MeshId,
        /// This mesh.
        mesh: MeshId,
    },
    /// Signed by someone who is not an active member.
    #[error("the join token was issued by {issuer}, who is not a member of this mesh")]
    UnknownIssuer {
        /// The issuer.
        issuer: NodeKey,
    },
}

fn signed_bytes(token: &JoinToken) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(TOKEN_CONTEXT.len() + 16 + 32 + 8 + 4 + 16);
    bytes.extend_from_slice(TOKEN_CONTEXT);
    bytes.extend_from_slice(&token.mesh.0);
    bytes.extend_from_slice(&token.issuer.0);
    bytes.extend_from_slice(&token.expires_ms.to_be_bytes());
    bytes.extend_from_slice(&token.uses.to_be_bytes());
    bytes.extend_from_slice(&token.nonce);
    bytes
}

impl JoinToken {
    /// A token for `mesh` signed by `issuer`, valid until `expires_ms` for `uses`
    /// admissions (clamped to 1..=[`MAX_TOKEN_USES`]).
    pub fn issue(
        issuer: &Identity,
        mesh: MeshId,
        expires_ms: u64,
        uses: u32,
    ) -> Result<Self, aamas_protocol::RandomError> {
        let mut token = Self {
            mesh,
            issuer: issuer.node_key(),
            expires_ms,
            uses: uses.clamp(1, MAX_TOKEN_USES),
            nonce: aamas_protocol::MessageId::random()?.0,
            signature: ByteArray([0; 64]),
        };
        token.signature = ByteArray(issuer.sign(&signed_bytes(&token)));
        Ok(token)
    }

    /// The terms the Registry counts its uses by.
    pub fn terms(&self) -> aamas_consensus::registry::TokenTerms {
        aamas_consensus::registry::TokenTerms {
            digest: self.digest(),
            expires_ms: self.expires_ms,
            uses: self.uses,
        }
    }

    /// The token's text form.
    pub fn encode(&self) -> String {
        let bytes = postcard::to_stdvec(self).unwrap_or_default();
        format!("{TOKEN_PREFIX}{}", bs58::encode(bytes).into_string())
    }

    /// Parses the text form (without checking signature or expiry).
    pub fn decode(text: &str) -> Result<Self, TokenError> {
        let text = text.trim();
        if text.len() > MAX_TOKEN_CHARS {
            return Err(TokenError::Malformed { reason: "too long" });
        }
        let body = text
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenError::Malformed {
                reason: "it does not start with aamas1",
            })?;
        let bytes = bs58::decode(body)
            .into_vec()
            .map_err(|_| TokenError::Malformed {
                reason: "not base58",
            })?;
        postcard::from_bytes(&bytes).map_err(|_| TokenError::Malformed {
            reason: "bad encoding",
        })
    }

    /// SHA-256 of the text form: how the Registry names the token.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.encode().as_bytes()).into()
    }

    /// Checks mesh, expiry and signature. Whether the issuer is a member is the caller's
    /// check (it needs the Registry).
    pub fn verify(&self, mesh: MeshId, now_ms: u64) -> Result<(), TokenError> {
        if self.mesh != mesh {
            return Err(TokenError::OtherMesh {
                token_mesh: self.mesh,
                mesh,
            });
        }
        if !aamas_protocol::verify_signature(&self.issuer, &signed_bytes(self), &self.signature.0) {
            return Err(TokenError::Forged);
        }
        if now_ms >= self.expires_ms {
            return Err(TokenError::Expired {
                expires_ms: self.expires_ms,
                now_ms,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_each_fault_is_named() {
        let founder = Identity::generate().expect("rng");
        let mesh = MeshId([1; 16]);
        let token = JoinToken::issue(&founder, mesh, 1_000, 3).expect("issue");
        let text = token.encode();
        let parsed = JoinToken::decode(&text).expect("decode");
        assert_eq!(parsed, token);
        parsed.verify(mesh, 999).expect("valid");
        assert_eq!(
            parsed.verify(mesh, 1_000),
            Err(TokenError::Expired {
                expires_ms: 1_000,
                now_ms: 1_000
            })
        );
        assert!(matches!(
            parsed.verify(MeshId([2; 16]), 0),
            Err(TokenError::OtherMesh { .. })
        ));
        assert_eq!(parsed.terms().uses, 3);
        let mut forged = parsed.clone();
        forged.expires_ms = u64::MAX;
        assert_eq!(forged.verify(mesh, 0), Err(TokenError::Forged));
        let mut more_uses = parsed.clone();
        more_uses.uses = 4;
        assert_eq!(more_uses.verify(mesh, 0), Err(TokenError::Forged));
        assert_ne!(more_uses.digest(), parsed.digest());
        let zero = JoinToken::issue(&founder, mesh, 1_000, 0).expect("issue");
        assert_eq!(zero.uses, 1, "at least one use");
        assert!(matches!(
            JoinToken::decode("hello"),
            Err(TokenError::Malformed { .. })
        ));
        assert!(matches!(
            JoinToken::decode("aamas1!!!"),
            Err(TokenError::Malformed { .. })
        ));
        assert!(matches!(
            JoinToken::decode(&"a".repeat(600)),
            Err(TokenError::Malformed { .. })
        ));
        assert!(
            JoinToken::decode(&format!("  {text}\n")).is_ok(),
            "surrounding whitespace is fine"
        );
    }
}
