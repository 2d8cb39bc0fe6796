//! Resources between real `aamas` processes on 127.0.0.1, with llm workers against a
//! local OpenAI-compatible server that reports token use (priced by the workers): a
//! state whose hard money limit is spent stops dispatching and raises a ResourceRequest
//! that goes up through its governor to the president; the limit is overshot by at most
//! one task per worker; the project resumes when the request is approved; and the spend
//! the state's account records equals the sum of its tasks' measured use. A soft limit
//! stops nothing and raises a PerformanceAlert. A shell attempt that fails or times out
//! is charged the CPU time it used, and counted in its worker's performance figures. A
//! policy limit on each worker passes a worker that spent it over until it is lifted.
//! Shell tasks are charged the memory their processes held over time and the output kept
//! as artefacts, and a storage limit holds a state like any other.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aamas_tests::llm::MockLlm;
use aamas_tests::*;
use serde_json::Value;

const TASKS: usize = 12;
const PROJECT_LIMIT: Duration = Duration::from_secs(240);

/// One phase of `TASKS` independent llm tasks in `state`.
fn project(state: &str) -> String {
    let mut spec = String::from("name = \"metered\"\n[[phase]]\nname = \"initiation\"\n");
    for i in 0..TASKS {
        spec.push_str(&format!(
            "  [[phase.task]]\n  name = \"t{i:02}\"\n  state = \"{state}\"\n  \
             executor = \"llm\"\n  input = \"Write part {i:02} of the plan\"\n"
        ));
    }
    spec
}

/// `aamas resources --json` on `node`: `state`'s view.
fn shown(node: &Node, state: &str) -> Option<Value> {
    let shown: Value = serde_json::from_str(&node.cli(&["resources", "--json"]).ok()?).ok()?;
    shown
        .as_array()?
        .iter()
        .find(|view| view["state"] == state)
        .cloned()
}

