//! The node's event bus: the seed's five events (seed §5.2: PhaseTransition,
//! ResourceRequest, TaskCompletion, ErrorEscalation, PerformanceAlert) as this node's
//! roles decide or commit them, and the changes of this node's own roles.
//!
//! ```text
//!   president ── PhaseTransition ──┐
//!   governor  ── TaskCompletion, ErrorEscalation (once committed) ──► EventBus ──► subscribers
//!   work duty ── RoleChange (president, governor of S, mayor of C gained or lost) ──┘
//! ```
//!
//! Bounded: the bus keeps the last [`EVENT_BUS_CAPACITY`] events; a subscriber that
//! falls further behind is told how many it missed (`RecvError::Lagged`) and goes on
//! from the oldest kept, so a slow reader never holds memory. Every event carries an
//! index, increasing by one per event on this node, so a reader can tell what it missed.
//! ResourceRequest and PerformanceAlert have no producer yet (governance, issue [3/5]).

use std::collections::BTreeSet;
use std::sync::Mutex;

use aamas_protocol::Event;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::metrics::{Metrics, labels};

/// Events the bus keeps for subscribers that are behind.
pub const EVENT_BUS_CAPACITY: usize = 1_024;

/// A role this node can hold.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Role {
    /// Leader of the federal group.
    President,
    /// Leader of a state's group.
    Governor {
        /// The state.
        state: String,
    },
    /// Holder of a city's lease.
    Mayor {
        /// The state of the city.
        state: String,
        /// The city.
        city: String,
    },
}

/// What the bus carries.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BusEvent {
    /// One of the seed's five events.
    Mesh {
        /// The event.
        event: Event,
    },
    /// This node gained or lost a role.
    RoleChange {
        /// The role.
        role: Role,
        /// `true` when gained, `false` when lost.
        gained: bool,
    },
}

impl BusEvent {
    /// The metric label of this event's kind.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Mesh { event } => match event {
                Event::PhaseTransition { .. } => "phase_transition",
                Event::ResourceRequest { .. } => "resource_request",
                Event::TaskCompletion { .. } => "task_completion",
                Event::ErrorEscalation { .. } => "error_escalation",
                Event::PerformanceAlert { .. } => "performance_alert",
            },
            Self::RoleChange { .. } => "role_change",
        }
    }
}

/// An event with its place on this node's bus.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stamped {
    /// 0 for the first event this node published, then one more per event.
    pub index: u64,
    /// When it was published (ms since the Unix epoch).
    pub at_ms: u64,
    /// The event.
    #[serde(flatten)]
    pub event: BusEvent,
}

/// The bus: publish from any task, subscribe from any task.
#[derive(Debug)]
pub struct EventBus {
    /// The next index, held while sending so that indexes go out in order.
    next: Mutex<u64>,
    sender: broadcast::Sender<Stamped>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(EVENT_BUS_CAPACITY)
    }
}

impl EventBus {
    /// A bus keeping the last `capacity` events (at least 1).
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Self {
            next: Mutex::new(0),
            sender,
        }
    }

    /// Publishes `event`, counted in `metrics` by kind; returns its index. Never blocks:
    /// with no subscriber the event is only counted.
    pub fn publish(&self, at_ms: u64, event: BusEvent, metrics: &Metrics) -> u64 {
        metrics
            .events
            .get_or_create(&labels(&[("kind", event.label())]))
            .inc();
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let index = *next;
        *next += 1;
        // An error only means nobody listens right now.
        let _ = self.sender.send(Stamped {
            index,
            at_ms,
            event,
        });
        index
    }

    /// A new subscriber; it sees the events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Stamped> {
        self.sender.subscribe()
    }
}

/// The role changes from `before` to `now`: losses first, then gains, each in order.
pub fn role_changes(before: &BTreeSet<Role>, now: &BTreeSet<Role>) -> Vec<BusEvent> {
    let lost = before.difference(now).map(|role| BusEvent::RoleChange {
        role: role.clone(),
        gained: false,
    });
    let gained = now.difference(before).map(|role| BusEvent::RoleChange {
        role: role.clone(),
        gained: true,
    });
    lost.chain(gained).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use aamas_protocol::Phase;

    fn phase(project: &str) -> BusEvent {
        BusEvent::Mesh {
            event: Event::PhaseTransition {
                project: project.into(),
                from: Some(Phase::Initiation),
                to: Phase::Feasibility,
            },
        }
    }

    #[tokio::test]
    async fn subscribers_get_events_in_order_with_their_index() {
        let metrics = Metrics::default();
        let bus = EventBus::new(8);
        assert_eq!(bus.publish(1, phase("before"), &metrics), 0);
        let mut first = bus.subscribe();
        let mut second = bus.subscribe();
        assert_eq!(bus.publish(2, phase("p1"), &metrics), 1);
        assert_eq!(bus.publish(3, phase("p2"), &metrics), 2);
        for receiver in [&mut first, &mut second] {
            let one = receiver.recv().await.expect("first event");
            let two = receiver.recv().await.expect("second event");
            assert_eq!((one.index, one.at_ms, one.event), (1, 2, phase("p1")));
            assert_eq!((two.index, two.at_ms, two.event), (2, 3, phase("p2")));
        }
        let text = metrics.encode();
        assert!(
            text.contains("aamas_events_total{kind=\"phase_transition\"} 3"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_told_what_it_missed_and_memory_stays_bounded() {
        let metrics = Metrics::default();
        let bus = EventBus::new(4);
        let mut slow = bus.subscribe();
        for n in 0..10 {
            bus.publish(n, phase(&format!("p{n}")), &metrics);
        }
        match slow.recv().await {
            Err(broadcast::error::RecvError::Lagged(missed)) => assert_eq!(missed, 6),
            other => panic!("expected a lag of 6, got {other:?}"),
        }
        // It goes on from the oldest event kept: the last four.
        let next = slow.recv().await.expect("kept event");
        assert_eq!(next.index, 6);
    }

    #[test]
    fn role_changes_name_what_was_lost_and_gained() {
        let governor = |state: &str| Role::Governor {
            state: state.into(),
        };
        let mayor = Role::Mayor {
            state: "technical".into(),
            city: "technical-1".into(),
        };
        let before: BTreeSet<Role> = [Role::President, governor("technical")].into();
        let now: BTreeSet<Role> = [governor("technical"), mayor.clone()].into();
        assert_eq!(
            role_changes(&before, &now),
            vec![
                BusEvent::RoleChange {
                    role: Role::President,
                    gained: false,
                },
                BusEvent::RoleChange {
                    role: mayor,
                    gained: true,
                },
            ]
        );
        assert!(role_changes(&now, &now).is_empty());
    }

    #[test]
    fn events_serialise_with_their_kind_for_the_stream() {
        let stamped = Stamped {
            index: 7,
            at_ms: 42,
            event: BusEvent::RoleChange {
                role: Role::Governor {
                    state: "technical".into(),
                },
                gained: true,
            },
        };
        let json = serde_json::to_value(&stamped).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "index": 7, "at_ms": 42, "kind": "role_change",
                "role": {"role": "governor", "state": "technical"}, "gained": true
            })
        );
    }
}
