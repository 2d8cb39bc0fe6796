//! `aamas-sim`: many real AAMAS nodes in one process.

use std::path::PathBuf;
use std::time::Duration;

use aamas_sim::scenario::BUILT_IN;
use aamas_sim::{ScenarioFile, Sim, SimConfig};
use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "aamas-sim",
    version,
    about = "Simulate an AAMAS mesh of real nodes in one process, with faults, checkers and a report"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// List the built-in scenarios.
    List,
    /// Print a built-in scenario's file, to start your own from.
    Show {
        /// The scenario's name.
        name: String,
    },
    /// Run a scenario and print its report.
    Run {
        /// Nodes at the start.
        #[arg(long, default_value_t = 10)]
        nodes: usize,
        /// How many of the mesh's four states the workload uses.
        #[arg(long, default_value_t = 4)]
        states: usize,
        /// Seeds every choice of faults and workload.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// A built-in scenario (see `list`).
        #[arg(long, conflicts_with = "file")]
        scenario: Option<String>,
        /// A scenario file (TOML; see `show`).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Tasks per submitted project, overriding the scenario's.
        #[arg(long)]
        tasks: Option<usize>,
        /// The longest the run may take: seconds, or with a unit (90s, 10m, 1h).
        #[arg(long, default_value = "10m")]
        duration: String,
        /// Write report.json, latency.svg and timeline.svg here.
        #[arg(long)]
        report: Option<PathBuf>,
        /// No progress line on stderr.
        #[arg(long)]
        quiet: bool,
    },
}

fn parse_duration(text: &str) -> Result<Duration> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |at| text.split_at(at));
    let number: u64 = number
        .parse()
        .with_context(|| format!("--duration {text:?}: expected e.g. 600, 90s, 10m or 1h"))?;
    let seconds = match unit {
        "s" => number,
        "m" => number * 60,
        "h" => number * 3_600,
        _ => bail!("--duration {text:?}: the unit must be s, m or h"),
    };
    if seconds == 0 || seconds > 24 * 3_600 {
        bail!("--duration must be between 1 s and 24 h");
    }
    Ok(Duration::from_secs(seconds))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error,openraft=off")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Commands::List => {
            for (name, _) in BUILT_IN {
                let scenario = ScenarioFile::built_in(name).context("a built-in scenario")?;
                println!("{name:<20} {}", scenario.description);
            }
        }
        Commands::Show { name } => {
            let (_, text) = BUILT_IN
                .iter()
                .find(|(known, _)| *known == name)
                .with_context(|| format!("no scenario {name:?}; see `aamas-sim list`"))?;
            print!("{text}");
        }
        Commands::Run {
            nodes,
            states,
            seed,
            scenario,
            file,
            tasks,
            duration,
            report,
            quiet,
        } => {
            let scenario = match (scenario, file) {
                (_, Some(path)) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    ScenarioFile::parse(&path.display().to_string(), &text)?
                }
                (name, None) => {
                    let name = name.unwrap_or_else(|| "steady".into());
                    ScenarioFile::built_in(&name)
                        .with_context(|| format!("no scenario {name:?}; see `aamas-sim list`"))?
                }
            };
            if !(1..=10_000).contains(&nodes) {
                bail!("--nodes must be 1 to 10000");
            }
            if !(1..=4).contains(&states) {
                bail!("--states must be 1 to 4 (the mesh's four default states)");
            }
            if let Some(tasks) = tasks
                && !(1..=1_000).contains(&tasks)
            {
                bail!("--tasks must be 1 to 1000");
            }
            println!(
                "aamas-sim: {} on {nodes} nodes, seed {seed} (the same seed makes the same choices)",
                scenario.name
            );
            let config = SimConfig {
                nodes,
                scenario,
                seed,
                tasks,
                states,
                limit: parse_duration(&duration)?,
                progress: !quiet,
            };
            let runtime = tokio::runtime::Runtime::new()?;
            let outcome = runtime.block_on(Sim::run(config))?;
            println!("{}", outcome.table());
            if let Some(dir) = report {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                std::fs::write(
                    dir.join("report.json"),
                    serde_json::to_vec_pretty(&outcome)?,
                )?;
                std::fs::write(dir.join("latency.svg"), outcome.latency_svg())?;
                std::fs::write(dir.join("timeline.svg"), outcome.timeline_svg())?;
                println!(
                    "report: {} (report.json, latency.svg, timeline.svg)",
                    dir.display()
                );
            }
            if !outcome.passed() {
                bail!(
                    "the scenario failed: {}",
                    outcome.error.clone().unwrap_or_else(|| format!(
                        "{} invariant violations",
                        outcome.violations.len()
                    ))
                );
            }
        }
    }
    Ok(())
}
