//! `kill -9` and restart under write load (see `aamas_tests::restarts`): N hosts, writers
//! submitting projects as fast as they are answered, and a seeded loop that kills a
//! random host's process and starts it again, R times; then every acknowledged project
//! must be on every node. Writes `report.json` and `report.txt` to the report dir and
//! exits 1 on a violation. Needs root and iproute2.
//!
//! Run: `cargo build --release --workspace --bins --examples && AAMAS_BIN=target/release/aamas target/release/examples/restarts --restarts 1000 --hosts 3 --seed 1 --report DIR`
//! (`--no-fsync` runs the nodes without syncing, as the other tests do.)

use aamas_tests::restarts::{self, Config};

fn main() {
    let mut config = Config {
        hosts: 3,
        seed: 1,
        restarts: 100,
        writers: 2,
        fsync: true,
        env: Vec::new(),
    };
    let mut report_dir = std::path::PathBuf::from("restarts-report");
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--no-fsync" {
            config.fsync = false;
            continue;
        }
        let value = args
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--hosts" => config.hosts = value.parse().expect("--hosts N (3 to 9)"),
            "--seed" => config.seed = value.parse().expect("--seed N"),
            "--restarts" => config.restarts = value.parse().expect("--restarts N"),
            "--writers" => config.writers = value.parse().expect("--writers N"),
            "--report" => report_dir = value.into(),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!((3..=9).contains(&config.hosts), "--hosts 3 to 9");
    let root = tempfile::tempdir().expect("tempdir");
    let report = restarts::run(root.path(), &config);
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
        aamas_tests::keep_logs(root.path(), &report_dir);
        std::process::exit(1);
    }
}
