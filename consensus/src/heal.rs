//! Self-healing membership: a group's leader replaces a voter that has been dead for
//! longer than `voter_dead_timeout_ms` with a healthy member, so a group recovers its
//! fault tolerance without an operator as long as a quorum is alive.
//!
//! The decision ([`plan_replacement`]) is pure; [`replace_dead_voter`] carries it out
//! through Raft: the newcomer is added as a learner, caught up, and then swapped in with
//! one joint-consensus membership change.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::groups::Group;
use crate::types::{MemberNode, NodeId};

/// The longest [`add_caught_up_learner`] waits for a new learner to catch up.
pub const LEARNER_CATCH_UP_LIMIT: Duration = Duration::from_secs(30);

/// Runs `change` (a change of `group`'s membership, proposed by this member as its
/// leader) and gives it up, with an error, if this member stops leading first.
///
/// A leader cut off from its quorum waits for ever on a change it cannot commit, and
/// openraft may never answer one whose leader was deposed; the president's duties waited
/// with it, for good (seen after a partition healed in the 50-node `partition-heal`
/// scenario). A change given up so is harmless: this member no longer leads, and what it
/// proposed is committed by its successor or overwritten. A change under way at a
/// leader that still leads is never cut short (openraft proposes the second, uniform
/// half of a joint change from the caller's future).
pub async fn while_leading<T, E: std::fmt::Display>(
    group: &Group,
    change: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    let waiting = group.raft().wait(None);
    let deposed = waiting.metrics(|m| m.current_leader != Some(m.id), "no longer the leader");
    tokio::select! {
        done = change => done.map_err(|error| error.to_string()),
        _ = deposed => Err("this member stopped leading the group before the change \
                             was committed".to_string()),
    }
}

/// Adds `id` to `group` as a learner and waits (at most `limit`, and only while this
/// member leads) until it holds the log up to the change that added it: a voter is
/// made only of a learner that has caught up, so that the group does not wait on a
/// member without the log. openraft's own blocking wait has no time limit and does not
/// end when its leader is deposed.
pub async fn add_caught_up_learner(
    group: &Group,
    id: NodeId,
    node: MemberNode,
    limit: Duration,
) -> Result<(), String> {
    let raft = group.raft();
    let added = while_leading(group, raft.add_learner(id, node, false)).await?;
    if id == raft.metrics().borrow().id {
        return Ok(());
    }
    let wanted = added.log_id.index;
    let waiting = raft.wait(Some(limit));
    let caught_up = waiting.metrics(
        |m| {
            m.current_leader != Some(m.id)
                || m.replication.as_ref().is_some_and(|replication| {
                    replication
                        .get(&id)
                        .is_some_and(|matched| matched.is_some_and(|at| at.index >= wanted))
                })
        },
        "the new learner has caught up",
    );
    let metrics = caught_up
        .await
        .map_err(|error| format!("learner {id} did not catch up: {error}"))?;
    if metrics.current_leader != Some(metrics.id) {
        return Err("this member stopped leading the group before the learner caught up".into());
    }
    Ok(())
}

/// Proposes `change` to `group`'s membership, as its leader, through [`while_leading`].
pub async fn change_membership(
    group: &Group,
    change: impl Into<openraft::ChangeMembers<NodeId, MemberNode>>,
) -> Result<(), String> {
    while_leading(group, group.raft().change_membership(change, false))
        .await
        .map(|_| ())
}

/// Makes `voters` the voters of `group`, as its leader: each of `newcomers` is first
/// added as a learner and waited for until it has caught up ([`add_caught_up_learner`],
/// at most [`LEARNER_CATCH_UP_LIMIT`] each), so that the group never waits on a voter
/// without the log; then one change of membership.
pub async fn change_voters(
    group: &Group,
    newcomers: impl IntoIterator<Item = (NodeId, MemberNode)>,
    voters: BTreeSet<NodeId>,
) -> Result<(), String> {
    for (id, node) in newcomers {
        add_caught_up_learner(group, id, node, LEARNER_CATCH_UP_LIMIT)
            .await
            .map_err(|error| format!("adding learner {id}: {error}"))?;
    }
    change_membership(group, voters).await
}

