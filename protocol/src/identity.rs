//! Who a node is: an ed25519 signing key and an X25519 encryption key bound to it.
//!
//! ```text
//!   Identity (secret, in DATA_DIR/identity.key, mode 0600)
//!     ├─ ed25519 signing key ──► NodeKey (public) ──► libp2p PeerId
//!     └─ X25519 secret       ──► EncryptionKey (public)
//!                                   ▲
//!   PublicIdentity = NodeKey + EncryptionKey + ed25519 signature binding the two
//! ```
//!
//! The binding signature lets anyone who knows a member's `NodeKey` (its peer id) check
//! that an encryption key really belongs to it, so a relay cannot substitute its own key.
//!
//! # Key file format (version 1, 105 bytes)
//! `b"AAMAS-ID"` · version `0x01` · ed25519 seed (32) · X25519 secret (32) ·
//! SHA-256 of everything before it (32). The checksum turns silent corruption of a key
//! into a clear error instead of a different identity.

use std::fs::{self, File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable as _, Kem as _, Serializable as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::ids::{ByteArray, NodeKey, RandomError, fill_random};

/// The HPKE KEM used for every key in AAMAS: DHKEM(X25519, HKDF-SHA256).
pub(crate) type KemSuite = X25519HkdfSha256;
pub(crate) type KemPrivateKey = <KemSuite as hpke::Kem>::PrivateKey;
pub(crate) type KemPublicKey = <KemSuite as hpke::Kem>::PublicKey;

/// Domain separation for the signature that binds an encryption key to a node key.
const BINDING_CONTEXT: &[u8] = b"aamas/1 encryption-key binding";

const KEY_FILE_MAGIC: &[u8; 8] = b"AAMAS-ID";
const KEY_FILE_VERSION: u8 = 1;
/// Exact size of a version-1 key file.
pub const KEY_FILE_BYTES: usize = 8 + 1 + 32 + 32 + 32;

/// A node's public X25519 encryption key (the HPKE recipient key).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EncryptionKey(pub [u8; 32]);

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncryptionKey(")?;
        crate::ids::write_hex(f, &self.0)?;
        write!(f, ")")
    }
}

/// What a node publishes about itself: enough to verify its messages and to seal
/// messages for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicIdentity {
    /// The ed25519 public key; the node's name.
    pub node: NodeKey,
    /// The X25519 key messages to this node are sealed for.
    pub encryption: EncryptionKey,
    /// ed25519 signature by `node` over the binding context and `encryption`.
    pub binding: ByteArray<64>,
}

impl PublicIdentity {
    /// Checks that `node` signed `encryption` (strict verification).
    pub fn verify(&self) -> Result<(), IdentityError> {
        let key = VerifyingKey::from_bytes(&self.node.0).map_err(|_| IdentityError::BadNodeKey)?;
        let signature = ed25519_dalek::Signature::from_bytes(&self.binding.0);
        key.verify_strict(&binding_message(&self.encryption), &signature)
            .map_err(|_| IdentityError::BadBinding { node: self.node })
    }
}

/// Checks (strictly) an ed25519 signature by `node` over `message`.
pub fn verify_signature(node: &NodeKey, message: &[u8], signature: &[u8; 64]) -> bool {
    VerifyingKey::from_bytes(&node.0).is_ok_and(|key| {
        key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(signature))
            .is_ok()
    })
}

fn binding_message(encryption: &EncryptionKey) -> Vec<u8> {
    let mut message = Vec::with_capacity(BINDING_CONTEXT.len() + 32);
    message.extend_from_slice(BINDING_CONTEXT);
    message.extend_from_slice(&encryption.0);
    message
}

/// A node's secret keys.
pub struct Identity {
    signing: SigningKey,
    encryption_secret: KemPrivateKey,
    public: PublicIdentity,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_struct("Identity")
            .field("node", &self.public.node)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A new identity from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, RandomError> {
        let mut signing_seed = Zeroizing::new([0u8; 32]);
        let mut encryption_secret = Zeroizing::new([0u8; 32]);
        fill_random(&mut signing_seed[..])?;
        fill_random(&mut encryption_secret[..])?;
        Ok(Self::from_secret_bytes(&signing_seed, &encryption_secret))
    }

