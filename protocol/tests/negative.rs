//! Negative tests: every way an envelope can be wrong is refused with its own error, and
//! nothing makes the pipeline panic.

mod common;

use aamas_protocol::*;
use common::*;
use proptest::prelude::*;

fn receive(
    mesh: &Mesh,
    receiver: &mut Receiver,
    bytes: &[u8],
    now_ms: u64,
) -> Result<Delivery, Rejection> {
    receiver.receive(now_ms, bytes, &mesh.members[1], &mesh.roster)
}

#[test]
fn every_flipped_bit_is_rejected_with_the_error_of_its_field() {
    let mesh = Mesh::new(3);
    let sealed = mesh.seal_for(&mut mesh.sealer(), &command(b"one bit at a time"), &[1, 2]);
    let len = sealed.bytes.len();
    let signature_start = len - SIGNATURE_BYTES;
    for bit in 0..len * 8 {
        let mut bytes = sealed.bytes.clone();
        bytes[bit / 8] ^= 1 << (bit % 8);
        let result = receive(&mesh, &mut mesh.receiver(), &bytes, NOW_MS);
        let error = match result {
            Ok(delivery) => panic!("bit {bit} flipped and accepted: {delivery:?}"),
            Err(error) => error,
        };
        let byte = bit / 8;
        let ok = match byte {
            0 => matches!(error, Rejection::UnsupportedVersion { .. }),
            1..=16 => matches!(error, Rejection::WrongMesh { .. }),
            // The sender key: the flipped key is no member.
            33..=64 => matches!(error, Rejection::UnknownSender { .. }),
            _ if byte >= signature_start => matches!(error, Rejection::BadSignature { .. }),
            // Message id and the rest of header and body: either the structure breaks
            // (a length or tag changed) or it still parses and the signature fails.
            _ => matches!(
                error,
                Rejection::BadSignature { .. }
                    | Rejection::Truncated { .. }
                    | Rejection::Malformed { .. }
                    | Rejection::TrailingBytes { .. }
                    | Rejection::KeyListMismatch { .. }
                    | Rejection::TooManyRecipients { .. }
                    | Rejection::TopicTooLong { .. }
            ),
        };
        assert!(ok, "bit {bit} (byte {byte} of {len}) gave {error:?}");
    }
}

#[test]
fn wrong_mesh_is_rejected_and_penalised() {
    let mesh = Mesh::new(2);
    let sealed = mesh.seal_for(&mut mesh.sealer(), &command(b"hi"), &[1]);
    let other = MeshId::random().expect("rng");
    let mut receiver = Receiver::new(other, ReceiverConfig::default());
    let error = receive(&mesh, &mut receiver, &sealed.bytes, NOW_MS).expect_err("foreign mesh");
    assert_eq!(
        error,
        Rejection::WrongMesh {
            expected: other,
            found: mesh.id
        }
    );
    assert_eq!(error.disposition(), Disposition::Reject);
}

#[test]
fn replayed_message_is_rejected_without_penalty() {
    let mesh = Mesh::new(2);
    let sealed = mesh.seal_for(&mut mesh.sealer(), &command(b"once"), &[1]);
    let mut receiver = mesh.receiver();
    receive(&mesh, &mut receiver, &sealed.bytes, NOW_MS).expect("first copy");
    let error = receive(&mesh, &mut receiver, &sealed.bytes, NOW_MS + 10).expect_err("second copy");
    assert_eq!(error, Rejection::Replayed { id: sealed.id });
    assert_eq!(error.disposition(), Disposition::Ignore);
}

