//! Builtin tasks through the full hierarchy of a real 5-process mesh: the
//! president hands them to the governors, mayors dispatch them to workers, workers run
//! them and report, governors commit one result each; every hop a sealed, signed
//! envelope and every commit a Raft write. Prints tasks per second (submission to the
//! project's completion) and the dispatch latency (a mayor choosing a worker → the
//! worker holding the attempt) from the nodes' `aamas_dispatch_seconds` histograms.
//!
//! Run: `cargo build --release -p aamas-cli && AAMAS_BIN=target/release/aamas cargo run --release -p aamas-tests --example task_throughput -- 1000 64`
//! (tasks, worker capacity, builtin action: `noop` by default, or `digest`, whose 64-byte
//! output is copied to two voters as an artefact before it is reported). Figures are
//! kept in `docs/PERFORMANCE.md`. `AAMAS_POLICY=FILE` puts that policy in force
//! instead of the default one.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use aamas_tests::*;

fn spec(tasks: usize, action: &str) -> String {
    let states = ["technical", "financial", "market", "operations"];
    let mut text = String::from("name = \"throughput\"\n[[phase]]\nname = \"development\"\n");
    for i in 0..tasks {
        let _ = write!(
            text,
            "  [[phase.task]]\n  name = \"t{i:05}\"\n  state = \"{}\"\n  executor = \"builtin\"\n  action = \"{action}\"\n  retries = 0\n",
            states[i % states.len()],
        );
    }
    text
}

/// Merged buckets of the histogram `metric` (e.g. `aamas_dispatch_seconds`) of all
/// nodes: upper bound in µs → count.
fn buckets(nodes: &[Node], metric: &str) -> BTreeMap<u64, u64> {
    let prefix = format!("{metric}_bucket");
    let mut merged = BTreeMap::new();
    for node in nodes {
        let Some((_, body)) = node.api_get("/metrics") else {
            continue;
        };
        for line in body.lines().filter(|l| l.starts_with(&prefix)) {
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

const DISPATCH: &str = "aamas_dispatch_seconds";
const ROUNDS: &str = "aamas_work_round_seconds";
const BATCHES: &str = "aamas_work_batch_messages";

/// The sum and count of the histogram `metric` over all nodes: for the courier's
/// batches, the work messages sent between nodes and the envelopes they took.
fn totals(nodes: &[Node], metric: &str) -> (f64, f64) {
    let sum_of =
        |series: &str| -> f64 { nodes.iter().filter_map(|node| node.metric(series)).sum() };
    (
        sum_of(&format!("{metric}_sum")),
        sum_of(&format!("{metric}_count")),
    )
}

/// The observations in `after` that were not in `before`.
fn since(before: &BTreeMap<u64, u64>, after: &BTreeMap<u64, u64>) -> BTreeMap<u64, u64> {
    after
        .iter()
        .map(|(le, count)| (*le, count - before.get(le).copied().unwrap_or(0)))
        .collect()
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

/// A run longer than this keeps its nodes' directories (see `main`).
const SLOW_SECS: u64 = 30;

fn main() {
    let mut args = std::env::args().skip(1);
    let tasks: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(1_000);
    let capacity: String = args.next().unwrap_or_else(|| "64".into());
    // `noop` gives an empty output (nothing to copy); `digest` 64 bytes, which the worker
    // copies to two voters of the task's state before reporting it.
    let action: String = args.next().unwrap_or_else(|| "noop".into());
    let root = tempfile::tempdir().expect("tempdir");
    let dirs: Vec<PathBuf> = (1..=5).map(|i| root.path().join(format!("n{i}"))).collect();
    let (token, _) = init(&dirs[0]);
    // `AAMAS_POLICY=FILE`: the founder puts that policy in force instead of the default
    // (the cost of governance on the submission of every task).
    if let Some(policy) = std::env::var_os("AAMAS_POLICY") {
        std::fs::copy(&policy, dirs[0].join("policy.toml")).expect("copy AAMAS_POLICY");
    }
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
    let envelopes_before = totals(&nodes, BATCHES);
    let before = buckets(&nodes, DISPATCH);
    let rounds_before = buckets(&nodes, ROUNDS);
    let started = Instant::now();
    let id = nodes[1].submit(&spec(tasks, &action)).expect("submit");
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
    // A slow run (or any, with AAMAS_KEEP set) keeps the nodes' data and logs to study:
    // run with `AAMAS_TEST_LOG=info,aamas_node=debug,openraft=warn` to follow each task.
    if elapsed > std::time::Duration::from_secs(SLOW_SECS)
        || std::env::var_os("AAMAS_KEEP").is_some()
    {
        let kept = root.keep();
        println!(
            "slow run or AAMAS_KEEP: the nodes' logs are kept in {}",
            kept.display()
        );
    }
    assert_eq!(
        field(&project, "status").as_deref(),
        Some("completed"),
        "{project}"
    );
    let envelopes = totals(&nodes, BATCHES);
    let delta = since(&before, &buckets(&nodes, DISPATCH));
    let rounds = since(&rounds_before, &buckets(&nodes, ROUNDS));
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
        "{tasks} builtin {action} tasks on 5 nodes (capacity {capacity} per worker): {elapsed:.2?} from submission to completion = {:.0} tasks/s",
        tasks as f64 / elapsed.as_secs_f64()
    );
    println!(
        "dispatch latency (mayor picks a worker → the worker holds the attempt), {} dispatches: p50 {}, p99 {}",
        delta.values().max().copied().unwrap_or(0),
        micros(quantile(&delta, 0.5)),
        micros(quantile(&delta, 0.99))
    );
    let (messages, sent) = (
        envelopes.0 - envelopes_before.0,
        envelopes.1 - envelopes_before.1,
    );
    println!(
        "work messages between nodes: {messages:.0} in {sent:.0} envelopes ({:.1} per envelope)",
        messages / sent.max(1.0)
    );
    println!(
        "work driver rounds (inputs wait meanwhile), {} rounds: p50 {}, p99 {}",
        rounds.values().max().copied().unwrap_or(0),
        micros(quantile(&rounds, 0.5)),
        micros(quantile(&rounds, 0.99))
    );
}
