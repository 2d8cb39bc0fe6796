//! Fault campaigns on real hosts: `aamas` processes, each in a network namespace of its
//! own on one switch ([`Hosts`]), run a workload of projects while a seeded schedule
//! of faults hits them; at the end every fault is healed and checkers read the history
//! and each node's own replicas.
//!
//! ```text
//!   seed ─► schedule: partition (a side of 1 or 2 hosts, or the president alone),
//!           pause (SIGSTOP ... SIGCONT), kill -9 and restart, packet loss (nftables),
//!           a bridge host, delays and duplicates (the node's fault layer), clock skew,
//!           a full disk
//!   workload: a small project every second, to a random reachable host; each answer
//!             (acknowledged with an id, or refused) is recorded with its time
//!   observer: each node's (term, president) twice a second
//!   end: heal all ─► wait for every acknowledged project to end ─► checkers
//! ```
//!
//! Checkers (a violation names what it saw):
//! - **lost**: an acknowledged project no node has, or that never completes;
//! - **two results**: a task whose replicas (every node's copy of its state's Ledger)
//!   hold two different results;
//! - **two presidents**: a term in which two nodes named different presidents;
//! - **two leaders**: a Raft group and term in which two nodes' disks hold committed
//!   votes for different leaders (every node's database read twice a second and at the
//!   end, from outside: [`Votes`]);
//! - **two entries**: a Raft group whose logs, on the nodes' disks, hold two different
//!   entries at one index and term (two leaders in a term, by Raft's Log Matching), or
//!   two different committed entries at one index (a committed write lost); every
//!   database read every five seconds and at the end ([`Logs`]);
//! - **diverged**: after the heal, nodes that do not agree on the president and members.
//!
//! The two-presidents check trusts each node's report of its Raft view; the two-leaders
//! and two-entries checks trust only their disks, but sample them: a vote or an
//! uncommitted entry overwritten between two reads is not seen. Entries purged into a
//! snapshot are not compared.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::{Hosts, Node, field, first_listen_addr, governed_state, init, wait_for};

pub mod register;

/// A fault a campaign can apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A minority side (one or two hosts, chosen by the seed) cut from the rest.
    Partition,
    /// The president's host alone on its side.
    IsolatePresident,
    /// One host's process stopped (SIGSTOP), then continued.
    Pause,
    /// One host's process killed (SIGKILL) and started again on its data dir.
    Kill,
    /// A share of one host's incoming packets dropped.
    Loss,
    /// One host's wall clock set seconds to minutes off (libfaketime; its monotonic
    /// clock, which timers and Raft use, keeps time).
    ClockSkew,
    /// The other hosts split into two halves that cannot reach each other, while one
    /// bridge host reaches both (nftables drops on each side).
    Bridge,
    /// One host's data dir (a tmpfs of its own in such campaigns) filled to the last
    /// byte, then freed; a node that stopped for it is started again, as systemd would.
    DiskFull,
    /// Every message to or from one host delayed, each by its own share of a jitter, so
    /// that they overtake each other (the node's fault layer: [`faults_file`]).
    Delay,
    /// A share of one host's outbound requests sent twice, the copy up to a second late
    /// (the node's fault layer): receivers see repeats and stale messages.
    Duplicate,
}

impl Kind {
    /// Every kind's name, as [`Kind::parse`] takes it.
    pub const NAMES: &'static str = "partition, isolate_president, pause, kill, loss, \
                                     clock_skew, bridge, disk_full, delay, duplicate";

    /// Parses a name as [`Kind`] serialises it.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "partition" => Self::Partition,
            "isolate_president" => Self::IsolatePresident,
            "pause" => Self::Pause,
            "kill" => Self::Kill,
            "loss" => Self::Loss,
            "clock_skew" => Self::ClockSkew,
            "bridge" => Self::Bridge,
            "disk_full" => Self::DiskFull,
            "delay" => Self::Delay,
            "duplicate" => Self::Duplicate,
            _ => return None,
        })
    }
}

/// A campaign's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Hosts (3 to 9).
    pub hosts: usize,
    /// Everything random comes from it.
    pub seed: u64,
    /// How long faults are applied (the heal and the checks come after).
    pub duration: Duration,
    /// The kinds of fault the schedule draws from.
    pub kinds: Vec<Kind>,
    /// Put in every node's environment (a planted bug's switch, say).
    pub env: Vec<(String, String)>,
}

/// The seeded generator of the schedule and the workload: the simulator's.
pub use aamas_sim::sim::Choices as Rng;

/// One fault of the schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// When it starts, from the campaign's start (ms).
    pub at_ms: u64,
    /// How long it lasts (ms).
    pub lasts_ms: u64,
    /// What.
    pub kind: Kind,
    /// The hosts it hits (from 1); empty for the president, found when it starts. For a
    /// bridge: the bridge host first, then the first half; the rest is the other half.
    pub hosts: Vec<usize>,
    /// For a loss: the share dropped (%); for a duplication: the share sent twice (%).
    pub percent: u8,
    /// For a delay: every message's delay (ms).
    pub delay_ms: u64,
    /// For a delay: up to this much more delay, at random (ms). For a duplication: a
    /// copy goes out up to this long after its original, which goes at once (ms).
    pub jitter_ms: u64,
    /// For a clock skew: how far off the host's wall clock is set (s).
    pub skew_s: i64,
}

/// The schedule of `config`: faults one after another, each 5 to 15 s with 3 to 8 s of
/// calm between, until the duration is used. The same config gives the same schedule.
pub fn schedule(config: &Config) -> Vec<Step> {
    let mut rng = Rng::new(config.seed);
    let mut steps = Vec::new();
    let mut at = 3_000;
    let end = config.duration.as_millis() as u64;
    while !config.kinds.is_empty() {
        let lasts = 5_000 + rng.below(10_001);
        if at + lasts > end {
            break;
        }
        let kind = config.kinds[rng.below(config.kinds.len() as u64) as usize];
        let host = 1 + rng.below(config.hosts as u64) as usize;
        let hosts = match kind {
            Kind::IsolatePresident => Vec::new(),
            Kind::Partition => {
                // A minority: one host, or two when there are five or more.
                let mut side = vec![host];
                if config.hosts >= 5 && rng.below(2) == 1 {
                    side.push(1 + (host % config.hosts));
                }
                side
            }
            Kind::Bridge => {
                // The bridge, then a half of the others (chosen by the seed).
                let mut others: Vec<usize> =
                    (1..=config.hosts).filter(|other| *other != host).collect();
                let mut side = vec![host];
                for _ in 0..others.len() / 2 {
                    let at = rng.below(others.len() as u64) as usize;
                    side.push(others.swap_remove(at));
                }
                side
            }
            _ => vec![host],
        };
        let percent = if kind == Kind::Loss {
            20 + rng.below(31) as u8
        } else {
            0
        };
        let skew_s = if kind == Kind::ClockSkew {
            let off = 30 + rng.below(571) as i64;
            if rng.below(2) == 0 { off } else { -off }
        } else {
            0
        };
        // Drawn only for these kinds, so that schedules without them stay as they were.
        let (percent, delay_ms, jitter_ms) = match kind {
            Kind::Delay => (0, 20 + rng.below(181), 50 + rng.below(451)),
            Kind::Duplicate => (20 + rng.below(31) as u8, 0, rng.below(1_001)),
            _ => (percent, 0, 0),
        };
        steps.push(Step {
            at_ms: at,
            lasts_ms: lasts,
            kind,
            hosts,
            percent,
            delay_ms,
            jitter_ms,
            skew_s,
        });
        at += lasts + 3_000 + rng.below(5_001);
    }
    steps
}

/// One submission of the workload.
#[derive(Debug, Clone, Serialize)]
pub struct Submission {
    /// When it was sent (ms from the start).
    pub at_ms: u64,
    /// How long until its answer (ms).
    pub took_ms: u64,
    /// The host it went to.
    pub host: usize,
    /// The project's id when acknowledged.
    pub id: Option<String>,
    /// The refusal, when not.
    pub error: Option<String>,
}

/// A fault as it was applied.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    /// The step.
    pub step: Step,
    /// The hosts it hit in the end (the president's, for an isolation).
    pub hit: Vec<usize>,
    /// When it began and ended (ms from the start).
    pub from_ms: u64,
    /// When it was healed.
    pub to_ms: u64,
    /// For an isolation of the president: from the cut until a host on the majority
    /// side acknowledged a submission, that is until the majority committed again (ms);
    /// `None` if it did not before the heal.
    pub recovered_ms: Option<u64>,
    /// For a clock skew: how far off the host said its clock was (its status's
    /// `clock_ms` against the runner's clock, s), read once the skew was set.
    pub observed_skew_s: Option<i64>,
    /// For a full disk: what the node said when it stopped (its exit and last error),
    /// if it stopped before the space came back.
    pub stopped_with: Option<String>,
    /// For a fault that hit the president's host: from its start until a host it did
    /// not hit named another president (ms, as good as the observer's samples, about a
    /// second); `None` when none did before the heal or the president was not hit.
    pub failover_ms: Option<u64>,
}

/// One look of the observer at one node: its (term, president) at `at_ms`.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// When (ms from the start).
    pub at_ms: u64,
    /// The host looked at.
    pub host: usize,
    /// Its term.
    pub term: u64,
    /// The president it named.
    pub president: String,
}