#[test]
fn replay_is_caught_by_sequence_after_the_id_cache_forgot_it() {
    let mesh = Mesh::new(2);
    let mut sealer = mesh.sealer();
    let first = mesh.seal_for(&mut sealer, &command(b"first"), &[1]);
    let config = ReceiverConfig {
        max_seen_ids: 1,
        ..ReceiverConfig::default()
    };
    let mut receiver = Receiver::new(mesh.id, config);
    receive(&mesh, &mut receiver, &first.bytes, NOW_MS).expect("first");
    // A second message pushes the first id out of the one-entry cache.
    let second = mesh.seal_for(&mut sealer, &command(b"second"), &[1]);
    receive(&mesh, &mut receiver, &second.bytes, NOW_MS).expect("second");
    let error = receive(&mesh, &mut receiver, &first.bytes, NOW_MS).expect_err("replay");
    assert_eq!(
        error,
        Rejection::DuplicateSequence {
            sequence: first.sequence
        }
    );
}

#[test]
fn a_sequence_number_used_twice_is_rejected() {
    // Two sealers started at the same millisecond hand out the same numbers, as a
    // sender that reused its sequence (or a forger replaying with a new id) would.
    let mesh = Mesh::new(2);
    let a = mesh.seal_for(&mut mesh.sealer(), &command(b"a"), &[1]);
    let b = mesh.seal_for(&mut mesh.sealer(), &command(b"b"), &[1]);
    assert_eq!(a.sequence, b.sequence);
    let mut receiver = mesh.receiver();
    receive(&mesh, &mut receiver, &a.bytes, NOW_MS).expect("a");
    assert_eq!(
        receive(&mesh, &mut receiver, &b.bytes, NOW_MS),
        Err(Rejection::DuplicateSequence {
            sequence: b.sequence
        })
    );
}

#[test]
fn a_sequence_far_behind_the_newest_is_stale() {
    let mesh = Mesh::new(2);
    let old = mesh.seal_for(&mut mesh.sealer(), &command(b"old"), &[1]);
    // A later run of the same sender starts 1 ms later: its numbers are 2^20 higher.
    let mut later = Sealer::new(mesh.id, Limits::default(), NOW_MS + 1);
    let new = mesh.seal_for(&mut later, &command(b"new"), &[1]);
    let mut receiver = mesh.receiver();
    receive(&mesh, &mut receiver, &new.bytes, NOW_MS).expect("new");
    assert_eq!(
        receive(&mesh, &mut receiver, &old.bytes, NOW_MS),
        Err(Rejection::StaleSequence {
            sequence: old.sequence,
            newest: new.sequence
        })
    );
}

#[test]
fn expired_message_is_rejected_at_and_after_its_expiry() {
    let mesh = Mesh::new(2);
    let sealed = mesh.seal_for(&mut mesh.sealer(), &command(b"late"), &[1]);
    let expires_ms = NOW_MS + TTL_MS;
    for now_ms in [expires_ms, expires_ms + 1, u64::MAX] {
        assert_eq!(
            receive(&mesh, &mut mesh.receiver(), &sealed.bytes, now_ms),
            Err(Rejection::Expired { expires_ms, now_ms })
        );
    }
    receive(&mesh, &mut mesh.receiver(), &sealed.bytes, expires_ms - 1).expect("just in time");
}

#[test]
fn message_from_the_future_beyond_clock_skew_is_rejected() {
    let mesh = Mesh::new(2);
    let sealed = mesh.seal_for(&mut mesh.sealer(), &command(b"early"), &[1]);
    let skew = ReceiverConfig::default().max_clock_skew_ms;
    let now_ms = NOW_MS - skew - 1;
    assert_eq!(
        receive(&mesh, &mut mesh.receiver(), &sealed.bytes, now_ms),
        Err(Rejection::NotYetValid {
            created_ms: NOW_MS,
            now_ms
        })
    );
    receive(&mesh, &mut mesh.receiver(), &sealed.bytes, NOW_MS - skew).expect("within skew");
}

#[test]
fn lifetime_longer_than_allowed_is_rejected() {
    let mesh = Mesh::new(2);
    let max = ReceiverConfig::default().max_lifetime_ms;
    let to = [mesh.members[1].public()];
    let sealed = mesh
        .seal_as(&mesh.members[0], &command(b""), To::Members(&to), max + 1)
        .expect("seal");
    assert_eq!(
        receive(&mesh, &mut mesh.receiver(), &sealed.bytes, NOW_MS),
        Err(Rejection::BadLifetime {
            lifetime_ms: max + 1,
            max
        })
    );
}

