//! The policy document with the real `aamas` binary on 127.0.0.1: the founder puts the
//! default in force; check, apply and show round-trip; an invalid document names its line
//! and leaves the one in force; only the president's operator applies one; its rules
//! refuse submissions (hard, soft until overridden) and admissions, and each decision is
//! counted under its rule; a dispatch rule keeps tasks off the president's node, and so
//! does a message rule refusing Executes there. The communication policy bounds work
//! messages per sender, and
//! the escalation policy sets how often a task lost to faults of the moment is reopened.

use std::path::Path;

use serde_json::Value;

use aamas_tests::*;

/// `aamas policy show --json` on `node`, if it answers with a policy.
fn shown(node: &Node) -> Option<Value> {
    serde_json::from_str(&node.cli(&["policy", "show", "--json"]).ok()?).ok()
}

fn write(root: &Path, name: &str, text: &str) -> String {
    let path = root.join(name);
    std::fs::write(&path, text).expect("write");
    path.display().to_string()
}

/// The state of member `peer`, as `node` lists the members.
fn state_of(node: &Node, peer: &str) -> Option<String> {
    let members: Vec<Value> = serde_json::from_str(&node.cli(&["members", "--json"]).ok()?).ok()?;
    members
        .iter()
        .find(|member| field(member, "peer_id").as_deref() == Some(peer))
        .and_then(|member| field(member, "state"))
}

/// A one-phase project `name` of `count` builtin digest tasks in `state`, each with the
/// lines `extra`.
fn digests(name: &str, state: &str, count: usize, extra: &str) -> String {
    let mut spec = format!("name = \"{name}\"\n[[phase]]\nname = \"initiation\"\n");
    for i in 0..count {
        spec.push_str(&format!(
            "  [[phase.task]]\n  name = \"t{i:02}\"\n  state = \"{state}\"\n  \
             executor = \"builtin\"\n  action = \"digest\"\n  input = \"part {i}\"\n{extra}"
        ));
    }
    spec
}

/// A series summed over `nodes`.
fn summed(nodes: &[Node], series: &str) -> f64 {
    nodes.iter().filter_map(|node| node.metric(series)).sum()
}

/// A one-phase project of one task.
fn one_task(executor: &str, state: &str, retries: u32) -> String {
    let body = if executor == "shell" {
        "command = \"true\""
    } else {
        "action = \"digest\""
    };
    format!(
        "name = \"one\"\n[[phase]]\nname = \"initiation\"\n  [[phase.task]]\n  name = \"t\"\n  \
         state = \"{state}\"\n  executor = \"{executor}\"\n  {body}\n  retries = {retries}\n"
    )
}

const POLICY: &str = r#"tier = "starter"

[[rule]]
name = "shell-only-in-technical"
category = "security"
at = "submission"
enforcement = "hard"
reason = "shell tasks run only in the technical state"
when = { executor = "shell" }
unless = { state = ["technical"] }

[[rule]]
name = "few-retries"
category = "escalation"
at = "submission"
enforcement = "soft"
reason = "more than 2 retries hides faults"
max = { retries = 2 }
"#;

