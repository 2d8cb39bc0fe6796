//! The node's event stream: the seed's five events (seed §5.2: PhaseTransition,
//! ResourceRequest, TaskCompletion, ErrorEscalation, PerformanceAlert) from the whole
//! mesh, the mesh's membership and leader changes, and this node's own role changes.
//!
//! ```text
//!   president ── PhaseTransition, ResourceRequest, PerformanceAlert ─┐ gossip on `all`,
//!   governor  ── TaskCompletion, ErrorEscalation (once committed) ───┤ `state/<name>`, sealed
//!                                                                    │ under the group key
//!   every node: opened gossip + what it emitted itself ──────────────┼─► EventBus ─► streams
//!   every node's Registry copy ── members admitted or evicted,       │   (log of the last
//!                                 president and governors changed ───┤   EVENT_LOG_CAPACITY)
//!   work duty ── RoleChange (this node's roles gained or lost) ──────┘
//! ```
//!
//! Bounded: the bus keeps the last [`EVENT_LOG_CAPACITY`] events, from which a reader
//! resumes by index; a subscriber that falls further behind is told how many it missed
//! (`RecvError::Lagged`), and the API drops it with that reason, so a slow reader never
//! holds memory. Every event carries an index, increasing by one per event on this node.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use aamas_protocol::Event;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::metrics::{Metrics, labels};

/// Events the bus keeps for subscribers that are behind and for readers that resume.
pub const EVENT_LOG_CAPACITY: usize = 4_096;

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

/// What the bus carries. In the stream its fields sit beside the event's `kind`
/// ([`BusEvent::label`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum BusEvent {
    /// One of the seed's five events, from this node or from the mesh.
    Mesh {
        /// The event.
        event: Event,
        /// The member that decided or committed it (peer id).
        origin: String,
        /// The state it happened in, for a task's events.
        state: Option<String>,
    },
    /// This node gained or lost a role.
    RoleChange {
        /// The role.
        role: Role,
        /// `true` when gained, `false` when lost.
        gained: bool,
    },
    /// The mesh's president or a state's governor changed, as the Registry records it.
    LeaderChange {
        /// The office: president, or governor of a state.
        role: Role,
        /// Its new holder (peer id); `None` while it is vacant.
        holder: Option<String>,
    },
    /// A member was admitted or left (was evicted), as the Registry records it.
    Membership {
        /// The member (peer id).
        member: String,
        /// `true` when admitted, `false` when it left.
        joined: bool,
    },
}

impl BusEvent {
    /// The metric label of this event's kind, also its `kind` in the stream.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Mesh { event, .. } => match event {
                Event::PhaseTransition { .. } => "phase_transition",
                Event::ResourceRequest { .. } => "resource_request",
                Event::TaskCompletion { .. } => "task_completion",
                Event::ErrorEscalation { .. } => "error_escalation",
                Event::PerformanceAlert { .. } => "performance_alert",
            },
            Self::RoleChange { .. } => "role_change",
            Self::LeaderChange { .. } => "leader_change",
            Self::Membership { .. } => "membership",
        }
    }

    /// The project it is about, if any.
    pub fn project(&self) -> Option<&str> {
        match self {
            Self::Mesh { event, .. } => match event {
                Event::PhaseTransition { project, .. } | Event::TaskCompletion { project, .. } => {
                    Some(project)
                }
                Event::ErrorEscalation { project, .. } => project.as_deref(),
                _ => None,
            },
            _ => None,
        }
    }

    /// The state it is about, if any.
    pub fn state(&self) -> Option<&str> {
        match self {
            Self::Mesh { state, .. } => state.as_deref(),
            Self::RoleChange { role, .. } | Self::LeaderChange { role, .. } => match role {
                Role::President => None,
                Role::Governor { state } | Role::Mayor { state, .. } => Some(state),
            },
            Self::Membership { .. } => None,
        }
    }

    /// The members it is about (peer ids): its origin, a new leader, the member.
    fn agents(&self) -> impl Iterator<Item = &str> {
        let one = match self {
            Self::Mesh { origin, .. } => Some(origin.as_str()),
            Self::LeaderChange { holder, .. } => holder.as_deref(),
            Self::Membership { member, .. } => Some(member.as_str()),
            Self::RoleChange { .. } => None,
        };
        one.into_iter()
    }
}

