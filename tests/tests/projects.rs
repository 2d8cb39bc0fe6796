//! Projects through a mesh of real `aamas` processes: the template through all eight
//! phases, with and without the death of the president, a governor and a worker (whose
//! lost task the president reassigns); a task that always fails ends as an escalation
//! that fails the phase; a malformed spec is refused with its line. The seed's system,
//! governor and agent routes answer (seed §10.1).

use std::time::Duration;

use aamas_tests::*;
use serde_json::Value;

/// How long a project may take here (debug build, loaded CI machine).
const PROJECT_LIMIT: Duration = Duration::from_secs(240);

fn template() -> String {
    let output = aamas(&["project", "template"]);
    assert!(output.status.success());
    String::from_utf8(output.stdout).expect("utf-8")
}

/// Every phase done with all its tasks; every task has exactly one committed result,
/// held by exactly one state.
fn assert_completed(nodes: &[Node], id: &str, project: &Value) {
    assert_eq!(
        field(project, "status").as_deref(),
        Some("completed"),
        "{project}"
    );
    let phases = project["phases"].as_array().expect("phases");
    assert_eq!(phases.len(), 8);
    let mut expected = 0;
    for phase in phases {
        assert_eq!(field(phase, "status").as_deref(), Some("done"), "{phase}");
        assert_eq!(phase["tasks_done"], phase["tasks_total"], "{phase}");
        expected += phase["tasks_total"].as_u64().expect("total");
    }
    let tasks = all_tasks(nodes, id);
    let mut names: Vec<&String> = tasks.keys().map(|(_, name)| name).collect();
    names.sort();
    names.dedup();
    assert_eq!(
        names.len() as u64,
        expected,
        "every task in exactly one state: {tasks:?}"
    );
    assert_eq!(
        tasks.len() as u64,
        expected,
        "no task in two states: {tasks:?}"
    );
    for task in tasks.values() {
        assert_eq!(
            field(task, "status").as_deref(),
            Some("succeeded"),
            "{task}"
        );
        assert_eq!(task["result"].as_str().map(str::len), Some(64), "{task}");
    }
}

#[test]
fn five_nodes_complete_the_template_through_eight_phases() {
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, _) = start_hierarchy(root.path(), 5);
    let id = nodes[3].submit(&template()).expect("submit");
    let project = wait_for_project_end(&nodes, &id, PROJECT_LIMIT);
    assert_completed(&nodes, &id, &project);
}

#[test]
fn the_project_survives_the_president_and_then_a_governor() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut nodes, president) = start_hierarchy(root.path(), 5);
    let id = nodes[0].submit(&template()).expect("submit");
    // Mid-phase: once the project is past initiation, kill -9 the president.
    wait_for("the project to reach requirements", || {
        let project = nodes.iter().find_map(|node| node.project(&id))?;
        (field(&project, "phase").as_deref() == Some("requirements")).then_some(())
    });
    let (successor, _) = kill_president(&mut nodes, &president, 5);
    // Then a governor that is not the president.
    wait_for("the project to reach development", || {
        let project = nodes.iter().find_map(|node| node.project(&id))?;
        let phase = field(&project, "phase")?;
        ["development", "testing"]
            .contains(&phase.as_str())
            .then_some(())
    });
    let governed = agreed_governors(&nodes.iter().collect::<Vec<_>>()).expect("governors");
    let (_, governor, _) = governed
        .into_iter()
        .find(|(_, governor, _)| *governor != successor)
        .expect("a governor that is not the president");
    let index = index_of(&nodes, &governor);
    nodes[index].kill();
    let project = wait_for_project_end(&nodes, &id, PROJECT_LIMIT);
    // The killed governor's node holds copies of its states' Ledgers too: restart it so
    // that every state's tasks can be read.
    let dir = nodes[index].dir.clone();
    nodes[index] = Node::start(&dir, None);
    wait_for("the restarted governor node to answer", || {
        nodes[index].status()
    });
    assert_completed(&nodes, &id, &project);
}

#[test]
fn a_worker_killed_mid_task_has_its_task_reassigned() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut nodes, president) = start_hierarchy(root.path(), 5);
    let spec = r#"
name = "slow"
[[phase]]
name = "development"
  [[phase.task]]
  name = "long-build"
  state = "technical"
  executor = "builtin"
  action = "sleep:4000"
  timeout_secs = 20
  retries = 0
