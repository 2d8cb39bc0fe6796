//! The node's Prometheus metrics (prometheus-client), served at `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// A label set: `(name, value)` pairs.
pub type Labels = Vec<(String, String)>;

/// Every metric of a node.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// API requests refused for a missing or wrong token.
    pub api_unauthorized: Counter,
    /// API requests refused because the token's scope does not cover the route.
    pub api_forbidden: Counter,
    /// Messages from event-stream (WebSocket) clients that were not JSON the stream takes.
    pub api_bad_messages: Counter,
    /// Policy decisions, by decision point, the rule that decided (`-` when none fired)
    /// and outcome (allowed, advisory, overridden, denied).
    pub policy_decisions: Family<Labels, Counter>,
    /// PerformanceAlerts this node (as president) recorded, by metric.
    pub performance_alerts: Family<Labels, Counter>,
    /// ResourceRequests this node (as president) recorded, by resource.
    pub resource_requests: Family<Labels, Counter>,
    /// Evicted members this node blocked (their connections closed and refused).
    pub members_evicted: Counter,
    /// Requests refused, by reason (e.g. `non_member`).
    pub rpc_refused: Family<Labels, Counter>,
    /// Gossip messages refused by the receive pipeline or authorisation, by reason and
    /// verdict (`reject` penalises the forwarder, `ignore` does not).
    pub gossip_rejected: Family<Labels, Counter>,
    /// Gossip messages accepted, by kind and whether this node could open them.
    pub gossip_accepted: Family<Labels, Counter>,
    /// Direct envelopes refused, by reason.
    pub direct_rejected: Family<Labels, Counter>,
    /// Direct envelopes accepted, by kind.
    pub direct_accepted: Family<Labels, Counter>,
    /// Seconds from a mayor choosing a worker for an attempt to the worker holding it
    /// (assignment committed through the governor, Execute delivered and acknowledged).
    pub dispatch_seconds: Histogram,
    /// Work messages per envelope this node sent (the courier's batches).
    pub work_batch_messages: Histogram,
    /// Seconds the work driver spent in one round (reading the Ledgers and the Registry
    /// and handing each role core its look); inputs wait meanwhile.
    pub work_round_seconds: Histogram,
    /// Seconds a worker took to place the copies of one non-empty output (stored here,
    /// pulled by the state's voters).
    pub artifact_copy_seconds: Histogram,
    /// Bytes of outputs whose copies were placed.
    pub artifact_bytes_kept: Counter,
    /// Artefacts this node pulled as a state voter that lacked them (a voter added
    /// after the task succeeded).
    pub artifacts_repaired: Counter,
    /// Active members in this node's Registry copy.
    pub members: Gauge,
    /// The federal group's term.
    pub federal_term: Gauge,
    /// Workers the mesh wants beyond its members (set by the president).
    pub mesh_workers_wanted: Gauge,
    /// Open tasks of the running projects' current phases (set by the president).
    pub mesh_open_tasks: Gauge,
    /// The active members' task slots (set by the president).
    pub mesh_task_slots: Gauge,
    /// Runs of the operator's scale hook, by outcome (ok, failed, timeout).
    pub scale_hook_runs: Family<Labels, Counter>,
    /// Members the president moved from a quiet state to a busy one.
    pub state_moves: Counter,
    /// 1 if this node is the president.
    pub is_president: Gauge,
    /// State groups this node governs.
    pub governs: Gauge,
    /// Bytes written to TCP and in-process connections (Noise and Yamux included).
    pub bytes_sent: Counter,
    /// Connections open now.
    pub connections: Gauge,
    /// Connections established since start.
    pub connections_opened: Counter,
    /// Registry entries (a snapshot counts as one) this node's mirror took from relays.
    pub mirror_taken: Counter,
    /// Catch-ups of this node's Registry mirror that failed, by reason (`unreachable`,
    /// `refused`, `gap`, `storage`, `unexpected`).
    pub mirror_failed: Family<Labels, Counter>,
    /// Rounds of a duty (`president`, `governor`, `work`) that panicked; the duty goes on
    /// with its next round.
    pub duty_panics: Family<Labels, Counter>,
    /// Events published on this node's event bus ([`crate::events`]), by kind.
    pub events: Family<Labels, Counter>,
    /// Events this node sealed for the mesh, by outcome (`sent`; `no_group_key` before
    /// this node holds one; `failed`).
    pub events_gossiped: Family<Labels, Counter>,
    /// Event streams (WebSocket and server-sent events) open on this node's API.
    pub event_streams: Gauge,
    /// Event streams this node's API closed, by reason (`lagged`: the client fell
    /// behind the log; `stalled`: a send did not complete in time; `ended`: the
    /// client left or asked for no more; `full`: refused, too many streams).
    pub event_streams_closed: Family<Labels, Counter>,
    /// The newest group-key epoch this node holds (0: none yet).
    pub group_key_epoch: Gauge,
    /// Attempts this node ran as a worker, by executor and outcome (`succeeded`,
    /// `failed`, `timed_out`, `unavailable`, `misconfigured`): its completion and error
    /// rates (seed §7.1).
    pub attempts: Family<Labels, Counter>,
    /// Seconds this node's attempts took, from the input read to the outcome, by
    /// executor: its completion time.
    pub attempt_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    /// CPU seconds this node's attempts used, by executor and outcome: with
    /// [`Metrics::attempts`], its resource efficiency (CPU per completed task).
    pub attempt_cpu_seconds: Family<Labels, Counter<f64, AtomicU64>>,
    /// Phase transitions this node committed as president, by outcome (`advanced`,
    /// `completed`: the last phase, `failed`).
    pub phase_transitions: Family<Labels, Counter>,
    /// Seconds from submission to completion or failure of the projects this node
    /// finished as president, by status.
    pub project_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    /// The same attempts as [`Metrics::attempts`], summed per executor where
    /// `aamas performance` reads them back (at most one entry per executor kind).
    pub tallies: std::sync::Mutex<std::collections::BTreeMap<String, AttemptTally>>,
}

