//! Hostile peers against a real node.
//!
//! - Gossip: an outsider's libp2p peer publishes, on the mesh's `all` topic, a genuine
//!   member envelope (accepted), the same envelope again (replayed), a copy with one bit
//!   flipped (tampered), and an envelope signed by a non-member. Each verdict shows up
//!   under its reason in the node's `/metrics`.
//! - Raft: the outsider asks for a vote and is refused, and the refusal is counted.
//! - A member turned hostile: each move a plain member must not make (Raft RPCs for
//!   others or far-ahead terms, a campaign, a governor report, a change of another's
//!   project, an Execute) is refused and counted by reason (`node::authority`).
//! - The API: no token, a wrong one, malformed or mistyped bodies, an oversized spec,
//!   unknown ids and routes each get their 4xx as an RFC 9457 problem, never a 5xx. Its
//!   OpenAPI document passes an outside validator, and every path in it is routed; lists
//!   come in pages linked by their `Link` headers.

use aamas_node::driver::runtime::MeshFile;
use aamas_node::net::swarm::{self, SwarmConfig};
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
        counter(&metrics, "aamas_transport_sent_bytes_total", "") > 0,
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
        let rpc = aamas_node::net::wire::Rpc::Vote {
            group: 0,
            rpc: vote,
        };
        handle
            .request(peer, Vec::new(), rpc)
            .await
            .expect("an answer")
    });
    assert!(
        matches!(answer, aamas_node::net::wire::RpcResponse::Refused { ref reason } if reason.contains("not a member")),
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

/// The keypair a node's libp2p swarm uses: its member identity's signing key.
fn keypair_of(identity: &Identity) -> libp2p::identity::Keypair {
    let mut seed = *identity.signing_seed();
    libp2p::identity::Keypair::ed25519_from_bytes(&mut seed).expect("an ed25519 keypair")
}

/// A state of the hierarchy whose mayors do not include `peer`.
fn state_not_run_by(hierarchy: &serde_json::Value, peer: &str) -> Option<String> {
    let states = hierarchy.get("states")?.as_array()?;
    states
        .iter()
        .find(|state| {
            state
                .get("mayors")
                .and_then(serde_json::Value::as_array)
                .is_some_and(|mayors| !mayors.iter().any(|m| m.as_str() == Some(peer)))
        })
        .and_then(|state| state.get("name")?.as_str().map(str::to_string))
}

/// An admitted member turned hostile: a raw libp2p peer with a live member's key (so it
/// passes the membership check) makes every move a plain member must not: a vote for a
/// term absurdly far ahead, a vote in another's name, entries in the president's name, a
/// campaign it may not ask for, a governor report for a state it does not lead, and an
/// Execute for a city it is not the mayor of. Each is refused and counted by reason, the
/// president stays in its term, and the task never runs.
#[test]
fn a_hostile_members_moves_are_refused_and_counted() {
    use aamas_consensus::ledger::TaskKey;
    use aamas_consensus::registry::GovernorRecord;
    use aamas_node::driver::runtime::node_id;
    use aamas_node::net::wire::{Rpc, RpcResponse};
    use openraft::Vote;
    use openraft::raft::{AppendEntriesRequest, VoteRequest};

    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, president) = start_hierarchy(root.path(), 4);
    let p = index_of(&nodes, &president);
    let h = (p + 1) % nodes.len();
    let hostile = Identity::load(&nodes[h].dir.join("identity.key")).expect("identity");
    let hostile_peer = keypair_of(&hostile).public().to_peer_id().to_base58();
    let hierarchy = wait_for("the president's hierarchy", || nodes[p].hierarchy());
    let state = state_not_run_by(&hierarchy, &hostile_peer).expect("a state");
    let city = format!("{state}-1");
    let status = nodes[p].status().expect("status");
    let term = status
        .get("term")
        .and_then(serde_json::Value::as_u64)
        .expect("term");
    let president_key = aamas_protocol::NodeKey::from_peer_id(&president).expect("key");
    let president_id = node_id(&president_key);
    let hostile_key = hostile.node_key();
    let hostile_id = node_id(&hostile_key);
    let mesh = MeshFile::load(&nodes[p].dir)
        .expect("mesh file")
        .expect("a mesh")
        .mesh;
    let worker = Identity::load(&nodes[p].dir.join("identity.key")).expect("identity");
    let marker = root.path().join("ran");
    let spec = aamas_node::spec::TaskSpec {
        name: "t".into(),
        state: state.clone(),
        skill: None,
        executor: aamas_node::spec::ExecutorSpec::Shell {
            command: format!("touch {}", marker.display()),
            workdir: None,
            cpu_secs: 1,
            memory_mb: 64,
            max_output_bytes: 1024,
        },
        input: String::new(),
        depends_on: Vec::new(),
        timeout_secs: 5,
        retries: 0,
        budget: 0,
    };
    let execute = aamas_node::driver::work::Work::Execute {
        key: TaskKey {
            project: "p".into(),
            task: "t".into(),
        },
        attempt: 1,
        city: city.clone(),
        spec: spec.encode(),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let to = [worker.public()];
    // An Execute from the hostile member to the president's node, sealed as `action`.
    let sealed_as = |action: &str, body: Vec<u8>| {
        let payload = Payload::Command(aamas_protocol::Command {
            priority: aamas_protocol::Priority::Normal,
            action: action.into(),
            body,
        });
        Sealer::new(mesh, Limits::default(), now)
            .seal(
                &hostile,
                now,
                Outgoing {
                    topic: &format!("aamas/1/{mesh}/direct"),
                    payload: &payload,
                    to: To::Members(&to),
                    ttl_ms: 60_000,
                },
            )
            .expect("seal")
            .bytes
    };
    let one = postcard::to_stdvec(&execute).expect("encode");
    let sealed = sealed_as("execute", one.clone());
    // The same Execute twice in one envelope, as a courier batches them.
    let sealed_batch = sealed_as(
        aamas_node::driver::work::BATCH_ACTION,
        postcard::to_stdvec(&vec![one; 2]).expect("encode"),
    );
    let record = GovernorRecord {
        node: hostile_key,
        term: 99,
        mayors: [(city.clone(), Some(hostile_key))].into(),
        voters: vec![hostile_key],
    };
    let template = aamas(&["project", "template"]);
    assert!(template.status.success());
    let project = nodes[p]
        .submit(&String::from_utf8(template.stdout).expect("utf-8"))
        .expect("the president's operator submits a project");
    let far = term + aamas_node::roles::authority::MAX_TERM_JUMP + 1;
    let moves: Vec<(&str, Rpc)> = vec![
        (
            "term_too_far",
            Rpc::Vote {
                group: 0,
                rpc: VoteRequest::new(Vote::new(far, hostile_id), None),
            },
        ),
        (
            "not_the_candidate",
            Rpc::Vote {
                group: 0,
                rpc: VoteRequest::new(Vote::new(term + 1, president_id), None),
            },
        ),
        (
            "not_the_leader",
            Rpc::Append {
                group: 0,
                rpc: AppendEntriesRequest {
                    vote: Vote::new_committed(term, president_id),
                    prev_log_id: None,
                    entries: Vec::new(),
                    leader_commit: None,
                },
            },
        ),
        ("not_handing_over", Rpc::Campaign { group: 0 }),
        (
            "governor_unconfirmed",
            Rpc::GovernorReport {
                state: state.clone(),
                record,
            },
        ),
        (
            "not_project_owner",
            Rpc::ChangeProject {
                id: project.clone(),
                action: "hold".into(),
                note: None,
            },
        ),
        ("execute", Rpc::Envelope(sealed)),
        ("execute_batch", Rpc::Envelope(sealed_batch)),
    ];

    let addr = first_listen_addr(&nodes[p]);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let answers: Vec<(&str, RpcResponse)> = runtime.block_on(async {
        let config = SwarmConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")],
            ..SwarmConfig::default()
        };
        let (handle, _incoming) = swarm::start(keypair_of(&hostile), &config)
            .await
            .expect("swarm");
        let peer = handle
            .dial(addr.parse().expect("node addr"))
            .await
            .expect("dial the president");
        let mut answers = Vec::new();
        for (reason, rpc) in moves {
            let answer = handle
                .request(peer, Vec::new(), rpc)
                .await
                .expect("an answer");
            answers.push((reason, answer));
        }
        answers
    });
    for (reason, answer) in &answers {
        // A batch is refused as a whole (the envelope's authority check) or message by
        // message (the worker's check of the city's mayor).
        let refused = match answer {
            RpcResponse::Refused { .. } => true,
            RpcResponse::Each(answers) => {
                *reason == "execute_batch"
                    && answers.len() == 2
                    && answers.iter().all(Option::is_some)
            }
            _ => false,
        };
        assert!(refused, "{reason}: {answer:?}");
    }
    let (_, metrics) = nodes[p].api_get("/metrics").expect("metrics");
    for reason in [
        "term_too_far",
        "not_the_candidate",
        "not_the_leader",
        "not_handing_over",
        "governor_unconfirmed",
        "not_project_owner",
    ] {
        assert!(
            counter(
                &metrics,
                "aamas_rpc_refused_total",
                &format!("reason=\"{reason}\"")
            ) >= 1,
            "{reason} not counted: {metrics}"
        );
    }
    // A member with no role fails the envelope's authority check; one that is a mayor
    // elsewhere fails the worker's check of the city's mayor.
    let execute_refused = counter(
        &metrics,
        "aamas_direct_rejected_total",
        "reason=\"command_from_non_superior\"",
    ) + counter(
        &metrics,
        "aamas_direct_rejected_total",
        "reason=\"command_to_non_subordinate\"",
    ) + counter(
        &metrics,
        "aamas_rpc_refused_total",
        "reason=\"not_the_mayor\"",
    );
    assert!(execute_refused >= 1, "{metrics}");
    assert!(!marker.exists(), "the hostile Execute ran");
    // The president is still the president, in the same term, and no state is governed
    // in the hostile report's term.
    let status = nodes[p].status().expect("status");
    assert_eq!(
        status.get("term").and_then(serde_json::Value::as_u64),
        Some(term)
    );
    assert_eq!(
        field(&status, "president").as_deref(),
        Some(president.as_str())
    );
    let shown = nodes[p].project(&project).expect("the project");
    assert_ne!(field(&shown, "status").as_deref(), Some("held"), "{shown}");
    let hierarchy = nodes[p].hierarchy().expect("hierarchy");
    let states = hierarchy["states"].as_array().expect("states");
    assert!(
        states
            .iter()
            .all(|state| state["term"].as_u64() != Some(99)),
        "{hierarchy}"
    );
}

