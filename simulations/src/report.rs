//! What a run measured: the JSON report, the table printed at the end, and two plots
//! (SVG): the gossip propagation distribution and a timeline of roles and faults.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

/// One failover: from the fault to every live node agreeing on the successor.
#[derive(Debug, Clone, Serialize)]
pub struct Failover {
    /// What failed over: `president`, `governor of <state>`, `partition`.
    pub what: String,
    /// Milliseconds.
    pub ms: u64,
}

/// Gossip delivery, measured with probes.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GossipReport {
    /// Probes published.
    pub probes: usize,
    /// (probe, live node other than its origin) pairs.
    pub expected: usize,
    /// Of those, how many arrived.
    pub delivered: usize,
    /// delivered / expected (1 when nothing was expected).
    pub delivery_ratio: f64,
    /// Propagation time, publication to acceptance, median (ms).
    pub p50_ms: f64,
    /// 99th percentile (ms).
    pub p99_ms: f64,
    /// Slowest (ms).
    pub max_ms: f64,
}

impl GossipReport {
    /// Sums up `delays_ms` (one per delivery) out of `expected` deliveries.
    pub fn new(probes: usize, expected: usize, delays_ms: &[f64]) -> Self {
        let mut sorted = delays_ms.to_vec();
        sorted.sort_by(f64::total_cmp);
        let delivered = sorted.len();
        Self {
            probes,
            expected,
            delivered,
            delivery_ratio: if expected == 0 {
                1.0
            } else {
                delivered as f64 / expected as f64
            },
            p50_ms: percentile(&sorted, 0.50),
            p99_ms: percentile(&sorted, 0.99),
            max_ms: sorted.last().copied().unwrap_or(0.0),
        }
    }
}

/// The `q` quantile of sorted values (nearest rank; 0 when empty).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One submitted project.
#[derive(Debug, Clone, Serialize)]
pub struct ProjectReport {
    /// Its id.
    pub id: String,
    /// Its tasks.
    pub tasks: usize,
    /// How it ended.
    pub status: String,
    /// Seconds from submission to its end.
    pub secs: f64,
}

/// Something that happened, for the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Moment {
    /// Milliseconds since the run started.
    pub at_ms: u64,
    /// `fault`, `heal`, `president`, `step`.
    pub kind: String,
    /// What.
    pub what: String,
}