/// What a campaign did and found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Hosts.
    pub hosts: usize,
    /// The faults, in order.
    pub faults: Vec<Applied>,
    /// Every submission, in order.
    pub submissions: Vec<Submission>,
    /// Each term and the presidents nodes named in it.
    pub presidents: BTreeMap<u64, BTreeSet<String>>,
    /// Stretches in which no submission was acknowledged (from, to, ms), longer than 3 s.
    pub unavailable: Vec<(u64, u64)>,
    /// Acknowledged projects, and how many completed.
    pub acknowledged: usize,
    /// Acknowledged projects that completed.
    pub completed: usize,
    /// Tasks checked across replicas.
    pub tasks_checked: usize,
    /// Terms of a Raft group (the federal one or a state's) in which some node's disk
    /// held a vote granted by a quorum, that is a leader.
    pub leader_terms: usize,
    /// Reads of the nodes' persisted votes.
    pub vote_reads: DiskReads,
    /// The register's history: every write, and every read that was answered.
    pub register: Vec<RegisterOp>,
    /// Consistent reads refused (a 503: no read index, or a copy that did not catch up)
    /// or not answered.
    pub register_reads_refused: u64,
    /// What the full linearizability search of the register's history found.
    pub register_verdict: register::Verdict,
    /// Log entries (group and index) that some node's disk held as committed.
    pub committed_entries: usize,
    /// Reads of the nodes' Raft logs.
    pub log_reads: DiskReads,
    /// Tasks of acknowledged projects with a committed result, over time: (ms, tasks),
    /// about once a second.
    pub progress: Vec<(u64, u64)>,
    /// Everything a checker found wrong.
    pub violations: Vec<String>,
    /// From the first fault to the end of the checks (s).
    pub secs: f64,
}

impl Report {
    /// A page a person reads: the seed, the faults on a timeline, the workload, the
    /// unavailability, and the verdict.
    pub fn text(&self) -> String {
        let mut out = format!(
            "campaign on {} hosts, seed {} ({:.0} s)\n",
            self.hosts, self.seed, self.secs
        );
        for fault in &self.faults {
            out.push_str(&format!(
                "  {:>7.1} s .. {:>7.1} s  {:?} on hosts {:?}{}{}\n",
                fault.from_ms as f64 / 1e3,
                fault.to_ms as f64 / 1e3,
                fault.step.kind,
                fault.hit,
                match (fault.step.percent, fault.step.kind, fault.recovered_ms) {
                    (_, Kind::Delay, _) => format!(
                        " ({} ms + up to {} ms)",
                        fault.step.delay_ms, fault.step.jitter_ms
                    ),
                    (percent, Kind::Duplicate, _) => format!(
                        " ({percent}% of requests twice, the copy up to {} ms late)",
                        fault.step.jitter_ms
                    ),
                    (percent, _, _) if percent > 0 => format!(" ({percent}% lost)"),
                    (_, Kind::IsolatePresident, Some(ms)) => {
                        format!(
                            " (the majority committed again after {:.1} s)",
                            ms as f64 / 1e3
                        )
                    }
                    (_, Kind::IsolatePresident, None) => {
                        " (the majority did not commit before the heal)".to_string()
                    }
                    (_, Kind::DiskFull, _) => format!(
                        " ({})",
                        fault
                            .stopped_with
                            .as_deref()
                            .unwrap_or("the node did not stop")
                    ),
                    (_, Kind::Bridge, _) => format!(
                        " (host {} bridges {:?} and the rest)",
                        fault.hit.first().copied().unwrap_or(0),
                        fault.hit.get(1..).unwrap_or_default()
                    ),
                    (_, Kind::ClockSkew, _) => format!(
                        " ({:+} s; the node's clock said {})",
                        fault.step.skew_s,
                        fault
                            .observed_skew_s
                            .map_or("nothing".to_string(), |s| format!("{s:+} s"))
                    ),
                    _ => String::new(),
                },
                fault.failover_ms.map_or(String::new(), |ms| format!(
                    "; a new president after {:.1} s",
                    ms as f64 / 1e3
                ))
            ));
        }
        let acked = self.submissions.iter().filter(|s| s.id.is_some()).count();
        out.push_str(&format!(
            "  workload: {} submissions, {acked} acknowledged, {} completed; {} tasks checked\n",
            self.submissions.len(),
            self.completed,
            self.tasks_checked
        ));
        let (under, outside) = self.throughput();
        out.push_str(&format!(
            "  {}; the workload offers 4 a second\n",
            Throughput::line(under, outside)
        ));
        for (from, to) in &self.unavailable {
            out.push_str(&format!(
                "  no acknowledgement {:.1} s .. {:.1} s ({:.1} s)\n",
                *from as f64 / 1e3,
                *to as f64 / 1e3,
                (to - from) as f64 / 1e3
            ));
        }
        out.push_str(&format!("  terms seen: {}\n", self.presidents.len()));
        out.push_str(&format!(
            "  persisted votes: {} group terms with a leader, from {}\n",
            self.leader_terms,
            self.vote_reads.line()
        ));
        out.push_str(&format!(
            "  persisted logs: {} committed entries compared, from {}\n",
            self.committed_entries,
            self.log_reads.line()
        ));
        let writes = self.register.iter().filter(|op| op.write).count();
        out.push_str(&format!(
            "  register: {writes} writes ({} acknowledged), {} consistent reads answered, {} \
             refused\n",
            self.register
                .iter()
                .filter(|op| op.write && op.complete_ms.is_some())
                .count(),
            self.register.len() - writes,
            self.register_reads_refused
        ));
        out.push_str(&format!(
            "  register history: {}\n",
            self.register_verdict.describe()
        ));
        if self.violations.is_empty() {
            out.push_str("  verdict: passed, no violation\n");
        } else {
            for violation in &self.violations {
                out.push_str(&format!("  VIOLATION {violation}\n"));
            }
        }
        out
    }
}

/// Tasks committed in a stretch of time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Throughput {
    /// Tasks that got their result.
    pub tasks: u64,
    /// The time (ms).
    pub ms: u64,
}

impl Throughput {
    /// Adds another stretch's tasks and time.
    pub fn add(&mut self, other: Throughput) {
        self.tasks += other.tasks;
        self.ms += other.ms;
    }

    /// "tasks committed: R per second under faults (N in S s), R per second outside
    /// them (N in S s)", for the reports.
    pub fn line(under: Throughput, outside: Throughput) -> String {
        format!(
            "tasks committed: {} per second under faults ({} in {:.0} s), {} per second \
             outside them ({} in {:.0} s)",
            under.per_second(),
            under.tasks,
            under.ms as f64 / 1e3,
            outside.per_second(),
            outside.tasks,
            outside.ms as f64 / 1e3
        )
    }

    /// Tasks per second, to one decimal ("-" with no time).
    pub fn per_second(&self) -> String {
        if self.ms == 0 {
            "-".to_string()
        } else {
            format!("{:.1}", self.tasks as f64 * 1e3 / self.ms as f64)
        }
    }
}

impl Report {
    /// Tasks committed while some fault was applied, and while none was: each gap
    /// between two looks at the progress counts for the side its middle falls on.
    pub fn throughput(&self) -> (Throughput, Throughput) {
        let mut under = Throughput::default();
        let mut outside = Throughput::default();
        let faulty = |ms: u64| {
            self.faults
                .iter()
                .any(|fault| fault.from_ms <= ms && ms < fault.to_ms)
        };
        for pair in self.progress.windows(2) {
            let ((from, before), (to, after)) = (pair[0], pair[1]);
            let side = if faulty(from + (to - from) / 2) {
                &mut under
            } else {
                &mut outside
            };
            side.tasks += after.saturating_sub(before);
            side.ms += to - from;
        }
        (under, outside)
    }

