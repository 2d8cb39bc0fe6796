//! Phases an LLM plans, between real processes, against a local OpenAI-compatible
//! server the test starts (`aamas_tests::llm::MockLlm`): a plan with a cycle is refused
//! and the planner asked again with the reason; the plan that passes runs like written
//! tasks, reading an earlier phase's output and each other's; a planner that keeps
//! giving too many tasks has the phase fail with the reason once its attempts are
//! spent, and the failure escalated. A plan the policy's planning rules deny is refused
//! with the rule's reason, and the next attempt, told why, passes.

use std::time::Duration;

use aamas_tests::llm::{MockLlm, Seen};
use aamas_tests::*;

const PROJECT_LIMIT: Duration = Duration::from_secs(240);

/// The mock's rule. The planner of project `planned` answers its first attempt with a
/// cycle and its second with two tasks; the planner of `overreach` always answers
/// with three tasks (its phase allows two). Any other task gets back the prompt it
/// sent, so its artefact shows what it received.
fn scripted(seen: &Seen) -> String {
    if !seen.system.contains("You plan") {
        return format!("WORK[{}]", seen.user);
    }
    if seen.user.contains("Project: overreach") {
        return r#"{"tasks": [{"name": "o1", "state": "technical", "input": "1"},
            {"name": "o2", "state": "technical", "input": "2"},
            {"name": "o3", "state": "technical", "input": "3"}]}"#
            .into();
    }
    if seen.user.contains("Project: ruled") {
        // First in a state the policy keeps plans out of, then where it allows them.
        let state = if seen.user.contains("(attempt 1 of") {
            "financial"
        } else {
            "technical"
        };
        return format!(
            r#"{{"tasks": [{{"name": "schema", "state": "{state}", "input": "s"}},
            {{"name": "migration", "state": "technical", "input": "m"}}]}}"#
        );
    }
    if seen.user.contains("(attempt 1 of") {
        r#"Here is the plan: {"tasks": [
            {"name": "schema", "state": "technical", "input": "s", "depends_on": ["migration"]},
            {"name": "migration", "state": "technical", "input": "m", "depends_on": ["schema"]}]}"#
            .into()
    } else {
        r#"```json
        {"tasks": [
            {"name": "schema", "state": "technical", "input": "Write SCHEMA-SPEC for {{ outputs.brief }}"},
            {"name": "migration", "state": "technical", "input": "Write the migration",
             "depends_on": ["schema"], "context": ["schema"]}]}
        ```"#
            .into()
    }
}

const PLANNED: &str = r#"
name = "NAME"
objectives = ["a URL shortener"]
[[phase]]
name = "requirements"
  [[phase.task]]
  name = "brief"
  state = "technical"
  executor = "llm"
  input = "Write the brief"
[[phase]]
name = "design"
plan = "llm"
objectives = ["a database schema and its migration"]
max_tasks = MAX
plan_attempts = 2
[[phase]]
name = "development"
  [[phase.task]]
  name = "code"
  state = "technical"
  executor = "llm"
  input = "Build it"
"#;

#[test]
fn a_planned_phase_runs_its_checked_plan_and_a_plan_over_its_bounds_fails_the_phase() {
    let llm = MockLlm::start(scripted);
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, _) = start_hierarchy_env(root.path(), 3, &llm.env());
    let planned = nodes[0]
        .submit(&PLANNED.replace("NAME", "planned").replace("MAX", "3"))
        .expect("submitted");
    let overreach = nodes[1]
        .submit(&PLANNED.replace("NAME", "overreach").replace("MAX", "2"))
        .expect("submitted");

    let end = wait_for_project_end(&nodes, &planned, PROJECT_LIMIT);
    assert_eq!(field(&end, "status").as_deref(), Some("completed"), "{end}");
    let design = phase(&end, "design");
    let refusals = design["plan_refusals"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(refusals.len(), 1, "{end}");
    assert!(
        refusals[0].as_str().unwrap_or("").contains("cycle"),
        "{refusals:?}"
    );
    assert_eq!(design["tasks_total"], 2, "the plan's two tasks: {end}");

    // The planner read the earlier phase's output, and its second brief the reason.
    let seen = llm.seen();
    let briefs: Vec<&Seen> = seen
        .iter()
        .filter(|request| {
            request.system.contains("You plan") && request.user.contains("Project: planned")
        })
        .collect();
    assert!(briefs.len() >= 2, "{briefs:?}");
    assert!(
        briefs[0].user.contains("=== Output of task brief ==="),
        "{}",
        briefs[0].user
    );
    assert!(
        briefs.iter().any(
            |brief| brief.user.contains("Your previous plan was refused")
                && brief.user.contains("cycle")
        ),
        "{briefs:?}"
    );
    // The planned tasks ran: one read the earlier phase's output, the other read it.
    let node = &nodes[2];
    let schema = node
        .api_get(&format!("/api/v1/projects/{planned}/artifacts/schema"))
        .expect("the schema");
    assert!(
        schema.1.contains("SCHEMA-SPEC for WORK[Write the brief"),
        "{}",
        schema.1
    );
    let migration = node
        .api_get(&format!("/api/v1/projects/{planned}/artifacts/migration"))
        .expect("the migration");
    assert!(
        migration.1.contains("=== Output of task schema ===")
            && migration.1.contains("SCHEMA-SPEC"),
        "{}",
        migration.1
    );

    // Too many tasks, twice: the phase fails with the reason.
    let end = wait_for_project_end(&nodes, &overreach, PROJECT_LIMIT);
    assert_eq!(field(&end, "status").as_deref(), Some("failed"), "{end}");
    let reason = field(&end, "reason").unwrap_or_default();
    assert!(
        reason.contains("could not be planned: 2 plans refused") && reason.contains("at most 2"),
        "{reason}"
    );
    let refusals = phase(&end, "design")["plan_refusals"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(refusals, 2, "{end}");
    // And it is escalated (level 2, from the president) on the node that committed it.
    let escalations: f64 = nodes
        .iter()
        .filter_map(|node| node.metric("aamas_events_total{kind=\"error_escalation\"}"))
        .sum();
    assert!(escalations >= 1.0, "no ErrorEscalation published");
}

const PLANNING_POLICY: &str = r#"
[[rule]]
name = "plans-stay-technical"
category = "security"
at = "planning"
when = { executor = ["llm"] }
unless = { state = ["technical"] }
reason = "planned tasks run in the technical state"
"#;

#[test]
fn a_plan_the_policy_denies_is_refused_with_the_rule_and_the_next_attempt_passes() {
    let llm = MockLlm::start(scripted);
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, president) = start_hierarchy_env(root.path(), 3, &llm.env());
    let chief = &nodes[index_of(&nodes, &president)];
    let path = root.path().join("planning.toml");
    std::fs::write(&path, PLANNING_POLICY).expect("write");
    chief
        .cli(&["policy", "apply", &path.display().to_string()])
        .expect("applied");
    let ruled = nodes[1]
        .submit(&PLANNED.replace("NAME", "ruled").replace("MAX", "3"))
        .expect("submitted");
    let end = wait_for_project_end(&nodes, &ruled, PROJECT_LIMIT);
    assert_eq!(field(&end, "status").as_deref(), Some("completed"), "{end}");
    let refusals = phase(&end, "design")["plan_refusals"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(refusals.len(), 1, "{end}");
    let refusal = refusals[0].as_str().unwrap_or("");
    assert!(
        refusal.contains("plans-stay-technical") && refusal.contains("technical state"),
        "{refusal}"
    );
    // The planner was told why.
    let told = llm.seen().iter().any(|request| {
        request.user.contains("Project: ruled")
            && request.user.contains("Your previous plan was refused")
            && request.user.contains("plans-stay-technical")
    });
    assert!(told, "the second brief does not name the rule");
    // The president counted both decisions under the rule that decided them.
    let counted = |labels: &str| {
        nodes
            .iter()
            .filter_map(|node| node.metric(&format!("aamas_policy_decisions_total{{{labels}}}")))
            .sum::<f64>()
    };
    assert!(
        counted("at=\"planning\",rule=\"plans-stay-technical\",outcome=\"denied\"") >= 1.0,
        "the denial was not counted"
    );
    assert!(
        counted("at=\"planning\",rule=\"-\",outcome=\"allowed\"") >= 1.0,
        "the plan that passed was not counted"
    );
}