/// What a simulation measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// Nodes at the start.
    pub nodes: usize,
    /// Nodes that ever ran (joins included).
    pub nodes_ever: usize,
    /// The seed.
    pub seed: u64,
    /// Whether every step ran (false: the run stopped at `error`).
    pub completed: bool,
    /// Why the run stopped early, if it did.
    pub error: Option<String>,
    /// From starting the founder to every node agreeing on a president (ms); `None`
    /// when the run stopped before.
    pub time_to_first_president_ms: Option<u64>,
    /// From starting the founder to every node having joined (ms); `None` when the
    /// run stopped before.
    pub time_to_full_mesh_ms: Option<u64>,
    /// Every failover.
    pub failovers: Vec<Failover>,
    /// Gossip delivery.
    pub gossip: GossipReport,
    /// Projects.
    pub projects: Vec<ProjectReport>,
    /// Tasks over every project.
    pub tasks: usize,
    /// Tasks per second, from the first submission to the last project's end.
    pub tasks_per_sec: f64,
    /// Peak resident memory of the process (bytes).
    pub peak_memory_bytes: u64,
    /// That, per node that ever ran.
    pub peak_memory_per_node_bytes: u64,
    /// Bytes written to connections, mean per node.
    pub bytes_sent_per_node_mean: u64,
    /// Bytes written to connections, the busiest node.
    pub bytes_sent_per_node_max: u64,
    /// Connections open at the end, mean per live node.
    pub connections_per_node_mean: f64,
    /// Connections open at the end, the most at one node.
    pub connections_per_node_max: u64,
    /// Live nodes at the end that follow the Registry through Raft (voters and relays).
    pub federal_members: usize,
    /// Live nodes at the end that keep a mirror of the Registry from a relay.
    pub registry_mirrors: usize,
    /// The newest group-key epoch a live node held at the end.
    pub group_key_epoch: u64,
    /// Live nodes at the end that held that epoch's key (events sealed under it reach
    /// them).
    pub group_key_holders: usize,
    /// Connections established during the run, mean per node that ever ran.
    pub connections_opened_per_node_mean: f64,
    /// Messages the fault layer lost.
    pub messages_dropped: u64,
    /// Messages the fault layer delayed.
    pub messages_delayed: u64,
    /// Connections the fault layer refused or closed across a partition.
    pub connections_cut: u64,
    /// Federal terms in which a president was seen.
    pub terms_seen: usize,
    /// (state, term) pairs in which a governor was seen.
    pub governor_terms_seen: usize,
    /// Tasks whose committed result the checker saw.
    pub results_seen: usize,
    /// Events the simulator read from every node's event bus, by kind
    /// (`aamas_node::events`).
    #[serde(default)]
    pub events_seen: BTreeMap<String, u64>,
    /// Events a node's bus dropped before the simulator read them (it fell behind).
    #[serde(default)]
    pub events_missed: u64,
    /// Tasks by status at the end, across the Ledger replicas (most advanced copy).
    pub task_statuses: BTreeMap<String, usize>,
    /// Every invariant violation (empty when the scenario passed).
    pub violations: Vec<String>,
    /// Faults, heals, steps and president changes.
    pub timeline: Vec<Moment>,
    /// Every probe delivery's propagation time (ms), for the plot.
    pub propagation_ms: Vec<f64>,
    /// Wall time (ms).
    pub wall_ms: u64,
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

