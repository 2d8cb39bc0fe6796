//! How members outside the federal group keep their copy of the Registry.
//!
//! The federal group has the voters and a few learners, the *relays*: enough of them
//! that each serves about [`MIRRORS_PER_RELAY`] other members. Every other member keeps
//! a [`Mirror`] of the Registry and long-polls a relay for the committed entries after
//! the last one it applied:
//!
//! ```text
//!   president ──Raft──► voters + relays ──Rpc::Mirror (held until newer)──► other members
//! ```
//!
//! With every member a learner, a thousand-member president sent every entry and every
//! heartbeat to 999 learners over as many replication streams, and after a failover the
//! new president could not bring them all up before its writes timed out. A relay's
//! answer also names the term and the president it follows, so members outside the group
//! learn of a new president from it.

use std::time::Duration;

use aamas_consensus::{Catchup, CatchupLimits, FEDERAL_GROUP, GroupId, MemberNode, NodeId};
use openraft::LogId;

use crate::driver::runtime::Node;
use crate::net::wire::{Rpc, RpcResponse};

/// The federal group keeps at least this many members (voters and relays): meshes up
/// to this size have every member in it, as before relays existed.
pub const MIN_FEDERAL_MEMBERS: usize = 8;
/// Members outside the federal group per relay the president aims for.
pub const MIRRORS_PER_RELAY: usize = 24;
/// The longest a relay holds a mirror's request while it has nothing newer. Below the
/// request-response timeout ([`crate::net::swarm::RPC_TIMEOUT`]), so an idle relay answers
/// before the request times out.
pub const MIRROR_WAIT: Duration = Duration::from_secs(5);
/// Requests from mirrors a node holds at once; more are refused as busy (the mirror
/// asks another relay).
pub const MAX_MIRROR_WAITERS: usize = 512;
/// Bounds of one relay answer: a mirror further behind gets the relay's snapshot. The
/// byte bound leaves room under [`crate::net::wire::MAX_RPC_BYTES`] for the envelope.
pub const MIRROR_LIMITS: CatchupLimits = CatchupLimits {
    max_entries: 512,
    max_bytes: 3 << 20,
};
/// A mirror's first pause after a failed catch-up; it doubles up to [`MIRROR_RETRY_MAX`].
pub const MIRROR_RETRY_MIN: Duration = Duration::from_millis(200);
/// A mirror's longest pause between failed catch-ups.
pub const MIRROR_RETRY_MAX: Duration = Duration::from_secs(5);
/// How often a member of the federal group (which follows the Registry through Raft)
/// looks whether it has left the group and must mirror again.
pub const MIRROR_IDLE: Duration = Duration::from_secs(1);

/// A mirror writes its state to disk after this many entries since it last did...
pub const MIRROR_SAVE_EVERY_ENTRIES: u64 = 5_000;
/// ...or this long after it last did, if it applied anything since; and always when it
/// first sees its own node admitted, so that a node restarted with its data dir knows
/// it is a member and whom to tell that it is back.
pub const MIRROR_SAVE_EVERY: Duration = Duration::from_secs(300);

/// How many members the federal group should have (voters and relays) in a mesh of
/// `members`: every member up to [`MIN_FEDERAL_MEMBERS`], then one per
/// [`MIRRORS_PER_RELAY`].
pub fn federal_members_wanted(members: usize) -> usize {
    members
        .div_ceil(MIRRORS_PER_RELAY)
        .max(MIN_FEDERAL_MEMBERS)
        .min(members)
}

