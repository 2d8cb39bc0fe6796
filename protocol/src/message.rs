//! What a message says: the five kinds of seed §5.1 and the five events of seed §5.2.
//!
//! The kind travels in the clear in the envelope header (so that gossip peers can route
//! and authorise without reading the content); the [`Payload`] travels sealed, and the
//! receive pipeline checks that the two agree.

use serde::{Deserialize, Serialize};

use crate::ids::MessageId;

/// The kind of a message (seed §5.1). Who may send which kind to whom is decided by
/// `node/` from the hierarchy; the protocol only carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MessageKind {
    /// Direct task assignment from a superior to a subordinate.
    Command,
    /// Status and performance updates to a superior.
    Report,
    /// An information request between peers.
    Query,
    /// An event broadcast across the system.
    Notification,
    /// An issue-resolution request to a superior.
    Escalation,
}

impl MessageKind {
    /// All kinds, in wire order.
    pub const ALL: [MessageKind; 5] = [
        MessageKind::Command,
        MessageKind::Report,
        MessageKind::Query,
        MessageKind::Notification,
        MessageKind::Escalation,
    ];

    /// A short lowercase name, used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Command => "command",
            MessageKind::Report => "report",
            MessageKind::Query => "query",
            MessageKind::Notification => "notification",
            MessageKind::Escalation => "escalation",
        }
    }
}

/// The eight phases of a project (seed §4), in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Phase {
    /// Project initiation and concept definition.
    Initiation,
    /// Feasibility analysis and strategic planning.
    Feasibility,
    /// Requirements engineering and business analysis.
    Requirements,
    /// System design and technical architecture.
    Design,
    /// Development and implementation.
    Development,
    /// Quality assurance and testing.
    Testing,
    /// Deployment and production readiness.
    Deployment,
    /// Launch and business integration.
    Launch,
}

impl Phase {
    /// All phases in lifecycle order.
    pub const ALL: [Phase; 8] = [
        Phase::Initiation,
        Phase::Feasibility,
        Phase::Requirements,
        Phase::Design,
        Phase::Development,
        Phase::Testing,
        Phase::Deployment,
        Phase::Launch,
    ];

    /// Its lowercase name, as in project specs: `initiation` … `launch`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Initiation => "initiation",
            Phase::Feasibility => "feasibility",
            Phase::Requirements => "requirements",
            Phase::Design => "design",
            Phase::Development => "development",
            Phase::Testing => "testing",
            Phase::Deployment => "deployment",
            Phase::Launch => "launch",
        }
    }

    /// The phase named `name` (lowercase), if any.
    pub fn from_name(name: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|phase| phase.as_str() == name)
    }

    /// The phase after this one, or `None` after launch.
    pub fn next(self) -> Option<Phase> {
        let index = Phase::ALL.iter().position(|phase| *phase == self)?;
        Phase::ALL.get(index + 1).copied()
    }
}

/// Urgency of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Priority {
    /// Do when nothing more urgent waits.
    Low,
    /// The default.
    Normal,
    /// Ahead of normal work.
    High,
    /// Ahead of everything.
    Critical,
}

/// How bad an escalated problem or an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// Degraded; work goes on.
    Warning,
    /// Work is blocked until someone decides.
    Error,
    /// The project or the hierarchy is at risk.
    Critical,
}

/// Kinds of resource an agent can ask for (seed §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ResourceKind {
    /// Compute time, in milli-CPU-seconds.
    ComputeMilliCpuSeconds,
    /// Memory, in bytes.
    MemoryBytes,
    /// Storage, in bytes.
    StorageBytes,
    /// Model tokens for the `llm` executor.
    LlmTokens,
    /// Worker slots (agents).
    Workers,
    /// Money, in the budget's smallest unit.
    BudgetUnits,
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskOutcome {
    /// It produced a result; the digest names the result's bytes.
    Succeeded {
        /// SHA-256 of the result bytes.
        result_digest: [u8; 32],
    },
    /// It failed, with a reason a user can read.
    Failed {
        /// Why it failed.
        reason: String,
    },
}

