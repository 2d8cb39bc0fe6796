//! Artefacts between real processes: a task's output is kept on disk, copied to its
//! state's voters before the result is committed, and read back through
//! `aamas project artifacts` on any node — also after its worker and one more node
//! were killed with `kill -9`; an output over the node's cap fails its task.

use std::path::PathBuf;
use std::time::Duration;

use aamas_tests::*;
use sha2::{Digest as _, Sha256};

const PROJECT_LIMIT: Duration = Duration::from_secs(240);
/// 3 MiB of a repeated line: big enough to move in many chunks.
const BIG_BYTES: usize = 3 << 20;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What `yes abcdefg | head -c BIG_BYTES` prints.
fn big_output() -> Vec<u8> {
    b"abcdefg\n"
        .iter()
        .copied()
        .cycle()
        .take(BIG_BYTES)
        .collect()
}

/// Submits a one-task `spec` through the first node, waits until the project ends with
/// `status`, and returns its id and its task's view.
fn run_one_task(nodes: &[Node], spec: &str, status: &str) -> (String, serde_json::Value) {
    let id = nodes[0].submit(spec).expect("submit");
    let project = wait_for_project_end(nodes, &id, PROJECT_LIMIT);
    assert_eq!(
        field(&project, "status").as_deref(),
        Some(status),
        "{project}"
    );
    let task = all_tasks(nodes, &id)
        .into_values()
        .next()
        .expect("the task");
    (id, task)
}

/// `aamas project artifacts ID TASK --data-dir DIR`: the bytes, or the error.
fn read_artifact(node: &Node, id: &str, task: &str) -> Result<Vec<u8>, String> {
    let output = aamas(&[
        "project",
        "artifacts",
        "--data-dir",
        &node.dir.display().to_string(),
        id,
        task,
    ]);
    if output.status.success() {
        Ok(output.stdout)
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

#[test]
fn a_three_mib_output_arrives_intact_and_outlives_its_worker_and_one_more_node() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut nodes, _) = start_hierarchy(root.path(), 5);
    let spec = format!(
        r#"
name = "big-output"
[[phase]]
name = "development"
  [[phase.task]]
  name = "big"
  state = "technical"
  executor = "shell"
  command = "yes abcdefg | head -c {BIG_BYTES}"
  max_output_bytes = {}
  timeout_secs = 60
  retries = 1
"#,
        4 << 20
    );
    let (id, task) = run_one_task(&nodes, &spec, "completed");
    let expected = big_output();
    // The committed result is the digest of the whole output, not of a preview.
    assert_eq!(
        field(&task, "result"),
        Some(hex(&Sha256::digest(&expected))),
        "{task}"
    );
    let worker = index_of(&nodes, &field(&task, "worker").expect("a worker"));
    // Every node gives the same bytes as the worker wrote.
    for node in &nodes {
        let bytes = read_artifact(node, &id, "big").expect("the artefact");
        assert_eq!(bytes.len(), expected.len());
        assert!(bytes == expected, "the bytes differ from the output");
    }
    // The list names the task and its digest.
    let (_, list) = nodes[(worker + 1) % 5]
        .api_get(&format!("/api/v1/projects/{id}/artifacts"))
        .expect("the list");
    assert!(list.contains("\"task\":\"big\""), "{list}");
    assert!(list.contains(&hex(&Sha256::digest(&expected))), "{list}");
    // kill -9 the worker and one more node: one of the state's voters when the worker
    // is not the only one, so that a copy is lost with it.
    let hierarchy = nodes[(worker + 1) % 5].hierarchy().expect("hierarchy");
    let voters: Vec<String> = governors(&hierarchy)
        .expect("governors")
        .into_iter()
        .find(|(state, _, _)| state == "technical")
        .map(|(_, _, voters)| voters)
        .unwrap_or_default();
    let worker_peer = field(&task, "worker").expect("a worker");
    let other = voters
        .iter()
        .find(|voter| **voter != worker_peer)
        .map(|voter| index_of(&nodes, voter))
        .unwrap_or((worker + 1) % 5);
    nodes[worker].kill();
    nodes[other].kill();
    let readers: Vec<usize> = (0..5).filter(|i| *i != worker && *i != other).collect();
    for reader in readers {
        let bytes = wait_for("the artefact after two nodes died", || {
            read_artifact(&nodes[reader], &id, "big").ok()
        });
        assert!(bytes == expected, "node {reader} gave other bytes");
    }
}

#[test]
fn a_voter_that_replaces_a_dead_one_takes_a_copy_of_the_artefacts_it_lacked() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut nodes, _) = start_hierarchy(root.path(), 5);
    // Three chunks: a copy is pulled, not sent inline.
    let spec = r#"
name = "repaired"
[[phase]]
name = "development"
  [[phase.task]]
  name = "out"
  state = "technical"
  executor = "shell"
  command = "yes abcdefg | head -c 600000"
  timeout_secs = 60
