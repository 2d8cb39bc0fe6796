//! The protocol's identity is the identity libp2p uses: the same ed25519 seed gives the
//! same public key and the same `PeerId` on both sides.

use aamas_protocol::{Identity, NodeKey};

#[test]
fn protocol_identity_and_libp2p_keypair_agree_on_the_peer_id() {
    for _ in 0..32 {
        let identity = Identity::generate().expect("rng");
        let mut seed = *identity.signing_seed();
        let keypair =
            libp2p_identity::Keypair::ed25519_from_bytes(&mut seed).expect("ed25519 seed");
        let peer_id = keypair.public().to_peer_id();
        assert_eq!(peer_id.to_bytes(), identity.node_key().peer_id_bytes());
        assert_eq!(peer_id.to_base58(), identity.node_key().peer_id());
        assert_eq!(
            NodeKey::from_peer_id(&peer_id.to_base58()),
            Some(identity.node_key())
        );
        let public = keypair.public().try_into_ed25519().expect("ed25519 key");
        assert_eq!(public.to_bytes(), identity.node_key().0);
    }
}

#[test]
fn a_key_file_reloads_to_the_same_peer_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("identity.key");
    let (created, was_created) = Identity::load_or_create(&path).expect("create");
    assert!(was_created);
    let (loaded, was_created) = Identity::load_or_create(&path).expect("load");
    assert!(!was_created);
    let mut seed = *loaded.signing_seed();
    let keypair = libp2p_identity::Keypair::ed25519_from_bytes(&mut seed).expect("seed");
    assert_eq!(
        keypair.public().to_peer_id().to_base58(),
        created.node_key().peer_id()
    );
}