"#;
    let id = nodes[0].submit(spec).expect("submit");
    // Find the worker running it, and kill it (unless it is the president: then this
    // test would be the president test; pick the spec's worker whoever it is).
    let worker = wait_for("the task to be assigned", || {
        all_tasks(&nodes, &id)
            .into_values()
            .find(|task| field(task, "status").as_deref() == Some("assigned"))
            .and_then(|task| field(&task, "worker"))
    });
    let index = index_of(&nodes, &worker);
    nodes[index].kill();
    if worker == president {
        wait_for("a new president", || {
            let alive = all_but(&nodes, index);
            agreed_president(&alive, 5).filter(|p| *p != president)
        });
    }
    let project = wait_for_project_end(&nodes, &id, PROJECT_LIMIT);
    assert_eq!(
        field(&project, "status").as_deref(),
        Some("completed"),
        "{project}"
    );
    let dir = nodes[index].dir.clone();
    nodes[index] = Node::start(&dir, None);
    wait_for("the restarted worker to answer", || nodes[index].status());
    let task = wait_for("the task's record", || {
        all_tasks(&nodes, &id)
            .into_values()
            .find(|t| field(t, "name").as_deref() == Some("long-build"))
    });
    assert_eq!(
        field(&task, "status").as_deref(),
        Some("succeeded"),
        "{task}"
    );
    assert!(task["attempt"].as_u64() >= Some(2), "reassigned: {task}");
    assert_ne!(
        field(&task, "worker"),
        Some(worker),
        "it ran elsewhere: {task}"
    );
}

#[test]
fn a_task_that_always_fails_is_escalated_and_fails_the_phase() {
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, _) = start_hierarchy(root.path(), 3);
    let spec = r#"
name = "doomed"
[[phase]]
name = "testing"
  [[phase.task]]
  name = "flaky-suite"
  state = "technical"
  executor = "shell"
  command = "echo the suite is broken >&2; exit 3"
  timeout_secs = 10
  retries = 1
"#;
    let id = nodes[1].submit(spec).expect("submit");
    let project = wait_for_project_end(&nodes, &id, PROJECT_LIMIT);
    assert_eq!(
        field(&project, "status").as_deref(),
        Some("failed"),
        "{project}"
    );
    let reason = field(&project, "reason").unwrap_or_default();
    assert!(reason.contains("flaky-suite"), "{reason}");
    assert!(reason.contains("phase testing failed"), "{reason}");
    let testing = project["phases"]
        .as_array()
        .and_then(|phases| {
            phases
                .iter()
                .find(|p| field(p, "name").as_deref() == Some("testing"))
        })
        .cloned()
        .expect("testing phase");
    assert_eq!(field(&testing, "status").as_deref(), Some("failed"));
    assert_eq!(testing["tasks_failed"].as_u64(), Some(1), "{testing}");
    let task = all_tasks(&nodes, &id)
        .into_values()
        .next()
        .expect("the task");
    assert_eq!(
        field(&task, "status").as_deref(),
        Some("escalated"),
        "{task}"
    );
    assert_eq!(task["attempt"].as_u64(), Some(2), "one retry: {task}");
}

#[test]
fn a_malformed_spec_is_refused_with_its_line_and_nothing_is_submitted() {
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, _) = start_mesh(root.path(), 1);
    let spec = "name = \"bad\"\n[[phase]]\nname = \"nonsense-phase\"\n";
    let error = nodes[0].submit(spec).expect_err("a bad spec is refused");
    assert!(error.contains("line 3"), "{error}");
    let (_, body) = nodes[0].api_get("/api/v1/projects").expect("projects");
    assert_eq!(body.trim(), "[]", "nothing was submitted");
    // The API tells the request's fault by its status: a bad spec, an unknown project,
    // an unknown action.
    let (status, body) = nodes[0]
        .api_request("POST", "/api/v1/projects", &[], spec)
        .expect("the API answers");
    assert!(status.contains(" 400 "), "{status}: {body}");
    assert!(body.contains("line 3"), "{body}");
    let (status, body) = nodes[0]
        .api_request(
            "PUT",
            "/api/v1/projects/0123456789abcdef/phase",
            &[("Content-Type", "application/json")],
            r#"{"action": "hold"}"#,
        )
        .expect("the API answers");
    assert!(status.contains(" 404 "), "{status}: {body}");
    assert!(body.contains("no project 0123456789abcdef"), "{body}");
    let id = nodes[0].submit(&template()).expect("a good spec is taken");
    let (status, body) = nodes[0]
        .api_request(
            "PUT",
            &format!("/api/v1/projects/{id}/phase"),
            &[("Content-Type", "application/json")],
            r#"{"action": "skip"}"#,
        )
        .expect("the API answers");
    assert!(status.contains(" 400 "), "{status}: {body}");
    assert!(body.contains("unknown action"), "{body}");
}

