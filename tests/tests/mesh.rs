//! The real `aamas` binary, several processes on 127.0.0.1: a mesh forms, agrees on a
//! president, survives `kill -9` of the president, takes its node back without a new
//! token, refuses bad tokens with the reason, and its API refuses requests without the
//! bearer token.

use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use aamas_tests::*;

#[test]
fn five_nodes_agree_on_a_president_and_survive_its_kill() {
    let root = tempfile::tempdir().expect("tempdir");
    let dirs: Vec<PathBuf> = (1..=5).map(|i| root.path().join(format!("n{i}"))).collect();
    let (token, founder) = init(&dirs[0]);
    let mut nodes = vec![Node::start(&dirs[0], None)];
    let addr = first_listen_addr(&nodes[0]);
    for dir in &dirs[1..] {
        nodes.push(Node::start(dir, Some((&addr, &token))));
    }
    let president = wait_for("five nodes to agree on a president", || {
        agreed_president(&nodes.iter().collect::<Vec<_>>(), 5)
    });
    assert_eq!(president, founder, "the founder is the first president");
    // Every member is placed in a state.
    let states: Vec<String> = nodes
        .iter()
        .map(|node| {
            node.status()
                .and_then(|s| field(&s, "state"))
                .expect("placed in a state")
        })
        .collect();
    assert_eq!(states.len(), 5);
    // A governor for each populated state, agreed by every node.
    let governed = wait_for("a governor for each populated state", || {
        agreed_governors(&nodes.iter().collect::<Vec<_>>())
    });
    let populated: std::collections::BTreeSet<&String> = states.iter().collect();
    assert_eq!(
        governed.len(),
        populated.len(),
        "one governor per populated state: {governed:?}"
    );

    // kill -9 the president: the survivors agree on another ...
    // ... and the killed node comes back with its data dir and no token, as a member.
    let (successor, _) = kill_president(&mut nodes, &president, 5);
    assert_ne!(successor, president);
}

#[test]
fn a_killed_governor_is_succeeded_and_its_dead_voter_replaced() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut nodes, president) = start_mesh(root.path(), 5);
    let governed = wait_for("a governor for each populated state", || {
        agreed_governors(&nodes.iter().collect::<Vec<_>>())
            .filter(|governed| governed.iter().all(|(_, _, voters)| voters.len() == 3))
    });
    // A state whose governor is not the president, so only the state fails over.
    let (state, governor, _) = governed
        .iter()
        .find(|(_, governor, _)| *governor != president)
        .cloned()
        .expect("a governor that is not the president");
    let index = index_of(&nodes, &governor);
    nodes[index].kill();
    let survivors = all_but(&nodes, index);
    let successor = wait_for("the state to elect a new governor", || {
        agreed_governors(&survivors)?
            .into_iter()
            .find(|(name, successor, _)| *name == state && *successor != governor)
    });
    assert!(successor.2.contains(&successor.1));
    // The dead voter stays dead: the new governor swaps it for a live member.
    let healed = wait_for("the dead voter to be replaced", || {
        agreed_governors(&survivors)?
            .into_iter()
            .find(|(name, _, voters)| {
                *name == state && voters.len() == 3 && !voters.contains(&governor)
            })
    });
    assert!(!healed.2.contains(&governor));
}

#[test]
fn a_one_node_mesh_holds_every_role() {
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, _) = start_mesh(root.path(), 1);
    let roles = wait_for("the founder to hold every role", || {
        let status = nodes[0].status()?;
        let roles: Vec<String> = status
            .get("roles")?
            .as_array()?
            .iter()
            .filter_map(|role| role.as_str().map(str::to_string))
            .collect();
        (roles.len() == 4).then_some(roles)
    });
    assert_eq!(roles, ["president", "governor", "mayor", "worker"]);
}

#[test]
fn sigterm_hands_over_and_exits_cleanly() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut nodes, president) = start_mesh(root.path(), 3);
    // Once all three vote in the federal group (the president adds the two others in
    // one change).
    wait_for("three federal voters", || {
        let tree = nodes[0].hierarchy()?;
        (tree.get("federal_voters")?.as_array()?.len() == 3).then_some(())
    });
    let index = index_of(&nodes, &president);
    assert!(
        nodes[index].terminate(),
        "a node stopped by SIGTERM exits with 0"
    );
    let survivors = all_but(&nodes, index);
    let successor = wait_for("the others to agree on a new president", || {
        agreed_president(&survivors, 3).filter(|p| *p != president)
    });
    assert_ne!(successor, president);
}

#[test]
fn bad_tokens_are_refused_and_the_error_says_why() {
    let root = tempfile::tempdir().expect("tempdir");
    let (token, _) = init(&root.path().join("founder"));
    let founder = Node::start(&root.path().join("founder"), None);
    let addr = first_listen_addr(&founder);
    wait_for("the founder to be president", || {
        agreed_president(&[&founder], 1).map(|_| ())
    });

    // Forged: one character of the token changed.
    let mut forged: Vec<char> = token.chars().collect();
    let at = forged.len() - 10;
    forged[at] = if forged[at] == 'A' { 'B' } else { 'A' };
    let forged: String = forged.into_iter().collect();
    let error = join_error(root.path(), "forged", &addr, &forged);
    assert!(
        error.contains("forged") || error.contains("malformed"),
        "forged token: {error}"
    );

    // Another mesh's token.
    let (foreign, _) = init(&root.path().join("other-founder"));
    let error = join_error(root.path(), "foreign", &addr, &foreign);
    assert!(error.contains("is for mesh"), "foreign token: {error}");

    // Expired: a token that lives one second.
    let output = aamas(&[
        "token",
        "create",
        "--data-dir",
        &founder.dir.display().to_string(),
        "--ttl",
        "1s",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let short = String::from_utf8_lossy(&output.stdout).trim().to_string();
    // Wait out its lifetime (the token's own clock, not a synchronisation).
    std::thread::sleep(Duration::from_millis(1_500));
    let error = join_error(root.path(), "expired", &addr, &short);
    assert!(error.contains("expired"), "expired token: {error}");
}

#[test]
fn the_api_refuses_requests_without_the_token() {
    let root = tempfile::tempdir().expect("tempdir");
    init(&root.path().join("n1"));
    let node = Node::start(&root.path().join("n1"), None);
    first_listen_addr(&node);
    let addr = std::fs::read_to_string(node.dir.join("api.addr")).expect("api.addr");
    for (path, authorization) in [
        ("/api/v1/system/status", None),
        ("/api/v1/members", Some("Bearer wrong")),
        ("/metrics", None),
    ] {
        let mut stream = std::net::TcpStream::connect(addr.trim()).expect("connect");
        let auth = authorization
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
        )
        .expect("send");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        assert!(response.starts_with("HTTP/1.1 401"), "{path}: {response}");
    }
    // With the token it answers.
    assert!(node.status().is_some());
}
