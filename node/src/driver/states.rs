//! States, governors and mayors.
//!
//! ```text
//!   president ── FoundStateGroup(state, id, founder, voters) ──► Registry   (once per state)
//!   founder   ── initialize(voters) ──► state group (Raft)          (exactly one node does it)
//!   governor  = leader of the state group:
//!       keeps STATE_VOTERS voters (state members first), replaces dead ones,
//!       (its cities, mayors, escalations and progress reports: `governor`, driven from
//!       `work`)
//!       reports itself, its voters and mayors ── RecordGovernor ──► Registry (via president)
//! ```
//!
//! The decisions are pure functions of the governor's core ([`pick_voters`],
//! [`pick_mayor`], [`mayor_action`]); the `Node` methods carry them out through Raft.

use std::collections::{BTreeMap, BTreeSet};

use aamas_consensus::registry::{GovernorRecord, RegistryCommand, StateGroup};
use aamas_consensus::{FEDERAL_GROUP, Group, GroupId, HealOutcome, MemberNode, NodeId};
use aamas_protocol::NodeKey;
use libp2p::PeerId;
use sha2::{Digest as _, Sha256};

use crate::driver::runtime::{Node, node_id, now_ms, parse_addrs};
use crate::net::wire::Rpc;

/// Why a governor's report did not reach the Registry.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// No president is known right now.
    #[error("no president right now")]
    NoPresident,
    /// The president did not acknowledge the report.
    #[error(transparent)]
    Unacked(#[from] crate::net::swarm::Unacked),
    /// The president could not commit it.
    #[error("the report was not committed: {0}")]
    NotCommitted(#[from] aamas_consensus::WriteError),
}

/// Voters of a state group, when the mesh has that many members.
pub const STATE_VOTERS: usize = 3;
/// A member not connected for this long counts as dead for choosing voters and mayors.
pub const ALIVE_WINDOW_MS: u64 = 3_000;

/// The Raft group id of a state: 8 bytes of SHA-256 of its name, never 0 (the federal
/// group).
pub fn state_group_id(state: &str) -> GroupId {
    let digest = Sha256::digest([b"aamas/1 state group ".as_slice(), state.as_bytes()].concat());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes).max(1)
}

pub use crate::roles::governor::{
    Candidate, MAYOR_LEASE_MS, MayorAction, mayor_action, pick_mayor, pick_voters,
};

impl Node {
    /// The active members as role candidates, with liveness and voter load.
    pub(crate) async fn candidates(&self) -> Vec<Candidate> {
        let members: Vec<(NodeKey, Option<String>, usize)> = self
            .registry(|registry| {
                let mut load: BTreeMap<NodeKey, usize> = BTreeMap::new();
                for info in registry.states().values() {
                    let voters = info
                        .governor
                        .as_ref()
                        .map(|g| g.voters.clone())
                        .or_else(|| info.group.as_ref().map(|g| g.voters.clone()))
                        .unwrap_or_default();
                    for voter in voters {
                        *load.entry(voter).or_default() += 1;
                    }
                }
                registry
                    .active_members()
                    .map(|(key, member)| {
                        (
                            *key,
                            member.state.clone(),
                            load.get(key).copied().unwrap_or(0),
                        )
                    })
                    .collect()
            })
            .await
            .unwrap_or_default();
        let alive = self.alive(members.iter().map(|(key, _, _)| key));
        members
            .into_iter()
            .zip(alive)
            .map(|((key, state, load), alive)| Candidate {
                alive,
                key,
                state,
                load,
            })
            .collect()
    }

    /// The active members seen connected within [`ALIVE_WINDOW_MS`], and this node: what
    /// a mayor's round needs of [`Node::candidates`], without copying every member's state.
    pub(crate) async fn alive_members(&self) -> BTreeSet<NodeKey> {
        let keys: Vec<NodeKey> = self
            .registry(|registry| registry.active_members().map(|(key, _)| *key).collect())
            .await
            .unwrap_or_default();
        let alive = self.alive(&keys);
        keys.into_iter()
            .zip(alive)
            .filter(|(_, alive)| *alive)
            .map(|(key, _)| key)
            .collect()
    }

