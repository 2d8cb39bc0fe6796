//! The mesh's events through real `aamas` processes: a WebSocket client (Python's
//! `websockets`, which nobody here wrote) on a node that runs no task sees the
//! template's eight phase transitions and every task's completion, sealed under the
//! group key and gossiped by the members that committed them; `aamas events` prints the
//! same from server-sent events; after an eviction the group key is rotated to an epoch
//! wrapped for the remaining members only, and the evicted member never holds it. The
//! read routes' answers match the schemas of the OpenAPI document (jsonschema).

use std::path::Path;
use std::process::Command;

use aamas_tests::*;
use serde_json::Value;

fn template() -> String {
    let output = aamas(&["project", "template"]);
    assert!(output.status.success());
    String::from_utf8(output.stdout).expect("utf-8")
}

fn write(root: &Path, name: &str, text: &str) -> String {
    let path = root.join(name);
    std::fs::write(&path, text).expect("write");
    path.display().to_string()
}

fn peer_id(node: &Node) -> Option<String> {
    field(&node.status()?, "peer_id")
}

/// The group key as `node` sees it: (the Registry's epoch, its recipients, the epoch the
/// node holds).
fn group_key(node: &Node) -> Option<(u64, u64, u64)> {
    let status = node.status()?;
    let key = status.get("group_key")?;
    Some((
        key.get("epoch")?.as_u64()?,
        key.get("recipients")?.as_u64()?,
        key.get("held")?.as_u64()?,
    ))
}

/// The lines `aamas events --json ARGS` prints on `node`, as JSON.
fn events_json(node: &Node, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["events", "--json"];
    all.extend_from_slice(args);
    let printed = node.cli(&all).expect("aamas events");
    printed
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect()
}

/// The phases of the PhaseTransitions among `events`, in order (`from`).
fn transitions(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter_map(|event| {
            let transition = event.get("event")?.get("PhaseTransition")?;
            Some(transition.get("from")?.as_str()?.to_string())
        })
        .collect()
}

const PHASES: [&str; 8] = [
    "Initiation",
    "Feasibility",
    "Requirements",
    "Design",
    "Development",
    "Testing",
    "Deployment",
    "Launch",
];