/// A planned swap of one dead voter for one healthy non-voter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replacement {
    /// The voter to remove.
    pub dead: NodeId,
    /// The member to promote in its place.
    pub with: NodeId,
}

/// What [`replace_dead_voter`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealOutcome {
    /// This node is not the group's leader; only the leader heals.
    NotLeader,
    /// A membership change is already in progress.
    Busy,
    /// Every voter is alive.
    Healthy,
    /// A voter is dead but no healthy non-voter can replace it.
    NoCandidate {
        /// The dead voter.
        dead: NodeId,
    },
    /// The dead voter was replaced.
    Replaced(Replacement),
}

/// Errors of carrying out a replacement.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HealError {
    /// Adding the newcomer as a learner or changing the voters failed.
    #[error("replacing voter {dead} with {with} failed: {reason}")]
    ChangeFailed {
        /// The dead voter.
        dead: NodeId,
        /// The newcomer.
        with: NodeId,
        /// What failed.
        reason: String,
    },
    /// Taking a member out of the group failed.
    #[error("removing {node} from the group failed: {reason}")]
    RemoveFailed {
        /// The member.
        node: NodeId,
        /// What failed.
        reason: String,
    },
}

/// What [`remove_member`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// This node is not the group's leader; only the leader changes the membership.
    NotLeader,
    /// A membership change is already in progress; ask again.
    Busy,
    /// The member is the group's only voter: without it the group could decide nothing.
    LastVoter,
    /// The member was not (or is no longer) in the group.
    NotInGroup,
    /// The member is out: a voter's seat is given up (the leader fills it again as
    /// it fills any empty seat), a learner stops receiving the log.
    Removed,
}

/// Whether a member counts as alive at `now_ms` given when it was last heard of.
fn alive(last_seen_ms: Option<u64>, now_ms: u64, voter_dead_timeout_ms: u64) -> bool {
    last_seen_ms.is_some_and(|seen| now_ms.saturating_sub(seen) <= voter_dead_timeout_ms)
}

/// Picks the first voter (other than the leader) dead for longer than the timeout and
/// the first alive non-voter candidate, in id order (deterministic).
pub fn plan_replacement(
    leader: NodeId,
    voters: &BTreeSet<NodeId>,
    candidates: &BTreeMap<NodeId, MemberNode>,
    last_seen_ms: impl Fn(NodeId) -> Option<u64>,
    now_ms: u64,
    voter_dead_timeout_ms: u64,
) -> Result<Option<Replacement>, NodeId> {
    let Some(dead) = voters.iter().copied().find(|voter| {
        *voter != leader && !alive(last_seen_ms(*voter), now_ms, voter_dead_timeout_ms)
    }) else {
        return Ok(None);
    };
    candidates
        .keys()
        .copied()
        .find(|candidate| {
            !voters.contains(candidate)
                && alive(last_seen_ms(*candidate), now_ms, voter_dead_timeout_ms)
        })
        .map(|with| Some(Replacement { dead, with }))
        .ok_or(dead)
}

/// If this node leads `group` and a voter is dead, replaces it with a healthy candidate.
/// Makes at most one change per call; call it periodically.
pub async fn replace_dead_voter(
    group: &Group,
    candidates: &BTreeMap<NodeId, MemberNode>,
    last_seen_ms: impl Fn(NodeId) -> Option<u64>,
    now_ms: u64,
    voter_dead_timeout_ms: u64,
) -> Result<HealOutcome, HealError> {
    let metrics = group.raft().metrics().borrow().clone();
    if metrics.current_leader != Some(metrics.id) {
        return Ok(HealOutcome::NotLeader);
    }
    let membership = metrics.membership_config.membership();
    if membership.get_joint_config().len() > 1 {
        return Ok(HealOutcome::Busy);
    }
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let plan = plan_replacement(
        metrics.id,
        &voters,
        candidates,
        last_seen_ms,
        now_ms,
        voter_dead_timeout_ms,
    );
    let replacement = match plan {
        Ok(None) => return Ok(HealOutcome::Healthy),
        Err(dead) => return Ok(HealOutcome::NoCandidate { dead }),
        Ok(Some(replacement)) => replacement,
    };
    let Replacement { dead, with } = replacement;
    let failed = |reason: String| HealError::ChangeFailed { dead, with, reason };
    let node = candidates.get(&with).cloned().unwrap_or_default();
    tracing::info!(group = group.id(), dead, with, "replacing dead voter");
    let mut new_voters = voters;
    new_voters.remove(&dead);
    new_voters.insert(with);
    change_voters(group, [(with, node)], new_voters)
        .await
        .map_err(failed)?;
    Ok(HealOutcome::Replaced(replacement))
}