fn requests(node: &Node) -> Vec<Value> {
    node.cli(&["resources", "requests", "--json"])
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

/// Every task of the project, by name, from whichever node holds it.
fn tasks_by_name(nodes: &[Node], id: &str) -> BTreeMap<String, Value> {
    all_tasks(nodes, id)
        .into_values()
        .map(|task| (field(&task, "name").unwrap_or_default(), task))
        .collect()
}

/// A 3-node hierarchy whose workers call `llm`; the nodes, the president's index and a
/// state with members (and so a governor and a Ledger).
fn metered_mesh(root: &std::path::Path, llm: &MockLlm) -> (Vec<Node>, usize, String) {
    let (nodes, president) = start_hierarchy_env(root, 3, &llm.env());
    let chief = index_of(&nodes, &president);
    let state = governed_state(&nodes);
    (nodes, chief, state)
}

fn money(value: &Value) -> u64 {
    value["money_micros"].as_u64().unwrap_or(0)
}

#[test]
fn a_spent_limit_stops_dispatch_raises_a_request_and_resumes_once_approved() {
    let llm = MockLlm::start(|seen| format!("part done: {}", seen.user.len()));
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, chief, state) = metered_mesh(root.path(), &llm);
    let chief = &nodes[chief];
    let member = nodes
        .iter()
        .find(|node| !std::ptr::eq(*node, chief))
        .expect("a member");

    // Limits are the president's operator's to set.
    let refused = member
        .cli(&["resources", "set", &state, "money_micros", "1000"])
        .expect_err("a member's operator may not set limits");
    assert!(refused.contains("president's operator"), "{refused}");
    let bad = chief
        .cli(&["resources", "set", &state, "gpu_hours", "1"])
        .expect_err("no such resource");
    assert!(bad.contains("unknown resource"), "{bad}");

    // A task here costs about 150 millionths; the limit lets a few through.
    const LIMIT: u64 = 400;
    chief
        .cli(&[
            "resources",
            "set",
            &state,
            "money_micros",
            &LIMIT.to_string(),
            "--per",
            "day",
        ])
        .expect("the president's operator sets a limit");
    // The governor copies the limit into the state's Ledger, where it is enforced.
    wait_for("the limit in force in the Ledger", || {
        let view = shown(member, &state)?;
        let version = view["limits_version"].as_u64()?;
        (version >= 1 && view["limits_in_force"].as_u64() == Some(version)).then_some(())
    });

    let id = nodes[0].submit(&project(&state)).expect("submitted");

    // The limit is spent: the mayor holds the rest back and asks for more, through the
    // governor, and the president records the request.
    let request = wait_for("a ResourceRequest", || {
        requests(member)
            .into_iter()
            .find(|request| request["status"] == "open" && request["state"] == state.as_str())
    });
    assert_eq!(request["resource"], "money_micros");
    assert!(
        field(&request, "reason").is_some_and(|reason| reason.contains("task(s) wait")),
        "{request}"
    );
    // The seed's ResourceRequest event reaches the member's event stream.
    let event = wait_for("the ResourceRequest event", || {
        let printed = member
            .cli(&["events", "--json", "--kind", "resource_request"])
            .ok()?;
        let event: Value = serde_json::from_str(printed.lines().next()?).ok()?;
        Some(event)
    });
    let body = &event["event"]["ResourceRequest"];
    assert_eq!(body["resource"], "BudgetUnits", "{event}");
    assert!(body["amount"].as_u64().is_some_and(|a| a > 0), "{event}");
    // Once the attempts in flight are done, nothing more is dispatched.
    let held = wait_for("the attempts in flight to finish", || {
        let tasks = tasks_by_name(&nodes, &id);
        let running = tasks
            .values()
            .any(|task| field(task, "status").as_deref() == Some("assigned"));
        (tasks.len() == TASKS && !running).then_some(tasks)
    });
    let done = |tasks: &BTreeMap<String, Value>| {
        tasks
            .values()
            .filter(|task| field(task, "status").as_deref() == Some("succeeded"))
            .count()
    };
    let done_when_held = done(&held);
    assert!(
        (1..TASKS).contains(&done_when_held),
        "some tasks ran and some wait: {done_when_held} of {TASKS}"
    );
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(3) {
        let tasks = tasks_by_name(&nodes, &id);
        let started = tasks
            .values()
            .filter(|task| field(task, "status").as_deref() != Some("pending"))
            .count();
        assert_eq!(
            started, done_when_held,
            "a task was dispatched while the limit was spent"
        );
        std::thread::sleep(POLL);
    }
    let view = shown(member, &state).expect("the state's resources");
    assert_eq!(view["spent"], "money_micros", "{view}");
    let spent = money(&view["used"]);
    assert!(spent >= LIMIT, "held before the limit was reached: {state}");
    // Overshot by at most one task per worker (3 members, each runs one at a time).
    let dearest = held
        .values()
        .map(|task| money(&task["used"]))
        .max()
        .unwrap_or(0);
    assert!(dearest > 0, "tasks were charged: {held:?}");
    eprintln!(
        "held after {done_when_held} of {TASKS} tasks: spent {spent} of the limit {LIMIT}, \
         the dearest task {dearest}"
    );
    assert!(
        spent < LIMIT + 3 * dearest,
        "spent {spent} passes the limit {LIMIT} by more than one task per worker ({dearest} each)"
    );
    let project = member.project(&id).expect("the project");
    assert_eq!(field(&project, "status").as_deref(), Some("running"));

    // Only the president's operator decides; approving raises the limit and the rest run.
    let id_of_request = request["id"].as_u64().expect("an id").to_string();
    let refused = member
        .cli(&["resources", "approve", &id_of_request])
        .expect_err("a member's operator may not approve");
    assert!(refused.contains("president's operator"), "{refused}");
    chief
        .cli(&[
            "resources",
            "approve",
            &id_of_request,
            "--amount",
            "100000",
            "--note",
            "budget for the plan",
        ])
        .expect("approved");
    let end = wait_for_project_end(&nodes, &id, PROJECT_LIMIT);
    assert_eq!(field(&end, "status").as_deref(), Some("completed"), "{end}");
    let decided = requests(member)
        .into_iter()
        .find(|r| r["id"] == request["id"])
        .expect("the request is kept");
    assert_eq!(decided["status"], "approved");
    assert_eq!(decided["decision"]["amount"], 100_000);

    // The spend recorded is the sum of the tasks' measured use: each task's charge is
    // what its model's reply reported, priced by its worker.
    let tasks = tasks_by_name(&nodes, &id);
    assert_eq!(tasks.len(), TASKS);
    let mut sum = 0;
    for (name, task) in &tasks {
        let charged = money(&task["used"]);
        let reported = task["usage"]["cost_micros"].as_u64().unwrap_or(0);
        assert!(charged > 0, "{name} was not charged: {task}");
        if task["attempt"] == 1 {
            assert_eq!(charged, reported, "{name}: charged what its reply reported");
        }
        // One model call per attempt that answered (an attempt lost on the way is not).
        let calls = task["used"]["api_calls"].as_u64().unwrap_or(0);
        assert!(
            (1..=task["attempt"].as_u64().unwrap_or(0)).contains(&calls),
            "{name}: {task}"
        );
        sum += charged;
    }
    let view = wait_for("the Ledger copy to show every charge", || {
        shown(member, &state).filter(|view| money(&view["used"]) == sum)
    });
    assert_eq!(view["limits"][0]["amount"], LIMIT + 100_000, "{view}");
    assert_eq!(view["spent"], Value::Null);
    let (_, body) = member
        .api_get(&format!("/api/v1/projects/{id}?usage=true"))
        .expect("the project");
    let project: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(money(&project["usage"]["used"]), sum, "{project}");
    assert!(
        chief
            .metric("aamas_resource_requests_total{resource=\"money_micros\"}")
            .is_some_and(|count| count >= 1.0),
        "the president counted the request"
    );
}

