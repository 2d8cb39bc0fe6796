//! Several real node runtimes in one process over libp2p's memory transport, as the
//! simulator runs them: a founder and two joiners agree on a president and place every
//! member. (Failover in one process is exercised by the simulator's scenarios.)

use std::time::{Duration, Instant};

use aamas_node::{NodeConfig, Running, Status};

fn config(dir: &std::path::Path, join: Option<(String, String)>) -> NodeConfig {
    NodeConfig {
        data_dir: dir.to_owned(),
        listen: vec!["/memory/0".parse().expect("memory addr")],
        api: None,
        join: join.map(|(addr, token)| (addr.parse().expect("join addr"), token)),
        skills: Vec::new(),
        executors: aamas_node::exec::ExecutorSet::default(),
        shell_sandbox: aamas_node::exec::sandbox::ShellSandbox::default(),
        raft: aamas_consensus::RaftConfig::default(),
        fsync: false,
        mdns: false,
        capacity: 4,
        faults: None,
        memtable_bytes: None,
        shared_memory: None,
        kademlia: true,
        liveness: None,
        max_artifact_bytes: None,
        scale_hook: None,
    }
}

async fn statuses(nodes: &[&Running]) -> Vec<Status> {
    let mut all = Vec::new();
    for node in nodes {
        all.push(node.node.status().await);
    }
    all
}

/// Polls until every node names the same president (not `not`) and `members` members.
async fn agreed(nodes: &[&Running], members: usize, not: Option<&str>) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = statuses(nodes).await;
        let president = all[0].president.clone();
        if let Some(president) = president.filter(|p| Some(p.as_str()) != not)
            && all
                .iter()
                .all(|s| s.president.as_deref() == Some(&president) && s.members == members)
            && all.iter().all(|s| s.state.is_some())
        {
            return president;
        }
        assert!(Instant::now() < deadline, "no agreement: {all:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_runtimes_in_one_process_form_a_mesh_over_memory() {
    let root = tempfile::tempdir().expect("tempdir");
    // One token for the two nodes that join.
    let founded = aamas_node::init(&root.path().join("n1"), "sim", Duration::from_secs(600), 2)
        .expect("init");
    let founder = aamas_node::start(config(&root.path().join("n1"), None))
        .await
        .expect("founder");
    let addr = format!(
        "{}/p2p/{}",
        founder.node.status().await.listen_addrs[0],
        founded.peer_id
    );
    assert!(addr.starts_with("/memory/"), "{addr}");
    let mut nodes = vec![founder];
    for i in 2..=3 {
        let dir = root.path().join(format!("n{i}"));
        let joined = aamas_node::start(config(&dir, Some((addr.clone(), founded.token.clone()))))
            .await
            .expect("join");
        nodes.push(joined);
    }
    let president = agreed(&nodes.iter().collect::<Vec<_>>(), 3, None).await;
    assert_eq!(president, founded.peer_id);

    for node in nodes {
        node.stop().await;
    }
}
