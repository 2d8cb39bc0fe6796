//! Running a scenario: nodes, faults, workload, checkers, report.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use aamas_node::{NodeConfig, Running};
use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use crate::checker::Checker;

/// How many nodes join at once.
pub const JOIN_BATCH: usize = 8;

/// The scenarios this slice runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Scenario {
    /// A project flows through a healthy mesh.
    Steady,
    /// A project flows while the president crashes (and restarts) `faults` times.
    PresidentFailover,
}

impl Scenario {
    /// Every scenario with its name and what it does.
    pub const ALL: [(Scenario, &'static str, &'static str); 2] = [
        (
            Scenario::Steady,
            "steady",
            "a project of no-op tasks through a healthy mesh",
        ),
        (
            Scenario::PresidentFailover,
            "president-failover",
            "the same, while the president crashes and restarts",
        ),
    ];

    /// The scenario named `name`.
    pub fn from_name(name: &str) -> Option<Scenario> {
        Self::ALL
            .iter()
            .find(|(_, known, _)| *known == name)
            .map(|(scenario, ..)| *scenario)
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(scenario, ..)| *scenario == self)
            .map_or("?", |(_, name, _)| name)
    }
}

/// How to run a simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Nodes.
    pub nodes: usize,
    /// What happens.
    pub scenario: Scenario,
    /// Seeds every choice of faults and workload.
    pub seed: u64,
    /// Tasks in the project.
    pub tasks: usize,
    /// Crashes of the president (president-failover).
    pub faults: usize,
    /// The longest the scenario may run.
    pub limit: Duration,
}

/// What a simulation measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// Nodes.
    pub nodes: usize,
    /// The seed.
    pub seed: u64,
    /// From starting the founder to every node agreeing on a president (ms).
    pub time_to_first_president_ms: u64,
    /// From starting the founder to every node having joined (ms).
    pub time_to_full_mesh_ms: u64,
    /// Each president crash → every live node agreeing on a successor (ms).
    pub failovers_ms: Vec<u64>,
    /// Tasks in the project.
    pub tasks: usize,
    /// Tasks per second, submission to completion.
    pub tasks_per_sec: f64,
    /// Federal terms in which a president was seen.
    pub terms_seen: usize,
    /// Tasks whose committed result the checker saw.
    pub results_seen: usize,
    /// Every invariant violation (empty when the scenario passed).
    pub violations: Vec<String>,
    /// Tasks by status at the end, across the Ledger replicas (most advanced copy).
    pub task_statuses: std::collections::BTreeMap<String, usize>,
    /// Wall time (ms).
    pub wall_ms: u64,
}

/// SplitMix64: a small deterministic generator for the seed's choices (not crypto).
#[derive(Debug, Clone)]
pub struct Choices(u64);

impl Choices {
    /// Choices from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `bound` (> 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }
}

struct Slot {
    dir: PathBuf,
    running: Option<Running>,
}

/// A simulated mesh: real runtimes in this process, over `/memory`.
pub struct Sim {
    _root: tempfile::TempDir,
    slots: Vec<Slot>,
    checker: Checker,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("nodes", &self.slots.len())
            .finish_non_exhaustive()
    }
}

fn node_config(dir: &std::path::Path, join: Option<(String, String)>) -> Result<NodeConfig> {
    Ok(NodeConfig {
        data_dir: dir.to_owned(),
        listen: vec!["/memory/0".parse().context("memory address")?],
        api: None,
        join: match join {
            Some((addr, token)) => Some((addr.parse().context("join address")?, token)),
            None => None,
        },
        skills: Vec::new(),
        raft: aamas_consensus::RaftConfig::default(),
        fsync: false,
        mdns: false,
        capacity: 16,
    })
}

