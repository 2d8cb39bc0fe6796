//! Who may send what to whom: the one place that decides, for every inbound Raft RPC
//! and work message, whether its sender is allowed to make it.
//!
//! Pure: the caller gathers what this node knows (its view of a Raft group, its Ledger
//! replica, the Registry's records) into plain values, and gets back `Ok` or a
//! [`Refusal`] whose [`Refusal::label`] is the metric label it is counted under
//! (`aamas_rpc_refused_total{reason}`).
//!
//! ```text
//!   inbound RPC / work message ──► runtime gathers a view ──► authority::* ──► Ok
//!                                                                        └──► Refusal ─► counted, answered
//! ```
//!
//! Raft itself is crash-fault tolerant: a group's voters are trusted to follow the
//! protocol. What is checked here is everyone else (see DESIGN.md, "Trust model").

use aamas_consensus::NodeId;
use aamas_protocol::NodeKey;

/// How far ahead of this node's term a Raft RPC may be. A candidate that keeps losing
/// elections raises its term by one per election timeout (openraft 0.9 has no pre-vote),
/// so an honest node is never a million terms ahead; a term near `u64::MAX`, once
/// persisted, would leave the group no higher term to elect a leader in.
pub const MAX_TERM_JUMP: u64 = 1 << 20;

/// Why a message or RPC was refused. Each variant is one metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The sender was never admitted, or has left.
    #[error("not a member of this mesh")]
    NonMember,
    /// The sender is not a voter or learner of the group, as this node knows it.
    #[error("the sender is not a member of raft group {group}")]
    NotInGroup {
        /// The group.
        group: u64,
    },
    /// An AppendEntries or InstallSnapshot whose vote names another node as leader.
    #[error("the request's vote names node {named:?} as leader, not its sender")]
    NotTheLeader {
        /// The leader the request names.
        named: Option<NodeId>,
    },
    /// A vote request whose vote names another node as candidate.
    #[error("the vote request names node {named:?} as candidate, not its sender")]
    NotTheCandidate {
        /// The candidate the request names.
        named: Option<NodeId>,
    },
    /// A term so far ahead that only a broken or hostile node sends it.
    #[error("term {term} is more than {MAX_TERM_JUMP} ahead of this node's term {current}")]
    TermTooFar {
        /// The term asked for.
        term: u64,
        /// This node's term in the group.
        current: u64,
    },
    /// A campaign request from a node that is not the group's leader.
    #[error("only the leader of group {group} may hand its leadership over")]
    NotHandingOver {
        /// The group.
        group: u64,
    },
    /// A governor report that no voter of the state's group confirms.
    #[error(
        "no voter of the state's group confirms that the reporter leads it in term {term}; \
         it is recorded once a voter sees it lead"
    )]
    GovernorUnconfirmed {
        /// The term the report claims.
        term: u64,
    },
    /// A governor report about another node.
    #[error("a governor reports only for itself")]
    NotForItself,
    /// An Execute from a node that does not hold the lease of the task's city.
    #[error("the sender is not the mayor of city {city}")]
    NotTheMayor {
        /// The city the Execute names.
        city: String,
    },
    /// An Execute of a task the state's Ledger did not assign to this worker in that
    /// attempt.
    #[error("the Ledger assigns attempt {attempt} of this task to another worker or attempt")]
    NotAssigned {
        /// The attempt the Execute names.
        attempt: u32,
    },
    /// A change of a project by a member that neither submitted it nor is the
    /// president's own operator.
    #[error(
        "only the member a project was submitted through, or the president's operator, may change it"
    )]
    NotProjectOwner,
    /// An Execute whose task spec does not decode or check.
    #[error("the task spec is invalid: {reason}")]
    BadSpec {
        /// What is wrong with it.
        reason: String,
    },
    /// An Execute of a task whose executor is off on this worker (`--executors`).
    #[error("{executor} tasks are off on this worker")]
    ExecutorOff {
        /// The task's executor.
        executor: &'static str,
    },
    /// A revocation of a join token by a member that neither issued it nor is the
    /// president's own operator.
    #[error("only the member that issued a join token, or the president's operator, may revoke it")]
    NotTokenIssuer,
    /// A mesh-wide change (an eviction, a policy) asked by anyone but the president's own
    /// operator.
    #[error("only the president's operator may {action}: run it on the president's node")]
    NotPresident {
        /// What was asked.
        action: &'static str,
    },
    /// An alert raised by a member that is neither a mayor nor a governor of record, or
    /// on behalf of another.
    #[error("only a mayor or governor of record raises alerts, and only its own")]
    NotAMonitor,
    /// A ResourceRequest carried by a member that does not govern its state.
    #[error("the sender is not the governor of state {state}")]
    NotTheGovernor {
        /// The state.
        state: String,
    },
    /// Work messages from a sender past the communication policy's rate.
    #[error(
        "over the communication policy's {per_sec} work messages per second; try again shortly"
    )]
    RateLimited {
        /// The rate in force.
        per_sec: u32,
    },
    /// An eviction of the president itself.
    #[error("the president cannot evict itself: stop it, and evict it from the next president")]
    EvictsPresident,
}