#[test]
fn non_member_sender_is_rejected_before_any_crypto() {
    let mesh = Mesh::new(2);
    let to = [mesh.members[1].public()];
    let sealed = mesh
        .seal_as(
            &mesh.outsider,
            &command(b"let me in"),
            To::Members(&to),
            TTL_MS,
        )
        .expect("seal");
    assert_eq!(
        receive(&mesh, &mut mesh.receiver(), &sealed.bytes, NOW_MS),
        Err(Rejection::UnknownSender {
            sender: mesh.outsider.node_key()
        })
    );
}

#[test]
fn a_signature_by_another_key_is_rejected() {
    // Member 2 signs an envelope; then the sender field is rewritten to member 0.
    // postcard writes the sender at a fixed offset (after version, mesh and id).
    let mesh = Mesh::new(3);
    let to = [mesh.members[1].public()];
    let sealed = mesh
        .seal_as(
            &mesh.members[2],
            &command(b"impersonation"),
            To::Members(&to),
            TTL_MS,
        )
        .expect("seal");
    let mut bytes = sealed.bytes.clone();
    assert_eq!(&bytes[33..65], &mesh.members[2].node_key().0);
    bytes[33..65].copy_from_slice(&mesh.members[0].node_key().0);
    assert_eq!(
        receive(&mesh, &mut mesh.receiver(), &bytes, NOW_MS),
        Err(Rejection::BadSignature {
            sender: mesh.members[0].node_key()
        })
    );
}

#[test]
fn oversized_input_is_rejected_by_length_alone() {
    let mesh = Mesh::new(2);
    let max = Limits::default().max_message_bytes;
    // Valid version byte, then garbage: only the length may be looked at.
    let mut bytes = vec![0xff; max + 1];
    bytes[0] = PROTOCOL_VERSION;
    assert_eq!(
        receive(&mesh, &mut mesh.receiver(), &bytes, NOW_MS),
        Err(Rejection::Oversized { len: max + 1, max })
    );
    // The sealer refuses to make what receivers would refuse.
    let big = command(&vec![0u8; max]);
    let to = [mesh.members[1].public()];
    let error = mesh
        .seal_as(&mesh.members[0], &big, To::Members(&to), TTL_MS)
        .expect_err("too large");
    assert!(
        matches!(error, SealError::TooLarge { max: m, .. } if m == max),
        "{error}"
    );
}

#[test]
fn every_truncation_is_reported_as_truncated() {
    let mesh = Mesh::new(3);
    let sealed = mesh.seal_for(&mut mesh.sealer(), &command(b"cut me"), &[1, 2]);
    for len in 0..sealed.bytes.len() {
        let result = receive(&mesh, &mut mesh.receiver(), &sealed.bytes[..len], NOW_MS);
        assert_eq!(
            result,
            Err(Rejection::Truncated { len }),
            "prefix of {len} bytes"
        );
    }
}

#[test]
fn too_many_recipients_are_rejected_by_the_configured_limit() {
    let mesh = Mesh::new(7);
    let sealed = mesh.seal_for(
        &mut mesh.sealer(),
        &command(b"all of you"),
        &[1, 2, 3, 4, 5, 6],
    );
    let config = ReceiverConfig {
        limits: Limits {
            max_recipients: 5,
            ..Limits::default()
        },
        ..ReceiverConfig::default()
    };
    let mut receiver = Receiver::new(mesh.id, config);
    assert_eq!(
        receive(&mesh, &mut receiver, &sealed.bytes, NOW_MS),
        Err(Rejection::TooManyRecipients { count: 6, max: 5 })
    );
}