impl Node {
    /// Serves a mirror's catch-up: what it lacks after `after`, waiting up to `wait_ms`
    /// (at most [`MIRROR_WAIT`]) for newer entries when there are none yet.
    pub(crate) async fn handle_mirror(
        &self,
        group: GroupId,
        after: Option<LogId<NodeId>>,
        wait_ms: u64,
    ) -> RpcResponse {
        let refused = |reason: String| RpcResponse::Refused { reason };
        if group != FEDERAL_GROUP {
            return refused(format!("group {group} is not mirrored"));
        }
        let Some(federal) = self.groups.get(FEDERAL_GROUP) else {
            return refused("the federal group is not open here".into());
        };
        if !federal.has_member(self.me()) {
            return refused("not a member of the federal group: ask one of its members".into());
        }
        // A relay no leader replicates to (taken out of the group, or cut off) would
        // answer with nothing new for ever: its mirrors ask another relay instead.
        if !self.follows_by_raft() {
            return refused("no leader replicates to this member now: ask another relay".into());
        }
        let next = after.map_or(0, |id| id.index.saturating_add(1));
        if federal.applied_index().is_none_or(|applied| applied < next) && wait_ms > 0 {
            let wait = Duration::from_millis(wait_ms).min(MIRROR_WAIT);
            federal.wait_applied(next, wait).await;
        }
        let (leader, term) = {
            let metrics = federal.raft().metrics();
            let metrics = metrics.borrow();
            (metrics.current_leader, metrics.current_term)
        };
        match federal.catch_up(after, MIRROR_LIMITS).await {
            Ok(catchup) => RpcResponse::Mirror {
                term,
                leader,
                catchup,
            },
            Err(error) => refused(error.to_string()),
        }
    }

    /// Whether this node follows the Registry through Raft (a voter or relay); the
    /// others mirror a relay.
    pub fn in_federal_group(&self) -> bool {
        self.groups
            .get(FEDERAL_GROUP)
            .is_some_and(|federal| federal.has_member(self.me()))
    }

    /// Whether this node's Registry copy follows a leader through Raft: it is in the
    /// federal group and a leader replicates to it. A voter that was replaced while it was
    /// down, or a relay the president took out (it thought it dead), still believes
    /// itself in the group, but no leader replicates to it any more; it mirrors a relay
    /// (as does a member during an election, which costs one catch-up). A removed relay
    /// even goes on naming the old leader, so what counts is that one was heard lately
    /// ([`aamas_consensus::Group::hears_a_leader`]).
    fn follows_by_raft(&self) -> bool {
        self.groups
            .get(FEDERAL_GROUP)
            .is_some_and(|federal| federal.has_member(self.me()) && federal.hears_a_leader())
    }

    /// Whether the mirror has applied more of the Registry than the federal group here:
    /// then it is this node's freshest copy.
    pub(crate) fn mirror_is_ahead(&self) -> bool {
        let federal = self
            .groups
            .get(FEDERAL_GROUP)
            .and_then(|federal| federal.applied_index());
        self.mirror.applied_index() > federal
    }

    /// Where this node's Registry copy comes from and how far each copy has applied, for
    /// diagnostics (the simulator names the nodes that lag with it).
    pub fn registry_copy(&self) -> String {
        let federal = self.groups.get(FEDERAL_GROUP);
        let member = federal.as_ref().is_some_and(|f| f.has_member(self.me()));
        let leader = federal.as_ref().and_then(|f| f.leader());
        let applied = federal.as_ref().and_then(|f| f.applied_index());
        let (mirror_leader, mirror_term) = self.mirror.leader();
        format!(
            "federal member {member}, leader {leader:?}, follows by Raft {}, federal applied \
             {applied:?}, mirror applied {:?} (leader {mirror_leader:?} in term {mirror_term})",
            self.follows_by_raft(),
            self.mirror.applied_index(),
        )
    }

    /// Lets this node's federal copy start elections only while the freshest Registry
    /// copy it has counts it among the voters.
    ///
    /// A voter the president replaced while it was cut off (a president isolated for
    /// longer than [`crate::roles::president::VOTER_DEAD_TIMEOUT_MS`], say) is never told:
    /// its own log still names it a voter, so it campaigns, alone and refused, in ever
    /// later terms. Added back as a relay, it then answered the president's first
    /// AppendEntries with its higher term, and the president stepped down; elected again
    /// in a later term, it met a still later one, and so on: no president held office
    /// for long (seen in the 50-node `partition-heal` scenario). Its mirror (it follows no
    /// leader, so it mirrors) shows the committed membership without it: from then on it
    /// waits for a leader instead, and one added back as a relay follows at once.
    pub(crate) async fn govern_federal_elections(&self) {
        let Some(federal) = self.groups.get(FEDERAL_GROUP) else {
            return;
        };
        let me = self.me();
        let voter = self
            .federal_membership()
            .await
            .voter_ids()
            .any(|id| id == me);
        federal.raft().runtime_config().elect(voter);
        // Logged only where the two copies disagree: a relay never campaigns anyway.
        let off = !voter && federal.voters().contains(&me);
        let was_off = self
            .federal_elections_off
            .swap(off, std::sync::atomic::Ordering::Relaxed);
        if was_off != off {
            tracing::info!(
                elections = !off,
                "{}",
                if off {
                    "the committed federal membership no longer counts this node a voter: \
                     it waits for a leader instead of campaigning"
                } else {
                    "this node's federal copy and the committed membership agree again"
                }
            );
        }
    }

