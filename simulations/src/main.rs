//! `aamas-sim`: many real AAMAS nodes in one process.

use std::path::PathBuf;
use std::time::Duration;

use aamas_sim::{Scenario, Sim, SimConfig};
use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "aamas-sim",
    version,
    about = "Simulate an AAMAS mesh of real nodes in one process"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// List the scenarios.
    List,
    /// Run a scenario and print its report.
    Run {
        /// Nodes.
        #[arg(long, default_value_t = 10)]
        nodes: usize,
        /// The scenario (see `list`).
        #[arg(long, default_value = "steady")]
        scenario: String,
        /// Seeds every choice of faults and workload.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Tasks in the project.
        #[arg(long, default_value_t = 200)]
        tasks: usize,
        /// President crashes (president-failover).
        #[arg(long, default_value_t = 3)]
        faults: usize,
        /// Longest run, in seconds.
        #[arg(long, default_value_t = 600)]
        limit_secs: u64,
        /// Write report.json here.
        #[arg(long)]
        report: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Commands::List => {
            for (_, name, what) in Scenario::ALL {
                println!("{name:<20} {what}");
            }
        }
        Commands::Run {
            nodes,
            scenario,
            seed,
            tasks,
            faults,
            limit_secs,
            report,
        } => {
            let scenario = Scenario::from_name(&scenario)
                .with_context(|| format!("no scenario {scenario:?}; see `aamas-sim list`"))?;
            if !(1..=10_000).contains(&nodes) {
                bail!("--nodes must be 1 to 10000");
            }
            println!(
                "aamas-sim: {} on {nodes} nodes, seed {seed}",
                scenario.name()
            );
            let config = SimConfig {
                nodes,
                scenario,
                seed,
                tasks: tasks.clamp(1, 1_000),
                faults,
                limit: Duration::from_secs(limit_secs),
            };
            let runtime = tokio::runtime::Runtime::new()?;
            let outcome = runtime.block_on(Sim::run(config))?;
            println!("{}", serde_json::to_string_pretty(&outcome)?);
            if let Some(dir) = report {
                std::fs::create_dir_all(&dir)?;
                std::fs::write(
                    dir.join("report.json"),
                    serde_json::to_vec_pretty(&outcome)?,
                )?;
            }
            if !outcome.violations.is_empty() {
                bail!("{} invariant violations", outcome.violations.len());
            }
        }
    }
    Ok(())
}
