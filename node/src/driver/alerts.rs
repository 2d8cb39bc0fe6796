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
use crate::driver::mesh_events::Scope;
use crate::driver::runtime::{Node, now_ms};
use crate::governance::monitor::{Thresholds, WorkerAlert};
use crate::net::wire::Rpc;

/// The metric of an alert for a worker whose attempts keep failing.
pub const WORKER_FAILURES: &str = "worker_failures_in_a_row";
/// The metric of an alert for a worker too many of whose attempts failed.
pub const WORKER_ERROR_RATE: &str = "worker_error_rate_percent";

/// An alert as `aamas alerts` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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
        // Only a failure can reach a threshold: a success does not read the policy
        // (this runs for every outcome a mayor takes).
        let thresholds = if ok {
            Thresholds::default()
        } else {
            self.policy()
                .await
                .map(|policy| Thresholds {
                    in_a_row: policy.performance.worker_failures_in_a_row,
                    error_rate_percent: policy.performance.worker_error_rate_percent,
                    min_attempts: policy.performance.error_rate_min_attempts,
                })
                .unwrap_or_default()
        };
        let fired = self
            .monitor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record(now_ms(), worker, task, attempt, ok, thresholds);
        if fired.is_empty() {
            return;
        }
        let Some(node) = self.this.upgrade() else {
            return;
        };
        self.spawn(async move {
            for alert in fired {
                if let Err(error) = node.raise_worker_alert(alert).await {
                    tracing::warn!(%error, worker = %worker.peer_id(), "raising a PerformanceAlert failed");
                }
            }
        });
    }

    async fn raise_worker_alert(&self, raised: WorkerAlert) -> Result<(), AdminError> {
        let (metric, subject, value_milli, threshold_milli, message) = match raised {
            WorkerAlert::FailingInARow {
                worker,
                failures_in_a_row,
                threshold,
            } => (
                WORKER_FAILURES,
                worker,
                i64::from(failures_in_a_row) * 1_000,
                i64::from(threshold) * 1_000,
                format!(
                    "{failures_in_a_row} attempts in a row failed on worker {} (threshold \
                     {threshold})",
                    worker.peer_id()
                ),
            ),
            WorkerAlert::ErrorRate {
                worker,
                failed,
                attempts,
                threshold_percent,
            } => {
                // In thousandths of a percent.
                let rate_milli = u128::from(failed) * 100_000 / u128::from(attempts.max(1));
                (
                    WORKER_ERROR_RATE,
                    worker,
                    i64::try_from(rate_milli).unwrap_or(i64::MAX),
                    i64::from(threshold_percent) * 1_000,
                    format!(
                        "{failed} of {attempts} attempts failed on worker {} ({:.1}%, \
                         threshold {threshold_percent}%)",
                        worker.peer_id(),
                        rate_milli as f64 / 1_000.0
                    ),
                )
            }
        };
        let alert = Alert {
            metric: metric.to_string(),
            subject,
            value_milli,
            threshold_milli,
            message,
            raised_ms: now_ms(),
            raised_by: self.identity.node_key(),
            acknowledged: None,
        };
        tracing::warn!(worker = %subject.peer_id(), metric, "PerformanceAlert: {}", alert.message);
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
            self.emit(event, Scope::All).await;
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
        // An id this node's Registry copy does not know (it may lag a just-raised alert
        // by a moment: ask again).
        if self
            .registry(|registry| registry.alerts().contains_key(&id))
            .await
            == Some(false)
        {
            return Err(AdminError::NoSuchAlert(id));
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
