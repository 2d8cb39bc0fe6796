//! Hostile lengths cost no memory: the decoder rejects oversized input, and input whose
//! length prefixes claim huge recipient lists, key lists or ciphertexts, without
//! allocating anything.
//!
//! This binary installs a counting global allocator, so it holds one test only: tests
//! running in parallel threads would count each other's allocations.

mod common;

use std::alloc::System;

use aamas_protocol::*;
use common::*;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Postcard's varint (LEB128) encoding of `value`.
fn varint(mut value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// A header up to the audience, as postcard lays it out.
fn header_prefix(mesh: MeshId, sender: NodeKey) -> Vec<u8> {
    let mut bytes = vec![PROTOCOL_VERSION];
    bytes.extend_from_slice(&mesh.0);
    bytes.extend_from_slice(&[9; 16]); // message id
    bytes.extend_from_slice(&sender.0);
    bytes.extend(varint(1)); // sequence
    bytes.extend(varint(NOW_MS)); // created
    bytes.extend(varint(NOW_MS + TTL_MS)); // expires
    bytes.push(0); // kind: Command
    bytes.extend(varint(1));
    bytes.push(b't'); // topic "t"
    bytes
}

/// A name, the hostile input, and the rejection it must get.
type Case = (&'static str, Vec<u8>, fn(&Rejection) -> bool);

#[test]
fn hostile_lengths_are_rejected_without_allocating() {
    let mesh = Mesh::new(2);
    let me = &mesh.members[1];
    let sender = mesh.members[0].node_key();
    let max = Limits::default().max_message_bytes;

    let mut cases: Vec<Case> = Vec::new();

    let mut oversized = vec![0u8; 64 << 20];
    oversized[0] = PROTOCOL_VERSION;
    cases.push(("64 MiB input", oversized, |e| {
        matches!(e, Rejection::Oversized { .. })
    }));

    // Audience::Members claiming 2^60 bytes of recipients.
    let mut huge_recipients = header_prefix(mesh.id, sender);
    huge_recipients.push(0); // Members
    huge_recipients.extend(varint(1 << 60));
    huge_recipients.extend_from_slice(&[0u8; 200]);
    cases.push(("2^60-byte recipient list", huge_recipients, |e| {
        matches!(e, Rejection::Truncated { .. })
    }));

    // 300 recipients really present: over the limit of 256.
    let mut many_recipients = header_prefix(mesh.id, sender);
    many_recipients.push(0);
    many_recipients.extend(varint(300 * 32));
    many_recipients.extend(std::iter::repeat_n(7u8, 300 * 32));
    many_recipients.extend(varint(300 * HPKE_WRAP_BYTES as u64));
    many_recipients.extend(std::iter::repeat_n(0u8, 300 * HPKE_WRAP_BYTES));
    many_recipients.extend(varint(0));
    many_recipients.extend_from_slice(&[0u8; 64]);
    assert!(many_recipients.len() <= max);
    cases.push(("300 recipients", many_recipients, |e| {
        matches!(
            e,
            Rejection::TooManyRecipients {
                count: 300,
                max: 256
            }
        )
    }));

    // A group envelope whose ciphertext claims 2^40 bytes.
    let mut huge_ciphertext = header_prefix(mesh.id, sender);
    huge_ciphertext.push(1); // Group
    huge_ciphertext.extend(varint(5)); // epoch
    huge_ciphertext.extend(varint(GROUP_WRAP_BYTES as u64));
    huge_ciphertext.extend(std::iter::repeat_n(0u8, GROUP_WRAP_BYTES));
    huge_ciphertext.extend(varint(1 << 40));
    huge_ciphertext.extend_from_slice(&[0u8; 100]);
    cases.push(("2^40-byte ciphertext", huge_ciphertext, |e| {
        matches!(e, Rejection::Truncated { .. })
    }));

    // A topic claiming 2^62 bytes.
    let mut huge_topic = header_prefix(mesh.id, sender);
    huge_topic.truncate(huge_topic.len() - 2);
    huge_topic.extend(varint(1 << 62));
    huge_topic.extend_from_slice(&[b'a'; 100]);
    cases.push(("2^62-byte topic", huge_topic, |e| {
        matches!(e, Rejection::Truncated { .. })
    }));

    let mut receiver = mesh.receiver();
    for (name, bytes, expected) in &cases {
        let region = Region::new(GLOBAL);
        let result = receiver.receive(NOW_MS, bytes, me, &mesh.roster);
        let stats = region.change();
        let error = result.expect_err(name);
        assert!(expected(&error), "{name}: got {error:?}");
        assert_eq!(
            stats.bytes_allocated, 0,
            "{name}: rejecting it allocated {} bytes in {} allocations",
            stats.bytes_allocated, stats.allocations
        );
        let region = Region::new(GLOBAL);
        let inspected = inspect(bytes, Limits::default());
        assert!(inspected.is_err(), "{name}");
        assert_eq!(
            region.change().bytes_allocated,
            0,
            "{name}: inspect allocated"
        );
    }
}
