//! The `flood` step: hostile traffic on the `all` topic while honest probes must keep
//! arriving.
//!
//! ```text
//!   outsider (a libp2p peer that is no member, dialled into three members):
//!       garbage bytes · oversized messages · envelopes sealed by an unknown identity
//!   a member (not the president), through the test hook `Node::publish_raw`:
//!       one of its own envelopes replayed · copies of it with a byte flipped
//!   honest probes, one a second from other nodes: each must reach every live node
//! ```

use std::time::{Duration, Instant};

use aamas_node::driver::runtime::now_ms;
use aamas_node::net::swarm::{self, SwarmConfig};
use anyhow::{Context as _, Result};
use libp2p::gossipsub::MessageAcceptance;

use crate::sim::{Choices, Sim};

/// Size of an oversized message: above the envelope limit, below gossipsub's.
const OVERSIZED_BYTES: usize = 128 * 1024;

/// Hostile messages sent, by kind.
#[derive(Debug, Default, Clone, Copy)]
struct Sent {
    garbage: u64,
    oversized: u64,
    forged: u64,
    replayed: u64,
    tampered: u64,
}

fn noise(choices: &mut Choices, len: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        bytes.extend_from_slice(&choices.next_u64().to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// Floods for `length` at `per_sec` messages of each kind a second.
pub(crate) async fn flood(sim: &mut Sim, length: Duration, per_sec: u32) -> Result<()> {
    let president = sim.president_index();
    let candidates: Vec<usize> = sim
        .live_nodes()
        .into_iter()
        .filter(|index| Some(*index) != president)
        .collect();
    let member_index = sim
        .choices_mut()
        .pick(&candidates)
        .context("no member to flood from")?;
    let member = sim
        .running(member_index)
        .context("the flooding member is not running")?
        .node
        .clone();
    tracing::debug!(member = member_index, state = ?member.status().await.state, "the flooding member");
    let topic = member.all_topic();
    let mesh = member.mesh_id();

    // The outsider: a fresh libp2p identity, dialled into three members.
    let (outsider, mut incoming) = swarm::start(
        libp2p::identity::Keypair::generate_ed25519(),
        &SwarmConfig {
            listen: vec!["/memory/0".parse().context("memory address")?],
            ..SwarmConfig::default()
        },
    )
    .await?;
    let live = sim.live_nodes();
    for _ in 0..3 {
        let Some(index) = sim.choices_mut().pick(&live) else {
            break;
        };
        let Some(running) = sim.running(index) else {
            continue;
        };
        tracing::debug!(target_node = index, state = ?running.node.status().await.state, "the outsider dials");
        if let Some(addr) = crate::sim::dial_addr(&running.node).await {
            let addr = addr.parse().context("address")?;
            if let Err(error) = outsider.dial(addr).await {
                tracing::warn!(%error, "the outsider could not dial");
            }
        }
    }
    outsider.subscribe(&topic).await;
    // The outsider validates nothing it hears, and answers no request.
    let draining = outsider.clone();
    let drain = tokio::spawn(async move {
        while let Some(gossip) = incoming.gossip.recv().await {
            draining
                .validate(gossip.id, gossip.source, MessageAcceptance::Ignore)
                .await;
        }
    });

    let stranger = aamas_protocol::Identity::generate().context("an identity")?;
    let mut sealer = aamas_protocol::Sealer::new(mesh, aamas_protocol::Limits::default(), now_ms());
    let captured = member.seal_probe()?.bytes;
    member.publish_raw(captured.clone()).await?;
    let mut choices = Choices::new(sim.choices_mut().next_u64());
    let hostile_topic = topic.clone();
    let flooding = tokio::spawn(async move {
        let mut sent = Sent::default();
        let stop = Instant::now() + length;
        let mut tick = tokio::time::interval(Duration::from_secs(1) / per_sec.max(1));
        while Instant::now() < stop {
            tick.tick().await;
            if outsider
                .publish(&hostile_topic, noise(&mut choices, 512))
                .await
                .is_ok()
            {
                sent.garbage += 1;
            }
            if outsider
                .publish(&hostile_topic, noise(&mut choices, OVERSIZED_BYTES))
                .await
                .is_ok()
            {
                sent.oversized += 1;
            }
            let payload = aamas_protocol::Payload::Query(aamas_protocol::Query {
                in_reply_to: None,
                question: "forged".into(),
                body: Vec::new(),
            });
            let me = [stranger.public()];
            if let Ok(forged) = sealer.seal(
                &stranger,
                now_ms(),
                aamas_protocol::Outgoing {
                    topic: &hostile_topic,
                    payload: &payload,
                    to: aamas_protocol::To::Members(&me),
                    ttl_ms: 60_000,
                },
            ) && outsider.publish(&hostile_topic, forged.bytes).await.is_ok()
            {
                sent.forged += 1;
            }
            if member.publish_raw(captured.clone()).await.is_ok() {
                sent.replayed += 1;
            }
            let mut tampered = captured.clone();
            if let Some(last) = tampered.last_mut() {
                *last ^= 0x01;
            }
            let at = usize::try_from(choices.below(tampered.len() as u64)).unwrap_or(0);
            if let Some(byte) = tampered.get_mut(at) {
                *byte ^= 0x80;
            }
            if member.publish_raw(tampered).await.is_ok() {
                sent.tampered += 1;
            }
        }
        outsider.shutdown().await;
        sent
    });

    // Honest probes, one a second, from nodes other than the flooding member.
    let mut probes = Vec::new();
    let stop = Instant::now() + length;
    while Instant::now() < stop {
        probes.extend(
            sim.send_probes_avoiding(1, Duration::ZERO, Some(member_index))
                .await,
        );
        let next = Instant::now() + Duration::from_secs(1);
        while Instant::now() < next.min(stop) {
            sim.observe_now().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let sent = flooding.await.context("the flood task failed")?;
    drain.abort();
    let (outcome, starved) = sim.collect_probes(probes).await?;
    for (reached, expected) in outcome {
        sim.checker_mut().flood_probe(reached, expected);
    }
    sim.checker_mut().flood_starved(&starved);
    sim.note(
        "heal",
        format!(
            "flood ends: {} garbage, {} oversized, {} forged, {} replayed, {} tampered",
            sent.garbage, sent.oversized, sent.forged, sent.replayed, sent.tampered
        ),
    );
    Ok(())
}
