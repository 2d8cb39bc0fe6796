//! Fault campaigns on real hosts (see `aamas_tests::campaign`): N `aamas` processes, each
//! in a network namespace of its own, a workload of projects, a seeded schedule of
//! partitions, pauses, kills and packet loss, then checkers on the history and on every
//! node's replicas. One seed (`--seed S`) or a sweep (`--seeds A..B`, `--parallel P`
//! campaigns at once); each seed's `report.json` and `report.txt` go to `DIR/seed-S/`,
//! a sweep's totals to `DIR/summary.txt`, and the nodes' logs to the seed's directory when
//! it found a violation (or always, with `--logs always`). Exits 1 on a violation. Needs
//! root, iproute2 and nftables.
//!
//! Run: `cargo build --release --workspace --bins --examples && AAMAS_BIN=target/release/aamas target/release/examples/campaign --hosts 5 --seed 1 --duration 600 --kinds partition,isolate_president,pause,kill,loss,bridge,delay,duplicate,clock_skew --report DIR`

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use aamas_tests::campaign::{self, Config, DiskReads, Kind, Report};

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
            Kind::Bridge,
            Kind::Delay,
            Kind::Duplicate,
            Kind::ClockSkew,
        ],
        env: Vec::new(),
    };
    let mut report_dir = PathBuf::from("campaign-report");
    let mut seeds = None;
    let mut parallel = 1usize;
    let mut keep_logs = false;
    let args: Vec<String> = std::env::args().skip(1).collect();
    const USAGE: &str = "usage: campaign [--hosts N] [--seed S | --seeds A..B [--parallel P]] \
                         [--duration SECS] [--kinds KIND,...] [--report DIR] \
                         [--logs always|violations]";
    if args.iter().any(|arg| arg == "--help" || arg == "-h") {
        println!("{USAGE}\nkinds: {}", Kind::NAMES);
        return;
    }
    if args.len() % 2 == 1 {
        eprintln!("{} has no value\n{USAGE}", args[args.len() - 1]);
        std::process::exit(2);
    }
    let mut pairs = args.chunks(2);
    while let Some([flag, value]) = pairs.next() {
        match flag.as_str() {
            "--hosts" => config.hosts = value.parse().expect("--hosts N (3 to 9)"),
            "--seed" => config.seed = value.parse().expect("--seed N"),
            "--seeds" => {
                let (from, to) = value.split_once("..").expect("--seeds A..B");
                seeds = Some(from.parse::<u64>().expect("A")..=to.parse::<u64>().expect("B"));
            }
            "--parallel" => parallel = value.parse().expect("--parallel N"),
            "--duration" => {
                config.duration = Duration::from_secs(value.parse().expect("--duration SECS"));
            }
            "--kinds" => {
                config.kinds = value
                    .split(',')
                    .map(|name| {
                        Kind::parse(name)
                            .unwrap_or_else(|| panic!("unknown kind {name:?}: {}", Kind::NAMES))
                    })
                    .collect();
            }
            "--report" => report_dir = value.into(),
            "--logs" => {
                keep_logs = match value.as_str() {
                    "always" => true,
                    "violations" => false,
                    other => panic!("--logs always|violations, not {other:?}"),
                }
            }
            other => panic!("unknown flag {other}"),
        }
    }
    assert!((3..=9).contains(&config.hosts), "--hosts 3 to 9");
    assert!((1..=8).contains(&parallel), "--parallel 1 to 8");
    let Some(seeds) = seeds else {
        let report = one(&config, &report_dir, keep_logs).expect("the campaign ran");
        print!("{}", report.text());
        if !report.violations.is_empty() {
            std::process::exit(1);
        }
        return;
    };
    // A sweep: `parallel` threads take the next seed until none is left.
    let queue = Mutex::new(seeds.clone().collect::<Vec<u64>>().into_iter());
    let results: Mutex<Vec<(u64, Result<Report, String>)>> = Mutex::default();
    std::thread::scope(|scope| {
        for _ in 0..parallel {
            scope.spawn(|| {
                loop {
                    let Some(seed) = queue.lock().expect("queue").next() else {
                        return;
                    };
                    let config = Config {
                        seed,
                        ..config.clone()
                    };
                    let dir = report_dir.join(format!("seed-{seed}"));
                    let outcome = one(&config, &dir, keep_logs);
                    match &outcome {
                        Ok(report) => eprintln!(
                            "seed {seed}: {} faults, {} acknowledged, {} violations",
                            report.faults.len(),
                            report.acknowledged,
                            report.violations.len()
                        ),
                        Err(error) => eprintln!("seed {seed}: did not run: {error}"),
                    }
                    results.lock().expect("results").push((seed, outcome));
                }
            });
        }
    });
    let mut results = results.into_inner().expect("results");
    results.sort_by_key(|(seed, _)| *seed);
    let text = summary(&config, &results);
    std::fs::create_dir_all(&report_dir).expect("report dir");
    std::fs::write(report_dir.join("summary.txt"), &text).expect("write summary.txt");
    print!("{text}");
    let failed = results
        .iter()
        .any(|(_, outcome)| outcome.as_ref().map_or(true, |r| !r.violations.is_empty()));
    if failed {
        std::process::exit(1);
    }
}

