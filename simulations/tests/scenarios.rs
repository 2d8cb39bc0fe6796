//! Scenarios on small simulated meshes of real runtimes, with their checkers.

use std::time::Duration;

use aamas_sim::{Scenario, Sim, SimConfig};

fn config(scenario: Scenario, faults: usize) -> SimConfig {
    SimConfig {
        nodes: 10,
        scenario,
        seed: 7,
        tasks: 60,
        faults,
        limit: Duration::from_secs(240),
    }
}

/// One after the other, never side by side: each scenario is 10 nodes in this process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_then_president_failover_complete_with_no_violation() {
    let report = Sim::run(config(Scenario::Steady, 0)).await.expect("run");
    assert!(report.violations.is_empty(), "{report:?}");
    assert_eq!(report.results_seen, 60, "one result per task: {report:?}");
    assert!(report.failovers_ms.is_empty());

    let report = Sim::run(config(Scenario::PresidentFailover, 2))
        .await
        .expect("run");
    assert!(report.violations.is_empty(), "{report:?}");
    assert_eq!(report.failovers_ms.len(), 2, "{report:?}");
    assert_eq!(report.results_seen, 60, "one result per task: {report:?}");
    assert!(report.terms_seen >= 3, "a new term per crash: {report:?}");
}
