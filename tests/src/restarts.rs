//! `kill -9` and restart, over and over, under write load: hosts ([`Hosts`]) run a mesh
//! while writers submit projects as fast as they are answered, and a seeded loop kills
//! one host's process at a random moment and starts it again on its data dir. At the
//! end every acknowledged project must be on every node, and ended.
//!
//! ```text
//!   writers: submit, submit, ...  to random live hosts (the next victim included)
//!   loop N times: wait 0.2..1.5 s ─► kill -9 a random host ─► start it again ─►
//!                 wait until it answers and names a president
//!   end: stop writing ─► every acknowledged id on every node's Registry copy?
//! ```
//!
//! An acknowledgement is an id returned by `POST /api/v1/projects`: the node answers
//! once the Registry group committed the project, so a kill of the node that answered,
//! a moment later, must not lose it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::campaign::Rng;
use crate::{Hosts, Node, first_listen_addr, governed_state, init, wait_for};

/// A restart run's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Hosts (3 to 9).
    pub hosts: usize,
    /// Chooses the victims and the moments.
    pub seed: u64,
    /// How many `kill -9` and restarts.
    pub restarts: usize,
    /// Writers submitting at once.
    pub writers: usize,
    /// Whether the nodes sync their writes (the default of a real node).
    pub fsync: bool,
    /// Put in every node's environment (a planted bug's switch, say).
    pub env: Vec<(String, String)>,
}

/// What a restart run did and found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Hosts.
    pub hosts: usize,
    /// Restarts done.
    pub restarts: usize,
    /// Kills of each host (from 1).
    pub kills: BTreeMap<usize, usize>,
    /// Kills of the host that was president just before.
    pub president_kills: usize,
    /// Submissions sent.
    pub submitted: usize,
    /// Submissions acknowledged with an id.
    pub acknowledged: usize,
    /// Acknowledged projects that completed.
    pub completed: usize,
    /// From a restart's spawn to the node answering with a president (ms): p50, p99, max.
    pub back_ms: (u64, u64, u64),
    /// Everything the checker found wrong.
    pub violations: Vec<String>,
    /// The whole run (s).
    pub secs: f64,
}

impl Report {
    /// The run in a few lines.
    pub fn text(&self) -> String {
        let mut out = format!(
            "{} kill -9 restarts on {} hosts, seed {}, {:.0} s\n  kills per host {:?}, \
             {} of the president\n  writes: {} submitted, {} acknowledged, {} completed\n  \
             back (answering, naming a president) p50 {} ms, p99 {} ms, max {} ms\n",
            self.restarts,
            self.hosts,
            self.seed,
            self.secs,
            self.kills,
            self.president_kills,
            self.submitted,
            self.acknowledged,
            self.completed,
            self.back_ms.0,
            self.back_ms.1,
            self.back_ms.2,
        );
        if self.violations.is_empty() {
            out.push_str("  verdict: passed, no acknowledged write lost\n");
        } else {
            for violation in self.violations.iter().take(20) {
                out.push_str(&format!("  VIOLATION {violation}\n"));
            }
            if self.violations.len() > 20 {
                out.push_str(&format!("  ... {} more\n", self.violations.len() - 20));
            }
        }
        out
    }
}

/// A one-task project.
fn project(n: usize, state: &str) -> String {
    format!(
        "name = \"r{n}\"\n[[phase]]\nname = \"development\"\n  [[phase.task]]\n  name = \"t\"\n  \
         state = \"{state}\"\n  executor = \"builtin\"\n  action = \"digest\"\n  input = \"{n}\"\n"
    )
}

/// Every project on `node`'s Registry copy: id → status, read page by page; `None` when
/// the node does not answer.
pub fn projects_on(node: &Node) -> Option<BTreeMap<String, String>> {
    let mut all = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(after) => format!("/api/v1/projects?limit=5000&after={after}"),
            None => "/api/v1/projects?limit=5000".to_string(),
        };
        let (status, body) = node.api_get(&path)?;
        status.contains("200").then_some(())?;
        let page: Vec<serde_json::Value> = serde_json::from_str(&body).ok()?;
        let last = page
            .last()
            .and_then(|project| project.get("id")?.as_str().map(str::to_string));
        for project in &page {
            if let (Some(id), Some(status)) = (
                project.get("id").and_then(|v| v.as_str()),
                project.get("status").and_then(|v| v.as_str()),
            ) {
                all.insert(id.to_string(), status.to_string());
            }
        }
        match last {
            Some(last) if page.len() == 5_000 => after = Some(last),
            _ => return Some(all),
        }
    }
}