impl Refusal {
    /// The metric label the refusal is counted under.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::NonMember => "non_member",
            Refusal::NotInGroup { .. } => "not_in_group",
            Refusal::NotTheLeader { .. } => "not_the_leader",
            Refusal::NotTheCandidate { .. } => "not_the_candidate",
            Refusal::TermTooFar { .. } => "term_too_far",
            Refusal::NotHandingOver { .. } => "not_handing_over",
            Refusal::GovernorUnconfirmed { .. } => "governor_unconfirmed",
            Refusal::NotForItself => "not_for_itself",
            Refusal::NotTheMayor { .. } => "not_the_mayor",
            Refusal::NotAssigned { .. } => "not_assigned",
            Refusal::NotProjectOwner => "not_project_owner",
            Refusal::BadSpec { .. } => "bad_spec",
            Refusal::ExecutorOff { .. } => "executor_off",
            Refusal::NotTokenIssuer => "not_token_issuer",
            Refusal::NotPresident { .. } => "not_president",
            Refusal::EvictsPresident => "evicts_president",
            Refusal::NotAMonitor => "not_a_monitor",
            Refusal::NotTheGovernor { .. } => "not_the_governor",
            Refusal::RateLimited { .. } => "rate_limited",
        }
    }
}

/// Which Raft RPC arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaftRpc {
    /// AppendEntries: only the leader sends it.
    Append,
    /// InstallSnapshot: only the leader sends it.
    Snapshot,
    /// RequestVote: only the candidate sends it.
    Vote,
}

/// What a Raft RPC claims: the term of its vote and the node the vote is for (the
/// leader of an AppendEntries or InstallSnapshot, the candidate of a vote request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftClaim {
    /// Which RPC.
    pub rpc: RaftRpc,
    /// The term of the vote it carries.
    pub term: u64,
    /// The node that vote is for.
    pub named: Option<NodeId>,
}

/// This node's view of a Raft group, as far as the checks of one RPC need it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupView {
    /// The group's id.
    pub group: u64,
    /// This node's current term in it.
    pub term: u64,
    /// Whether the sender is a voter or learner of the latest membership this node has;
    /// `None` while it has none (a node the leader is adding right now learns the
    /// membership from the leader's first entries).
    pub sender_in_group: Option<bool>,
}

/// A Raft RPC from `sender`: only a member of the group (when this node knows the
/// group's members), only for itself (the leader it names, the candidate it names), and
/// never a term absurdly far ahead.
pub fn raft(sender: NodeId, claim: RaftClaim, view: &GroupView) -> Result<(), Refusal> {
    if view.sender_in_group == Some(false) {
        return Err(Refusal::NotInGroup { group: view.group });
    }
    if claim.named != Some(sender) {
        return Err(match claim.rpc {
            RaftRpc::Append | RaftRpc::Snapshot => Refusal::NotTheLeader { named: claim.named },
            RaftRpc::Vote => Refusal::NotTheCandidate { named: claim.named },
        });
    }
    if claim.term > view.term.saturating_add(MAX_TERM_JUMP) {
        return Err(Refusal::TermTooFar {
            term: claim.term,
            current: view.term,
        });
    }
    Ok(())
}

/// A request to start an election now: only from the group's leader as this node knows
/// it (a leader that is leaving hands over to a caught-up voter).
pub fn campaign(sender: NodeId, group: u64, leader: Option<NodeId>) -> Result<(), Refusal> {
    if leader == Some(sender) {
        Ok(())
    } else {
        Err(Refusal::NotHandingOver { group })
    }
}

/// What one voter of a state's group says about its leadership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderSeen {
    /// The voter that answered (or this node, when it is a member of the group).
    pub voter: NodeId,
    /// The leader it follows.
    pub leader: Option<NodeId>,
    /// Its term.
    pub term: u64,
}