#[test]
fn a_policy_round_trips_refuses_by_its_rules_and_an_invalid_one_changes_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, president) = start_mesh(root.path(), 3);
    let chief = &nodes[index_of(&nodes, &president)];
    let member = nodes
        .iter()
        .find(|node| !std::ptr::eq(*node, chief))
        .expect("a member");
    // The founder put the default policy (written by `aamas init`) in force; every
    // member reads it.
    let default = wait_for("the default policy on a member", || {
        shown(member).filter(|view| view.get("version").and_then(Value::as_u64) == Some(1))
    });
    let written = std::fs::read_to_string(nodes[0].dir.join("policy.toml")).expect("written");
    assert_eq!(field(&default, "text").as_deref(), Some(written.as_str()));

    // Invalid: the check and the API name the line; the policy in force stays.
    let bad = write(
        root.path(),
        "bad.toml",
        "tier = \"starter\"\n\n[[rule]]\nname = \"x\"\ncategory = \"security\"\nat = \"submission\"\nenforcement = \"sometimes\"\n",
    );
    let error = aamas(&["policy", "check", &bad]);
    assert!(!error.status.success());
    let stderr = String::from_utf8_lossy(&error.stderr);
    assert!(
        stderr.contains("line 7") && stderr.contains("unknown enforcement"),
        "{stderr}"
    );
    let text = std::fs::read_to_string(&bad).expect("read");
    let (status, body) = chief
        .api_request("PUT", "/api/v1/policy", &[], &text)
        .expect("the API answers");
    assert!(
        status.contains(" 400 ") && body.contains("line 7"),
        "{status}: {body}"
    );
    assert_eq!(
        policy_version(chief),
        Some(1),
        "an invalid policy changed the one in force"
    );

    // Only the president's operator applies one.
    let good = write(root.path(), "good.toml", POLICY);
    let error = member
        .cli(&["policy", "apply", &good])
        .expect_err("refused");
    assert!(
        error.contains("only the president's operator may apply a policy"),
        "{error}"
    );
    let checked = aamas(&["policy", "check", &good, "--json"]);
    assert!(checked.status.success(), "the good policy checks");
    let checked: Value = serde_json::from_slice(&checked.stdout).expect("JSON");
    let applied = chief.cli(&["policy", "apply", &good]).expect("applies");
    assert_eq!(applied, "policy version 2 in force");
    let view = wait_for("version 2 on a member", || {
        shown(member).filter(|view| view.get("version").and_then(Value::as_u64) == Some(2))
    });
    assert_eq!(field(&view, "text").as_deref(), Some(POLICY));
    assert_eq!(
        view.get("rules"),
        checked.get("rules"),
        "check and show agree"
    );
    let names: Vec<String> = view["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter_map(|rule| field(rule, "name"))
        .collect();
    assert_eq!(
        names,
        [
            "tier-starter-projects",
            "tier-starter-phases",
            "shell-only-in-technical",
            "few-retries"
        ]
    );

    // Its rules decide submissions, from any member.
    let template = String::from_utf8(aamas(&["project", "template"]).stdout).expect("utf-8");
    let refused = member
        .submit(&template)
        .expect_err("eight phases on the starter tier");
    assert!(refused.contains("tier-starter-phases"), "{refused}");
    let refused = member
        .submit(&one_task("shell", "market", 1))
        .expect_err("shell outside technical");
    assert!(refused.contains("shell-only-in-technical"), "{refused}");
    let retried = one_task("builtin", "technical", 3);
    let refused = chief.submit(&retried).expect_err("soft rule");
    assert!(
        refused.contains("few-retries") && refused.contains("--override"),
        "{refused}"
    );
    let file = write(root.path(), "retried.toml", &retried);
    chief
        .cli(&["project", "submit", &file, "--override", "a flaky upstream"])
        .expect("an override passes a soft rule");
    chief
        .submit(&one_task("shell", "technical", 1))
        .expect("shell in technical is allowed");
    let counted = |rule: &str, outcome: &str| {
        chief.metric(&format!(
            "aamas_policy_decisions_total{{at=\"submission\",rule=\"{rule}\",outcome=\"{outcome}\"}}"
        ))
    };
    assert_eq!(counted("tier-starter-phases", "denied"), Some(1.0));
    assert_eq!(counted("shell-only-in-technical", "denied"), Some(1.0));
    assert_eq!(counted("few-retries", "denied"), Some(1.0));
    assert_eq!(counted("few-retries", "overridden"), Some(1.0));
    assert_eq!(counted("-", "allowed"), Some(1.0));
}

