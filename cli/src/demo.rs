//! `aamas demo`: a local mesh of real `aamas node` processes on loopback, the template
//! project through all eight phases, the president killed during development, and the
//! timings per phase. Everything it starts is stopped and removed when it ends. With
//! `--llm URL`, the nodes have a model and the project is `examples/idea-to-launch.toml`
//! (LLM workers, a planned phase, reviewed phases); every task's output is written to a
//! folder that stays.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{Client, Target};

/// The longest the demo waits for anything.
const PATIENCE: Duration = Duration::from_secs(180);
/// The longest the demo waits for a project whose tasks a model does.
const LLM_PATIENCE: Duration = Duration::from_secs(3_600);

/// The example project `aamas demo --llm` runs.
pub const EXAMPLE: &str = include_str!("../../examples/idea-to-launch.toml");
/// The example's product idea, which `--idea` replaces.
pub const EXAMPLE_IDEA: &str = "a link shortener for a small team, with click counts";
/// The longest idea `--idea` takes.
const MAX_IDEA_CHARS: usize = 300;

/// What `aamas demo --llm` was given.
#[derive(Debug, Clone)]
pub struct LlmDemo {
    /// The OpenAI-compatible API root every node uses.
    pub base_url: String,
    /// The model, when given (else the nodes read AAMAS_LLM_MODEL).
    pub model: Option<String>,
    /// The product idea, when given.
    pub idea: Option<String>,
    /// Where the outputs go (a folder per project).
    pub out: PathBuf,
}

impl LlmDemo {
    /// The example spec with the idea in place: the idea is one line of plain text,
    /// escaped for the TOML strings it lands in.
    fn spec(&self) -> Result<String> {
        let Some(idea) = &self.idea else {
            return Ok(EXAMPLE.to_owned());
        };
        let idea = idea.trim();
        if idea.is_empty() || idea.chars().count() > MAX_IDEA_CHARS {
            bail!("--idea takes 1 to {MAX_IDEA_CHARS} characters");
        }
        if idea.chars().any(char::is_control) {
            bail!("--idea takes one line of text, without control characters");
        }
        let escaped = idea.replace('\\', "\\\\").replace('"', "\\\"");
        Ok(EXAMPLE.replace(EXAMPLE_IDEA, &escaped))
    }
}

/// The demo's processes and files; stopped and removed on drop, however the demo ends.
struct Mesh {
    root: PathBuf,
    nodes: Vec<(PathBuf, Option<Child>)>,
    /// Environment every node gets (the model's settings).
    env: Vec<(&'static str, String)>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            if let Some(mut child) = child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Mesh {
    fn start(&mut self, dir: &Path, join: Option<(&str, &str)>) -> Result<()> {
        let exe = std::env::current_exe().context("cannot find the aamas binary")?;
        let mut command = Command::new(exe);
        command.args([
            "node",
            "--data-dir",
            &dir.display().to_string(),
            "--no-fsync",
        ]);
        if let Some((addr, token)) = join {
            command.args(["--join", addr, "--token", token]);
        }
        std::fs::create_dir_all(dir)?;
        let log = std::fs::File::create(dir.with_extension("log"))?;
        let child = command
            .envs(self.env.iter().map(|(key, value)| (*key, value)))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start a node")?;
        match self.nodes.iter_mut().find(|(known, _)| known == dir) {
            Some(slot) => slot.1 = Some(child),
            None => self.nodes.push((dir.to_owned(), Some(child))),
        }
        Ok(())
    }

    fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].1.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.nodes[index].0.join("api.addr"));
    }

    fn client(&self, index: usize) -> Option<Client> {
        Client::new(&Target {
            data_dir: Some(self.nodes[index].0.clone()),
            api: None,
            json: false,
        })
        .ok()
    }

    fn status(&self, index: usize) -> Option<Value> {
        self.nodes[index].1.as_ref()?;
        self.client(index)?.get("/api/v1/system/status").ok()
    }

    fn alive(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|index| self.nodes[*index].1.is_some())
            .collect()
    }
}