/// An event with its place on this node's bus; as JSON, its index and times, its
/// `kind` and the event's own fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Stamped {
    /// 0 for the first event this node published, then one more per event.
    pub index: u64,
    /// When this node published it (ms since the Unix epoch).
    pub at_ms: u64,
    /// When its origin sealed or recorded it (ms since the Unix epoch, the origin's
    /// clock): `at_ms - origin_ms` is the event's delay to this node.
    pub origin_ms: u64,
    /// The event.
    pub event: BusEvent,
}

impl Serialize for Stamped {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Flat<'a> {
            index: u64,
            at_ms: u64,
            origin_ms: u64,
            kind: &'static str,
            #[serde(flatten)]
            event: &'a BusEvent,
        }
        Flat {
            index: self.index,
            at_ms: self.at_ms,
            origin_ms: self.origin_ms,
            kind: self.event.label(),
            event: &self.event,
        }
        .serialize(serializer)
    }
}

/// Which events a reader wants; every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Only events about this project.
    #[serde(default)]
    pub project: Option<String>,
    /// Only events about this state.
    #[serde(default)]
    pub state: Option<String>,
    /// Only events from or about this member (peer id).
    #[serde(default)]
    pub agent: Option<String>,
    /// Only events of this kind (`phase_transition`, `task_completion`, ...).
    #[serde(default)]
    pub kind: Option<String>,
}

impl Filter {
    /// Whether `event` passes.
    pub fn matches(&self, event: &BusEvent) -> bool {
        let wanted = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|want| have == Some(want))
        };
        wanted(&self.project, event.project())
            && wanted(&self.state, event.state())
            && wanted(&self.kind, Some(event.label()))
            && self
                .agent
                .as_deref()
                .is_none_or(|agent| event.agents().any(|have| have == agent))
    }
}

/// What a reader that resumes gets: the kept events from its index on, how many it asked
/// for that are no longer kept, and a subscription to everything after.
#[derive(Debug)]
pub struct Resumed {
    /// Kept events with an index at or after the one asked for, oldest first.
    pub backlog: Vec<Arc<Stamped>>,
    /// Events asked for that fell out of the log.
    pub missed: u64,
    /// Every event after the backlog.
    pub live: broadcast::Receiver<Arc<Stamped>>,
}

/// The bus: publish from any task, subscribe from any task.
#[derive(Debug)]
pub struct EventBus {
    /// The next index and the log, held while sending so that indexes go out in order
    /// and a reader that resumes sees no gap and no event twice.
    log: Mutex<(u64, VecDeque<Arc<Stamped>>)>,
    capacity: usize,
    sender: broadcast::Sender<Arc<Stamped>>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(EVENT_LOG_CAPACITY)
    }
}