#[test]
fn an_admission_rule_refuses_a_node_with_its_reason() {
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, president) = start_mesh(root.path(), 2);
    let chief = &nodes[index_of(&nodes, &president)];
    let policy = "[[rule]]\nname = \"two-members\"\ncategory = \"resource\"\nat = \"admission\"\n\
                  reason = \"this mesh holds two members\"\nmax = { members = 2 }\n";
    let file = write(root.path(), "small.toml", policy);
    chief.cli(&["policy", "apply", &file]).expect("applies");
    let token = chief
        .cli(&["token", "create", "--uses", "5"])
        .expect("token");
    let addr = first_listen_addr(chief);
    let error = join_error(root.path(), "third", &addr, &token);
    assert!(
        error.contains("two-members") && error.contains("this mesh holds two members"),
        "{error}"
    );
}

/// A project of `count` tasks in `state` that fail every attempt (4 each).
fn failing(state: &str, count: usize) -> String {
    let mut spec = String::from("name = \"failing\"\n[[phase]]\nname = \"initiation\"\n");
    for i in 0..count {
        spec.push_str(&format!(
            "  [[phase.task]]\n  name = \"f{i}\"\n  state = \"{state}\"\n  executor = \"builtin\"\n  \
             action = \"fail\"\n  retries = 3\n"
        ));
    }
    spec
}

#[test]
fn a_worker_whose_tasks_keep_failing_raises_an_alert_that_aamas_alerts_shows() {
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, president) = start_hierarchy(root.path(), 3);
    let chief = &nodes[index_of(&nodes, &president)];
    // The default policy: 3 failures in a row on one worker raise an alert.
    let default = wait_for("the default policy", || shown(chief));
    assert!(
        field(&default, "text").is_some_and(|text| text.contains("worker_failures_in_a_row = 3"))
    );
    let tree = chief.hierarchy().expect("hierarchy");
    let (state, _, _) = governors(&tree)
        .and_then(|states| states.into_iter().next())
        .expect("a governed state");
    // 3 tasks of 4 failing attempts: at least one worker sees 3 of the 12 (none succeed).
    let id = nodes[0].submit(&failing(&state, 3)).expect("submitted");
    let alert = wait_for("a PerformanceAlert in `aamas alerts` on a member", || {
        let listed = nodes[2].cli(&["alerts", "--json"]).ok()?;
        let listed: Value = serde_json::from_str(&listed).ok()?;
        listed.as_array()?.first().cloned()
    });
    assert_eq!(
        field(&alert, "metric").as_deref(),
        Some("worker_failures_in_a_row"),
        "{alert}"
    );
    assert!(alert["value"].as_f64().is_some_and(|v| v >= 3.0), "{alert}");
    assert_eq!(alert["threshold"].as_f64(), Some(3.0), "{alert}");
    let subject = field(&alert, "subject").expect("subject");
    assert!(
        nodes.iter().any(|node| node
            .status()
            .and_then(|status| field(&status, "peer_id"))
            .is_some_and(|peer| peer == subject)),
        "the alert names a member: {alert}"
    );
    assert!(
        chief
            .metric("aamas_performance_alerts_total{metric=\"worker_failures_in_a_row\"}")
            .is_some_and(|n| n >= 1.0)
    );
    let end = wait_for_project_end(&nodes, &id, std::time::Duration::from_secs(240));
    assert_eq!(field(&end, "status").as_deref(), Some("failed"), "{end}");

    // Acknowledged by hand, from any member.
    let alert_id = alert["id"].as_u64().expect("id").to_string();
    let printed = nodes[1]
        .cli(&["alerts", "ack", &alert_id, "--note", "replaced the disk"])
        .expect("ack");
    assert_eq!(printed, format!("acknowledged alert {alert_id}"));
    let acked = wait_for("the acknowledgement", || {
        let listed = nodes[2].cli(&["alerts", "--json"]).ok()?;
        let listed: Value = serde_json::from_str(&listed).ok()?;
        let alert = listed.as_array()?.first()?.clone();
        alert["acknowledged_ms"].as_u64().map(|_| alert)
    });
    assert_eq!(field(&acked, "note").as_deref(), Some("replaced the disk"));
    let text = nodes[2].cli(&["alerts"]).expect("alerts");
    assert!(
        text.contains("acknowledged") && text.contains("worker_failures_in_a_row"),
        "{text}"
    );
}