#[test]
fn a_soft_limit_reached_raises_an_alert_and_stops_nothing() {
    let llm = MockLlm::start(|_| "done".to_string());
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, chief, state) = metered_mesh(root.path(), &llm);
    let chief = &nodes[chief];
    chief
        .cli(&[
            "resources",
            "set",
            &state,
            "tokens",
            "1",
            "--per",
            "hour",
            "--soft",
        ])
        .expect("a soft limit");
    wait_for("the limit in force in the Ledger", || {
        let view = shown(chief, &state)?;
        (view["limits_in_force"].as_u64()? >= 1).then_some(())
    });
    let id = nodes[0].submit(&project(&state)).expect("submitted");
    let end = wait_for_project_end(&nodes, &id, PROJECT_LIMIT);
    assert_eq!(field(&end, "status").as_deref(), Some("completed"), "{end}");
    let alert = wait_for("the soft-limit alert", || {
        let listed: Vec<Value> =
            serde_json::from_str(&nodes[1].cli(&["alerts", "--json"]).ok()?).ok()?;
        listed
            .into_iter()
            .find(|alert| alert["metric"] == "soft_limit_tokens")
    });
    assert!(
        field(&alert, "message").is_some_and(|m| m.contains(&format!("state {state}"))),
        "{alert}"
    );
    let view = shown(chief, &state).expect("the state's resources");
    assert_eq!(
        view["spent"],
        Value::Null,
        "a soft limit holds nothing back: {view}"
    );
}

#[test]
fn a_policy_puts_limits_on_states_and_approves_small_requests_itself() {
    let llm = MockLlm::start(|seen| format!("part done: {}", seen.user.len()));
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, chief, state) = metered_mesh(root.path(), &llm);
    let chief = &nodes[chief];
    let policy = format!(
        "[resources]\napprove_up_to = {{ money_micros = 100000 }}\n\
         [[resources.limit]]\nstates = [\"{state}\"]\nresource = \"money_micros\"\n\
         amount = 300\nper = \"day\"\n"
    );
    let file = root.path().join("resources-policy.toml");
    std::fs::write(&file, policy).expect("write");
    chief
        .cli(&["policy", "apply", &file.display().to_string()])
        .expect("applied");
    // The policy's limit is on the state it names, and on no other.
    let view = wait_for("the policy's limit in force", || {
        let view = shown(chief, &state)?;
        (view["limits_in_force"].as_u64()? >= 1).then_some(view)
    });
    assert_eq!(view["limits"][0]["amount"], 300, "{view}");
    let all: Value =
        serde_json::from_str(&chief.cli(&["resources", "--json"]).expect("shown")).expect("json");
    let limited = all
        .as_array()
        .into_iter()
        .flatten()
        .filter(|view| view["limits"].as_array().is_some_and(|l| !l.is_empty()))
        .count();
    assert_eq!(limited, 1, "{all}");

    // The spent limit raises requests, which the policy approves without a person.
    let id = nodes[0].submit(&project(&state)).expect("submitted");
    let end = wait_for_project_end(&nodes, &id, PROJECT_LIMIT);
    assert_eq!(field(&end, "status").as_deref(), Some("completed"), "{end}");
    let decided = requests(chief);
    assert!(
        !decided.is_empty(),
        "the limit was reached and requests raised"
    );
    for request in &decided {
        assert_eq!(request["status"], "approved", "{request}");
        assert_eq!(request["decision"]["by"], "policy", "{request}");
    }
    let allowed = "aamas_policy_decisions_total{at=\"resource_request\",rule=\"approve_up_to\",outcome=\"allowed\"}";
    assert!(
        chief
            .metric(allowed)
            .is_some_and(|count| count >= decided.len() as f64),
        "each approval counted"
    );
}

