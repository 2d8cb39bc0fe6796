//! Raft groups of several nodes in one process, on real RocksDB in temp dirs, over the
//! in-memory router: election, replication, failover without loss, recovery from disk,
//! catch-up by snapshot, self-healing membership, and many groups at once.

mod common;

use std::collections::BTreeMap;

use aamas_consensus::{
    Catchup, CatchupLimits, FEDERAL_GROUP, HealOutcome, MemberNode, Mirror, NodeId, RaftConfig,
    Removal, Store, StoreConfig, remove_member, replace_dead_voter,
};
use common::*;

const G: u64 = FEDERAL_GROUP;

async fn elect_and_replicate(n: u64) {
    let cluster = Cluster::start(n, fast_config()).await;
    let members = cluster.ids();
    cluster.create_group(G, &members).await;
    let leader = cluster.leader(G, &members).await;
    let mut last_index = 0;
    for i in 0..20u128 {
        let committed = cluster
            .write(G, &members, add_state(i, &format!("s{i}")))
            .await;
        assert!(!committed.response.duplicate);
        last_index = committed.index;
    }
    let expected: Vec<String> = {
        let mut names: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
        names.sort();
        names
    };
    for id in &members {
        let group = cluster.group(*id, G);
        assert!(
            group.wait_applied(last_index, WAIT).await,
            "node {id} did not apply {last_index}"
        );
        assert_eq!(state_names(&group).await, expected, "node {id}");
    }
    // A linearizable read at the leader sees every acknowledged write.
    let states = cluster
        .group(leader, G)
        .read(|machine| machine.registry().map(|r| r.states().len()))
        .await
        .expect("read at leader");
    assert_eq!(states, Some(20));
    // A follower refuses a linearizable read and names the leader.
    let follower = members
        .iter()
        .copied()
        .find(|id| *id != leader)
        .expect("a follower");
    match cluster.group(follower, G).read(|_| ()).await {
        Err(aamas_consensus::ReadError::NotLeader {
            leader: Some(named),
        }) => assert_eq!(named, leader),
        other => panic!("follower read gave {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_voter_group_elects_a_leader_and_replicates() {
    elect_and_replicate(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_voter_group_elects_a_leader_and_replicates() {
    elect_and_replicate(5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_elects_another_and_loses_nothing_acknowledged() {
    let mut cluster = Cluster::start(3, fast_config()).await;
    let members = cluster.ids();
    cluster.create_group(G, &members).await;
    for i in 0..30u128 {
        cluster
            .write(G, &members, add_state(i, &format!("before-{i}")))
            .await;
    }
    let old_leader = cluster.leader(G, &members).await;
    let old_term = cluster.group(old_leader, G).term();
    cluster.stop_node(old_leader).await;
    let survivors: Vec<NodeId> = members
        .iter()
        .copied()
        .filter(|id| *id != old_leader)
        .collect();
    let new_leader = cluster.leader(G, &survivors).await;
    assert_ne!(new_leader, old_leader);
    assert!(cluster.group(new_leader, G).term() > old_term);
    for i in 0..10u128 {
        cluster
            .write(G, &survivors, add_state(100 + i, &format!("after-{i}")))
            .await;
    }
    let names = cluster
        .group(new_leader, G)
        .read(|machine| machine.registry().map(|r| r.states().len()))
        .await
        .expect("read");
    assert_eq!(
        names,
        Some(40),
        "every acknowledged write survives the failover"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_every_member_and_reopening_recovers_the_committed_state() {
    let mut cluster = Cluster::start(3, fast_config()).await;
    let members = cluster.ids();
    cluster.create_group(G, &members).await;
    for i in 0..25u128 {
        cluster
            .write(G, &members, add_state(i, &format!("s{i:02}")))
            .await;
    }
    let leader = cluster.leader(G, &members).await;
    let committed = state_names(&cluster.group(leader, G)).await;
    assert_eq!(committed.len(), 25);
    for id in &members {
        cluster.stop_node(*id).await;
    }
    for id in &members {
        cluster.start_node(*id).await;
        cluster.node(*id).open(G).await.expect("reopen group");
    }
    // A new write commits in the new term, so every member has applied everything before it.
    let index = cluster
        .write(G, &members, add_state(1000, "after-restart"))
        .await
        .index;
    let mut expected = committed.clone();
    expected.push("after-restart".into());
    expected.sort();
    for id in &members {
        let group = cluster.group(*id, G);
        assert!(group.wait_applied(index, WAIT).await);
        assert_eq!(
            state_names(&group).await,
            expected,
            "node {id} after restart"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_member_is_caught_up_by_snapshot() {
    let config = RaftConfig {
        snapshot_after_entries: 10,
        log_entries_kept_after_snapshot: 0,
        ..fast_config()
    };
    let mut cluster = Cluster::start(3, config).await;
    let members = cluster.ids();
    cluster.create_group(G, &members).await;
    cluster.write(G, &members, add_state(0, "s-first")).await;
    let leader = cluster.leader(G, &members).await;
    let lagging = members
        .iter()
        .copied()
        .find(|id| *id != leader)
        .expect("follower");
    cluster.stop_node(lagging).await;
    let up: Vec<NodeId> = members
        .iter()
        .copied()
        .filter(|id| *id != lagging)
        .collect();
    let mut index = 0;
    for i in 1..60u128 {
        index = cluster
            .write(G, &up, add_state(i, &format!("s{i:02}")))
            .await
            .index;
    }

    // The leader has compacted its log past what the lagging member has.
    let leader_group = cluster.group(leader, G);
    let purged = leader_group
        .raft()
        .wait(Some(WAIT))
        .metrics(|m| m.purged.is_some_and(|p| p.index > 5), "log purged")
        .await
        .expect("leader purges its log after snapshots");
    cluster.start_node(lagging).await;
    let group = cluster.node(lagging).open(G).await.expect("reopen");
    assert!(
        group.wait_applied(index, WAIT).await,
        "lagging member caught up"
    );
    let snapshot = group.raft().metrics().borrow().snapshot;
    assert!(
        snapshot.is_some_and(|s| s.index >= purged.purged.map_or(0, |p| p.index)),
        "it was caught up by installing a snapshot: {snapshot:?}"
    );
    assert_eq!(state_names(&group).await, state_names(&leader_group).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_voter_is_replaced_by_the_healing_helper() {
    let mut cluster = Cluster::start(4, fast_config()).await;
    let voters = [1, 2, 3];
    for id in 1..=4 {
        cluster.node(id).open(G).await.expect("open");
    }
    cluster.create_group(G, &voters).await;
    cluster.write(G, &voters, add_state(1, "before")).await;
    let leader = cluster.leader(G, &voters).await;
    let dead = voters
        .iter()
        .copied()
        .find(|id| *id != leader)
        .expect("a follower");
    cluster.stop_node(dead).await;

    // Liveness as node/ would report it: running nodes were seen now, the dead one 10 s ago.
    let now_ms = 1_000_000;
    let router = cluster.router.clone();
    let last_seen = move |node: NodeId| {
        Some(if router.is_up(node) {
            now_ms
        } else {
            now_ms - 10_000
        })
    };
    let candidates: BTreeMap<NodeId, MemberNode> =
        (1..=4).map(|id| (id, MemberNode::default())).collect();
    let outcome = replace_dead_voter(
        &cluster.group(leader, G),
        &candidates,
        last_seen,
        now_ms,
        5_000,
    )
    .await
    .expect("heal");
    assert_eq!(
        outcome,
        HealOutcome::Replaced(aamas_consensus::Replacement { dead, with: 4 })
    );
    let new_voters: Vec<NodeId> = voters
        .iter()
        .copied()
        .filter(|id| *id != dead)
        .chain([4])
        .collect();
    let voter_set: std::collections::BTreeSet<NodeId> = cluster
        .group(leader, G)
        .raft()
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect();
    assert_eq!(voter_set, new_voters.iter().copied().collect());
    // The healed group commits with the newcomer and tolerates one more failure.
    let index = cluster
        .write(G, &new_voters, add_state(2, "after"))
        .await
        .index;
    assert!(cluster.group(4, G).wait_applied(index, WAIT).await);
    assert_eq!(
        state_names(&cluster.group(4, G)).await,
        vec!["after".to_string(), "before".to_string()]
    );
    // Running it again finds nothing to do.
    let router = cluster.router.clone();
    let last_seen = move |node: NodeId| Some(if router.is_up(node) { now_ms } else { 0 });
    let again = replace_dead_voter(
        &cluster.group(leader, G),
        &candidates,
        last_seen,
        now_ms,
        5_000,
    )
    .await
    .expect("heal");
    assert_eq!(again, HealOutcome::Healthy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_member_gives_up_its_seat_while_the_group_keeps_its_quorum() {
    let cluster = Cluster::start(4, fast_config()).await;
    let voters = [1, 2, 3];
    for id in 1..=4 {
        cluster.node(id).open(G).await.expect("open");
    }
    cluster.create_group(G, &voters).await;
    let leader = cluster.leader(G, &voters).await;
    let group = cluster.group(leader, G);
    group
        .raft()
        .add_learner(4, MemberNode::default(), true)
        .await
        .expect("learner");
    let voter_set =
        |id: NodeId| -> std::collections::BTreeSet<NodeId> { cluster.group(id, G).voters() };
    let followers: Vec<NodeId> = voters.iter().copied().filter(|id| *id != leader).collect();

    // Only the leader changes the membership.
    assert_eq!(
        remove_member(&cluster.group(followers[0], G), followers[1])
            .await
            .expect("remove"),
        Removal::NotLeader
    );
    // A follower leaves: two voters remain and still commit.
    assert_eq!(removal(&group, followers[0]).await, Removal::Removed);
    assert_eq!(voter_set(leader), [leader, followers[1]].into());
    cluster
        .write(G, &[leader, followers[1]], add_state(1, "after one left"))
        .await;
    // A learner leaves.
    assert_eq!(removal(&group, 4).await, Removal::Removed);
    let nodes: Vec<NodeId> = group
        .raft()
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .nodes()
        .map(|(id, _)| *id)
        .collect();
    assert!(
        !nodes.contains(&4) && !nodes.contains(&followers[0]),
        "{nodes:?}"
    );
    // Removing again is no change.
    assert_eq!(removal(&group, 4).await, Removal::NotInGroup);
    // The second follower leaves; the leader alone is the last voter and stays.
    assert_eq!(removal(&group, followers[1]).await, Removal::Removed);
    assert_eq!(removal(&group, leader).await, Removal::LastVoter);
    cluster.write(G, &[leader], add_state(2, "alone")).await;
}

/// `remove_member` once the group's last membership change shows as finished: the
/// metrics a removal reads may still show the joint configuration of the one before
/// for a moment (`Busy`, which a caller tries again), until [`WAIT`] passes.
async fn removal(group: &aamas_consensus::Group, node: NodeId) -> Removal {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let removal = remove_member(group, node).await.expect("remove");
        if removal != Removal::Busy || tokio::time::Instant::now() >= deadline {
            return removal;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Polls `condition` until it holds or [`WAIT`] passes; whether it held.
async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    condition()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_learner_stops_hearing_a_leader_though_it_still_names_one() {
    let cluster = Cluster::start(3, fast_config()).await;
    for id in 1..=3 {
        cluster.node(id).open(G).await.expect("open");
    }
    cluster.create_group(G, &[1, 2]).await;
    let leader = cluster.leader(G, &[1, 2]).await;
    let follower = if leader == 1 { 2 } else { 1 };
    // A committed write first: the founding membership must be committed before a
    // membership change (openraft refuses one while another is in progress).
    cluster.write(G, &[1, 2], add_state(0, "before")).await;
    cluster
        .group(leader, G)
        .raft()
        .add_learner(3, MemberNode::default(), true)
        .await
        .expect("learner");
    let learner = cluster.group(3, G);
    assert!(
        eventually(|| learner.hears_a_leader()).await,
        "the learner never heard the leader"
    );
    assert!(
        cluster.group(leader, G).hears_a_leader(),
        "a leader hears itself"
    );

    // The leader stops replicating to a removed learner, which is not told so.
    assert_eq!(
        remove_member(&cluster.group(leader, G), 3)
            .await
            .expect("remove"),
        Removal::Removed
    );
    cluster.write(G, &[1, 2], add_state(1, "after")).await;
    assert!(
        eventually(|| !learner.hears_a_leader()).await,
        "a removed learner still counts as hearing a leader"
    );
    assert_eq!(
        learner.leader(),
        Some(leader),
        "it still names the old leader"
    );
    // The voters go on hearing each other.
    assert!(cluster.group(follower, G).hears_a_leader());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_names_its_newer_vote_to_a_leader_of_an_older_term_only() {
    let cluster = Cluster::start(3, fast_config()).await;
    let members = cluster.ids();
    cluster.create_group(G, &members).await;
    let leader = cluster.leader(G, &members).await;
    cluster.write(G, &members, add_state(0, "s0")).await;
    let follower = members
        .iter()
        .copied()
        .find(|id| *id != leader)
        .expect("a follower");
    let group = cluster.group(follower, G);
    let vote = group.raft().metrics().borrow().vote;
    let term = vote.leader_id().term;
    assert!(term >= 1, "a leader was elected");
    // A leader of an older term (one cut off and replaced, say) is told the newer vote;
    // the leader of this term, or of a later one, is not.
    let older = openraft::Vote::new_committed(term - 1, leader);
    assert_eq!(group.newer_vote(&older), Some(vote));
    assert_eq!(group.newer_vote(&vote), None);
    let later = openraft::Vote::new_committed(term + 1, follower);
    assert_eq!(group.newer_vote(&later), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_groups_run_in_one_process() {
    let config = RaftConfig {
        // 50 groups × 3 members share two cores: slower heartbeats keep elections calm.
        heartbeat_interval_ms: 100,
        election_timeout_min_ms: 400,
        election_timeout_max_ms: 800,
        ..fast_config()
    };
    let cluster = Cluster::start(3, config).await;
    let members = cluster.ids();
    for group in 0..50u64 {
        cluster.create_group(group, &members).await;
    }
    for group in 0..50u64 {
        let request = if group == G {
            add_state(7, "federal")
        } else {
            add_city(7, &format!("city-of-{group}"))
        };
        let committed = cluster.write(group, &members, request).await;
        assert!(!committed.response.duplicate, "group {group}");
    }
    for group in 1..50u64 {
        let leader = cluster.leader(group, &members).await;
        let cities = cluster
            .group(leader, group)
            .read(|machine| {
                machine
                    .ledger()
                    .map(|l| l.cities().keys().cloned().collect::<Vec<_>>())
            })
            .await
            .expect("read");
        assert_eq!(
            cities,
            Some(vec![format!("city-of-{group}")]),
            "group {group}"
        );
    }
}

/// Catches `mirror` up from `relay` until the relay has nothing newer; returns how many
/// answers that took and whether one of them was a snapshot.
async fn follow(
    mirror: &Mirror,
    relay: &aamas_consensus::Group,
    limits: CatchupLimits,
) -> (usize, bool) {
    let mut answers = 0;
    let mut snapshot = false;
    loop {
        let after = mirror.applied().await;
        let answer = relay.catch_up(after, limits).await.expect("catch-up");
        if matches!(answer, Catchup::UpToDate) {
            return (answers, snapshot);
        }
        snapshot |= matches!(answer, Catchup::Snapshot { .. });
        assert!(mirror.take(answer).await.expect("take") > 0);
        answers += 1;
        assert!(answers < 100, "the mirror never caught up");
    }
}

async fn mirrored_names(mirror: &Mirror) -> Vec<String> {
    mirror
        .read(|machine| {
            machine
                .registry()
                .map(|registry| registry.states().keys().cloned().collect())
                .unwrap_or_default()
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_follows_a_group_from_any_member_by_entries_and_by_snapshot() {
    let config = RaftConfig {
        snapshot_after_entries: 10,
        log_entries_kept_after_snapshot: 0,
        ..fast_config()
    };
    let cluster = Cluster::start(3, config).await;
    let members = cluster.ids();
    cluster.create_group(G, &members).await;
    let mut index = 0;
    for i in 0..6u128 {
        index = cluster
            .write(G, &members, add_state(i, &format!("s{i:02}")))
            .await
            .index;
    }
    for id in &members {
        assert!(cluster.group(*id, G).wait_applied(index, WAIT).await);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), StoreConfig::default()).expect("store");
    let mirror = Mirror::open(&store, G).await.expect("mirror");
    assert_eq!(mirror.applied_index(), None);

    // Small answers: entries, a few at a time, from the first member.
    let small = CatchupLimits {
        max_entries: 3,
        max_bytes: 1 << 20,
    };
    let first = cluster.group(members[0], G);
    let (answers, _) = follow(&mirror, &first, small).await;
    assert!(
        answers >= 2,
        "several answers of at most 3 entries ({answers})"
    );
    assert_eq!(mirrored_names(&mirror).await, state_names(&first).await);
    assert_eq!(mirror.applied_index(), first.applied_index());
    assert_eq!(
        mirror.membership().await.membership().voter_ids().count(),
        members.len(),
        "the mirror knows the group's members"
    );
    // What it applied from entries is in memory until it is written out; then a
    // reopened mirror starts from it.
    let never = std::time::Duration::from_secs(3_600);
    assert!(
        !mirror
            .save_if_due(false, u64::MAX, never)
            .await
            .expect("save")
    );
    assert!(
        mirror
            .save_if_due(true, u64::MAX, never)
            .await
            .expect("save")
    );
    assert!(
        !mirror
            .save_if_due(true, u64::MAX, never)
            .await
            .expect("save"),
        "nothing new"
    );
    let reopened = Mirror::open(&store, G).await.expect("reopen");
    assert_eq!(reopened.applied_index(), mirror.applied_index());
    assert_eq!(
        mirrored_names(&reopened).await,
        mirrored_names(&mirror).await
    );
    drop(reopened);

    // The group compacts its log; the mirror, behind, gets a snapshot from another member.
    for i in 6..40u128 {
        index = cluster
            .write(G, &members, add_state(i, &format!("s{i:02}")))
            .await
            .index;
    }
    let other = cluster.group(members[2], G);
    assert!(other.wait_applied(index, WAIT).await);
    other
        .raft()
        .wait(Some(WAIT))
        .metrics(|m| m.purged.is_some_and(|p| p.index > 8), "log purged")
        .await
        .expect("the member purges its log after snapshots");
    let (_, snapshot) = follow(&mirror, &other, small).await;
    assert!(snapshot, "the purged entries came as a snapshot");
    assert_eq!(mirrored_names(&mirror).await, state_names(&other).await);
    assert_eq!(mirror.applied_index(), Some(index));

    // Entries that do not continue its log are refused, and change nothing.
    let stale = first
        .catch_up(
            None,
            CatchupLimits {
                max_entries: 1_000,
                max_bytes: 1 << 20,
            },
        )
        .await
        .expect("catch-up from nothing");
    if let Catchup::Entries(entries) = stale {
        assert!(matches!(
            mirror.take(Catchup::Entries(entries)).await,
            Err(aamas_consensus::MirrorError::Gap { .. })
        ));
    }
    assert_eq!(mirror.applied_index(), Some(index));

    // A snapshot larger than an answer may carry is refused with a reason.
    let tiny = CatchupLimits {
        max_entries: 1,
        max_bytes: 16,
    };
    let empty = Mirror::open(&store, aamas_consensus::FEDERAL_GROUP ^ 1)
        .await
        .expect("second mirror");
    assert!(matches!(
        other.catch_up(empty.applied().await, tiny).await,
        Err(aamas_consensus::CatchupError::TooLarge { .. })
    ));

    // Reopened, the mirror starts from the snapshot it took.
    drop(mirror);
    let reopened = Mirror::open(&store, G).await.expect("reopen");
    assert!(reopened.applied_index().is_some());
    let (_, _) = follow(&reopened, &other, small).await;
    assert_eq!(mirrored_names(&reopened).await, state_names(&other).await);

    // The leader relays name: a later term wins, an older one and none are ignored.
    reopened.note_leader(2, Some(5));
    reopened.note_leader(9, None);
    assert_eq!(reopened.leader(), (Some(5), 2), "no leader is no news");
    reopened.note_leader(1, Some(7));
    assert_eq!(reopened.leader(), (Some(5), 2), "an older term is ignored");
    reopened.note_leader(3, Some(6));
    assert_eq!(reopened.leader(), (Some(6), 3));
}
