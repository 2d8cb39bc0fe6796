//! A tour of the AAMAS wire protocol, run by `make demo` until the node exists.
//!
//! A governor seals a Command for two workers; each worker opens it, a third member
//! relays it without being able to read it, and the receive pipeline refuses a replay,
//! a tampered copy, a foreign mesh and an expired copy, each with its own reason.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aamas_protocol::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let now_ms = u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis())?;
    let mesh = MeshId::random()?;
    println!("mesh {mesh}");

    let names = ["governor", "worker-a", "worker-b", "bystander"];
    let identities: Vec<Identity> = names
        .iter()
        .map(|_| Identity::generate())
        .collect::<Result<_, _>>()?;
    let mut roster = Roster::new();
    for (name, identity) in names.iter().zip(&identities) {
        roster.insert(identity.public())?;
        println!("  {name:<10} peer id {}", identity.node_key());
    }
    let [governor, worker_a, worker_b, bystander] = &identities[..] else {
        unreachable!("four identities were made")
    };

    let payload = Payload::Command(Command {
        priority: Priority::High,
        action: "assign_task".into(),
        body: b"feasibility/technical-assessment".to_vec(),
    });
    let mut sealer = Sealer::new(mesh, Limits::default(), now_ms);
    let started = Instant::now();
    let sealed = sealer.seal(
        governor,
        now_ms,
        Outgoing {
            topic: &format!("aamas/1/{mesh}/state/technical"),
            payload: &payload,
            to: To::Members(&[worker_a.public(), worker_b.public()]),
            ttl_ms: 60_000,
        },
    )?;
    println!(
        "\ngovernor sealed a Command for 2 workers: {} bytes, id {}, in {:?}",
        sealed.bytes.len(),
        sealed.id,
        started.elapsed()
    );

    for (name, who) in [
        ("worker-a", worker_a),
        ("worker-b", worker_b),
        ("bystander", bystander),
    ] {
        let mut receiver = Receiver::new(mesh, ReceiverConfig::default());
        let started = Instant::now();
        match receiver.receive(now_ms + 3, &sealed.bytes, who, &roster)? {
            Delivery::Opened(opened) => {
                let content = match &opened.payload {
                    Payload::Command(command) => format!(
                        "{:?} command {:?}: {:?}",
                        command.priority,
                        command.action,
                        String::from_utf8_lossy(&command.body)
                    ),
                    other => format!("{other:?}"),
                };
                println!(
                    "  {name:<10} opened it in {:?} (debug build): {content}",
                    started.elapsed()
                )
            }
            Delivery::Relay(header) => println!(
                "  {name:<10} cannot read it; valid, so it relays message {} (kind {:?})",
                header.id, header.kind
            ),
        }
    }

    println!("\nwhat the receive pipeline refuses:");
    let mut receiver = Receiver::new(mesh, ReceiverConfig::default());
    receiver.receive(now_ms, &sealed.bytes, worker_a, &roster)?;
    let mut tampered = sealed.bytes.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x01;
    let foreign = Receiver::new(MeshId::random()?, ReceiverConfig::default());
    let cases: Vec<(&str, Result<Delivery, Rejection>)> = vec![
        (
            "the same bytes again",
            receiver.receive(now_ms, &sealed.bytes, worker_a, &roster),
        ),
        (
            "one flipped bit",
            Receiver::new(mesh, ReceiverConfig::default())
                .receive(now_ms, &tampered, worker_a, &roster),
        ),
        ("another mesh", {
            let mut foreign = foreign;
            foreign.receive(now_ms, &sealed.bytes, worker_a, &roster)
        }),
        (
            "after its expiry",
            Receiver::new(mesh, ReceiverConfig::default()).receive(
                now_ms + u64::try_from(Duration::from_secs(61).as_millis())?,
                &sealed.bytes,
                worker_a,
                &roster,
            ),
        ),
        (
            "a truncated copy",
            Receiver::new(mesh, ReceiverConfig::default()).receive(
                now_ms,
                &sealed.bytes[..100],
                worker_a,
                &roster,
            ),
        ),
    ];
    for (what, result) in cases {
        match result {
            Ok(delivery) => return Err(format!("{what} was accepted: {delivery:?}").into()),
            Err(rejection) => println!(
                "  {what:<22} → {:<15} ({:?}): {rejection}",
                rejection.reason(),
                rejection.disposition()
            ),
        }
    }
    println!(
        "\ndemo finished: every recipient opened, the bystander relayed, every bad copy was refused"
    );
    Ok(())
}
