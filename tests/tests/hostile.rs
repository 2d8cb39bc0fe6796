//! Hostile peers against a real node.
//!
//! - Gossip: an outsider's libp2p peer publishes, on the mesh's `all` topic, a genuine
//!   member envelope (accepted), the same envelope again (replayed), a copy with one bit
//!   flipped (tampered), and an envelope signed by a non-member. Each verdict shows up
//!   under its reason in the node's `/metrics`.
//! - Raft: the outsider asks for a vote and is refused, and the refusal is counted.

use aamas_node::runtime::MeshFile;
use aamas_node::swarm::{self, SwarmConfig};
use aamas_protocol::{Event, Identity, Limits, Notification, Outgoing, Payload, Sealer, To};
use aamas_tests::*;

/// A sealed notification from `identity` to itself, on `topic`.
fn envelope(identity: &Identity, mesh: aamas_protocol::MeshId, topic: &str) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let payload = Payload::Notification(Notification {
        event: Event::PerformanceAlert {
            metric: "injected".into(),
            value_milli: 1,
            threshold_milli: 0,
        },
    });
    let me = [identity.public()];
    Sealer::new(mesh, Limits::default(), now)
        .seal(
            identity,
            now,
            Outgoing {
                topic,
                payload: &payload,
                to: To::Members(&me),
                ttl_ms: 60_000,
            },
        )
        .expect("seal")
        .bytes
}

/// The value of a counter line of `/metrics` whose labels contain `needle`.
fn counter(metrics: &str, name: &str, needle: &str) -> u64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(name) && line.contains(needle))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn replayed_tampered_and_non_member_gossip_is_rejected_and_counted() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("n1");
    init(&dir);
    let node = Node::start(&dir, None);
    let addr = first_listen_addr(&node);
    wait_for("the founder to be president", || {
        agreed_president(&[&node], 1).map(|_| ())
    });
    let mesh = MeshFile::load(&dir)
        .expect("mesh file")
        .expect("a mesh")
        .mesh;
    let topic = format!("aamas/1/{mesh}/all");
    // The member's own key signs the genuine envelope (as if it were captured off the wire).
    let member = Identity::load(&dir.join("identity.key")).expect("member identity");
    let genuine = envelope(&member, mesh, &topic);
    let mut tampered = genuine.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let outsider = envelope(&Identity::generate().expect("identity"), mesh, &topic);

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    // The swarm runs while its handle lives: keep it until the verdicts are in.
    let _injector = runtime.block_on(async {
        let keypair = libp2p::identity::Keypair::generate_ed25519();
        let config = SwarmConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
            ..SwarmConfig::default()
        };
        let (handle, _incoming) = swarm::start(keypair, &config).await.expect("swarm");
        handle.subscribe(&topic).await;
        handle
            .dial(addr.parse().expect("node addr"))
            .await
            .expect("dial the node");
        // gossipsub publishes once it knows the node is subscribed to the topic.
        let mut published = false;
        for _ in 0..100 {
            if handle.publish(&topic, genuine.clone()).await.is_ok() {
                published = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(published, "the node never joined the topic");
        for bytes in [genuine.clone(), tampered, outsider] {
            handle.publish(&topic, bytes).await.expect("publish");
        }
        (handle, _incoming)
    });

    let metrics = wait_for("every injected message to be judged", || {
        let (status, body) = node.api_get("/metrics")?;
        assert!(status.contains("200"), "{status}");
        let judged = counter(&body, "aamas_gossip_accepted_total", "delivery=\"opened\"") >= 1
            && counter(&body, "aamas_gossip_rejected_total", "reason=\"replayed\"") >= 1
            && counter(
                &body,
                "aamas_gossip_rejected_total",
                "reason=\"bad_signature\"",
            ) >= 1
            && counter(
                &body,
                "aamas_gossip_rejected_total",
                "reason=\"unknown_sender\"",
            ) >= 1;
        judged.then_some(body)
    });
    // The forged and tampered copies cost the forwarder (Reject); a replay or an unknown
    // sender may come from an honest peer that knew less (Ignore).
    assert_eq!(
        counter(
            &metrics,
            "aamas_gossip_rejected_total",
            "verdict=\"reject\""
        ),
        1,
        "{metrics}"
    );
    assert_eq!(
        counter(&metrics, "aamas_gossip_accepted_total", ""),
        1,
        "only the genuine envelope is accepted: {metrics}"
    );
    // The injector's TCP connection carried this node's side of Noise, Yamux and
    // gossipsub: the transport counted those bytes.
    assert!(
        counter(&metrics, "aamas_transport_bytes_sent_total", "") > 0,
        "{metrics}"
    );
}

#[test]
fn a_non_members_raft_rpc_is_refused_and_counted() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("n1");
    init(&dir);
    let node = Node::start(&dir, None);
    let addr = first_listen_addr(&node);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let answer = runtime.block_on(async {
        let keypair = libp2p::identity::Keypair::generate_ed25519();
        let config = SwarmConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
            ..SwarmConfig::default()
        };
        let (handle, _incoming) = swarm::start(keypair, &config).await.expect("swarm");
        let peer = handle
            .dial(addr.parse().expect("node addr"))
            .await
            .expect("dial the node");
        // A vote request for a term far ahead: a member's would depose the president.
        let vote = openraft::raft::VoteRequest::new(openraft::Vote::new(1_000, 7), None);
        let rpc = aamas_node::wire::Rpc::Vote {
            group: 0,
            rpc: vote,
        };
        handle
            .request(peer, Vec::new(), rpc)
            .await
            .expect("an answer")
    });
    assert!(
        matches!(answer, aamas_node::wire::RpcResponse::Refused { ref reason } if reason.contains("not a member")),
        "{answer:?}"
    );
    let (_, metrics) = node.api_get("/metrics").expect("metrics");
    assert_eq!(
        counter(&metrics, "aamas_rpc_refused_total", "reason=\"non_member\""),
        1,
        "{metrics}"
    );
    // The president is still the president, in the same term.
    let status = node.status().expect("status");
    assert_eq!(
        status.get("term").and_then(serde_json::Value::as_u64),
        Some(1)
    );
}