/// What a hostile request is, its bearer token, method, path, headers and body, and
/// the status it must get.
type Case<'a> = (
    &'a str,
    Option<&'a str>,
    &'a str,
    &'a str,
    &'a [(&'a str, &'a str)],
    &'a [u8],
    u16,
);

#[test]
fn hostile_api_requests_get_problem_details_and_never_a_server_error() {
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, _) = start_mesh(root.path(), 1);
    let node = &nodes[0];
    let token = node.api_token().expect("the token");
    let token = Some(token.as_str());
    let json = [("Content-Type", "application/json")];
    let oversized = vec![b'x'; 2 * 1024 * 1024];
    // (what, token, method, path, headers, body, the status expected)
    let cases: Vec<Case<'_>> = vec![
        ("no token", None, "GET", "/api/v1/projects", &[], b"", 401),
        (
            "a wrong token",
            Some("not-the-token"),
            "GET",
            "/api/v1/members",
            &[],
            b"",
            401,
        ),
        (
            "malformed JSON",
            token,
            "POST",
            "/api/v1/api-tokens",
            &json,
            b"{not json",
            400,
        ),
        (
            "wrong types",
            token,
            "POST",
            "/api/v1/api-tokens",
            &json,
            br#"{"name": 5, "scope": true}"#,
            422,
        ),
        (
            "no content type",
            token,
            "POST",
            "/api/v1/api-tokens",
            &[],
            br#"{"name":"a","scope":"read"}"#,
            415,
        ),
        (
            "an oversized spec",
            token,
            "POST",
            "/api/v1/projects",
            &[],
            &oversized,
            413,
        ),
        (
            "an unknown project",
            token,
            "GET",
            "/api/v1/projects/nope",
            &[],
            b"",
            404,
        ),
        (
            "an unknown alert",
            token,
            "POST",
            "/api/v1/alerts/999/ack",
            &json,
            b"{}",
            404,
        ),
        (
            "a path of the wrong type",
            token,
            "POST",
            "/api/v1/alerts/x/ack",
            &json,
            b"{}",
            400,
        ),
        (
            "an unknown API token",
            token,
            "DELETE",
            "/api/v1/api-tokens/nope",
            &[],
            b"",
            404,
        ),
        (
            "a query of the wrong type",
            token,
            "POST",
            "/api/v1/tokens?ttl_secs=soon",
            &[],
            b"",
            400,
        ),
        (
            "an unknown route",
            token,
            "GET",
            "/api/v1/nothing",
            &[],
            b"",
            404,
        ),
        (
            "a method the route does not take",
            token,
            "DELETE",
            "/api/v1/projects",
            &[],
            b"",
            405,
        ),
        (
            "an unknown resource",
            token,
            "PUT",
            "/api/v1/resources/technical/gpu",
            &json,
            br#"{"amount":1,"per":"day"}"#,
            404,
        ),
        (
            "an event index that is not a number",
            token,
            "GET",
            "/api/v1/events?from=soon",
            &[],
            b"",
            400,
        ),
        (
            "an unknown event filter",
            token,
            "GET",
            "/api/v1/events?colour=red",
            &[],
            b"",
            400,
        ),
        (
            "a Last-Event-ID that is not an index",
            token,
            "GET",
            "/api/v1/events",
            &[("Last-Event-ID", "yesterday")],
            b"",
            400,
        ),
        (
            "a WebSocket that would not follow",
            token,
            "GET",
            "/api/v1/events?follow=false",
            &[
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Version", "13"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ],
            b"",
            400,
        ),
        (
            "an event stream without a token",
            None,
            "GET",
            "/api/v1/events?follow=false",
            &[],
            b"",
            401,
        ),
    ];
    for (what, token, method, path, headers, body, expected) in cases {
        let (code, content_type, text) = node
            .api_exchange(token, method, path, headers, body)
            .unwrap_or_else(|| panic!("{what}: no answer"));
        assert_eq!(code, expected, "{what}: {text}");
        assert_eq!(
            content_type.as_deref(),
            Some("application/problem+json"),
            "{what}: {text}"
        );
        let problem: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e}: {text}"));
        assert_eq!(problem["status"], expected, "{what}: {problem}");
        assert_eq!(problem["type"], "about:blank", "{what}: {problem}");
        assert!(
            problem["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{what}: {problem}"
        );
        assert!(
            problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{what}: {problem}"
        );
    }
    // Health answers probes without a token.
    let (code, _, text) = node
        .api_exchange(None, "GET", "/api/v1/system/health", &[], b"")
        .expect("health");
    assert_eq!((code, text.contains("ok")), (200, true), "{text}");
}

