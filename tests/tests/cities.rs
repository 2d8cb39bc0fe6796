//! Cities that scale with their state's queue: a burst of 2,000 tasks in one state (two
//! projects of 1,000) opens more cities in that state, every task completes with exactly
//! one result, and the extra cities close again once the queue is empty.
//!
//! The tasks name the `technical` state, but five nodes do not always give every state a
//! group: the president then moves a phase's tasks to a governed state. So the test
//! watches every state's cities, and the burst's state is the one whose cities grow.

use std::fmt::Write as _;
use std::time::Duration;

use aamas_tests::*;

/// How long the burst may take (debug build, loaded machine).
const BURST_LIMIT: Duration = Duration::from_secs(300);
/// How long the cities may take to close after the burst: one cool-down per closed city
/// (`aamas_node::roles::cities::CITY_COOLDOWN_MS`, 30 s) and some.
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
