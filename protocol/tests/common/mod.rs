//! Shared fixtures for the protocol's integration tests.
#![allow(dead_code)]

use aamas_protocol::*;
use proptest::prelude::*;

pub const NOW_MS: u64 = 1_750_000_000_000;
pub const TTL_MS: u64 = 60_000;

/// A mesh with `n` members, all in one roster, plus one identity that is not a member.
pub struct Mesh {
    pub id: MeshId,
    pub members: Vec<Identity>,
    pub outsider: Identity,
    pub roster: Roster,
}

impl Mesh {
    pub fn new(n: usize) -> Self {
        let id = MeshId::random().expect("rng");
        let members: Vec<Identity> = (0..n).map(|_| Identity::generate().expect("rng")).collect();
        let mut roster = Roster::new();
        for member in &members {
            roster.insert(member.public()).expect("valid binding");
        }
        Self {
            id,
            members,
            outsider: Identity::generate().expect("rng"),
            roster,
        }
    }

    pub fn sealer(&self) -> Sealer {
        Sealer::new(self.id, Limits::default(), NOW_MS)
    }

    pub fn receiver(&self) -> Receiver {
        Receiver::new(self.id, ReceiverConfig::default())
    }

    /// `sender` seals `payload` on topic "t" with a new sealer, at `NOW_MS`.
    pub fn seal_as(
        &self,
        sender: &Identity,
        payload: &Payload,
        to: To<'_>,
        ttl_ms: u64,
    ) -> Result<Sealed, SealError> {
        self.sealer().seal(
            sender,
            NOW_MS,
            Outgoing {
                topic: "t",
                payload,
                to,
                ttl_ms,
            },
        )
    }

    /// Member 0 seals `payload` for members `to`.
    pub fn seal_for(&self, sealer: &mut Sealer, payload: &Payload, to: &[usize]) -> Sealed {
        let recipients: Vec<PublicIdentity> =
            to.iter().map(|i| self.members[*i].public()).collect();
        sealer
            .seal(
                &self.members[0],
                NOW_MS,
                Outgoing {
                    topic: "aamas/1/test/federal",
                    payload,
                    to: To::Members(&recipients),
                    ttl_ms: TTL_MS,
                },
            )
            .expect("seal")
    }
}

pub fn command(body: &[u8]) -> Payload {
    Payload::Command(Command {
        priority: Priority::Normal,
        action: "assign_task".into(),
        body: body.to_vec(),
    })
}

fn text() -> impl Strategy<Value = String> {
    "[a-z0-9_ .-]{0,24}"
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn phase() -> impl Strategy<Value = Phase> {
    proptest::sample::select(Phase::ALL.to_vec())
}

pub fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (text(), proptest::option::of(phase()), phase())
            .prop_map(|(project, from, to)| Event::PhaseTransition { project, from, to }),
        (
            proptest::sample::select(vec![
                ResourceKind::ComputeMilliCpuSeconds,
                ResourceKind::MemoryBytes,
                ResourceKind::StorageBytes,
                ResourceKind::LlmTokens,
                ResourceKind::Workers,
                ResourceKind::BudgetUnits,
            ]),
            any::<u64>(),
            text()
        )
            .prop_map(|(resource, amount, reason)| Event::ResourceRequest {
                resource,
                amount,
                reason
            }),
        (
            text(),
            text(),
            any::<u32>(),
            prop_oneof![
                any::<[u8; 32]>()
                    .prop_map(|result_digest| TaskOutcome::Succeeded { result_digest }),
                text().prop_map(|reason| TaskOutcome::Failed { reason }),
            ]
        )
            .prop_map(|(project, task, attempt, outcome)| Event::TaskCompletion {
                project,
                task,
                attempt,
                outcome
            }),
        (
            proptest::option::of(text()),
            proptest::option::of(text()),
            text(),
            any::<u8>()
        )
            .prop_map(|(project, task, error, level)| Event::ErrorEscalation {
                project,
                task,
                error,
                level
            }),
        (text(), any::<i64>(), any::<i64>()).prop_map(|(metric, value_milli, threshold_milli)| {
            Event::PerformanceAlert {
                metric,
                value_milli,
                threshold_milli,
            }
        }),
    ]
}

pub fn payload() -> impl Strategy<Value = Payload> {
    let priority = proptest::sample::select(vec![
        Priority::Low,
        Priority::Normal,
        Priority::High,
        Priority::Critical,
    ]);
    let severity = proptest::sample::select(vec![
        Severity::Info,
        Severity::Warning,
        Severity::Error,
        Severity::Critical,
    ]);
    prop_oneof![
        (priority, text(), bytes(2048)).prop_map(|(priority, action, body)| Payload::Command(
            Command {
                priority,
                action,
                body
            }
        )),
        (text(), proptest::option::of(event()), bytes(2048)).prop_map(|(subject, event, body)| {
            Payload::Report(Report {
                subject,
                event,
                body,
            })
        }),
        (proptest::option::of(any::<[u8; 16]>()), text(), bytes(2048)).prop_map(
            |(reply, question, body)| Payload::Query(Query {
                in_reply_to: reply.map(MessageId),
                question,
                body
            })
        ),
        event().prop_map(|event| Payload::Notification(Notification { event })),
        (severity, event())
            .prop_map(|(severity, event)| Payload::Escalation(Escalation { severity, event })),
    ]
}
