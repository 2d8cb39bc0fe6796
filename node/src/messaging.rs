//! Sealed messages over gossipsub: topics, the receive pipeline's verdict for gossipsub,
//! authorisation of commands, and per-reason counters.
//!
//! ```text
//!   gossip ─► topic matches header? ─► Receiver::receive (size … signature … replay … open)
//!          ─► a Command? only from a superior of every recipient
//!          ─► Accept (forward; deliver if opened) | Ignore | Reject (penalise forwarder)
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use aamas_protocol::{
    Audience, Delivery, Disposition, Header, Identity, MeshId, MessageKind, NodeKey, Opened,
    Receiver, ReceiverConfig, Roster,
};
use libp2p::gossipsub::MessageAcceptance;

use crate::metrics::{Metrics, labels};

/// The gossip topics of a mesh: `aamas/1/<mesh>/{all,federal,state/<name>,city/<name>}`.
#[derive(Debug, Clone)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    /// The topics of `mesh`.
    pub fn new(mesh: MeshId) -> Self {
        Self {
            prefix: format!("aamas/1/{mesh}"),
        }
    }

    /// Every member.
    pub fn all(&self) -> String {
        format!("{}/all", self.prefix)
    }

    /// The president and the governors.
    pub fn federal(&self) -> String {
        format!("{}/federal", self.prefix)
    }

    /// The members of a state.
    pub fn state(&self, name: &str) -> String {
        format!("{}/state/{name}", self.prefix)
    }

    /// Envelopes sent directly (request-response), not gossiped.
    pub fn direct(&self) -> String {
        format!("{}/direct", self.prefix)
    }

    /// The members of a city.
    pub fn city(&self, name: &str) -> String {
        format!("{}/city/{name}", self.prefix)
    }
}

/// Who commands whom, as this node knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authority {
    /// The president.
    pub president: Option<NodeKey>,
    /// Each state's governor.
    pub governors: BTreeMap<String, NodeKey>,
    /// Each mayor's state.
    pub mayors: BTreeMap<NodeKey, String>,
    /// Each placed member's state.
    pub states: BTreeMap<NodeKey, String>,
}

/// Why a command is not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unauthorised {
    /// The sender holds no role that commands anyone.
    #[error("the sender commands nobody")]
    NotASuperior,
    /// The sender commands, but not every recipient is its subordinate.
    #[error("a recipient is not the sender's subordinate")]
    NotSubordinate,
}

impl Unauthorised {
    /// A metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Unauthorised::NotASuperior => "command_from_non_superior",
            Unauthorised::NotSubordinate => "command_to_non_subordinate",
        }
    }
}

impl Authority {
    /// Whether `header` may be sent: anything but a Command is; a Command only from the
    /// president (to anyone), a governor (to members of its state) or a mayor (to placed
    /// members: its state's workers, or others it borrows), and a broadcast Command only
    /// from the president.
    pub fn check(&self, header: &Header) -> Result<(), Unauthorised> {
        if header.kind != MessageKind::Command {
            return Ok(());
        }
        let sender = header.sender;
        if self.president == Some(sender) {
            return Ok(());
        }
        let governed: BTreeSet<&str> = self
            .governors
            .iter()
            .filter(|(_, governor)| **governor == sender)
            .map(|(state, _)| state.as_str())
            .collect();
        let mayor = self.mayors.contains_key(&sender);
        if governed.is_empty() && !mayor {
            return Err(Unauthorised::NotASuperior);
        }
        let Audience::Members(recipients) = &header.audience else {
            return Err(Unauthorised::NotSubordinate);
        };
        // A governor commands its state's members. A mayor commands workers: those of
        // its state first, and members of other states it borrows when its own state
        // has no live worker (every member is a worker).
        let subordinate = |recipient: &NodeKey| {
            self.states
                .get(recipient)
                .is_some_and(|state| mayor || governed.contains(state.as_str()))
        };
        if recipients.iter().all(subordinate) {
            Ok(())
        } else {
            Err(Unauthorised::NotSubordinate)
        }
    }
}

