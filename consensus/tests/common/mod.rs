//! A cluster of nodes in one process: one real RocksDB per node in a temp dir, many
//! Raft groups per node, connected by the in-memory router.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use aamas_consensus::registry::RegistryCommand;
use aamas_consensus::testing::{MemRouter, MemTransport};
use aamas_consensus::{
    Command, Committed, Group, GroupId, Groups, MemberNode, NodeId, RaftConfig, Request, Store,
    StoreConfig, WriteError,
};
use tempfile::TempDir;

/// Bound on every wait in these tests: generous, so that a slow CI machine does not fail
/// them; a healthy run takes a fraction of it.
pub const WAIT: Duration = Duration::from_secs(30);

pub struct Cluster {
    pub router: MemRouter,
    pub config: RaftConfig,
    pub store_config: StoreConfig,
    dirs: BTreeMap<NodeId, TempDir>,
    nodes: BTreeMap<NodeId, Groups<MemTransport>>,
    closes: BTreeMap<NodeId, aamas_consensus::CloseWatch>,
}

impl Cluster {
    /// Nodes `1..=n`, started, with no groups yet.
    pub async fn start(n: u64, config: RaftConfig) -> Self {
        let mut cluster = Self {
            router: MemRouter::new(),
            config,
            store_config: StoreConfig::default(),
            dirs: BTreeMap::new(),
            nodes: BTreeMap::new(),
            closes: BTreeMap::new(),
        };
        for id in 1..=n {
            cluster
                .dirs
                .insert(id, tempfile::tempdir().expect("tempdir"));
            cluster.start_node(id).await;
        }
        cluster
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// Starts (or restarts) node `id` from its data dir, reopening the groups it had.
    pub async fn start_node(&mut self, id: NodeId) {
        let dir = self
            .dirs
            .entry(id)
            .or_insert_with(|| tempfile::tempdir().expect("tempdir"));
        let store = Store::open(dir.path(), self.store_config.clone()).expect("open store");
        self.closes.insert(id, store.watch_close());
        let groups =
            Groups::new(id, store, &self.config, self.router.transport(id)).expect("groups");
        self.router.register(id, groups.clone());
        self.nodes.insert(id, groups);
    }

    /// Stops node `id` as a crash would for its peers: it vanishes from the network, and
    /// its groups stop. Its data dir stays.
    pub async fn stop_node(&mut self, id: NodeId) {
        self.router.unregister(id);
        if let Some(groups) = self.nodes.remove(&id) {
            groups.shutdown().await;
        }
        // Replication tasks let go of the database a moment after the shutdown (one
        // may be in a backoff); a restart must wait for its lock.
        if let Some(closing) = self.closes.remove(&id) {
            assert!(
                closing.closed(std::time::Duration::from_secs(10)).await,
                "node {id}'s database is still open 10 s after it stopped"
            );
        }
    }

    pub fn node(&self, id: NodeId) -> &Groups<MemTransport> {
        &self.nodes[&id]
    }

    pub fn group(&self, id: NodeId, group: GroupId) -> Group {
        self.node(id).get(group).expect("group open on node")
    }

    /// Opens `group` on `members` and founds it with all of them as voters.
    pub async fn create_group(&self, group: GroupId, members: &[NodeId]) {
        for id in members {
            self.node(*id).open(group).await.expect("open group");
        }
        let voters: BTreeMap<NodeId, MemberNode> = members
            .iter()
            .map(|id| {
                (
                    *id,
                    MemberNode {
                        peer_id: format!("node-{id}"),
                        addrs: vec![],
                    },
                )
            })
            .collect();
        self.node(members[0])
            .initialize(group, voters)
            .await
            .expect("initialize");
    }

    /// Waits until every running node in `members` names the same leader, which is one of
    /// them; returns it.
    pub async fn leader(&self, group: GroupId, members: &[NodeId]) -> NodeId {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut seen = Vec::new();
            for id in members {
                let open = self.group(*id, group);
                // Wait on the member's own metrics, not on a timer.
                seen.push(open.wait_leader(WAIT).await);
            }
            // Agreement: every member names the same leader, one of them, and that leader
            // knows itself as leader.
            if let Some(Some(leader)) = seen.first()
                && seen.iter().all(|s| *s == Some(*leader))
                && members.contains(leader)
                && self.group(*leader, group).leader() == Some(*leader)
            {
                return *leader;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no agreed leader of group {group} among {members:?}: {seen:?}"
            );
            // Leadership is settling: wait for the next change in the first member's metrics.
            let mut metrics = self.group(members[0], group).raft().metrics();
            let _ = tokio::time::timeout(Duration::from_millis(500), metrics.changed()).await;
        }
    }

    /// Writes through the leader among `members`, following redirects (bounded).
    pub async fn write(&self, group: GroupId, members: &[NodeId], request: Request) -> Committed {
        for _ in 0..20 {
            let leader = self.leader(group, members).await;
            match self.group(leader, group).write(request.clone()).await {
                Ok(response) => return response,
                Err(WriteError::NotLeader { .. }) => continue,
                Err(error) => panic!("write to group {group} failed: {error}"),
            }
        }
        panic!("group {group}: no leader accepted the write after 20 attempts");
    }
}

/// A Registry command whose effect is easy to read back: a state named `name`.
pub fn add_state(id: u128, name: &str) -> Request {
    Request {
        id,
        command: Command::Registry(RegistryCommand::AddState {
            name: name.into(),
            budget: 1,
        }),
    }
}

/// The state names a member's Registry holds.
pub async fn state_names(group: &Group) -> Vec<String> {
    group
        .read_local(|machine| {
            machine
                .registry()
                .map(|registry| registry.states().keys().cloned().collect())
                .unwrap_or_default()
        })
        .await
}

pub fn fast_config() -> RaftConfig {
    RaftConfig::default()
}

/// A Ledger command whose effect is easy to read back: a city named `name`.
pub fn add_city(id: u128, name: &str) -> Request {
    Request {
        id,
        command: Command::Ledger(aamas_consensus::ledger::LedgerCommand::AddCity {
            name: name.into(),
        }),
    }
}
