//! Raft on RocksDB with fsync on: commit throughput and leader failover, against the
//! machine's raw fsync rate measured in the same run.
//!
//! Run: `cargo bench -p aamas-consensus --bench raft` (add `-- --quick` for a short run).
//! Figures are kept in `docs/PERFORMANCE.md`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aamas_consensus::registry::RegistryCommand;
use aamas_consensus::testing::{MemRouter, MemTransport};
use aamas_consensus::{
    Command, FEDERAL_GROUP, Group, Groups, MemberNode, NodeId, RaftConfig, Request, Store,
    StoreConfig,
};

const G: u64 = FEDERAL_GROUP;

/// 4 KiB writes, each followed by fdatasync, for `duration`: the physical bound of one
/// sequential committer.
fn raw_fsync_rate(dir: &std::path::Path, duration: Duration) -> f64 {
    let path = dir.join("fsync-probe");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("probe file");
    let block = vec![0x5au8; 4096];
    let start = Instant::now();
    let mut count = 0u64;
    while start.elapsed() < duration {
        file.write_all(&block).expect("write");
        file.sync_data().expect("fdatasync");
        count += 1;
    }
    count as f64 / start.elapsed().as_secs_f64()
}

struct Cluster {
    router: MemRouter,
    nodes: BTreeMap<NodeId, Groups<MemTransport>>,
    _dirs: Vec<tempfile::TempDir>,
}

async fn cluster(n: u64, config: &RaftConfig, fsync: bool) -> Cluster {
    let router = MemRouter::new();
    let mut nodes = BTreeMap::new();
    let mut dirs = Vec::new();
    for id in 1..=n {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(
            dir.path(),
            StoreConfig {
                fsync,
                ..StoreConfig::default()
            },
        )
        .expect("store");
        let groups = Groups::new(id, store, config, router.transport(id)).expect("groups");
        router.register(id, groups.clone());
        groups.open(G).await.expect("open");
        nodes.insert(id, groups);
        dirs.push(dir);
    }
    let voters: BTreeMap<NodeId, MemberNode> =
        (1..=n).map(|id| (id, MemberNode::default())).collect();
    nodes[&1].initialize(G, voters).await.expect("initialize");
    Cluster {
        router,
        nodes,
        _dirs: dirs,
    }
}

impl Cluster {
    async fn leader(&self, among: &[NodeId]) -> Group {
        loop {
            for id in among {
                let group = self.nodes[id].get(G).expect("group");
                if let Some(leader) = group.wait_leader(Duration::from_secs(10)).await
                    && among.contains(&leader)
                {
                    let candidate = self.nodes[&leader].get(G).expect("group");
                    if candidate.leader() == Some(leader) {
                        return candidate;
                    }
                }
            }
            let mut metrics = self.nodes[&among[0]]
                .get(G)
                .expect("group")
                .raft()
                .metrics();
            let _ = tokio::time::timeout(Duration::from_millis(100), metrics.changed()).await;
        }
    }
}

fn request(id: u128) -> Request {
    Request {
        id,
        command: Command::Registry(RegistryCommand::SetPolicy {
            key: format!("k{}", id % 512),
            value: "v".repeat(64),
        }),
    }
}

async fn throughput(cluster: &Cluster, writers: usize, duration: Duration) -> f64 {
    let leader = cluster
        .leader(&cluster.nodes.keys().copied().collect::<Vec<_>>())
        .await;
    let next = Arc::new(AtomicU64::new(1_000_000 * writers as u64));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let leader = leader.clone();
        let next = next.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            while start.elapsed() < duration {
                let id = u128::from(next.fetch_add(1, Ordering::Relaxed));
                leader.write(request(id)).await.expect("write");
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer");
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Kills (cuts off) the leader `kills` times and measures until the survivors agree on a
/// new leader. With `settled`, every follower has applied the last write before the kill
/// (an idle group); without, the kill follows a write at once, so one follower may lag,
/// and openraft makes a candidate with a shorter log wait longer.
async fn failovers(kills: usize, settled: bool) -> Vec<Duration> {
    let config = RaftConfig::default();
    let cluster = cluster(3, &config, true).await;
    let all: Vec<NodeId> = cluster.nodes.keys().copied().collect();
    let mut times = Vec::with_capacity(kills);
    for kill in 0..kills {
        let leader = cluster.leader(&all).await;
        let old = leader.raft().metrics().borrow().id;
        // Commit something so the group is live before the kill.
        let index = leader
            .write(request(kill as u128))
            .await
            .expect("write")
            .index;
        if settled {
            for id in &all {
                let follower = cluster.nodes[id].get(G).expect("group");
                assert!(follower.wait_applied(index, Duration::from_secs(10)).await);
            }
        }
        let survivors: Vec<NodeId> = all.iter().copied().filter(|id| *id != old).collect();
        let start = Instant::now();
        cluster.router.set_down(old, true);
        let new = cluster.leader(&survivors).await;
        times.push(start.elapsed());
        assert_ne!(new.raft().metrics().borrow().id, old);
        cluster.router.set_down(old, false);
        // The old leader rejoins and steps down before the next round.
        let returned = cluster.nodes[&old].get(G).expect("group");
        let new_id = new.raft().metrics().borrow().id;
        returned
            .raft()
            .wait(Some(Duration::from_secs(10)))
            .metrics(|m| m.current_leader == Some(new_id), "rejoined")
            .await
            .expect("old leader follows the new one");
    }
    times
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` does not, and then this runs
    // as a short smoke test of the benchmark itself.
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|arg| arg == "--bench");
    let quick = args.iter().any(|arg| arg == "--quick");
    let (duration, kills) = match (bench, quick) {
        (false, _) => (Duration::from_millis(300), 3),
        (true, true) => (Duration::from_secs(2), 20),
        (true, false) => (Duration::from_secs(5), 100),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let probe_dir = tempfile::tempdir().expect("tempdir");
    let raw = raw_fsync_rate(probe_dir.path(), duration);
    println!("raw 4 KiB write + fdatasync: {raw:.0}/s (one sequential writer's physical bound)");
    runtime.block_on(async {
        let config = RaftConfig::default();
        for fsync in [true, false] {
            let cluster = cluster(3, &config, fsync).await;
            let label = if fsync { "fsync on" } else { "fsync off (CPU bound)" };
            let one = throughput(&cluster, 1, duration).await;
            println!("3 voters, {label}, 1 writer:  {one:.0} commits/s = {:.2}x raw fsync", one / raw);
            let many = throughput(&cluster, 64, duration).await;
            println!("3 voters, {label}, 64 writers: {many:.0} commits/s = {:.1}x raw fsync", many / raw);
            for groups in cluster.nodes.values() {
                groups.shutdown().await;
            }
        }
        for settled in [true, false] {
            let mut times = failovers(kills, settled).await;
            times.sort();
            println!(
                "failover over {kills} leader kills ({}; election timeout 150-300 ms): p50 {:?}, p99 {:?}, max {:?}",
                if settled { "followers caught up" } else { "right after a write" },
                percentile(&times, 0.5),
                percentile(&times, 0.99),
                times.last().copied().unwrap_or_default()
            );
        }
    });
}