/// The verdict on one gossip message.
#[derive(Debug)]
pub struct Verdict {
    /// What gossipsub should do with it.
    pub acceptance: MessageAcceptance,
    /// The message, if this node is a recipient.
    pub opened: Option<Opened>,
    /// The envelope's id, when it was accepted.
    pub accepted: Option<aamas_protocol::MessageId>,
}

/// The receiving side of a node's messaging.
#[derive(Debug)]
pub struct Inbox {
    receiver: Mutex<Receiver>,
    roster: Mutex<(Roster, BTreeSet<NodeKey>)>,
    authority: Mutex<Authority>,
}

/// Largest envelope a node seals or opens. Direct envelopes carry task outcomes (up to
/// the work duty's `MAX_OUTCOME_OUTPUT` of output, plus the failure reason and headers)
/// over request-response, whose frames may be up to [`crate::net::wire::MAX_RPC_BYTES`];
/// gossip stays within gossipsub's own transmit limit, whatever this allows.
pub const MAX_ENVELOPE_BYTES: usize = 1 << 20;

/// The envelope limits of every node: [`MAX_ENVELOPE_BYTES`], the protocol's default
/// recipient count.
pub fn envelope_limits() -> aamas_protocol::Limits {
    aamas_protocol::Limits {
        max_message_bytes: MAX_ENVELOPE_BYTES,
        ..aamas_protocol::Limits::default()
    }
}

impl Inbox {
    /// An inbox for `mesh`, with nobody known yet.
    pub fn new(mesh: MeshId) -> Self {
        let config = ReceiverConfig {
            limits: envelope_limits(),
            ..ReceiverConfig::default()
        };
        Self {
            receiver: Mutex::new(Receiver::new(mesh, config)),
            roster: Mutex::new((Roster::new(), BTreeSet::new())),
            authority: Mutex::new(Authority::default()),
        }
    }

    /// Brings the roster to exactly `members` (adding only the new ones: adding costs a
    /// signature check) and replaces the authority.
    pub fn update(&self, members: &[aamas_protocol::PublicIdentity], authority: Authority) {
        let mut guard = self.roster.lock().unwrap_or_else(|p| p.into_inner());
        let (roster, known) = &mut *guard;
        let wanted: BTreeSet<NodeKey> = members.iter().map(|member| member.node).collect();
        for gone in known.difference(&wanted) {
            roster.remove(gone);
        }
        known.clone_from(&wanted);
        for member in members {
            if roster.get(&member.node) != Some(member)
                && let Err(error) = roster.insert(*member)
            {
                known.remove(&member.node);
                tracing::warn!(node = %member.node, %error, "member with an invalid identity");
            }
        }
        *self.authority.lock().unwrap_or_else(|p| p.into_inner()) = authority;
    }

    /// The president the inbox allows commands from now.
    pub fn president(&self) -> Option<NodeKey> {
        self.authority
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .president
    }

    /// Replaces the president, the governors and the mayors, keeping the roster and
    /// each member's state (for when only roles changed).
    pub fn update_roles(&self, roles: Authority) {
        let mut authority = self.authority.lock().unwrap_or_else(|p| p.into_inner());
        authority.president = roles.president;
        authority.governors = roles.governors;
        authority.mayors = roles.mayors;
    }

    /// Adds a group key the inbox opens envelopes with (the newest few epochs are kept).
    pub fn insert_group_key(&self, key: aamas_protocol::GroupKey) {
        self.roster
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .insert_group_key(key);
    }

    /// How many members the roster holds: whose messages this node can check.
    pub fn known(&self) -> usize {
        self.roster
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .len()
    }

    /// Whether `node` is in the roster.
    pub fn knows(&self, node: &NodeKey) -> bool {
        self.roster
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .contains(node)
    }

