//! Cities that scale with their state's queue: a burst of 2,000 tasks in one state (two
//! projects of 1,000) opens more cities in that state, every task completes with exactly
//! one result, and the extra cities close again once the queue is empty. The policy's
//! `[scaling]` sets the depth at which they open: 70 tasks keep one city under the
//! default and open more under a target of 8. States scale too, by the policy: a state
//! whose open tasks per member pass its target takes a spare member of a quiet state.
//!
//! The tasks name the `technical` state, but five nodes do not always give every state a
//! group: the president then moves a phase's tasks to a governed state. So the test
//! watches every state's cities, and the burst's state is the one whose cities grow.

use std::fmt::Write as _;
use std::time::Duration;

use aamas_tests::*;
use serde_json::Value;

/// How long the burst may take (debug build, loaded machine).
const BURST_LIMIT: Duration = Duration::from_secs(300);
/// How long the cities may take to close after the burst: one cool-down per closed city
/// (the default policy's `city_cooldown_secs`, 30 s) and some.
const CLOSE_LIMIT: Duration = Duration::from_secs(150);

fn burst(name: &str, tasks: usize) -> String {
    let mut text = format!("name = \"{name}\"\n[[phase]]\nname = \"development\"\n");
    for i in 0..tasks {
        let _ = write!(
            text,
            "  [[phase.task]]\n  name = \"t{i:05}\"\n  state = \"technical\"\n  \
             executor = \"builtin\"\n  action = \"noop\"\n"
        );
    }
    text
}

/// Each state's cities as `node` sees them: state -> [(city, queue if known)].
type Cities = std::collections::BTreeMap<String, Vec<(String, Option<u64>)>>;

fn cities(node: &Node) -> Option<Cities> {
    let hierarchy = node.hierarchy()?;
    hierarchy["states"]
        .as_array()?
        .iter()
        .map(|state| {
            let name = state["name"].as_str()?.to_string();
            let cities = state["cities"]
                .as_array()?
                .iter()
                .filter_map(|city| {
                    Some((city["name"].as_str()?.to_string(), city["queue"].as_u64()))
                })
                .collect();
            Some((name, cities))
        })
        .collect()
}

/// The most cities any one state has.
fn most_in_a_state(cities: &Cities) -> usize {
    cities.values().map(Vec::len).max().unwrap_or(0)
}

