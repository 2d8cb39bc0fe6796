//! Mesh-level pool scaling with the real `aamas` binary on 127.0.0.1: while a project's
//! open tasks exceed what the members' task slots carry under the policy's `[scaling]`,
//! the president shows how many workers the mesh wants and runs its operator's scale
//! hook with the figures; once the work is done, it wants none.

use std::time::Duration;

use aamas_tests::llm::MockLlm;
use aamas_tests::*;

const TASKS: usize = 40;

#[test]
fn a_mesh_short_of_workers_says_so_and_runs_the_scale_hook() {
    // Each reply takes a moment, so the queue stays longer than the mesh's slots.
    let llm = MockLlm::start(|_| {
        std::thread::sleep(Duration::from_millis(100));
        "done".to_string()
    });
    let root = tempfile::tempdir().expect("tempdir");
    let dirs: Vec<_> = (1..=3).map(|i| root.path().join(format!("n{i}"))).collect();
    let hook_log = |i: usize| root.path().join(format!("hook-n{}.log", i + 1));
    let hook = |i: usize| {
        format!(
            "echo \"$AAMAS_WORKERS_WANTED $AAMAS_OPEN_TASKS $AAMAS_TASK_SLOTS\" >> {}",
            hook_log(i).display()
        )
    };
    let (token, _) = init(&dirs[0]);
    let first_hook = hook(0);
    let mut nodes = vec![Node::start_env(
        None,
        &dirs[0],
        None,
        &["--scale-hook", &first_hook],
        &llm.env(),
    )];
    let addr = first_listen_addr(&nodes[0]);
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        let own_hook = hook(i);
        nodes.push(Node::start_env(
            None,
            dir,
            Some((&addr, &token)),
            &["--scale-hook", &own_hook, "--capacity", "2"],
            &llm.env(),
        ));
    }
    let president = wait_for("a president", || {
        agreed_president(&nodes.iter().collect::<Vec<_>>(), 3)
    });
    let (state, _, _) = wait_for("a governed state", || {
        agreed_governors(&nodes.iter().collect::<Vec<_>>())?
            .into_iter()
            .next()
    });
    let chief = index_of(&nodes, &president);
    let policy = root.path().join("scaling.toml");
    std::fs::write(
        &policy,
        "[scaling]\nopen_tasks_per_slot = 1\nhook_cooldown_secs = 1\n",
    )
    .expect("write");
    nodes[chief]
        .cli(&["policy", "apply", &policy.display().to_string()])
        .expect("applied");

    let mut spec = String::from("name = \"wide\"\n[[phase]]\nname = \"initiation\"\n");
    for i in 0..TASKS {
        spec.push_str(&format!(
            "  [[phase.task]]\n  name = \"t{i:02}\"\n  state = \"{state}\"\n  \
             executor = \"llm\"\n  input = \"part {i}\"\n"
        ));
    }
    let id = nodes[0].submit(&spec).expect("submitted");
    // 40 open tasks, 1 per slot, 8 slots (4 + 2 + 2): the president wants more workers
    // and tells its hook.
    let line = wait_for("the president's scale hook", || {
        let text = std::fs::read_to_string(hook_log(chief)).ok()?;
        text.lines().next().map(str::to_string)
    });
    let figures: Vec<u64> = line
        .split_whitespace()
        .map(|n| n.parse().expect("a number"))
        .collect();
    let [wanted, open, slots] = figures[..] else {
        panic!("three figures: {line:?}");
    };
    assert_eq!(slots, 8, "{line}");
    assert!(open > slots, "{line}");
    // The missing slots, in members of the average size (8 / 3 = 2 slots each).
    assert_eq!(wanted, (open - slots).div_ceil(2), "{line}");
    assert!(
        nodes[chief]
            .metric("aamas_scale_hook_runs_total{outcome=\"ok\"}")
            .is_some_and(|runs| runs >= 1.0)
    );
    for (i, _) in nodes.iter().enumerate().filter(|(i, _)| *i != chief) {
        assert!(!hook_log(i).exists(), "only the president runs its hook");
    }
    let end = wait_for_project_end(&nodes, &id, Duration::from_secs(240));
    assert_eq!(field(&end, "status").as_deref(), Some("completed"), "{end}");
    wait_for("the mesh to want no more workers", || {
        (nodes[chief].metric("aamas_mesh_workers_wanted")? == 0.0).then_some(())
    });
}