    /// Runs the pipeline on an envelope that arrived directly: it must be addressed to
    /// this node, on `topic`, and allowed by the hierarchy. Counted like gossip, under
    /// the `direct` channel.
    pub fn open_direct(
        &self,
        identity: &Identity,
        now_ms: u64,
        topic: &str,
        data: &[u8],
        metrics: &Metrics,
    ) -> Result<Opened, DirectRefused> {
        let outcome = {
            let roster = self.roster.lock().unwrap_or_else(|p| p.into_inner());
            let mut receiver = self.receiver.lock().unwrap_or_else(|p| p.into_inner());
            receiver.receive(now_ms, data, identity, &roster.0)
        };
        let refuse = |refused: DirectRefused| {
            metrics
                .direct_rejected
                .get_or_create(&labels(&[("reason", refused.label())]))
                .inc();
            Err(refused)
        };
        let opened = match outcome {
            Ok(Delivery::Opened(opened)) => opened,
            Ok(Delivery::Relay(_)) => return refuse(DirectRefused::NotARecipient),
            Err(rejection) => return refuse(DirectRefused::Rejected(rejection)),
        };
        if opened.header.topic != topic {
            return refuse(DirectRefused::TopicMismatch);
        }
        let allowed = self
            .authority
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(&opened.header);
        if let Err(unauthorised) = allowed {
            return refuse(DirectRefused::Unauthorised(unauthorised));
        }
        metrics
            .direct_accepted
            .get_or_create(&labels(&[(
                "kind",
                &format!("{:?}", opened.header.kind).to_lowercase(),
            )]))
            .inc();
        Ok(opened)
    }

    /// Runs the pipeline on a gossip message that arrived on `topic` for `identity`,
    /// counts the outcome, and returns gossipsub's verdict.
    pub fn judge(
        &self,
        identity: &Identity,
        now_ms: u64,
        topic: &str,
        data: &[u8],
        metrics: &Metrics,
    ) -> Verdict {
        let outcome = {
            let roster = self.roster.lock().unwrap_or_else(|p| p.into_inner());
            let mut receiver = self.receiver.lock().unwrap_or_else(|p| p.into_inner());
            receiver.receive(now_ms, data, identity, &roster.0)
        };
        let reject = |reason: &str, disposition: Disposition| {
            let (verdict, acceptance) = match disposition {
                Disposition::Reject => ("reject", MessageAcceptance::Reject),
                Disposition::Ignore => ("ignore", MessageAcceptance::Ignore),
            };
            metrics
                .gossip_rejected
                .get_or_create(&labels(&[("reason", reason), ("verdict", verdict)]))
                .inc();
            Verdict {
                acceptance,
                opened: None,
                accepted: None,
            }
        };
        let (header, opened) = match outcome {
            Ok(Delivery::Opened(opened)) => (opened.header.clone(), Some(opened)),
            Ok(Delivery::Relay(header)) => (header, None),
            Err(rejection) => {
                tracing::debug!(%rejection, topic, "gossip message refused");
                return reject(rejection.reason(), rejection.disposition());
            }
        };
        // The signed topic must be the one it travels on, or a message for one state
        // could be replayed into another.
        if header.topic != topic {
            return reject("topic_mismatch", Disposition::Reject);
        }
        let allowed = self
            .authority
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(&header);
        if let Err(unauthorised) = allowed {
            // The hierarchy may have moved on since the sender sealed it: no penalty.
            return reject(unauthorised.reason(), Disposition::Ignore);
        }
        let delivery = if opened.is_some() {
            "opened"
        } else {
            "relayed"
        };
        metrics
            .gossip_accepted
            .get_or_create(&labels(&[
                ("kind", &format!("{:?}", header.kind).to_lowercase()),
                ("delivery", delivery),
            ]))
            .inc();
        Verdict {
            acceptance: MessageAcceptance::Accept,
            opened,
            accepted: Some(header.id),
        }
    }
}

