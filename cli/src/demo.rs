//! `aamas demo`: a local mesh of real `aamas node` processes on loopback, the template
//! project through all eight phases, the president killed during development, and the
//! timings per phase. Everything it starts is stopped and removed when it ends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{Client, Target};

/// The longest the demo waits for anything.
const PATIENCE: Duration = Duration::from_secs(180);

/// The demo's processes and files; stopped and removed on drop, however the demo ends.
struct Mesh {
    root: PathBuf,
    nodes: Vec<(PathBuf, Option<Child>)>,
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

/// Runs the demo with `count` nodes.
pub fn run(count: usize) -> Result<()> {
    if !(1..=32).contains(&count) {
        bail!("--nodes must be 1 to 32");
    }
    let root = std::env::temp_dir().join(format!("aamas-demo-{}", std::process::id()));
    let mut mesh = Mesh {
        root: root.clone(),
        nodes: Vec::new(),
    };
    let started = Instant::now();
    println!(
        "▶ starting {count} nodes on 127.0.0.1 (data in {})",
        root.display()
    );
    let first = root.join("n1");
    let founded = aamas_node::init(&first, "demo", Duration::from_secs(3_600))?;
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

    let spec = aamas_node::spec::template();
    let submitted = mesh
        .client(0)
        .context("no API")?
        .send("POST", "/api/v1/projects", spec)?;
    let id = field(&submitted, "id");
    println!("\n▶ submitted the template project as {id}");

    let mut phase_started: Vec<(String, Instant)> = Vec::new();
    let mut timings: Vec<(String, Duration)> = Vec::new();
    let mut killed: Option<(usize, Instant, String)> = None;
    let deadline = Instant::now() + PATIENCE;
    let outcome = loop {
        if Instant::now() > deadline {
            bail!("the project did not finish within {PATIENCE:?}");
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
