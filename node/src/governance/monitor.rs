//! The performance monitor (seed §7.1) as a mayor sees its workers: per worker, the
//! attempts completed and failed, and the failures in a row. Crossing the performance
//! policy's threshold raises a PerformanceAlert once; a success re-arms it.
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
    /// When it was last heard of (for [`MAX_WORKERS`]).
    pub last_ms: u64,
}

/// An alert the monitor raises: a worker whose attempts keep failing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerFailing {
    /// The worker.
    pub worker: NodeKey,
    /// Its failures in a row.
    pub failures_in_a_row: u32,
    /// The threshold it reached.
    pub threshold: u32,
}

/// The monitor of one mayor's workers.
#[derive(Debug, Default)]
pub struct Monitor {
    workers: BTreeMap<NodeKey, WorkerRecord>,
    seen: BTreeSet<(String, u32)>,
    order: VecDeque<(String, u32)>,
}

impl Monitor {
    /// Takes the outcome of attempt `attempt` of `task` on `worker` at `now_ms`; with a
    /// `threshold` (the performance policy's failures in a row), returns the alert when
    /// this failure reaches it for the first time since the worker's last success.
    pub fn record(
        &mut self,
        now_ms: u64,
        worker: NodeKey,
        task: &str,
        attempt: u32,
        ok: bool,
        threshold: Option<u32>,
    ) -> Option<WorkerFailing> {
        let outcome = (task.to_string(), attempt);
        if !self.seen.insert(outcome.clone()) {
            return None;
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
        if ok {
            record.completed += 1;
            record.failures_in_a_row = 0;
            record.alerted = false;
            return None;
        }
        record.failed += 1;
        record.failures_in_a_row = record.failures_in_a_row.saturating_add(1);
        let threshold = threshold.filter(|threshold| *threshold > 0)?;
        if record.alerted || record.failures_in_a_row < threshold {
            return None;
        }
        record.alerted = true;
        Some(WorkerFailing {
            worker,
            failures_in_a_row: record.failures_in_a_row,
            threshold,
        })
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
        let mut fail = |monitor: &mut Monitor, ok: bool| {
            attempt += 1;
            monitor.record(attempt.into(), worker, "p/t", attempt, ok, Some(3))
        };
        assert_eq!(fail(&mut monitor, false), None);
        assert_eq!(fail(&mut monitor, false), None);
        let alert = fail(&mut monitor, false).expect("the third failure in a row");
        assert_eq!((alert.failures_in_a_row, alert.threshold), (3, 3));
        assert_eq!(fail(&mut monitor, false), None, "once per run of failures");
        assert_eq!(fail(&mut monitor, true), None);
        for _ in 0..2 {
            assert_eq!(fail(&mut monitor, false), None);
        }
        assert!(
            fail(&mut monitor, false).is_some(),
            "re-armed by the success"
        );
        let record = monitor.worker(&worker).expect("known");
        assert_eq!((record.completed, record.failed), (1, 7));
    }

    #[test]
    fn a_repeated_report_counts_once_and_no_threshold_never_alerts() {
        let mut monitor = Monitor::default();
        let worker = NodeKey([2; 32]);
        for _ in 0..5 {
            assert_eq!(monitor.record(1, worker, "p/t", 1, false, Some(2)), None);
        }
        assert_eq!(monitor.worker(&worker).map(|r| r.failed), Some(1));
        for attempt in 2..10 {
            assert_eq!(monitor.record(1, worker, "p/t", attempt, false, None), None);
        }
        assert_eq!(
            monitor.worker(&worker).map(|r| r.failures_in_a_row),
            Some(9)
        );
    }
}