#[test]
fn competing_requests_get_the_policy_pool_by_state_priority() {
    let llm = MockLlm::start(|seen| format!("part done: {}", seen.user.len()));
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, chief, _) = metered_mesh(root.path(), &llm);
    let chief = &nodes[chief];
    let governed = agreed_governors(&nodes.iter().collect::<Vec<_>>()).expect("governors");
    assert!(governed.len() >= 2, "two governed states: {governed:?}");
    let (first, second) = (governed[0].0.clone(), governed[1].0.clone());
    // Both states get a limit a single task spends, and no approval by policy yet.
    let limits = format!(
        "[[resources.limit]]\nstates = [\"{first}\", \"{second}\"]\n\
         resource = \"money_micros\"\namount = 100\nper = \"day\"\n"
    );
    let file = root.path().join("limits.toml");
    std::fs::write(&file, &limits).expect("write");
    chief
        .cli(&["policy", "apply", &file.display().to_string()])
        .expect("applied");
    for state in [&first, &second] {
        wait_for("the limit in force", || {
            let view = shown(chief, state)?;
            (view["limits_in_force"].as_u64()? >= 1).then_some(())
        });
    }
    let ids: Vec<String> = [&first, &second]
        .iter()
        .map(|state| {
            nodes[0]
                .submit(&project(state).replace("\"metered\"", &format!("\"metered-{state}\"")))
                .expect("submitted")
        })
        .collect();
    // Both spend their limit and ask for 100 more: two requests compete.
    let open = |state: &str| {
        requests(chief)
            .into_iter()
            .find(|request| request["state"] == state && request["status"] == "open")
    };
    let one = wait_for("the first state's request", || open(&first));
    let other = wait_for("the second state's request", || open(&second));
    // The newer request's state gets the priority: priority, not age, must decide.
    let newer_is_other = other["id"].as_u64() > one["id"].as_u64();
    let (favoured_request, waiting_request) = if newer_is_other {
        (other, one)
    } else {
        (one, other)
    };
    let favoured = field(&favoured_request, "state").expect("state");
    let ids = if newer_is_other {
        ids
    } else {
        ids.into_iter().rev().collect()
    };
    // A pool of 150 a day covers one of them: the favoured state's priority wins it.
    let pooled = format!(
        "[resources]\napprove_up_to = {{ money_micros = 1000 }}\n\
         pool = {{ money_micros = 150 }}\npool_per = \"day\"\n\
         priority = {{ {favoured} = 10 }}\n{limits}"
    );
    std::fs::write(&file, pooled).expect("write");
    chief
        .cli(&["policy", "apply", &file.display().to_string()])
        .expect("applied");
    let decided = wait_for("the favoured state's request approved by policy", || {
        requests(chief).into_iter().find(|request| {
            request["id"] == favoured_request["id"] && request["status"] == "approved"
        })
    });
    assert_eq!(decided["decision"]["by"], "policy", "{decided}");
    // The older request waits: the pool has 50 left, it asks for 100.
    let still = requests(chief)
        .into_iter()
        .find(|request| request["id"] == waiting_request["id"])
        .expect("kept");
    assert_eq!(still["status"], "open", "{still}");
    let approved_by_policy = requests(chief)
        .iter()
        .filter(|request| request["decision"]["by"] == "policy")
        .map(|request| request["decision"]["amount"].as_u64().unwrap_or(0))
        .sum::<u64>();
    assert!(
        approved_by_policy <= 150,
        "the pool was overdrawn: {approved_by_policy}"
    );
    let referred =
        "aamas_policy_decisions_total{at=\"resource_request\",rule=\"pool\",outcome=\"referred\"}";
    assert!(
        chief.metric(referred).is_some_and(|count| count >= 1.0),
        "the pool's refusal was counted"
    );
    // A person can still decide past the pool; the other state's next request waits for
    // the pool to renew (tomorrow), so its project stays held.
    let id = waiting_request["id"].as_u64().expect("id").to_string();
    chief
        .cli(&["resources", "approve", &id, "--amount", "100000"])
        .expect("approved by hand");
    let decided = requests(chief)
        .into_iter()
        .find(|request| request["id"] == waiting_request["id"])
        .expect("kept");
    assert_eq!(decided["status"], "approved", "{decided}");
    assert_eq!(decided["decision"]["by"], "operator", "{decided}");
    let end = wait_for_project_end(&nodes, &ids[0], PROJECT_LIMIT);
    assert_eq!(field(&end, "status").as_deref(), Some("completed"), "{end}");
}

