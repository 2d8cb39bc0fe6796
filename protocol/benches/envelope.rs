//! Cost of sealing and receiving a 1 KiB payload, against raw ed25519 in the same run.
//!
//! Run: `cargo bench -p aamas-protocol --bench envelope`
//! Figures and the ratio to the bound are kept in `docs/PERFORMANCE.md`.

use std::hint::black_box;

use aamas_protocol::*;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use ed25519_dalek::{Signer as _, SigningKey};

const NOW_MS: u64 = 1_750_000_000_000;

fn payload() -> Payload {
    Payload::Command(Command {
        priority: Priority::Normal,
        action: "assign_task".into(),
        body: vec![0x5a; 1024],
    })
}

struct Fixture {
    mesh: MeshId,
    sender: Identity,
    recipients: Vec<Identity>,
    roster: Roster,
}

fn fixture(recipients: usize) -> Fixture {
    let mesh = MeshId::random().expect("rng");
    let sender = Identity::generate().expect("rng");
    let recipients: Vec<Identity> = (0..recipients)
        .map(|_| Identity::generate().expect("rng"))
        .collect();
    let mut roster = Roster::new();
    roster.insert(sender.public()).expect("member");
    for recipient in &recipients {
        roster.insert(recipient.public()).expect("member");
    }
    Fixture {
        mesh,
        sender,
        recipients,
        roster,
    }
}

fn seal(fixture: &Fixture, sealer: &mut Sealer, payload: &Payload) -> Sealed {
    let to: Vec<PublicIdentity> = fixture.recipients.iter().map(Identity::public).collect();
    sealer
        .seal(
            &fixture.sender,
            NOW_MS,
            Outgoing {
                topic: "aamas/1/bench/state/technical",
                payload,
                to: To::Members(&to),
                ttl_ms: 60_000,
            },
        )
        .expect("seal")
}

fn bench(c: &mut Criterion) {
    let payload = payload();

    let key = SigningKey::from_bytes(&[7u8; 32]);
    let verifying = key.verifying_key();
    let message = vec![0x5au8; 1024 + 200];
    let signature = key.sign(&message);
    c.bench_function("ed25519/sign_1KiB", |b| {
        b.iter(|| key.sign(black_box(&message)))
    });
    c.bench_function("ed25519/verify_strict_1KiB", |b| {
        b.iter(|| verifying.verify_strict(black_box(&message), black_box(&signature)))
    });

    for recipients in [1usize, 5] {
        let fixture = fixture(recipients);
        let mut sealer = Sealer::new(fixture.mesh, Limits::default(), NOW_MS);
        // Warm: the sender's HPKE sessions with these recipients exist (the steady state).
        c.bench_function(
            &format!("envelope/seal_sign_1KiB_{recipients}_recipients"),
            |b| b.iter(|| seal(&fixture, &mut sealer, black_box(&payload))),
        );
        // Cold: a new sealer each time, so every recipient costs an HPKE encapsulation.
        c.bench_function(
            &format!("envelope/seal_sign_1KiB_{recipients}_recipients_new_session"),
            |b| {
                b.iter_batched(
                    || Sealer::new(fixture.mesh, Limits::default(), NOW_MS),
                    |mut sealer| seal(&fixture, &mut sealer, black_box(&payload)),
                    BatchSize::SmallInput,
                )
            },
        );
        let sealed = seal(&fixture, &mut sealer, &payload);
        println!(
            "envelope with {recipients} recipient(s): {} bytes",
            sealed.bytes.len()
        );
        // Warm: the receiver has the sender's session cached; each message is new.
        let mut receiver = Receiver::new(fixture.mesh, ReceiverConfig::default());
        c.bench_function(
            &format!("envelope/verify_open_1KiB_{recipients}_recipients"),
            |b| {
                b.iter_batched(
                    || seal(&fixture, &mut sealer, &payload),
                    |sealed| {
                        let delivery = receiver
                            .receive(
                                NOW_MS,
                                black_box(&sealed.bytes),
                                &fixture.recipients[0],
                                &fixture.roster,
                            )
                            .expect("valid");
                        assert!(matches!(delivery, Delivery::Opened(_)));
                        delivery
                    },
                    BatchSize::SmallInput,
                )
            },
        );
        // Cold: a fresh receiver, so the session key is decapsulated (one X25519).
        c.bench_function(
            &format!("envelope/verify_open_1KiB_{recipients}_recipients_new_session"),
            |b| {
                b.iter_batched(
                    || Receiver::new(fixture.mesh, ReceiverConfig::default()),
                    |mut receiver| {
                        let delivery = receiver
                            .receive(
                                NOW_MS,
                                black_box(&sealed.bytes),
                                &fixture.recipients[0],
                                &fixture.roster,
                            )
                            .expect("valid");
                        assert!(matches!(delivery, Delivery::Opened(_)));
                        delivery
                    },
                    BatchSize::SmallInput,
                )
            },
        );
    }

    // A replayed copy: the cost of refusing the commonest gossip duplicate.
    let fixture = fixture(1);
    let mut sealer = Sealer::new(fixture.mesh, Limits::default(), NOW_MS);
    let sealed = seal(&fixture, &mut sealer, &payload);
    let mut receiver = Receiver::new(fixture.mesh, ReceiverConfig::default());
    receiver
        .receive(
            NOW_MS,
            &sealed.bytes,
            &fixture.recipients[0],
            &fixture.roster,
        )
        .expect("first copy");
    c.bench_function("envelope/reject_replay_1KiB", |b| {
        b.iter(|| {
            receiver
                .receive(
                    NOW_MS,
                    black_box(&sealed.bytes),
                    &fixture.recipients[0],
                    &fixture.roster,
                )
                .expect_err("replay")
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(60).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