/// The attempts this node ran with one executor, in all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttemptTally {
    /// Attempts run.
    pub attempts: u64,
    /// Of them, those that returned a result.
    pub succeeded: u64,
    /// Failed on their merits.
    pub failed: u64,
    /// Stopped at their timeout.
    pub timed_out: u64,
    /// A resource they need did not answer.
    pub unavailable: u64,
    /// The task or this worker's settings cannot work.
    pub misconfigured: u64,
    /// Milliseconds they took, in all.
    pub millis: u64,
    /// CPU milliseconds they used, in all.
    pub cpu_ms: u64,
}

impl AttemptTally {
    /// Adds one attempt of `outcome` (a label of [`Metrics::attempts`]).
    pub fn add(&mut self, outcome: &str, millis: u64, cpu_ms: u64) {
        self.attempts = self.attempts.saturating_add(1);
        let slot = match outcome {
            "succeeded" => &mut self.succeeded,
            "failed" => &mut self.failed,
            "timed_out" => &mut self.timed_out,
            "unavailable" => &mut self.unavailable,
            _ => &mut self.misconfigured,
        };
        *slot = slot.saturating_add(1);
        self.millis = self.millis.saturating_add(millis);
        self.cpu_ms = self.cpu_ms.saturating_add(cpu_ms);
    }
}

fn attempt_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 22))
}