impl EventBus {
    /// A bus keeping the last `capacity` events (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let (sender, _) = broadcast::channel(capacity);
        Self {
            log: Mutex::new((0, VecDeque::with_capacity(capacity))),
            capacity,
            sender,
        }
    }

    /// Publishes `event`, counted in `metrics` by kind; returns its index. Never blocks:
    /// with no subscriber the event is only counted and kept.
    pub fn publish(&self, at_ms: u64, event: BusEvent, metrics: &Metrics) -> u64 {
        self.publish_from(at_ms, at_ms, event, metrics)
    }

    /// [`EventBus::publish`] for an event its origin made at `origin_ms`.
    pub fn publish_from(
        &self,
        at_ms: u64,
        origin_ms: u64,
        event: BusEvent,
        metrics: &Metrics,
    ) -> u64 {
        metrics
            .events
            .get_or_create(&labels(&[("kind", event.label())]))
            .inc();
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let index = log.0;
        log.0 += 1;
        let stamped = Arc::new(Stamped {
            index,
            at_ms,
            origin_ms,
            event,
        });
        if log.1.len() == self.capacity {
            log.1.pop_front();
        }
        log.1.push_back(stamped.clone());
        // An error only means nobody listens right now.
        let _ = self.sender.send(stamped);
        index
    }

    /// A new subscriber; it sees the events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Stamped>> {
        self.sender.subscribe()
    }

    /// A reader that resumes at event `from` (`None`: from now on).
    pub fn resume(&self, from: Option<u64>) -> Resumed {
        let log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let live = self.sender.subscribe();
        let Some(from) = from else {
            return Resumed {
                backlog: Vec::new(),
                missed: 0,
                live,
            };
        };
        let oldest = log.1.front().map_or(log.0, |first| first.index);
        let backlog = log
            .1
            .iter()
            .filter(|stamped| stamped.index >= from)
            .cloned()
            .collect();
        Resumed {
            backlog,
            missed: oldest.saturating_sub(from),
            live,
        }
    }

    /// The index the next event will get.
    pub fn next_index(&self) -> u64 {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).0
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
            origin: "president".into(),
            state: None,
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
            assert_eq!((one.index, one.at_ms, &one.event), (1, 2, &phase("p1")));
            assert_eq!((two.index, two.at_ms, &two.event), (2, 3, &phase("p2")));
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
            origin_ms: 40,
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
                "index": 7, "at_ms": 42, "origin_ms": 40, "kind": "role_change",
                "role": {"role": "governor", "state": "technical"}, "gained": true
            })
        );
    }

    #[test]
    fn a_reader_resumes_from_an_index_without_a_gap_or_a_repeat() {
        let metrics = Metrics::default();
        let bus = EventBus::new(4);
        for n in 0..6 {
            bus.publish(n, phase(&format!("p{n}")), &metrics);
        }
        // 0 and 1 fell out of the log of four.
        let mut resumed = bus.resume(Some(1));
        assert_eq!(resumed.missed, 1);
        let indexes: Vec<u64> = resumed.backlog.iter().map(|s| s.index).collect();
        assert_eq!(indexes, vec![2, 3, 4, 5]);
        bus.publish(6, phase("p6"), &metrics);
        assert_eq!(resumed.live.try_recv().expect("live").index, 6);
        let fresh = bus.resume(Some(5));
        assert_eq!((fresh.missed, fresh.backlog.len()), (0, 2));
        let now = bus.resume(None);
        assert!(now.backlog.is_empty());
        assert_eq!(bus.next_index(), 7);
    }

    #[test]
    fn filters_match_project_state_agent_and_kind() {
        let task = BusEvent::Mesh {
            event: Event::TaskCompletion {
                project: "p1".into(),
                task: "t".into(),
                attempt: 1,
                outcome: aamas_protocol::TaskOutcome::Succeeded {
                    result_digest: [0; 32],
                },
            },
            origin: "governor".into(),
            state: Some("technical".into()),
        };
        let filter =
            |json: serde_json::Value| -> Filter { serde_json::from_value(json).expect("filter") };
        assert!(Filter::default().matches(&task));
        assert!(filter(serde_json::json!({"project": "p1", "state": "technical"})).matches(&task));
        assert!(
            filter(serde_json::json!({"agent": "governor", "kind": "task_completion"}))
                .matches(&task)
        );
        assert!(!filter(serde_json::json!({"project": "p2"})).matches(&task));
        assert!(!filter(serde_json::json!({"state": "business"})).matches(&task));
        assert!(!filter(serde_json::json!({"kind": "phase_transition"})).matches(&task));
        assert!(!filter(serde_json::json!({"agent": "president"})).matches(&task));
        assert!(filter(serde_json::json!({"project": "p"})).matches(&phase("p")));
        assert!(serde_json::from_value::<Filter>(serde_json::json!({"nope": 1})).is_err());
    }
}
