//! The performance monitor (seed §7.1) as a mayor sees its workers: per worker, the
//! attempts completed and failed, and the failures in a row. Crossing one of the
//! performance policy's thresholds raises a PerformanceAlert once:
//!
//! ```text
//!   failures in a row >= worker_failures_in_a_row           ─► alert; a success re-arms
//!   failed / attempts >= worker_error_rate_percent, once the
//!   worker ran error_rate_min_attempts                      ─► alert; re-armed once the
//!                                                              rate is below it again
//! ```
//!
//! Pure: the driver feeds each outcome of a current attempt as the mayor takes it, and
//! sends the alert the core returns to the president, which records it in the Registry.
//! An outcome reported twice (a worker retrying its report) counts once.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use aamas_protocol::NodeKey;

/// Outcomes remembered to count a repeated report once.
pub const REMEMBERED_OUTCOMES: usize = 4_096;
/// Most workers followed; the one heard from longest ago is dropped first.
pub const MAX_WORKERS: usize = 100_000;

/// What the monitor knows of one worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerRecord {
    /// Attempts it completed.
    pub completed: u64,
    /// Attempts that failed on it.
    pub failed: u64,
    /// Failures since its last success.
    pub failures_in_a_row: u32,
    /// Whether an alert was raised for the current run of failures.
    pub alerted: bool,
    /// The error-rate threshold an alert was raised at, until the rate falls below it.
    pub rate_alerted: Option<u32>,
    /// When it was last heard of (for [`MAX_WORKERS`]).
    pub last_ms: u64,
}

/// An alert the monitor raises about a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerAlert {
    /// Its attempts keep failing.
    FailingInARow {
        /// The worker.
        worker: NodeKey,
        /// Its failures in a row.
        failures_in_a_row: u32,
        /// The threshold it reached.
        threshold: u32,
    },
    /// Too many of its attempts failed.
    ErrorRate {
        /// The worker.
        worker: NodeKey,
        /// Its attempts that failed.
        failed: u64,
        /// Its attempts.
        attempts: u64,
        /// The threshold it reached, in percent.
        threshold_percent: u32,
    },
}

/// The performance policy's thresholds a mayor judges its workers by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Thresholds {
    /// Failures in a row.
    pub in_a_row: Option<u32>,
    /// Error rate in percent...
    pub error_rate_percent: Option<u32>,
    /// ...once a worker ran this many attempts.
    pub min_attempts: u32,
}

/// The monitor of one mayor's workers.
#[derive(Debug, Default)]
pub struct Monitor {
    workers: BTreeMap<NodeKey, WorkerRecord>,
    seen: BTreeSet<(String, u32)>,
    order: VecDeque<(String, u32)>,
}

impl Monitor {
    /// Takes the outcome of attempt `attempt` of `task` on `worker` at `now_ms`, and
    /// returns the alerts this outcome raises under `thresholds` (a failure can: each
    /// threshold raises once until it is re-armed).
    pub fn record(
        &mut self,
        now_ms: u64,
        worker: NodeKey,
        task: &str,
        attempt: u32,
        ok: bool,
        thresholds: Thresholds,
    ) -> Vec<WorkerAlert> {
        let mut alerts = Vec::new();
        let outcome = (task.to_string(), attempt);
        if !self.seen.insert(outcome.clone()) {
            return alerts;
        }
        self.order.push_back(outcome);
        if self.order.len() > REMEMBERED_OUTCOMES
            && let Some(oldest) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        if !self.workers.contains_key(&worker) && self.workers.len() >= MAX_WORKERS {
            let stalest = self
                .workers
                .iter()
                .min_by_key(|(_, record)| record.last_ms)
                .map(|(key, _)| *key);
            if let Some(stalest) = stalest {
                self.workers.remove(&stalest);
            }
        }
        let record = self.workers.entry(worker).or_default();
        record.last_ms = now_ms;
        let attempts = |record: &WorkerRecord| record.completed + record.failed;
        // failed * 100 >= percent * attempts, without division.
        let over = |record: &WorkerRecord, percent: u32| {
            u128::from(record.failed) * 100 >= u128::from(percent) * u128::from(attempts(record))
        };
        if ok {
            record.completed += 1;
            record.failures_in_a_row = 0;
            record.alerted = false;
            if record
                .rate_alerted
                .is_some_and(|percent| !over(record, percent))
            {
                record.rate_alerted = None;
            }
            return alerts;
        }
        record.failed += 1;
        record.failures_in_a_row = record.failures_in_a_row.saturating_add(1);
        if let Some(threshold) = thresholds.in_a_row.filter(|threshold| *threshold > 0)
            && !record.alerted
            && record.failures_in_a_row >= threshold
        {
            record.alerted = true;
            alerts.push(WorkerAlert::FailingInARow {
                worker,
                failures_in_a_row: record.failures_in_a_row,
                threshold,
            });
        }
        if let Some(percent) = thresholds.error_rate_percent.filter(|p| *p > 0)
            && record.rate_alerted.is_none()
            && attempts(record) >= u64::from(thresholds.min_attempts.max(1))
            && over(record, percent)
        {
            record.rate_alerted = Some(percent);
            alerts.push(WorkerAlert::ErrorRate {
                worker,
                failed: record.failed,
                attempts: attempts(record),
                threshold_percent: percent,
            });
        }
        alerts
    }