/// A submission retried with the same request id (an answer lost to a timeout or a
/// failover) is the first project again, never a second one; another request id is
/// another project.
#[test]
fn a_submission_retried_with_its_request_id_is_one_project() {
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, president) = start_mesh(root.path(), 2);
    // Through the member that is not the president, so the request is forwarded.
    let member = &nodes[(index_of(&nodes, &president) + 1) % nodes.len()];
    let spec = template();
    let submit = |request: &str| {
        let (status, body) = member
            .api_request(
                "POST",
                "/api/v1/projects",
                &[("Idempotency-Key", request)],
                &spec,
            )
            .expect("the API answers");
        assert!(status.contains("201"), "{status}: {body}");
        let answer: Value = serde_json::from_str(&body).expect("json");
        field(&answer, "id").expect("an id")
    };
    let first = submit("retry-1");
    let again = submit("retry-1");
    let other = submit("retry-2");
    assert_eq!(first, again);
    assert_ne!(first, other);
    // The member's copy of the Registry may be a moment behind the president's.
    let ids = wait_for("both projects in the member's Registry", || {
        let (_, listed) = member.api_get("/api/v1/projects")?;
        let listed: Vec<Value> = serde_json::from_str(&listed).ok()?;
        let mut ids: Vec<String> = listed.iter().filter_map(|p| field(p, "id")).collect();
        ids.sort();
        (ids.len() >= 2).then_some(ids)
    });
    let mut expected = vec![first, other];
    expected.sort();
    assert_eq!(ids, expected);
    let (status, body) = member
        .api_request(
            "POST",
            "/api/v1/projects",
            &[("Idempotency-Key", "not a plain word")],
            &spec,
        )
        .expect("the API answers");
    assert!(status.contains("400"), "{status}: {body}");
}