/// Takes `node` out of `group`, which this node leads: the way a member that leaves for
/// good gives up its seat while the group still has its quorum, rather than leaving it
/// to be replaced as dead (which needs a quorum of the others to be alive). One
/// membership change; returns once it is committed.
pub async fn remove_member(group: &Group, node: NodeId) -> Result<Removal, HealError> {
    let metrics = group.raft().metrics().borrow().clone();
    if metrics.current_leader != Some(metrics.id) {
        return Ok(Removal::NotLeader);
    }
    let membership = metrics.membership_config.membership();
    if membership.get_joint_config().len() > 1 {
        return Ok(Removal::Busy);
    }
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let change = if voters.contains(&node) {
        if voters.len() == 1 {
            return Ok(Removal::LastVoter);
        }
        openraft::ChangeMembers::RemoveVoters(BTreeSet::from([node]))
    } else if membership.get_node(&node).is_some() {
        openraft::ChangeMembers::RemoveNodes(BTreeSet::from([node]))
    } else {
        return Ok(Removal::NotInGroup);
    };
    tracing::info!(group = group.id(), node, "removing a member that leaves");
    change_membership(group, change)
        .await
        .map_err(|reason| HealError::RemoveFailed { node, reason })?;
    Ok(Removal::Removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(ids: &[NodeId]) -> BTreeMap<NodeId, MemberNode> {
        ids.iter().map(|id| (*id, MemberNode::default())).collect()
    }

    #[test]
    fn plans_follow_liveness_and_timeout() {
        let voters = BTreeSet::from([1, 2, 3]);
        let seen = |at: &'static [(NodeId, u64)]| {
            move |node: NodeId| at.iter().find(|(id, _)| *id == node).map(|(_, t)| *t)
        };
        // Everyone alive: nothing to do.
        assert_eq!(
            plan_replacement(
                1,
                &voters,
                &candidates(&[4]),
                seen(&[(1, 100), (2, 100), (3, 100), (4, 100)]),
                100,
                50
            ),
            Ok(None)
        );
        // Voter 3 last seen 51 ms ago with a 50 ms timeout: replaced by 4.
        assert_eq!(
            plan_replacement(
                1,
                &voters,
                &candidates(&[4, 5]),
                seen(&[(1, 100), (2, 100), (3, 49), (4, 100), (5, 100)]),
                100,
                50
            ),
            Ok(Some(Replacement { dead: 3, with: 4 }))
        );
        // Exactly at the timeout it is still alive.
        assert_eq!(
            plan_replacement(
                1,
                &voters,
                &candidates(&[4]),
                seen(&[(1, 100), (2, 100), (3, 50), (4, 100)]),
                100,
                50
            ),
            Ok(None)
        );
        // The dead candidate 4 is skipped; 5 is taken. Voters are never candidates.
        assert_eq!(
            plan_replacement(
                1,
                &voters,
                &candidates(&[2, 4, 5]),
                seen(&[(1, 100), (2, 100), (4, 0), (5, 90)]),
                100,
                50
            ),
            Ok(Some(Replacement { dead: 3, with: 5 }))
        );
        // No healthy candidate.
        assert_eq!(
            plan_replacement(
                1,
                &voters,
                &candidates(&[4]),
                seen(&[(1, 100), (2, 100)]),
                100,
                50
            ),
            Err(3)
        );
        // The leader never replaces itself, even if its own liveness is unknown.
        assert_eq!(
            plan_replacement(
                1,
                &voters,
                &candidates(&[4]),
                seen(&[(2, 100), (3, 100), (4, 100)]),
                100,
                50
            ),
            Ok(None)
        );
    }
}