    /// Whether each of `keys` is alive for choosing voters and mayors: this node, or a
    /// member seen connected within [`ALIVE_WINDOW_MS`].
    fn alive<'a>(&self, keys: impl IntoIterator<Item = &'a NodeKey> + Clone) -> Vec<bool> {
        let me = self.identity.node_key();
        let seen = self.seen_within(keys.clone(), now_ms(), ALIVE_WINDOW_MS);
        keys.into_iter()
            .zip(seen)
            .map(|(key, seen)| seen || *key == me)
            .collect()
    }

    /// The Raft entries (peer id and the addresses the Registry has) of `keys`, read for
    /// those members only: a governor's duty asks every round, and every member's
    /// addresses at every round was a copy of the whole member list.
    pub(crate) async fn member_nodes(&self, keys: &[NodeKey]) -> BTreeMap<NodeId, MemberNode> {
        let addrs: Vec<Vec<String>> = self
            .registry(|registry| {
                keys.iter()
                    .map(|key| {
                        registry
                            .members()
                            .get(key)
                            .map(|member| member.addrs.clone())
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .await
            .unwrap_or_default();
        keys.iter()
            .zip(addrs.into_iter().chain(std::iter::repeat_with(Vec::new)))
            .map(|(key, addrs)| {
                let node = MemberNode {
                    peer_id: key.peer_id(),
                    addrs,
                };
                (self.id_of(key), node)
            })
            .collect()
    }

    /// The president founds a group for every state that has members and none yet, up to
    /// the governors the policy's tier allows (the most populated states first; a state
    /// left without one has its tasks moved to a governed state).
    pub(crate) async fn found_state_groups(&self) {
        let (mut unfounded, founded): (Vec<(String, usize)>, usize) = self
            .registry(|registry| {
                let counts = registry.member_count_by_state();
                let unfounded = registry
                    .states()
                    .iter()
                    .filter(|(_, info)| info.group.is_none())
                    .filter_map(|(name, _)| {
                        let members = counts.get(name.as_str()).copied().unwrap_or(0);
                        (members > 0).then(|| (name.clone(), members))
                    })
                    .collect();
                let founded = registry
                    .states()
                    .values()
                    .filter(|info| info.group.is_some())
                    .count();
                (unfounded, founded)
            })
            .await
            .unwrap_or_default();
        if unfounded.is_empty() {
            return;
        }
        unfounded.sort_by(|(a, many), (b, more)| more.cmp(many).then_with(|| a.cmp(b)));
        let tier = self.policy().await.and_then(|policy| policy.tier);
        if let Some((tier, cap)) = tier.and_then(|tier| Some((tier, tier.max_governors()?))) {
            let room = cap.saturating_sub(founded);
            if unfounded.len() > room {
                let rule = format!("tier-{}-governors", tier.as_str());
                for (state, _) in unfounded.split_off(room) {
                    let first = self
                        .ungoverned_by_tier
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(state.clone());
                    if first {
                        tracing::warn!(%state, %rule, cap, "a state left without a governor: the policy's tier allows {cap}");
                        self.metrics
                            .policy_decisions
                            .get_or_create(&crate::metrics::labels(&[
                                ("at", "founding"),
                                ("rule", &rule),
                                ("outcome", "denied"),
                            ]))
                            .inc();
                    }
                }
            }
        }
        let unfounded: Vec<String> = unfounded.into_iter().map(|(state, _)| state).collect();
        if unfounded.is_empty() {
            return;
        }
        let candidates = self.candidates().await;
        for state in unfounded {
            let voters = pick_voters(&state, &candidates, &BTreeSet::new(), STATE_VOTERS);
            // The founder must be a member of the state, so that a state's first governor
            // is one of its own.
            let Some(founder) = voters.first().copied().filter(|founder| {
                candidates
                    .iter()
                    .any(|c| c.key == *founder && c.state.as_deref() == Some(state.as_str()))
            }) else {
                continue;
            };
            let group = StateGroup {
                id: state_group_id(&state),
                founder,
                voters,
            };
            let command = RegistryCommand::FoundStateGroup {
                state: state.clone(),
                group,
            };
            match self.propose(&[b"found", state.as_bytes()], command).await {
                Ok(()) => tracing::info!(%state, "founded a state group"),
                Err(error) => tracing::warn!(%state, %error, "founding a state group failed"),
            }
        }
    }

    /// Opens the groups of the states this node is a first voter of; the founder
    /// initialises its group (once: later calls are no-ops).
    pub(crate) async fn open_state_groups(&self) {
        let me = self.identity.node_key();
        let mine: Vec<(String, StateGroup)> = self
            .registry(|registry| {
                registry
                    .states()
                    .iter()
                    .filter_map(|(name, info)| Some((name.clone(), info.group.clone()?)))
                    .filter(|(_, group)| group.voters.contains(&me))
                    .collect()
            })
            .await
            .unwrap_or_default();
        if mine.is_empty() {
            return;
        }
        for (state, group) in mine {
            let open = match self.groups.open(group.id).await {
                Ok(open) => open,
                Err(error) => {
                    tracing::warn!(%state, %error, "opening a state group failed");
                    continue;
                }
            };
            let uninitialised = open.voters().is_empty();
            if group.founder == me && uninitialised {
                let voters = self.member_nodes(&group.voters).await;
                match self.groups.initialize(group.id, voters).await {
                    Ok(()) => tracing::info!(%state, "initialised the state group"),
                    Err(error) => tracing::warn!(%state, %error, "initialising failed"),
                }
            }
        }
    }

    /// The state whose group is `group`, if any.
    pub(crate) async fn state_of_group(&self, group: GroupId) -> Option<String> {
        if group == FEDERAL_GROUP {
            return None;
        }
        self.registry(|registry| {
            registry
                .states()
                .iter()
                .find(|(_, info)| info.group.as_ref().is_some_and(|g| g.id == group))
                .map(|(name, _)| name.clone())
        })
        .await
        .flatten()
    }

    /// The open state groups this node leads, with their states.
    pub(crate) async fn governed(&self) -> Vec<(String, Group)> {
        let me = self.me();
        let mut governed = Vec::new();
        for id in self.groups.ids() {
            if id == FEDERAL_GROUP {
                continue;
            }
            let Some(group) = self.groups.get(id) else {
                continue;
            };
            if group.leader() == Some(me)
                && let Some(state) = self.state_of_group(id).await
            {
                governed.push((state, group));
            }
        }
        governed
    }

    /// A governor's duties for each state it leads; whether it leads any.
    pub(crate) async fn governor_tick(&self) -> bool {
        let governed = self.governed().await;
        if governed.is_empty() {
            return false;
        }
        let candidates = self.candidates().await;
        for (state, group) in governed {
            self.heal_state_voters(&state, &group, &candidates).await;
            self.report_governor(&state, &group).await;
        }
        true
    }

    async fn heal_state_voters(&self, state: &str, group: &Group, candidates: &[Candidate]) {
        let now = now_ms();
        let by_id: BTreeMap<NodeId, &Candidate> =
            candidates.iter().map(|c| (self.id_of(&c.key), c)).collect();
        let membership = group.raft().metrics().borrow().membership_config.clone();
        let voters: BTreeSet<NodeId> = membership.membership().voter_ids().collect();
        let voter_keys: BTreeSet<NodeKey> = voters
            .iter()
            .filter_map(|id| by_id.get(id).map(|c| c.key))
            .collect();
        // Replacement: a state member first, else anyone alive.
        let preferred = pick_voters(state, candidates, &voter_keys, 1);
        let last_seen = |id: NodeId| self.last_seen(id);
        let outcome = aamas_consensus::replace_dead_voter(
            group,
            &self.member_nodes(&preferred).await,
            last_seen,
            now,
            crate::driver::runtime::VOTER_DEAD_TIMEOUT_MS,
        )
        .await;
        match outcome {
            Ok(HealOutcome::Replaced(replacement)) => {
                tracing::info!(state, ?replacement, "replaced a dead state voter");
                return;
            }
            Ok(HealOutcome::NoCandidate { dead }) => {
                tracing::debug!(
                    state,
                    dead,
                    "a state voter is dead and nobody can replace it"
                );
            }
            Err(error) => tracing::warn!(state, %error, "replacing a state voter failed"),
            Ok(_) => {}
        }
        if voters.len() >= STATE_VOTERS || membership.membership().get_joint_config().len() > 1 {
            return;
        }
        // Every missing voter in one membership change: grown one at a time, a group
        // founded with one voter spends a while with two, where the loss of either
        // leaves it without a quorum for good.
        let newcomers = pick_voters(state, candidates, &voter_keys, STATE_VOTERS - voters.len());
        if newcomers.is_empty() {
            return;
        }
        let mut grown = voters;
        grown.extend(newcomers.iter().map(node_id));
        let learners = self.member_nodes(&newcomers).await;
        match aamas_consensus::change_voters(group, learners, grown).await {
            Ok(_) => tracing::info!(state, voters = ?newcomers, "added state voters"),
            Err(error) => tracing::warn!(state, %error, "adding state voters failed"),
        }
    }

    /// Tells the president (through the Registry) who governs `state`, its voters and
    /// mayors, when the Registry does not say so already.
    async fn report_governor(&self, state: &str, group: &Group) {
        let now = now_ms();
        // Only the term this node holds a committed leader vote in: its metrics may
        // still name it leader for a moment after another node's vote reached it.
        let Some(term) = group.leading_term(self.me()) else {
            return;
        };
        let metrics = group.raft().metrics().borrow().clone();
        let voter_ids: BTreeSet<NodeId> =
            metrics.membership_config.membership().voter_ids().collect();
        let voters: Vec<NodeKey> = self
            .registry(|registry| {
                registry
                    .active_members()
                    .map(|(key, _)| *key)
                    .filter(|key| voter_ids.contains(&self.id_of(key)))
                    .collect()
            })
            .await
            .unwrap_or_default();
        let mayors = group
            .read_local(|machine| {
                machine
                    .ledger()
                    .map(|ledger| {
                        ledger
                            .cities()
                            .keys()
                            .map(|city| (city.clone(), ledger.mayor_at(city, now).map(|l| l.mayor)))
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .await;
        let record = GovernorRecord {
            node: self.identity.node_key(),
            term,
            mayors,
            voters,
        };
        let current = self
            .registry(|registry| {
                registry
                    .states()
                    .get(state)
                    .and_then(|info| info.governor.clone())
            })
            .await
            .flatten();
        if current.as_ref() == Some(&record) {
            return;
        }
        if let Err(reason) = self.send_governor_report(state, record).await {
            tracing::debug!(state, %reason, "governor report not taken yet");
        }
    }

    async fn send_governor_report(
        &self,
        state: &str,
        record: GovernorRecord,
    ) -> Result<(), ReportError> {
        let Some((peer, addrs)) = self
            .president_peer()
            .map_err(|_| ReportError::NoPresident)?
        else {
            return self.record_governor(state, record).await;
        };
        let rpc = Rpc::GovernorReport {
            state: state.to_string(),
            record,
        };
        Ok(crate::net::swarm::acked(
            self.handle.request(peer, addrs, rpc).await,
        )?)
    }

    /// The president commits a governor's report.
    pub(crate) async fn record_governor(
        &self,
        state: &str,
        record: GovernorRecord,
    ) -> Result<(), ReportError> {
        // The time is part of the request id: a record can return to an earlier value
        // (a city opened and closed again), and the Registry would take a request id it
        // has seen as a retry of the old write and leave the newer record in place.
        let key = [
            state.as_bytes(),
            &record.node.0,
            &record.term.to_be_bytes(),
            format!("{:?}{:?}", record.mayors, record.voters).as_bytes(),
            &now_ms().to_be_bytes(),
        ]
        .concat();
        let command = RegistryCommand::RecordGovernor {
            state: state.to_string(),
            governor: record,
        };
        Ok(self.propose(&[b"governor", &key], command).await?)
    }

    /// Reconnects to the members of this node's state, so that liveness is known and
    /// Raft traffic flows, and keeps [`CROSS_STATE_NEIGHBOURS`] links into other states,
    /// so that gossip on the `all` topic does not depend on a few bridges between states
    /// (an attacker that gets a bridge graylisted, or sits in its mesh and forwards
    /// nothing, would cut a state off). `limit` dials a tick, until this node has
    /// [`NEIGHBOURS`] connections (in a large mesh, every member connected to every other
    /// of its state would be a quarter of N squared connections).
    pub(crate) async fn connect_to_neighbours(&self, limit: usize, look_anyway: bool) {
        let connected: BTreeSet<PeerId> = self.handle.connected_peers().await.into_iter().collect();
        // Enough links: look for missing links into other states only now and then, since
        // each look reads every member.
        if connected.len() >= NEIGHBOURS && !look_anyway {
            return;
        }
        let me = self.identity.node_key();
        let candidates: Vec<(NodeKey, bool)> = self
            .registry(|registry| {
                let mine = registry.members().get(&me).and_then(|m| m.state.clone());
                registry
                    .active_members()
                    .filter(|(key, _)| **key != me)
                    .map(|(key, member)| (*key, mine.is_none() || member.state == mine))
                    .collect()
            })
            .await
            .unwrap_or_default();
        let peers: Vec<(NodeKey, bool, bool)> = candidates
            .iter()
            .filter_map(|(key, same)| {
                let peer = self.peer_of(key)?;
                Some((*key, *same, connected.contains(&peer)))
            })
            .collect();
        let wanted = neighbours_to_dial(&me, &peers, connected.len(), limit);
        if wanted.is_empty() {
            return;
        }
        let dials: Vec<(NodeKey, Vec<String>)> = self
            .registry(|registry| {
                wanted
                    .iter()
                    .filter_map(|key| Some((*key, registry.members().get(key)?.addrs.clone())))
                    .collect()
            })
            .await
            .unwrap_or_default();
        for (key, addrs) in dials {
            let Some(peer) = self.peer_of(&key) else {
                continue;
            };
            self.handle
                .add_addresses(peer, parse_addrs(&addrs), true)
                .await;
        }
    }
}

/// Which members to dial now: of `peers` (each with whether it is in this node's state
/// and whether it is connected), first links into other states until
/// [`CROSS_STATE_NEIGHBOURS`] are connected, then members of this node's state until
/// `connected` reaches [`NEIGHBOURS`]; at most `limit` in all. Each node ranks the
/// candidates by a hash of both keys, so different nodes pick different neighbours and
/// one node picks the same ones from tick to tick.
pub(crate) fn neighbours_to_dial(
    me: &NodeKey,
    peers: &[(NodeKey, bool, bool)],
    connected: usize,
    limit: usize,
) -> BTreeSet<NodeKey> {
    let rank = |key: &NodeKey| -> [u8; 32] {
        Sha256::digest([b"aamas/1 neighbour ".as_slice(), &me.0, &key.0].concat()).into()
    };
    let mut ranked: Vec<(&NodeKey, bool, bool)> = peers
        .iter()
        .map(|(key, same, up)| (key, *same, *up))
        .collect();
    ranked.sort_by_cached_key(|(key, _, _)| rank(key));
    let cross_connected = ranked.iter().filter(|(_, same, up)| !same && *up).count();
    let cross: Vec<NodeKey> = ranked
        .iter()
        .filter(|(_, same, up)| !same && !up)
        .take(CROSS_STATE_NEIGHBOURS.saturating_sub(cross_connected))
        .map(|(key, _, _)| **key)
        .collect();
    let room = NEIGHBOURS.saturating_sub(connected + cross.len());
    let own = ranked
        .iter()
        .filter(|(_, same, up)| *same && !up)
        .take(room)
        .map(|(key, _, _)| **key);
    cross.iter().copied().chain(own).take(limit).collect()
}

/// Connections past which a node stops dialling its state's members. gossipsub keeps
/// 6 peers (at least 5) per topic in its mesh; with the dials it receives, a node that
/// dials 8 holds about 14 links, room enough for each topic's mesh. Every link costs an
/// idle node its pings, its gossipsub peer score and its muxer's wake-ups: with 24 an
/// idle 200-node mesh held 34 connections per node, with 12 it held 20.
pub const NEIGHBOURS: usize = 8;

/// Connections a node keeps into states other than its own (see
/// [`Node::connect_to_neighbours`]).
pub const CROSS_STATE_NEIGHBOURS: usize = 4;

#[cfg(test)]
mod tests {
    use aamas_consensus::ledger::Lease;

    use super::*;

    fn key(n: u8) -> NodeKey {
        NodeKey([n; 32])
    }

    fn candidate(n: u8, state: &str, alive: bool, load: usize) -> Candidate {
        Candidate {
            key: key(n),
            state: Some(state.to_string()),
            alive,
            load,
        }
    }

    #[test]
    fn neighbours_reach_into_other_states_before_filling_up_with_the_own() {
        let me = key(0);
        // Ten members of this node's state, six of others; none connected.
        let peers: Vec<(NodeKey, bool, bool)> =
            (1..=16).map(|n| (key(n), n <= 10, false)).collect();
        let wanted = neighbours_to_dial(&me, &peers, 0, 64);
        let cross = wanted.iter().filter(|k| k.0[0] > 10).count();
        assert_eq!(cross, CROSS_STATE_NEIGHBOURS);
        assert_eq!(wanted.len(), NEIGHBOURS.min(CROSS_STATE_NEIGHBOURS + 10));
        // The dial limit keeps the links into other states first.
        let few = neighbours_to_dial(&me, &peers, 0, 2);
        assert_eq!(few.len(), 2);
        assert!(few.iter().all(|k| k.0[0] > 10));
        // The same node picks the same neighbours from tick to tick.
        assert_eq!(neighbours_to_dial(&me, &peers, 0, 64), wanted);
    }

    #[test]
    fn a_full_node_still_keeps_its_links_into_other_states() {
        let me = key(0);
        let mut peers: Vec<(NodeKey, bool, bool)> =
            (1..=30).map(|n| (key(n), true, true)).collect();
        peers.extend((31..=40).map(|n| (key(n), false, false)));
        let wanted = neighbours_to_dial(&me, &peers, 30, 64);
        assert_eq!(wanted.len(), CROSS_STATE_NEIGHBOURS);
        assert!(wanted.iter().all(|k| k.0[0] > 30));
        // With its links into other states up, it dials no one.
        for peer in peers.iter_mut().filter(|p| wanted.contains(&p.0)) {
            peer.2 = true;
        }
        assert!(neighbours_to_dial(&me, &peers, 34, 64).is_empty());
    }

    #[test]
    fn state_groups_have_distinct_non_federal_ids() {
        let ids: BTreeSet<GroupId> = aamas_consensus::registry::DEFAULT_STATES
            .iter()
            .map(|state| state_group_id(state))
            .collect();
        assert_eq!(ids.len(), 4);
        assert!(!ids.contains(&FEDERAL_GROUP));
    }

    #[test]
    fn voters_come_from_the_state_first_then_the_least_loaded() {
        let candidates = [
            candidate(1, "market", true, 0),
            candidate(2, "technical", true, 3),
            candidate(3, "technical", false, 0),
            candidate(4, "financial", true, 2),
            candidate(5, "operations", true, 1),
        ];
        let none = BTreeSet::new();
        assert_eq!(
            pick_voters("technical", &candidates, &none, 3),
            vec![key(2), key(1), key(5)]
        );
        assert_eq!(
            pick_voters("technical", &candidates, &BTreeSet::from([key(2)]), 1),
            vec![key(1)]
        );
        assert_eq!(pick_voters("market", &candidates[2..3], &none, 3), vec![]);
    }

    #[test]
    fn the_mayor_is_another_member_of_the_state_when_there_is_one() {
        let candidates = [
            candidate(1, "technical", true, 1),
            candidate(2, "technical", true, 0),
            candidate(3, "technical", false, 0),
        ];
        assert_eq!(pick_mayor("technical", key(1), &candidates), Some(key(2)));
        assert_eq!(pick_mayor("technical", key(2), &candidates), Some(key(1)));
        assert_eq!(pick_mayor("market", key(1), &candidates), Some(key(1)));
    }

    #[test]
    fn leases_are_renewed_at_half_time_and_replaced_only_after_lapse() {
        let lease = Lease {
            mayor: key(2),
            until_ms: 10_000,
            term: 1,
        };
        let alive = |_: &NodeKey| true;
        let dead = |_: &NodeKey| false;
        let choose = || Some(key(3));
        assert_eq!(
            mayor_action(Some(&lease), 1_000, key(1), alive, choose),
            MayorAction::Keep
        );
        assert_eq!(
            mayor_action(Some(&lease), 6_000, key(1), alive, choose),
            MayorAction::Renew(key(2))
        );
        assert_eq!(
            mayor_action(Some(&lease), 6_000, key(1), dead, choose),
            MayorAction::WaitForLapse
        );
        assert_eq!(
            mayor_action(Some(&lease), 10_000, key(1), dead, choose),
            MayorAction::Appoint(key(3))
        );
        assert_eq!(
            mayor_action(None, 0, key(1), alive, choose),
            MayorAction::Appoint(key(3))
        );
        assert_eq!(
            mayor_action(None, 0, key(1), alive, || None),
            MayorAction::Keep
        );
        let own = Lease {
            mayor: key(1),
            ..lease
        };
        assert_eq!(
            mayor_action(Some(&own), 6_000, key(1), alive, choose),
            MayorAction::WaitForLapse
        );
        assert_eq!(
            mayor_action(Some(&own), 6_000, key(1), alive, || Some(key(1))),
            MayorAction::Renew(key(1))
        );
    }
}