/// The events of seed §5.2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A project moved from one phase to the next (`from` is `None` at intake).
    PhaseTransition {
        /// The project's id.
        project: String,
        /// The phase it left.
        from: Option<Phase>,
        /// The phase it entered.
        to: Phase,
    },
    /// An agent asks for more of a resource.
    ResourceRequest {
        /// Which resource.
        resource: ResourceKind,
        /// How much, in the resource's unit.
        amount: u64,
        /// Why, for the deciding superior.
        reason: String,
    },
    /// A task finished.
    TaskCompletion {
        /// The project's id.
        project: String,
        /// The task's id within the project.
        task: String,
        /// Which execution of the task this was (1 for the first).
        attempt: u32,
        /// How it ended.
        outcome: TaskOutcome,
    },
    /// An error that the sender could not resolve at its level.
    ErrorEscalation {
        /// The project concerned, if any.
        project: Option<String>,
        /// The task concerned, if any.
        task: Option<String>,
        /// What went wrong.
        error: String,
        /// How many levels it has already climbed (0 at the mayor).
        level: u8,
    },
    /// A metric crossed its threshold.
    PerformanceAlert {
        /// The metric's name, e.g. `task_latency_ms_p99`.
        metric: String,
        /// Its value, in thousandths of its unit (integers keep events comparable).
        value_milli: i64,
        /// The threshold it crossed, same unit.
        threshold_milli: i64,
    },
}

/// A command from a superior to a subordinate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Urgency.
    pub priority: Priority,
    /// What to do, a verb from the role's vocabulary (e.g. `assign_task`).
    pub action: String,
    /// The action's arguments, encoded by the role that owns the action.
    pub body: Vec<u8>,
}

/// A status or performance update to a superior.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// What the report is about (a task, a city, a metric set).
    pub subject: String,
    /// The event being reported, if the report carries one.
    pub event: Option<Event>,
    /// Further content, encoded by the reporting role.
    pub body: Vec<u8>,
}

/// An information request between peers, or the answer to one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// The query this answers, if it is an answer.
    pub in_reply_to: Option<MessageId>,
    /// What is asked (or answered).
    pub question: String,
    /// Arguments or the answer's content.
    pub body: Vec<u8>,
}

/// An event broadcast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// The event.
    pub event: Event,
}

/// A request to a superior to resolve something.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Escalation {
    /// How urgent.
    pub severity: Severity,
    /// What happened.
    pub event: Event,
}

/// The sealed content of an envelope. Its variant must match the header's
/// [`MessageKind`]; the receive pipeline rejects a mismatch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// See [`Command`].
    Command(Command),
    /// See [`Report`].
    Report(Report),
    /// See [`Query`].
    Query(Query),
    /// See [`Notification`].
    Notification(Notification),
    /// See [`Escalation`].
    Escalation(Escalation),
}

impl Payload {
    /// The kind this payload must travel under.
    pub fn kind(&self) -> MessageKind {
        match self {
            Payload::Command(_) => MessageKind::Command,
            Payload::Report(_) => MessageKind::Report,
            Payload::Query(_) => MessageKind::Query,
            Payload::Notification(_) => MessageKind::Notification,
            Payload::Escalation(_) => MessageKind::Escalation,
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn phase_names_round_trip() {
        for phase in Phase::ALL {
            assert_eq!(Phase::from_name(phase.as_str()), Some(phase));
        }
        assert_eq!(Phase::from_name("Launch"), None);
    }

    use super::*;

    #[test]
    fn phases_run_in_seed_order_and_end_after_launch() {
        let mut phase = Phase::Initiation;
        let mut seen = vec![phase];
        while let Some(next) = phase.next() {
            assert!(next > phase);
            seen.push(next);
            phase = next;
        }
        assert_eq!(seen, Phase::ALL);
        assert_eq!(Phase::Launch.next(), None);
    }

    #[test]
    fn payload_kind_matches_variant() {
        let event = Event::PerformanceAlert {
            metric: "m".into(),
            value_milli: 1,
            threshold_milli: 0,
        };
        let payloads = [
            Payload::Command(Command {
                priority: Priority::High,
                action: "a".into(),
                body: vec![],
            }),
            Payload::Report(Report {
                subject: "s".into(),
                event: None,
                body: vec![],
            }),
            Payload::Query(Query {
                in_reply_to: None,
                question: "q".into(),
                body: vec![],
            }),
            Payload::Notification(Notification {
                event: event.clone(),
            }),
            Payload::Escalation(Escalation {
                severity: Severity::Error,
                event,
            }),
        ];
        let kinds: Vec<_> = payloads.iter().map(Payload::kind).collect();
        assert_eq!(kinds, MessageKind::ALL);
    }
}