    /// The campaign as a picture (SVG): time across; a row per host with its faults as
    /// coloured bars; below, the workload's submissions as ticks (green acknowledged, red
    /// refused, at the time of the answer) and the stretches without an
    /// acknowledgement shaded.
    pub fn svg(&self) -> String {
        const LEFT: f64 = 90.0;
        const WIDTH: f64 = 900.0;
        const ROW: f64 = 22.0;
        let end_ms = self
            .submissions
            .iter()
            .map(|s| s.at_ms + s.took_ms)
            .chain(self.faults.iter().map(|f| f.to_ms))
            .max()
            .unwrap_or(1)
            .max(1);
        let x = |ms: u64| LEFT + WIDTH * ms as f64 / end_ms as f64;
        let workload_y = 30.0 + ROW * self.hosts as f64 + 10.0;
        let tasks_y = workload_y + ROW + 4.0;
        let height = tasks_y + 2.0 * ROW + 2.0 * ROW + 60.0;
        let mut out = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" \
             font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"{LEFT}\" y=\"18\">campaign on {} hosts, seed {}: {} acknowledged, {} \
             completed, {} violations</text>\n",
            LEFT + WIDTH + 20.0,
            self.hosts,
            self.seed,
            self.acknowledged,
            self.completed,
            self.violations.len()
        );
        for (from, to) in &self.unavailable {
            out.push_str(&format!(
                "<rect class=\"unavailable\" x=\"{:.1}\" y=\"26\" width=\"{:.1}\" \
                 height=\"{:.1}\" fill=\"#eeeeee\"><title>no acknowledgement {:.1} s .. \
                 {:.1} s</title></rect>\n",
                x(*from),
                x(*to) - x(*from),
                workload_y + ROW - 26.0,
                *from as f64 / 1e3,
                *to as f64 / 1e3
            ));
        }
        for host in 1..=self.hosts {
            let y = 30.0 + ROW * (host - 1) as f64;
            out.push_str(&format!(
                "<text x=\"8\" y=\"{:.1}\">host {host}</text>\n\
                 <line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" \
                 stroke=\"#cccccc\"/>\n",
                y + 14.0,
                LEFT + WIDTH,
                y + ROW / 2.0,
                y + ROW / 2.0
            ));
        }
        for fault in &self.faults {
            let name = serde_json::to_value(fault.step.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            for host in &fault.hit {
                let y = 30.0 + ROW * (host - 1) as f64 + 3.0;
                out.push_str(&format!(
                    "<rect class=\"fault\" x=\"{:.1}\" y=\"{y:.1}\" width=\"{:.1}\" \
                     height=\"{:.1}\" fill=\"{}\"><title>{name} {:.1} s .. {:.1} s</title>\
                     </rect>\n<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{name}</text>\n",
                    x(fault.from_ms),
                    (x(fault.to_ms) - x(fault.from_ms)).max(1.0),
                    ROW - 6.0,
                    colour(fault.step.kind),
                    fault.from_ms as f64 / 1e3,
                    fault.to_ms as f64 / 1e3,
                    x(fault.from_ms) + 2.0,
                    y + 12.0
                ));
            }
            if let (Some(ms), Some(host)) = (fault.failover_ms, fault.hit.first()) {
                let at = x(fault.from_ms + ms);
                let y = 30.0 + ROW * (*host - 1) as f64;
                out.push_str(&format!(
                    "<line class=\"failover\" x1=\"{at:.1}\" x2=\"{at:.1}\" y1=\"{y:.1}\" \
                     y2=\"{:.1}\" stroke=\"black\" stroke-width=\"2\"><title>a new president \
                     after {:.1} s</title></line>\n",
                    y + ROW,
                    ms as f64 / 1e3
                ));
            }
        }
        out.push_str(&format!(
            "<text x=\"8\" y=\"{:.1}\">workload</text>\n",
            workload_y + 14.0
        ));
        for submission in &self.submissions {
            let at = x(submission.at_ms + submission.took_ms);
            let (class, fill) = if submission.id.is_some() {
                ("acknowledged", "#2e7d32")
            } else {
                ("refused", "#c62828")
            };
            out.push_str(&format!(
                "<line class=\"{class}\" x1=\"{at:.1}\" x2=\"{at:.1}\" y1=\"{:.1}\" \
                 y2=\"{:.1}\" stroke=\"{fill}\"/>\n",
                workload_y + 2.0,
                workload_y + ROW - 2.0
            ));
        }
        // Committed tasks, rising over time: flat where faults stall the work.
        let most = self.progress.last().map_or(0, |(_, tasks)| *tasks).max(1);
        let points: Vec<String> = self
            .progress
            .iter()
            .map(|(ms, tasks)| {
                format!(
                    "{:.1},{:.1}",
                    x(*ms),
                    tasks_y + 2.0 * ROW * (1.0 - *tasks as f64 / most as f64)
                )
            })
            .collect();
        out.push_str(&format!(
            "<text x=\"8\" y=\"{:.1}\">tasks</text>\n<polyline class=\"tasks\" \
             points=\"{}\" fill=\"none\" stroke=\"#37474f\"><title>{most} tasks committed \
             by the end</title></polyline>\n",
            tasks_y + 14.0,
            points.join(" ")
        ));
        // The time axis, every 10 s.
        let axis_y = tasks_y + 2.0 * ROW + 14.0;
        for second in (0..=end_ms / 1_000).step_by(10) {
            out.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{axis_y:.1}\" font-size=\"10\">{second} s</text>\n",
                x(second * 1_000)
            ));
        }
        out.push_str(&format!(
            "<text x=\"{LEFT}\" y=\"{:.1}\" font-size=\"10\">grey: no acknowledgement for \
             more than 3 s; ticks: answers (green acknowledged, red refused); black bar: a new \
             president; line: tasks committed so far</text>\n</svg>\n",
            axis_y + 20.0
        ));
        out
    }
}

/// A fault kind's colour in [`Report::svg`].
fn colour(kind: Kind) -> &'static str {
    match kind {
        Kind::Partition => "#90caf9",
        Kind::IsolatePresident => "#1565c0",
        Kind::Pause => "#ffe082",
        Kind::Kill => "#ef9a9a",
        Kind::Loss => "#ce93d8",
        Kind::ClockSkew => "#a5d6a7",
        Kind::Bridge => "#80deea",
        Kind::DiskFull => "#bcaaa4",
        Kind::Delay => "#ffcc80",
        Kind::Duplicate => "#f48fb1",
    }
}

/// A small project of four digest tasks in `state`.
fn project(n: usize, state: &str) -> String {
    let mut spec = format!("name = \"c{n}\"\n[[phase]]\nname = \"development\"\n");
    for t in 0..4 {
        spec.push_str(&format!(
            "  [[phase.task]]\n  name = \"t{t}\"\n  state = \"{state}\"\n  executor = \"builtin\"\n  \
             action = \"digest\"\n  input = \"{n}-{t}\"\n  retries = 2\n"
        ));
    }
    spec
}

/// What the campaign's threads share.
struct Shared {
    nodes: Vec<Mutex<Node>>,
    /// Hosts that take no submission now (paused or killed).
    down: Mutex<BTreeSet<usize>>,
    stop: std::sync::atomic::AtomicBool,
    start: Instant,
    /// The host of the president most nodes named at the observer's last look.
    president: Mutex<Option<usize>>,
    /// The ids of the acknowledged projects, as they are acknowledged.
    acked: Mutex<Vec<String>>,
}