    /// Rebuilds an identity from its two 32-byte secrets (the ed25519 seed and the X25519
    /// secret). Deterministic: the simulator uses it to make identities from a seed.
    pub fn from_secret_bytes(signing_seed: &[u8; 32], encryption_secret: &[u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(signing_seed);
        // X25519 private keys are clamped on deserialisation, so every 32-byte string is a
        // valid key; the error branch cannot be taken for a 32-byte input.
        let encryption_secret = match KemPrivateKey::from_bytes(encryption_secret) {
            Ok(key) => key,
            Err(_) => unreachable!("an X25519 private key is any 32 bytes"),
        };
        let encryption_public = KemSuite::sk_to_pk(&encryption_secret);
        let mut encryption = [0u8; 32];
        encryption.copy_from_slice(&encryption_public.to_bytes());
        let encryption = EncryptionKey(encryption);
        let binding = signing.sign(&binding_message(&encryption)).to_bytes();
        let public = PublicIdentity {
            node: NodeKey(signing.verifying_key().to_bytes()),
            encryption,
            binding: ByteArray(binding),
        };
        Self {
            signing,
            encryption_secret,
            public,
        }
    }

    /// This node's name (its ed25519 public key).
    pub fn node_key(&self) -> NodeKey {
        self.public.node
    }

    /// What this node publishes about itself.
    pub fn public(&self) -> PublicIdentity {
        self.public
    }

    /// The ed25519 seed, for building the libp2p keypair from the same key
    /// (`libp2p::identity::Keypair::ed25519_from_bytes`).
    pub fn signing_seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    /// Signs `message` with this node's ed25519 key. The message must begin with a
    /// context label of its own (as envelopes, tokens and key bindings do), so that a
    /// signature for one purpose can never be taken for another.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    pub(crate) fn encryption_secret(&self) -> &KemPrivateKey {
        &self.encryption_secret
    }

    fn to_file_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut bytes = Zeroizing::new(Vec::with_capacity(KEY_FILE_BYTES));
        bytes.extend_from_slice(KEY_FILE_MAGIC);
        bytes.push(KEY_FILE_VERSION);
        bytes.extend_from_slice(&self.signing.to_bytes());
        bytes.extend_from_slice(&self.encryption_secret.to_bytes());
        let checksum = Sha256::digest(&bytes[..]);
        bytes.extend_from_slice(&checksum);
        bytes
    }

    fn from_file_bytes(path: &Path, bytes: &[u8]) -> Result<Self, IdentityError> {
        if bytes.len() < KEY_FILE_BYTES {
            return Err(IdentityError::Truncated {
                path: path.to_owned(),
                len: bytes.len(),
                expected: KEY_FILE_BYTES,
            });
        }
        if bytes.len() > KEY_FILE_BYTES || &bytes[..8] != KEY_FILE_MAGIC {
            return Err(IdentityError::Corrupt {
                path: path.to_owned(),
                reason: "it is not an AAMAS key file (wrong size or magic bytes)",
            });
        }
        if bytes[8] != KEY_FILE_VERSION {
            return Err(IdentityError::UnsupportedVersion {
                path: path.to_owned(),
                version: bytes[8],
            });
        }
        let (body, checksum) = bytes.split_at(KEY_FILE_BYTES - 32);
        if Sha256::digest(body)[..] != checksum[..] {
            return Err(IdentityError::Corrupt {
                path: path.to_owned(),
                reason: "its checksum does not match its contents",
            });
        }
        let mut signing_seed = Zeroizing::new([0u8; 32]);
        let mut encryption_secret = Zeroizing::new([0u8; 32]);
        signing_seed.copy_from_slice(&body[9..41]);
        encryption_secret.copy_from_slice(&body[41..73]);
        Ok(Self::from_secret_bytes(&signing_seed, &encryption_secret))
    }

    /// Writes the identity to `path` with owner-only permissions (0600), atomically:
    /// a temporary file in the same directory is written, synced and renamed, and the
    /// directory is synced, so a crash leaves either the old file or the new one.
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        let io = |source| IdentityError::Io {
            path: path.to_owned(),
            source,
        };
        let dir = path
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.tmp",
            path.file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_else(|| "identity.key".into())
        ));
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp).map_err(io)?;
        file.write_all(&self.to_file_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        fs::rename(&tmp, path).map_err(io)?;
        File::open(dir).and_then(|dir| dir.sync_all()).map_err(io)?;
        Ok(())
    }

    /// Reads an identity from `path`.
    ///
    /// Refuses a file that others can read or write (on Unix, any group or other
    /// permission bit), a truncated file, a file of another format or version, and a
    /// file whose checksum fails; each error names the file and what to do.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let io = |source| IdentityError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let metadata = file.metadata().map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(IdentityError::InsecurePermissions {
                    path: path.to_owned(),
                    mode,
                });
            }
        }
        // Read at most one byte past the expected size: enough to tell "too long" apart
        // without trusting the file's size.
        let mut bytes = Zeroizing::new(Vec::with_capacity(KEY_FILE_BYTES + 1));
        file.take(KEY_FILE_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        Self::from_file_bytes(path, &bytes)
    }

    /// Loads the identity at `path`, or creates and saves a new one if no file exists.
    /// Returns whether it was created. An existing but unreadable file is an error, never
    /// silently replaced: replacing it would change the node's peer id.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), IdentityError> {
        match path.try_exists() {
            Ok(true) => Ok((Self::load(path)?, false)),
            Ok(false) => {
                let identity = Self::generate()?;
                identity.save(path)?;
                Ok((identity, true))
            }
            Err(source) => Err(IdentityError::Io {
                path: path.to_owned(),
                source,
            }),
        }
    }
}

