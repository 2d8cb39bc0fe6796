//! The dashboard in a browser: headless Chromium (Debian's `chromium`, driven by the npm
//! package `playwright-core`, which `make test` installs) opens the dashboard of a
//! five-node mesh running the template project and a project whose tasks keep failing,
//! sees the hierarchy, the template's phases advancing to the end and an alert, opens a
//! governor's view, and saves a screenshot at each step (kept under the target dir's
//! `tmp/dashboard/`). The page loads nothing from another origin and logs no error.

use std::process::Command;

use aamas_tests::*;
use serde_json::Value;

#[test]
fn the_dashboard_shows_the_hierarchy_a_project_advancing_and_an_alert() {
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, president) = start_hierarchy(root.path(), 5);
    let chief = &nodes[index_of(&nodes, &president)];
    let state = governed_state(&nodes);
    let template = String::from_utf8(aamas(&["project", "template"]).stdout).expect("utf-8");
    let id = nodes[1].submit(&template).expect("submitted");
    // Three tasks of four failing attempts each: a worker fails three in a row, and the
    // default policy raises an alert.
    let mut failing = String::from("name = \"failing\"\n[[phase]]\nname = \"initiation\"\n");
    for i in 0..3 {
        failing.push_str(&format!(
            "  [[phase.task]]\n  name = \"f{i}\"\n  state = \"{state}\"\n  executor = \"builtin\"\n  \
             action = \"fail\"\n  retries = 3\n"
        ));
    }
    nodes[2].submit(&failing).expect("submitted");

    let addr = chief.api_addr().expect("api.addr");
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    let output = Command::new("node")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/scripts/dashboard.mjs"
        ))
        .arg(format!("http://{}", addr))
        .arg(chief.api_token().expect("token"))
        .arg(&id)
        .arg(&shots)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the browser: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.trim()).expect("what the browser saw");
    assert_eq!(seen["foreign"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["errors"], serde_json::json!([]), "{seen}");
    // The token left the address bar.
    assert!(
        !seen["url_after_token"]
            .as_str()
            .expect("url")
            .contains("token")
    );
    // The hierarchy: the mesh's states, the governed one among them.
    assert!(seen["states"].as_u64().is_some_and(|n| n >= 1), "{seen}");
    assert!(seen["governed"].as_u64().is_some_and(|n| n >= 1), "{seen}");
    // The phases advanced, one at a time or a few between two looks, to all eight.
    let phases: Vec<u64> = seen["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert!(phases.windows(2).all(|w| w[0] < w[1]), "{phases:?}");
    assert!(phases.len() >= 3, "the page saw no advance: {phases:?}");
    assert_eq!(phases.last(), Some(&8), "{phases:?}");
    assert_eq!(seen["status"], "completed", "{seen}");
    assert!(
        seen["alert"]
            .as_str()
            .is_some_and(|alert| alert.contains("worker_failures_in_a_row")),
        "{seen}"
    );
    assert!(seen["events"].as_u64().is_some_and(|n| n > 8), "{seen}");
    assert!(
        seen["governor_cards"].as_u64().is_some_and(|n| n >= 6),
        "{seen}"
    );
    for shot in seen["screenshots"].as_array().expect("screenshots") {
        let bytes = std::fs::read(shot.as_str().expect("path")).expect("the screenshot");
        assert!(bytes.starts_with(b"\x89PNG"), "{shot} is not a PNG");
    }
}
