//! The HPKE suite that wraps content keys — base mode, DHKEM(X25519, HKDF-SHA256),
//! HKDF-SHA256, ChaCha20-Poly1305 — against RFC 9180 Appendix A.2.1.
//!
//! The `hpke` crate does not ship the RFC's vectors in its package, so they are kept in
//! `tests/data/rfc9180_a2_1.json`, copied from the RFC's text (every value, including
//! the derived ones, was recomputed independently when the file was made). Both
//! directions are checked: the sender, with its ephemeral key fixed to the RFC's
//! `ikmE`, must produce the RFC's `enc` and ciphertexts; the receiver must open them
//! and export the RFC's values.

use std::convert::Infallible;

use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hpke::aead::ChaCha20Poly1305 as Suite;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable as _, Kem as _, OpModeR, OpModeS, Serializable as _};
use serde::Deserialize;

#[derive(Deserialize)]
struct Vector {
    mode: u8,
    kem_id: u16,
    kdf_id: u16,
    aead_id: u16,
    info: String,
    #[serde(rename = "ikmE")]
    ikm_e: String,
    #[serde(rename = "pkEm")]
    pk_em: String,
    #[serde(rename = "skEm")]
    sk_em: String,
    #[serde(rename = "ikmR")]
    ikm_r: String,
    #[serde(rename = "pkRm")]
    pk_rm: String,
    #[serde(rename = "skRm")]
    sk_rm: String,
    enc: String,
    key: String,
    base_nonce: String,
    encryptions: Vec<Encryption>,
    exports: Vec<Export>,
}

#[derive(Deserialize)]
struct Encryption {
    seq: u64,
    aad: String,
    pt: String,
    nonce: String,
    ct: String,
}

#[derive(Deserialize)]
struct Export {
    exporter_context: String,
    #[serde(rename = "L")]
    length: usize,
    exported_value: String,
}

fn vector() -> Vector {
    let text = include_str!("data/rfc9180_a2_1.json");
    serde_json::from_str(text).expect("vector file parses")
}

fn h(text: &str) -> Vec<u8> {
    hex::decode(text).expect("hex")
}

/// An "RNG" that returns fixed bytes: makes the sender's ephemeral key the RFC's.
struct Replay(Vec<u8>);

impl hpke::rand_core::TryRng for Replay {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        unreachable!("HPKE only asks for bytes")
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        unreachable!("HPKE only asks for bytes")
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        assert!(
            dst.len() <= self.0.len(),
            "asked for more than the vector holds"
        );
        let rest = self.0.split_off(dst.len());
        dst.copy_from_slice(&self.0);
        self.0 = rest;
        Ok(())
    }
}

impl hpke::rand_core::TryCryptoRng for Replay {}

#[test]
fn the_vector_is_for_our_suite() {
    let v = vector();
    assert_eq!((v.mode, v.kem_id, v.kdf_id, v.aead_id), (0, 32, 1, 3));
    assert_eq!(X25519HkdfSha256::KEM_ID, v.kem_id);
}

#[test]
fn key_derivation_matches_rfc_9180() {
    let v = vector();
    // The crate keeps X25519 secrets clamped (RFC 9180 §7.1.2: DeserializePrivateKey
    // clamps), while the RFC prints them unclamped: compare both as deserialised.
    let clamped = |hex: &str| {
        <X25519HkdfSha256 as hpke::Kem>::PrivateKey::from_bytes(&h(hex))
            .expect("secret key")
            .to_bytes()
    };
    let (sk_r, pk_r) = X25519HkdfSha256::derive_keypair(&h(&v.ikm_r));
    assert_eq!(sk_r.to_bytes(), clamped(&v.sk_rm));
    assert_eq!(pk_r.to_bytes().to_vec(), h(&v.pk_rm));
    let (sk_e, pk_e) = X25519HkdfSha256::derive_keypair(&h(&v.ikm_e));
    assert_eq!(sk_e.to_bytes(), clamped(&v.sk_em));
    assert_eq!(pk_e.to_bytes().to_vec(), h(&v.pk_em));
}

#[test]
fn sender_produces_the_rfc_encapsulation_and_ciphertexts() {
    let v = vector();
    let pk_r = <X25519HkdfSha256 as hpke::Kem>::PublicKey::from_bytes(&h(&v.pk_rm)).expect("pkR");
    let mut rng = Replay(h(&v.ikm_e));
    let (enc, mut context) = hpke::setup_sender_with_rng::<Suite, HkdfSha256, X25519HkdfSha256>(
        &OpModeS::Base,
        &pk_r,
        &h(&v.info),
        &mut rng,
    )
    .expect("setup sender");
    assert_eq!(enc.to_bytes().to_vec(), h(&v.enc));
    // The context's sequence counter advances one per seal: seal dummies for the
    // sequence numbers the RFC leaves out, and compare those it lists.
    let mut next = 0u64;
    for encryption in &v.encryptions {
        while next < encryption.seq {
            context.seal(b"", b"").expect("seal");
            next += 1;
        }
        let ct = context
            .seal(&h(&encryption.pt), &h(&encryption.aad))
            .expect("seal");
        assert_eq!(ct, h(&encryption.ct), "sequence {}", encryption.seq);
        next += 1;
    }
}

#[test]
fn receiver_opens_the_rfc_ciphertexts_and_exports_its_values() {
    let v = vector();
    let sk_r = <X25519HkdfSha256 as hpke::Kem>::PrivateKey::from_bytes(&h(&v.sk_rm)).expect("skR");
    let enc = <X25519HkdfSha256 as hpke::Kem>::EncappedKey::from_bytes(&h(&v.enc)).expect("enc");
    let mut context = hpke::setup_receiver::<Suite, HkdfSha256, X25519HkdfSha256>(
        &OpModeR::Base,
        &sk_r,
        &enc,
        &h(&v.info),
    )
    .expect("setup receiver");
    for export in &v.exports {
        let mut out = vec![0u8; export.length];
        context
            .export(&h(&export.exporter_context), &mut out)
            .expect("export");
        assert_eq!(out, h(&export.exported_value));
    }
    // Sequence numbers must be opened in order; the first ones are consecutive.
    for (expected_seq, encryption) in v
        .encryptions
        .iter()
        .take_while({
            let mut seq = 0;
            move |e| {
                let ok = e.seq == seq;
                seq += 1;
                ok
            }
        })
        .enumerate()
    {
        assert_eq!(encryption.seq, expected_seq as u64);
        let pt = context
            .open(&h(&encryption.ct), &h(&encryption.aad))
            .expect("open");
        assert_eq!(pt, h(&encryption.pt));
    }
    // Every listed ciphertext also opens with the RFC's key and nonce directly, and the
    // nonce is base_nonce XOR seq as RFC 9180 §5.2 says.
    let base_nonce = h(&v.base_nonce);
    let aead = ChaCha20Poly1305::new(&Key::try_from(h(&v.key).as_slice()).expect("key"));
    for encryption in &v.encryptions {
        let mut nonce = base_nonce.clone();
        for (byte, seq_byte) in nonce
            .iter_mut()
            .rev()
            .zip(encryption.seq.to_be_bytes().iter().rev())
        {
            *byte ^= seq_byte;
        }
        assert_eq!(nonce, h(&encryption.nonce), "sequence {}", encryption.seq);
        let pt = aead
            .decrypt(
                &Nonce::try_from(nonce.as_slice()).expect("nonce"),
                Payload {
                    msg: &h(&encryption.ct),
                    aad: &h(&encryption.aad),
                },
            )
            .expect("decrypt");
        assert_eq!(pt, h(&encryption.pt));
    }
}