impl Report {
    /// Whether the run passed: every step ran and no invariant broke.
    pub fn passed(&self) -> bool {
        self.completed && self.violations.is_empty()
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let failovers = if self.failovers.is_empty() {
            "none".to_string()
        } else {
            self.failovers
                .iter()
                .map(|failover| format!("{} {} ms", failover.what, failover.ms))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let rows: Vec<(&str, String)> = vec![
            (
                "scenario",
                format!("{} (seed {})", self.scenario, self.seed),
            ),
            (
                "nodes",
                format!("{} at start, {} ever", self.nodes, self.nodes_ever),
            ),
            (
                "time to first president",
                reached(self.time_to_first_president_ms),
            ),
            ("time to full mesh", reached(self.time_to_full_mesh_ms)),
            ("failovers", failovers),
            (
                "gossip delivery",
                format!(
                    "{:.2}% ({} of {}, {} probes)",
                    self.gossip.delivery_ratio * 100.0,
                    self.gossip.delivered,
                    self.gossip.expected,
                    self.gossip.probes
                ),
            ),
            (
                "gossip propagation",
                format!(
                    "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                    self.gossip.p50_ms, self.gossip.p99_ms, self.gossip.max_ms
                ),
            ),
            (
                "tasks",
                format!(
                    "{} in {} projects, {:.1} tasks/s",
                    self.tasks,
                    self.projects.len(),
                    self.tasks_per_sec
                ),
            ),
            (
                "peak memory",
                format!(
                    "{} ({} per node)",
                    mib(self.peak_memory_bytes),
                    mib(self.peak_memory_per_node_bytes)
                ),
            ),
            (
                "bytes sent per node",
                format!(
                    "mean {}, max {}",
                    mib(self.bytes_sent_per_node_mean),
                    mib(self.bytes_sent_per_node_max)
                ),
            ),
            (
                "connections per node",
                format!(
                    "{:.1} open at the end (max {}), {:.1} opened during the run",
                    self.connections_per_node_mean,
                    self.connections_per_node_max,
                    self.connections_opened_per_node_mean
                ),
            ),
            (
                "event buses",
                format!(
                    "{} ({} missed)",
                    if self.events_seen.is_empty() {
                        "no events".to_string()
                    } else {
                        self.events_seen
                            .iter()
                            .map(|(kind, count)| format!("{count} {kind}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                    self.events_missed
                ),
            ),
            (
                "registry copies",
                format!(
                    "{} in the federal group, {} mirrored from relays",
                    self.federal_members, self.registry_mirrors
                ),
            ),
            (
                "group key",
                format!(
                    "epoch {}, held by {} of {} live nodes",
                    self.group_key_epoch,
                    self.group_key_holders,
                    self.federal_members + self.registry_mirrors
                ),
            ),
            (
                "fault layer",
                format!(
                    "{} messages dropped, {} delayed; {} connections refused or cut",
                    self.messages_dropped, self.messages_delayed, self.connections_cut
                ),
            ),
            (
                "terms seen",
                format!(
                    "{} federal, {} state",
                    self.terms_seen, self.governor_terms_seen
                ),
            ),
            ("wall time", format!("{:.1} s", self.wall_ms as f64 / 1e3)),
            (
                "verdict",
                match (&self.error, self.violations.len()) {
                    (Some(error), _) => format!("FAILED: {error}"),
                    (None, 0) => "passed: no invariant violated".to_string(),
                    (None, n) => format!("FAILED: {n} invariant violations"),
                },
            ),
        ];
        let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
        let mut table = String::new();
        for (name, value) in rows {
            let _ = writeln!(table, "  {name:<width$}  {value}");
        }
        for violation in &self.violations {
            let _ = writeln!(table, "  violation: {violation}");
        }
        table
    }

    /// A histogram of gossip propagation times (SVG).
    pub fn latency_svg(&self) -> String {
        histogram_svg(
            "Gossip propagation (publication to acceptance)",
            "ms",
            &self.propagation_ms,
        )
    }

    /// President changes, faults and heals over time (SVG).
    pub fn timeline_svg(&self) -> String {
        timeline_svg(&self.timeline, self.wall_ms)
    }
}

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 300.0;
const MARGIN: f64 = 50.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A histogram of `values` in 30 bins (SVG).
pub fn histogram_svg(title: &str, unit: &str, values: &[f64]) -> String {
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" \
         fill=\"white\"/>\n<text x=\"{MARGIN}\" y=\"20\" font-size=\"14\">{}</text>\n",
        escape(title)
    );
    let max = values.iter().copied().fold(0.0, f64::max);
    const BINS: usize = 30;
    let mut counts = [0usize; BINS];
    let span = if max > 0.0 { max } else { 1.0 };
    for value in values {
        let bin = ((value / span) * BINS as f64) as usize;
        counts[bin.min(BINS - 1)] += 1;
    }
    let tallest = counts.iter().copied().max().unwrap_or(0).max(1);
    let plot_w = WIDTH - 2.0 * MARGIN;
    let plot_h = HEIGHT - 2.0 * MARGIN;
    let bar_w = plot_w / BINS as f64;
    for (i, count) in counts.iter().enumerate() {
        let h = plot_h * (*count as f64) / tallest as f64;
        let _ = writeln!(
            svg,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"#4a7ebb\"/>",
            MARGIN + i as f64 * bar_w,
            MARGIN + plot_h - h,
            (bar_w - 1.0).max(1.0)
        );
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let _ = writeln!(
        svg,
        "<line x1=\"{MARGIN}\" y1=\"{y:.1}\" x2=\"{x2:.1}\" y2=\"{y:.1}\" stroke=\"black\"/>\n\
         <text x=\"{MARGIN}\" y=\"{ty:.1}\">0</text>\n\
         <text x=\"{x2:.1}\" y=\"{ty:.1}\" text-anchor=\"end\">{max:.1} {unit}</text>\n\
         <text x=\"{MARGIN}\" y=\"{by:.1}\">{n} deliveries, p50 {p50:.1} {unit}, p99 {p99:.1} {unit}; \
         tallest bar {tallest}</text>",
        y = MARGIN + plot_h,
        x2 = MARGIN + plot_w,
        ty = MARGIN + plot_h + 15.0,
        by = MARGIN + plot_h + 35.0,
        n = values.len(),
        p50 = percentile(&sorted, 0.5),
        p99 = percentile(&sorted, 0.99),
    );
    svg.push_str("</svg>\n");
    svg
}

/// The moments of a run on a time axis (SVG): one row per kind.
pub fn timeline_svg(moments: &[Moment], wall_ms: u64) -> String {
    let kinds = ["step", "fault", "heal", "president"];
    let colours = ["#888888", "#c0392b", "#27ae60", "#2c3e80"];
    let height = MARGIN * 2.0 + kinds.len() as f64 * 40.0;
    let plot_w = WIDTH - 2.0 * MARGIN - 60.0;
    let left = MARGIN + 60.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" \
         fill=\"white\"/>\n<text x=\"{MARGIN}\" y=\"20\" font-size=\"14\">Timeline: steps, \
         faults, heals and presidents ({:.1} s)</text>\n",
        wall_ms as f64 / 1e3
    );
    let span = wall_ms.max(1) as f64;
    for (row, (kind, colour)) in kinds.iter().zip(colours).enumerate() {
        let y = MARGIN + row as f64 * 40.0 + 20.0;
        let _ = writeln!(
            svg,
            "<text x=\"{MARGIN}\" y=\"{y:.1}\">{kind}</text>\n<line x1=\"{left}\" y1=\"{y:.1}\" \
             x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#dddddd\"/>",
            left + plot_w
        );
        for moment in moments.iter().filter(|moment| moment.kind == *kind) {
            let x = left + plot_w * moment.at_ms as f64 / span;
            let _ = writeln!(
                svg,
                "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"4\" fill=\"{colour}\"><title>{:.1} s: \
                 {}</title></circle>",
                moment.at_ms as f64 / 1e3,
                escape(&moment.what)
            );
        }
    }
    let _ = writeln!(
        svg,
        "<text x=\"{left}\" y=\"{y:.1}\">0 s</text><text x=\"{:.1}\" y=\"{y:.1}\" \
         text-anchor=\"end\">{:.1} s</text>",
        left + plot_w,
        wall_ms as f64 / 1e3,
        y = height - 15.0,
    );
    svg.push_str("</svg>\n");
    svg
}

/// Peak resident memory of this process (VmHWM), in bytes; 0 where unknown.
pub fn peak_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map_or(0, |kib| kib * 1024)
}

/// A time to a milestone, or that it was not reached.
fn reached(ms: Option<u64>) -> String {
    ms.map_or_else(|| "not reached".into(), |ms| format!("{ms} ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_delivery_ratio() {
        let report = GossipReport::new(2, 4, &[10.0, 30.0, 20.0]);
        assert_eq!(report.delivered, 3);
        assert!((report.delivery_ratio - 0.75).abs() < 1e-9);
        assert_eq!(report.p50_ms, 20.0);
        assert_eq!(report.p99_ms, 30.0);
        assert_eq!(GossipReport::new(0, 0, &[]).delivery_ratio, 1.0);
    }

    #[test]
    fn plots_are_svg_with_one_mark_per_moment() {
        let moments = vec![
            Moment {
                at_ms: 10,
                kind: "fault".into(),
                what: "crash <a>".into(),
            },
            Moment {
                at_ms: 20,
                kind: "president".into(),
                what: "b".into(),
            },
        ];
        let svg = timeline_svg(&moments, 100);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<circle").count(), 2);
        assert!(svg.contains("crash &lt;a&gt;"));
        let svg = histogram_svg("t", "ms", &[1.0, 2.0, 2.5]);
        assert!(svg.contains("3 deliveries"), "{svg}");
    }

    #[test]
    fn peak_memory_is_read_on_linux() {
        assert!(peak_memory_bytes() > 0);
    }
}
