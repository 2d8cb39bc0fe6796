//! No-op builtin tasks through the full hierarchy of a real 5-process mesh: the
//! president hands them to the governors, mayors dispatch them to workers, workers run
//! them and report, governors commit one result each; every hop a sealed, signed
//! envelope and every commit a Raft write. Prints tasks per second (submission to the
//! project's completion) and the dispatch latency (a mayor choosing a worker → the
//! worker holding the attempt) from the nodes' `aamas_dispatch_seconds` histograms.
//!
//! Run: `cargo build --release -p aamas-cli && AAMAS_BIN=target/release/aamas cargo run --release -p aamas-tests --example task_throughput -- 1000 64`
//! (tasks, worker capacity). Figures are kept in `docs/PERFORMANCE.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use aamas_tests::*;

fn spec(tasks: usize) -> String {
    let states = ["technical", "financial", "market", "operations"];
    let mut text = String::from("name = \"throughput\"\n[[phase]]\nname = \"development\"\n");
    for i in 0..tasks {
        let _ = write!(
            text,
            "  [[phase.task]]\n  name = \"t{i:05}\"\n  state = \"{}\"\n  executor = \"builtin\"\n  action = \"noop\"\n  retries = 0\n",
            states[i % states.len()]
        );
    }
    text
}

/// Merged `aamas_dispatch_seconds` buckets of all nodes: upper bound → count.
fn buckets(nodes: &[Node]) -> BTreeMap<u64, u64> {
    let mut merged = BTreeMap::new();
    for node in nodes {
        let Some((_, body)) = node.api_get("/metrics") else {
            continue;
        };
        for line in body
            .lines()
            .filter(|l| l.starts_with("aamas_dispatch_seconds_bucket"))
        {
            let le = line
                .split("le=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next());
            let count = line.rsplit(' ').next().and_then(|c| c.parse::<u64>().ok());
            if let (Some(le), Some(count)) = (le, count) {
                let micros = if le == "+Inf" {
                    u64::MAX
                } else {
                    (le.parse::<f64>().unwrap_or(0.0) * 1e6) as u64
                };
                *merged.entry(micros).or_default() += count;
            }
        }
    }
    merged
}

/// The bucket bound under which `q` of the observations fall (cumulative buckets).
fn quantile(buckets: &BTreeMap<u64, u64>, q: f64) -> Option<u64> {
    let total = *buckets.values().max()?;
    let target = (total as f64 * q).ceil() as u64;
    buckets
        .iter()
        .find(|(_, count)| **count >= target)
        .map(|(le, _)| *le)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let tasks: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(1_000);
    let capacity: String = args.next().unwrap_or_else(|| "64".into());
    let root = tempfile::tempdir().expect("tempdir");
    let dirs: Vec<PathBuf> = (1..=5).map(|i| root.path().join(format!("n{i}"))).collect();
    let (token, _) = init(&dirs[0]);
    let extra = ["--capacity", capacity.as_str()];
    let mut nodes = vec![Node::start_with(&dirs[0], None, &extra)];
    let addr = first_listen_addr(&nodes[0]);
    for dir in &dirs[1..] {
        nodes.push(Node::start_with(dir, Some((&addr, &token)), &extra));
    }
    wait_for("five nodes", || {
        agreed_president(&nodes.iter().collect::<Vec<_>>(), 5)
    });
    wait_for("the governors", || {
        agreed_governors(&nodes.iter().collect::<Vec<_>>())
    });
    let before = buckets(&nodes);
    let started = Instant::now();
    let id = nodes[1].submit(&spec(tasks)).expect("submit");
    // The end is read every 5 ms from the node the project was submitted through (the
    // tests' 200 ms poll over all five nodes was a fifth of the figure at 1,000 tasks).
    let limit = started + std::time::Duration::from_secs(600);
    let project = loop {
        if let Some(project) = nodes[1].project(&id) {
            let status = field(&project, "status").unwrap_or_default();
            if status == "completed" || status == "failed" {
                break project;
            }
        }
        assert!(Instant::now() < limit, "project {id} did not end in 600 s");
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let elapsed = started.elapsed();
    assert_eq!(
        field(&project, "status").as_deref(),
        Some("completed"),
        "{project}"
    );
    let after = buckets(&nodes);
    let delta: BTreeMap<u64, u64> = after
        .iter()
        .map(|(le, count)| (*le, count - before.get(le).copied().unwrap_or(0)))
        .collect();
    let micros = |v: Option<u64>| {
        v.map_or("-".to_string(), |v| {
            if v == u64::MAX {
                "+Inf".into()
            } else {
                format!("≤{:.1} ms", v as f64 / 1e3)
            }
        })
    };
    println!(
        "{tasks} no-op tasks on 5 nodes (capacity {capacity} per worker): {elapsed:.2?} from submission to completion = {:.0} tasks/s",
        tasks as f64 / elapsed.as_secs_f64()
    );
    println!(
        "dispatch latency (mayor picks a worker → the worker holds the attempt), {} dispatches: p50 {}, p99 {}",
        delta.values().max().copied().unwrap_or(0),
        micros(quantile(&delta, 0.5)),
        micros(quantile(&delta, 0.99))
    );
}