fn project_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.5, 2.0, 20))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("aamas");
        let metrics = Self {
            api_unauthorized: Counter::default(),
            members_evicted: Counter::default(),
            api_forbidden: Counter::default(),
            api_bad_messages: Counter::default(),
            policy_decisions: Family::default(),
            performance_alerts: Family::default(),
            resource_requests: Family::default(),
            rpc_refused: Family::default(),
            gossip_rejected: Family::default(),
            gossip_accepted: Family::default(),
            direct_rejected: Family::default(),
            direct_accepted: Family::default(),
            dispatch_seconds: Histogram::new(exponential_buckets(0.000_5, 2.0, 16)),
            work_batch_messages: Histogram::new(exponential_buckets(1.0, 2.0, 9)),
            work_round_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            artifact_copy_seconds: Histogram::new(exponential_buckets(0.000_5, 2.0, 16)),
            artifact_bytes_kept: Counter::default(),
            artifacts_repaired: Counter::default(),
            members: Gauge::default(),
            federal_term: Gauge::default(),
            mesh_workers_wanted: Gauge::default(),
            mesh_open_tasks: Gauge::default(),
            mesh_task_slots: Gauge::default(),
            scale_hook_runs: Family::default(),
            state_moves: Counter::default(),
            is_president: Gauge::default(),
            governs: Gauge::default(),
            bytes_sent: Counter::default(),
            connections: Gauge::default(),
            connections_opened: Counter::default(),
            mirror_taken: Counter::default(),
            mirror_failed: Family::default(),
            duty_panics: Family::default(),
            events: Family::default(),
            events_gossiped: Family::default(),
            event_streams: Gauge::default(),
            event_streams_closed: Family::default(),
            group_key_epoch: Gauge::default(),
            attempts: Family::default(),
            attempt_seconds: Family::new_with_constructor(attempt_buckets),
            attempt_cpu_seconds: Family::default(),
            phase_transitions: Family::default(),
            project_seconds: Family::new_with_constructor(project_buckets),
            tallies: std::sync::Mutex::default(),
            registry: Registry::default(),
        };
        registry.register(
            "attempts",
            "Attempts this node ran as a worker, by executor and outcome",
            metrics.attempts.clone(),
        );
        registry.register(
            "attempt_seconds",
            "Seconds this node's attempts took, by executor",
            metrics.attempt_seconds.clone(),
        );
        registry.register(
            "attempt_cpu_seconds",
            "CPU seconds this node's attempts used, by executor and outcome",
            metrics.attempt_cpu_seconds.clone(),
        );
        registry.register(
            "phase_transitions",
            "Phase transitions committed by this node as president, by outcome",
            metrics.phase_transitions.clone(),
        );
        registry.register(
            "project_seconds",
            "Seconds from submission to the end of the projects this node finished as president, by status",
            metrics.project_seconds.clone(),
        );
        registry.register(
            "events",
            "Events published on this node's event bus, by kind",
            metrics.events.clone(),
        );
        registry.register(
            "events_gossiped",
            "Events this node sealed under the group key for the mesh, by outcome",
            metrics.events_gossiped.clone(),
        );
        registry.register(
            "event_streams",
            "Event streams (WebSocket, server-sent events) open on this node's API",
            metrics.event_streams.clone(),
        );
        registry.register(
            "event_streams_closed",
            "Event streams this node's API closed, by reason",
            metrics.event_streams_closed.clone(),
        );
        registry.register(
            "group_key_epoch",
            "The newest group-key epoch this node holds (0: none yet)",
            metrics.group_key_epoch.clone(),
        );
        registry.register(
            "duty_panics",
            "Rounds of a duty that panicked (the duty goes on), by duty",
            metrics.duty_panics.clone(),
        );
        registry.register(
            "mirror_taken",
            "Registry entries this node's mirror took from relays (a snapshot counts as one)",
            metrics.mirror_taken.clone(),
        );
        registry.register(
            "mirror_failed",
            "Catch-ups of this node's Registry mirror that failed, by reason",
            metrics.mirror_failed.clone(),
        );
        registry.register(
            "api_unauthorized",
            "API requests refused for a missing or wrong bearer token",
            metrics.api_unauthorized.clone(),
        );
        registry.register(
            "performance_alerts",
            "PerformanceAlerts this node recorded as president, by metric",
            metrics.performance_alerts.clone(),
        );
        registry.register(
            "mesh_workers_wanted",
            "Workers the mesh wants beyond its members, as the president sees it",
            metrics.mesh_workers_wanted.clone(),
        );
        registry.register(
            "mesh_open_tasks",
            "Open tasks of the running projects' current phases, as the president sees it",
            metrics.mesh_open_tasks.clone(),
        );
        registry.register(
            "mesh_task_slots",
            "The active members' task slots, as the president sees it",
            metrics.mesh_task_slots.clone(),
        );
        registry.register(
            "scale_hook_runs",
            "Runs of this node's scale hook, by outcome",
            metrics.scale_hook_runs.clone(),
        );
        registry.register(
            "state_moves",
            "Members this node moved from a quiet state to a busy one, as president",
            metrics.state_moves.clone(),
        );
        registry.register(
            "resource_requests",
            "ResourceRequests this node recorded as president, by resource",
            metrics.resource_requests.clone(),
        );
        registry.register(
            "policy_decisions",
            "Policy decisions, by decision point, deciding rule and outcome",
            metrics.policy_decisions.clone(),
        );
        registry.register(
            "api_forbidden",
            "API requests refused because the token's scope does not cover the route",
            metrics.api_forbidden.clone(),
        );
        registry.register(
            "api_bad_messages",
            "Messages from event-stream clients that were not JSON the stream takes",
            metrics.api_bad_messages.clone(),
        );
        registry.register(
            "members_evicted",
            "Evicted members this node blocked: their connections are closed and refused",
            metrics.members_evicted.clone(),
        );
        registry.register(
            "rpc_refused",
            "Requests from peers refused, by reason",
            metrics.rpc_refused.clone(),
        );
        registry.register(
            "gossip_rejected",
            "Gossip messages refused, by reason and verdict",
            metrics.gossip_rejected.clone(),
        );
        registry.register(
            "gossip_accepted",
            "Gossip messages accepted, by kind and delivery",
            metrics.gossip_accepted.clone(),
        );
        registry.register(
            "direct_rejected",
            "Envelopes sent directly and refused, by reason",
            metrics.direct_rejected.clone(),
        );
        registry.register(
            "direct_accepted",
            "Envelopes sent directly and accepted, by kind",
            metrics.direct_accepted.clone(),
        );
        registry.register(
            "dispatch_seconds",
            "Seconds from choosing a worker to the worker holding the attempt",
            metrics.dispatch_seconds.clone(),
        );
        registry.register(
            "work_batch_messages",
            "Work messages per envelope sent (several travel together under load)",
            metrics.work_batch_messages.clone(),
        );
        registry.register(
            "work_round_seconds",
            "Seconds the work driver spent in one round (inputs wait meanwhile)",
            metrics.work_round_seconds.clone(),
        );
        registry.register(
            "artifact_copy_seconds",
            "Seconds a worker took to place the copies of one output",
            metrics.artifact_copy_seconds.clone(),
        );
        registry.register_with_unit(
            "artifact_kept",
            "Bytes of outputs whose copies were placed",
            prometheus_client::registry::Unit::Bytes,
            metrics.artifact_bytes_kept.clone(),
        );
        registry.register(
            "artifacts_repaired",
            "Artefacts pulled by a state voter that lacked them",
            metrics.artifacts_repaired.clone(),
        );
        registry.register(
            "members",
            "Active members in this node's Registry copy",
            metrics.members.clone(),
        );
        registry.register(
            "federal_term",
            "The federal Raft group's term",
            metrics.federal_term.clone(),
        );
        registry.register(
            "is_president",
            "1 if this node leads the federal group",
            metrics.is_president.clone(),
        );
        registry.register(
            "governs",
            "State groups this node leads",
            metrics.governs.clone(),
        );
        registry.register_with_unit(
            "transport_sent",
            "Bytes written to TCP and in-process connections, framing and encryption included",
            prometheus_client::registry::Unit::Bytes,
            metrics.bytes_sent.clone(),
        );
        registry.register(
            "connections",
            "Connections open now, to any peer, in either direction",
            metrics.connections.clone(),
        );
        registry.register(
            "connections_opened",
            "Connections established since the node started",
            metrics.connections_opened.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }
}

