//! `aamas demo --llm URL`: the example project (examples/idea-to-launch.toml) on a
//! local mesh of real processes whose model is a local OpenAI-compatible server the
//! test starts; every phase completes (the planned one and the reviewed ones too) and
//! every task's output lands in the folder the demo names.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aamas_tests::binary;
use aamas_tests::llm::{MockLlm, Seen};

const LIMIT: Duration = Duration::from_secs(420);

/// Plans give two requirement tasks, reviews approve, and any other task gets back
/// the prompt it sent.
fn scripted(seen: &Seen) -> String {
    if seen.system.contains("You plan") {
        r#"{"tasks": [
            {"name": "user-stories", "state": "technical", "input": "Write the user stories"},
            {"name": "non-functional", "state": "operations", "input": "List them",
             "depends_on": ["user-stories"], "context": ["user-stories"]}]}"#
            .into()
    } else if seen.system.contains("You review") {
        r#"{"approved": true, "feedback": "meets every criterion"}"#.into()
    } else {
        format!("WORK[{}]", seen.user)
    }
}

#[test]
fn the_llm_demo_takes_an_idea_through_eight_phases_and_writes_every_output() {
    let llm = MockLlm::start(scripted);
    let out = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(binary())
        .args([
            "demo",
            "--nodes",
            "3",
            "--llm",
            &llm.base_url(),
            "--model",
            "mock-model",
            "--idea",
            "a \"tiny\" wiki for a book club",
            "--out",
            &out.path().display().to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the demo");
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("the demo's status") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the demo did not end within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut stdout)
        .expect("read stdout");
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("all eight phases completed"), "{stdout}");

    // One folder, named by the project id, with every task's output.
    let folders: Vec<_> = std::fs::read_dir(out.path())
        .expect("the output folder")
        .map(|entry| entry.expect("an entry").path())
        .collect();
    assert_eq!(folders.len(), 1, "{folders:?}");
    let read = |task: &str| -> String {
        let entries: Vec<_> = std::fs::read_dir(&folders[0])
            .expect("the project's folder")
            .map(|entry| entry.expect("an entry").path())
            .collect();
        let path = entries
            .iter()
            .find(|path| {
                path.file_stem()
                    .is_some_and(|stem| stem.to_string_lossy() == task)
            })
            .unwrap_or_else(|| panic!("no output of {task} in {entries:?}"));
        assert!(stdout.contains(&path.display().to_string()), "{stdout}");
        std::fs::read_to_string(path).expect("text")
    };
    // The idea reached the model; a planned task and the last task wrote outputs, and
    // a later task read earlier ones.
    assert!(
        read("charter").contains("a \"tiny\" wiki for a book club"),
        "the idea"
    );
    assert!(read("user-stories").starts_with("WORK["));
    let launch = read("launch-notes");
    assert!(
        launch.contains("=== Output of task deployment-notes ==="),
        "{launch}"
    );
    assert!(
        llm.seen()
            .iter()
            .any(|seen| seen.system.contains("You review")),
        "the reviewed phases asked a reviewer"
    );
}
