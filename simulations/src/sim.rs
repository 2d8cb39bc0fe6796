//! Running a scenario: nodes, faults, workload, checkers, report.
//!
//! ```text
//!   form the mesh (founder, then joins JOIN_BATCH at a time) → governors → steps …
//!   every wait observes: presidents and governors claimed (checker), president changes
//!   (timeline), committed results (checker, every RESULTS_EVERY), the progress line
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aamas_node::{NodeConfig, Running};
use anyhow::{Context as _, Result, anyhow, bail};
use libp2p::PeerId;

use crate::checker::Checker;
use crate::faults::SimFaults;
use crate::report::{Failover, GossipReport, Moment, ProjectReport, Report, peak_memory_bytes};
use crate::scenario::{ScenarioFile, Step, Target};

/// How many nodes join at once.
pub const JOIN_BATCH: usize = 32;

/// RocksDB memtable size for meshes above 60 nodes. RocksDB preallocates each
/// database's write-ahead log at about the memtable size (64 MiB by default): a hundred
/// default databases took 7 GB of disk. Small meshes keep the default: with 1 MiB
/// memtables, the 50-node `steady` and `partition-heal` scenarios stalled in CI (dev
/// profile, RocksDB's C++ unoptimised), where they had passed with the default.
pub const LARGE_MESH_MEMTABLE_BYTES: usize = 1 << 20;

/// Raft timers for a simulated mesh of `nodes`. openraft 0.9 gives an AppendEntries
/// RPC one heartbeat interval before it times out; every member is a federal learner, and
/// all of them share two cores. With openraft's 50 ms default, answers under that load
/// came late so often that followers missed heartbeats and called elections (five
/// federal terms in a 50-node flood run). The simulator therefore uses 100 ms up to 60
/// nodes, 250 ms up to 300, 500 ms up to 600, then 2 s, with elections at 4-8
/// heartbeats. At 1,000 nodes 2 s took the mesh to 652 members where 1 s stalled at
/// about 600 (late answers are resent, which loads the late nodes further).
pub fn raft_config(nodes: usize) -> aamas_consensus::RaftConfig {
    let mut config = aamas_consensus::RaftConfig::default();
    let heartbeat = match nodes {
        0..=60 => 100,
        61..=300 => 250,
        301..=600 => 500,
        _ => 2_000,
    };
    config.heartbeat_interval_ms = heartbeat;
    config.election_timeout_min_ms = heartbeat * 4;
    config.election_timeout_max_ms = heartbeat * 8;
    config
}
/// How often a wait looks at the nodes (up to 100 nodes; see [`Sim::poll`]).
const POLL: Duration = Duration::from_millis(100);
/// How often a wait for a president looks (cheap: one metrics snapshot per node).
const PRESIDENT_POLL: Duration = Duration::from_millis(50);
/// How often the checker reads every Ledger replica's results.
const RESULTS_EVERY: Duration = Duration::from_secs(2);
/// How long a probe may take to reach every live node before it counts as undelivered.
const PROBE_PATIENCE: Duration = Duration::from_secs(5);
/// How long after a heal the hierarchy may take to place every member.
const PLACEMENT_PATIENCE: Duration = Duration::from_secs(30);
/// How long every connection across a new partition may take to close.
const CUT_PATIENCE: Duration = Duration::from_secs(30);

/// How to run a simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Nodes at the start.
    pub nodes: usize,
    /// What happens.
    pub scenario: ScenarioFile,
    /// Seeds every choice of faults and workload.
    pub seed: u64,
    /// Tasks per submitted project, overriding the scenario's.
    pub tasks: Option<usize>,
    /// How many of the four default states the workload uses (1 to 4).
    pub states: usize,
    /// The longest the run may take.
    pub limit: Duration,
    /// Print a progress line on stderr.
    pub progress: bool,
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

    /// One of `items`, if any.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            return None;
        }
        let index = usize::try_from(self.below(items.len() as u64)).unwrap_or(0);
        items.get(index).copied()
    }
}

/// A project of `tasks` no-op tasks spread over the first `states` (1 to 4) of the
/// mesh's four default states, in two phases.
pub fn workload(tasks: usize, states: usize, choices: &mut Choices) -> String {
    let all = aamas_consensus::registry::DEFAULT_STATES;
    let states = &all[..states.clamp(1, all.len())];
    let mut text = String::from("name = \"simulated\"\n");
    let half = tasks.div_ceil(2);
    for (phase, range) in [("design", 0..half), ("development", half..tasks)] {
        if range.is_empty() {
            continue;
        }
        text.push_str(&format!("[[phase]]\nname = \"{phase}\"\n"));
        for i in range {
            let state = choices.pick(states).unwrap_or(all[0]);
            text.push_str(&format!(
                "  [[phase.task]]\n  name = \"{}\"\n  state = \"{state}\"\n  executor = \"builtin\"\n  action = \"noop\"\n",
                task_name(i)
            ));
        }
    }
    text
}

fn task_name(i: usize) -> String {
    format!("t{i:05}")
}

struct Slot {
    dir: PathBuf,
    running: Option<Running>,
    peer: Option<PeerId>,
    /// Bytes sent by earlier incarnations (before crashes).
    bytes_before: u64,
    /// Connections the node's earlier runs (before crashes and restarts) established.
    connections_before: u64,
    /// Left for good (`leave`).
    left: bool,
    /// A subscriber to the running node's event bus, with the node it reads (a restarted
    /// node is a new one).
    events: Option<(usize, EventReceiver)>,
}

type EventReceiver = tokio::sync::broadcast::Receiver<std::sync::Arc<aamas_node::events::Stamped>>;

struct Project {
    id: String,
    tasks: usize,
    submitted: Instant,
    ended: Option<(String, Instant)>,
}

pub(crate) struct Probe {
    id: aamas_protocol::MessageId,
    origin: usize,
    sent: Instant,
    /// Live nodes (other than the origin) when it was sent.
    expected: Vec<usize>,
}

/// A simulated mesh: real runtimes in this process, over `/memory`.
pub struct Sim {
    _root: tempfile::TempDir,
    slots: Vec<Slot>,
    /// Events read from the nodes' buses, by kind, and those a bus dropped unread.
    events_seen: BTreeMap<String, u64>,
    events_missed: u64,
    checker: Checker,
    faults: Arc<SimFaults>,
    choices: Choices,
    started: Instant,
    deadline: Instant,
    join: (String, String),
    projects: Vec<Project>,
    timeline: Vec<Moment>,
    failovers: Vec<Failover>,
    probe_delays: Vec<f64>,
    probes_sent: usize,
    probes_expected: usize,
    president: Option<String>,
    last_results: Instant,
    last_governors: Instant,
    progress: Option<Progress>,
    step: String,
    /// The minority side of a partition, while there is one.
    minority: Option<HashSet<usize>>,
    /// Time to the first president and to the full mesh (ms).
    times: (Option<u64>, Option<u64>),
    raft: aamas_consensus::RaftConfig,
    /// One block cache and one memtable budget for every node's RocksDB.
    shared_memory: aamas_consensus::SharedMemory,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("nodes", &self.slots.len())
            .finish_non_exhaustive()
    }
}