/// Errors of loading, saving or checking an identity.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The key file is readable or writable by others.
    #[error(
        "key file {path} has permissions {mode:o}, so other users can read or change it; \
         run `chmod 600 {path}` (and check who had access: the key may be compromised)"
    )]
    InsecurePermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file is shorter than a key file.
    #[error(
        "key file {path} is truncated ({len} of {expected} bytes); restore it from a backup, \
         or move it away to create a new identity (the node then gets a new peer id and must \
         join the mesh again)"
    )]
    Truncated {
        /// The key file.
        path: PathBuf,
        /// Its length.
        len: usize,
        /// The length of a key file.
        expected: usize,
    },
    /// The key file is not a valid key file.
    #[error(
        "key file {path} is corrupt: {reason}; restore it from a backup, or move it away to \
         create a new identity (the node then gets a new peer id and must join the mesh again)"
    )]
    Corrupt {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The key file was written by another version of AAMAS.
    #[error(
        "key file {path} has format version {version}, this build reads version 1; \
         run the AAMAS version that wrote it"
    )]
    UnsupportedVersion {
        /// The key file.
        path: PathBuf,
        /// The version byte found.
        version: u8,
    },
    /// A public identity's node key is not a valid ed25519 point.
    #[error("the node key is not a valid ed25519 public key")]
    BadNodeKey,
    /// A public identity's encryption key is not signed by its node key.
    #[error("the encryption key of {node} is not signed by that node")]
    BadBinding {
        /// The node whose binding failed.
        node: NodeKey,
    },
    /// The operating system's random number generator failed.
    #[error(transparent)]
    Random(#[from] RandomError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_key_path() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("identity.key");
        (dir, path)
    }

    #[test]
    fn save_then_load_gives_the_same_identity_with_owner_only_permissions() {
        let (_dir, path) = temp_key_path();
        let (identity, created) = Identity::load_or_create(&path).expect("create");
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let (again, created) = Identity::load_or_create(&path).expect("load");
        assert!(!created);
        assert_eq!(again.public(), identity.public());
        assert_eq!(*again.signing_seed(), *identity.signing_seed());
    }

    #[test]
    fn public_identity_binding_verifies_and_detects_substitution() {
        let alice = Identity::generate().expect("rng");
        let mallory = Identity::generate().expect("rng");
        alice.public().verify().expect("own binding verifies");
        let mut forged = alice.public();
        forged.encryption = mallory.public().encryption;
        assert!(matches!(
            forged.verify(),
            Err(IdentityError::BadBinding { node }) if node == alice.node_key()
        ));
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_key_file_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt as _;
        let (_dir, path) = temp_key_path();
        Identity::generate()
            .expect("rng")
            .save(&path)
            .expect("save");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        let error = Identity::load(&path).expect_err("must refuse");
        assert!(matches!(
            error,
            IdentityError::InsecurePermissions { mode: 0o644, .. }
        ));
        let text = error.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("chmod 600"), "{text}");
    }

    #[test]
    fn truncated_key_file_is_refused() {
        let (_dir, path) = temp_key_path();
        Identity::generate()
            .expect("rng")
            .save(&path)
            .expect("save");
        let bytes = fs::read(&path).expect("read");
        fs::write(&path, &bytes[..50]).expect("truncate");
        let error = Identity::load(&path).expect_err("must refuse");
        assert!(
            matches!(error, IdentityError::Truncated { len: 50, .. }),
            "{error}"
        );
        assert!(error.to_string().contains(&path.display().to_string()));
    }

    #[test]
    fn every_corrupted_byte_is_detected() {
        let (_dir, path) = temp_key_path();
        Identity::generate()
            .expect("rng")
            .save(&path)
            .expect("save");
        let original = fs::read(&path).expect("read");
        for index in 0..original.len() {
            let mut bytes = original.clone();
            bytes[index] ^= 0x01;
            let error = Identity::from_file_bytes(&path, &bytes).expect_err("corruption");
            match index {
                8 => assert!(matches!(error, IdentityError::UnsupportedVersion { .. })),
                _ => assert!(matches!(error, IdentityError::Corrupt { .. }), "{error}"),
            }
        }
        let mut longer = original.clone();
        longer.push(0);
        assert!(matches!(
            Identity::from_file_bytes(&path, &longer),
            Err(IdentityError::Corrupt { .. })
        ));
    }

    #[test]
    fn missing_directory_is_an_io_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("no-such-dir").join("identity.key");
        let error = Identity::generate()
            .expect("rng")
            .save(&path)
            .expect_err("no dir");
        assert!(matches!(error, IdentityError::Io { .. }));
        assert!(error.to_string().contains("identity.key"));
    }
}