/// A governor report: `reporter` sent it about `claimant` leading in `term`. Recorded
/// only for itself, and only when a member of the group other than the claimant sees it
/// lead in exactly that term (a voter that has not heard from it yet makes the governor
/// report again later).
pub fn governor(
    reporter: NodeId,
    claimant: NodeId,
    term: u64,
    seen: &[LeaderSeen],
) -> Result<(), Refusal> {
    if reporter != claimant {
        return Err(Refusal::NotForItself);
    }
    let confirmed = seen
        .iter()
        .any(|seen| seen.voter != claimant && seen.leader == Some(claimant) && seen.term == term);
    if confirmed {
        Ok(())
    } else {
        Err(Refusal::GovernorUnconfirmed { term })
    }
}

/// What a worker knows when an Execute arrives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecuteView {
    /// The mayor of the city as the Registry records it (the governor's report).
    pub mayor_of_record: Option<NodeKey>,
    /// When this node holds a replica of the state's Ledger: the lease holder of the
    /// city now, and the task's current attempt and worker.
    pub ledger: Option<LedgerSeen>,
}

/// A worker's own Ledger replica's view of an Execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerSeen {
    /// Who holds the city's lease now, if anyone.
    pub lease_holder: Option<NodeKey>,
    /// The task's current attempt and the worker it is assigned to, if it is known.
    pub assigned: Option<(u32, Option<NodeKey>)>,
}

/// An Execute of `attempt` of a task, from `sender` to `me` for `city`: only from the
/// city's mayor, and, where this node has the state's Ledger, only an attempt that
/// Ledger assigned to this node. A replica that has not yet seen the assignment falls
/// back to the Registry's mayor record.
pub fn execute(
    sender: NodeKey,
    me: NodeKey,
    city: &str,
    attempt: u32,
    view: &ExecuteView,
) -> Result<(), Refusal> {
    let mut mayor = view.mayor_of_record == Some(sender);
    if let Some(ledger) = view.ledger {
        mayor |= ledger.lease_holder == Some(sender);
        if let Some((current, worker)) = ledger.assigned
            && current >= attempt
            && (current != attempt || worker != Some(me))
        {
            return Err(Refusal::NotAssigned { attempt });
        }
    }
    if mayor {
        Ok(())
    } else {
        Err(Refusal::NotTheMayor {
            city: city.to_string(),
        })
    }
}

/// A change of a project (hold, resume, advance, archive) asked by `requester` of the
/// president `president`: from the president's own operator (its API), or from the
/// member the project was submitted through; a plain member cannot hold, skip or archive
/// another's project.
pub fn project_change(
    requester: NodeKey,
    president: NodeKey,
    owner: NodeKey,
) -> Result<(), Refusal> {
    if requester == president || requester == owner {
        Ok(())
    } else {
        Err(Refusal::NotProjectOwner)
    }
}

/// What [`evict`] refuses to others than the president's operator.
const EVICT: &str = "evict a member";

/// A change of the whole mesh (`action`, e.g. applying a policy) asked by `requester` of
/// the president `president`: only from the president's own operator.
pub fn president_only(
    requester: NodeKey,
    president: NodeKey,
    action: &'static str,
) -> Result<(), Refusal> {
    if requester == president {
        Ok(())
    } else {
        Err(Refusal::NotPresident { action })
    }
}

/// A revocation of a join token issued by `issuer`, asked by `requester` of the
/// president `president`: from the token's issuer (whose operator handed it out), or
/// from the president's own operator.
pub fn revoke_token(
    requester: NodeKey,
    president: NodeKey,
    issuer: NodeKey,
) -> Result<(), Refusal> {
    if requester == president || requester == issuer {
        Ok(())
    } else {
        Err(Refusal::NotTokenIssuer)
    }
}

/// An eviction of `target` asked by `requester` of the president `president`: only
/// from the president's own operator (a member cannot throw another out), and never of
/// the president itself, which would leave the mesh without a leader to commit it.
pub fn evict(requester: NodeKey, president: NodeKey, target: NodeKey) -> Result<(), Refusal> {
    president_only(requester, president, EVICT)?;
    if target == president {
        return Err(Refusal::EvictsPresident);
    }
    Ok(())
}

