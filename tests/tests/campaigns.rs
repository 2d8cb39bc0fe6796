//! Three short fault campaigns on five real hosts (network namespaces, needs root,
//! iproute2 and nftables): one of partitions, one of pauses, one of packet loss, each
//! with a workload of projects and the checkers of `aamas_tests::campaign` (no
//! acknowledged project lost or left unfinished, one result per task on every replica,
//! one president per term, every node agreeing after the heal). A longer run is one
//! command: `tests/examples/campaign.rs`.

use std::time::Duration;

use aamas_tests::campaign::{self, Config, Kind};

fn campaign(kinds: &[Kind], seed: u64) {
    let root = tempfile::tempdir().expect("tempdir");
    let config = Config {
        hosts: 5,
        seed,
        duration: Duration::from_secs(45),
        kinds: kinds.to_vec(),
        env: Vec::new(),
    };
    let report = campaign::run(root.path(), &config);
    let text = report.text();
    println!("{text}");
    assert!(!report.faults.is_empty(), "no fault applied: {text}");
    assert!(report.acknowledged > 0, "nothing acknowledged: {text}");
    assert!(report.tasks_checked > 0, "no task checked: {text}");
    assert!(report.violations.is_empty(), "{text}");
}

#[test]
fn a_campaign_of_partitions_loses_nothing() {
    campaign(&[Kind::Partition, Kind::IsolatePresident], 11);
}

#[test]
fn a_campaign_of_pauses_loses_nothing() {
    campaign(&[Kind::Pause], 12);
}

#[test]
fn a_campaign_of_packet_loss_loses_nothing() {
    campaign(&[Kind::Loss], 13);
}

/// The checkers can fail: with the planted bug on (a president acknowledges every third
/// submission without committing it), the same kind of campaign reports lost
/// acknowledged projects.
#[test]
fn a_planted_lost_acknowledgement_is_caught() {
    let root = tempfile::tempdir().expect("tempdir");
    let config = Config {
        hosts: 5,
        seed: 12,
        duration: Duration::from_secs(20),
        kinds: vec![Kind::Pause],
        env: vec![(
            aamas_node::driver::projects::PLANTED_LOST_ACK.to_string(),
            "1".to_string(),
        )],
    };
    let report = campaign::run(root.path(), &config);
    let text = report.text();
    println!("{text}");
    assert!(report.acknowledged >= 3, "{text}");
    let lost = report
        .violations
        .iter()
        .filter(|violation| violation.starts_with("lost: acknowledged project"))
        .count();
    assert!(lost >= 1, "the checker missed the planted bug: {text}");
}
