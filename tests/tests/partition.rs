//! Five `aamas node` processes on five hosts (Linux network namespaces on one switch):
//! one host's link is cut mid-project (its switch port down: its connections go quiet,
//! nothing is closed, as after a pulled cable). The other four finish the project, their
//! hierarchy stops naming the cut-off node as governor, mayor or state voter, and after the
//! link is back all five agree on one president. Once with the president's host, once with a mayor's, once with the
//! host of a worker holding a task.
//!
//! Needs root and iproute2 (as `make test` has here and in CI).

use std::time::Duration;

use aamas_tests::*;
use serde_json::Value;

/// How long the project may take with one host cut off (debug build, loaded machine).
const PROJECT_LIMIT: Duration = Duration::from_secs(300);

/// Eight phases of four one-second tasks, one per state: long enough to cut a host while
/// the project runs.
fn slow_spec() -> String {
    let phases = [
        "initiation",
        "feasibility",
        "requirements",
        "design",
        "development",
        "testing",
        "deployment",
        "launch",
    ];
    let states = ["technical", "financial", "market", "operations"];
    let mut spec = String::from("name = \"cut\"\nbudget = 0\n");
    for phase in phases {
        spec.push_str(&format!("\n[[phase]]\nname = \"{phase}\"\n"));
        for state in states {
            spec.push_str(&format!(
                "\n  [[phase.task]]\n  name = \"{phase}-{state}\"\n  state = \"{state}\"\n  \
                 executor = \"builtin\"\n  action = \"sleep:1000\"\n  timeout_secs = 10\n  \
                 retries = 3\n"
            ));
        }
    }
    spec
}

/// Five hosts with a node each, agreeing on a president.
fn start_five(root: &std::path::Path) -> (Hosts, Vec<Node>) {
    let hosts = Hosts::new(5);
    let dirs: Vec<_> = (1..=5).map(|i| root.join(format!("n{i}"))).collect();
    let (token, _) = init(&dirs[0]);
    let mut nodes = vec![hosts.start(1, &dirs[0], None)];
    let addr = first_listen_addr(&nodes[0]);
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        nodes.push(hosts.start(i + 1, dir, Some((&addr, &token))));
    }
    wait_for("five nodes to agree on a president", || {
        agreed_president(&nodes.iter().collect::<Vec<_>>(), 5)
    });
    (hosts, nodes)
}

fn peer_of(node: &Node) -> String {
    node.status()
        .and_then(|status| field(&status, "peer_id"))
        .expect("the node's peer id")
}

/// Whether `peer` holds a role in `hierarchy` that a live member can take over: governor,
/// mayor or state voter. (Federal voters are all five members here: there is no one to
/// replace a cut-off one with, and the other four are a quorum without it.)
fn named_in(hierarchy: &Value, peer: &str) -> bool {
    let listed = |value: &Value| {
        value
            .as_array()
            .is_some_and(|peers| peers.iter().any(|p| p.as_str() == Some(peer)))
    };
    hierarchy["states"].as_array().is_some_and(|states| {
        states.iter().any(|state| {
            state["governor"].as_str() == Some(peer)
                || listed(&state["mayors"])
                || listed(&state["voters"])
        })
    })
}

/// Runs the slow project, cuts the host `pick` chooses once the project is under way,
/// and checks that the others finish it, stop naming the cut-off node, and agree with it
/// on one president after the heal.
fn cut_mid_project(pick: impl Fn(&[Node], &str) -> Option<usize>) {
    let root = tempfile::tempdir().expect("tempdir");
    let (hosts, nodes) = start_five(root.path());
    let president = agreed_president(&nodes.iter().collect::<Vec<_>>(), 5).expect("president");
    let id = nodes[0].submit(&slow_spec()).expect("submitted");
    wait_for("the project to reach its second phase", || {
        let project = nodes[0].project(&id)?;
        (field(&project, "phase").as_deref() != Some("initiation")).then_some(())
    });
    let cut = wait_for("a host to cut", || pick(&nodes, &president));
    let cut_peer = peer_of(&nodes[cut]);
    hosts.cut(cut + 1);
    let others: Vec<&Node> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != cut)
        .map(|(_, node)| node)
        .collect();
    let deadline = std::time::Instant::now() + PROJECT_LIMIT;
    let project = loop {
        let ended = others.iter().find_map(|node| {
            let project = node.project(&id)?;
            matches!(
                field(&project, "status").as_deref(),
                Some("completed" | "failed")
            )
            .then_some(project)
        });
        if let Some(project) = ended {
            break project;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the project did not end within {PROJECT_LIMIT:?} with host {} cut off",
            cut + 1
        );
        std::thread::sleep(POLL);
    };
    assert_eq!(
        field(&project, "status").as_deref(),
        Some("completed"),
        "{project}"
    );
    // The connected hosts stop naming the cut-off node as governor, mayor or state voter.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let views: Vec<Option<Value>> = others.iter().map(|node| node.hierarchy()).collect();
        if views
            .iter()
            .all(|view| view.as_ref().is_some_and(|h| !named_in(h, &cut_peer)))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the connected hosts still name the cut-off node {cut_peer} after {WAIT:?}: {views:#?}"
        );
        std::thread::sleep(POLL);
    }
    hosts.heal(cut + 1);
    let all: Vec<&Node> = nodes.iter().collect();
    wait_for("all five to agree on one president after the heal", || {
        agreed_president(&all, 5)
    });
}

/// The index of the node with peer id `peer`, if it answers.
fn position(nodes: &[Node], peer: &str) -> Option<usize> {
    nodes
        .iter()
        .position(|node| node.status().and_then(|s| field(&s, "peer_id")).as_deref() == Some(peer))
}

#[test]
fn cutting_the_presidents_host_mid_project_loses_nothing() {
    cut_mid_project(position);
}

#[test]
fn cutting_a_mayors_host_mid_project_loses_nothing() {
    cut_mid_project(|nodes, president| {
        let hierarchy = nodes[0].hierarchy()?;
        let states = hierarchy["states"].as_array()?;
        // A mayor that is not also the president.
        states
            .iter()
            .flat_map(|state| state["mayors"].as_array().cloned().unwrap_or_default())
            .filter_map(|mayor| mayor.as_str().map(str::to_string))
            .filter(|mayor| mayor != president)
            .find_map(|mayor| position(nodes, &mayor))
    });
}

#[test]
fn cutting_a_workers_host_while_it_holds_a_task_loses_nothing() {
    cut_mid_project(|nodes, president| {
        let (_, listed) = nodes[0].api_get("/api/v1/projects")?;
        let listed: Vec<Value> = serde_json::from_str(&listed).ok()?;
        let project = field(listed.first()?, "id")?;
        // A worker holding a task that is not also the president.
        all_tasks(nodes, &project)
            .values()
            .filter(|task| field(task, "status").as_deref() == Some("assigned"))
            .filter_map(|task| field(task, "worker"))
            .filter(|worker| worker != president)
            .find_map(|worker| position(nodes, &worker))
    });
}