#[test]
fn the_seeds_system_governor_and_agent_routes_answer() {
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, president) = start_hierarchy(root.path(), 3);
    let chief = &nodes[index_of(&nodes, &president)];
    let token = chief.api_token().expect("the token");
    let call = |token: &str, method: &str, path: &str, body: &str| -> (u16, Value) {
        let json = [("Content-Type", "application/json")];
        let headers: &[(&str, &str)] = if body.starts_with('{') { &json } else { &[] };
        let (code, _, text) = chief
            .api_exchange(Some(token), method, path, headers, body.as_bytes())
            .unwrap_or_else(|| panic!("{method} {path}: no answer"));
        (
            code,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    };
    // The mesh in one JSON summary.
    let (code, summary) = call(&token, "GET", "/api/v1/system/metrics", "");
    assert_eq!(code, 200, "{summary}");
    assert_eq!(summary["members"], 3, "{summary}");
    assert_eq!(summary["president"], president.as_str(), "{summary}");
    // A governor by its state's name, or by its own peer id.
    let (state, governor, _) = agreed_governors(&nodes.iter().collect::<Vec<_>>())
        .and_then(|governed| governed.into_iter().next())
        .expect("a governed state");
    let (code, by_state) = call(
        &token,
        "GET",
        &format!("/api/v1/governors/{state}/status"),
        "",
    );
    assert_eq!(code, 200, "{by_state}");
    assert_eq!(by_state["name"], state.as_str(), "{by_state}");
    let (code, by_peer) = call(
        &token,
        "GET",
        &format!("/api/v1/governors/{governor}/status"),
        "",
    );
    assert_eq!(
        (code, &by_peer["name"]),
        (200, &by_state["name"]),
        "{by_peer}"
    );
    let (code, unknown) = call(&token, "GET", "/api/v1/governors/atlantis/status", "");
    assert_eq!(code, 404, "{unknown}");
    // Tasks handed to a governor run in its state, as a project of their own.
    let tasks = "[[task]]\nname = \"a\"\nexecutor = \"builtin\"\naction = \"digest\"\n\
                 input = \"one\"\n[[task]]\nname = \"b\"\nexecutor = \"builtin\"\n\
                 action = \"digest\"\ninput = \"two\"\n";
    let (code, created) = call(
        &token,
        "POST",
        &format!("/api/v1/governors/{state}/tasks"),
        tasks,
    );
    assert_eq!(code, 201, "{created}");
    let id = created["id"].as_str().expect("an id").to_string();
    let end = wait_for_project_end(&nodes, &id, PROJECT_LIMIT);
    assert_eq!(field(&end, "status").as_deref(), Some("completed"), "{end}");
    for task in all_tasks(&nodes, &id).values() {
        assert_eq!(
            field(task, "state").as_deref(),
            Some(state.as_str()),
            "{task}"
        );
    }
    // The state's tasks, by project and name, in pages that follow one another.
    let (code, listed) = call(
        &token,
        "GET",
        &format!("/api/v1/governors/{state}/tasks"),
        "",
    );
    assert_eq!(code, 200, "{listed}");
    let names: Vec<&str> = listed
        .as_array()
        .into_iter()
        .flatten()
        .filter(|row| row["project"] == id.as_str())
        .inspect(|row| {
            assert_eq!(row["task"]["state"], state.as_str(), "{row}");
            assert_eq!(row["task"]["status"], "succeeded", "{row}");
        })
        .filter_map(|row| row["task"]["name"].as_str())
        .collect();
    assert_eq!(names, ["a", "b"], "{listed}");
    let mut path = format!("/api/v1/governors/{state}/tasks?limit=1");
    let mut paged = Vec::new();
    for _ in 0..10 {
        let (code, headers, body) = chief
            .api_exchange_headers(Some(&token), "GET", &path, &[], b"")
            .expect("the API answers");
        assert_eq!(code, 200, "{body}");
        let rows: Vec<Value> = serde_json::from_str(&body).expect("JSON");
        assert_eq!(rows.len(), 1, "{body}");
        paged.push(
            rows[0]["task"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
        let next = headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("link"))
            .and_then(|(_, link)| Some(link.split_once('<')?.1.split_once('>')?.0.to_string()));
        match next {
            Some(next) => path = next,
            None => break,
        }
    }
    assert_eq!(paged, ["a", "b"], "one task a page, then no next link");
    let placed = "[[task]]\nname = \"a\"\nstate = \"market\"\nexecutor = \"builtin\"\n\
                  action = \"digest\"\n";
    let (code, refused) = call(
        &token,
        "POST",
        &format!("/api/v1/governors/{state}/tasks"),
        placed,
    );
    assert_eq!(code, 400, "{refused}");
    // Its performance: the attempts charged (each kept a digest) and its open alerts.
    let (code, figures) = call(
        &token,
        "GET",
        &format!("/api/v1/governors/{state}/performance"),
        "",
    );
    assert_eq!(code, 200, "{figures}");
    assert!(
        figures["resources"]["attempts"]
            .as_u64()
            .is_some_and(|n| n >= 2),
        "{figures}"
    );
    // A limit set through the governor is the state's.
    let limit = r#"{"resource": "tokens", "amount": 1000, "per": "day"}"#;
    let (code, set) = call(
        &token,
        "PUT",
        &format!("/api/v1/governors/{state}/resources"),
        limit,
    );
    assert_eq!(code, 200, "{set}");
    let (_, resources) = call(&token, "GET", "/api/v1/resources", "");
    let limited = resources
        .as_array()
        .into_iter()
        .flatten()
        .find(|view| view["state"] == state.as_str())
        .map(|view| view["limits"].clone())
        .expect("the state's resources");
    assert_eq!(limited[0]["resource"], "tokens", "{limited}");
    // Commands to the agents: a finished project cannot be held; an unknown command is
    // a 422; an operator's token may not evict.
    let hold = format!(r#"{{"command": "hold", "project": "{id}"}}"#);
    let (code, held) = call(&token, "POST", "/api/v1/agents/command", &hold);
    assert!((400..500).contains(&code), "{code} {held}");
    let (code, unknown) = call(
        &token,
        "POST",
        "/api/v1/agents/command",
        r#"{"command": "launch"}"#,
    );
    assert_eq!(code, 422, "{unknown}");
    let (code, created) = call(
        &token,
        "POST",
        "/api/v1/api-tokens",
        r#"{"name": "op", "scope": "operate"}"#,
    );
    assert_eq!(code, 200, "{created}");
    let operator = created["token"].as_str().expect("the token").to_string();
    let evict = format!(r#"{{"command": "evict", "member": "{governor}"}}"#);
    let (code, forbidden) = call(&operator, "POST", "/api/v1/agents/command", &evict);
    assert_eq!(code, 403, "{forbidden}");
    let (code, missing) = call(
        &operator,
        "POST",
        "/api/v1/agents/command",
        r#"{"command": "ack", "alert": 99}"#,
    );
    assert_eq!(code, 404, "{missing}");
}