impl Shared {
    fn ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

/// Runs a campaign under `root` (data dirs, logs). Needs root, iproute2 and nftables.
pub fn run(root: &Path, config: &Config) -> Report {
    let steps = schedule(config);
    let hosts = Hosts::new(config.hosts);
    let dirs: Vec<PathBuf> = (1..=config.hosts)
        .map(|i| root.join(format!("n{i}")))
        .collect();
    // Data dirs that can fill: a small tmpfs each, unmounted at the end.
    let _disks = config
        .kinds
        .contains(&Kind::DiskFull)
        .then(|| Disks::mount(&dirs));
    let (token, _) = init(&dirs[0]);
    let skewed = config.kinds.contains(&Kind::ClockSkew);
    let layered = config.kinds.contains(&Kind::Delay) || config.kinds.contains(&Kind::Duplicate);
    let envs: Vec<Vec<(String, String)>> = dirs
        .iter()
        .map(|dir| {
            let mut env = host_env(&config.env, skewed.then_some(dir.as_path()));
            if layered {
                env.push((
                    aamas_node::net::faults::TEST_FAULTS.to_string(),
                    faults_file(dir).display().to_string(),
                ));
            }
            env
        })
        .collect();
    let mut nodes = vec![hosts.start_env(1, &dirs[0], None, &envs[0])];
    let addr = first_listen_addr(&nodes[0]);
    for (i, dir) in dirs.iter().enumerate().skip(1) {
        nodes.push(hosts.start_env(i + 1, dir, Some((&addr, &token)), &envs[i]));
    }
    wait_for("the hosts to agree on a president", || {
        crate::agreed_president(&nodes.iter().collect::<Vec<_>>(), config.hosts as u64)
    });
    wait_for("a governor for each populated state", || {
        crate::agreed_governors(&nodes.iter().collect::<Vec<_>>())
    });
    let state = governed_state(&nodes);
    // Each host's peer id (its identity stays with its data dir across restarts).
    let peers: Vec<Option<String>> = nodes
        .iter()
        .map(|node| field(&status_of(&node.dir)?, "peer_id"))
        .collect();
    let shared = Arc::new(Shared {
        nodes: nodes.into_iter().map(Mutex::new).collect(),
        down: Mutex::new(BTreeSet::new()),
        stop: std::sync::atomic::AtomicBool::new(false),
        start: Instant::now(),
        president: Mutex::new(None),
        acked: Mutex::default(),
    });
    let hosts_n = config.hosts;

    // The workload.
    let workload = {
        let shared = shared.clone();
        let seed = config.seed;
        let state = state.clone();
        std::thread::spawn(move || {
            let mut rng = Rng::new(seed ^ 0xA5A5);
            let mut out = Vec::new();
            let mut n = 0;
            while !shared.stop.load(std::sync::atomic::Ordering::Relaxed) {
                let host = 1 + rng.below(hosts_n as u64) as usize;
                if shared.down.lock().expect("down").contains(&host) {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                let at_ms = shared.ms();
                let dir = shared.nodes[host - 1].lock().expect("node").dir.clone();
                let answer = crate::submit_in(&dir, &project(n, &state));
                n += 1;
                if let Ok(id) = &answer {
                    shared.acked.lock().expect("acked").push(id.clone());
                }
                out.push(Submission {
                    at_ms,
                    took_ms: shared.ms() - at_ms,
                    host,
                    id: answer.as_ref().ok().cloned(),
                    error: answer.err(),
                });
                std::thread::sleep(Duration::from_millis(1_000));
            }
            out
        })
    };
    // The observer of (term, president).
    let observer = {
        let shared = shared.clone();
        let peers = peers.clone();
        std::thread::spawn(move || {
            let mut samples: Vec<Sample> = Vec::new();
            let mut votes = Votes::default();
            let mut logs = Logs::default();
            let mut rounds = 0u64;
            while !shared.stop.load(std::sync::atomic::Ordering::Relaxed) {
                let round = samples.len();
                rounds += 1;
                for (i, node) in shared.nodes.iter().enumerate() {
                    let dir = node.lock().expect("node").dir.clone();
                    // The disk, whether the process runs or not.
                    votes.read(i + 1, &dir);
                    if rounds.is_multiple_of(10) {
                        logs.read(i + 1, &dir);
                    }
                    if shared.down.lock().expect("down").contains(&(i + 1)) {
                        continue;
                    }
                    if let Some((term, president)) = view(&dir) {
                        samples.push(Sample {
                            at_ms: shared.ms(),
                            host: i + 1,
                            term,
                            president,
                        });
                    }
                }
                // The president most of this round's looks named, and its host.
                let mut named: BTreeMap<&str, usize> = BTreeMap::new();
                for sample in &samples[round..] {
                    *named.entry(sample.president.as_str()).or_default() += 1;
                }
                let most = named.into_iter().max_by_key(|(_, count)| *count);
                let host = most.and_then(|(president, _)| host_of(&peers, president));
                *shared.president.lock().expect("president") = host;
                std::thread::sleep(Duration::from_millis(500));
            }
            (samples, votes, logs)
        })
    };

    // The register: one writer of increasing amounts at the president's host, one
    // reader at random hosts that are up.
    let register_write = {
        let shared = shared.clone();
        let path = format!("/api/v1/resources/{state}/api_calls");
        std::thread::spawn(move || {
            let mut ops = Vec::new();
            let mut next = 1;
            while !shared.stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Limits are set by the president's operator only: at its host.
                let Some(host) = *shared.president.lock().expect("president") else {
                    std::thread::sleep(Duration::from_millis(300));
                    continue;
                };
                let body = format!(r#"{{"amount": {next}, "per": "total", "hard": false}}"#);
                if let Some((invoke_ms, answer)) = register_call(&shared, host, "PUT", &path, &body)
                {
                    ops.push(RegisterOp {
                        write: true,
                        value: Some(next),
                        host,
                        invoke_ms,
                        complete_ms: answer.map(|(done, _)| done),
                    });
                    next += 1;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            ops
        })
    };
    let register_read = {
        let shared = shared.clone();
        let path = format!("/api/v1/resources/{state}/api_calls?consistent=true");
        let seed = config.seed;
        std::thread::spawn(move || {
            let mut rng = Rng::new(seed ^ 0x5EED_0002);
            let mut ops = Vec::new();
            let mut refused = 0;
            while !shared.stop.load(std::sync::atomic::Ordering::Relaxed) {
                let host = 1 + rng.below(hosts_n as u64) as usize;
                match register_call(&shared, host, "GET", &path, "") {
                    Some((invoke_ms, Some((done, body)))) => ops.push(RegisterOp {
                        write: false,
                        value: body["limit"]["amount"].as_u64(),
                        host,
                        invoke_ms,
                        complete_ms: Some(done),
                    }),
                    Some((_, None)) => refused += 1,
                    None => {}
                }
                std::thread::sleep(Duration::from_millis(150));
            }
            (ops, refused)
        })
    };

    // Committed tasks over time, for the throughput under faults.
    let progress = {
        let shared = shared.clone();
        std::thread::spawn(move || committed_tasks(&shared))
    };

    // The faults.
    let mut applied = Vec::new();
    let probes: Mutex<Vec<Submission>> = Mutex::default();
    for step in &steps {
        let wait = step.at_ms.saturating_sub(shared.ms());
        std::thread::sleep(Duration::from_millis(wait));
        let hit = match step.kind {
            Kind::IsolatePresident => president_host(&shared, &peers).into_iter().collect(),
            _ => step.hosts.clone(),
        };
        let from_ms = shared.ms();
        apply(&hosts, &shared, step, &hit);
        let observed_skew_s = (step.kind == Kind::ClockSkew)
            .then(|| observed_skew(&shared, &hit, step.skew_s))
            .flatten();
        let recovered_ms = (step.kind == Kind::IsolatePresident && !hit.is_empty())
            .then(|| {
                recovery(
                    &shared,
                    &hit,
                    &state,
                    from_ms,
                    from_ms + step.lasts_ms,
                    &probes,
                )
            })
            .flatten();
        std::thread::sleep(Duration::from_millis(
            (from_ms + step.lasts_ms).saturating_sub(shared.ms()),
        ));
        let stopped_with = heal(&hosts, &shared, step.kind, &hit, &envs);
        applied.push(Applied {
            step: step.clone(),
            hit,
            from_ms,
            to_ms: shared.ms(),
            recovered_ms,
            observed_skew_s,
            stopped_with,
            failover_ms: None,
        });
    }
    let end = config.duration.as_millis() as u64;
    std::thread::sleep(Duration::from_millis(end.saturating_sub(shared.ms())));
    shared
        .stop
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let mut submissions = workload.join().expect("workload");
    submissions.extend(probes.into_inner().expect("probes"));
    submissions.sort_by_key(|submission| submission.at_ms);
    let (samples, mut votes, mut logs) = observer.join().expect("observer");
    let mut register = register_write.join().expect("register writer");
    let (reads, register_reads_refused) = register_read.join().expect("register reader");
    let progress = progress.join().expect("progress");
    register.extend(reads);
    register.sort_by_key(|op| op.invoke_ms);
    let mut presidents: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for sample in &samples {
        presidents
            .entry(sample.term)
            .or_default()
            .insert(sample.president.clone());
    }
    for fault in &mut applied {
        fault.failover_ms = failover(&samples, &peers, fault);
    }

    // The checks, after every fault is healed.
    let mut violations = Vec::new();
    for (term, named) in &presidents {
        if named.len() > 1 {
            violations.push(format!("two presidents in term {term}: {named:?}"));
        }
    }
    let nodes: Vec<std::sync::MutexGuard<'_, Node>> = shared
        .nodes
        .iter()
        .map(|n| n.lock().expect("node"))
        .collect();
    let acked: Vec<&String> = submissions.iter().filter_map(|s| s.id.as_ref()).collect();
    let mut completed = 0;
    let mut tasks_checked = 0;
    // A committed project reaches every node's Registry copy within seconds of the heal;
    // one that is on no node after LOST_AFTER was never committed.
    let checking = Instant::now();
    let limit = checking + Duration::from_secs(240);
    for id in &acked {
        let status = loop {
            let status = nodes
                .iter()
                .find_map(|node| node.project(id))
                .and_then(|project| field(&project, "status"));
            let ended = matches!(status.as_deref(), Some("completed" | "failed"));
            let lost = status.is_none() && checking.elapsed() >= LOST_AFTER;
            if ended || lost || Instant::now() >= limit {
                break status;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        match status.as_deref() {
            Some("completed") => completed += 1,
            None => violations.push(format!("lost: acknowledged project {id} is on no node")),
            Some(other) => violations.push(format!(
                "acknowledged project {id} is {other} after the heal, not completed"
            )),
        }
        // Every replica's result of every task: one result per task.
        let mut results: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for node in &nodes {
            for task in node.tasks(id) {
                if let (Some(name), Some(result)) = (field(&task, "name"), field(&task, "result")) {
                    results.entry(name).or_default().insert(result);
                }
            }
        }
        tasks_checked += results.len();
        for (task, seen) in results {
            if seen.len() > 1 {
                violations.push(format!("two results for {id}/{task}: {seen:?}"));
            }
        }
    }
    let converged = {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let views: Vec<Option<(String, u64)>> = nodes
                .iter()
                .map(|node| {
                    let status = node.status()?;
                    Some((
                        field(&status, "president")?,
                        status.get("members")?.as_u64()?,
                    ))
                })
                .collect();
            let agreed = views.iter().all(|v| v.is_some() && *v == views[0]);
            if agreed || Instant::now() >= deadline {
                break agreed.then_some(()).ok_or(views);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    if let Err(views) = converged {
        violations.push(format!("diverged after the heal: {views:?}"));
    }
    for (i, node) in nodes.iter().enumerate() {
        votes.read(i + 1, &node.dir);
        logs.read(i + 1, &node.dir);
    }
    violations.extend(votes.two_leaders());
    violations.extend(logs.two_entries());
    let register_verdict = register::check(&register, register::STEP_LIMIT);
    if let register::Verdict::NotLinearizable { .. } = &register_verdict {
        violations.push(register_verdict.describe());
    }
    let stale = stale_reads(&register);
    if stale.len() > 10 {
        violations.extend(stale[..10].iter().cloned());
        violations.push(format!("stale read: {} more", stale.len() - 10));
    } else {
        violations.extend(stale);
    }
    Report {
        seed: config.seed,
        hosts: config.hosts,
        faults: applied,
        unavailable: unavailable(&submissions),
        acknowledged: acked.len(),
        submissions,
        presidents,
        completed,
        tasks_checked,
        leader_terms: votes.leaders.len(),
        vote_reads: votes.disk,
        register,
        register_reads_refused,
        register_verdict,
        progress,
        committed_entries: logs.committed.len(),
        log_reads: logs.disk,
        violations,
        secs: shared.start.elapsed().as_secs_f64(),
    }
}

/// How long a recovery probe waits for its answer: a node that forwards to a president
/// cut off waits for its RPC's timeout (10 s), so the probe gives up and tries again,
/// as a client with a deadline would.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// One call of the register workload to `host`, unless it is down: when it was sent
/// (ms), and, when it was answered with a 2xx, when and its JSON body.
fn register_call(
    shared: &Shared,
    host: usize,
    method: &str,
    path: &str,
    body: &str,
) -> Option<(u64, Option<(u64, Value)>)> {
    if shared.down.lock().expect("down").contains(&host) {
        return None;
    }
    let (addr, token) = {
        let node = shared.nodes[host - 1].lock().expect("node");
        (node.api_addr()?, node.api_token()?)
    };
    let json = [("Content-Type", "application/json")];
    let request = crate::HttpRequest {
        token: Some(&token),
        method,
        path,
        headers: if body.is_empty() { &[] } else { &json },
        body: body.as_bytes(),
    };
    let invoke_ms = shared.ms();
    let answer = crate::http_exchange(&addr, &request, Some(Duration::from_secs(3)))
        .ok()
        .filter(|(status, _, _)| status.starts_with("HTTP/1.1 2"))
        .map(|(_, _, body)| {
            (
                shared.ms(),
                serde_json::from_str(&body).unwrap_or(Value::Null),
            )
        });
    Some((invoke_ms, answer))
}

/// Follows the acknowledged projects until the campaign stops: about once a second, asks
/// one host that is up (the next in turn; one that does not answer within 3 s is passed
/// over for the next project) for each project not yet ended, and records how
/// many tasks have a committed result, each project counted at the most any host showed.
fn committed_tasks(shared: &Shared) -> Vec<(u64, u64)> {
    let mut done: BTreeMap<String, (u64, bool)> = BTreeMap::new();
    let mut samples = Vec::new();
    let mut turn = 0usize;
    while !shared.stop.load(std::sync::atomic::Ordering::Relaxed) {
        let started = Instant::now();
        for id in shared.acked.lock().expect("acked").iter() {
            done.entry(id.clone()).or_default();
        }
        let open: Vec<String> = done
            .iter()
            .filter(|(_, (_, ended))| !ended)
            .map(|(id, _)| id.clone())
            .collect();
        for id in open {
            if started.elapsed() > Duration::from_secs(2) {
                break;
            }
            let down = shared.down.lock().expect("down").clone();
            let hosts = shared.nodes.len();
            let Some(host) = (0..hosts)
                .map(|step| 1 + (turn + step) % hosts)
                .find(|host| !down.contains(host))
            else {
                break;
            };
            let path = format!("/api/v1/projects/{id}");
            let Some((_, Some((_, project)))) = register_call(shared, host, "GET", &path, "")
            else {
                turn += 1;
                continue;
            };
            let tasks: u64 = project["phases"]
                .as_array()
                .map(|phases| {
                    phases
                        .iter()
                        .filter_map(|phase| phase["tasks_done"].as_u64())
                        .sum()
                })
                .unwrap_or(0);
            let ended = matches!(project["status"].as_str(), Some("completed" | "failed"));
            let entry = done.entry(id).or_default();
            *entry = (entry.0.max(tasks), entry.1 || ended);
        }
        samples.push((shared.ms(), done.values().map(|(tasks, _)| tasks).sum()));
        std::thread::sleep(Duration::from_secs(1).saturating_sub(started.elapsed()));
    }
    samples
}

/// `POST /api/v1/projects` of `spec` to the API at `addr`, answered within `timeout`:
/// the new project's id, or why not.
fn post_project(addr: &str, token: &str, spec: &str, timeout: Duration) -> Result<String, String> {
    let request = crate::HttpRequest {
        token: Some(token),
        method: "POST",
        path: "/api/v1/projects",
        headers: &[("Content-Type", "text/plain")],
        body: spec.as_bytes(),
    };
    let (status, _, body) = crate::http_exchange(addr, &request, Some(timeout))?;
    if !status.starts_with("HTTP/1.1 201") {
        return Err(format!("{status}: {body}"));
    }
    let body: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    field(&body, "id").ok_or_else(|| "no id".to_string())
}

/// Submits to hosts outside `isolated` (one at a time, each given [`PROBE_TIMEOUT`],
/// 50 ms apart, so the figure is good to about half a second) from the cut at `from_ms` until one is acknowledged or `until_ms`: how
/// long the majority took to commit again (ms). Every submission is kept in `probes`,
/// for the checkers (one that timed out may still commit: it is not acknowledged).
fn recovery(
    shared: &Shared,
    isolated: &[usize],
    state: &str,
    from_ms: u64,
    until_ms: u64,
    probes: &Mutex<Vec<Submission>>,
) -> Option<u64> {
    let majority: Vec<usize> = (1..=shared.nodes.len())
        .filter(|host| !isolated.contains(host))
        .collect();
    let mut turn = 0;
    while shared.ms() < until_ms {
        let host = majority[turn % majority.len()];
        turn += 1;
        let at_ms = shared.ms();
        let (addr, token) = {
            let node = shared.nodes[host - 1].lock().expect("node");
            (node.api_addr(), node.api_token())
        };
        let answer = match (addr, token) {
            (Some(addr), Some(token)) => post_project(
                &addr,
                &token,
                &project(1_000_000 + turn, state),
                PROBE_TIMEOUT,
            ),
            _ => Err("no API address yet".to_string()),
        };
        let acked_ms = shared.ms();
        let acked = answer.is_ok();
        if let Ok(id) = &answer {
            shared.acked.lock().expect("acked").push(id.clone());
        }
        probes.lock().expect("probes").push(Submission {
            at_ms,
            took_ms: acked_ms - at_ms,
            host,
            id: answer.as_ref().ok().cloned(),
            error: answer.err(),
        });
        if acked {
            return Some(acked_ms - from_ms);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// How long after the heal an acknowledged project may still be missing from every
/// node before it counts as lost.
pub const LOST_AFTER: Duration = Duration::from_secs(30);

/// Stretches longer than 3 s between two acknowledged submissions.
fn unavailable(submissions: &[Submission]) -> Vec<(u64, u64)> {
    // Answers come back out of the order of their requests (the probes run beside the
    // workload).
    let mut acked: Vec<u64> = submissions
        .iter()
        .filter(|s| s.id.is_some())
        .map(|s| s.at_ms + s.took_ms)
        .collect();
    acked.sort_unstable();
    acked
        .windows(2)
        .filter(|w| w[1] - w[0] > 3_000)
        .map(|w| (w[0], w[1]))
        .collect()
}

/// The library that sets a process's wall clock off (Debian's `faketime`).
pub const FAKETIME_LIBRARY: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// The file holding a host's clock offset (libfaketime reads it every second).
fn skew_file(dir: &Path) -> PathBuf {
    dir.with_extension("faketime")
}

/// The fault file of the node on `dir` ([`aamas_node::net::faults::FileFaults`]): no file,
/// no fault.
pub fn faults_file(dir: &Path) -> PathBuf {
    dir.with_extension("faults")
}

/// `env`, plus, for a campaign with clock skews, libfaketime reading the offset of the
/// host on `dir` from its file (at first `+0`); monotonic clocks are left alone.
fn host_env(env: &[(String, String)], skewed: Option<&Path>) -> Vec<(String, String)> {
    let mut env = env.to_vec();
    if let Some(dir) = skewed {
        assert!(
            Path::new(FAKETIME_LIBRARY).exists(),
            "clock skews need {FAKETIME_LIBRARY}: apt-get install faketime"
        );
        let file = skew_file(dir);
        std::fs::write(&file, "+0").expect("write the clock offset");
        env.extend([
            ("LD_PRELOAD".to_string(), FAKETIME_LIBRARY.to_string()),
            (
                "FAKETIME_TIMESTAMP_FILE".to_string(),
                file.display().to_string(),
            ),
            ("FAKETIME_CACHE_DURATION".to_string(), "1".to_string()),
            ("FAKETIME_DONT_FAKE_MONOTONIC".to_string(), "1".to_string()),
            ("FAKETIME_DONT_RESET".to_string(), "1".to_string()),
        ]);
    }
    env
}

/// The skewed host's clock against the runner's, from the `clock_ms` of its status
/// (against the middle of the request), once it is within 5 s of `wanted` (libfaketime
/// rereads its file every second) or after 5 s.
fn observed_skew(shared: &Shared, hit: &[usize], wanted: i64) -> Option<i64> {
    let host = *hit.first()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let millis = |time: std::time::SystemTime| {
        time.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as i64)
    };
    let mut seen = None;
    while Instant::now() < deadline {
        let sent = millis(std::time::SystemTime::now());
        let status = shared.nodes[host - 1].lock().expect("node").status();
        let received = millis(std::time::SystemTime::now());
        if let Some(clock) = status.and_then(|status| status.get("clock_ms")?.as_i64()) {
            let off = (clock - (sent + received) / 2) as f64 / 1e3;
            seen = Some(off.round() as i64);
            if (off - wanted as f64).abs() <= 5.0 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    seen
}

fn apply(hosts: &Hosts, shared: &Shared, step: &Step, hit: &[usize]) {
    let percent = step.percent;
    match step.kind {
        Kind::Partition | Kind::IsolatePresident => {
            if !hit.is_empty() {
                hosts.split(hit);
            }
        }
        Kind::Pause => {
            for host in hit {
                shared.down.lock().expect("down").insert(*host);
                shared.nodes[host - 1].lock().expect("node").signal("STOP");
            }
        }
        Kind::Kill => {
            for host in hit {
                shared.down.lock().expect("down").insert(*host);
                shared.nodes[host - 1].lock().expect("node").kill();
            }
        }
        Kind::Loss => {
            for host in hit {
                hosts.lose(*host, percent);
            }
        }
        Kind::ClockSkew => {
            for host in hit {
                let dir = shared.nodes[host - 1].lock().expect("node").dir.clone();
                std::fs::write(skew_file(&dir), format!("{:+}", step.skew_s))
                    .expect("write the clock offset");
            }
        }
        Kind::DiskFull => {
            for host in hit {
                let dir = shared.nodes[host - 1].lock().expect("node").dir.clone();
                fill(&dir.join(FILLER));
            }
        }
        Kind::Delay | Kind::Duplicate => {
            // A duplicate delays nothing but its copies, up to `jitter_ms` late.
            let text = if step.kind == Kind::Duplicate {
                format!(
                    "duplicate_percent = {percent}\ncopy_late_ms = {}\n",
                    step.jitter_ms
                )
            } else {
                format!(
                    "delay_ms = {}\njitter_ms = {}\n",
                    step.delay_ms, step.jitter_ms
                )
            };
            for host in hit {
                let dir = shared.nodes[host - 1].lock().expect("node").dir.clone();
                std::fs::write(faults_file(&dir), &text).expect("write the fault file");
            }
        }
        Kind::Bridge => {
            let (half, other) = halves(shared.nodes.len(), hit);
            for host in &half {
                hosts.block(*host, &other);
            }
            for host in &other {
                hosts.block(*host, &half);
            }
        }
    }
}

/// A bridge fault's two halves: `hit` is the bridge, then the first half.
fn halves(hosts: usize, hit: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let half: Vec<usize> = hit.iter().skip(1).copied().collect();
    let other: Vec<usize> = (1..=hosts).filter(|host| !hit.contains(host)).collect();
    (half, other)
}

/// Ends a fault; for a full disk, what the node said if it stopped.
fn heal(
    hosts: &Hosts,
    shared: &Shared,
    kind: Kind,
    hit: &[usize],
    envs: &[Vec<(String, String)>],
) -> Option<String> {
    match kind {
        Kind::Partition | Kind::IsolatePresident => hosts.unsplit(),
        Kind::Pause => {
            for host in hit {
                shared.nodes[host - 1].lock().expect("node").signal("CONT");
                shared.down.lock().expect("down").remove(host);
            }
        }
        Kind::Kill => {
            for host in hit {
                let mut node = shared.nodes[host - 1].lock().expect("node");
                let dir = node.dir.clone();
                *node = hosts.start_env(*host, &dir, None, &envs[host - 1]);
                drop(node);
                shared.down.lock().expect("down").remove(host);
            }
        }
        Kind::Loss => {
            for host in hit {
                hosts.stop_losing(*host);
            }
        }
        Kind::ClockSkew => {
            for host in hit {
                let dir = shared.nodes[host - 1].lock().expect("node").dir.clone();
                std::fs::write(skew_file(&dir), "+0").expect("write the clock offset");
            }
        }
        Kind::Bridge => {
            for host in 1..=shared.nodes.len() {
                hosts.unblock(host);
            }
        }
        Kind::Delay | Kind::Duplicate => {
            for host in hit {
                let dir = shared.nodes[host - 1].lock().expect("node").dir.clone();
                let _ = std::fs::remove_file(faults_file(&dir));
            }
        }
        Kind::DiskFull => {
            let mut said = None;
            for host in hit {
                let mut node = shared.nodes[host - 1].lock().expect("node");
                let dir = node.dir.clone();
                let _ = std::fs::remove_file(dir.join(FILLER));
                // The supervisor's part (systemd's Restart=on-failure): a node that
                // stopped starts again, now that there is space.
                if let Some(stopped) = node.exited() {
                    *node = hosts.start_env(*host, &dir, None, &envs[host - 1]);
                    said = Some(stopped);
                }
            }
            return said;
        }
    }
    None
}

/// The file that fills a data dir.
const FILLER: &str = "filler";

/// Each host's data dir on a tmpfs of this size, for campaigns that fill disks: small
/// enough that RocksDB cannot preallocate its write-ahead log's usual room (1.1 times a
/// 64 MiB memtable), so that a full disk shows within seconds of writing.
const DISK_BYTES: u64 = 48 << 20;

/// Writes `file` until its disk is full.
fn fill(file: &Path) {
    use std::io::Write as _;
    let Ok(mut out) = std::fs::File::create(file) else {
        return;
    };
    let chunk = vec![0u8; 1 << 20];
    while out.write_all(&chunk).is_ok() {}
    // The last bytes a partial chunk could not take.
    while out.write_all(&chunk[..4096]).is_ok() {}
    while out.write_all(&[0]).is_ok() {}
}

/// The data dirs mounted as small tmpfs, unmounted (lazily: the nodes may still hold
/// them) when dropped.
struct Disks(Vec<PathBuf>);

impl Disks {
    fn mount(dirs: &[PathBuf]) -> Self {
        for dir in dirs {
            std::fs::create_dir_all(dir).expect("data dir");
            let status = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={DISK_BYTES}"), "tmpfs"])
                .arg(dir)
                .status()
                .expect("mount runs");
            assert!(status.success(), "mount a tmpfs on {}", dir.display());
        }
        Self(dirs.to_vec())
    }
}

impl Drop for Disks {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(dir)
                .status();
        }
    }
}

/// The host of the president most nodes name now.
fn president_host(shared: &Shared, peers: &[Option<String>]) -> Option<usize> {
    let president = shared
        .nodes
        .iter()
        .find_map(|node| view(&node.lock().expect("node").dir).map(|(_, p)| p))?;
    host_of(peers, &president)
}

/// The host (from 1) whose node has the peer id `peer`.
fn host_of(peers: &[Option<String>], peer: &str) -> Option<usize> {
    peers
        .iter()
        .position(|known| known.as_deref() == Some(peer))
        .map(|i| i + 1)
}

/// `aamas status --json` of the node on `dir`, with a short timeout.
fn status_of(dir: &Path) -> Option<Value> {
    let output = crate::aamas(&["status", "--data-dir", &dir.display().to_string(), "--json"]);
    output
        .status
        .success()
        .then(|| serde_json::from_slice(&output.stdout).ok())
        .flatten()
}

/// One operation on the register the campaign writes and reads: the `api_calls` limit
/// of the workload's state (`PUT` and `GET /api/v1/resources/{state}/api_calls`, the
/// reads with `?consistent=true`).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RegisterOp {
    /// A write (else a read).
    pub write: bool,
    /// The amount written, or read (`None`: no limit).
    pub value: Option<u64>,
    /// The host asked.
    pub host: usize,
    /// When it was sent (ms from the start).
    pub invoke_ms: u64,
    /// When its answer came. A write without a definite answer (an error, a timeout)
    /// has none: it may still take effect, at any time after it was sent. Reads without
    /// an answer are not kept.
    pub complete_ms: Option<u64>,
}

/// Stale reads in a register history of unique values: conditions every linearizable
/// history meets, each a sound violation (this is not a full linearizability search):
/// a read sees a value written before it ended; it does not see "no limit" once a write
/// was acknowledged before it began; it does not see a value that a later acknowledged
/// write overwrote before it began; and a read that began after another ended does not
/// see an older value than that one saw.
pub fn stale_reads(ops: &[RegisterOp]) -> Vec<String> {
    let writes: BTreeMap<u64, &RegisterOp> = ops
        .iter()
        .filter(|op| op.write)
        .filter_map(|op| Some((op.value?, op)))
        .collect();
    let acked: Vec<&RegisterOp> = writes
        .values()
        .copied()
        .filter(|w| w.complete_ms.is_some())
        .collect();
    let reads: Vec<(&RegisterOp, u64)> = ops
        .iter()
        .filter(|op| !op.write)
        .filter_map(|op| Some((op, op.complete_ms?)))
        .collect();
    // `a` was acknowledged before `b` was sent: `a` precedes `b` in every order.
    let before =
        |a: &RegisterOp, b: &RegisterOp| a.complete_ms.is_some_and(|done| done < b.invoke_ms);
    let mut found = Vec::new();
    for (read, done) in &reads {
        let at = format!(
            "stale read: host {} read {:?} over {} .. {} ms",
            read.host, read.value, read.invoke_ms, done
        );
        match read.value {
            None => {
                if let Some(write) = acked.iter().find(|w| before(w, read)) {
                    found.push(format!(
                        "{at}, after {:?} was acknowledged at {:?} ms",
                        write.value, write.complete_ms
                    ));
                }
            }
            Some(value) => match writes.get(&value) {
                None => found.push(format!("{at}: a value never written")),
                Some(write) if write.invoke_ms > *done => {
                    found.push(format!(
                        "{at}: a value written only at {} ms",
                        write.invoke_ms
                    ));
                }
                Some(write) => {
                    if let Some(newer) = acked.iter().find(|w| before(write, w) && before(w, read))
                    {
                        found.push(format!(
                            "{at}: {:?} overwrote it over {} .. {:?} ms",
                            newer.value, newer.invoke_ms, newer.complete_ms
                        ));
                    }
                }
            },
        }
    }
    for (first, first_done) in &reads {
        for (second, _) in &reads {
            if *first_done >= second.invoke_ms {
                continue;
            }
            let older = match (first.value, second.value) {
                (Some(_), None) => true,
                (Some(one), Some(two)) => match (writes.get(&one), writes.get(&two)) {
                    (Some(one), Some(two)) => before(two, one),
                    _ => false,
                },
                _ => false,
            };
            if older {
                found.push(format!(
                    "stale read: host {} read {:?} at {} .. {:?} ms after host {} read {:?} \
                     by {first_done} ms",
                    second.host,
                    second.value,
                    second.invoke_ms,
                    second.complete_ms,
                    first.host,
                    first.value
                ));
            }
        }
    }
    found
}

/// The failover after `fault`, from the observer's `samples` and each host's peer id:
/// when the president named last before the fault (by the hosts it would hit) is on a
/// host it hit, the time until a host it did not hit named another president.
fn failover(samples: &[Sample], peers: &[Option<String>], fault: &Applied) -> Option<u64> {
    let before = samples
        .iter()
        .filter(|sample| sample.at_ms < fault.from_ms && !fault.hit.contains(&sample.host))
        .max_by_key(|sample| sample.at_ms)?;
    let old = &before.president;
    let old_host = host_of(peers, old)?;
    if !fault.hit.contains(&old_host) {
        return None;
    }
    samples
        .iter()
        .filter(|sample| {
            sample.at_ms >= fault.from_ms
                && sample.at_ms <= fault.to_ms
                && !fault.hit.contains(&sample.host)
                && sample.president != *old
        })
        .map(|sample| sample.at_ms - fault.from_ms)
        .min()
}

/// What the nodes' disks said of their Raft votes: for each group and term, the leaders
/// that committed votes named, and on which hosts. Read from the databases themselves
/// ([`aamas_consensus::read_votes`]), never from what a node reports.
#[derive(Debug, Default)]
pub struct Votes {
    /// (group, term) → leader → hosts whose disk held that committed vote.
    pub leaders: BTreeMap<(u64, u64), BTreeMap<u64, BTreeSet<usize>>>,
    /// The reads made.
    pub disk: DiskReads,
}

/// Reads of the nodes' databases from outside: how many, how many failed (a full disk,
/// a database being written as it opens), and the time they took.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct DiskReads {
    /// Reads made.
    pub reads: u64,
    /// Reads that failed.
    pub failed: u64,
    /// Time spent reading, in all.
    pub took: Duration,
}

impl DiskReads {
    /// Makes one read, counted and timed; `None` if it failed.
    fn read<T, E>(&mut self, read: impl FnOnce() -> Result<T, E>) -> Option<T> {
        self.reads += 1;
        let start = Instant::now();
        let outcome = read();
        self.took += start.elapsed();
        if outcome.is_err() {
            self.failed += 1;
        }
        outcome.ok()
    }

    /// Adds another run's reads.
    pub fn add(&mut self, other: DiskReads) {
        self.reads += other.reads;
        self.failed += other.failed;
        self.took += other.took;
    }

    /// "N reads of the nodes' disks (F failed, M ms a read)", for the reports.
    pub fn line(&self) -> String {
        format!(
            "{} reads of the nodes' disks ({} failed, {:.1} ms a read)",
            self.reads,
            self.failed,
            self.took.as_secs_f64() * 1e3 / self.reads.max(1) as f64
        )
    }
}

impl Votes {
    /// Reads the votes on the disk of `host`, whose data dir is `dir`.
    pub fn read(&mut self, host: usize, dir: &Path) {
        let read = self
            .disk
            .read(|| aamas_consensus::read_votes(&dir.join("raft")));
        for vote in read.into_iter().flatten() {
            self.record(host, vote);
        }
    }

    /// Records one vote that `host`'s disk held.
    pub fn record(&mut self, host: usize, vote: aamas_consensus::PersistedVote) {
        if let (true, Some(leader)) = (vote.committed, vote.voted_for) {
            self.leaders
                .entry((vote.group, vote.term))
                .or_default()
                .entry(leader)
                .or_default()
                .insert(host);
        }
    }

    /// A violation for every group and term in which committed votes named two leaders.
    pub fn two_leaders(&self) -> Vec<String> {
        self.leaders
            .iter()
            .filter(|(_, leaders)| leaders.len() > 1)
            .map(|((group, term), leaders)| {
                format!(
                    "two leaders of group {group} in term {term} on the nodes' disks \
                     (leader: hosts): {leaders:?}"
                )
            })
            .collect()
    }
}

/// Hosts whose disk held one entry, by what tells the entry apart.
type HostsBy<K> = BTreeMap<K, BTreeSet<usize>>;

/// What the nodes' disks held of their Raft logs, read from the databases themselves
/// ([`aamas_consensus::read_logs`]), never from what a node reports.
#[derive(Debug, Default)]
pub struct Logs {
    /// (group, index, term) → entry digest → hosts whose disk held that entry.
    pub entries: BTreeMap<(u64, u64, u64), HostsBy<u64>>,
    /// (group, index) → (term, digest) → hosts whose disk held it as committed.
    pub committed: BTreeMap<(u64, u64), HostsBy<(u64, u64)>>,
    /// The reads made.
    pub disk: DiskReads,
}

impl Logs {
    /// Reads the logs on the disk of `host`, whose data dir is `dir`.
    pub fn read(&mut self, host: usize, dir: &Path) {
        let read = self
            .disk
            .read(|| aamas_consensus::read_logs(&dir.join("raft")));
        for log in read.into_iter().flatten() {
            self.record(host, &log);
        }
    }

    /// Records one group's log that `host`'s disk held.
    pub fn record(&mut self, host: usize, log: &aamas_consensus::PersistedLog) {
        for entry in &log.entries {
            self.entries
                .entry((log.group, entry.index, entry.term))
                .or_default()
                .entry(entry.digest)
                .or_default()
                .insert(host);
            if log
                .committed
                .is_some_and(|committed| entry.index <= committed)
            {
                self.committed
                    .entry((log.group, entry.index))
                    .or_default()
                    .entry((entry.term, entry.digest))
                    .or_default()
                    .insert(host);
            }
        }
    }

    /// A violation for every index and term of a group that held two different entries,
    /// and every index at which two different entries were committed.
    pub fn two_entries(&self) -> Vec<String> {
        let in_a_term = self
            .entries
            .iter()
            .filter(|(_, digests)| digests.len() > 1)
            .map(|((group, index, term), digests)| {
                format!(
                    "two entries at index {index} of group {group} in term {term} on the \
                     nodes' disks (two leaders in one term; digest: hosts): {digests:?}"
                )
            });
        let committed = self
            .committed
            .iter()
            .filter(|(_, entries)| entries.len() > 1)
            .map(|((group, index), entries)| {
                format!(
                    "two committed entries at index {index} of group {group} on the nodes' \
                     disks ((term, digest): hosts): {entries:?}"
                )
            });
        in_a_term.chain(committed).collect()
    }
}

/// The node's (term, president), when it names one.
fn view(dir: &Path) -> Option<(u64, String)> {
    let status = status_of(dir)?;
    Some((status.get("term")?.as_u64()?, field(&status, "president")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_picture_has_a_bar_per_fault_and_host_and_a_tick_per_answer() {
        let step = |kind, at_ms| Step {
            at_ms,
            lasts_ms: 5_000,
            kind,
            hosts: vec![1, 2],
            percent: 0,
            delay_ms: 0,
            jitter_ms: 0,
            skew_s: 0,
        };
        let applied = |kind, at_ms: u64, hit: Vec<usize>| Applied {
            step: step(kind, at_ms),
            hit,
            from_ms: at_ms,
            to_ms: at_ms + 5_000,
            recovered_ms: None,
            observed_skew_s: None,
            stopped_with: None,
            failover_ms: None,
        };
        let submission = |at_ms, id: Option<&str>| Submission {
            at_ms,
            took_ms: 40,
            host: 1,
            id: id.map(str::to_string),
            error: id.is_none().then(|| "refused".to_string()),
        };
        let submissions = vec![
            submission(1_000, Some("p1")),
            submission(2_000, None),
            submission(9_000, Some("p2")),
        ];
        let report = Report {
            seed: 4,
            hosts: 3,
            faults: vec![
                applied(Kind::Partition, 2_000, vec![1, 2]),
                applied(Kind::Pause, 10_000, vec![3]),
            ],
            unavailable: unavailable(&submissions),
            submissions,
            presidents: BTreeMap::new(),
            acknowledged: 2,
            completed: 2,
            tasks_checked: 8,
            leader_terms: 2,
            vote_reads: DiskReads {
                reads: 10,
                failed: 0,
                took: Duration::from_millis(20),
            },
            register: Vec::new(),
            register_reads_refused: 0,
            register_verdict: register::Verdict::Linearizable { steps: 0 },
            committed_entries: 30,
            log_reads: DiskReads {
                reads: 2,
                failed: 0,
                took: Duration::from_millis(4),
            },
            // Four tasks a second, none while the partition (2 s to 7 s) holds, then the
            // stalled ones at once; the pause (10 s to 15 s) slows nothing.
            progress: (0..=20)
                .map(|s: u64| {
                    let tasks = match s {
                        0..=2 => 4 * s,
                        3..=7 => 8,
                        _ => 4 * s,
                    };
                    (s * 1_000, tasks)
                })
                .collect(),
            violations: Vec::new(),
            secs: 20.0,
        };
        let (under, outside) = report.throughput();
        // Gaps whose middle falls in 2..7 s or 10..15 s count under faults: none in
        // the partition, 4 a second in the pause; the 24 at 7..8 s count outside.
        assert_eq!(
            under,
            Throughput {
                tasks: 20,
                ms: 10_000
            }
        );
        assert_eq!(
            outside,
            Throughput {
                tasks: 60,
                ms: 10_000
            }
        );
        assert_eq!(under.per_second(), "2.0");
        assert_eq!(Throughput::default().per_second(), "-");
        assert!(
            report
                .text()
                .contains("2.0 per second under faults (20 in 10 s)")
        );
        let svg = report.svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("class=\"fault\"").count(), 3, "{svg}");
        assert_eq!(svg.matches("class=\"acknowledged\"").count(), 2);
        assert_eq!(svg.matches("class=\"refused\"").count(), 1);
        assert_eq!(
            svg.matches("class=\"unavailable\"").count(),
            1,
            "1.0 s to 9.0 s"
        );
        assert!(
            svg.contains("<title>pause 10.0 s .. 15.0 s</title>"),
            "{svg}"
        );
        assert_eq!(svg.matches("class=\"tasks\"").count(), 1);
    }

    #[test]
    fn stale_reads_are_found_and_concurrent_ones_are_not() {
        let op = |write, value, invoke_ms, complete_ms| RegisterOp {
            write,
            value,
            host: 1,
            invoke_ms,
            complete_ms,
        };
        let history = vec![
            op(true, Some(1), 0, Some(10)),
            op(true, Some(2), 20, Some(30)),
            // Concurrent with write 3 (never acknowledged): either value is fine.
            op(true, Some(3), 40, None),
            op(false, Some(2), 45, Some(50)),
            op(false, Some(3), 60, Some(70)),
            op(false, Some(2), 80, Some(90)),
        ];
        // Write 3 has no answer, so it may land at any time after 40, or never: reads
        // of 2 or 3 are both fine on their own. But the read that began at 80 saw 2
        // after a read that ended at 70 saw 3, and 2 precedes 3 in every order (it was
        // acknowledged before 3 was sent): that one is stale.
        let found = stale_reads(&history);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("read Some(2) at 80"), "{found:?}");
        // Without that last read, nothing is wrong.
        assert!(stale_reads(&history[..5]).is_empty());
        // A read of 1 after 2 was acknowledged is stale; a read of "no limit" after 1
        // was, too; a value never written is wrong.
        let found = stale_reads(&[
            op(true, Some(1), 0, Some(10)),
            op(true, Some(2), 20, Some(30)),
            op(false, Some(1), 35, Some(40)),
            op(false, None, 41, Some(42)),
            op(false, Some(9), 43, Some(44)),
        ]);
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(found[0].contains("Some(2) overwrote it"), "{found:?}");
        assert!(
            found[1].contains("after Some(1) was acknowledged"),
            "{found:?}"
        );
        assert!(found[2].contains("never written"), "{found:?}");
        assert!(found[3].contains("read None at 41"), "{found:?}");
    }

    #[test]
    fn a_failover_is_timed_from_the_hosts_the_fault_did_not_hit() {
        let sample = |at_ms, host, president: &str| Sample {
            at_ms,
            host,
            term: 1,
            president: president.to_string(),
        };
        let peers = vec![Some("a".to_string()), Some("b".to_string()), None];
        let samples = vec![
            sample(900, 2, "a"),
            sample(1_200, 1, "a"),
            // The paused president still names itself; the others name b later.
            sample(2_000, 1, "a"),
            sample(2_500, 2, "a"),
            sample(4_100, 3, "b"),
            sample(4_600, 2, "b"),
        ];
        let fault = |hit: Vec<usize>| Applied {
            step: Step {
                at_ms: 1_000,
                lasts_ms: 5_000,
                kind: Kind::Pause,
                hosts: hit.clone(),
                percent: 0,
                delay_ms: 0,
                jitter_ms: 0,
                skew_s: 0,
            },
            hit,
            from_ms: 1_000,
            to_ms: 6_000,
            recovered_ms: None,
            observed_skew_s: None,
            stopped_with: None,
            failover_ms: None,
        };
        assert_eq!(failover(&samples, &peers, &fault(vec![1])), Some(3_100));
        // Host 3 paused: the president was not hit.
        assert_eq!(failover(&samples, &peers, &fault(vec![3])), None);
    }

    #[test]
    fn committed_votes_naming_two_leaders_in_one_term_are_a_violation() {
        let vote = |group, term, voted_for, committed| aamas_consensus::PersistedVote {
            group,
            term,
            voted_for: Some(voted_for),
            committed,
        };
        let mut votes = Votes::default();
        votes.record(1, vote(0, 3, 7, true));
        votes.record(2, vote(0, 3, 7, true));
        // A vote not granted yet is a candidacy, not a leader: a split vote is fine.
        votes.record(3, vote(0, 3, 9, false));
        votes.record(3, vote(0, 4, 9, true));
        // The same node id leading another group in the same term is no conflict.
        votes.record(4, vote(2, 3, 9, true));
        assert!(votes.two_leaders().is_empty(), "{:?}", votes.two_leaders());
        assert_eq!(votes.leaders.len(), 3);
        votes.record(5, vote(0, 3, 9, true));
        let found = votes.two_leaders();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("group 0 in term 3") && found[0].contains("{7: {1, 2}, 9: {5}}"),
            "{found:?}"
        );
    }

    #[test]
    fn two_entries_at_one_index_and_term_or_two_committed_at_one_index_are_a_violation() {
        let log = |group, committed, entries: &[(u64, u64, u64)]| aamas_consensus::PersistedLog {
            group,
            committed,
            entries: entries
                .iter()
                .map(|&(index, term, digest)| aamas_consensus::PersistedEntry {
                    index,
                    term,
                    digest,
                })
                .collect(),
        };
        let mut logs = Logs::default();
        logs.record(1, &log(0, Some(2), &[(1, 1, 10), (2, 1, 20), (3, 2, 30)]));
        logs.record(2, &log(0, Some(3), &[(1, 1, 10), (2, 1, 20), (3, 2, 30)]));
        // An uncommitted entry of an older term, later replaced: Raft allows it.
        logs.record(3, &log(0, Some(2), &[(2, 1, 20), (3, 1, 31)]));
        // Another group's entries are its own.
        logs.record(4, &log(5, Some(1), &[(1, 1, 99)]));
        assert!(logs.two_entries().is_empty(), "{:?}", logs.two_entries());
        assert_eq!(logs.committed.len(), 4);
        // Two leaders of term 2 appending at index 3.
        logs.record(5, &log(0, None, &[(3, 2, 32)]));
        let found = logs.two_entries();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("index 3 of group 0 in term 2")
                && found[0].contains("{30: {1, 2}, 32: {5}}"),
            "{found:?}"
        );
        // A committed entry that another node holds as committed in another term.
        logs.record(3, &log(0, Some(3), &[(3, 1, 31)]));
        let found = logs.two_entries();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[1].contains("two committed entries at index 3 of group 0")
                && found[1].contains("(1, 31): {3}, (2, 30): {2}"),
            "{found:?}"
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_another_seed_another() {
        let config = |seed| Config {
            hosts: 5,
            seed,
            duration: Duration::from_secs(600),
            kinds: vec![Kind::Partition, Kind::Pause, Kind::Kill, Kind::Loss],
            env: Vec::new(),
        };
        let one = schedule(&config(7));
        assert_eq!(one, schedule(&config(7)));
        assert_ne!(one, schedule(&config(8)));
        assert!(one.len() > 10, "{} steps in 10 minutes", one.len());
        for step in &one {
            assert!(step.at_ms + step.lasts_ms <= 600_000);
            assert!(step.hosts.iter().all(|h| (1..=5).contains(h)));
            assert!(step.hosts.len() <= 2, "a partition's side is a minority");
        }
        // Steps never overlap.
        assert!(
            one.windows(2)
                .all(|w| w[0].at_ms + w[0].lasts_ms < w[1].at_ms)
        );
    }
}