/// Runs one campaign and writes its reports to `dir`, with the nodes' logs when it found
/// a violation or `keep_logs` says so; a campaign that could not run (a
/// mesh that never formed, say: the runner panics) is an error, not a pass.
fn one(config: &Config, dir: &Path, keep_logs: bool) -> Result<Report, String> {
    let root = tempfile::tempdir().map_err(|e| e.to_string())?;
    let report = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        campaign::run(root.path(), config)
    }))
    .map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".into())
    })?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("report.json"), json).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("report.txt"), report.text()).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("timeline.svg"), report.svg()).map_err(|e| e.to_string())?;
    if keep_logs || !report.violations.is_empty() {
        aamas_tests::keep_logs(root.path(), dir);
    }
    Ok(report)
}

/// A sweep's totals: seeds run and passed, faults by kind, acknowledged and completed
/// projects, violations by checker, leaders per term, and the president isolations'
/// time until the majority committed again (p50, p99, max).
fn summary(config: &Config, results: &[(u64, Result<Report, String>)]) -> String {
    let reports: Vec<&Report> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .collect();
    let mut faults = std::collections::BTreeMap::<String, usize>::new();
    let mut recovered: Vec<u64> = Vec::new();
    let mut not_recovered = 0;
    let mut failovers: Vec<u64> = Vec::new();
    for report in &reports {
        for fault in &report.faults {
            *faults.entry(format!("{:?}", fault.step.kind)).or_default() += 1;
            failovers.extend(fault.failover_ms);
            if fault.step.kind == Kind::IsolatePresident && !fault.hit.is_empty() {
                match fault.recovered_ms {
                    Some(ms) => recovered.push(ms),
                    None => not_recovered += 1,
                }
            }
        }
    }
    recovered.sort_unstable();
    failovers.sort_unstable();
    let quantile = |values: &[u64], q: f64| {
        values
            .get(((values.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .map_or("-".to_string(), |ms| format!("{:.1} s", *ms as f64 / 1e3))
    };
    let at = |q: f64| quantile(&recovered, q);
    let count = |prefix: &str| {
        reports
            .iter()
            .flat_map(|r| &r.violations)
            .filter(|v| v.starts_with(prefix))
            .count()
    };
    let violations: usize = reports.iter().map(|r| r.violations.len()).sum();
    let most_presidents = reports
        .iter()
        .flat_map(|r| r.presidents.values().map(|named| named.len()))
        .max()
        .unwrap_or(0);
    let mut out = format!(
        "sweep: {} seeds ({} to {}) of {}-host campaigns of {} s, kinds {:?}\n",
        results.len(),
        results.first().map_or(0, |(s, _)| *s),
        results.last().map_or(0, |(s, _)| *s),
        config.hosts,
        config.duration.as_secs(),
        config.kinds
    );
    out.push_str(&format!(
        "  ran: {}, passed: {}, did not run: {}\n",
        reports.len(),
        reports.iter().filter(|r| r.violations.is_empty()).count(),
        results.len() - reports.len()
    ));
    out.push_str(&format!("  faults applied: {faults:?}\n"));
    out.push_str(&format!(
        "  acknowledged projects: {}, completed: {}, tasks checked: {}\n",
        reports.iter().map(|r| r.acknowledged).sum::<usize>(),
        reports.iter().map(|r| r.completed).sum::<usize>(),
        reports.iter().map(|r| r.tasks_checked).sum::<usize>(),
    ));
    out.push_str(&format!(
        "  violations: {violations} (lost {}, two results {}, two presidents {}, two leaders {}, \
         two entries {}, two committed entries {}, stale reads {}, not linearizable {}, \
         diverged {})\n",
        count("lost"),
        count("two results"),
        count("two presidents"),
        count("two leaders"),
        count("two entries"),
        count("two committed entries"),
        count("stale read"),
        count("not linearizable"),
        count("diverged")
    ));
    out.push_str(&format!(
        "  register: {} writes, {} consistent reads answered, {} refused\n",
        reports
            .iter()
            .map(|r| r.register.iter().filter(|op| op.write).count())
            .sum::<usize>(),
        reports
            .iter()
            .map(|r| r.register.iter().filter(|op| !op.write).count())
            .sum::<usize>(),
        reports
            .iter()
            .map(|r| r.register_reads_refused)
            .sum::<u64>(),
    ));
    let (mut vote_reads, mut log_reads) = (DiskReads::default(), DiskReads::default());
    for report in &reports {
        vote_reads.add(report.vote_reads);
        log_reads.add(report.log_reads);
    }
    out.push_str(&format!(
        "  persisted votes: {} group terms with a leader, from {}\n",
        reports.iter().map(|r| r.leader_terms).sum::<usize>(),
        vote_reads.line()
    ));
    let verdicts = |pick: fn(&campaign::register::Verdict) -> bool| {
        reports.iter().filter(|r| pick(&r.register_verdict)).count()
    };
    out.push_str(&format!(
        "  register histories, by a full linearizability search: {} linearizable, {} not, \
         {} undecided\n",
        verdicts(|v| matches!(v, campaign::register::Verdict::Linearizable { .. })),
        verdicts(|v| matches!(v, campaign::register::Verdict::NotLinearizable { .. })),
        verdicts(|v| matches!(v, campaign::register::Verdict::GaveUp)),
    ));
    out.push_str(&format!(
        "  persisted logs: {} committed entries compared, from {}\n",
        reports.iter().map(|r| r.committed_entries).sum::<usize>(),
        log_reads.line()
    ));
    out.push_str(&format!(
        "  most presidents named in one term: {most_presidents}\n"
    ));
    let (mut under, mut outside) = (
        campaign::Throughput::default(),
        campaign::Throughput::default(),
    );
    for report in &reports {
        let (u, o) = report.throughput();
        under.add(u);
        outside.add(o);
    }
    out.push_str(&format!(
        "  {}\n",
        campaign::Throughput::line(under, outside)
    ));
    out.push_str(&format!(
        "  president isolated: {} times; the majority committed again after p50 {}, p99 {}, \
         max {}; not before the heal: {not_recovered}\n",
        recovered.len() + not_recovered,
        at(0.5),
        at(0.99),
        at(1.0)
    ));
    out.push_str(&format!(
        "  a new president after a fault on the president's host: {} times, p50 {}, p99 {}, \
         max {} (from the observer's samples, about a second apart)\n",
        failovers.len(),
        quantile(&failovers, 0.5),
        quantile(&failovers, 0.99),
        quantile(&failovers, 1.0)
    ));
    for (seed, outcome) in results {
        match outcome {
            Ok(report) if report.violations.is_empty() => {}
            Ok(report) => {
                out.push_str(&format!("  seed {seed}: {:?}\n", report.violations));
            }
            Err(error) => out.push_str(&format!("  seed {seed}: did not run: {error}\n")),
        }
    }
    out
}