#[test]
fn the_openapi_document_passes_an_outside_validator_and_every_path_in_it_answers() {
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, _) = start_mesh(root.path(), 1);
    let node = &nodes[0];
    let token = node.api_token().expect("the token");
    let token = Some(token.as_str());
    // Behind the token like the rest.
    let (code, _, _) = node
        .api_exchange(None, "GET", "/api/v1/openapi.json", &[], b"")
        .expect("an answer");
    assert_eq!(code, 401);
    let (code, _, text) = node
        .api_exchange(token, "GET", "/api/v1/openapi.json", &[], b"")
        .expect("the document");
    assert_eq!(code, 200, "{text}");
    // An outside validator (openapi-spec-validator, which `make test` installs).
    let file = root.path().join("openapi.json");
    std::fs::write(&file, &text).expect("write");
    let checked = std::process::Command::new("python3")
        .args([
            "-c",
            "import json, sys\nfrom openapi_spec_validator import validate\n\
             validate(json.load(open(sys.argv[1])))",
        ])
        .arg(&file)
        .output()
        .expect("python3 runs");
    assert!(
        checked.status.success(),
        "openapi-spec-validator: {}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let document: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert!(
        document["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        document["openapi"]
    );
    let paths = document["paths"].as_object().expect("paths");
    // The health check is documented, and needs no token.
    assert_eq!(
        document["paths"]["/api/v1/system/health"]["get"]["security"],
        serde_json::json!([{}])
    );
    // Every path and method in the document is routed: none gets the router's 404 or
    // 405, and none a 5xx (ids and bodies here are placeholders: 4xx problems are fine).
    let mut asked = 0;
    for (path, operations) in paths {
        let concrete = path
            .split('/')
            .map(|part| if part.starts_with('{') { "1" } else { part })
            .collect::<Vec<_>>()
            .join("/");
        // The event stream follows until the client leaves; this one only reads the log.
        let concrete = if path == "/api/v1/events" {
            format!("{concrete}?follow=false")
        } else {
            concrete
        };
        for method in operations.as_object().expect("operations").keys() {
            let method = method.to_uppercase();
            let (code, _, text) = node
                .api_exchange(token, &method, &concrete, &[], b"")
                .unwrap_or_else(|| panic!("{method} {path}: no answer"));
            assert!(
                !text.contains("no such route") && code != 405,
                "{method} {path} is in the document but not routed: {code} {text}"
            );
            assert!(code < 500, "{method} {path}: {code} {text}");
            asked += 1;
        }
    }
    assert!(asked >= 30, "only {asked} operations documented");
}

