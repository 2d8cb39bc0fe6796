//! Times a real 5-process mesh on loopback: from `aamas init` to five nodes agreeing on a
//! president and five members, then to a full hierarchy (every node's `aamas hierarchy`
//! names the same governor for each populated state), then president failover after `kill -9`, as `aamas status`
//! sees it (the moment every survivor names the same new president), over N kills.
//!
//! Run: `cargo build --release -p aamas-cli && cargo run --release -p aamas-tests --example mesh_timing -- 20`
//! Figures are kept in `docs/PERFORMANCE.md`. Note that polling `aamas status` (every
//! 200 ms, one process per node and poll) adds up to about 0.3 s to what it measures.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use aamas_tests::*;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn main() {
    let kills: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let root = tempfile::tempdir().expect("tempdir");
    let dirs: Vec<PathBuf> = (1..=5).map(|i| root.path().join(format!("n{i}"))).collect();

    let start = Instant::now();
    let (token, _) = init(&dirs[0]);
    let mut nodes = vec![Node::start(&dirs[0], None)];
    let addr = first_listen_addr(&nodes[0]);
    for dir in &dirs[1..] {
        nodes.push(Node::start(dir, Some((&addr, &token))));
    }
    let mut president = wait_for("five nodes to agree", || {
        agreed_president(&nodes.iter().collect::<Vec<_>>(), 5)
    });
    println!(
        "init to 5 nodes agreeing on president and members: {:?}",
        start.elapsed()
    );
    wait_for("a governor for each populated state", || {
        agreed_governors(&nodes.iter().collect::<Vec<_>>())
    });
    println!(
        "init to the full 5-node hierarchy (a governor for each populated state, agreed): {:?}",
        start.elapsed()
    );

    let mut times = Vec::with_capacity(kills);
    for round in 0..kills {
        let (successor, elapsed) = kill_president(&mut nodes, &president, 5);
        println!("kill {}: new president after {elapsed:?}", round + 1);
        times.push(elapsed);
        president = successor;
    }
    times.sort();
    println!(
        "president failover after kill -9 over {kills} kills, as `aamas status` sees it: p50 {:?}, p99 {:?}, max {:?}",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times.last().copied().unwrap_or_default()
    );
}