/// A project of `tasks` no-op tasks spread over the four default states, in two phases.
pub fn workload(tasks: usize, choices: &mut Choices) -> String {
    let states = ["technical", "financial", "market", "operations"];
    let mut text = String::from("name = \"simulated\"\n");
    let half = tasks.div_ceil(2);
    for (phase, range) in [("design", 0..half), ("development", half..tasks)] {
        if range.is_empty() {
            continue;
        }
        text.push_str(&format!("[[phase]]\nname = \"{phase}\"\n"));
        for i in range {
            let state = states[usize::try_from(choices.below(4)).unwrap_or(0)];
            text.push_str(&format!(
                "  [[phase.task]]\n  name = \"t{i:05}\"\n  state = \"{state}\"\n  executor = \"builtin\"\n  action = \"noop\"\n"
            ));
        }
    }
    text
}

impl Sim {
    fn live(&self) -> impl Iterator<Item = &Running> {
        self.slots.iter().filter_map(|slot| slot.running.as_ref())
    }

    /// Every live node's view, fed to the checker; the president all agree on, if any.
    async fn poll(&mut self) -> Option<String> {
        let mut named = Vec::new();
        let mut claims = Vec::new();
        for running in self.live() {
            let status = running.node.status().await;
            if status.roles.iter().any(|role| role == "president") {
                claims.push((status.term, status.peer_id.clone()));
            }
            named.push(status.president);
        }
        for (term, peer) in claims {
            self.checker.president(term, &peer);
        }
        let first = named.first().cloned().flatten()?;
        named
            .iter()
            .all(|president| president.as_deref() == Some(first.as_str()))
            .then_some(first)
    }

