//! A fault campaign on real hosts (see `aamas_tests::campaign`): N `aamas` processes,
//! each in a network namespace of its own, a workload of projects, a seeded schedule of
//! partitions, pauses, kills and packet loss, then checkers on the history and on every
//! node's replicas. Writes `report.json` and `report.txt` to the report dir and exits 1
//! on a violation. Needs root, iproute2 and nftables.
//!
//! Run: `cargo build --release -p aamas-cli && AAMAS_BIN=target/release/aamas cargo run --release -p aamas-tests --example campaign -- --hosts 5 --seed 1 --duration 600 --kinds partition,isolate_president,pause,kill,loss --report DIR`

use std::time::Duration;

use aamas_tests::campaign::{self, Config, Kind};

fn main() {
    let mut config = Config {
        hosts: 5,
        seed: 1,
        duration: Duration::from_secs(120),
        kinds: vec![
            Kind::Partition,
            Kind::IsolatePresident,
            Kind::Pause,
            Kind::Kill,
            Kind::Loss,
        ],
        env: Vec::new(),
    };
    let mut report_dir = std::path::PathBuf::from("campaign-report");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut pairs = args.chunks(2);
    while let Some([flag, value]) = pairs.next() {
        match flag.as_str() {
            "--hosts" => config.hosts = value.parse().expect("--hosts N (3 to 9)"),
            "--seed" => config.seed = value.parse().expect("--seed N"),
            "--duration" => {
                config.duration = Duration::from_secs(value.parse().expect("--duration SECS"));
            }
            "--kinds" => {
                config.kinds = value
                    .split(',')
                    .map(|name| {
                        Kind::parse(name).unwrap_or_else(|| {
                            panic!("unknown kind {name:?}: partition, isolate_president, pause, kill, loss")
                        })
                    })
                    .collect();
            }
            "--report" => report_dir = value.into(),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!((3..=9).contains(&config.hosts), "--hosts 3 to 9");
    let root = tempfile::tempdir().expect("tempdir");
    let report = campaign::run(root.path(), &config);
    std::fs::create_dir_all(&report_dir).expect("report dir");
    std::fs::write(
        report_dir.join("report.json"),
        serde_json::to_string_pretty(&report).expect("json"),
    )
    .expect("write report.json");
    let text = report.text();
    std::fs::write(report_dir.join("report.txt"), &text).expect("write report.txt");
    print!("{text}");
    if !report.violations.is_empty() {
        std::process::exit(1);
    }
}