#[test]
fn a_websocket_on_a_node_that_runs_no_task_sees_every_phase_and_task_of_a_project() {
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, president) = start_hierarchy(root.path(), 5);
    let chief = &nodes[index_of(&nodes, &president)];
    // The observer: neither the president nor a governor, and kept from every task.
    let governors: Vec<String> = agreed_governors(&nodes.iter().collect::<Vec<_>>())
        .expect("governors")
        .into_iter()
        .map(|(_, governor, _)| governor)
        .collect();
    let observer = nodes
        .iter()
        .find(|node| peer_id(node).is_some_and(|id| id != president && !governors.contains(&id)))
        .expect("a member without office");
    let observer_id = peer_id(observer).expect("peer id");
    // A stream opened once makes the node follow every state's events.
    assert!(events_json(observer, &["--kind", "task_completion"]).is_empty());
    let rule = format!(
        "[[rule]]\nname = \"observer-runs-nothing\"\ncategory = \"security\"\n\
         at = \"dispatch\"\nreason = \"the observer only watches\"\n\
         when = {{ worker = \"{observer_id}\" }}\n"
    );
    apply_policy_everywhere(&nodes, chief, &write(root.path(), "observer.toml", &rule));
    let id = nodes[0].submit(&template()).expect("submit");

    // From index 0: the events before the socket opened come from the node's log.
    let addr = observer.api_addr().expect("api.addr");
    let url = format!("ws://{}/api/v1/events?from=0&project={id}", addr);
    let subscribe = format!("{{\"type\":\"subscribe\",\"project\":\"{id}\"}}");
    let output = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/ws_events.py"))
        .args([&url, &observer.api_token().expect("token")])
        .args(["--send", &subscribe, "--send", "{\"type\":\"shout\"}"])
        .args(["--until", "\"from\":\"Launch\"", "--timeout", "300"])
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the WebSocket client: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let frames: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON frame"))
        .collect();
    // The stream answers a subscription and names what it cannot take.
    let typed = |kind: &str| frames.iter().filter(|f| f["type"] == kind).count();
    assert_eq!(typed("subscribed"), 1, "{stdout}");
    assert_eq!(typed("error"), 1, "{stdout}");
    let events: Vec<Value> = frames
        .iter()
        .filter(|frame| frame.get("index").is_some())
        .cloned()
        .collect();
    assert_eq!(transitions(&events), PHASES, "{stdout}");
    // Indexes only go up, and every event is about the project.
    let indexes: Vec<u64> = events.iter().filter_map(|e| e["index"].as_u64()).collect();
    assert!(indexes.windows(2).all(|w| w[0] < w[1]), "{indexes:?}");
    // Every task's success, each from the member that committed it, never the observer.
    let tasks = all_tasks(&nodes, &id);
    let mut completed: Vec<String> = events
        .iter()
        .filter(|event| event["kind"] == "task_completion")
        .filter_map(|event| {
            let completion = &event["event"]["TaskCompletion"];
            completion["outcome"].get("Succeeded")?;
            Some(completion["task"].as_str()?.to_string())
        })
        .collect();
    completed.sort();
    completed.dedup();
    let mut names: Vec<String> = tasks.keys().map(|(_, name)| name.clone()).collect();
    names.sort();
    names.dedup();
    assert_eq!(completed, names, "{stdout}");
    for event in &events {
        assert_ne!(event["origin"], observer_id.as_str(), "{event}");
        assert_eq!(
            event["state"].is_string(),
            event["kind"] == "task_completion"
        );
    }
    for task in tasks.values() {
        assert_ne!(field(task, "worker").as_deref(), Some(observer_id.as_str()));
    }
    let gossiped = observer.metric("aamas_events_gossiped_total{outcome=\"sent\"}");
    assert_eq!(gossiped, None, "the observer sealed events: {gossiped:?}");

    // Server-sent events through the CLI: the same transitions, from the node's log.
    let printed = events_json(observer, &["--project", &id, "--kind", "phase_transition"]);
    assert_eq!(transitions(&printed), PHASES);
    let line = observer
        .cli(&["events", "--project", &id, "--kind", "phase_transition"])
        .expect("aamas events");
    assert_eq!(line.lines().count(), 8, "{line}");
    assert!(line.contains("Launch"), "{line}");

    // The answers of the read routes match the schemas the OpenAPI document gives them
    // (checked by jsonschema, with a project, its tasks and artefacts to show).
    let state = tasks
        .keys()
        .next()
        .map(|(state, _)| state.clone())
        .expect("a state");
    let routes = [
        ("/api/v1/system/status", "/api/v1/system/status".to_string()),
        ("/api/v1/members", "/api/v1/members".to_string()),
        ("/api/v1/hierarchy", "/api/v1/hierarchy".to_string()),
        ("/api/v1/projects", "/api/v1/projects".to_string()),
        ("/api/v1/projects/{id}", format!("/api/v1/projects/{id}")),
        (
            "/api/v1/projects/{id}/tasks",
            format!("/api/v1/projects/{id}/tasks"),
        ),
        (
            "/api/v1/projects/{id}/artifacts",
            format!("/api/v1/projects/{id}/artifacts"),
        ),
        ("/api/v1/performance", "/api/v1/performance".to_string()),
        ("/api/v1/alerts", "/api/v1/alerts".to_string()),
        ("/api/v1/resources", "/api/v1/resources".to_string()),
        (
            "/api/v1/governors/{id}/status",
            format!("/api/v1/governors/{state}/status"),
        ),
    ];
    let pairs: Vec<String> = routes
        .iter()
        .map(|(template, path)| format!("{template}={path}"))
        .collect();
    let checked = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/check_responses.py"
        ))
        .arg(format!("http://{}", addr))
        .arg(observer.api_token().expect("token"))
        .args(&pairs)
        .output()
        .expect("python3 runs");
    assert!(
        checked.status.success(),
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

#[test]
fn after_an_eviction_the_group_key_is_rotated_for_the_members_left() {
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, president) = start_hierarchy(root.path(), 5);
    let chief = &nodes[index_of(&nodes, &president)];
    let state = governed_state(&nodes);
    // Every member holds the key of the current epoch, wrapped for all five.
    let before = wait_for("every member to hold the group key", || {
        let keys: Vec<(u64, u64, u64)> = nodes.iter().map(group_key).collect::<Option<_>>()?;
        let (epoch, _, _) = keys[0];
        keys.iter()
            .all(|&(e, recipients, held)| {
                epoch > 0 && e == epoch && recipients == 5 && held == epoch
            })
            .then_some(epoch)
    });
    let victim = nodes
        .iter()
        .find(|node| peer_id(node).is_some_and(|id| id != president))
        .expect("a member besides the president");
    let victim_id = peer_id(victim).expect("peer id");
    chief
        .cli(&["members", "remove", &victim_id])
        .expect("the president evicts");
    // A new epoch for the four left: each holds it.
    let others: Vec<&Node> = nodes.iter().filter(|n| !std::ptr::eq(*n, victim)).collect();
    let after = wait_for("a new group key for the members left", || {
        let keys: Vec<(u64, u64, u64)> =
            others.iter().map(|n| group_key(n)).collect::<Option<_>>()?;
        let (epoch, _, _) = keys[0];
        keys.iter()
            .all(|&(e, recipients, held)| {
                e > before && e == epoch && recipients == 4 && held == epoch
            })
            .then_some(epoch)
    });
    assert!(after > before);
    // The evicted member never got it.
    let (_, _, held) = group_key(victim).expect("the victim still answers");
    assert!(
        held < after,
        "the evicted member holds epoch {held} of {after}"
    );
    // Events sealed from now on reach the members left, not the evicted one.
    let spec = format!(
        "name = \"after\"\n[[phase]]\nname = \"initiation\"\n  [[phase.task]]\n  \
         name = \"t\"\n  state = \"{state}\"\n  executor = \"builtin\"\n  action = \"digest\"\n  \
         input = \"x\"\n"
    );
    let id = chief.submit(&spec).expect("submitted");
    let end = wait_for_project_end(&nodes, &id, std::time::Duration::from_secs(240));
    assert_eq!(field(&end, "status").as_deref(), Some("completed"), "{end}");
    for node in &others {
        wait_for("the project's events on every member left", || {
            let seen = events_json(node, &["--project", &id]);
            (!transitions(&seen).is_empty()).then_some(())
        });
    }
    let seen = events_json(victim, &["--project", &id]);
    assert!(seen.is_empty(), "the evicted member saw {seen:?}");
}