#[test]
fn lists_come_in_pages_that_a_client_follows_by_their_link_headers() {
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, _) = start_mesh(root.path(), 1);
    let node = &nodes[0];
    let token = node.api_token().expect("the token");
    let token = Some(token.as_str());
    let json = [("Content-Type", "application/json")];
    for name in ["e", "b", "d", "a", "c"] {
        let body = format!(r#"{{"name": "{name}", "scope": "read"}}"#);
        let (code, _, text) = node
            .api_exchange(token, "POST", "/api/v1/api-tokens", &json, body.as_bytes())
            .expect("created");
        assert_eq!(code, 200, "{text}");
    }
    // Pages of two, in name order, each naming the next until the last.
    let mut path = "/api/v1/api-tokens?limit=2".to_string();
    let mut names = Vec::new();
    let mut pages = 0;
    loop {
        let (code, headers, text) = node
            .api_exchange_headers(token, "GET", &path, &[], b"")
            .expect("a page");
        assert_eq!(code, 200, "{text}");
        let page: Vec<serde_json::Value> = serde_json::from_str(&text).expect("json");
        assert!(page.len() <= 2, "{text}");
        names.extend(
            page.iter()
                .filter_map(|t| t["name"].as_str().map(str::to_string)),
        );
        pages += 1;
        let next = headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("link"))
            .and_then(|(_, link)| {
                link.strip_prefix('<')?
                    .split_once('>')
                    .map(|(p, _)| p.to_string())
            });
        match next {
            Some(next) => path = next,
            None => break,
        }
    }
    assert_eq!(names, ["a", "b", "c", "d", "e"]);
    assert_eq!(pages, 3);
    // Without a limit: all of them, with no Link.
    let (_, headers, text) = node
        .api_exchange_headers(token, "GET", "/api/v1/api-tokens", &[], b"")
        .expect("all");
    assert!(
        !headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("link"))
    );
    assert_eq!(
        serde_json::from_str::<Vec<serde_json::Value>>(&text)
            .expect("json")
            .len(),
        5
    );
    // A limit out of range is the client's fault.
    for limit in ["0", "10001", "many"] {
        let (code, content_type, text) = node
            .api_exchange(
                token,
                "GET",
                &format!("/api/v1/alerts?limit={limit}"),
                &[],
                b"",
            )
            .expect("an answer");
        assert_eq!(code, 400, "{limit}: {text}");
        assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    }
}