/// A PerformanceAlert `sender` asks the president `president` to record, saying
/// `raised_by` raised it: only its own, and only from a mayor or governor of record
/// (`monitors`: the Registry's records name the sender) or the president itself.
pub fn alert(
    sender: NodeKey,
    president: NodeKey,
    raised_by: NodeKey,
    monitors: bool,
) -> Result<(), Refusal> {
    if sender == raised_by && (monitors || sender == president) {
        Ok(())
    } else {
        Err(Refusal::NotAMonitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::BTreeSet;

    /// The view of `sender`'s RPC by a node with `members` (none: no membership yet).
    fn view(term: u64, members: &[NodeId], sender: NodeId) -> GroupView {
        GroupView {
            group: 7,
            term,
            sender_in_group: (!members.is_empty()).then(|| members.contains(&sender)),
        }
    }

    fn claim(rpc: RaftRpc, term: u64, named: Option<NodeId>) -> RaftClaim {
        RaftClaim { rpc, term, named }
    }

    #[test]
    fn raft_rpcs_come_only_from_members_for_themselves() {
        let members = |sender| view(3, &[1, 2, 3], sender);
        assert_eq!(
            raft(2, claim(RaftRpc::Append, 3, Some(2)), &members(2)),
            Ok(())
        );
        assert_eq!(
            raft(2, claim(RaftRpc::Vote, 4, Some(2)), &members(2)),
            Ok(())
        );
        assert_eq!(
            raft(9, claim(RaftRpc::Append, 3, Some(9)), &members(9)),
            Err(Refusal::NotInGroup { group: 7 })
        );
        assert_eq!(
            raft(2, claim(RaftRpc::Snapshot, 3, Some(1)), &members(2)),
            Err(Refusal::NotTheLeader { named: Some(1) })
        );
        assert_eq!(
            raft(2, claim(RaftRpc::Vote, 4, Some(3)), &members(2)),
            Err(Refusal::NotTheCandidate { named: Some(3) })
        );
        assert_eq!(
            raft(2, claim(RaftRpc::Vote, 4, None), &members(2)),
            Err(Refusal::NotTheCandidate { named: None })
        );
    }

    #[test]
    fn a_node_without_a_membership_takes_its_first_entries_from_their_leader() {
        let fresh = view(0, &[], 5);
        assert_eq!(raft(5, claim(RaftRpc::Append, 2, Some(5)), &fresh), Ok(()));
        assert_eq!(
            raft(5, claim(RaftRpc::Append, 2, Some(6)), &fresh),
            Err(Refusal::NotTheLeader { named: Some(6) })
        );
    }

    #[test]
    fn terms_absurdly_far_ahead_are_refused() {
        let members = view(10, &[1, 2], 1);
        let edge = 10 + MAX_TERM_JUMP;
        assert_eq!(
            raft(1, claim(RaftRpc::Vote, edge, Some(1)), &members),
            Ok(())
        );
        assert_eq!(
            raft(1, claim(RaftRpc::Vote, edge + 1, Some(1)), &members),
            Err(Refusal::TermTooFar {
                term: edge + 1,
                current: 10
            })
        );
        assert_eq!(
            raft(
                1,
                claim(RaftRpc::Append, u64::MAX, Some(1)),
                &view(u64::MAX - 1, &[1], 1)
            ),
            Ok(()),
            "no overflow at the top of the range"
        );
    }

    #[test]
    fn only_the_leader_hands_over() {
        assert_eq!(campaign(1, 3, Some(1)), Ok(()));
        assert_eq!(
            campaign(2, 3, Some(1)),
            Err(Refusal::NotHandingOver { group: 3 })
        );
        assert_eq!(
            campaign(2, 3, None),
            Err(Refusal::NotHandingOver { group: 3 })
        );
    }

    #[test]
    fn a_governor_is_recorded_only_when_another_member_sees_it_lead_in_its_term() {
        let seen = |voter, leader, term| LeaderSeen {
            voter,
            leader: Some(leader),
            term,
        };
        assert_eq!(governor(1, 1, 5, &[seen(2, 1, 5)]), Ok(()));
        assert_eq!(
            governor(2, 1, 5, &[seen(3, 1, 5)]),
            Err(Refusal::NotForItself)
        );
        // Its own word does not count.
        assert_eq!(
            governor(1, 1, 5, &[seen(1, 1, 5)]),
            Err(Refusal::GovernorUnconfirmed { term: 5 })
        );
        // Another leader, or the right leader in another term.
        assert_eq!(
            governor(1, 1, 5, &[seen(2, 3, 5), seen(3, 1, 4)]),
            Err(Refusal::GovernorUnconfirmed { term: 5 })
        );
        assert_eq!(
            governor(1, 1, 5, &[]),
            Err(Refusal::GovernorUnconfirmed { term: 5 })
        );
    }

    fn key(n: u8) -> NodeKey {
        NodeKey([n; 32])
    }

    #[test]
    fn an_execute_comes_from_the_mayor_of_record_or_of_the_ledger() {
        let (mayor, me, other) = (key(1), key(2), key(3));
        let record = ExecuteView {
            mayor_of_record: Some(mayor),
            ledger: None,
        };
        assert_eq!(execute(mayor, me, "c", 1, &record), Ok(()));
        assert_eq!(
            execute(other, me, "c", 1, &record),
            Err(Refusal::NotTheMayor { city: "c".into() })
        );
        assert_eq!(
            execute(mayor, me, "c", 1, &ExecuteView::default()),
            Err(Refusal::NotTheMayor { city: "c".into() })
        );
        // A new mayor the Registry does not name yet, seen in this worker's Ledger.
        let ledger = ExecuteView {
            mayor_of_record: Some(other),
            ledger: Some(LedgerSeen {
                lease_holder: Some(mayor),
                assigned: Some((1, Some(me))),
            }),
        };
        assert_eq!(execute(mayor, me, "c", 1, &ledger), Ok(()));
    }

    #[test]
    fn an_execute_of_an_attempt_the_ledger_gave_elsewhere_is_refused() {
        let (mayor, me, other) = (key(1), key(2), key(3));
        let with = |assigned| ExecuteView {
            mayor_of_record: Some(mayor),
            ledger: Some(LedgerSeen {
                lease_holder: Some(mayor),
                assigned,
            }),
        };
        assert_eq!(
            execute(mayor, me, "c", 2, &with(Some((2, Some(other))))),
            Err(Refusal::NotAssigned { attempt: 2 })
        );
        // A stale attempt: the task has moved on.
        assert_eq!(
            execute(mayor, me, "c", 1, &with(Some((2, Some(me))))),
            Err(Refusal::NotAssigned { attempt: 1 })
        );
        // The replica is behind (attempt 3 not seen yet): the mayor of record decides.
        assert_eq!(
            execute(mayor, me, "c", 3, &with(Some((2, Some(other))))),
            Ok(())
        );
        // The task is unknown to the replica yet.
        assert_eq!(execute(mayor, me, "c", 1, &with(None)), Ok(()));
    }

    #[test]
    fn a_project_is_changed_by_its_owner_or_the_presidents_operator() {
        let (president, owner, other) = (key(1), key(2), key(3));
        assert_eq!(project_change(owner, president, owner), Ok(()));
        assert_eq!(project_change(president, president, owner), Ok(()));
        assert_eq!(
            project_change(other, president, owner),
            Err(Refusal::NotProjectOwner)
        );
    }

    #[test]
    fn tokens_are_revoked_by_their_issuer_or_the_president_and_members_evicted_by_the_president() {
        let (president, issuer, other) = (key(1), key(2), key(3));
        assert_eq!(revoke_token(issuer, president, issuer), Ok(()));
        assert_eq!(revoke_token(president, president, issuer), Ok(()));
        assert_eq!(
            revoke_token(other, president, issuer),
            Err(Refusal::NotTokenIssuer)
        );
        assert_eq!(evict(president, president, other), Ok(()));
        let not_president = Err(Refusal::NotPresident { action: EVICT });
        assert_eq!(evict(issuer, president, other), not_president);
        assert_eq!(evict(other, president, other), not_president);
        assert_eq!(president_only(president, president, "x"), Ok(()));
        assert_eq!(
            evict(president, president, president),
            Err(Refusal::EvictsPresident)
        );
    }

    #[test]
    fn alerts_come_from_mayors_governors_or_the_president_and_only_their_own() {
        let (president, mayor, other) = (key(1), key(2), key(3));
        assert_eq!(alert(mayor, president, mayor, true), Ok(()));
        assert_eq!(alert(president, president, president, false), Ok(()));
        assert_eq!(
            alert(other, president, other, false),
            Err(Refusal::NotAMonitor)
        );
        assert_eq!(
            alert(mayor, president, other, true),
            Err(Refusal::NotAMonitor)
        );
    }

    #[test]
    fn every_refusal_has_its_own_label() {
        let all = [
            Refusal::NonMember,
            Refusal::NotInGroup { group: 0 },
            Refusal::NotTheLeader { named: None },
            Refusal::NotTheCandidate { named: None },
            Refusal::TermTooFar {
                term: 0,
                current: 0,
            },
            Refusal::NotHandingOver { group: 0 },
            Refusal::GovernorUnconfirmed { term: 0 },
            Refusal::NotForItself,
            Refusal::NotTheMayor {
                city: String::new(),
            },
            Refusal::NotAssigned { attempt: 0 },
            Refusal::NotProjectOwner,
            Refusal::BadSpec {
                reason: String::new(),
            },
            Refusal::ExecutorOff { executor: "shell" },
            Refusal::NotTokenIssuer,
            Refusal::NotPresident { action: EVICT },
            Refusal::EvictsPresident,
            Refusal::NotAMonitor,
        ];
        let labels: BTreeSet<&str> = all.iter().map(Refusal::label).collect();
        assert_eq!(labels.len(), all.len());
    }
}
