//! Phase gates and LLM workers between real processes, against a local
//! OpenAI-compatible server the test starts (`aamas_tests::llm::MockLlm`): a review
//! that rejects a task sends it back with the feedback and the second round passes; a
//! task reads its dependency's output as context and through `{{ outputs.NAME }}`;
//! role prompts reach the model; token use and cost are kept per task; a human gate
//! holds a project until `aamas project approve`, and `reject` fails it with the note.

use std::time::{Duration, Instant};

use aamas_tests::llm::{MockLlm, Seen};
use aamas_tests::*;
use serde_json::Value;

const PROJECT_LIMIT: Duration = Duration::from_secs(240);

/// `aamas project artifacts ID TASK` on `node`, as text.
fn artifact(node: &Node, id: &str, task: &str) -> String {
    let output = aamas(&[
        "project",
        "artifacts",
        "--data-dir",
        &node.dir.display().to_string(),
        id,
        task,
    ]);
    assert!(
        output.status.success(),
        "artefact {task}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("text")
}

/// `aamas project ACTION ID [--note NOTE] --json` on `node`: the answer or the error.
fn decide(node: &Node, action: &str, id: &str, note: &str) -> Result<Value, String> {
    let output = aamas(&[
        "project",
        action,
        "--data-dir",
        &node.dir.display().to_string(),
        "--json",
        "--note",
        note,
        id,
    ]);
    if output.status.success() {
        serde_json::from_slice(&output.stdout).map_err(|error| error.to_string())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// Waits until some node shows the project with `status`; panics if it ends otherwise.
fn wait_status(nodes: &[Node], id: &str, status: &str) -> Value {
    let deadline = Instant::now() + PROJECT_LIMIT;
    loop {
        for node in nodes {
            if let Some(project) = node.project(id) {
                let now = field(&project, "status").unwrap_or_default();
                if now == status {
                    return project;
                }
                assert!(
                    !(now == "completed" || now == "failed"),
                    "project {id} ended {now} while waiting for {status}: {project}"
                );
            }
        }
        assert!(Instant::now() < deadline, "project {id} was never {status}");
        std::thread::sleep(POLL);
    }
}

/// The mock's rule: a review rejects `tests` in round 1 and approves in round 2; any
/// other task gets back the prompt it sent, so its artefact shows what it received.
fn scripted(seen: &Seen) -> String {
    if seen.system.contains("You review") {
        if seen.user.contains("review round 1 of 2") {
            r#"Verdict: {"approved": false, "feedback": "MISSING-TESTS: cover the error cases", "reopen": ["tests"]}"#.into()
        } else {
            r#"{"approved": true, "feedback": "complete"}"#.into()
        }
    } else {
        format!("WORK[{}]", seen.user)
    }
}

const GATED: &str = r#"
name = "gated"
[prompts]
technical = "You are ROLE-TECHNICAL."
[[phase]]
name = "design"
gate = "llm"
acceptance = ["the design comes with tests"]
review_rounds = 2
  [[phase.task]]
  name = "design-doc"
  state = "technical"
  executor = "llm"
  input = "Write the design of a URL shortener"
  [[phase.task]]
  name = "tests"
  state = "technical"
  executor = "llm"
  input = "Write the test plan"
  context = ["design-doc"]
  depends_on = ["design-doc"]
[[phase]]
name = "development"
  [[phase.task]]
  name = "code"
  state = "technical"
  executor = "llm"
  input = "Implement it against this plan: {{ outputs.tests }}"
"#;

#[test]
fn a_rejected_review_sends_a_task_back_with_its_feedback_and_the_second_round_passes() {
    let llm = MockLlm::start(scripted);
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, _) = start_hierarchy_env(root.path(), 5, &llm.env());
    let id = nodes[0].submit(GATED).expect("submitted");
    let end = wait_for_project_end(&nodes, &id, PROJECT_LIMIT);
    assert_eq!(field(&end, "status").as_deref(), Some("completed"), "{end}");

    let (_, body) = nodes[1]
        .api_get(&format!("/api/v1/projects/{id}?usage=true"))
        .expect("the project");
    let project: Value = serde_json::from_str(&body).expect("json");
    let reviews = phase(&project, "design")["reviews"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(reviews.len(), 2, "two rounds: {project}");
    assert_eq!(reviews[0]["approved"], false);
    assert_eq!(reviews[0]["reopen"], serde_json::json!(["tests"]));
    assert!(
        reviews[0]["feedback"]
            .as_str()
            .unwrap_or("")
            .contains("MISSING-TESTS")
    );
    assert_eq!(reviews[1]["approved"], true);

    // The dependency's output reached `tests` as context.
    let tests = artifact(&nodes[2], &id, "tests");
    assert!(
        tests.contains("=== Output of task design-doc ==="),
        "{tests}"
    );
    assert!(
        tests.contains("WORK[Write the design of a URL shortener"),
        "{tests}"
    );
    // The revision got the feedback and its earlier output.
    let revised = artifact(&nodes[3], &id, "tests--r2");
    assert!(
        revised.contains("MISSING-TESTS: cover the error cases"),
        "{revised}"
    );
    assert!(revised.contains("Your earlier output:\nWORK["), "{revised}");
    // A later phase reads the newest revision where it names `tests`.
    let code = artifact(&nodes[4], &id, "code");
    assert!(code.contains("MISSING-TESTS"), "{code}");

    // Role prompts reached the model.
    let seen = llm.seen();
    assert!(
        seen.iter()
            .any(|request| request.system == "You are ROLE-TECHNICAL."),
        "{seen:?}"
    );
    // Model use is kept per task and summed per project, with the configured prices.
    let usage = &project["usage"];
    for task in [
        "design-doc",
        "tests",
        "tests--r2",
        "code",
        "gate-review-design-1",
        "gate-review-design-2",
    ] {
        let used = &usage["tasks"][task];
        assert_eq!(used["model"], "mock-model", "{task}: {usage}");
        let tokens = used["prompt_tokens"].as_u64().unwrap_or(0);
        let completion = used["completion_tokens"].as_u64().unwrap_or(0);
        assert!(tokens > 0 && completion > 0, "{task}: {usage}");
        assert_eq!(
            used["cost_micros"].as_u64(),
            Some(tokens * 2 + completion * 8),
            "{task}"
        );
    }
    let total: u64 = usage["tasks"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(_, used)| used["cost_micros"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(usage["cost_micros"].as_u64(), Some(total));
}

const HUMAN: &str = r#"
name = "NAME"
[[phase]]
name = "design"
gate = "human"
  [[phase.task]]
  name = "draft"
  state = "technical"
  executor = "builtin"
  action = "digest"
[[phase]]
name = "development"
  [[phase.task]]
  name = "build"
  state = "technical"
  executor = "builtin"
  action = "digest"
"#;

#[test]
fn a_human_gate_holds_a_project_until_approved_and_a_rejection_fails_it_with_the_note() {
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, _) = start_hierarchy(root.path(), 3);
    let approved = nodes[0]
        .submit(&HUMAN.replace("NAME", "to-approve"))
        .expect("submitted");
    let rejected = nodes[1]
        .submit(&HUMAN.replace("NAME", "to-reject"))
        .expect("submitted");
    for id in [&approved, &rejected] {
        let waiting = wait_status(&nodes, id, "awaiting-approval");
        assert_eq!(
            field(&waiting, "phase").as_deref(),
            Some("design"),
            "{waiting}"
        );
        let design = phase(&waiting, "design");
        assert_eq!(design["tasks_done"], 1, "{waiting}");
        assert_eq!(phase(&waiting, "development")["tasks_done"], 0, "{waiting}");
    }
    // Only the node it was submitted through (or the president's) decides.
    let answer = decide(&nodes[0], "approve", &approved, "as agreed").expect("approved");
    assert_ne!(
        field(&answer, "status").as_deref(),
        Some("awaiting-approval"),
        "{answer}"
    );
    let end = wait_for_project_end(&nodes, &approved, PROJECT_LIMIT);
    assert_eq!(field(&end, "status").as_deref(), Some("completed"), "{end}");
    assert_eq!(phase(&end, "design")["approval"], "as agreed", "{end}");
    let again = decide(&nodes[0], "approve", &approved, "twice").expect_err("not waiting");
    assert!(again.contains("not awaiting approval"), "{again}");

    decide(&nodes[1], "reject", &rejected, "the budget was cut").expect("rejected");
    let end = wait_for_project_end(&nodes, &rejected, PROJECT_LIMIT);
    assert_eq!(field(&end, "status").as_deref(), Some("failed"), "{end}");
    let reason = field(&end, "reason").unwrap_or_default();
    assert!(reason.contains("the budget was cut"), "{reason}");
    assert!(reason.contains("design"), "{reason}");
}