/// Runs `config` under `root`. Needs root and iproute2.
pub fn run(root: &Path, config: &Config) -> Report {
    let started = Instant::now();
    let hosts = Hosts::new(config.hosts);
    let dirs: Vec<PathBuf> = (1..=config.hosts)
        .map(|i| root.join(format!("n{i}")))
        .collect();
    let (token, _) = init(&dirs[0]);
    let env = &config.env;
    let mut nodes = vec![hosts.start_durable(1, &dirs[0], None, env, config.fsync)];
    let addr = first_listen_addr(&nodes[0]);
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        nodes.push(hosts.start_durable(i + 1, dir, Some((&addr, &token)), env, config.fsync));
    }
    wait_for("the hosts to agree on a president", || {
        crate::agreed_president(&nodes.iter().collect::<Vec<_>>(), config.hosts as u64)
    });
    wait_for("a governor for each populated state", || {
        crate::agreed_governors(&nodes.iter().collect::<Vec<_>>())
    });
    let state = governed_state(&nodes);
    let nodes: Arc<Vec<Mutex<Node>>> = Arc::new(nodes.into_iter().map(Mutex::new).collect());
    let down: Arc<Mutex<BTreeSet<usize>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let numbers = Arc::new(AtomicUsize::new(0));

    let writers: Vec<_> = (0..config.writers)
        .map(|w| {
            let (nodes, down, stop, numbers, state) = (
                nodes.clone(),
                down.clone(),
                stop.clone(),
                numbers.clone(),
                state.clone(),
            );
            let seed = config.seed ^ (0x5EED_0000 + w as u64);
            std::thread::spawn(move || {
                let mut rng = Rng::new(seed);
                let (mut sent, mut acked) = (0usize, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let host = rng.below(nodes.len() as u64) as usize;
                    if down.lock().expect("down").contains(&host) {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    }
                    let dir = nodes[host].lock().expect("node").dir.clone();
                    let n = numbers.fetch_add(1, Ordering::Relaxed);
                    sent += 1;
                    if let Ok(id) = crate::submit_in(&dir, &project(n, &state)) {
                        acked.push(id);
                    }
                }
                (sent, acked)
            })
        })
        .collect();

    let mut rng = Rng::new(config.seed);
    let mut kills: BTreeMap<usize, usize> = BTreeMap::new();
    let mut back = Vec::with_capacity(config.restarts);
    let mut president_kills = 0;
    let mut violations = Vec::new();
    for _ in 0..config.restarts {
        std::thread::sleep(Duration::from_millis(200 + rng.below(1_301)));
        let host = rng.below(config.hosts as u64) as usize;
        let mut node = nodes[host].lock().expect("node");
        let was_president = node.status().is_some_and(|status| {
            status.get("president").and_then(|p| p.as_str())
                == status.get("peer_id").and_then(|p| p.as_str())
        });
        down.lock().expect("down").insert(host);
        node.kill();
        *kills.entry(host + 1).or_default() += 1;
        president_kills += usize::from(was_president);
        let spawned = Instant::now();
        *node = hosts.start_durable(host + 1, &dirs[host], None, env, config.fsync);
        let deadline = spawned + Duration::from_secs(120);
        loop {
            let named = node
                .status()
                .is_some_and(|status| status.get("president").is_some_and(|p| !p.is_null()));
            if named {
                back.push(spawned.elapsed().as_millis() as u64);
                break;
            }
            if Instant::now() > deadline {
                violations.push(format!(
                    "host {} did not come back within 120 s of its restart",
                    host + 1
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(node);
        down.lock().expect("down").remove(&host);
        if !violations.is_empty() {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (mut submitted, mut acked) = (0, Vec::new());
    for writer in writers {
        let (sent, ids) = writer.join().expect("writer");
        submitted += sent;
        acked.extend(ids);
    }

    // Every acknowledged project on every node's copy, and ended: committed entries
    // reach every replica within seconds; a project on no node is lost.
    let deadline = Instant::now() + Duration::from_secs(300);
    let copies = loop {
        let copies: Vec<Option<BTreeMap<String, String>>> = nodes
            .iter()
            .map(|node| projects_on(&node.lock().expect("node")))
            .collect();
        let settled = copies.iter().all(|copy| {
            copy.as_ref().is_some_and(|copy| {
                acked.iter().all(|id| {
                    matches!(
                        copy.get(id).map(String::as_str),
                        Some("completed" | "failed")
                    )
                })
            })
        });
        if settled || Instant::now() > deadline {
            break copies;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let mut completed = 0;
    for id in &acked {
        let statuses: Vec<Option<&str>> = copies
            .iter()
            .map(|copy| copy.as_ref()?.get(id).map(String::as_str))
            .collect();
        if statuses.iter().all(Option::is_none) {
            violations.push(format!("lost: acknowledged project {id} is on no node"));
        } else if let Some(missing) = statuses.iter().position(Option::is_none) {
            violations.push(format!(
                "acknowledged project {id} is missing on host {}",
                missing + 1
            ));
        } else if statuses.iter().all(|status| *status == Some("completed")) {
            completed += 1;
        } else {
            violations.push(format!(
                "acknowledged project {id} did not complete everywhere: {statuses:?}"
            ));
        }
    }
    back.sort_unstable();
    let at = |q: f64| {
        back.get(((back.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(0)
    };
    Report {
        seed: config.seed,
        hosts: config.hosts,
        restarts: back.len(),
        kills,
        president_kills,
        submitted,
        acknowledged: acked.len(),
        completed,
        back_ms: (at(0.5), at(0.99), back.last().copied().unwrap_or(0)),
        violations,
        secs: started.elapsed().as_secs_f64(),
    }
}