#[test]
fn group_messages_need_the_right_epoch_and_key() {
    let mut mesh = Mesh::new(2);
    let key = GroupKey::generate(3).expect("rng");
    let sealed = mesh
        .seal_as(
            &mesh.members[0],
            &command(b"everyone"),
            To::Group(&key),
            TTL_MS,
        )
        .expect("seal");
    assert_eq!(
        receive(&mesh, &mut mesh.receiver(), &sealed.bytes, NOW_MS),
        Err(Rejection::UnknownGroupEpoch { epoch: 3 })
    );
    // A different key under the same epoch number does not unwrap.
    mesh.roster
        .insert_group_key(GroupKey::generate(3).expect("rng"));
    assert_eq!(
        receive(&mesh, &mut mesh.receiver(), &sealed.bytes, NOW_MS),
        Err(Rejection::KeyUnwrapFailed)
    );
    // Old epochs are forgotten after GROUP_KEY_EPOCHS_KEPT rotations.
    for epoch in 4..4 + GROUP_KEY_EPOCHS_KEPT as u64 {
        mesh.roster
            .insert_group_key(GroupKey::generate(epoch).expect("rng"));
    }
    assert_eq!(
        receive(&mesh, &mut mesh.receiver(), &sealed.bytes, NOW_MS),
        Err(Rejection::UnknownGroupEpoch { epoch: 3 })
    );
}

#[test]
fn sealer_refuses_bad_requests_with_clear_errors() {
    let mesh = Mesh::new(3);
    let payload = command(b"");
    let seal = |to: To<'_>, topic: &str, ttl_ms: u64| {
        mesh.sealer().seal(
            &mesh.members[0],
            NOW_MS,
            Outgoing {
                topic,
                payload: &payload,
                to,
                ttl_ms,
            },
        )
    };
    let one = [mesh.members[1].public()];
    assert!(matches!(
        seal(To::Members(&[]), "t", TTL_MS),
        Err(SealError::NoRecipients)
    ));
    let twice = [mesh.members[1].public(), mesh.members[1].public()];
    assert!(matches!(
        seal(To::Members(&twice), "t", TTL_MS),
        Err(SealError::DuplicateRecipient { node }) if node == mesh.members[1].node_key()
    ));
    let long_topic = "x".repeat(MAX_TOPIC_BYTES + 1);
    assert!(matches!(
        seal(To::Members(&one), &long_topic, TTL_MS),
        Err(SealError::TopicTooLong { .. })
    ));
    assert!(matches!(
        seal(To::Members(&one), "t", 0),
        Err(SealError::BadTtl { ttl_ms: 0 })
    ));
    assert!(matches!(
        seal(To::Members(&one), "t", u64::MAX),
        Err(SealError::BadTtl { .. })
    ));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_and_are_never_accepted(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mesh = shared_mesh();
        prop_assert!(mesh.receiver().receive(NOW_MS, &bytes, &mesh.members[1], &mesh.roster).is_err());
        // With a valid version byte the decoder gets further.
        let mut versioned = bytes.clone();
        versioned.insert(0, PROTOCOL_VERSION);
        prop_assert!(mesh.receiver().receive(NOW_MS, &versioned, &mesh.members[1], &mesh.roster).is_err());
        let _ = inspect(&versioned, Limits::default());
    }

    #[test]
    fn random_edits_of_a_valid_envelope_are_never_accepted(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let (mesh, sealed) = shared_envelope();
        let mut bytes = sealed.clone();
        for (index, value) in &edits {
            let at = index.index(bytes.len());
            bytes[at] = *value;
        }
        prop_assume!(bytes != *sealed);
        prop_assert!(mesh.receiver().receive(NOW_MS, &bytes, &mesh.members[1], &mesh.roster).is_err());
    }
}

fn shared_mesh() -> &'static Mesh {
    static MESH: std::sync::OnceLock<Mesh> = std::sync::OnceLock::new();
    MESH.get_or_init(|| Mesh::new(2))
}

fn shared_envelope() -> (&'static Mesh, &'static Vec<u8>) {
    static SEALED: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let mesh = shared_mesh();
    let sealed = SEALED.get_or_init(|| {
        mesh.seal_for(&mut mesh.sealer(), &command(b"edit me"), &[1])
            .bytes
    });
    (mesh, sealed)
}