    /// What the monitor knows of `worker`.
    pub fn worker(&self, worker: &NodeKey) -> Option<&WorkerRecord> {
        self.workers.get(worker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_in_a_row_alert_once_and_a_success_rearms() {
        let mut monitor = Monitor::default();
        let worker = NodeKey([1; 32]);
        let mut attempt = 0;
        let thresholds = Thresholds {
            in_a_row: Some(3),
            ..Thresholds::default()
        };
        let mut fail = |monitor: &mut Monitor, ok: bool| {
            attempt += 1;
            monitor.record(attempt.into(), worker, "p/t", attempt, ok, thresholds)
        };
        assert_eq!(fail(&mut monitor, false), []);
        assert_eq!(fail(&mut monitor, false), []);
        assert_eq!(
            fail(&mut monitor, false),
            [WorkerAlert::FailingInARow {
                worker,
                failures_in_a_row: 3,
                threshold: 3
            }],
            "the third failure in a row"
        );
        assert_eq!(fail(&mut monitor, false), [], "once per run of failures");
        assert_eq!(fail(&mut monitor, true), []);
        for _ in 0..2 {
            assert_eq!(fail(&mut monitor, false), []);
        }
        assert_eq!(
            fail(&mut monitor, false).len(),
            1,
            "re-armed by the success"
        );
        let record = monitor.worker(&worker).expect("known");
        assert_eq!((record.completed, record.failed), (1, 7));
    }

    #[test]
    fn a_repeated_report_counts_once_and_no_threshold_never_alerts() {
        let mut monitor = Monitor::default();
        let worker = NodeKey([2; 32]);
        let two = Thresholds {
            in_a_row: Some(2),
            ..Thresholds::default()
        };
        for _ in 0..5 {
            assert_eq!(monitor.record(1, worker, "p/t", 1, false, two), []);
        }
        assert_eq!(monitor.worker(&worker).map(|r| r.failed), Some(1));
        for attempt in 2..10 {
            let none = Thresholds::default();
            assert_eq!(monitor.record(1, worker, "p/t", attempt, false, none), []);
        }
        assert_eq!(
            monitor.worker(&worker).map(|r| r.failures_in_a_row),
            Some(9)
        );
    }

    #[test]
    fn an_error_rate_alerts_once_past_the_minimum_attempts_until_it_falls_below() {
        let mut monitor = Monitor::default();
        let worker = NodeKey([3; 32]);
        let thresholds = Thresholds {
            in_a_row: None,
            error_rate_percent: Some(50),
            min_attempts: 4,
        };
        let mut attempt = 0;
        let mut run = |monitor: &mut Monitor, ok: bool| {
            attempt += 1;
            monitor.record(1, worker, "p/t", attempt, ok, thresholds)
        };
        // Failure, success, failure: 2 of 3 failed, under the minimum of 4 attempts.
        assert_eq!(run(&mut monitor, false), []);
        assert_eq!(run(&mut monitor, true), []);
        assert_eq!(run(&mut monitor, false), []);
        // The fourth attempt fails: 3 of 4.
        assert_eq!(
            run(&mut monitor, false),
            [WorkerAlert::ErrorRate {
                worker,
                failed: 3,
                attempts: 4,
                threshold_percent: 50
            }]
        );
        assert_eq!(run(&mut monitor, false), [], "once");
        // Successes bring it to 4 of 9, under 50%: re-armed; the next failure (5 of
        // 10) raises it again.
        for _ in 0..4 {
            assert_eq!(run(&mut monitor, true), []);
        }
        assert_eq!(run(&mut monitor, false).len(), 1);
    }
}
