//! Which executors run where (`aamas node --executors`): a shell task runs only on a node
//! started with shell, and a mesh where no node runs shell refuses a project of shell
//! tasks with the reason instead of letting its tasks wait for ever; a shell task runs in
//! a Landlock sandbox that keeps it from the node's key, data dir and environment, from TCP
//! and from signalling the node, and with a bound on the processes it starts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aamas_tests::{
    Node, agreed_governors, agreed_president, all_tasks, binary, field, first_listen_addr, init,
    wait_for, wait_for_project_end,
};

const PROJECT_LIMIT: Duration = Duration::from_secs(120);

/// One node per entry of `executors`, each started with that `--executors` list; waits
/// for a president and the governors.
fn start(root: &Path, executors: &[&str]) -> Vec<Node> {
    let dirs: Vec<PathBuf> = (1..=executors.len())
        .map(|i| root.join(format!("n{i}")))
        .collect();
    let (token, _) = init(&dirs[0]);
    let mut nodes = vec![Node::start_with(
        &dirs[0],
        None,
        &["--executors", executors[0]],
    )];
    let addr = first_listen_addr(&nodes[0]);
    for (dir, list) in dirs[1..].iter().zip(&executors[1..]) {
        nodes.push(Node::start_with(
            dir,
            Some((&addr, &token)),
            &["--executors", list],
        ));
    }
    let all: Vec<&Node> = nodes.iter().collect();
    wait_for("the nodes to agree on a president", || {
        agreed_president(&all, executors.len() as u64)
    });
    wait_for("a governor for each populated state", || {
        agreed_governors(&all)
    });
    nodes
}

/// A project of `count` shell tasks, one in each of the four states in turn, and one
/// builtin task.
fn shell_project(count: usize) -> String {
    let states = ["technical", "market", "financial", "operations"];
    let mut spec = String::from("name = \"shells\"\n[[phase]]\nname = \"development\"\n");
    for i in 0..count {
        spec.push_str(&format!(
            "  [[phase.task]]\n  name = \"s{i}\"\n  state = \"{}\"\n  executor = \"shell\"\n  \
             command = \"echo s{i}\"\n  timeout_secs = 30\n  retries = 1\n",
            states[i % states.len()]
        ));
    }
    spec.push_str(
        "  [[phase.task]]\n  name = \"b\"\n  state = \"technical\"\n  executor = \"builtin\"\n  \
         action = \"digest\"\n",
    );
    spec
}

#[test]
fn shell_tasks_run_only_on_the_node_that_runs_shell() {
    let root = tempfile::tempdir().expect("tempdir");
    // The second node runs shell; the founder and the third run the default set.
    let nodes = start(
        root.path(),
        &["builtin,llm", "builtin,llm,shell", "builtin,llm"],
    );
    let shell_peer = field(&nodes[1].status().expect("status"), "peer_id").expect("peer id");
    let id = nodes[0].submit(&shell_project(8)).expect("submit");
    let project = wait_for_project_end(&nodes, &id, PROJECT_LIMIT);
    assert_eq!(
        field(&project, "status").as_deref(),
        Some("completed"),
        "{project}"
    );
    let tasks = all_tasks(&nodes, &id);
    let shells: Vec<_> = tasks
        .values()
        .filter(|task| field(task, "name").is_some_and(|name| name.starts_with('s')))
        .collect();
    assert_eq!(shells.len(), 8, "{tasks:?}");
    for task in shells {
        assert_eq!(
            field(task, "status").as_deref(),
            Some("succeeded"),
            "{task}"
        );
        assert_eq!(
            field(task, "worker").as_deref(),
            Some(shell_peer.as_str()),
            "a shell task ran on a node without shell: {task}"
        );
    }
    // The mayors never even offered one to the others: no Execute was refused for it.
    for node in [&nodes[0], &nodes[2]] {
        let refused = node
            .metric("aamas_rpc_refused_total{reason=\"executor_off\"}")
            .unwrap_or(0.0);
        assert_eq!(refused, 0.0, "{}", node.dir.display());
    }
}

#[test]
fn a_mesh_without_shell_refuses_a_shell_project_and_takes_others() {
    let root = tempfile::tempdir().expect("tempdir");
    let nodes = start(root.path(), &["builtin,llm", "builtin"]);
    let refused = nodes[1]
        .submit(&shell_project(1))
        .expect_err("a shell project with no node to run it");
    assert!(
        refused.contains("no member of the mesh runs shell tasks")
            && refused.contains("--executors builtin,llm,shell"),
        "{refused}"
    );
    // The same mesh takes a project without shell tasks.
    let spec = "name = \"plain\"\n[[phase]]\nname = \"development\"\n  [[phase.task]]\n  \
                name = \"b\"\n  state = \"technical\"\n  executor = \"builtin\"\n  \
                action = \"digest\"\n";
    let id = nodes[1].submit(spec).expect("submit");
    let project = wait_for_project_end(&nodes, &id, PROJECT_LIMIT);
    assert_eq!(
        field(&project, "status").as_deref(),
        Some("completed"),
        "{project}"
    );
}