#[test]
fn the_starter_tier_gives_at_most_three_states_a_governor() {
    let root = tempfile::tempdir().expect("tempdir");
    let dirs: Vec<std::path::PathBuf> =
        (1..=8).map(|i| root.path().join(format!("n{i}"))).collect();
    let (token, _) = init(&dirs[0]);
    // The founder puts the Starter tier in force before the states have groups.
    std::fs::write(dirs[0].join("policy.toml"), "tier = \"starter\"\n").expect("write");
    let mut nodes = vec![Node::start_env(None, &dirs[0], None, &[], &[])];
    let addr = first_listen_addr(&nodes[0]);
    for dir in &dirs[1..] {
        nodes.push(Node::start_env(None, dir, Some((&addr, &token)), &[], &[]));
    }
    let president = wait_for("the nodes to agree on a president", || {
        agreed_president(&nodes.iter().collect::<Vec<_>>(), 8)
    });
    let chief = &nodes[index_of(&nodes, &president)];
    // Every state has members; three have a governor, and the fourth was refused one
    // by the tier's rule, counted once.
    let tree = wait_for("three governed states of four populated ones", || {
        let tree = chief.hierarchy()?;
        let states = tree["states"].as_array()?;
        let populated = states
            .iter()
            .filter(|s| s["workers"].as_array().is_some_and(|w| !w.is_empty()))
            .count();
        let governed = states.iter().filter(|s| s["governor"].is_string()).count();
        let refused = chief.metric(
            "aamas_policy_decisions_total{at=\"founding\",rule=\"tier-starter-governors\",outcome=\"denied\"}",
        )?;
        (populated == 4 && governed == 3 && refused == 1.0).then_some(tree)
    });
    let ungoverned = tree["states"]
        .as_array()
        .and_then(|states| states.iter().find(|s| !s["governor"].is_string()))
        .and_then(|state| field(state, "name"))
        .expect("an ungoverned state");
    // A task of the ungoverned state still runs: it goes to a governed one.
    let spec = format!(
        "name = \"elsewhere\"\n[[phase]]\nname = \"initiation\"\n  [[phase.task]]\n  \
         name = \"t\"\n  state = \"{ungoverned}\"\n  executor = \"builtin\"\n  action = \"noop\"\n"
    );
    let id = nodes[0].submit(&spec).expect("submitted");
    let end = wait_for_project_end(&nodes, &id, std::time::Duration::from_secs(240));
    assert_eq!(field(&end, "status").as_deref(), Some("completed"), "{end}");
    let tree = chief.hierarchy().expect("hierarchy");
    let governed_now = tree["states"].as_array().map_or(0, |states| {
        states.iter().filter(|s| s["governor"].is_string()).count()
    });
    assert_eq!(governed_now, 3, "still three governors: {tree}");
}