    /// The federal group's membership as this node's freshest Registry copy has it.
    pub(crate) async fn federal_membership(&self) -> openraft::Membership<NodeId, MemberNode> {
        match self.groups.get(FEDERAL_GROUP) {
            Some(federal) if !self.mirror_is_ahead() => federal
                .raft()
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .clone(),
            _ => self.mirror.membership().await.membership().clone(),
        }
    }

    /// The members a mirror may ask, in the order it tries them: the relays (learners)
    /// of the freshest membership this node knows, those it is connected to first and
    /// each group starting at a place chosen by this node's id (so that mirrors spread
    /// over the relays); then the voters other than the president, the president, and
    /// the member that admitted this node. A mirror whose copy is old may know only
    /// relays that were taken out since (they refuse): it then learns the newer
    /// membership from a voter.
    async fn relays(&self) -> Vec<NodeId> {
        let me = self.me();
        let membership = self.federal_membership().await;
        let president = self.president().map(|(id, _)| id);
        let learners: Vec<NodeId> = membership.learner_ids().filter(|id| *id != me).collect();
        // A relay this node is connected to already, if any: each connection costs both
        // ends buffers, and most nodes' few dozen links include a relay.
        let connected: std::collections::HashSet<libp2p::PeerId> =
            self.handle.connected_peers().await.into_iter().collect();
        let (near, far): (Vec<NodeId>, Vec<NodeId>) = learners.iter().partition(|relay| {
            self.book
                .peer(**relay)
                .is_some_and(|peer| connected.contains(&peer))
        });
        let spread = |mut tier: Vec<NodeId>| {
            if !tier.is_empty() {
                // The node id is a hash: rotating by it modulo the tier spreads the mirrors.
                let first = usize::try_from(me % tier.len() as u64).unwrap_or(0);
                tier.rotate_left(first);
            }
            tier
        };
        let voters = membership
            .voter_ids()
            .filter(|id| *id != me && Some(*id) != president);
        let hint = *self
            .relay_hint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut order: Vec<NodeId> = Vec::new();
        for id in spread(near)
            .into_iter()
            .chain(spread(far))
            .chain(voters)
            .chain(president)
            .chain(hint)
        {
            if id != me && !order.contains(&id) {
                order.push(id);
            }
        }
        order
    }

    /// Keeps this node's Registry mirror up to date while it is outside the federal
    /// group: long-polls the first member [`Node::relays`] names, and moves to the next
    /// one when a catch-up fails (back to the first when the list changes).
    pub(crate) async fn follow_registry(&self) {
        let mut turn = 0_usize;
        let mut pause = MIRROR_RETRY_MIN;
        let mut last: Vec<NodeId> = Vec::new();
        // Refusals in a row since the last catch-up or change of the list.
        let mut refused = 0_usize;
        loop {
            if self.follows_by_raft() {
                tokio::time::sleep(MIRROR_IDLE).await;
                continue;
            }
            let relays = self.relays().await;
            if relays != last {
                turn = 0;
                refused = 0;
                last.clone_from(&relays);
            }
            let before = (self.mirror.applied_index(), self.mirror.leader());
            let failure = match self.catch_up_once(&relays, turn).await {
                Ok(()) => {
                    pause = MIRROR_RETRY_MIN;
                    refused = 0;
                    if (self.mirror.applied_index(), self.mirror.leader()) != before {
                        self.note_change();
                    }
                    continue;
                }
                Err(reason) => reason,
            };
            self.metrics
                .mirror_failed
                .get_or_create(&crate::metrics::labels(&[("reason", failure)]))
                .inc();
            turn = turn.wrapping_add(1);
            // A refusal is a quick, definite answer (a relay taken out of the group, or
            // one no leader reaches): the next relay is asked at once, until every one
            // refused in a row. After a partition heals, a mirror's list may start with
            // a dozen relays taken out meanwhile; waiting out a growing pause after each
            // kept it on the old president for 30 to 50 s.
            if failure == "refused" {
                refused += 1;
                if refused < relays.len() {
                    continue;
                }
                refused = 0;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MIRROR_RETRY_MAX);
        }
    }