/// RocksDB block cache shared by every simulated node.
pub const SHARED_CACHE_BYTES: usize = 64 << 20;
/// The memtable budget shared by every simulated node: above it RocksDB flushes the
/// largest memtables, so a thousand databases cannot each hold megabytes of them.
pub const SHARED_MEMTABLES_BYTES: usize = 512 << 20;

fn short(peer: &str) -> &str {
    &peer[peer.len().saturating_sub(6)..]
}

/// How long the join tokens a simulation issues stay valid.
const JOIN_TOKEN_TTL: Duration = Duration::from_secs(3_600);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Sim {
    /// A node's configuration; `join` has it join the mesh through the founder.
    fn node_config(&self, dir: &std::path::Path, join: bool) -> Result<NodeConfig> {
        let raft = &self.raft;
        Ok(NodeConfig {
            data_dir: dir.to_owned(),
            listen: vec!["/memory/0".parse().context("memory address")?],
            api: None,
            join: if join {
                let (addr, token) = &self.join;
                Some((addr.parse().context("join address")?, token.clone()))
            } else {
                None
            },
            skills: Vec::new(),
            executors: aamas_node::exec::ExecutorSet::default(),
            shell_sandbox: aamas_node::exec::sandbox::ShellSandbox::default(),
            raft: raft.clone(),
            fsync: false,
            mdns: false,
            capacity: 16,
            faults: Some(self.faults.clone() as Arc<dyn aamas_node::net::faults::Faults>),
            memtable_bytes: (raft.heartbeat_interval_ms > 100).then_some(LARGE_MESH_MEMTABLE_BYTES),
            shared_memory: Some(self.shared_memory.clone()),
            // Above 60 nodes Kademlia's bootstrap would connect every node to every other.
            kademlia: raft.heartbeat_interval_ms <= 100,
            // A thousand nodes on two cores answer late: libp2p's own ping timing (15 s,
            // 20 s) keeps connections that are slow. (Partitions close connections
            // themselves: see aamas_node::net::faults::Cut.)
            liveness: Some(aamas_node::net::swarm::Liveness {
                interval: Duration::from_secs(15),
                timeout: Duration::from_secs(20),
            }),
            max_artifact_bytes: None,
            scale_hook: None,
        })
    }

    /// Runs a scenario from start to report. A run that cannot go on (the mesh never
    /// forms, a failover never ends before the time limit) still reports what it saw,
    /// with `completed` false and the reason in `error`.
    pub async fn run(config: SimConfig) -> Result<Report> {
        let mut sim = Sim::new(&config)?;
        let outcome = match sim.form(config.nodes).await {
            Ok(()) => sim.play(&config.scenario.steps, &config).await,
            Err(error) => Err(error),
        };
        Ok(sim.finish(&config, outcome.err()).await)
    }

    /// A simulation with no node yet: the founder's data dir and token are made.
    pub fn new(config: &SimConfig) -> Result<Self> {
        let started = Instant::now();
        let root = tempfile::tempdir().context("temporary dir")?;
        let founded = aamas_node::init(
            &root.path().join("n1"),
            "sim",
            Duration::from_secs(24 * 3_600),
            aamas_node::token::MAX_TOKEN_USES,
        )?;
        Ok(Sim {
            slots: Vec::new(),
            events_seen: BTreeMap::new(),
            events_missed: 0,
            _root: root,
            checker: Checker::default(),
            faults: Arc::new(SimFaults::new(config.seed)),
            choices: Choices::new(config.seed),
            started,
            deadline: started + config.limit,
            join: (String::new(), founded.token),
            projects: Vec::new(),
            timeline: Vec::new(),
            failovers: Vec::new(),
            probe_delays: Vec::new(),
            probes_sent: 0,
            probes_expected: 0,
            president: None,
            last_results: started,
            last_governors: started,
            progress: config.progress.then(Progress::default),
            step: "forming the mesh".into(),
            minority: None,
            times: (None, None),
            raft: raft_config(config.nodes),
            shared_memory: aamas_consensus::SharedMemory::new(
                SHARED_CACHE_BYTES,
                SHARED_MEMTABLES_BYTES,
            ),
        })
    }

    /// Plays `steps` in order (the mesh formed with [`Sim::form`]).
    pub async fn play(&mut self, steps: &[Step], config: &SimConfig) -> Result<()> {
        let total = steps.len();
        for (index, step) in steps.iter().enumerate() {
            self.step = format!("step {}/{total}: {}", index + 1, step.label());
            self.moment("step", step.label());
            self.play_step(step, config).await?;
        }
        self.step = "done".into();
        self.observe(true).await;
        Ok(())
    }

    async fn play_step(&mut self, step: &Step, config: &SimConfig) -> Result<()> {
        match step {
            Step::Submit { tasks } => {
                self.submit(config.tasks.unwrap_or(*tasks), config.states)
                    .await
            }
            Step::Crash {
                target,
                count,
                restart,
            } => {
                for _ in 0..*count {
                    self.crash(*target, *restart).await?;
                }
                Ok(())
            }
            Step::Partition { isolate, fraction } => self.partition(*isolate, *fraction).await,
            Step::Heal => self.heal().await,
            Step::Drop { percent } => {
                self.faults.update(|state| state.drop_percent = *percent);
                self.moment("fault", format!("drop {percent}%"));
                Ok(())
            }
            Step::Delay { ms, jitter_ms } => {
                self.faults.update(|state| {
                    state.delay = Duration::from_millis(*ms);
                    state.jitter = Duration::from_millis(*jitter_ms);
                });
                self.moment("fault", format!("delay {ms}+{jitter_ms} ms"));
                Ok(())
            }
            Step::ClearFaults => {
                self.faults.update(|state| {
                    state.drop_percent = 0.0;
                    state.delay = Duration::ZERO;
                    state.jitter = Duration::ZERO;
                });
                self.moment("heal", "drops and delays end");
                Ok(())
            }
            Step::Join { count } => self.join(*count).await,
            Step::Leave { count } => self.leave(*count).await,
            Step::Flood { secs, per_sec } => {
                crate::flood::flood(self, Duration::from_secs(*secs), *per_sec).await
            }
            Step::Probe { count } => {
                let probes = self
                    .send_probes_avoiding(*count, Duration::from_millis(100), None)
                    .await;
                self.collect_probes(probes).await.map(|_| ())
            }
            Step::AwaitProjects => self.await_projects().await,
            Step::AwaitPresident => self.wait_president(None, None).await.map(|_| ()),
            Step::Sleep { ms } => {
                let until = Instant::now() + Duration::from_millis(*ms);
                while Instant::now() < until {
                    self.observe(false).await;
                    tokio::time::sleep(self.poll()).await;
                }
                Ok(())
            }
        }
    }

    // ---- the mesh ----------------------------------------------------------------------

    /// Starts the founder, waits for it to preside, then has `nodes - 1` more join and
    /// waits for governors in every populated state.
    pub async fn form(&mut self, nodes: usize) -> Result<()> {
        let founder_dir = self._root.path().join("n1");
        let founder = aamas_node::start(self.node_config(&founder_dir, false)?).await?;
        let peer = founder.node.peer_id();
        self.join.0 = dial_addr(&founder.node)
            .await
            .context("the founder listens nowhere")?;
        self.slots.push(Slot {
            dir: founder_dir,
            running: Some(founder),
            peer: Some(peer),
            bytes_before: 0,
            connections_before: 0,
            left: false,
            events: None,
        });
        self.wait_president(None, None).await?;
        self.times.0 = Some(millis(self.started.elapsed()));
        self.add_nodes(nodes.saturating_sub(1)).await?;
        self.times.1 = Some(millis(self.started.elapsed()));
        // Governors first, so that projects have states to run in.
        self.wait_for("every populated state to have a governor", |sim| {
            Box::pin(async move {
                let Some(running) = sim.live().next().map(|(_, running)| running) else {
                    return false;
                };
                let tree = running.node.hierarchy().await;
                !tree.states.is_empty()
                    && tree
                        .states
                        .iter()
                        .all(|state| state.workers.is_empty() || state.governor.is_some())
            })
        })
        .await?;
        // A formed mesh survives the loss of any one node, its president included.
        self.wait_federal_voters().await.map(|_| ())
    }

    /// Waits until the federal group has its voters (FEDERAL_VOTERS, or every live node
    /// when fewer), as a live node sees them; returns them. Until then a crash or a cut
    /// can leave too few voters to elect (the founder alone, at first).
    async fn wait_federal_voters(&mut self) -> Result<HashSet<String>> {
        let wanted = aamas_node::roles::president::FEDERAL_VOTERS.min(self.live_indices().len());
        loop {
            let voters: HashSet<String> = match self.live().next() {
                Some((_, running)) => running
                    .node
                    .hierarchy()
                    .await
                    .federal_voters
                    .into_iter()
                    .collect(),
                None => HashSet::new(),
            };
            if voters.len() >= wanted {
                return Ok(voters);
            }
            if Instant::now() > self.deadline {
                bail!(
                    "the federal group had {} voters of {wanted} at the time limit",
                    voters.len()
                );
            }
            self.observe(false).await;
            tokio::time::sleep(PRESIDENT_POLL).await;
        }
    }

    /// Starts `count` new nodes that join through a live node, JOIN_BATCH at a time, and
    /// waits until every live node counts them as members and can check their messages.
    async fn add_nodes(&mut self, count: usize) -> Result<()> {
        let first = self.slots.len();
        for batch_start in (0..count).step_by(JOIN_BATCH) {
            let mut joining = tokio::task::JoinSet::new();
            for i in batch_start..(batch_start + JOIN_BATCH).min(count) {
                let dir = self._root.path().join(format!("n{}", first + i + 1));
                let config = self.node_config(&dir, true)?;
                joining.spawn(async move { (dir, aamas_node::start(config).await) });
            }
            while let Some(joined) = joining.join_next().await {
                let (dir, running) = joined.context("a join task failed")?;
                let running =
                    running.with_context(|| format!("{} could not join", dir.display()))?;
                self.slots.push(Slot {
                    dir,
                    peer: Some(running.node.peer_id()),
                    running: Some(running),
                    bytes_before: 0,
                    connections_before: 0,
                    left: false,
                    events: None,
                });
            }
            self.observe(false).await;
        }
        // Nodes that left are no members any more.
        let members = self.slots.iter().filter(|slot| !slot.left).count();
        let counted = self
            .wait_for(
                &format!("every live node to count {members} members"),
                |sim| {
                    Box::pin(async move {
                        for (_, running) in sim.live() {
                            if running.node.member_count().await < members
                                || running.node.checkable_members() < members
                            {
                                return false;
                            }
                        }
                        true
                    })
                },
            )
            .await;
        if let Err(error) = counted {
            // Name the nodes behind and where their Registry copy comes from.
            let mut behind = Vec::new();
            for (index, running) in self.live() {
                let (count, checkable) = (
                    running.node.member_count().await,
                    running.node.checkable_members(),
                );
                if count < members || checkable < members {
                    behind.push(format!(
                        "n{} counts {count} ({checkable} checkable): {}",
                        index + 1,
                        running.node.registry_copy()
                    ));
                }
            }
            bail!("{error}; behind: {}", behind.join("; "));
        }
        self.wait_president(None, None).await.map(|_| ())
    }

    /// How long waits sleep between looks: POLL, plus 10 ms per 10 nodes above 100
    /// (looking at a thousand nodes costs as much as the mesh's own work), at most 1 s.
    fn poll(&self) -> Duration {
        let extra = self.slots.len().saturating_sub(100) as u64;
        (POLL + Duration::from_millis(extra)).min(Duration::from_secs(1))
    }

    fn live(&self) -> impl Iterator<Item = (usize, &Running)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(index, slot)| Some((index, slot.running.as_ref()?)))
    }

    fn live_indices(&self) -> Vec<usize> {
        self.live().map(|(index, _)| index).collect()
    }

    fn index_of(&self, peer: &str) -> Option<usize> {
        self.slots
            .iter()
            .position(|slot| slot.peer.is_some_and(|known| known.to_string() == peer))
    }

    fn moment(&mut self, kind: &str, what: impl Into<String>) {
        self.timeline.push(Moment {
            at_ms: millis(self.started.elapsed()),
            kind: kind.to_string(),
            what: what.into(),
        });
    }

    // ---- observing ---------------------------------------------------------------------

    /// Feeds the checker with what every live node claims, notes president changes, and
    /// (every RESULTS_EVERY, or when `results`) reads every Ledger replica's results.
    async fn observe(&mut self, results: bool) {
        let mut claims = Vec::new();
        let mut governors = Vec::new();
        let mut named = Vec::new();
        // Governors cost a Registry read per group: looked at once per poll period.
        let look_at_governors = self.last_governors.elapsed() >= self.poll();
        if look_at_governors {
            self.last_governors = Instant::now();
        }
        for (_, running) in self.live() {
            let (president, term, is_me) = running.node.president_claim();
            if is_me {
                claims.push((term, running.node.peer_id().to_string()));
            }
            if look_at_governors {
                for (state, term) in running.node.governs().await {
                    governors.push((state, term, running.node.peer_id().to_string()));
                }
            }
            named.push(president);
        }
        self.read_events();
        for (term, peer) in claims {
            self.checker.president(term, &peer);
        }
        for (state, term, peer) in governors {
            self.checker.governor(&state, term, &peer);
        }
        let agreed = agreed(&named);
        if agreed.is_some() && agreed != self.president {
            self.president = agreed.clone();
            let who = agreed.unwrap_or_default();
            self.moment("president", format!("president {}", short(&who)));
        }
        if results || self.last_results.elapsed() >= RESULTS_EVERY {
            self.last_results = Instant::now();
            self.check_results().await;
        }
        if let Some(progress) = &mut self.progress {
            let results = self.checker.tasks_with_results();
            let tasks: usize = self.projects.iter().map(|project| project.tasks).sum();
            progress.show(format!(
                "[{:>6.1} s] {} · {} live · president {} · results {results}/{tasks} · {} failovers",
                self.started.elapsed().as_secs_f64(),
                self.step,
                self.slots.iter().filter(|slot| slot.running.is_some()).count(),
                self.president.as_deref().map_or("none", short),
                self.failovers.len(),
            ));
        }
    }

    /// Reads what every live node's event bus published since the last look: counted
    /// by kind, and each success's result checked like a result read from a Ledger
    /// (one result per task, whoever reports it).
    fn read_events(&mut self) {
        use aamas_node::events::BusEvent;
        use aamas_protocol::{Event, TaskOutcome};
        use tokio::sync::broadcast::error::TryRecvError;
        let mut results = Vec::new();
        for slot in &mut self.slots {
            let Some(running) = &slot.running else {
                slot.events = None;
                continue;
            };
            let node = std::sync::Arc::as_ptr(&running.node) as usize;
            // Each event once, where it was decided: the others saw it over gossip.
            let me = running.node.peer_id().to_string();
            if slot.events.as_ref().is_none_or(|(read, _)| *read != node) {
                slot.events = Some((node, running.node.subscribe_events()));
            }
            let Some((_, receiver)) = &mut slot.events else {
                continue;
            };
            loop {
                match receiver.try_recv() {
                    Ok(stamped) => {
                        if matches!(&stamped.event, BusEvent::Mesh { origin, .. } if *origin != me)
                        {
                            continue;
                        }
                        *self
                            .events_seen
                            .entry(stamped.event.label().to_string())
                            .or_default() += 1;
                        if let BusEvent::Mesh {
                            event:
                                Event::TaskCompletion {
                                    project,
                                    task,
                                    outcome: TaskOutcome::Succeeded { result_digest },
                                    ..
                                },
                            ..
                        } = &stamped.event
                        {
                            let hex: String =
                                result_digest.iter().map(|b| format!("{b:02x}")).collect();
                            results.push((project.clone(), task.clone(), hex));
                        }
                    }
                    Err(TryRecvError::Lagged(missed)) => self.events_missed += missed,
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                }
            }
        }
        for (project, task, result) in results {
            self.checker.result(&project, &task, &result);
        }
    }

    async fn check_results(&mut self) {
        let mut seen = Vec::new();
        for project in &self.projects {
            for (_, running) in self.live() {
                for task in running.node.project_tasks(&project.id).await {
                    if let Some(result) = task.result {
                        seen.push((project.id.clone(), task.name, result));
                    }
                }
            }
        }
        for (project, task, result) in seen {
            self.checker.result(&project, &task, &result);
        }
    }

    /// Observes until `done` holds, or fails naming `what` at the time limit.
    async fn wait_for(
        &mut self,
        what: &str,
        mut done: impl for<'a> FnMut(
            &'a Sim,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = bool> + Send + 'a>,
        >,
    ) -> Result<()> {
        loop {
            self.observe(false).await;
            if done(self).await {
                return Ok(());
            }
            if Instant::now() > self.deadline {
                bail!("waited for {what} until the time limit");
            }
            tokio::time::sleep(self.poll()).await;
        }
    }

    /// Waits until the live nodes (or those of `among`) agree on a president other than
    /// `not`; returns it.
    async fn wait_president(
        &mut self,
        not: Option<&str>,
        among: Option<&HashSet<usize>>,
    ) -> Result<String> {
        let mut told = Instant::now();
        loop {
            self.observe(false).await;
            // With the progress line on, who names whom every 10 s of waiting.
            if self.progress.is_some() && told.elapsed() >= Duration::from_secs(10) {
                told = Instant::now();
                eprintln!(
                    "  one president not agreed yet: {}",
                    self.claims_by_president(among).await
                );
            }
            let named: Vec<Option<String>> = self
                .live()
                .filter(|(index, _)| among.is_none_or(|among| among.contains(index)))
                .map(|(_, running)| running.node.president_claim().0)
                .collect();
            if let Some(president) = agreed(&named)
                && Some(president.as_str()) != not
            {
                return Ok(president);
            }
            if Instant::now() > self.deadline {
                bail!(
                    "no agreed president before the time limit ({})",
                    self.claims_by_president(among).await
                );
            }
            tokio::time::sleep(PRESIDENT_POLL).await;
        }
    }

    /// The president most live nodes name, and how it sees itself: whether it claims
    /// the office, and where its Registry copy comes from.
    async fn president_views(&self) -> String {
        let mut named: BTreeMap<String, usize> = BTreeMap::new();
        for (_, running) in self.live() {
            if let Some(president) = running.node.president_claim().0 {
                *named.entry(president).or_default() += 1;
            }
        }
        let Some((president, count)) = named.into_iter().max_by_key(|(_, count)| *count) else {
            return "no node names a president".into();
        };
        let own = self
            .index_of(&president)
            .and_then(|index| self.slots[index].running.as_ref())
            .map_or("not live".to_string(), |running| {
                let (named, term, is_me) = running.node.president_claim();
                format!(
                    "it names {:?} in term {term} (claims the office: {is_me}); {}",
                    named.as_deref().map(short),
                    running.node.registry_copy()
                )
            });
        format!(
            "{count} nodes name {} as president; {own}",
            short(&president)
        )
    }

    /// Who names whom as president, for a failure's message: each president named
    /// (or none), by how many nodes, in which federal terms, with a few of them.
    async fn claims_by_president(&self, among: Option<&HashSet<usize>>) -> String {
        let mut by: BTreeMap<String, (usize, BTreeSet<u64>, Vec<String>)> = BTreeMap::new();
        for (index, running) in self.live() {
            if among.is_some_and(|among| !among.contains(&index)) {
                continue;
            }
            let (president, term, _) = running.node.president_claim();
            let side = if self.minority.as_ref().is_some_and(|m| m.contains(&index)) {
                "minority"
            } else {
                "majority"
            };
            let federal = running.node.status().await.term;
            let entry = by
                .entry(president.as_deref().map_or("none", short).to_string())
                .or_default();
            entry.0 += 1;
            entry.1.insert(term);
            if entry.2.is_empty() {
                entry.2.push(format!(
                    "{} ({side}, federal term {federal}: {})",
                    short(&running.node.peer_id().to_string()),
                    running.node.registry_copy()
                ));
            } else if entry.2.len() < 4 {
                entry.2.push(format!(
                    "{} ({side}, federal term {federal})",
                    short(&running.node.peer_id().to_string())
                ));
            }
        }
        by.iter()
            .map(|(president, (count, terms, some))| {
                format!(
                    "{president} named by {count} in terms {terms:?}, e.g. {}",
                    some.join(", ")
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    // ---- steps -------------------------------------------------------------------------

    async fn submit(&mut self, tasks: usize, states: usize) -> Result<()> {
        let spec = workload(tasks, states, &mut self.choices);
        let give_up = Instant::now() + Duration::from_secs(30);
        // One request id for every try: a try whose answer was lost (a president that
        // committed it and died) is not a second project.
        let request = format!("sim-{}", self.projects.len());
        loop {
            let live = self.live_indices();
            let index = self.choices.pick(&live).context("no live node")?;
            let node = self.slots[index]
                .running
                .as_ref()
                .context("live node")?
                .node
                .clone();
            let submission = aamas_node::driver::projects::Submission {
                request: Some(&request),
                override_reason: None,
            };
            match node.submit_project(&spec, submission).await {
                Ok(id) => {
                    self.projects.push(Project {
                        id,
                        tasks,
                        submitted: Instant::now(),
                        ended: None,
                    });
                    return Ok(());
                }
                Err(reason) if Instant::now() > give_up => {
                    bail!("submission refused for 30 s: {reason}")
                }
                Err(_) => {
                    self.observe(false).await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Picks a victim: its slot, its peer id, and (for a governor) its state.
    async fn victim(&mut self, target: Target) -> Result<(usize, String, Option<String>)> {
        match target {
            Target::President => {
                let president = self.wait_president(None, None).await?;
                let index = self
                    .index_of(&president)
                    .context("the president is no simulated node")?;
                Ok((index, president, None))
            }
            Target::Governor => {
                let (_, running) = self.live().next().context("no live node")?;
                let tree = running.node.hierarchy().await;
                let governed: Vec<(String, String)> = tree
                    .states
                    .iter()
                    .filter_map(|state| Some((state.name.clone(), state.governor.clone()?)))
                    .filter(|(_, governor)| {
                        self.index_of(governor)
                            .is_some_and(|index| self.slots[index].running.is_some())
                    })
                    .collect();
                let choice = self.choices.below(governed.len() as u64);
                let (state, governor) = governed
                    .get(usize::try_from(choice).unwrap_or(0))
                    .cloned()
                    .context("no live governor to crash")?;
                let index = self
                    .index_of(&governor)
                    .context("the governor is no simulated node")?;
                Ok((index, governor, Some(state)))
            }
            Target::Random => {
                let live = self.live_indices();
                let index = self.choices.pick(&live).context("no live node")?;
                let peer = self.slots[index]
                    .peer
                    .map(|peer| peer.to_string())
                    .unwrap_or_default();
                Ok((index, peer, None))
            }
        }
    }

    async fn crash(&mut self, target: Target, restart: bool) -> Result<()> {
        let (index, peer, state) = self.victim(target).await?;
        let running = self.slots[index]
            .running
            .take()
            .context("the victim is not running")?;
        self.slots[index].bytes_before += running.node.bytes_sent();
        self.slots[index].connections_before += running.node.connections().1;
        let crashed = Instant::now();
        running.crash().await?;
        self.moment("fault", format!("crash {target:?} {}", short(&peer)));
        match (target, state) {
            (Target::President, _) => {
                self.wait_president(Some(&peer), None).await?;
                self.failovers.push(Failover {
                    what: "president".into(),
                    ms: millis(crashed.elapsed()),
                });
            }
            (Target::Governor, Some(state)) => {
                let what = format!("a new governor of {state}");
                let waiting_for = state.clone();
                self.wait_for(&what, |sim| {
                    let state = waiting_for.clone();
                    Box::pin(async move {
                        for (_, running) in sim.live() {
                            if running
                                .node
                                .governs()
                                .await
                                .iter()
                                .any(|(governed, _)| *governed == state)
                            {
                                return true;
                            }
                        }
                        false
                    })
                })
                .await?;
                self.failovers.push(Failover {
                    what: format!("governor of {state}"),
                    ms: millis(crashed.elapsed()),
                });
            }
            _ => {}
        }
        if restart {
            let config = self.node_config(&self.slots[index].dir, false)?;
            let restarted = aamas_node::start(config).await?;
            self.slots[index].running = Some(restarted);
            self.moment("heal", format!("restart {}", short(&peer)));
        }
        Ok(())
    }

    async fn partition(&mut self, isolate: Target, fraction: f64) -> Result<()> {
        // The minority holds the victim and no other federal voter, so that the
        // majority side holds a quorum of the federal group and can elect. A mesh that
        // just formed is still adding voters (up to five): a change under way when the
        // cut comes can leave the majority short of the joint quorum (the new voters in
        // the minority), so the cut waits until the group has all five.
        let voters = self.wait_federal_voters().await?;
        let (victim, peer, _) = self.victim(isolate).await?;
        let live = self.live_indices();
        let mut fill: Vec<usize> = live
            .iter()
            .copied()
            .filter(|index| *index != victim)
            .filter(|index| {
                self.slots[*index]
                    .peer
                    .is_none_or(|peer| !voters.contains(&peer.to_string()))
            })
            .collect();
        let size = ((live.len() as f64 * fraction).round() as usize).clamp(1, live.len() / 2);
        let mut minority = HashSet::from([victim]);
        while minority.len() < size && !fill.is_empty() {
            let at = usize::try_from(self.choices.below(fill.len() as u64)).unwrap_or(0);
            minority.insert(fill.swap_remove(at));
        }
        let rest: Vec<usize> = live
            .into_iter()
            .filter(|index| !minority.contains(index))
            .collect();
        let sides: HashMap<PeerId, u8> = minority
            .iter()
            .filter_map(|index| Some((self.slots[*index].peer?, 1)))
            .collect();
        self.faults.update(|state| state.sides = sides.clone());
        let cut = Instant::now();
        self.moment(
            "fault",
            format!(
                "partition: {} with {isolate:?} {}",
                minority.len(),
                short(&peer)
            ),
        );
        self.await_cut(&sides).await?;
        let majority: HashSet<usize> = rest.into_iter().collect();
        if isolate == Target::President {
            self.wait_president(Some(&peer), Some(&majority)).await?;
            self.failovers.push(Failover {
                what: "president (partitioned away)".into(),
                ms: millis(cut.elapsed()),
            });
        }
        self.minority = Some(minority);
        Ok(())
    }

    /// Waits until no live node holds a connection across the partition `sides` (each
    /// closes its own within `CUT_CHECK`), as a real network's cut would leave them.
    async fn await_cut(&mut self, sides: &HashMap<PeerId, u8>) -> Result<()> {
        let started = Instant::now();
        let side = |peer: &PeerId| sides.get(peer).copied().unwrap_or(0);
        loop {
            let mut across = 0usize;
            for (_, running) in self.live() {
                let me = running.node.peer_id();
                across += running
                    .node
                    .connected_peers()
                    .await
                    .iter()
                    .filter(|peer| side(peer) != side(&me))
                    .count();
            }
            if across == 0 {
                self.moment(
                    "fault",
                    format!(
                        "no connection across the partition after {} ms",
                        millis(started.elapsed())
                    ),
                );
                return Ok(());
            }
            if started.elapsed() > CUT_PATIENCE {
                bail!(
                    "{across} connections still cross the partition after {} s",
                    CUT_PATIENCE.as_secs()
                );
            }
            tokio::time::sleep(aamas_node::net::faults::CUT_CHECK).await;
        }
    }

    async fn heal(&mut self) -> Result<()> {
        self.faults.update(|state| state.sides.clear());
        let healed = Instant::now();
        self.moment("heal", "partition heals");
        // The sides are kept until one president is agreed, for a failure to name them.
        let agreed = self.wait_president(None, None).await;
        self.minority = None;
        agreed?;
        self.failovers.push(Failover {
            what: "heal: one president again".into(),
            ms: millis(healed.elapsed()),
        });
        self.check_placement().await
    }

    /// After healing, every member must be in exactly one state: waits (up to
    /// PLACEMENT_PATIENCE) for the president to place newcomers, then checks.
    async fn check_placement(&mut self) -> Result<()> {
        let patience = Instant::now() + PLACEMENT_PATIENCE;
        loop {
            self.observe(false).await;
            let president = self.president.clone().context("no president")?;
            let index = self.index_of(&president).context("president")?;
            let running = self.slots[index].running.as_ref().context("president")?;
            let tree = running.node.hierarchy().await;
            if tree.unplaced.is_empty() || Instant::now() > patience {
                let mut states: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for state in &tree.states {
                    for worker in &state.workers {
                        states
                            .entry(worker.clone())
                            .or_default()
                            .push(state.name.clone());
                    }
                }
                for member in &tree.unplaced {
                    states.entry(member.clone()).or_default();
                }
                self.checker.placement(
                    states
                        .iter()
                        .map(|(member, states)| (member.as_str(), states.clone())),
                );
                return Ok(());
            }
            tokio::time::sleep(self.poll()).await;
        }
    }

    async fn join(&mut self, count: usize) -> Result<()> {
        let live = self.live_indices();
        let index = self.choices.pick(&live).context("no live node")?;
        let running = self.slots[index].running.as_ref().context("live")?;
        self.join.0 = dial_addr(&running.node)
            .await
            .context("a live node listens nowhere")?;
        // A token of the node they join through: the founder's may be of a member that
        // has left since (churn), and a mesh refuses tokens of non-members.
        self.join.1 = running
            .node
            .create_token(JOIN_TOKEN_TTL, u32::try_from(count).unwrap_or(u32::MAX))
            .context("issuing a join token")?;
        self.moment("step", format!("{count} nodes join"));
        self.add_nodes(count).await
    }

    async fn leave(&mut self, count: usize) -> Result<()> {
        for _ in 0..count {
            let president = self.president.clone();
            let candidates: Vec<usize> = self
                .live()
                .filter(|(_, running)| Some(running.node.peer_id().to_string()) != president)
                .map(|(index, _)| index)
                .collect();
            let Some(index) = self.choices.pick(&candidates) else {
                bail!("no node left that may leave");
            };
            let running = self.slots[index].running.take().context("live")?;
            self.slots[index].bytes_before += running.node.bytes_sent();
            self.slots[index].connections_before += running.node.connections().1;
            self.slots[index].left = true;
            let peer = running.node.peer_id().to_string();
            match running.leave().await {
                Ok(()) => self.moment("fault", format!("leave {}", short(&peer))),
                Err(error) => {
                    tracing::warn!(%error, peer = short(&peer), "a node left, not from every group");
                    self.moment("fault", format!("leave {} ({error})", short(&peer)));
                }
            }
            self.observe(false).await;
        }
        Ok(())
    }

    /// Publishes `count` probes from random live nodes (not `avoid`, which is not
    /// expected to receive them either), `gap` apart.
    pub(crate) async fn send_probes_avoiding(
        &mut self,
        count: usize,
        gap: Duration,
        avoid: Option<usize>,
    ) -> Vec<Probe> {
        let mut probes = Vec::new();
        for _ in 0..count {
            let live: Vec<usize> = self
                .live_indices()
                .into_iter()
                .filter(|index| Some(*index) != avoid)
                .filter(|index| self.minority.as_ref().is_none_or(|m| !m.contains(index)))
                .collect();
            let Some(origin) = self.choices.pick(&live) else {
                break;
            };
            let Some(running) = self.slots[origin].running.as_ref() else {
                continue;
            };
            let sent = Instant::now();
            match running.node.probe().await {
                Ok(id) => probes.push(Probe {
                    id,
                    origin,
                    sent,
                    expected: live.iter().copied().filter(|i| *i != origin).collect(),
                }),
                Err(error) => tracing::warn!(%error, "probe not published"),
            }
            tokio::time::sleep(gap).await;
        }
        probes
    }

    /// Waits (up to PROBE_PATIENCE after the last) for `probes` to arrive everywhere;
    /// records their delays; returns, per probe, (reached, expected), and the nodes
    /// expected to receive some that received none.
    pub(crate) async fn collect_probes(
        &mut self,
        probes: Vec<Probe>,
    ) -> Result<(Vec<(usize, usize)>, Vec<String>)> {
        let patience = Instant::now() + PROBE_PATIENCE;
        let mut arrivals: HashMap<(usize, aamas_protocol::MessageId), Instant>;
        loop {
            arrivals = HashMap::new();
            let wanted: HashSet<aamas_protocol::MessageId> =
                probes.iter().map(|probe| probe.id).collect();
            for (index, running) in self.live() {
                for (id, at) in running.node.deliveries() {
                    if wanted.contains(&id) {
                        arrivals.insert((index, id), at);
                    }
                }
            }
            let everywhere = probes.iter().all(|probe| {
                probe
                    .expected
                    .iter()
                    .all(|index| arrivals.contains_key(&(*index, probe.id)))
            });
            if everywhere || Instant::now() > patience {
                break;
            }
            self.observe(false).await;
            tokio::time::sleep(self.poll()).await;
        }
        let mut outcome = Vec::new();
        for probe in &probes {
            let origin_state = match self.running(probe.origin) {
                Some(running) => running.node.status().await.state,
                None => None,
            };
            let mut reached = 0;
            for index in &probe.expected {
                if !arrivals.contains_key(&(*index, probe.id))
                    && let Some(running) = self.running(*index)
                {
                    let refused: Vec<String> = running
                        .node
                        .metrics_text()
                        .lines()
                        .filter(|line| line.starts_with("aamas_gossip_rejected_total"))
                        .map(str::to_string)
                        .collect();
                    let status = running.node.status().await;
                    let connected = running
                        .node
                        .members()
                        .await
                        .iter()
                        .filter(|m| m.alive)
                        .count();
                    tracing::debug!(
                        node = index,
                        state = ?status.state,
                        connected,
                        origin = probe.origin,
                        origin_state = ?origin_state,
                        ?refused,
                        "a probe did not arrive"
                    );
                }
                if let Some(at) = arrivals.get(&(*index, probe.id)) {
                    reached += 1;
                    self.probe_delays
                        .push(at.saturating_duration_since(probe.sent).as_secs_f64() * 1e3);
                }
            }
            self.probes_sent += 1;
            self.probes_expected += probe.expected.len();
            outcome.push((reached, probe.expected.len()));
        }
        let expected: HashSet<usize> = probes
            .iter()
            .flat_map(|probe| probe.expected.iter().copied())
            .collect();
        let reached: HashSet<usize> = arrivals.keys().map(|(index, _)| *index).collect();
        let starved = expected
            .difference(&reached)
            .filter_map(|index| self.slots[*index].peer.map(|peer| peer.to_string()))
            .collect();
        Ok((outcome, starved))
    }

    pub(crate) fn checker_mut(&mut self) -> &mut Checker {
        &mut self.checker
    }

    pub(crate) fn choices_mut(&mut self) -> &mut Choices {
        &mut self.choices
    }

    pub(crate) fn running(&self, index: usize) -> Option<&Running> {
        self.slots.get(index)?.running.as_ref()
    }

    pub(crate) fn live_nodes(&self) -> Vec<usize> {
        self.live_indices()
    }

    pub(crate) fn president_index(&self) -> Option<usize> {
        self.president
            .as_deref()
            .and_then(|peer| self.index_of(peer))
    }

    pub(crate) async fn observe_now(&mut self) {
        self.observe(false).await;
    }

    pub(crate) fn note(&mut self, kind: &str, what: impl Into<String>) {
        self.moment(kind, what);
    }

    /// Up to ten unfinished tasks of unfinished projects, as the Ledger replicas of the
    /// live nodes show them: state, name, phase, status, attempt, and whether the
    /// worker of the latest attempt is alive.
    async fn stuck_tasks(&self) -> String {
        let live: HashSet<String> = self
            .live()
            .filter_map(|(index, _)| self.slots[index].peer.map(|peer| peer.to_string()))
            .collect();
        let mut seen = BTreeMap::new();
        for project in self
            .projects
            .iter()
            .filter(|project| project.ended.is_none())
        {
            for (_, running) in self.live() {
                for task in running.node.project_tasks(&project.id).await {
                    if task.status != "succeeded" {
                        seen.entry((task.state.clone(), task.name.clone()))
                            .or_insert(task);
                    }
                }
            }
        }
        if seen.is_empty() {
            return format!(
                "none in any live Ledger (the president has not handed them out; {})",
                self.president_views().await
            );
        }
        seen.values()
            .take(10)
            .map(|task| {
                let worker = match &task.worker {
                    Some(peer) if live.contains(peer) => format!("worker {} (live)", short(peer)),
                    Some(peer) => format!("worker {} (gone)", short(peer)),
                    None => "no worker".into(),
                };
                format!(
                    "{}/{} ({}, {}, attempt {}, {worker})",
                    task.state, task.name, task.phase, task.status, task.attempt
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn await_projects(&mut self) -> Result<()> {
        loop {
            self.observe(false).await;
            for index in 0..self.projects.len() {
                if self.projects[index].ended.is_some() {
                    continue;
                }
                let id = self.projects[index].id.clone();
                let mut ended = None;
                for (_, running) in self.live() {
                    if let Some(project) = running.node.project(&id).await
                        && (project.status == "completed" || project.status == "failed")
                    {
                        ended = Some(project.status);
                        break;
                    }
                }
                if let Some(status) = ended {
                    self.projects[index].ended = Some((status, Instant::now()));
                }
            }
            if self.projects.iter().all(|project| project.ended.is_some()) {
                break;
            }
            if Instant::now() > self.deadline {
                let stuck = self.stuck_tasks().await;
                bail!(
                    "projects unfinished at the time limit ({} of {} tasks with results); \
                     unfinished: {stuck}",
                    self.checker.tasks_with_results(),
                    self.projects
                        .iter()
                        .map(|project| project.tasks)
                        .sum::<usize>()
                );
            }
            tokio::time::sleep(self.poll()).await;
        }
        self.check_results().await;
        self.read_events();
        let completions = self
            .events_seen
            .get("task_completion")
            .copied()
            .unwrap_or(0);
        self.checker
            .task_events(self.checker.tasks_with_results(), completions);
        for project in &self.projects {
            let status = project
                .ended
                .as_ref()
                .map_or_else(String::new, |(status, _)| status.clone());
            self.checker.project_ended(&project.id, &status);
            if status == "completed" {
                let names: Vec<String> = (0..project.tasks).map(task_name).collect();
                self.checker
                    .project_tasks(&project.id, names.iter().map(String::as_str));
            }
        }
        Ok(())
    }

    // ---- the end -----------------------------------------------------------------------

    /// Ends the run: last checks, every node stopped, the report. `error` is why the
    /// run stopped early, if it did.
    pub async fn finish(mut self, config: &SimConfig, error: Option<anyhow::Error>) -> Report {
        let error = error.map(|error| format!("{error:#}"));
        if let Some(error) = &error {
            self.moment("step", format!("stopped: {error}"));
        }
        let times = self.times;
        if let Some(progress) = &mut self.progress {
            progress.done();
        }
        self.check_results().await;
        // Statuses of every task, from the most advanced Ledger copy.
        let mut latest: BTreeMap<(String, String), (u32, String)> = BTreeMap::new();
        for project in &self.projects {
            for (_, running) in self.live() {
                for task in running.node.project_tasks(&project.id).await {
                    let entry = latest
                        .entry((project.id.clone(), task.name.clone()))
                        .or_insert((0, String::new()));
                    if task.attempt >= entry.0 {
                        *entry = (task.attempt, task.status.clone());
                    }
                }
            }
        }
        let mut task_statuses = BTreeMap::new();
        for (_, status) in latest.values() {
            *task_statuses.entry(status.clone()).or_insert(0) += 1;
        }
        let bytes: Vec<u64> = self
            .slots
            .iter()
            .map(|slot| {
                slot.bytes_before
                    + slot
                        .running
                        .as_ref()
                        .map_or(0, |running| running.node.bytes_sent())
            })
            .collect();
        let open: Vec<u64> = self
            .live()
            .map(|(_, running)| running.node.connections().0)
            .collect();
        let mirrors = self
            .live()
            .filter(|(_, running)| !running.node.in_federal_group())
            .count();
        let epochs: Vec<u64> = self
            .live()
            .map(|(_, running)| running.node.group_key_epoch())
            .collect();
        let newest_epoch = epochs.iter().copied().max().unwrap_or(0);
        let holding_newest = epochs
            .iter()
            .filter(|epoch| **epoch == newest_epoch)
            .count();
        let opened: u64 = self
            .slots
            .iter()
            .map(|slot| {
                slot.connections_before
                    + slot
                        .running
                        .as_ref()
                        .map_or(0, |running| running.node.connections().1)
            })
            .sum();
        let peak = peak_memory_bytes();
        let nodes_ever = self.slots.len();
        // Crash rather than stop: the run is over, and a thousand hand-overs take long.
        // All at once: each waits for its own database to close.
        let crashing = self
            .slots
            .iter_mut()
            .filter_map(|slot| slot.running.take())
            .map(|running| running.crash());
        for result in futures::future::join_all(crashing).await {
            if let Err(error) = result {
                tracing::warn!(%error, "a node did not close at the end of the run");
            }
        }
        let tasks: usize = self.projects.iter().map(|project| project.tasks).sum();
        let first_submitted = self.projects.iter().map(|project| project.submitted).min();
        let last_end = self
            .projects
            .iter()
            .filter_map(|project| project.ended.as_ref().map(|(_, at)| *at))
            .max();
        let tasks_per_sec = match (first_submitted, last_end) {
            (Some(start), Some(end)) if end > start => {
                tasks as f64 / end.duration_since(start).as_secs_f64()
            }
            _ => 0.0,
        };
        let _ = config.nodes;
        Report {
            scenario: config.scenario.name.clone(),
            nodes: config.nodes,
            nodes_ever,
            seed: config.seed,
            completed: error.is_none(),
            error,
            time_to_first_president_ms: times.0,
            time_to_full_mesh_ms: times.1,
            failovers: self.failovers.clone(),
            gossip: GossipReport::new(self.probes_sent, self.probes_expected, &self.probe_delays),
            projects: self
                .projects
                .iter()
                .map(|project| ProjectReport {
                    id: project.id.clone(),
                    tasks: project.tasks,
                    status: project
                        .ended
                        .as_ref()
                        .map_or_else(|| "unfinished".to_string(), |(status, _)| status.clone()),
                    secs: project.ended.as_ref().map_or(0.0, |(_, at)| {
                        at.duration_since(project.submitted).as_secs_f64()
                    }),
                })
                .collect(),
            tasks,
            tasks_per_sec,
            peak_memory_bytes: peak,
            peak_memory_per_node_bytes: peak / nodes_ever.max(1) as u64,
            bytes_sent_per_node_mean: bytes.iter().sum::<u64>() / bytes.len().max(1) as u64,
            bytes_sent_per_node_max: bytes.iter().copied().max().unwrap_or(0),
            connections_per_node_mean: open.iter().sum::<u64>() as f64 / open.len().max(1) as f64,
            connections_per_node_max: open.iter().copied().max().unwrap_or(0),
            registry_mirrors: mirrors,
            group_key_epoch: newest_epoch,
            group_key_holders: holding_newest,
            federal_members: open.len().saturating_sub(mirrors),
            connections_opened_per_node_mean: opened as f64 / nodes_ever.max(1) as f64,
            messages_dropped: self.faults.dropped(),
            messages_delayed: self.faults.delayed(),
            connections_cut: self.faults.connections_cut(),
            terms_seen: self.checker.terms(),
            governor_terms_seen: self.checker.governor_terms(),
            results_seen: self.checker.tasks_with_results(),
            events_seen: self.events_seen.clone(),
            events_missed: self.events_missed,
            task_statuses,
            violations: self
                .checker
                .violations()
                .iter()
                .map(ToString::to_string)
                .collect(),
            timeline: self.timeline.clone(),
            propagation_ms: self.probe_delays.clone(),
            wall_ms: millis(self.started.elapsed()),
        }
    }

    /// Test hook: commits a second result for a completed task through its state's
    /// governor, so that a test can see the checker catch it.
    pub async fn overwrite_a_result(&mut self) -> Result<String> {
        let project = self.projects.first().context("no project")?.id.clone();
        for (_, running) in self.live() {
            for task in running.node.project_tasks(&project).await {
                if task.result.is_some()
                    && running
                        .node
                        .overwrite_result(&project, &task.name)
                        .await
                        .is_ok()
                {
                    return Ok(format!("{project}/{}", task.name));
                }
            }
        }
        Err(anyhow!("no governor could overwrite a result"))
    }
}

/// Where to dial `node`: its first listen address with its peer id.
pub(crate) async fn dial_addr(node: &aamas_node::driver::runtime::Node) -> Option<String> {
    let addr = node.status().await.listen_addrs.into_iter().next()?;
    Some(format!("{addr}/p2p/{}", node.peer_id()))
}

/// The president every one of `named` follows, if they all follow the same one.
fn agreed(named: &[Option<String>]) -> Option<String> {
    let first = named.first().cloned().flatten()?;
    named
        .iter()
        .all(|president| president.as_deref() == Some(first.as_str()))
        .then_some(first)
}

/// The progress line on stderr: redrawn in place on a terminal, else a line every 10 s.
#[derive(Debug, Default)]
struct Progress {
    last: Option<Instant>,
}

impl Progress {
    fn show(&mut self, line: String) {
        use std::io::{IsTerminal as _, Write as _};
        let terminal = std::io::stderr().is_terminal();
        let every = if terminal {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(10)
        };
        if self.last.is_some_and(|last| last.elapsed() < every) {
            return;
        }
        self.last = Some(Instant::now());
        let mut stderr = std::io::stderr().lock();
        if terminal {
            let _ = write!(stderr, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(stderr, "{line}");
        }
        let _ = stderr.flush();
    }

    fn done(&mut self) {
        use std::io::{IsTerminal as _, Write as _};
        if std::io::stderr().is_terminal() {
            let _ = writeln!(std::io::stderr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_makes_the_same_workload() {
        let a = workload(20, 4, &mut Choices::new(7));
        let b = workload(20, 4, &mut Choices::new(7));
        let c = workload(20, 4, &mut Choices::new(8));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(aamas_node::spec::parse(&a).is_ok());
        let one = workload(20, 1, &mut Choices::new(7));
        assert!(!one.contains("financial") && one.contains("technical"));
    }

    #[test]
    fn agreement_needs_every_node() {
        let a = Some("a".to_string());
        assert_eq!(agreed(&[a.clone(), a.clone()]), a);
        assert_eq!(agreed(&[a.clone(), None]), None);
        assert_eq!(agreed(&[a, Some("b".into())]), None);
        assert_eq!(agreed(&[]), None);
    }
}
