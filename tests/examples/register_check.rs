//! Checks the register histories a campaign sweep recorded (`DIR/seed-S/report.json`,
//! written by the `campaign` example) with the full linearizability search
//! (`aamas_tests::campaign::register`), again and apart from the run: to check a sweep
//! made before the search existed, or to time the search. Exits 1 if a history is not
//! linearizable.
//!
//! Run: `cargo build --release -p aamas-tests --example register_check && target/release/examples/register_check DIR`

use std::path::Path;
use std::time::Instant;

use aamas_tests::campaign::RegisterOp;
use aamas_tests::campaign::register::{STEP_LIMIT, Verdict, check};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir] = args.as_slice() else {
        eprintln!("usage: register_check DIR (a campaign sweep's --report DIR)");
        std::process::exit(2);
    };
    let mut seeds: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("reading {dir}: {error}"))
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let seed = path
                .file_name()?
                .to_str()?
                .strip_prefix("seed-")?
                .parse()
                .ok()?;
            Some((seed, path.join("report.json")))
        })
        .collect();
    seeds.sort();
    let (mut linearizable, mut not, mut undecided, mut unreadable) = (0, 0, 0, 0);
    let (mut ops, mut slowest) = (0usize, 0f64);
    for (seed, path) in &seeds {
        let Some(history) = read(path) else {
            eprintln!("seed {seed}: no register history in {}", path.display());
            unreadable += 1;
            continue;
        };
        let start = Instant::now();
        let verdict = check(&history, STEP_LIMIT);
        let secs = start.elapsed().as_secs_f64();
        slowest = slowest.max(secs);
        ops += history.len();
        match verdict {
            Verdict::Linearizable { .. } => linearizable += 1,
            Verdict::NotLinearizable { .. } => not += 1,
            Verdict::GaveUp => undecided += 1,
        }
        println!(
            "seed {seed}: {} operations, {} ({secs:.3} s)",
            history.len(),
            verdict.describe()
        );
    }
    println!(
        "{} histories, {ops} operations: {linearizable} linearizable, {not} not, {undecided} \
         undecided, {unreadable} unreadable; the slowest search took {slowest:.3} s",
        seeds.len()
    );
    if not > 0 {
        std::process::exit(1);
    }
}

/// The `register` of one campaign's report.
fn read(path: &Path) -> Option<Vec<RegisterOp>> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut report: serde_json::Value = serde_json::from_str(&text).ok()?;
    serde_json::from_value(report.get_mut("register")?.take()).ok()
}