/// A project of one shell task in `state`, run in `workdir` when given.
fn one_shell(name: &str, state: &str, command: &str, workdir: Option<&Path>) -> String {
    let workdir = workdir
        .map(|dir| format!("  workdir = \"{}\"\n", dir.display()))
        .unwrap_or_default();
    format!(
        "name = \"{name}\"\n[[phase]]\nname = \"development\"\n  [[phase.task]]\n  \
         name = \"{name}\"\n  state = \"{state}\"\n  executor = \"shell\"\n  \
         command = '''{command}'''\n{workdir}  timeout_secs = 30\n  retries = 0\n"
    )
}

#[test]
fn a_sandboxed_shell_task_cannot_read_the_nodes_key_or_environment() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("n1");
    init(&dir);
    // A secret in the node's environment, as an LLM key would be.
    let secret = ("AAMAS_LLM_API_KEY".to_string(), "sekrit-4711".to_string());
    let node = Node::start_env(
        None,
        &dir,
        None,
        &["--executors", "builtin,llm,shell"],
        &[secret],
    );
    let nodes = [node];
    let all: Vec<&Node> = nodes.iter().collect();
    wait_for("the node to be president", || agreed_president(&all, 1));
    let governed = wait_for("a governed state", || agreed_governors(&all));
    let state = governed[0].0.clone();
    let work = root.path().join("work");
    std::fs::create_dir_all(&work).expect("workdir");
    let key = dir.join("identity.key");
    assert!(key.exists(), "the node's key is at {}", key.display());

    let run = |name: &str, command: &str, workdir: Option<&Path>| {
        let id = nodes[0]
            .submit(&one_shell(name, &state, command, workdir))
            .expect("submit");
        wait_for_project_end(&nodes, &id, PROJECT_LIMIT)
    };
    let failed_with = |project: &serde_json::Value, needle: &str| {
        assert_eq!(
            field(project, "status").as_deref(),
            Some("failed"),
            "{project}"
        );
        let reason = field(project, "reason").unwrap_or_default();
        assert!(reason.contains(needle), "{reason}");
    };
    let read_key = run("readkey", &format!("cat '{}'", key.display()), None);
    failed_with(&read_key, "Permission denied");
    let read_environ = run("readenviron", "cat /proc/$PPID/environ", None);
    failed_with(&read_environ, "Permission denied");
    let list_data = run("listdata", &format!("ls '{}'", dir.display()), None);
    failed_with(&list_data, "Permission denied");
    // No TCP out (here to a listener of this test, as it could be the node's API), and
    // no signal to the node that runs it (kill -0 sends none, but is checked the same).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("addr").port();
    let connect = run(
        "connect",
        &format!("bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}'"),
        None,
    );
    failed_with(&connect, "Permission denied");
    assert!(
        listener.accept().is_err(),
        "the sandboxed task reached the listener"
    );
    let signal = run("signal", "kill -0 $PPID", None);
    failed_with(&signal, "not permitted");
    // Its own environment holds no secret, and its workdir is its own to write.
    let clean = run(
        "clean",
        "if env | grep -q sekrit; then echo leaked >&2; exit 3; fi; echo ok > out && cat out",
        Some(&work),
    );
    assert_eq!(
        field(&clean, "status").as_deref(),
        Some("completed"),
        "{clean}"
    );
    assert_eq!(
        std::fs::read_to_string(work.join("out")).expect("written in its workdir"),
        "ok\n"
    );
}

#[test]
fn a_sandboxed_shell_task_cannot_start_more_than_its_share_of_processes() {
    // The kernel does not bind root to RLIMIT_NPROC: the launcher runs as `nobody`
    // (setpriv, as root), from a copy of the binary that user can reach.
    let root = tempfile::tempdir().expect("tempdir");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let launcher = root.path().join("aamas");
    std::fs::copy(binary(), &launcher).expect("copy the binary");
    let as_nobody = |script: &str| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&launcher)
            .args(["__aamas_shell_sandbox", "-", "--", "/bin/sh", "-c", script])
            .output()
            .expect("setpriv runs (as root)")
    };
    let output = as_nobody("i=0; while [ $i -lt 400 ]; do sleep 2 & i=$((i+1)); done; wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("Cannot fork") || stderr.contains("Resource temporarily unavailable"),
        "400 processes started: {} {stderr}",
        output.status
    );
    // Within its share, a task starts what it needs.
    let output = as_nobody("i=0; while [ $i -lt 50 ]; do true & i=$((i+1)); done; wait; echo ok");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "ok\n");
}