fn cpu_ms(value: &Value) -> u64 {
    value["cpu_ms"].as_u64().unwrap_or(0)
}

/// One shell task `name` running `command`, in a project of its own.
fn shell_project(name: &str, command: &str, timeout_secs: u32) -> String {
    format!(
        "name = \"{name}\"\n[[phase]]\nname = \"development\"\n  [[phase.task]]\n  \
         name = \"{name}\"\n  state = \"technical\"\n  executor = \"shell\"\n  \
         command = \"{command}\"\n  timeout_secs = {timeout_secs}\n  retries = 0\n"
    )
}

#[test]
fn failed_and_timed_out_attempts_are_charged_the_cpu_time_they_used() {
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, _) = start_hierarchy(root.path(), 3);
    // A task that computes for a while and then fails on its merits, and one that
    // spins until each of its attempts times out (and is escalated and reopened).
    let failing = nodes[0]
        .submit(&shell_project(
            "fails",
            "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; exit 3",
            60,
        ))
        .expect("submitted");
    let spinning = nodes[0]
        .submit(&shell_project("spins", "while :; do :; done", 2))
        .expect("submitted");
    let mut charged = 0;
    for id in [&failing, &spinning] {
        let end = wait_for_project_end(&nodes, id, PROJECT_LIMIT);
        assert_eq!(field(&end, "status").as_deref(), Some("failed"), "{end}");
        let tasks = wait_for("the task's attempts to end", || {
            let tasks = all_tasks(&nodes, id);
            let over = tasks.values().all(|task| {
                matches!(
                    field(task, "status").as_deref(),
                    Some("failed" | "escalated")
                )
            });
            (tasks.len() == 1 && over).then_some(tasks)
        });
        for task in tasks.values() {
            let used = cpu_ms(&task["used"]);
            // At least a tenth of what the loop takes on an idle core.
            assert!(used >= 50, "a failed attempt was not charged: {task}");
            charged += used;
        }
    }
    // The workers' performance figures count those attempts, and the mesh's the two
    // failed phases (each project left initiation to design behind).
    let figures: Vec<Value> = nodes
        .iter()
        .map(|node| {
            serde_json::from_str(&node.cli(&["performance", "--json"]).expect("performance"))
                .expect("json")
        })
        .collect();
    let shell: Vec<Value> = figures
        .iter()
        .flat_map(|view| view["executors"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["executor"] == "shell")
        .collect();
    let total = |key: &str| {
        shell
            .iter()
            .map(|e| e[key].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    assert!(total("failed") >= 1, "{figures:?}");
    assert!(total("timed_out") >= 1, "{figures:?}");
    assert_eq!(total("succeeded"), 0, "{figures:?}");
    assert!(
        shell
            .iter()
            .any(|e| e["cpu_seconds"].as_f64().unwrap_or(0.0) > 0.0),
        "{figures:?}"
    );
    let mesh = &figures[0]["mesh"];
    assert_eq!(mesh["projects_failed"], 2, "{mesh}");
    // Their run times come from the Registry: every node shows both.
    for view in &figures {
        let failed = &view["mesh"]["failed_seconds"];
        assert_eq!(failed["count"], 2, "{view}");
        assert!(
            failed["max"].as_f64().is_some_and(|max| max > 0.0),
            "{view}"
        );
    }
    assert_eq!(mesh["transitions_failed"], 2, "{mesh}");
    assert_eq!(mesh["transitions_passed"], 8, "{mesh}");
    let metric = |name: &str| -> f64 { nodes.iter().filter_map(|node| node.metric(name)).sum() };
    assert!(
        metric("aamas_phase_transitions_total{outcome=\"failed\"}") >= 2.0,
        "the president counted no failed transition"
    );
    assert!(
        metric("aamas_project_seconds_count{status=\"failed\"}") >= 2.0,
        "the president timed no failed project"
    );
    // Every state's account together holds what the tasks were charged.
    wait_for("the accounts to hold every charge", || {
        let shown: Value =
            serde_json::from_str(&nodes[0].cli(&["resources", "--json"]).ok()?).ok()?;
        let accounts: u64 = shown
            .as_array()?
            .iter()
            .map(|view| cpu_ms(&view["used"]))
            .sum();
        (accounts == charged).then_some(())
    });
}

#[test]
fn a_limit_on_each_worker_passes_spent_workers_over_until_the_policy_lifts_it() {
    let llm = MockLlm::start(|seen| format!("part done: {}", seen.user.len()));
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, chief, state) = metered_mesh(root.path(), &llm);
    let chief = &nodes[chief];
    // A task here costs about 150 millionths: each worker runs about two of the state's
    // tasks before its own limit is spent.
    const LIMIT: u64 = 200;
    let apply = |name: &str, amount: u64| {
        let file = root.path().join(name);
        let policy = format!(
            "[[resources.limit]]\nstates = [\"{state}\"]\nof = \"worker\"\n\
             resource = \"money_micros\"\namount = {amount}\nper = \"total\"\n"
        );
        std::fs::write(&file, policy).expect("write");
        chief
            .cli(&["policy", "apply", &file.display().to_string()])
            .expect("applied")
    };
    apply("per-worker.toml", LIMIT);
    let version = |node: &Node| -> Option<u64> {
        let shown: Value =
            serde_json::from_str(&node.cli(&["policy", "show", "--json"]).ok()?).ok()?;
        shown.get("version")?.as_u64()
    };
    wait_for("the policy on every node", || {
        nodes
            .iter()
            .all(|node| version(node).is_some_and(|v| v >= 2))
            .then_some(())
    });
    let id = nodes[0].submit(&project(&state)).expect("submitted");
    // Every worker spends its limit; then nothing is dispatched though tasks wait.
    let spent_by_worker = |view: &Value| -> BTreeMap<String, u64> {
        view["workers"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(worker, used)| (worker.clone(), money(used)))
            .collect()
    };
    let held = wait_for("every worker to spend its limit", || {
        let view = shown(chief, &state)?;
        let by_worker = spent_by_worker(&view);
        let tasks = tasks_by_name(&nodes, &id);
        let running = tasks
            .values()
            .any(|task| field(task, "status").as_deref() == Some("assigned"));
        (by_worker.len() == nodes.len()
            && by_worker.values().all(|used| *used >= LIMIT)
            && tasks.len() == TASKS
            && !running)
            .then_some((by_worker, tasks))
    });
    let (by_worker, tasks) = held;
    let done = tasks
        .values()
        .filter(|task| field(task, "status").as_deref() == Some("succeeded"))
        .count();
    assert!(
        (nodes.len()..TASKS).contains(&done),
        "{done} of {TASKS} ran before every worker spent its limit"
    );
    let dearest = tasks
        .values()
        .map(|task| money(&task["used"]))
        .max()
        .unwrap_or(0);
    assert!(dearest > 0, "tasks were charged");
    for (worker, used) in &by_worker {
        // Each worker runs one of the state's tasks at a time under such a limit.
        assert!(
            *used < LIMIT + dearest,
            "{worker} spent {used}, past {LIMIT} by more than one task ({dearest})"
        );
    }
    // `aamas resources` names the workers that spent it.
    let view = shown(chief, &state).expect("the state's resources");
    assert_eq!(view["scoped"][0]["of"], "worker", "{view}");
    let spent_by = view["scoped"][0]["spent_by"].as_array().map_or(0, Vec::len);
    assert_eq!(spent_by, nodes.len(), "{view}");
    let project = chief.project(&id).expect("the project");
    assert_eq!(field(&project, "status").as_deref(), Some("running"));
    // A policy that lifts the limit lets the rest run.
    apply("lifted.toml", 1_000_000);
    let end = wait_for_project_end(&nodes, &id, PROJECT_LIMIT);
    assert_eq!(field(&end, "status").as_deref(), Some("completed"), "{end}");
}

#[test]
fn memory_and_storage_are_measured_and_a_storage_limit_holds_a_state() {
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, president) = start_hierarchy(root.path(), 3);
    let chief = &nodes[index_of(&nodes, &president)];
    let state = governed_state(&nodes);
    // Each task keeps 5,000 bytes of output and holds its processes' memory a second.
    const OUTPUT: u64 = 5_000;
    const LIMIT: u64 = 6_000;
    const COUNT: u64 = 8;
    chief
        .cli(&[
            "resources",
            "set",
            &state,
            "storage_bytes",
            &LIMIT.to_string(),
            "--per",
            "total",
        ])
        .expect("a storage limit");
    wait_for("the limit in force in the Ledger", || {
        let view = shown(chief, &state)?;
        let version = view["limits_version"].as_u64()?;
        (version >= 1 && view["limits_in_force"].as_u64() == Some(version)).then_some(())
    });
    let mut spec = String::from("name = \"stored\"\n[[phase]]\nname = \"development\"\n");
    for i in 0..COUNT {
        spec.push_str(&format!(
            "  [[phase.task]]\n  name = \"s{i}\"\n  state = \"{state}\"\n  \
             executor = \"shell\"\n  command = \"head -c {OUTPUT} /dev/zero | tr -c x x; \
             sleep 1\"\n  timeout_secs = 30\n"
        ));
    }
    let id = nodes[0].submit(&spec).expect("submitted");
    let request = wait_for("a ResourceRequest for storage", || {
        requests(chief)
            .into_iter()
            .find(|request| request["status"] == "open" && request["resource"] == "storage_bytes")
    });
    let held = wait_for("the attempts in flight to finish", || {
        let tasks = tasks_by_name(&nodes, &id);
        let running = tasks
            .values()
            .any(|task| field(task, "status").as_deref() == Some("assigned"));
        (tasks.len() == COUNT as usize && !running).then_some(tasks)
    });
    let done: Vec<&Value> = held
        .values()
        .filter(|task| field(task, "status").as_deref() == Some("succeeded"))
        .collect();
    assert!(
        !done.is_empty() && done.len() < COUNT as usize,
        "{} of {COUNT} ran before the limit held the rest",
        done.len()
    );
    for task in &done {
        assert_eq!(task["used"]["storage_bytes"], OUTPUT, "{task}");
        let memory = task["used"]["memory_kib_s"].as_u64().unwrap_or(0);
        assert!(
            memory >= 200,
            "{memory} KiB-s for a second of a shell: {task}"
        );
    }
    // The state's account is the sum of its tasks', and passes the limit by at most one
    // task per worker.
    let view = shown(chief, &state).expect("the state's resources");
    let stored = view["used"]["storage_bytes"].as_u64().unwrap_or(0);
    assert_eq!(stored, OUTPUT * done.len() as u64, "{view}");
    assert!(stored < LIMIT + 3 * OUTPUT, "{view}");
    assert_eq!(view["spent"], "storage_bytes", "{view}");
    // Approved: the rest run.
    let id_of_request = request["id"].as_u64().expect("an id").to_string();
    chief
        .cli(&["resources", "approve", &id_of_request, "--amount", "100000"])
        .expect("approved");
    let end = wait_for_project_end(&nodes, &id, PROJECT_LIMIT);
    assert_eq!(field(&end, "status").as_deref(), Some("completed"), "{end}");
    let view = wait_for("every task charged", || {
        let view = shown(chief, &state)?;
        (view["used"]["storage_bytes"].as_u64()? == OUTPUT * COUNT).then_some(view)
    });
    assert!(view["used"]["memory_kib_s"].as_u64().unwrap_or(0) >= 200 * COUNT);
}