/// Why a direct envelope was refused by [`Inbox::open_direct`]; its
/// [`DirectRefused::label`] is the metric label it is counted under
/// (`aamas_direct_rejected_total{reason}`).
#[derive(Debug, thiserror::Error)]
pub enum DirectRefused {
    /// Sealed for other members: a direct envelope is never relayed.
    #[error("not addressed to this node")]
    NotARecipient,
    /// The receive pipeline refused it (malformed, bad signature, replay, unknown sender...).
    #[error(transparent)]
    Rejected(aamas_protocol::Rejection),
    /// Sealed for another topic than the direct one.
    #[error("sealed for another topic")]
    TopicMismatch,
    /// The hierarchy does not allow its sender to send it.
    #[error(transparent)]
    Unauthorised(Unauthorised),
}

impl DirectRefused {
    /// The metric label of this refusal.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NotARecipient => "not_a_recipient",
            Self::Rejected(rejection) => rejection.reason(),
            Self::TopicMismatch => "topic_mismatch",
            Self::Unauthorised(unauthorised) => unauthorised.reason(),
        }
    }
}

#[cfg(test)]
mod tests {
    use aamas_protocol::MessageId;

    use super::*;

    fn key(n: u8) -> NodeKey {
        NodeKey([n; 32])
    }

    fn command(sender: u8, audience: Audience) -> Header {
        Header {
            mesh: MeshId([1; 16]),
            id: MessageId([2; 16]),
            sender: key(sender),
            sequence: 1,
            created_ms: 1,
            expires_ms: 2,
            kind: MessageKind::Command,
            topic: "t".into(),
            audience,
        }
    }

    fn to(recipients: &[u8]) -> Audience {
        Audience::Members(recipients.iter().map(|n| key(*n)).collect())
    }

    /// President 1; governor 2 of technical (members 2, 3, 4); mayor 3 in technical;
    /// member 5 in market.
    fn authority() -> Authority {
        Authority {
            president: Some(key(1)),
            governors: BTreeMap::from([("technical".into(), key(2))]),
            mayors: BTreeMap::from([(key(3), "technical".into())]),
            states: [
                (2, "technical"),
                (3, "technical"),
                (4, "technical"),
                (5, "market"),
            ]
            .into_iter()
            .map(|(n, state)| (key(n), state.to_string()))
            .collect(),
        }
    }

    #[test]
    fn only_superiors_command_and_only_their_subordinates() {
        let authority = authority();
        assert_eq!(authority.check(&command(1, to(&[5, 4]))), Ok(()));
        assert_eq!(
            authority.check(&command(1, Audience::Group { epoch: 1 })),
            Ok(())
        );
        assert_eq!(authority.check(&command(2, to(&[3, 4]))), Ok(()));
        assert_eq!(authority.check(&command(3, to(&[4]))), Ok(()));
        // A mayor may borrow a worker of another state; nobody commands the unplaced.
        assert_eq!(authority.check(&command(3, to(&[5]))), Ok(()));
        assert_eq!(
            authority.check(&command(3, to(&[9]))),
            Err(Unauthorised::NotSubordinate)
        );
        assert_eq!(
            authority.check(&command(2, to(&[4, 5]))),
            Err(Unauthorised::NotSubordinate)
        );
        assert_eq!(
            authority.check(&command(2, Audience::Group { epoch: 1 })),
            Err(Unauthorised::NotSubordinate)
        );
        assert_eq!(
            authority.check(&command(4, to(&[3]))),
            Err(Unauthorised::NotASuperior)
        );
        assert_eq!(
            authority.check(&command(5, to(&[5]))),
            Err(Unauthorised::NotASuperior)
        );
    }

    #[test]
    fn other_kinds_flow_freely() {
        let mut report = command(4, to(&[2]));
        report.kind = MessageKind::Report;
        assert_eq!(authority().check(&report), Ok(()));
    }
}
