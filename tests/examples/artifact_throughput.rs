//! Artefacts between real processes: a 5-process mesh runs shell tasks that each print
//! SIZE MiB; each worker keeps its output and has two voters of the task's state pull
//! copies in 256 KiB chunks before it reports the result. Prints the write throughput
//! (bytes kept ÷ time to place the copies, from the nodes' `aamas_artifact_copy_seconds`
//! and `aamas_artifact_kept_bytes_total`) and the read throughput of `GET
//! /api/v1/projects/{id}/artifacts/{task}` on a node that does not hold the artefact
//! (it pulls it from a holder and checks the digest), with a node that does as a
//! comparison.
//!
//! Run: `cargo build --release -p aamas-cli && AAMAS_BIN=target/release/aamas cargo run --release -p aamas-tests --example artifact_throughput -- 4 8`
//! (MiB per output, tasks). Figures are kept in `docs/PERFORMANCE.md`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use aamas_tests::*;

/// The sum of the metric lines named `name` (no labels) over the nodes.
fn metric_sum(nodes: &[Node], name: &str) -> f64 {
    nodes
        .iter()
        .filter_map(|node| node.api_get("/metrics"))
        .flat_map(|(_, body)| {
            body.lines()
                .filter(|line| line.split(' ').next() == Some(name))
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mib: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(4);
    let tasks: usize = args.next().and_then(|n| n.parse().ok()).unwrap_or(8);
    let root = tempfile::tempdir().expect("tempdir");
    let dirs: Vec<PathBuf> = (1..=5).map(|i| root.path().join(format!("n{i}"))).collect();
    let (token, _) = init(&dirs[0]);
    let cap = (mib << 20).to_string();
    let extra = ["--max-artifact-bytes", cap.as_str()];
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
    let mut spec = String::from("name = \"artefacts\"\n[[phase]]\nname = \"development\"\n");
    for i in 0..tasks {
        // Each output differs (its first line), so that no two share a digest.
        let _ = write!(
            spec,
            "  [[phase.task]]\n  name = \"t{i}\"\n  state = \"technical\"\n  executor = \"shell\"\n  command = \"(echo {i}; yes abcdefghijklmno) | head -c {}\"\n  max_output_bytes = {}\n  timeout_secs = 120\n",
            mib << 20,
            mib << 20
        );
    }
    let started = Instant::now();
    let id = nodes[0].submit(&spec).expect("submit");
    let project = wait_for_project_end(&nodes, &id, std::time::Duration::from_secs(600));
    let elapsed = started.elapsed();
    assert_eq!(
        field(&project, "status").as_deref(),
        Some("completed"),
        "{project}"
    );
    let kept = metric_sum(&nodes, "aamas_artifact_kept_bytes_total");
    let copying = metric_sum(&nodes, "aamas_artifact_copy_seconds_sum");
    println!(
        "{tasks} outputs of {mib} MiB: project done in {elapsed:.2?}; copies placed at {:.1} MiB/s per output (kept {:.0} MiB in {copying:.2} s of copying, summed over the workers)",
        kept / (1 << 20) as f64 / copying.max(f64::EPSILON),
        kept / (1 << 20) as f64,
    );
    let holders = |task: &str| -> Vec<String> {
        let all = all_tasks(&nodes, &id);
        let task = all
            .values()
            .find(|t| field(t, "name").as_deref() == Some(task))
            .expect("the task");
        vec![field(task, "worker").unwrap_or_default()]
    };
    for task in ["t0", &format!("t{}", tasks - 1)] {
        let worker = holders(task);
        let peers: Vec<String> = nodes
            .iter()
            .map(|n| {
                n.status()
                    .and_then(|s| field(&s, "peer_id"))
                    .unwrap_or_default()
            })
            .collect();
        for (i, node) in nodes.iter().enumerate() {
            let role = if worker.contains(&peers[i]) {
                "its worker"
            } else {
                "another node"
            };
            let read = Instant::now();
            let (status, body) = node
                .api_get(&format!("/api/v1/projects/{id}/artifacts/{task}"))
                .expect("the artefact");
            let took = read.elapsed();
            assert!(status.contains("200"), "{status}");
            assert_eq!(body.len(), mib << 20, "{task} from node {i}");
            println!(
                "read {task} ({mib} MiB) on node {i} ({role}): {took:.2?} = {:.1} MiB/s",
                mib as f64 / took.as_secs_f64()
            );
        }
    }
}
