//! Scenario files: a scenario is a list of steps, in TOML. The built-in scenarios are
//! files too (`simulations/scenarios/*.toml`), so a user's own scenario composes the
//! same steps.
//!
//! ```toml
//! name = "president-failover"
//! description = "a project flows while the president crashes and restarts"
//!
//! [[step]]
//! action = "submit"       # a project of no-op tasks over the four states
//! tasks = 100
//!
//! [[step]]
//! action = "crash"        # crash (and restart) the president; time the failover
//! target = "president"
//!
//! [[step]]
//! action = "await-projects"
//! ```

use serde::{Deserialize, Serialize};

/// A scenario: what happens, step by step, once the mesh has formed.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    /// Its name.
    pub name: String,
    /// What it shows.
    #[serde(default)]
    pub description: String,
    /// Its steps, in order.
    #[serde(rename = "step", default)]
    pub steps: Vec<Step>,
}

/// Whom a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// The president everyone agrees on.
    President,
    /// The governor of a state (the seed picks which).
    Governor,
    /// Any live node (the seed picks which).
    Random,
}

/// One step of a scenario.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Step {
    /// Submits a project of `tasks` no-op tasks over the four states, in two phases.
    Submit {
        /// Tasks in the project (1 to 1,000; `--tasks` overrides it).
        #[serde(default = "default_tasks")]
        tasks: usize,
    },
    /// Crashes `count` nodes (no hand-over, no flush), one after the other, each time
    /// waiting for the hierarchy to heal and timing it; with `restart`, each restarts
    /// on its data dir once healed.
    Crash {
        /// Whom.
        target: Target,
        /// How many times.
        #[serde(default = "one")]
        count: usize,
        /// Restart each crashed node once the hierarchy has healed.
        #[serde(default = "yes")]
        restart: bool,
    },
    /// Splits the live nodes in two: a minority of `fraction` of them, which holds
    /// `isolate`, and the rest. Messages between the two are lost until `heal`.
    Partition {
        /// Who is cut off with the minority.
        isolate: Target,
        /// The minority's share of the live nodes (0 to 0.5).
        fraction: f64,
    },
    /// Ends the partition; waits until every live node agrees on one president again.
    Heal,
    /// Loses this share of all messages (percent, 0 to 100).
    Drop {
        /// Percent.
        percent: f64,
    },
    /// Delays every message by `ms`, plus up to `jitter_ms` more.
    Delay {
        /// Fixed delay.
        ms: u64,
        /// Uniform extra delay, at most this.
        #[serde(default)]
        jitter_ms: u64,
    },
    /// Ends drops and delays (not partitions).
    ClearFaults,
    /// `count` new nodes join.
    Join {
        /// How many.
        count: usize,
    },
    /// `count` nodes (never the president) stop gracefully and stay away.
    Leave {
        /// How many.
        count: usize,
    },
    /// For `secs`, a non-member and a member send forged, replayed, tampered and
    /// oversized messages, `per_sec` of each kind; honest probes must keep arriving.
    Flood {
        /// How long.
        secs: u64,
        /// Messages per second of each kind.
        #[serde(default = "default_flood_rate")]
        per_sec: u32,
    },
    /// Publishes `count` gossip probes from random nodes and times their arrival at
    /// every other live node.
    Probe {
        /// How many.
        count: usize,
    },
    /// Waits until every submitted project has ended.
    AwaitProjects,
    /// Waits until every live node agrees on a president.
    AwaitPresident,
    /// Lets the mesh run for `ms`.
    Sleep {
        /// Milliseconds.
        ms: u64,
    },
}

fn default_tasks() -> usize {
    100
}

fn one() -> usize {
    1
}

fn yes() -> bool {
    true
}

fn default_flood_rate() -> u32 {
    20
}

/// The built-in scenarios, as the files they are.
pub const BUILT_IN: [(&str, &str); 7] = [
    ("steady", include_str!("../scenarios/steady.toml")),
    (
        "president-failover",
        include_str!("../scenarios/president-failover.toml"),
    ),
    (
        "governor-failover",
        include_str!("../scenarios/governor-failover.toml"),
    ),
    (
        "partition-heal",
        include_str!("../scenarios/partition-heal.toml"),
    ),
    ("churn", include_str!("../scenarios/churn.toml")),
    ("flood", include_str!("../scenarios/flood.toml")),
    ("lossy", include_str!("../scenarios/lossy.toml")),
];

/// A scenario file that could not be read, with where and why.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ScenarioError {
    /// The file (or built-in name).
    pub origin: String,
    /// What is wrong, with the line when the parser knows it.
    pub message: String,
}