#[test]
fn an_error_rate_threshold_raises_its_own_alert() {
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, president) = start_hierarchy(root.path(), 3);
    let chief = &nodes[index_of(&nodes, &president)];
    // Only an error-rate threshold: half of a worker's attempts, once it ran 4.
    let policy = write(
        root.path(),
        "rate.toml",
        "[performance]\nworker_error_rate_percent = 50\nerror_rate_min_attempts = 4\n",
    );
    apply_policy_everywhere(&nodes, chief, &policy);
    let tree = chief.hierarchy().expect("hierarchy");
    let (state, _, _) = governors(&tree)
        .and_then(|states| states.into_iter().next())
        .expect("a governed state");
    // 3 tasks of 4 failing attempts: at least one worker runs 4 of the 12.
    let id = nodes[0].submit(&failing(&state, 3)).expect("submitted");
    let end = wait_for_project_end(&nodes, &id, std::time::Duration::from_secs(240));
    assert_eq!(field(&end, "status").as_deref(), Some("failed"), "{end}");
    let alerts = wait_for("a PerformanceAlert in `aamas alerts`", || {
        let listed = nodes[1].cli(&["alerts", "--json"]).ok()?;
        let listed: Value = serde_json::from_str(&listed).ok()?;
        listed
            .as_array()
            .filter(|alerts| !alerts.is_empty())
            .cloned()
    });
    for alert in &alerts {
        assert_eq!(
            field(alert, "metric").as_deref(),
            Some("worker_error_rate_percent"),
            "only the threshold the policy names: {alert}"
        );
        assert_eq!(alert["threshold"].as_f64(), Some(50.0), "{alert}");
        assert!(
            alert["value"].as_f64().is_some_and(|v| v >= 50.0),
            "{alert}"
        );
        assert!(
            field(alert, "message").is_some_and(|m| m.contains("attempts failed on worker")),
            "{alert}"
        );
    }
}

#[test]
fn the_communication_policy_bounds_work_messages_per_sender_and_work_still_finishes() {
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, president) = start_hierarchy(root.path(), 5);
    let chief = &nodes[index_of(&nodes, &president)];
    // The state with the most members: its mayor sends work to the others.
    let members: Vec<Value> =
        serde_json::from_str(&chief.cli(&["members", "--json"]).expect("members")).expect("json");
    let mut by_state: std::collections::BTreeMap<String, usize> = Default::default();
    for member in &members {
        if let Some(state) = field(member, "state") {
            *by_state.entry(state).or_default() += 1;
        }
    }
    let (state, _) = by_state
        .into_iter()
        .max_by_key(|(_, count)| *count)
        .expect("a populated state");
    let tight = write(
        root.path(),
        "tight.toml",
        "[communication]\nmessages_per_sec = 2\nburst = 2\n",
    );
    apply_policy_everywhere(&nodes, chief, &tight);
    let id = nodes[0]
        .submit(&digests("chatty", &state, 30, ""))
        .expect("submitted");
    // Senders past 2 messages a second are refused and try again: the work finishes,
    // slower, and the refusals are counted.
    let end = wait_for_project_end(&nodes, &id, std::time::Duration::from_secs(240));
    assert_eq!(field(&end, "status").as_deref(), Some("completed"), "{end}");
    let refused: f64 = nodes
        .iter()
        .filter_map(|node| node.metric("aamas_rpc_refused_total{reason=\"rate_limited\"}"))
        .sum();
    assert!(refused >= 1.0, "no work message was over the rate");
}

#[test]
fn the_escalation_policy_sets_how_often_a_task_lost_to_faults_is_reopened() {
    // Every worker's model endpoint refuses connections: each attempt fails as a fault
    // of the moment, which the president reopens as the escalation policy says.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = closed.local_addr().expect("its address").port();
    drop(closed);
    let env = vec![
        (
            "AAMAS_LLM_BASE_URL".to_string(),
            format!("http://127.0.0.1:{port}/v1"),
        ),
        ("AAMAS_LLM_MODEL".to_string(), "absent".to_string()),
    ];
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, president) = start_hierarchy_env(root.path(), 3, &env);
    let chief = &nodes[index_of(&nodes, &president)];
    let state = governed_state(&nodes);
    let ladder = write(
        root.path(),
        "ladder.toml",
        "[escalation]\nreopenings = 3\nreopen_attempts = 1\n",
    );
    chief.cli(&["policy", "apply", &ladder]).expect("applied");
    let spec = format!(
        "name = \"unreachable\"\n[[phase]]\nname = \"initiation\"\n  [[phase.task]]\n  \
         name = \"ask\"\n  state = \"{state}\"\n  executor = \"llm\"\n  input = \"hello\"\n  \
         retries = 0\n"
    );
    let id = nodes[0].submit(&spec).expect("submitted");
    let end = wait_for_project_end(&nodes, &id, std::time::Duration::from_secs(240));
    assert_eq!(field(&end, "status").as_deref(), Some("failed"), "{end}");
    let tasks = all_tasks(&nodes, &id);
    let task = tasks.values().next().expect("the task");
    // One attempt, then three reopenings of one attempt each.
    assert_eq!(task["reopened"], 3, "{task}");
    assert_eq!(task["attempt"], 4, "{task}");
}

