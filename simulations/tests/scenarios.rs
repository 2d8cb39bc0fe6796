//! Every built-in scenario on 50 simulated nodes of real runtimes, with its checkers; and
//! a checker seen to fail when an invariant is broken on purpose.
//!
//! The scenarios run one at a time (a lock), never side by side: each is 50 nodes in
//! this process on a 2-core machine. Timing goals are not asserted here; they are in
//! docs/PERFORMANCE.md with the commands that measure them.

use std::time::Duration;

use aamas_sim::{Report, ScenarioFile, Sim, SimConfig, Step};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const NODES: usize = 50;

fn config(name: &str, nodes: usize) -> SimConfig {
    SimConfig {
        nodes,
        scenario: ScenarioFile::built_in(name).expect("a built-in scenario"),
        seed: 7,
        tasks: None,
        states: 4,
        limit: Duration::from_secs(420),
        progress: false,
    }
}

async fn run(name: &str) -> Report {
    let _turn = ONE_AT_A_TIME.lock().await;
    let report = Sim::run(config(name, NODES)).await.expect("run");
    println!("{}", report.table());
    assert!(report.passed(), "{name} failed:\n{}", report.table());
    assert_eq!(report.nodes, NODES);
    report
}

fn all_results(report: &Report) {
    assert_eq!(
        report.results_seen, report.tasks,
        "one committed result per task: {:?}",
        report.task_statuses
    );
    assert!(
        report
            .projects
            .iter()
            .all(|project| project.status == "completed"),
        "{:?}",
        report.projects
    );
}

fn every_probe_arrived(report: &Report) {
    assert!(report.gossip.probes > 0);
    assert_eq!(
        report.gossip.delivered, report.gossip.expected,
        "{:?}",
        report.gossip
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady() {
    let report = run("steady").await;
    all_results(&report);
    assert_eq!(report.tasks, 200);
    every_probe_arrived(&report);
    assert_eq!(report.gossip.probes, 20);
    assert!(report.failovers.is_empty());
    assert!(report.bytes_sent_per_node_mean > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn president_failover() {
    let report = run("president-failover").await;
    all_results(&report);
    let presidents = report
        .failovers
        .iter()
        .filter(|failover| failover.what == "president")
        .count();
    assert_eq!(presidents, 2, "{:?}", report.failovers);
    assert!(report.terms_seen >= 3, "a new term per crash");
    every_probe_arrived(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn governor_failover() {
    let report = run("governor-failover").await;
    all_results(&report);
    let governors = report
        .failovers
        .iter()
        .filter(|failover| failover.what.starts_with("governor of "))
        .count();
    assert_eq!(governors, 2, "{:?}", report.failovers);
    every_probe_arrived(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_heal() {
    let report = run("partition-heal").await;
    all_results(&report);
    assert!(
        report
            .failovers
            .iter()
            .any(|failover| failover.what.contains("partitioned away")),
        "the majority elected a successor: {:?}",
        report.failovers
    );
    assert!(report.messages_dropped > 0, "the partition cut messages");
    every_probe_arrived(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn() {
    let report = run("churn").await;
    all_results(&report);
    assert_eq!(report.nodes_ever, NODES + 10);
    every_probe_arrived(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood() {
    let report = run("flood").await;
    all_results(&report);
    let ended = report
        .timeline
        .iter()
        .find(|moment| moment.what.starts_with("flood ends"))
        .expect("the flood ran");
    assert!(!ended.what.contains(" 0 forged"), "{}", ended.what);
    every_probe_arrived(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy() {
    let report = run("lossy").await;
    all_results(&report);
    assert!(report.messages_dropped > 0 && report.messages_delayed > 0);
}

/// A second result committed for a task (through the fault-injection hook) is caught.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_catches_a_second_result_for_a_task() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let config = config("steady", 10);
    let mut sim = Sim::new(&config).expect("sim");
    sim.form(config.nodes).await.expect("mesh");
    let steps = [Step::Submit { tasks: 20 }, Step::AwaitProjects];
    sim.play(&steps, &config).await.expect("project");
    let broken = sim.overwrite_a_result().await.expect("hook");
    let report = sim.finish(&config, None).await;
    assert!(!report.passed());
    assert_eq!(report.violations.len(), 1, "{:?}", report.violations);
    assert!(
        report.violations[0].starts_with(&format!("task {broken} has two committed results")),
        "{:?}",
        report.violations
    );
}