impl ScenarioFile {
    /// Parses and checks a scenario file; `origin` names it in errors.
    pub fn parse(origin: &str, text: &str) -> Result<Self, ScenarioError> {
        let error = |message: String| ScenarioError {
            origin: origin.to_string(),
            message,
        };
        let scenario: ScenarioFile = toml::from_str(text).map_err(|parse| {
            let line = parse
                .span()
                .map(|span| text[..span.start.min(text.len())].lines().count().max(1));
            let message = parse.message().to_string();
            error(match line {
                Some(line) => format!("line {line}: {message}"),
                None => message,
            })
        })?;
        for (index, step) in scenario.steps.iter().enumerate() {
            step.check()
                .map_err(|message| error(format!("step {}: {message}", index + 1)))?;
        }
        Ok(scenario)
    }

    /// The built-in scenario called `name`.
    pub fn built_in(name: &str) -> Option<Self> {
        let (_, text) = BUILT_IN.iter().find(|(known, _)| *known == name)?;
        Self::parse(name, text).ok()
    }
}

impl Step {
    fn check(&self) -> Result<(), String> {
        match self {
            Step::Submit { tasks } if !(1..=1_000).contains(tasks) => {
                Err(format!("tasks must be 1 to 1000, not {tasks}"))
            }
            Step::Crash { count, .. } if *count == 0 || *count > 100 => {
                Err(format!("count must be 1 to 100, not {count}"))
            }
            Step::Partition { fraction, .. } if !(*fraction > 0.0 && *fraction <= 0.5) => Err(
                format!("fraction must be above 0 and at most 0.5, not {fraction}"),
            ),
            Step::Drop { percent } if !(0.0..=100.0).contains(percent) => {
                Err(format!("percent must be 0 to 100, not {percent}"))
            }
            Step::Delay { ms, jitter_ms } if *ms > 10_000 || *jitter_ms > 10_000 => {
                Err("delays are at most 10000 ms".to_string())
            }
            Step::Join { count } | Step::Leave { count } if *count > 10_000 => {
                Err(format!("count must be at most 10000, not {count}"))
            }
            Step::Flood { secs, per_sec } if *secs > 600 || *per_sec > 1_000 => {
                Err("a flood lasts at most 600 s at most 1000 messages per second".to_string())
            }
            Step::Probe { count } if *count > 1_000 => {
                Err(format!("count must be at most 1000, not {count}"))
            }
            Step::Sleep { ms } if *ms > 3_600_000 => Err("sleeps are at most an hour".to_string()),
            _ => Ok(()),
        }
    }

    /// A short description, for the progress line and the timeline.
    pub fn label(&self) -> String {
        match self {
            Step::Submit { tasks } => format!("submit {tasks} tasks"),
            Step::Crash { target, count, .. } => format!("crash {target:?} x{count}"),
            Step::Partition { isolate, fraction } => {
                format!("partition {isolate:?} with {:.0}%", fraction * 100.0)
            }
            Step::Heal => "heal".into(),
            Step::Drop { percent } => format!("drop {percent}%"),
            Step::Delay { ms, jitter_ms } => format!("delay {ms}+{jitter_ms} ms"),
            Step::ClearFaults => "clear faults".into(),
            Step::Join { count } => format!("join {count}"),
            Step::Leave { count } => format!("leave {count}"),
            Step::Flood { secs, per_sec } => format!("flood {secs} s at {per_sec}/s"),
            Step::Probe { count } => format!("probe x{count}"),
            Step::AwaitProjects => "await projects".into(),
            Step::AwaitPresident => "await president".into(),
            Step::Sleep { ms } => format!("sleep {ms} ms"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_scenario_parses() {
        for (name, text) in BUILT_IN {
            let scenario = ScenarioFile::parse(name, text).expect(name);
            assert_eq!(scenario.name, name);
            assert!(!scenario.steps.is_empty(), "{name}");
        }
    }

    #[test]
    fn a_bad_scenario_names_its_line_and_step() {
        let text = "name = \"x\"\n[[step]]\naction = \"crash\"\ntarget = \n";
        let error = ScenarioFile::parse("x.toml", text).expect_err("syntax");
        assert!(error.to_string().starts_with("x.toml: line 4"), "{error}");

        let text = "name = \"x\"\n[[step]]\naction = \"crash\"\ntarget = \"mayor\"\n";
        let error = ScenarioFile::parse("x.toml", text).expect_err("unknown target");
        assert!(
            error.to_string().contains("unknown variant `mayor`"),
            "{error}"
        );

        let text =
            "name = \"x\"\n[[step]]\naction = \"crash\"\ntarget = \"president\"\ncolour = 1\n";
        let error = ScenarioFile::parse("x.toml", text).expect_err("unknown key");
        assert!(error.to_string().contains("colour"), "{error}");

        let text = "name = \"x\"\n[[step]]\naction = \"drop\"\npercent = 120.0\n";
        let error = ScenarioFile::parse("x.toml", text).expect_err("out of range");
        assert_eq!(
            error.to_string(),
            "x.toml: step 1: percent must be 0 to 100, not 120"
        );
    }
}