/// Starts a 5-node hierarchy, applies the policy `rule`, runs 20 digest tasks in the
/// president's own state (each with the lines `extra`) and checks that none ran on the
/// president's node; the nodes and the president's index.
fn tasks_kept_off_the_president(root: &Path, rule: &str, extra: &str) -> (Vec<Node>, usize) {
    let (nodes, president) = start_hierarchy(root, 5);
    let chief = index_of(&nodes, &president);
    // The president's own state: its mayor would give it work without the rule.
    let state = state_of(&nodes[chief], &president).expect("the president's state");
    apply_policy_everywhere(&nodes, &nodes[chief], &write(root, "rule.toml", rule));
    let id = nodes[0]
        .submit(&digests("elsewhere", &state, 20, extra))
        .expect("submitted");
    let end = wait_for_project_end(&nodes, &id, std::time::Duration::from_secs(240));
    assert_eq!(field(&end, "status").as_deref(), Some("completed"), "{end}");
    let tasks = all_tasks(&nodes, &id);
    assert_eq!(tasks.len(), 20);
    for task in tasks.values() {
        let worker = field(task, "worker").expect("a worker");
        assert_ne!(worker, president, "a task ran on the president: {task}");
    }
    (nodes, chief)
}

#[test]
fn a_dispatch_rule_keeps_tasks_off_the_president_and_counts_its_decisions() {
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, _) = tasks_kept_off_the_president(
        root.path(),
        "[[rule]]\nname = \"not-on-the-president\"\ncategory = \"security\"\n\
         at = \"dispatch\"\nreason = \"the president's node keeps its time for the mesh\"\n\
         when = { role = \"president\" }\n",
        "",
    );
    let allowed = summed(
        &nodes,
        "aamas_policy_decisions_total{at=\"dispatch\",rule=\"-\",outcome=\"allowed\"}",
    );
    assert!(allowed >= 20.0, "{allowed} dispatches counted as allowed");
    // The president, never busy, was passed over for each task: the rule is counted
    // once per task (a change of mayor could count a task again).
    let denied = summed(
        &nodes,
        "aamas_policy_decisions_total{at=\"dispatch\",rule=\"not-on-the-president\",\
         outcome=\"denied\"}",
    );
    assert!((20.0..=40.0).contains(&denied), "{denied} denials counted");
}

#[test]
fn a_message_rule_refuses_work_messages_and_the_work_goes_elsewhere() {
    let root = tempfile::tempdir().expect("tempdir");
    // Enforced where the message arrives: the president's node refuses Executes, so
    // an attempt its mayor hands it is not taken and goes to another worker.
    let (nodes, chief) = tasks_kept_off_the_president(
        root.path(),
        "[[rule]]\nname = \"no-execute-on-the-president\"\ncategory = \"communication\"\n\
         at = \"message\"\nreason = \"the president's node runs no tasks\"\n\
         when = { message = \"execute\", receiver_role = \"president\" }\n",
        "  retries = 3\n",
    );
    let denied = nodes[chief]
        .metric(
            "aamas_policy_decisions_total{at=\"message\",\
             rule=\"no-execute-on-the-president\",outcome=\"denied\"}",
        )
        .unwrap_or(0.0);
    assert!(denied >= 1.0, "the president refused no Execute");
    let allowed = summed(
        &nodes,
        "aamas_policy_decisions_total{at=\"message\",rule=\"-\",outcome=\"allowed\"}",
    );
    assert!(allowed >= 20.0, "{allowed} messages counted as allowed");
}