/// A label set from `(name, value)` pairs.
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(name, value)| ((*name).to_string(), (*value).to_string()))
        .collect()
}

impl Metrics {
    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(error) = encode(&mut text, &self.registry) {
            tracing::error!(%error, "encoding metrics failed");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_appear_with_their_labels() {
        let metrics = Metrics::default();
        metrics
            .gossip_rejected
            .get_or_create(&labels(&[("reason", "replayed"), ("verdict", "ignore")]))
            .inc();
        metrics.api_unauthorized.inc();
        let text = metrics.encode();
        assert!(
            text.contains("aamas_gossip_rejected_total{reason=\"replayed\",verdict=\"ignore\"} 1"),
            "{text}"
        );
        assert!(text.contains("aamas_api_unauthorized_total 1"), "{text}");
    }

    /// Prometheus's conventions: a counter ends in `_total`, and a metric of bytes or
    /// seconds names its unit (before `_total`).
    #[test]
    fn names_follow_prometheus_conventions() {
        let text = Metrics::default().encode();
        let mut checked = 0;
        for line in text.lines() {
            let Some(help) = line.strip_prefix("# HELP ") else {
                continue;
            };
            let (name, help) = help.split_once(' ').expect("a HELP line has text");
            let kind = text
                .lines()
                .find_map(|line| line.strip_prefix(&format!("# TYPE {name} ")))
                .expect("a TYPE line");
            let base = name.strip_suffix("_total").unwrap_or(name);
            if kind == "counter" {
                assert!(
                    text.contains(&format!("{name}_total")) || name.ends_with("_total"),
                    "counter {name}"
                );
            }
            if help.starts_with("Bytes") {
                assert!(base.ends_with("_bytes"), "{name}: {help}");
            }
            if help.starts_with("Seconds") {
                assert!(base.ends_with("_seconds"), "{name}: {help}");
            }
            checked += 1;
        }
        assert!(checked >= 20, "{checked} metrics checked:\n{text}");
    }
}