    async fn wait_president(&mut self, not: Option<&str>, limit: Instant) -> Result<String> {
        loop {
            if let Some(president) = self.poll().await
                && Some(president.as_str()) != not
            {
                return Ok(president);
            }
            if Instant::now() > limit {
                bail!("no agreed president before the time limit");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn check_results(&mut self, project: &str) {
        let mut seen = Vec::new();
        for running in self.live() {
            for task in running.node.project_tasks(project).await {
                if let Some(result) = task.result {
                    seen.push((task.name, result));
                }
            }
        }
        for (task, result) in seen {
            self.checker.result(project, &task, &result);
        }
    }

    /// Runs a scenario from start to report.
    pub async fn run(config: SimConfig) -> Result<Report> {
        let started = Instant::now();
        let limit = started + config.limit;
        let mut choices = Choices::new(config.seed);
        let root = tempfile::tempdir().context("temporary dir")?;
        let mut sim = Sim {
            slots: (1..=config.nodes)
                .map(|i| Slot {
                    dir: root.path().join(format!("n{i}")),
                    running: None,
                })
                .collect(),
            _root: root,
            checker: Checker::default(),
        };
        let founded = aamas_node::init(&sim.slots[0].dir, "sim", Duration::from_secs(3_600))?;
        let founder = aamas_node::start(node_config(&sim.slots[0].dir, None)?).await?;
        let addr = format!(
            "{}/p2p/{}",
            founder
                .node
                .status()
                .await
                .listen_addrs
                .first()
                .context("the founder listens nowhere")?,
            founded.peer_id
        );
        sim.slots[0].running = Some(founder);
        let first = sim.wait_president(None, limit).await?;
        let time_to_first_president = started.elapsed();
        let _ = first;
        // Joins run JOIN_BATCH at a time: the president admits one at a time anyway, and
        // each joiner retries (and follows redirects) on its own.
        for batch in (1..config.nodes).collect::<Vec<_>>().chunks(JOIN_BATCH) {
            let mut joining = tokio::task::JoinSet::new();
            for &i in batch {
                let join = Some((addr.clone(), founded.token.clone()));
                let node = node_config(&sim.slots[i].dir, join)?;
                joining.spawn(async move { (i, aamas_node::start(node).await) });
            }
            while let Some(joined) = joining.join_next().await {
                let (i, running) = joined.context("a join task failed")?;
                sim.slots[i].running = Some(running?);
            }
        }
        let members = config.nodes;
        loop {
            let mut all = true;
            for running in sim.live() {
                all &= running.node.status().await.members == members;
            }
            if all && sim.poll().await.is_some() {
                break;
            }
            if Instant::now() > limit {
                bail!("the mesh never reached {members} members");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let time_to_full_mesh = started.elapsed();
        // Governors first, so the project has states to run in.
        loop {
            let tree = sim.slots[0]
                .running
                .as_ref()
                .context("founder")?
                .node
                .hierarchy()
                .await;
            let ready = tree
                .states
                .iter()
                .all(|state| state.workers.is_empty() || state.governor.is_some());
            if ready && !tree.states.is_empty() {
                break;
            }
            if Instant::now() > limit {
                bail!("the states never got governors");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        let spec = workload(config.tasks, &mut choices);
        let submitted = Instant::now();
        let id = sim
            .live()
            .next()
            .context("no node")?
            .node
            .submit_project(&spec)
            .await
            .map_err(|reason| anyhow::anyhow!("submission refused: {reason}"))?;
        let mut failovers = Vec::new();
        let mut crashes_left = match config.scenario {
            Scenario::Steady => 0,
            Scenario::PresidentFailover => config.faults,
        };
        let status = loop {
            let president = sim.poll().await;
            if crashes_left > 0
                && let Some(president) = president
            {
                crashes_left -= 1;
                let index = sim.index_of(&president).await;
                if let Some(index) = index
                    && let Some(running) = sim.slots[index].running.take()
                {
                    let crashed = Instant::now();
                    running.crash().await;
                    sim.wait_president(Some(&president), limit).await?;
                    failovers.push(crashed.elapsed());
                    let restarted =
                        aamas_node::start(node_config(&sim.slots[index].dir, None)?).await?;
                    sim.slots[index].running = Some(restarted);
                }
            }
            let mut ended = None;
            for running in sim.live() {
                if let Some(project) = running.node.project(&id).await
                    && (project.status == "completed" || project.status == "failed")
                {
                    ended = Some(project.status);
                    break;
                }
            }
            if let Some(status) = ended {
                break status;
            }
            if Instant::now() > limit {
                break "unfinished (time limit)".to_string();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let elapsed = submitted.elapsed();
        sim.checker.project_ended(&id, &status);
        sim.check_results(&id).await;
        let mut latest: std::collections::BTreeMap<String, (u32, String)> = Default::default();
        for running in sim.live() {
            for task in running.node.project_tasks(&id).await {
                let entry = latest
                    .entry(task.name.clone())
                    .or_insert((0, String::new()));
                if task.attempt >= entry.0 {
                    *entry = (task.attempt, task.status.clone());
                }
            }
        }
        let mut task_statuses = std::collections::BTreeMap::new();
        for (_, status) in latest.values() {
            *task_statuses.entry(status.clone()).or_insert(0) += 1;
        }
        for slot in &mut sim.slots {
            if let Some(running) = slot.running.take() {
                running.stop().await;
            }
        }
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Ok(Report {
            scenario: config.scenario.name().to_string(),
            nodes: config.nodes,
            seed: config.seed,
            time_to_first_president_ms: millis(time_to_first_president),
            time_to_full_mesh_ms: millis(time_to_full_mesh),
            failovers_ms: failovers.into_iter().map(millis).collect(),
            tasks: config.tasks,
            tasks_per_sec: config.tasks as f64 / elapsed.as_secs_f64().max(1e-9),
            terms_seen: sim.checker.terms(),
            results_seen: sim.checker.tasks_with_results(),
            violations: sim
                .checker
                .violations()
                .iter()
                .map(ToString::to_string)
                .collect(),
            task_statuses,
            wall_ms: millis(started.elapsed()),
        })
    }

    async fn index_of(&self, peer: &str) -> Option<usize> {
        for (index, slot) in self.slots.iter().enumerate() {
            if let Some(running) = &slot.running
                && running.node.status().await.peer_id == peer
            {
                return Some(index);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_makes_the_same_workload() {
        let a = workload(20, &mut Choices::new(7));
        let b = workload(20, &mut Choices::new(7));
        let c = workload(20, &mut Choices::new(8));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(aamas_node::spec::parse(&a).is_ok());
    }
}
