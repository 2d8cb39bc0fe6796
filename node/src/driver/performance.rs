//! The performance monitor's figures (seed §7.1) as one node reports them: its own
//! attempts as a worker, per executor (completion and error rates, completion time,
//! CPU per completed task), and the mesh's projects from its Registry copy (phase
//! transition success rate). Every node's `/metrics` carries the same counters and
//! histograms, for Prometheus to gather across the mesh; the president's also carry the
//! phase transitions it committed and its projects' completion times.
//!
//! ```text
//!   worker: attempt ─► aamas_attempts_total{executor,outcome}, aamas_attempt_seconds,
//!                      aamas_attempt_cpu_seconds_total ─► the tally `performance` reads
//!   president: AdvancePhase / FailProject committed ─► aamas_phase_transitions_total,
//!              aamas_project_seconds{status}
//! ```

use aamas_consensus::registry::ProjectStatus;
use aamas_protocol::Phase;
use serde::{Deserialize, Serialize};

use crate::driver::runtime::Node;
use crate::metrics::AttemptTally;

/// A node's performance figures (`GET /api/v1/performance`, `aamas performance`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PerformanceView {
    /// The node.
    pub peer_id: String,
    /// Its attempts as a worker since it started, per executor.
    pub executors: Vec<ExecutorPerformance>,
    /// The mesh's projects as its Registry copy has them.
    pub mesh: MeshPerformance,
}

/// A node's attempts with one executor since it started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecutorPerformance {
    /// `builtin`, `llm` or `shell`.
    pub executor: String,
    /// Attempts run.
    pub attempts: u64,
    /// That returned a result.
    pub succeeded: u64,
    /// That failed on their merits.
    pub failed: u64,
    /// Stopped at their timeout.
    pub timed_out: u64,
    /// A resource they needed did not answer.
    pub unavailable: u64,
    /// The task or the worker's settings could not work.
    pub misconfigured: u64,
    /// `succeeded / attempts`.
    pub success_rate: f64,
    /// `1 - success_rate`.
    pub error_rate: f64,
    /// Mean seconds per attempt, from the input read to the outcome.
    pub mean_seconds: f64,
    /// CPU seconds used, in all.
    pub cpu_seconds: f64,
    /// CPU seconds per attempt that returned a result (resource efficiency); `None`
    /// before the first.
    pub cpu_seconds_per_success: Option<f64>,
}

impl ExecutorPerformance {
    fn of(executor: &str, tally: &AttemptTally) -> Self {
        let ratio = |part: u64, whole: u64| {
            if whole == 0 {
                0.0
            } else {
                part as f64 / whole as f64
            }
        };
        let success_rate = ratio(tally.succeeded, tally.attempts);
        let cpu_seconds = tally.cpu_ms as f64 / 1_000.0;
        ExecutorPerformance {
            executor: executor.to_string(),
            attempts: tally.attempts,
            succeeded: tally.succeeded,
            failed: tally.failed,
            timed_out: tally.timed_out,
            unavailable: tally.unavailable,
            misconfigured: tally.misconfigured,
            success_rate,
            error_rate: if tally.attempts == 0 {
                0.0
            } else {
                1.0 - success_rate
            },
            mean_seconds: ratio(tally.millis, tally.attempts) / 1_000.0,
            cpu_seconds,
            cpu_seconds_per_success: (tally.succeeded > 0)
                .then(|| cpu_seconds / tally.succeeded as f64),
        }
    }
}

/// The mesh's projects and phase transitions, from a Registry copy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MeshPerformance {
    /// Projects running (or held, or awaiting a person's approval).
    pub projects_open: u64,
    /// Projects completed.
    pub projects_completed: u64,
    /// Projects failed.
    pub projects_failed: u64,
    /// Phases the projects left behind: each a transition that succeeded.
    pub transitions_passed: u64,
    /// Phases a project failed in.
    pub transitions_failed: u64,
    /// `passed / (passed + failed)`; `None` before the first.
    pub transition_success_rate: Option<f64>,
    /// How long the completed projects took, submission to completion (from the
    /// Registry, so every node shows the same); `None` before the first.
    pub completed_seconds: Option<Durations>,
    /// How long the failed projects ran before they failed; `None` before the first.
    pub failed_seconds: Option<Durations>,
}

/// A summary of durations, in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Durations {
    /// How many.
    pub count: u64,
    /// Their mean.
    pub mean: f64,
    /// The median (nearest rank).
    pub p50: f64,
    /// The 90th percentile (nearest rank).
    pub p90: f64,
    /// The longest.
    pub max: f64,
}