"#;
    let (id, task) = run_one_task(&nodes, spec, "completed");
    let state = field(&task, "state").expect("its state");
    let worker = field(&task, "worker").expect("a worker");
    let voters_of = |node: &Node| -> Option<Vec<String>> {
        governors(&node.hierarchy()?)?
            .into_iter()
            .find(|(name, _, _)| *name == state)
            .map(|(_, _, voters)| voters)
    };
    let witness = index_of(&nodes, &worker);
    let before = voters_of(&nodes[witness]).expect("the state's voters");
    // kill -9 a voter other than the worker: a copy is lost with it.
    let victim = before
        .iter()
        .find(|voter| **voter != worker)
        .expect("a voter besides the worker")
        .clone();
    let victim_index = index_of(&nodes, &victim);
    nodes[victim_index].kill();
    // The governor replaces it (after the dead-voter timeout) with a live member.
    let after = wait_for("the dead voter to be replaced", || {
        let voters = voters_of(&nodes[witness])?;
        (!voters.contains(&victim) && voters.len() == before.len()).then_some(voters)
    });
    // Every newcomer holds a copy: the worker had its own; any other pulled one.
    for newcomer in after.iter().filter(|voter| !before.contains(voter)) {
        if *newcomer == worker {
            println!("the newcomer {newcomer} is the worker, which holds the output already");
            continue;
        }
        let node = &nodes[index_of(&nodes, newcomer)];
        wait_for("the new voter to take a copy", || {
            (node.metric("aamas_artifacts_repaired_total")? >= 1.0).then_some(())
        });
        let bytes = read_artifact(node, &id, "out").expect("the artefact");
        assert_eq!(bytes.len(), 600_000);
    }
}

#[test]
fn an_output_over_the_cap_fails_its_task_with_the_reason() {
    let root = tempfile::tempdir().expect("tempdir");
    let dirs: Vec<PathBuf> = (1..=3).map(|i| root.path().join(format!("n{i}"))).collect();
    let (token, _) = init(&dirs[0]);
    let cap = ["--max-artifact-bytes", "65536"];
    let mut nodes = vec![Node::start_with(&dirs[0], None, &cap)];
    let addr = first_listen_addr(&nodes[0]);
    for dir in &dirs[1..] {
        nodes.push(Node::start_with(dir, Some((&addr, &token)), &cap));
    }
    wait_for("a president", || {
        agreed_president(&nodes.iter().collect::<Vec<_>>(), 3)
    });
    wait_for("the governors", || {
        agreed_governors(&nodes.iter().collect::<Vec<_>>())
    });
    let spec = r#"
name = "too-big"
[[phase]]
name = "development"
  [[phase.task]]
  name = "flood"
  state = "technical"
  executor = "shell"
  command = "head -c 100000 /dev/zero | tr '\\0' x"
  max_output_bytes = 200000
  timeout_secs = 30
  retries = 0
"#;
    let (id, task) = run_one_task(&nodes, spec, "failed");
    let reason = field(&task, "reason").unwrap_or_default();
    assert!(reason.contains("100000 bytes"), "{reason}");
    assert!(reason.contains("artefact cap of 65536"), "{reason}");
    assert_eq!(task["result"], serde_json::Value::Null, "{task}");
    let error = read_artifact(&nodes[1], &id, "flood").expect_err("no artefact");
    assert!(error.contains("404"), "{error}");
}

#[test]
fn a_task_reads_its_dependencys_output_and_an_earlier_phases() {
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, _) = start_hierarchy(root.path(), 3);
    let spec = r#"
name = "chain"
[[phase]]
name = "design"
  [[phase.task]]
  name = "plan"
  state = "technical"
  executor = "shell"
  command = "printf 'build the thing'"
[[phase]]
name = "development"
  [[phase.task]]
  name = "draft"
  state = "technical"
  executor = "shell"
  command = "printf 'draft-1'"
  [[phase.task]]
  name = "build"
  state = "technical"
  executor = "shell"
  command = "cat"
  depends_on = ["draft"]
  input = "plan={{ outputs.plan }}; draft={{outputs.draft}}"
"#;
    let id = nodes[0].submit(spec).expect("submit");
    let project = wait_for_project_end(&nodes, &id, PROJECT_LIMIT);
    assert_eq!(
        field(&project, "status").as_deref(),
        Some("completed"),
        "{project}"
    );
    let built = read_artifact(&nodes[2], &id, "build").expect("the artefact");
    assert_eq!(
        String::from_utf8_lossy(&built),
        "plan=build the thing; draft=draft-1"
    );
    // A reference to a task that is neither a dependency nor of an earlier phase is
    // refused when the spec is checked, naming the line.
    let unlisted = spec.replace("depends_on = [\"draft\"]\n", "");
    let error = nodes[0].submit(&unlisted).expect_err("refused");
    assert!(error.contains("neither a task it depends on"), "{error}");
    assert!(error.contains("line "), "{error}");
}
