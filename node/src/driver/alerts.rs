//! PerformanceAlerts (seed §7.1): raised by a mayor's monitor
//! ([`crate::governance::monitor`]) when a worker's attempts keep failing, recorded by
//! the president in the Registry, listed by `aamas alerts` on any node and acknowledged
//! by hand.
//!
//! ```text
//!   mayor: an attempt's outcome ─► Monitor::record ─► (threshold reached) RaiseAlert ─►
//!   president: authority::alert ─► Registry RaiseAlert ─► event bus + aamas_performance_alerts_total
//!   aamas alerts ack ID ─► any node ─► president ─► Registry AckAlert
//! ```

use aamas_consensus::registry::{Alert, RegistryCommand};
use aamas_protocol::{Event, NodeKey};
use serde::{Deserialize, Serialize};

use crate::driver::admin::AdminError;
use crate::driver::runtime::{Node, now_ms};
use crate::events::BusEvent;
use crate::governance::monitor::WorkerFailing;
use crate::net::wire::Rpc;

/// The metric of an alert for a worker whose attempts keep failing.
pub const WORKER_FAILURES: &str = "worker_failures_in_a_row";

/// An alert as `aamas alerts` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertView {
    /// Its id (for `aamas alerts ack`).
    pub id: u64,
    /// The metric that crossed its threshold.
    pub metric: String,
    /// The member it is about (peer id).
    pub subject: String,
    /// The metric's value.
    pub value: f64,
    /// The threshold it crossed.
    pub threshold: f64,
    /// What happened.
    pub message: String,
    /// When it was raised, ms since the Unix epoch.
    pub raised_ms: u64,
    /// Who raised it (peer id).
    pub raised_by: String,
    /// When it was acknowledged, if it was.
    pub acknowledged_ms: Option<u64>,
    /// The acknowledgement's note.
    pub note: Option<String>,
}

impl Node {
    /// The alerts the Registry keeps, oldest first.
    pub async fn alerts(&self) -> Vec<AlertView> {
        self.registry(|registry| {
            registry
                .alerts()
                .iter()
                .map(|(id, alert)| AlertView {
                    id: *id,
                    metric: alert.metric.clone(),
                    subject: alert.subject.peer_id(),
                    value: alert.value_milli as f64 / 1_000.0,
                    threshold: alert.threshold_milli as f64 / 1_000.0,
                    message: alert.message.clone(),
                    raised_ms: alert.raised_ms,
                    raised_by: alert.raised_by.peer_id(),
                    acknowledged_ms: alert.acknowledged.as_ref().map(|(ms, _)| *ms),
                    note: alert.acknowledged.as_ref().map(|(_, note)| note.clone()),
                })
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    /// A mayor takes the outcome of the current attempt of `task` on `worker` into its
    /// monitor, and raises the alert it returns (in the background: the outcome's own
    /// path does not wait for it).
    pub(crate) async fn note_outcome(&self, worker: NodeKey, task: &str, attempt: u32, ok: bool) {
        // Only a failure can reach the threshold: a success does not read the policy
        // (this runs for every outcome a mayor takes).
        let threshold = if ok {
            None
        } else {
            self.policy()
                .await
                .and_then(|policy| policy.performance.worker_failures_in_a_row)
        };
        let fired = self
            .monitor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record(now_ms(), worker, task, attempt, ok, threshold);
        let Some(failing) = fired else {
            return;
        };
        let Some(node) = self.this.upgrade() else {
            return;
        };
        self.spawn(async move {
            if let Err(error) = node.raise_worker_alert(failing).await {
                tracing::warn!(%error, worker = %failing.worker.peer_id(), "raising a PerformanceAlert failed");
            }
        });
    }

    async fn raise_worker_alert(&self, failing: WorkerFailing) -> Result<(), AdminError> {
        let alert = Alert {
            metric: WORKER_FAILURES.to_string(),
            subject: failing.worker,
            value_milli: i64::from(failing.failures_in_a_row) * 1_000,
            threshold_milli: i64::from(failing.threshold) * 1_000,
            message: format!(
                "{} attempts in a row failed on worker {} (threshold {})",
                failing.failures_in_a_row,
                failing.worker.peer_id(),
                failing.threshold
            ),
            raised_ms: now_ms(),
            raised_by: self.identity.node_key(),
            acknowledged: None,
        };
        tracing::warn!(worker = %failing.worker.peer_id(), failures = failing.failures_in_a_row, "PerformanceAlert: a worker's attempts keep failing");
        self.record_alert_as(self.identity.node_key(), alert).await
    }

    /// Records `alert`, raised by `sender`: on the president, after
    /// [`crate::roles::authority::alert`]; elsewhere, forwarded to it.
    pub(crate) async fn record_alert_as(
        &self,
        sender: NodeKey,
        alert: Alert,
    ) -> Result<(), AdminError> {
        let Some((peer, addrs)) = self.president_peer()? else {
            let (monitors, president) = (
                self.registry(|registry| {
                    registry.states().values().any(|info| {
                        info.governor.as_ref().is_some_and(|record| {
                            record.node == sender
                                || record
                                    .mayors
                                    .values()
                                    .flatten()
                                    .any(|mayor| *mayor == sender)
                        })
                    })
                })
                .await
                .unwrap_or(false),
                self.identity.node_key(),
            );
            crate::roles::authority::alert(sender, president, alert.raised_by, monitors)
                .map_err(|refusal| self.refused(refusal))?;
            let event = Event::PerformanceAlert {
                metric: alert.metric.clone(),
                value_milli: alert.value_milli,
                threshold_milli: alert.threshold_milli,
            };
            let metric = alert.metric.clone();
            let key = [
                alert.metric.as_bytes(),
                &alert.subject.0,
                &alert.raised_ms.to_be_bytes(),
            ]
            .concat();
            self.propose(&[b"alert", &key], RegistryCommand::RaiseAlert { alert })
                .await
                .map_err(AdminError::NotCommitted)?;
            self.metrics
                .performance_alerts
                .get_or_create(&crate::metrics::labels(&[("metric", &metric)]))
                .inc();
            self.events
                .publish(now_ms(), BusEvent::Mesh { event }, &self.metrics);
            return Ok(());
        };
        let rpc = Rpc::RaiseAlert { alert };
        crate::net::swarm::acked(self.handle.request(peer, addrs, rpc).await)
            .map_err(AdminError::President)
    }

    /// Acknowledges alert `id` with `note`, through the president.
    pub async fn ack_alert(&self, id: u64, note: &str) -> Result<(), AdminError> {
        if note.len() > aamas_consensus::registry::MAX_NOTE_BYTES {
            return Err(AdminError::NoteTooLong);
        }
        let Some((peer, addrs)) = self.president_peer()? else {
            let command = RegistryCommand::AckAlert {
                id,
                note: note.to_string(),
                now_ms: now_ms(),
            };
            return self
                .propose(&[b"ack-alert", &id.to_be_bytes()], command)
                .await
                .map_err(AdminError::NotCommitted);
        };
        let rpc = Rpc::AckAlert {
            id,
            note: note.to_string(),
        };
        crate::net::swarm::acked(self.handle.request(peer, addrs, rpc).await)
            .map_err(AdminError::President)
    }
}