    /// Writes the mirror to disk when due (see [`MIRROR_SAVE_EVERY`]).
    async fn save_mirror(&self) {
        let me = self.identity.node_key();
        let admitted = self
            .mirror
            .read(|machine| {
                machine
                    .registry()
                    .is_some_and(|registry| registry.is_active(&me))
            })
            .await;
        let first = admitted
            && !self
                .mirror_saved_admitted
                .swap(true, std::sync::atomic::Ordering::AcqRel);
        if let Err(error) = self
            .mirror
            .save_if_due(first, MIRROR_SAVE_EVERY_ENTRIES, MIRROR_SAVE_EVERY)
            .await
        {
            tracing::warn!(%error, "writing the Registry mirror to disk failed");
        }
    }

    /// One catch-up from the relay this turn picks; the reason of a failure, for the
    /// metric.
    async fn catch_up_once(&self, relays: &[NodeId], turn: usize) -> Result<(), &'static str> {
        if relays.is_empty() {
            return Err("no_relay");
        }
        let relay = relays[turn % relays.len()];
        let Some((peer, addrs)) = self.book.get(relay) else {
            return Err("unknown_relay");
        };
        let request = Rpc::Mirror {
            group: FEDERAL_GROUP,
            after: self.mirror.applied().await,
            wait_ms: u64::try_from(MIRROR_WAIT.as_millis()).unwrap_or(u64::MAX),
        };
        match self.handle.request(peer, addrs, request).await {
            Ok(RpcResponse::Mirror {
                term,
                leader,
                catchup,
            }) => {
                self.mirror.note_leader(term, leader);
                let snapshot = match &catchup {
                    Catchup::Snapshot { data, .. } => Some(data.len()),
                    _ => None,
                };
                match self.mirror.take(catchup).await {
                    Ok(taken) => {
                        self.metrics.mirror_taken.inc_by(taken as u64);
                        self.save_mirror().await;
                        if let Some(bytes) = snapshot {
                            tracing::debug!(%peer, bytes, "the Registry mirror took a snapshot");
                        }
                        Ok(())
                    }
                    Err(aamas_consensus::MirrorError::Gap { expected, got }) => {
                        tracing::debug!(%peer, expected, got, "a relay's entries do not continue the mirror");
                        Err("gap")
                    }
                    Err(error) => {
                        tracing::warn!(%peer, %error, "the Registry mirror could not take a relay's answer");
                        Err("storage")
                    }
                }
            }
            Ok(RpcResponse::Refused { reason }) => {
                tracing::debug!(%peer, reason, "a relay refused a catch-up");
                Err("refused")
            }
            Ok(other) => {
                tracing::debug!(%peer, ?other, "a relay answered a catch-up with something else");
                Err("unexpected")
            }
            Err(error) => {
                tracing::debug!(%peer, %error, "a relay did not answer a catch-up");
                Err("unreachable")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_federal_group_grows_with_the_mesh_by_one_relay_per_24_members() {
        assert_eq!(federal_members_wanted(0), 0);
        assert_eq!(federal_members_wanted(5), 5);
        assert_eq!(federal_members_wanted(8), 8);
        assert_eq!(federal_members_wanted(50), 8);
        assert_eq!(federal_members_wanted(200), 9);
        assert_eq!(federal_members_wanted(1_000), 42);
        assert_eq!(federal_members_wanted(10_000), 417);
    }
}
