//! Short fault campaigns on five real hosts (network namespaces, needs root, iproute2,
//! nftables and libfaketime): one of partitions (a minority, the president alone, a
//! bridge host between two halves), one of pauses, one of packet loss, one of delays
//! and duplicates, one of clock skews, one of full disks, each with a workload of projects and the checkers of `aamas_tests::campaign`
//! (no acknowledged project lost or left unfinished, one result per task on every
//! replica, one president per term, every node agreeing after the heal), and a short
//! loop of `kill -9` restarts under write load. A longer run is one command:
//! `tests/examples/campaign.rs`, `tests/examples/restarts.rs`.

use std::time::Duration;

use aamas_tests::campaign::{self, Config, Kind};
use aamas_tests::restarts;

/// Writes the campaign's timeline to `target/tmp/campaigns/seed-N.svg`, for a person.
fn keep_picture(report: &campaign::Report) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("campaigns");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(format!("seed-{}.svg", report.seed)), report.svg());
}

/// Runs a 45 s campaign of `kinds` on five hosts: its root (data dirs and logs), its
/// report and the report's text, printed, with its picture kept.
fn run(kinds: &[Kind], seed: u64) -> (tempfile::TempDir, campaign::Report, String) {
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
    keep_picture(&report);
    (root, report, text)
}

fn campaign(kinds: &[Kind], seed: u64) {
    let (_root, report, text) = run(kinds, seed);
    assert!(!report.faults.is_empty(), "no fault applied: {text}");
    assert!(report.acknowledged > 0, "nothing acknowledged: {text}");
    assert!(report.tasks_checked > 0, "no task checked: {text}");
    assert!(report.violations.is_empty(), "{text}");
}

#[test]
fn a_campaign_of_partitions_loses_nothing() {
    campaign(&[Kind::Partition, Kind::IsolatePresident, Kind::Bridge], 11);
}

#[test]
fn a_campaign_of_pauses_loses_nothing() {
    campaign(&[Kind::Pause], 12);
}

#[test]
fn a_campaign_of_packet_loss_loses_nothing() {
    campaign(&[Kind::Loss], 13);
}

/// Delays with jitter (messages overtake each other) and duplicated requests (late
/// copies), by the nodes' own fault layer: nothing is lost, and every host hit had the
/// fault in force (its log says what its layer changed to).
#[test]
fn a_campaign_of_delays_and_duplicates_loses_nothing() {
    let (root, report, text) = run(&[Kind::Delay, Kind::Duplicate], 15);
    for kind in [Kind::Delay, Kind::Duplicate] {
        assert!(
            report.faults.iter().any(|fault| fault.step.kind == kind),
            "no {kind:?} in the schedule: {text}"
        );
    }
    for fault in &report.faults {
        for host in &fault.hit {
            let log = std::fs::read_to_string(root.path().join(format!("n{host}.log")))
                .unwrap_or_default();
            assert!(
                log.contains("test fault layer changed"),
                "host {host}'s log never shows its fault layer changing: {text}"
            );
        }
    }
    assert!(report.acknowledged > 0, "nothing acknowledged: {text}");
    assert!(report.tasks_checked > 0, "no task checked: {text}");
    assert!(report.violations.is_empty(), "{text}");
}

/// Clock skews of minutes (libfaketime on the node's wall clock) with pauses: nothing
/// is lost, and each skew was in force (the node's own status showed its clock off).
#[test]
fn a_campaign_of_clock_skews_loses_nothing() {
    let (_root, report, text) = run(&[Kind::ClockSkew, Kind::Pause], 14);
    let skews: Vec<_> = report
        .faults
        .iter()
        .filter(|fault| fault.step.kind == Kind::ClockSkew)
        .collect();
    assert!(!skews.is_empty(), "no clock skew in the schedule: {text}");
    for fault in skews {
        let observed = fault.observed_skew_s.expect("the skewed node answered");
        assert!(
            (observed - fault.step.skew_s).abs() <= 5,
            "set {} s off, the node's clock was {observed} s off: {text}",
            fault.step.skew_s
        );
    }
    assert!(report.acknowledged > 0, "nothing acknowledged: {text}");
    assert!(report.violations.is_empty(), "{text}");
}

/// Full disks (each data dir a 48 MiB tmpfs, filled to the last byte): a node that
/// cannot write stops and says why, starts again once there is space (the campaign
/// plays systemd's part), and nothing acknowledged is lost.
#[test]
fn a_campaign_of_full_disks_loses_nothing_and_says_why_a_node_stopped() {
    let (_root, report, text) = run(&[Kind::DiskFull], 3);
    let stops: Vec<&String> = report
        .faults
        .iter()
        .filter_map(|fault| fault.stopped_with.as_ref())
        .collect();
    assert!(!stops.is_empty(), "no node stopped for a full disk: {text}");
    for said in stops {
        assert!(
            said.contains("its disk is full. Free space there"),
            "a stop that does not say the disk is full: {said}"
        );
    }
    assert!(report.acknowledged > 0, "nothing acknowledged: {text}");
    assert!(report.violations.is_empty(), "{text}");
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

/// The stale-read checker can fail: with the planted bug on (a consistent read answers
/// from the node's own copy, without the president's read index), a campaign of
/// partitions reports stale reads on the cut-off side; without it, the same campaign
/// reports none (`a_campaign_of_partitions_loses_nothing`).
#[test]
fn a_planted_stale_read_is_caught() {
    let root = tempfile::tempdir().expect("tempdir");
    let config = Config {
        hosts: 5,
        seed: 16,
        duration: Duration::from_secs(30),
        kinds: vec![Kind::Partition],
        env: vec![(
            aamas_node::driver::runtime::PLANTED_STALE_READ.to_string(),
            "1".to_string(),
        )],
    };
    let report = campaign::run(root.path(), &config);
    let text = report.text();
    println!("{text}");
    let stale = report
        .violations
        .iter()
        .filter(|violation| violation.starts_with("stale read"))
        .count();
    assert!(
        stale >= 1,
        "the checker missed the planted stale reads: {text}"
    );
    assert!(
        matches!(
            report.register_verdict,
            campaign::register::Verdict::NotLinearizable { .. }
        ),
        "the linearizability search missed the planted stale reads: {text}"
    );
}

/// Ten `kill -9` restarts of random hosts (the president among them, as the seed has
/// it) while two writers submit: every acknowledged project is on every node, and ends.
#[test]
fn kill_nine_restarts_under_write_load_lose_no_acknowledged_write() {
    let root = tempfile::tempdir().expect("tempdir");
    let config = restarts::Config {
        hosts: 3,
        seed: 21,
        restarts: 10,
        writers: 2,
        fsync: true,
        env: Vec::new(),
    };
    let report = restarts::run(root.path(), &config);
    let text = report.text();
    println!("{text}");
    assert_eq!(report.restarts, 10, "{text}");
    assert!(report.acknowledged > 0, "nothing acknowledged: {text}");
    assert_eq!(report.completed, report.acknowledged, "{text}");
    assert!(report.violations.is_empty(), "{text}");
}