/// The lines of the nodes' logs about roles and governor reports, for a failure message.
fn role_lines(nodes: &[Node]) -> String {
    nodes
        .iter()
        .enumerate()
        .flat_map(|(index, node)| {
            std::fs::read_to_string(node.dir.with_extension("log"))
                .unwrap_or_default()
                .lines()
                .filter(|line| line.contains("role changed") || line.contains("governor"))
                .map(|line| format!("n{}: {line}", index + 1))
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_burst_of_two_thousand_tasks_opens_cities_that_close_again() {
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, _) = start_hierarchy(root.path(), 5);
    let started = std::time::Instant::now();
    let first = nodes[0]
        .submit(&burst("burst-a", 1_000))
        .expect("submitted");
    let second = nodes[0]
        .submit(&burst("burst-b", 1_000))
        .expect("submitted");
    let deadline = std::time::Instant::now() + BURST_LIMIT;
    let mut most = 0;
    let mut ended = Vec::new();
    while ended.len() < 2 {
        for node in &nodes {
            if let Some(cities) = cities(node) {
                most = most.max(most_in_a_state(&cities));
            }
        }
        ended = [&first, &second]
            .iter()
            .filter_map(|id| {
                let project = nodes[0].project(id)?;
                matches!(
                    field(&project, "status").as_deref(),
                    Some("completed" | "failed")
                )
                .then_some(project)
            })
            .collect();
        assert!(
            std::time::Instant::now() < deadline,
            "the burst did not end within {BURST_LIMIT:?} (most cities seen: {most})"
        );
        std::thread::sleep(POLL);
    }
    let burst_secs = started.elapsed().as_secs_f64();
    assert!(
        most >= 2,
        "the burst opened no city: at most {most} seen; the hierarchy now: {}; \
         role changes and reports in the nodes' logs:\n{}",
        nodes[0]
            .hierarchy()
            .map_or_else(|| "unreadable".to_string(), |h| h.to_string()),
        role_lines(&nodes)
    );
    for project in &ended {
        assert_eq!(
            field(project, "status").as_deref(),
            Some("completed"),
            "{project}"
        );
    }
    for id in [&first, &second] {
        let tasks = all_tasks(&nodes, id);
        assert_eq!(tasks.len(), 1_000, "every task once in the Ledger");
        for task in tasks.values() {
            assert_eq!(
                field(task, "status").as_deref(),
                Some("succeeded"),
                "{task}"
            );
            assert_eq!(task["result"].as_str().map(str::len), Some(64), "{task}");
        }
    }
    // The queue is empty: the state goes back to one city.
    let deadline = std::time::Instant::now() + CLOSE_LIMIT;
    loop {
        let now: Vec<Cities> = nodes.iter().filter_map(cities).collect();
        if now.iter().all(|cities| most_in_a_state(cities) == 1) && now.len() == nodes.len() {
            eprintln!(
                "burst: 2,000 tasks in {burst_secs:.1} s, {most} cities at most, one city \
                 again {:.1} s later",
                started.elapsed().as_secs_f64() - burst_secs
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the extra cities did not close within {CLOSE_LIMIT:?}: {now:?}"
        );
        std::thread::sleep(POLL);
    }
}

/// Samples every node's cities until project `id` ends; the most cities any state had.
fn most_until_done(nodes: &[Node], id: &str) -> usize {
    let deadline = std::time::Instant::now() + BURST_LIMIT;
    let mut most = 0;
    loop {
        for node in nodes {
            if let Some(cities) = cities(node) {
                most = most.max(most_in_a_state(&cities));
            }
        }
        let status = nodes[0]
            .project(id)
            .and_then(|project| field(&project, "status"));
        if status.as_deref() == Some("completed") {
            return most;
        }
        assert!(
            status.as_deref() != Some("failed") && std::time::Instant::now() < deadline,
            "project {id} did not complete within {BURST_LIMIT:?}: {status:?}"
        );
        std::thread::sleep(POLL);
    }
}

#[test]
fn the_policy_sets_the_depth_at_which_cities_open() {
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, president) = start_hierarchy(root.path(), 5);
    let chief = &nodes[index_of(&nodes, &president)];
    // 70 pending tasks stay under the default policy's 120% of 64 per city: one city.
    let id = nodes[0].submit(&burst("calm", 70)).expect("submitted");
    let most = most_until_done(&nodes, &id);
    assert_eq!(most, 1, "70 tasks opened a city under the default policy");

    // A target of 8 per city: the same 70 open more, and a cool-down of 20 s keeps them
    // long enough to be seen before they close again.
    let path = root.path().join("cities.toml");
    std::fs::write(
        &path,
        "[scaling]\ncity_target_depth = 8\ncity_open_percent = 120\n\
         city_close_percent = 50\ncity_cooldown_secs = 20\n",
    )
    .expect("write");
    apply_policy_everywhere(&nodes, chief, &path.display().to_string());
    let id = nodes[0].submit(&burst("busy", 70)).expect("submitted");
    let most = most_until_done(&nodes, &id);
    assert!(most >= 2, "a target of 8 opened no city for 70 tasks");
    // Empty again: back to one city once the policy's cool-down has passed.
    let deadline = std::time::Instant::now() + CLOSE_LIMIT;
    loop {
        let now: Vec<Cities> = nodes.iter().filter_map(cities).collect();
        if now.iter().all(|cities| most_in_a_state(cities) == 1) && now.len() == nodes.len() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the extra cities did not close within {CLOSE_LIMIT:?}: {now:?}"
        );
        std::thread::sleep(POLL);
    }
}

/// Each state's members (peer ids) as `node`'s `aamas members` shows them.
fn members_by_state(node: &Node) -> std::collections::BTreeMap<String, Vec<String>> {
    let members: Vec<Value> = node
        .cli(&["members", "--json"])
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    let mut by_state: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for member in &members {
        if let (Some(state), Some(peer)) = (field(member, "state"), field(member, "peer_id")) {
            by_state.entry(state).or_default().push(peer);
        }
    }
    by_state
}

#[test]
fn the_president_moves_a_spare_member_from_a_quiet_state_to_a_busy_one() {
    let root = tempfile::tempdir().expect("tempdir");
    let dirs: Vec<std::path::PathBuf> =
        (1..=7).map(|i| root.path().join(format!("n{i}"))).collect();
    let (token, _) = init(&dirs[0]);
    let mut nodes = vec![Node::start(&dirs[0], None)];
    let addr = first_listen_addr(&nodes[0]);
    // Five members with the skill `market` crowd that state: it can spare some.
    for (i, dir) in dirs[1..].iter().enumerate() {
        let skills: &[&str] = if i < 5 { &["--skills", "market"] } else { &[] };
        nodes.push(Node::start_with(dir, Some((&addr, &token)), skills));
    }
    let president = wait_for("the nodes to agree on a president", || {
        agreed_president(&nodes.iter().collect::<Vec<_>>(), 7)
    });
    let governed = wait_for("a governor for each populated state", || {
        agreed_governors(&nodes.iter().collect::<Vec<_>>())
    });
    let chief = &nodes[index_of(&nodes, &president)];
    let before = members_by_state(chief);
    assert!(
        before.get("market").is_some_and(|m| m.len() >= 5),
        "{before:?}"
    );
    // The busy state: a governed one other than market, with the fewest members.
    let busy = governed
        .iter()
        .map(|(state, _, _)| state.clone())
        .filter(|state| state != "market")
        .min_by_key(|state| before.get(state).map_or(0, Vec::len))
        .expect("a governed state besides market");
    let policy = root.path().join("states.toml");
    std::fs::write(
        &policy,
        "[scaling]\nstate_target_tasks = 2\nstate_cooldown_secs = 5\n",
    )
    .expect("write");
    chief
        .cli(&["policy", "apply", &policy.display().to_string()])
        .expect("applied");
    let mut spec = String::from("name = \"busy\"\n[[phase]]\nname = \"development\"\n");
    for i in 0..40 {
        let _ = write!(
            spec,
            "  [[phase.task]]\n  name = \"t{i:02}\"\n  state = \"{busy}\"\n  \
             executor = \"shell\"\n  command = \"sleep 2\"\n  timeout_secs = 60\n"
        );
    }
    let id = nodes[0].submit(&spec).expect("submitted");
    let after = wait_for("a member moved into the busy state", || {
        let now = members_by_state(chief);
        let grew = now.get(&busy).map_or(0, Vec::len) > before.get(&busy).map_or(0, Vec::len);
        grew.then_some(now)
    });
    // It came from market, the quiet state with members to spare.
    assert!(
        after.get("market").map_or(0, Vec::len) < before["market"].len(),
        "{before:?} -> {after:?}"
    );
    assert!(
        chief.metric("aamas_state_moves_total").unwrap_or(0.0) >= 1.0,
        "the move was not counted"
    );
    let end = wait_for_project_end(&nodes, &id, BURST_LIMIT);
    assert_eq!(field(&end, "status").as_deref(), Some("completed"), "{end}");
}