fn field(value: &Value, name: &str) -> String {
    value
        .get(name)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn wait<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("gave up after {PATIENCE:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The president every live node names, once they agree on it and on `members`.
fn agreed(mesh: &Mesh, members: u64) -> Option<String> {
    let statuses: Vec<Value> = mesh
        .alive()
        .iter()
        .map(|index| mesh.status(*index))
        .collect::<Option<_>>()?;
    let president = statuses.first().map(|s| field(s, "president"))?;
    let all = statuses.iter().all(|status| {
        field(status, "president") == president
            && status.get("members").and_then(Value::as_u64) == Some(members)
    });
    (all && !president.is_empty()).then_some(president)
}

/// Runs the demo with `count` nodes; with `llm`, the example project on LLM workers.
pub fn run(count: usize, llm: Option<&LlmDemo>) -> Result<()> {
    if !(1..=32).contains(&count) {
        bail!("--nodes must be 1 to 32");
    }
    // Checked before anything starts.
    let spec = match llm {
        Some(llm) => llm.spec()?,
        None => aamas_node::spec::template().to_owned(),
    };
    let mut env = Vec::new();
    if let Some(llm) = llm {
        env.push((aamas_node::exec::ENV_LLM_BASE_URL, llm.base_url.clone()));
        if let Some(model) = &llm.model {
            env.push((aamas_node::exec::ENV_LLM_MODEL, model.clone()));
        }
    }
    let patience = if llm.is_some() {
        LLM_PATIENCE
    } else {
        PATIENCE
    };
    let root = std::env::temp_dir().join(format!("aamas-demo-{}", std::process::id()));
    let mut mesh = Mesh {
        root: root.clone(),
        nodes: Vec::new(),
        env,
    };
    let started = Instant::now();
    println!(
        "▶ starting {count} nodes on 127.0.0.1 (data in {})",
        root.display()
    );
    let first = root.join("n1");
    let uses = u32::try_from(count).unwrap_or(u32::MAX);
    let founded = aamas_node::init(&first, "demo", Duration::from_secs(3_600), uses)?;
    mesh.start(&first, None)?;
    let addr = wait("the founder's API", || {
        let status = mesh.status(0)?;
        status
            .get("listen_addrs")?
            .get(0)?
            .as_str()
            .map(str::to_string)
    })?;
    for i in 2..=count {
        mesh.start(&root.join(format!("n{i}")), Some((&addr, &founded.token)))?;
    }
    let members = count as u64;
    let president = wait("the nodes to agree on a president", || {
        agreed(&mesh, members)
    })?;
    wait("a governor for each populated state", || {
        let tree = mesh.client(0)?.get("/api/v1/hierarchy").ok()?;
        let states = tree.get("states")?.as_array()?;
        states
            .iter()
            .all(|state| {
                state
                    .get("workers")
                    .and_then(Value::as_array)
                    .is_none_or(Vec::is_empty)
                    || state.get("governor").is_some_and(Value::is_string)
            })
            .then_some(())
    })?;
    println!(
        "✔ mesh formed in {:.2?}; president {president}\n",
        started.elapsed()
    );
    if let Some(tree) = mesh.client(0).and_then(|c| c.get("/api/v1/hierarchy").ok())
        && let Ok(tree) = serde_json::from_value(tree)
    {
        crate::draw_hierarchy(&tree);
    }

    let submitted = mesh
        .client(0)
        .context("no API")?
        .send("POST", "/api/v1/projects", &spec)?;
    let id = field(&submitted, "id");
    let what = if llm.is_some() {
        "examples/idea-to-launch.toml"
    } else {
        "the template project"
    };
    println!("\n▶ submitted {what} as {id}");

    let mut phase_started: Vec<(String, Instant)> = Vec::new();
    let mut timings: Vec<(String, Duration)> = Vec::new();
    let mut killed: Option<(usize, Instant, String)> = None;
    let deadline = Instant::now() + patience;
    let outcome = loop {
        if Instant::now() > deadline {
            bail!("the project did not finish within {patience:?}");
        }
        let Some(project) = mesh.alive().iter().find_map(|index| {
            mesh.client(*index)?
                .get(&format!("/api/v1/projects/{id}"))
                .ok()
        }) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let phase = field(&project, "phase");
        let status = field(&project, "status");
        if phase_started.last().map(|(name, _)| name) != Some(&phase) {
            if let Some((name, at)) = phase_started.last() {
                timings.push((name.clone(), at.elapsed()));
                println!("  ✔ {name:<13} done in {:.2?}", at.elapsed());
            }
            phase_started.push((phase.clone(), Instant::now()));
        }
        if phase == "development" && killed.is_none() && count > 2 {
            let president = agreed(&mesh, members).unwrap_or_default();
            if let Some(index) = mesh.alive().into_iter().find(|index| {
                mesh.status(*index)
                    .is_some_and(|s| field(&s, "peer_id") == president)
            }) {
                println!("  ✖ kill -9 the president {president} (mid-development)");
                mesh.kill(index);
                killed = Some((index, Instant::now(), president));
            }
        }
        if let Some((index, at, old)) = &killed
            && mesh.nodes[*index].1.is_none()
        {
            let (index, at) = (*index, *at);
            let survivors = mesh.alive();
            let successor = survivors
                .first()
                .and_then(|first| mesh.status(*first))
                .map(|s| field(&s, "president"));
            if let Some(successor) = successor.filter(|s| !s.is_empty() && s != old)
                && survivors.iter().all(|i| {
                    mesh.status(*i)
                        .is_some_and(|s| field(&s, "president") == successor)
                })
                && mesh.nodes[index].0.exists()
            {
                println!(
                    "  ↻ {successor} took over as president after {:.2?}; restarting the killed node",
                    at.elapsed()
                );
                let dir = mesh.nodes[index].0.clone();
                mesh.start(&dir, None)?;
            }
        }
        if status == "completed" || status == "failed" {
            if let Some((name, at)) = phase_started.last() {
                timings.push((name.clone(), at.elapsed()));
                println!("  ✔ {name:<13} done in {:.2?}", at.elapsed());
            }
            break project;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    println!();
    crate::print_project(&outcome);
    println!("\nper-phase timings:");
    for (name, elapsed) in &timings {
        println!("  {name:<13} {elapsed:>10.2?}");
    }
    println!("total {:.2?}", started.elapsed());
    if let Some(llm) = llm {
        // What each task produced, from any live node, into a folder that stays.
        let dir = llm.out.join(&id);
        let target = mesh
            .alive()
            .first()
            .map(|index| Target {
                data_dir: Some(mesh.nodes[*index].0.clone()),
                api: None,
                json: false,
            })
            .context("no live node to read the outputs from")?;
        println!("\nevery task's output, read from the mesh:");
        crate::artifacts(&target, &id, None, Some(&dir))?;
    }
    if field(&outcome, "status") != "completed" {
        bail!("the project failed: {}", field(&outcome, "reason"));
    }
    println!(
        "\n✔ all eight phases completed; stopping the mesh and removing {}",
        root.display()
    );
    drop(mesh);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo(idea: Option<&str>) -> LlmDemo {
        LlmDemo {
            base_url: "http://127.0.0.1:1/v1".into(),
            model: None,
            idea: idea.map(str::to_owned),
            out: PathBuf::from("out"),
        }
    }

    #[test]
    fn the_example_is_a_valid_spec_and_takes_any_one_line_idea() {
        let example = aamas_node::spec::parse(EXAMPLE).expect("the example parses");
        assert_eq!(example.phases.len(), 8, "all eight phases");
        assert!(example.phases.iter().any(|phase| phase.plan.is_some()));
        assert!(example.phases.iter().any(|phase| phase.gate.llm));
        assert!(EXAMPLE.contains(EXAMPLE_IDEA));

        let quoted = demo(Some(r#"a "quiet" notes app \ for two"#))
            .spec()
            .expect("an idea with quotes");
        let spec = aamas_node::spec::parse(&quoted).expect("still a valid spec");
        assert!(spec.objectives[0].contains(r#"a "quiet" notes app \ for two"#));
        assert!(!quoted.contains(EXAMPLE_IDEA));

        for bad in ["", "two\nlines", &"x".repeat(MAX_IDEA_CHARS + 1)] {
            assert!(demo(Some(bad)).spec().is_err(), "{bad:?}");
        }
    }
}