impl Durations {
    /// The summary of `millis`; `None` when empty.
    pub fn of(mut millis: Vec<u64>) -> Option<Self> {
        if millis.is_empty() {
            return None;
        }
        millis.sort_unstable();
        let seconds = |ms: u64| ms as f64 / 1_000.0;
        let rank = |p: f64| {
            let index = ((p * millis.len() as f64).ceil() as usize).clamp(1, millis.len()) - 1;
            seconds(millis[index])
        };
        let total: u64 = millis.iter().fold(0u64, |sum, ms| sum.saturating_add(*ms));
        Some(Durations {
            count: millis.len() as u64,
            mean: seconds(total) / millis.len() as f64,
            p50: rank(0.5),
            p90: rank(0.9),
            max: seconds(*millis.last().unwrap_or(&0)),
        })
    }
}

impl MeshPerformance {
    /// Adds a project in `phase` with `status`.
    fn add(&mut self, phase: Phase, status: &ProjectStatus) {
        let index = Phase::ALL.iter().position(|p| *p == phase).unwrap_or(0) as u64;
        match status {
            ProjectStatus::Completed => {
                self.projects_completed += 1;
                // Past its last phase too.
                self.transitions_passed += index + 1;
            }
            ProjectStatus::Failed { .. } => {
                self.projects_failed += 1;
                self.transitions_passed += index;
                self.transitions_failed += 1;
            }
            _ => {
                self.projects_open += 1;
                self.transitions_passed += index;
            }
        }
        let judged = self.transitions_passed + self.transitions_failed;
        self.transition_success_rate =
            (judged > 0).then(|| self.transitions_passed as f64 / judged as f64);
    }
}

impl Node {
    /// This node's performance figures.
    pub async fn performance(&self) -> PerformanceView {
        let executors = self
            .metrics
            .tallies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(executor, tally)| ExecutorPerformance::of(executor, tally))
            .collect();
        let mesh = self
            .registry(|registry| {
                let mut mesh = MeshPerformance::default();
                let (mut completed, mut failed) = (Vec::new(), Vec::new());
                for project in registry.projects().values() {
                    mesh.add(project.phase, &project.status);
                    let took = project
                        .ended_ms
                        .map(|ended| ended.saturating_sub(project.submitted_ms));
                    match (&project.status, took) {
                        (ProjectStatus::Completed, Some(took)) => completed.push(took),
                        (ProjectStatus::Failed { .. }, Some(took)) => failed.push(took),
                        _ => {}
                    }
                }
                mesh.completed_seconds = Durations::of(completed);
                mesh.failed_seconds = Durations::of(failed);
                mesh
            })
            .await
            .unwrap_or_default();
        PerformanceView {
            peer_id: self.peer_id().to_string(),
            executors,
            mesh,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_executors_rates_times_and_cpu_per_success_come_from_its_tally() {
        let mut tally = AttemptTally::default();
        tally.add("succeeded", 200, 30);
        tally.add("succeeded", 400, 50);
        tally.add("failed", 300, 20);
        tally.add("timed_out", 1_100, 1_000);
        let figures = ExecutorPerformance::of("shell", &tally);
        assert_eq!((figures.attempts, figures.succeeded), (4, 2));
        assert_eq!((figures.failed, figures.timed_out), (1, 1));
        assert!((figures.success_rate - 0.5).abs() < 1e-9);
        assert!((figures.error_rate - 0.5).abs() < 1e-9);
        assert!((figures.mean_seconds - 0.5).abs() < 1e-9);
        assert!((figures.cpu_seconds - 1.1).abs() < 1e-9);
        // Every CPU second counts against the results it bought.
        assert_eq!(figures.cpu_seconds_per_success, Some(0.55));
        let idle = ExecutorPerformance::of("llm", &AttemptTally::default());
        assert_eq!((idle.success_rate, idle.error_rate), (0.0, 0.0));
        assert_eq!(idle.cpu_seconds_per_success, None);
    }

    #[test]
    fn durations_summarise_by_nearest_rank() {
        assert_eq!(Durations::of(Vec::new()), None);
        let summary = Durations::of(vec![4_000, 1_000, 2_000, 3_000]).expect("four");
        assert_eq!(summary.count, 4);
        assert_eq!(summary.mean, 2.5);
        assert_eq!(summary.p50, 2.0);
        assert_eq!(summary.p90, 4.0);
        assert_eq!(summary.max, 4.0);
    }

    #[test]
    fn transitions_passed_and_failed_follow_each_projects_phase_and_status() {
        let mut mesh = MeshPerformance::default();
        assert_eq!(mesh.transition_success_rate, None);
        mesh.add(Phase::Launch, &ProjectStatus::Completed);
        mesh.add(
            Phase::Testing,
            &ProjectStatus::Failed { reason: "r".into() },
        );
        mesh.add(Phase::Design, &ProjectStatus::Running);
        assert_eq!(
            (
                mesh.projects_completed,
                mesh.projects_failed,
                mesh.projects_open
            ),
            (1, 1, 1)
        );
        // 8 + 5 (initiation..development passed, testing failed) + 3.
        assert_eq!((mesh.transitions_passed, mesh.transitions_failed), (16, 1));
        assert_eq!(mesh.transition_success_rate, Some(16.0 / 17.0));
    }
}
