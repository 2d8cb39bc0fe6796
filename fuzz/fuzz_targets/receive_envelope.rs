//! Decoding and verifying an envelope: whatever the bytes, the receive pipeline returns
//! a verdict and never panics, and a decoded header always re-inspects the same way.
//!
//! The fixed mesh and members come from constant secrets, so a crash reproduces from
//! its input alone. Inputs whose first byte is odd are applied as edits to a valid
//! envelope (so the fuzzer explores past the signature check's input parsing); even
//! ones are fed as they are.
#![no_main]

use std::sync::OnceLock;

use aamas_protocol::*;
use libfuzzer_sys::fuzz_target;

const NOW_MS: u64 = 1_750_000_000_000;

struct World {
    mesh: MeshId,
    recipient: Identity,
    roster: Roster,
    valid: Vec<u8>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let mesh = MeshId([1; 16]);
        let sender = Identity::from_secret_bytes(&[2; 32], &[3; 32]);
        let recipient = Identity::from_secret_bytes(&[4; 32], &[5; 32]);
        let mut roster = Roster::new();
        roster.insert(sender.public()).expect("valid member");
        roster.insert(recipient.public()).expect("valid member");
        roster.insert_group_key(GroupKey::from_bytes(1, [6; 32]));
        let valid = Sealer::new(mesh, Limits::default(), NOW_MS)
            .seal(
                &sender,
                NOW_MS,
                Outgoing {
                    topic: "aamas/1/fuzz/all",
                    payload: &Payload::Command(Command {
                        priority: Priority::Normal,
                        action: "assign_task".into(),
                        body: b"fuzz".to_vec(),
                    }),
                    to: To::Members(&[recipient.public()]),
                    ttl_ms: 60_000,
                },
            )
            .expect("seal")
            .bytes;
        World {
            mesh,
            recipient,
            roster,
            valid,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let world = world();
    let input: Vec<u8> = match data.split_first() {
        Some((mode, edits)) if mode % 2 == 1 => {
            let mut bytes = world.valid.clone();
            for edit in edits.chunks_exact(3) {
                let at = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % bytes.len();
                bytes[at] = edit[2];
            }
            bytes
        }
        _ => data.to_vec(),
    };
    let mut receiver = Receiver::new(world.mesh, ReceiverConfig::default());
    let verdict = receiver.receive(NOW_MS, &input, &world.recipient, &world.roster);
    if let Err(rejection) = &verdict {
        let _ = (rejection.reason(), rejection.disposition());
    }
    if let Ok(header) = inspect(&input, Limits::default()) {
        assert_eq!(inspect(&input, Limits::default()).ok(), Some(header));
    }
    // Only the untouched envelope may be accepted.
    if verdict.is_ok() {
        assert_eq!(input, world.valid);
    }
});
