//! The `aamas` command: parses arguments, builds a configuration, and calls `aamas-node`.

mod demo;
mod events;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use aamas_node::{Hierarchy, MemberView, NodeConfig, Status};
use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "aamas",
    version,
    about = "A decentralised hierarchy of AI agents"
)]
struct Cli {
    /// Log format: text or json (filter with RUST_LOG).
    #[arg(long, global = true, default_value = "text", env = "AAMAS_LOG_FORMAT")]
    log_format: String,
    #[command(subcommand)]
    command: Commands,
}

#[derive(clap::Args)]
struct Target {
    /// The node's data directory (reads api.addr and api.token from it).
    #[arg(long, env = "AAMAS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The node's API URL, e.g. http://127.0.0.1:7070 (with AAMAS_API_TOKEN).
    #[arg(long, env = "AAMAS_API")]
    api: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Commands {
    /// Found a new mesh: create an identity and print a join token.
    Init {
        /// Data directory of the founding node.
        #[arg(long, env = "AAMAS_DATA_DIR")]
        data_dir: PathBuf,
        /// The mesh's name.
        #[arg(long, default_value = "aamas")]
        mesh: String,
        /// Print {"peer_id","mesh_id","token"} as JSON.
        #[arg(long)]
        json: bool,
        /// How long the printed token admits nodes (e.g. 1h, 30m, 3600s).
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// How many nodes the printed token admits (each further node needs another:
        /// `aamas token create`).
        #[arg(long, default_value_t = 1)]
        token_uses: u32,
    },
    /// Run a node until SIGINT or SIGTERM, then leave gracefully.
    ///
    /// Settings come from flags, then environment variables, then the config file
    /// (`--config`, TOML with the same names: data_dir, listen, api, join, token, skills,
    /// executors, shell_sandbox, mdns, fsync, capacity, scale_hook), then defaults.
    Node {
        /// A TOML config file.
        #[arg(long, env = "AAMAS_CONFIG")]
        config: Option<PathBuf>,
        /// Data directory (identity, Raft database, API token).
        #[arg(long, env = "AAMAS_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// libp2p listen address (repeatable) [default: /ip4/127.0.0.1/tcp/0].
        #[arg(long)]
        listen: Vec<String>,
        /// Control API address [default: 127.0.0.1:0].
        #[arg(long, env = "AAMAS_API_ADDR")]
        api: Option<SocketAddr>,
        /// A member's address to join through.
        #[arg(long, env = "AAMAS_JOIN")]
        join: Option<String>,
        /// The join token.
        #[arg(long, env = "AAMAS_JOIN_TOKEN")]
        token: Option<String>,
        /// Skills, comma-separated.
        #[arg(long, value_delimiter = ',')]
        skills: Vec<String>,
        /// The executors this node runs tasks with, comma-separated: builtin (always),
        /// llm, shell. A shell task runs any command its spec names, as this node's user:
        /// turn it on only where every member that can submit a project is trusted with
        /// that [default: builtin,llm].
        #[arg(long, env = "AAMAS_EXECUTORS")]
        executors: Option<String>,
        /// How shell tasks are confined: landlock (they read and run the system's programs
        /// and write only their workdir; never this node's data dir, key or environment)
        /// or off (unconfined, as this node's user) [default: landlock].
        #[arg(long, env = "AAMAS_SHELL_SANDBOX")]
        shell_sandbox: Option<String>,
        /// Turn off fsync of Raft writes (tests only: a crash can lose acknowledged data).
        #[arg(long)]
        no_fsync: bool,
        /// Find other nodes on the local network with mDNS.
        #[arg(long, env = "AAMAS_MDNS")]
        mdns: bool,
        /// Tasks this node runs at once as a worker [default: 4].
        #[arg(long, env = "AAMAS_CAPACITY")]
        capacity: Option<u32>,
        /// The largest output a task may produce on this node, in bytes; a larger one
        /// fails its task. Also the largest artefact this node keeps for others
        /// [default: 4 MiB].
        #[arg(long, env = "AAMAS_MAX_ARTIFACT_BYTES")]
        max_artifact_bytes: Option<usize>,
        /// A shell command this node runs while it is president and the mesh wants more
        /// workers than it has (the policy's `[scaling]`), at most once per its cool-down,
        /// with AAMAS_WORKERS_WANTED, AAMAS_OPEN_TASKS, AAMAS_TASK_SLOTS and AAMAS_MEMBERS
        /// set: e.g. `systemctl start aamas@next` or `kubectl scale statefulset aamas
        /// --replicas=...`.
        #[arg(long, env = "AAMAS_SCALE_HOOK")]
        scale_hook: Option<String>,
    },
    /// Show this node's view: president, members, roles.
    Status(Target),
    /// List the members, or evict one (`aamas members remove ID`).
    Members {
        #[command(subcommand)]
        command: Option<MembersCommand>,
        #[command(flatten)]
        target: Target,
    },
    /// Draw the tree president → governors → mayors → workers.
    Hierarchy(Target),
    /// Join tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// PerformanceAlerts: list them, or acknowledge one (`aamas alerts ack ID`).
    Alerts {
        #[command(subcommand)]
        command: Option<AlertsCommand>,
        #[command(flatten)]
        target: Target,
    },
    /// The mesh's events as this node sees them: phase transitions, task completions,
    /// escalations, alerts, leader and membership changes (`--follow` to wait for more).
    Events(events::EventsArgs),
    /// Performance figures (seed §7.1): this node's attempts as a worker per executor
    /// (success and error rates, mean time, CPU per result) and the mesh's phase
    /// transitions.
    Performance(Target),
    /// Resources: each state's use against its limits, the limits, and ResourceRequests.
    Resources {
        #[command(subcommand)]
        command: Option<ResourcesCommand>,
        #[command(flatten)]
        target: Target,
    },
    /// The mesh's policy document: check a file, apply it, show the one in force.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Named API tokens of a narrower scope than the node's own (read, submit, operate,
    /// admin), for people and programs; kept by the node across restarts.
    ApiToken {
        #[command(subcommand)]
        command: ApiTokenCommand,
    },
    /// Projects: submit a spec, follow it through the eight phases.
    Project {
        #[command(subcommand)]
        command: ProjectCommand,
    },
    /// Start a local mesh of real nodes, run the template project through it while
    /// killing the president, and print the timings.
    Demo {
        /// How many nodes.
        #[arg(long, default_value_t = 7)]
        nodes: usize,
        /// Run examples/idea-to-launch.toml with LLM workers on this OpenAI-compatible
        /// API root (e.g. http://127.0.0.1:11434/v1 for Ollama) instead of the template.
        #[arg(long, value_name = "URL")]
        llm: Option<String>,
        /// The model the nodes ask for (with --llm; AAMAS_LLM_MODEL when absent).
        #[arg(long, requires = "llm")]
        model: Option<String>,
        /// The product idea (with --llm), in place of the example's.
        #[arg(long, requires = "llm")]
        idea: Option<String>,
        /// Where every task's output is written (with --llm); ./aamas-demo-output when
        /// absent.
        #[arg(long, requires = "llm", value_name = "DIR")]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ProjectCommand {
    /// Submit a project spec (TOML); prints its id.
    Submit {
        #[command(flatten)]
        target: Target,
        /// The spec file.
        file: PathBuf,
        /// Go ahead past soft policy rules, for this reason (logged and counted).
        #[arg(long = "override", value_name = "REASON")]
        override_reason: Option<String>,
    },
    /// Show a project: status, phase, tasks per phase.
    Show {
        #[command(flatten)]
        target: Target,
        /// The project's id.
        id: String,
    },
    /// List the projects.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Follow a project with a progress bar per phase until it ends.
    Watch {
        #[command(flatten)]
        target: Target,
        /// The project's id.
        id: String,
    },
    /// Hold, resume or advance a project's phase by hand (or archive it).
    Phase {
        #[command(flatten)]
        target: Target,
        /// The project's id.
        id: String,
        /// hold, resume, advance or archive.
        action: String,
    },
    /// Approve a project awaiting approval at a phase's human gate: it moves on.
    Approve {
        #[command(flatten)]
        target: Target,
        /// The project's id.
        id: String,
        /// Why, kept with the phase's gate.
        #[arg(long)]
        note: Option<String>,
    },
    /// Reject a project awaiting approval at a phase's human gate: it fails with the note.
    Reject {
        #[command(flatten)]
        target: Target,
        /// The project's id.
        id: String,
        /// Why, kept as the project's failure reason.
        #[arg(long)]
        note: Option<String>,
    },
    /// Archive a completed or failed project: it leaves the Registry, and its tasks leave
    /// every state's Ledger, freeing its place for new projects.
    Archive {
        #[command(flatten)]
        target: Target,
        /// The project's id.
        id: String,
    },
    /// A project's artefacts (its tasks' outputs), from any node: without TASK, the list;
    /// with TASK, its bytes on stdout (or in --out DIR/TASK), checked against the digest
    /// its state's Ledger committed.
    Artifacts {
        #[command(flatten)]
        target: Target,
        /// The project's id.
        id: String,
        /// One task's artefact.
        task: Option<String>,
        /// Write the artefacts (all of them without TASK) into this directory, one file
        /// per task.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the built-in template spec (the seed's eight phases).
    Template,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a new join token, signed by this node.
    Create {
        #[command(flatten)]
        target: Target,
        /// How long it admits nodes.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// How many nodes it admits.
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
    /// List the join tokens the mesh has seen used or revoked, until they expire.
    List(Target),
    /// Revoke a join token: it admits no one from then on. Its issuer's operator or the
    /// president's may revoke it, from any node.
    Revoke {
        /// The token, as `aamas token create` printed it.
        token: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
enum AlertsCommand {
    /// Acknowledge an alert by hand, with a note.
    Ack {
        /// Its id, as `aamas alerts` prints it.
        id: u64,
        /// What was done about it.
        #[arg(long, default_value = "")]
        note: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
enum ResourcesCommand {
    /// Each state's use against its limits (the default).
    Show {
        #[command(flatten)]
        target: Target,
    },
    /// Set a state's limit on a resource (on the president's node).
    Set {
        /// The state.
        state: String,
        /// cpu_ms, tokens, api_calls, money_micros, memory_kib_s or storage_bytes.
        resource: String,
        /// Most per period.
        amount: u64,
        /// hour, day, month (30 days) or total.
        #[arg(long, default_value = "day")]
        per: String,
        /// Only raise an alert when reached; a hard limit (the default) stops dispatch.
        #[arg(long)]
        soft: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Remove a state's limit on a resource (on the president's node).
    Unset {
        /// The state.
        state: String,
        /// The resource.
        resource: String,
        #[command(flatten)]
        target: Target,
    },
    /// The ResourceRequests, open and decided.
    Requests {
        #[command(flatten)]
        target: Target,
    },
    /// Approve a ResourceRequest: its state's limit rises (on the president's node).
    Approve {
        /// Its id, as `aamas resources requests` prints it.
        id: u64,
        /// How much to raise the limit by (default: what was asked).
        #[arg(long)]
        amount: Option<u64>,
        /// Why.
        #[arg(long, default_value = "")]
        note: String,
        #[command(flatten)]
        target: Target,
    },
    /// Deny a ResourceRequest (on the president's node).
    Deny {
        /// Its id.
        id: u64,
        /// Why.
        #[arg(long, default_value = "")]
        note: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Check a policy file without applying it (no node needed); errors name the line.
    Check {
        /// The policy file (TOML).
        file: PathBuf,
        /// Print the rules as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put a policy file in force in the whole mesh (the president's operator only). An
    /// invalid one changes nothing.
    Apply {
        /// The policy file (TOML).
        file: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Show the policy in force: version, rules, and the document.
    Show(Target),
}

#[derive(Subcommand)]
enum ApiTokenCommand {
    /// Create a named token and print its secret (shown only this once). Use it with
    /// `--api URL` and `AAMAS_API_TOKEN`.
    Create {
        /// Its name (A-Z, a-z, 0-9, '_', '-', '.').
        name: String,
        /// read (GET everything), submit (+ submit projects), operate (+ change projects),
        /// admin (+ tokens and members).
        #[arg(long, default_value = "read")]
        scope: String,
        #[command(flatten)]
        target: Target,
    },
    /// List the named tokens (names and scopes, never secrets).
    List(Target),
    /// Revoke a named token: it is refused from now on.
    Revoke {
        /// Its name.
        name: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Subcommand)]
enum MembersCommand {
    /// Evict a member: it loses its seats, which other members take, and every member
    /// refuses its key from then on. Only the president's operator may do it.
    Remove {
        /// The member's peer id, as `aamas members` prints it.
        id: String,
        #[command(flatten)]
        target: Target,
    },
}

fn policy(command: PolicyCommand) -> Result<()> {
    let read = |file: &PathBuf| {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
    };
    match command {
        PolicyCommand::Check { file, json } => {
            let parsed = aamas_node::governance::policy::parse(&read(&file)?)
                .map_err(|error| anyhow::anyhow!("{}: {error}", file.display()))?;
            if json {
                println!("{}", aamas_node::driver::policy::summary(&parsed));
            } else {
                let tier = parsed
                    .tier
                    .map(|tier| format!(" (tier {tier:?})"))
                    .unwrap_or_default();
                println!("{}: ok, {} rules{tier}", file.display(), parsed.rules.len());
            }
        }
        PolicyCommand::Apply { file, target } => {
            let text = read(&file)?;
            // Check it here first, so the error names the file and line.
            if let Err(error) = aamas_node::governance::policy::parse(&text) {
                bail!(
                    "{}: {error}; the policy in force is unchanged",
                    file.display()
                );
            }
            let applied = Client::new(&target)?.call("PUT", "/api/v1/policy", Some(&text))?;
            if target.json {
                println!("{applied}");
            } else {
                let version = applied.get("version").and_then(serde_json::Value::as_u64);
                println!("policy version {} in force", version.unwrap_or_default());
            }
        }
        PolicyCommand::Show(target) => {
            let shown = Client::new(&target)?.get("/api/v1/policy")?;
            if target.json {
                println!("{shown}");
            } else {
                let view: aamas_node::driver::policy::PolicyView = serde_json::from_value(shown)?;
                println!(
                    "policy version {} (applied at {} ms)",
                    view.version, view.applied_ms
                );
                for rule in &view.rules {
                    println!(
                        "  {:<32} {:<13} {:<10} {:<8} {}",
                        rule.name, rule.category, rule.at, rule.enforcement, rule.reason
                    );
                }
                println!("\n{}", view.text.trim_end());
            }
        }
    }
    Ok(())
}

fn api_token(command: ApiTokenCommand) -> Result<()> {
    match command {
        ApiTokenCommand::Create {
            name,
            scope,
            target,
        } => {
            let body = serde_json::json!({"name": name, "scope": scope}).to_string();
            let created = Client::new(&target)?.call("POST", "/api/v1/api-tokens", Some(&body))?;
            if target.json {
                println!("{created}");
            } else {
                let secret = created.get("token").and_then(|t| t.as_str());
                println!("{}", secret.context("no token in the answer")?);
            }
        }
        ApiTokenCommand::List(target) => {
            let listed = Client::new(&target)?.get("/api/v1/api-tokens")?;
            if target.json {
                println!("{listed}");
            } else {
                println!("{:<24} {:<8} created (ms)", "name", "scope");
                for token in listed.as_array().into_iter().flatten() {
                    let text = |key: &str| token.get(key).map(ToString::to_string);
                    println!(
                        "{:<24} {:<8} {}",
                        token.get("name").and_then(|v| v.as_str()).unwrap_or("?"),
                        token.get("scope").and_then(|v| v.as_str()).unwrap_or("?"),
                        text("created_ms").unwrap_or_default()
                    );
                }
            }
        }
        ApiTokenCommand::Revoke { name, target } => {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
            {
                bail!("{name:?} is not a token name: copy it from `aamas api-token list`");
            }
            let revoked = Client::new(&target)?.call(
                "DELETE",
                &format!("/api/v1/api-tokens/{name}"),
                None,
            )?;
            if target.json {
                println!("{revoked}");
            } else {
                println!("revoked {name}");
            }
        }
    }
    Ok(())
}

fn parse_duration(text: &str) -> Result<Duration> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let value: u64 = number
        .parse()
        .with_context(|| format!("bad duration {text:?}: use e.g. 30s, 10m, 24h"))?;
    let seconds = match unit {
        "" | "s" => value,
        "m" => value * 60,
        "h" => value * 3_600,
        "d" => value * 86_400,
        _ => bail!("bad duration unit in {text:?}: use s, m, h or d"),
    };
    Ok(Duration::from_secs(seconds))
}

/// The `--config` file of `aamas node`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    data_dir: Option<PathBuf>,
    listen: Option<Vec<String>>,
    api: Option<String>,
    join: Option<String>,
    token: Option<String>,
    skills: Option<Vec<String>>,
    executors: Option<String>,
    shell_sandbox: Option<String>,
    mdns: Option<bool>,
    fsync: Option<bool>,
    capacity: Option<u32>,
    scale_hook: Option<String>,
}

impl NodeFile {
    fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("bad config file {}", path.display()))
    }
}

struct Client {
    base: String,
    token: String,
}

/// How often `project submit` tries before it gives up.
const SUBMIT_TRIES: u32 = 5;

/// Why a request failed: worth another try with the same request id, or not.
enum Failure {
    Transient(anyhow::Error),
    Final(anyhow::Error),
}

impl Client {
    fn new(target: &Target) -> Result<Self> {
        if let Some(api) = &target.api {
            let token = std::env::var("AAMAS_API_TOKEN").context("--api needs AAMAS_API_TOKEN")?;
            return Ok(Self {
                base: api.trim_end_matches('/').to_string(),
                token,
            });
        }
        let dir = target
            .data_dir
            .as_deref()
            .context("give --data-dir DIR or --api URL")?;
        let read = |name: &str| -> Result<String> {
            let path = dir.join(name);
            std::fs::read_to_string(&path)
                .map(|text| text.trim().to_string())
                .with_context(|| format!("cannot read {}: is the node running?", path.display()))
        };
        Ok(Self {
            base: format!("http://{}", read("api.addr")?),
            token: read("api.token")?,
        })
    }

    fn get(&self, path: &str) -> Result<serde_json::Value> {
        self.call("GET", path, None)
    }

    /// The bytes of a GET (an artefact), at most [`MAX_ARTIFACT_READ`] of them.
    fn get_bytes(&self, path: &str) -> Result<Vec<u8>> {
        use std::io::Read as _;
        let url = format!("{}{path}", self.base);
        let response = ureq::get(&url)
            .set("Authorization", &format!("Bearer {}", self.token))
            .timeout(Duration::from_secs(120))
            .call();
        match response {
            Ok(response) => {
                let mut bytes = Vec::new();
                response
                    .into_reader()
                    .take(MAX_ARTIFACT_READ)
                    .read_to_end(&mut bytes)
                    .with_context(|| format!("{url}: reading the answer"))?;
                Ok(bytes)
            }
            Err(ureq::Error::Status(code, response)) => {
                let body = response.into_string().unwrap_or_default();
                bail!("{url}: HTTP {code}: {}", problem_detail(&body))
            }
            Err(error) => bail!("{url}: {error}"),
        }
    }

    fn send(&self, method: &str, path: &str, body: &str) -> Result<serde_json::Value> {
        self.call(method, path, Some(body))
    }

    /// Submits a spec with a request id; a failure that a retry may cure (no answer, or
    /// the mesh has no president right now) is `Transient`.
    fn submit(
        &self,
        text: &str,
        request: &str,
        override_reason: Option<&str>,
    ) -> Result<serde_json::Value, Failure> {
        let url = format!("{}/api/v1/projects", self.base);
        let mut call = ureq::post(&url)
            .set("Authorization", &format!("Bearer {}", self.token))
            .set("Idempotency-Key", request)
            .timeout(Duration::from_secs(30));
        if let Some(reason) = override_reason {
            call = call.set("X-Policy-Override", reason);
        }
        let response = call.send_string(text);
        match response {
            Ok(response) => response
                .into_json()
                .context("the API answered with invalid JSON")
                .map_err(Failure::Final),
            Err(ureq::Error::Status(code, response)) => {
                let body = response.into_string().unwrap_or_default();
                let error = anyhow::anyhow!("{url}: HTTP {code}: {}", problem_detail(&body));
                // The president may be changing hands: the refusal says so.
                if body.contains("no president") || code >= 500 {
                    Err(Failure::Transient(error))
                } else {
                    Err(Failure::Final(error))
                }
            }
            Err(error) => Err(Failure::Transient(anyhow::anyhow!("{url}: {error}"))),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        let request = ureq::request(method, &url)
            .set("Authorization", &format!("Bearer {}", self.token))
            .timeout(Duration::from_secs(30));
        let response = match body {
            // Every body sent here is JSON; the API refuses one without its type (415).
            Some(body) => request
                .set("Content-Type", "application/json")
                .send_string(body),
            None => request.call(),
        };
        match response {
            Ok(response) => response
                .into_json()
                .context("the API answered with invalid JSON"),
            Err(ureq::Error::Status(code, response)) => {
                let body = response.into_string().unwrap_or_default();
                bail!("{url}: HTTP {code}: {}", problem_detail(&body))
            }
            Err(error) => bail!("{url}: {error}"),
        }
    }
}

/// The `detail` of an RFC 9457 problem the API answered with, or the body as it is.
fn problem_detail(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|problem| problem.get("detail")?.as_str().map(str::to_string))
        .unwrap_or_else(|| body.to_string())
}

/// What is logged when RUST_LOG is not set: our own info, and only openraft's warnings
/// (its info level narrates every vote and membership change).
const DEFAULT_LOG_FILTER: &str = "info,openraft=warn";

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn print_performance(view: &aamas_node::driver::performance::PerformanceView) {
    println!("node {}", view.peer_id);
    if view.executors.is_empty() {
        println!("  no attempts run here yet");
    } else {
        println!(
            "  {:<8} {:>8} {:>9} {:>7} {:>9} {:>11} {:>8} {:>8} {:>13}",
            "executor",
            "attempts",
            "succeeded",
            "failed",
            "timed out",
            "unavailable",
            "success",
            "mean s",
            "cpu s/result"
        );
        for e in &view.executors {
            let per_result = e
                .cpu_seconds_per_success
                .map_or_else(|| "-".to_string(), |cpu| format!("{cpu:.3}"));
            println!(
                "  {:<8} {:>8} {:>9} {:>7} {:>9} {:>11} {:>7.1}% {:>8.3} {:>13}",
                e.executor,
                e.attempts,
                e.succeeded,
                e.failed,
                e.timed_out,
                e.unavailable + e.misconfigured,
                e.success_rate * 100.0,
                e.mean_seconds,
                per_result
            );
        }
    }
    let mesh = &view.mesh;
    let rate = mesh
        .transition_success_rate
        .map_or_else(|| "-".to_string(), |rate| format!("{:.1}%", rate * 100.0));
    println!(
        "mesh: {} project(s) open, {} completed, {} failed; phase transitions {} passed, {} \
         failed ({rate})",
        mesh.projects_open,
        mesh.projects_completed,
        mesh.projects_failed,
        mesh.transitions_passed,
        mesh.transitions_failed
    );
    for (what, durations) in [
        ("completed", &mesh.completed_seconds),
        ("failed", &mesh.failed_seconds),
    ] {
        if let Some(d) = durations {
            println!(
                "  {what} projects took: mean {:.1} s, p50 {:.1} s, p90 {:.1} s, max {:.1} s \
                 ({} of them)",
                d.mean, d.p50, d.p90, d.max, d.count
            );
        }
    }
}

fn print_status(status: &Status) {
    println!("peer id    {}", status.peer_id);
    println!("roles      {}", status.roles.join(", "));
    println!(
        "president  {}",
        status.president.as_deref().unwrap_or("(none yet)")
    );
    println!(
        "state      {}",
        status.state.as_deref().unwrap_or("(not placed)")
    );
    println!("members    {}", status.members);
    println!("term       {}", status.term);
    for addr in &status.listen_addrs {
        println!("listening  {addr}");
    }
}

fn draw_hierarchy(tree: &Hierarchy) {
    println!(
        "president {} ({} federal voters)",
        tree.president.as_deref().unwrap_or("(none yet)"),
        tree.federal_voters.len()
    );
    let count = tree.states.len() + usize::from(!tree.unplaced.is_empty());
    for (index, state) in tree.states.iter().enumerate() {
        let last = index + 1 == count;
        let (branch, indent) = if last {
            ("└──", "    ")
        } else {
            ("├──", "│   ")
        };
        println!(
            "{branch} state {} (governor: {}, term {}, {} voters)",
            state.name,
            state.governor.as_deref().unwrap_or("none yet"),
            state.term,
            state.voters.len()
        );
        for city in &state.cities {
            let queue = city
                .queue
                .map(|queue| format!(", queue {queue}"))
                .unwrap_or_default();
            println!(
                "{indent}├── city {} (mayor {}{queue})",
                city.name,
                city.mayor.as_deref().unwrap_or("none")
            );
        }
        for (i, worker) in state.workers.iter().enumerate() {
            let twig = if i + 1 == state.workers.len() {
                "└──"
            } else {
                "├──"
            };
            println!("{indent}{twig} worker {worker}");
        }
    }
    if !tree.unplaced.is_empty() {
        println!("└── not placed yet");
        for worker in &tree.unplaced {
            println!("    └── worker {worker}");
        }
    }
}

fn bar(done: u32, total: u32, width: usize) -> String {
    let filled = if total == 0 {
        width
    } else {
        (done as usize * width) / total as usize
    };
    format!(
        "{}{}",
        "█".repeat(filled.min(width)),
        "░".repeat(width - filled.min(width))
    )
}

fn print_project(project: &serde_json::Value) {
    let text = |name: &str| {
        project
            .get(name)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    println!(
        "project {} ({}): {} in {}",
        text("id"),
        text("name"),
        text("status"),
        text("phase")
    );
    if let Some(reason) = project.get("reason").and_then(|v| v.as_str()) {
        println!("reason: {reason}");
    }
    if text("status") == "awaiting-approval" {
        println!(
            "waiting for a person: aamas project approve {0} [--note TEXT] or aamas project \
             reject {0} [--note TEXT]",
            text("id")
        );
    }
    for phase in project
        .get("phases")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
    {
        let number = |name: &str| {
            phase
                .get(name)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0) as u32
        };
        let (done, total, failed) = (
            number("tasks_done"),
            number("tasks_total"),
            number("tasks_failed"),
        );
        println!(
            "  {:<13} {} {:>3}/{:<3} {:<8}{}",
            phase.get("name").and_then(|v| v.as_str()).unwrap_or(""),
            bar(done, total, 24),
            done,
            total,
            phase.get("status").and_then(|v| v.as_str()).unwrap_or(""),
            if failed > 0 {
                format!(" ({failed} failed)")
            } else {
                String::new()
            }
        );
        for (attempt, reason) in phase
            .get("plan_refusals")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .enumerate()
        {
            println!("    plan {} refused: {reason}", attempt + 1);
        }
        for (round, review) in phase
            .get("reviews")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
            .enumerate()
        {
            let approved = review.get("approved").and_then(|v| v.as_bool()) == Some(true);
            let reopen: Vec<&str> = review
                .get("reopen")
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str())
                .collect();
            println!(
                "    review {}: {}{} {}",
                round + 1,
                if approved { "approved" } else { "rejected" },
                if reopen.is_empty() {
                    String::new()
                } else {
                    format!(" (redo {})", reopen.join(", "))
                },
                review
                    .get("feedback")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
            );
        }
        if let Some(note) = phase.get("approval").and_then(|v| v.as_str()) {
            println!("    approved by a person: {note}");
        }
    }
    if let Some(usage) = project.get("usage").filter(|v| !v.is_null()) {
        let number = |value: &serde_json::Value, name: &str| {
            value
                .get(name)
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0)
        };
        println!(
            "model use: {} prompt + {} completion tokens, estimated cost {}",
            number(usage, "prompt_tokens"),
            number(usage, "completion_tokens"),
            cost(number(usage, "cost_micros"))
        );
        if let Some(used) = usage.get("used") {
            println!(
                "measured use (every attempt): {} ms CPU, {} KiB·s memory, {} bytes stored, \
                 {} tokens, {} model calls, cost {} (`aamas resources` shows the states' limits)",
                number(used, "cpu_ms"),
                number(used, "memory_kib_s"),
                number(used, "storage_bytes"),
                number(used, "tokens"),
                number(used, "api_calls"),
                cost(number(used, "money_micros"))
            );
        }
        if let Some(tasks) = usage.get("tasks").and_then(|v| v.as_object()) {
            for (name, task) in tasks {
                println!(
                    "  {name:<24} {:<20} {:>7} + {:<7} {}",
                    task.get("model").and_then(|v| v.as_str()).unwrap_or(""),
                    number(task, "prompt_tokens"),
                    number(task, "completion_tokens"),
                    cost(number(task, "cost_micros"))
                );
            }
        }
    }
}

/// `aamas resources ...`.
fn resources(command: Option<ResourcesCommand>, target: Target) -> Result<()> {
    match command.unwrap_or(ResourcesCommand::Show { target }) {
        ResourcesCommand::Show { target } => {
            let listed = Client::new(&target)?.get("/api/v1/resources")?;
            if target.json {
                println!("{listed}");
                return Ok(());
            }
            let states: Vec<aamas_node::driver::resources::StateResources> =
                serde_json::from_value(listed)?;
            for state in states {
                let used = state.used.as_ref();
                println!(
                    "state {}{}: {} attempts charged; {} ms CPU, {} KiB·s memory, {} bytes \
                     stored, {} tokens, {} model calls, cost {}",
                    state.state,
                    match state.spent {
                        Some(resource) => format!(" (HELD: its {resource} limit is spent)"),
                        None => String::new(),
                    },
                    state.attempts,
                    used.map_or(0, |u| u.cpu_ms),
                    used.map_or(0, |u| u.memory_kib_s),
                    used.map_or(0, |u| u.storage_bytes),
                    used.map_or(0, |u| u.tokens),
                    used.map_or(0, |u| u.api_calls),
                    cost(used.map_or(0, |u| u.money_micros)),
                );
                if used.is_none() {
                    println!("  (no copy of its Ledger answered: use unknown)");
                }
                for limit in &state.limits {
                    println!(
                        "  {:<13} {:>12} of {:>12} per {:<6} {}",
                        limit.resource.name(),
                        limit.used.map_or("?".to_string(), |u| u.to_string()),
                        limit.amount,
                        limit.period.name(),
                        if limit.hard { "hard" } else { "soft" }
                    );
                }
                for limit in &state.scoped {
                    let of = match limit.of {
                        aamas_node::governance::policy::LimitScope::City => "city",
                        _ => "worker",
                    };
                    let spent = if limit.spent_by.is_empty() {
                        String::new()
                    } else {
                        format!("; spent by {}", limit.spent_by.join(", "))
                    };
                    println!(
                        "  {:<13} {:>12} per {of} per {:<6} hard{spent}",
                        limit.resource.name(),
                        limit.amount,
                        limit.period.name(),
                    );
                }
                for (city, used) in &state.cities {
                    println!(
                        "  city {city:<20} {} ms CPU, {} tokens, cost {}",
                        used.cpu_ms,
                        used.tokens,
                        cost(used.money_micros)
                    );
                }
            }
        }
        ResourcesCommand::Set {
            state,
            resource,
            amount,
            per,
            soft,
            target,
        } => {
            let resource: aamas_consensus::resources::Resource =
                resource.parse().map_err(anyhow::Error::msg)?;
            let period: aamas_consensus::resources::Period =
                per.parse().map_err(anyhow::Error::msg)?;
            let body = serde_json::json!({"amount": amount, "per": period, "hard": !soft});
            let path = format!("/api/v1/resources/{state}/{}", resource.name());
            let set = Client::new(&target)?.call("PUT", &path, Some(&body.to_string()))?;
            if target.json {
                println!("{set}");
            } else {
                println!(
                    "state {state}: {} limited to {amount} per {} ({})",
                    resource.name(),
                    period.name(),
                    if soft { "soft" } else { "hard" }
                );
            }
        }
        ResourcesCommand::Unset {
            state,
            resource,
            target,
        } => {
            let resource: aamas_consensus::resources::Resource =
                resource.parse().map_err(anyhow::Error::msg)?;
            let path = format!("/api/v1/resources/{state}/{}", resource.name());
            let removed = Client::new(&target)?.call("DELETE", &path, None)?;
            if target.json {
                println!("{removed}");
            } else {
                println!("state {state}: no limit on {}", resource.name());
            }
        }
        ResourcesCommand::Requests { target } => {
            let listed = Client::new(&target)?.get("/api/v1/resources/requests")?;
            if target.json {
                println!("{listed}");
                return Ok(());
            }
            let requests: Vec<aamas_node::driver::resources::RequestView> =
                serde_json::from_value(listed)?;
            println!(
                "{:>4} {:<9} {:<16} {:<13} {:>12} reason",
                "id", "status", "state", "resource", "amount"
            );
            for request in requests {
                println!(
                    "{:>4} {:<9} {:<16} {:<13} {:>12} {}",
                    request.id,
                    request.status,
                    request.state,
                    request.resource.name(),
                    request.amount,
                    request.reason
                );
            }
        }
        ResourcesCommand::Approve {
            id,
            amount,
            note,
            target,
        } => {
            let body = serde_json::json!({"amount": amount, "note": note}).to_string();
            let path = format!("/api/v1/resources/requests/{id}/approve");
            let approved = Client::new(&target)?.call("POST", &path, Some(&body))?;
            if target.json {
                println!("{approved}");
            } else {
                println!("approved resource request {id}");
            }
        }
        ResourcesCommand::Deny { id, note, target } => {
            let body = serde_json::json!({"note": note}).to_string();
            let path = format!("/api/v1/resources/requests/{id}/deny");
            let denied = Client::new(&target)?.call("POST", &path, Some(&body))?;
            if target.json {
                println!("{denied}");
            } else {
                println!("denied resource request {id}");
            }
        }
    }
    Ok(())
}

/// A cost kept in millionths of the price unit, as a decimal.
fn cost(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

/// Approves or rejects a project awaiting approval, and prints where it stands.
fn decide(target: &Target, id: &str, action: &str, note: Option<String>) -> Result<()> {
    let body = serde_json::json!({ "action": action, "note": note }).to_string();
    let project =
        Client::new(target)?.send("PUT", &format!("/api/v1/projects/{id}/phase"), &body)?;
    if target.json {
        println!("{project}");
    } else {
        print_project(&project);
    }
    Ok(())
}

/// Follows a project until it completes or fails; returns its last view.
fn watch(
    client: &Client,
    id: &str,
    mut on_change: impl FnMut(&serde_json::Value),
) -> Result<serde_json::Value> {
    let mut last = serde_json::Value::Null;
    loop {
        let project = client.get(&format!("/api/v1/projects/{id}"))?;
        if project != last {
            on_change(&project);
            last = project.clone();
        }
        let status = project.get("status").and_then(|v| v.as_str()).unwrap_or("");
        if status == "completed" || status == "failed" || status == "awaiting-approval" {
            return Ok(project);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The most bytes `aamas project artifacts` reads for one artefact (nodes cap outputs
/// far below: 4 MiB by default).
const MAX_ARTIFACT_READ: u64 = 1 << 30;

/// A task name as a file name: only what a spec allows in names, else refused.
fn artifact_file(dir: &std::path::Path, task: &str) -> Result<PathBuf> {
    if task.is_empty()
        || task.starts_with('.')
        || !task
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        bail!("task name {task:?} cannot be a file name");
    }
    Ok(dir.join(task))
}

fn artifacts(target: &Target, id: &str, task: Option<&str>, out: Option<&PathBuf>) -> Result<()> {
    let client = Client::new(target)?;
    let list = client.get(&format!("/api/v1/projects/{id}/artifacts"))?;
    let entries: Vec<&serde_json::Value> = list.as_array().into_iter().flatten().collect();
    let text = |entry: &serde_json::Value, name: &str| {
        entry
            .get(name)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    let wanted: Vec<String> = match task {
        Some(task) => vec![task.to_string()],
        None if out.is_some() => entries.iter().map(|e| text(e, "task")).collect(),
        None => {
            if target.json {
                println!("{list}");
            } else {
                for entry in &entries {
                    println!(
                        "{:<24} {:<12} {:<13} {}",
                        text(entry, "task"),
                        text(entry, "state"),
                        text(entry, "phase"),
                        text(entry, "digest")
                    );
                }
            }
            return Ok(());
        }
    };
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    for task in wanted {
        let bytes = client.get_bytes(&format!("/api/v1/projects/{id}/artifacts/{task}"))?;
        match out {
            Some(dir) => {
                let path = artifact_file(dir, &task)?;
                std::fs::write(&path, &bytes)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                if target.json {
                    println!(
                        "{}",
                        serde_json::json!({"task": task, "path": path, "bytes": bytes.len()})
                    );
                } else {
                    println!("{task}: {} bytes in {}", bytes.len(), path.display());
                }
            }
            None => {
                use std::io::Write as _;
                std::io::stdout()
                    .write_all(&bytes)
                    .context("writing to stdout")?;
            }
        }
    }
    Ok(())
}

fn project(command: ProjectCommand) -> Result<()> {
    match command {
        ProjectCommand::Artifacts {
            target,
            id,
            task,
            out,
        } => artifacts(&target, &id, task.as_deref(), out.as_ref())?,
        ProjectCommand::Template => print!("{}", aamas_node::spec::template()),
        ProjectCommand::Submit {
            target,
            file,
            override_reason,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            // Check it here first, so the error names the file and line.
            if let Err(error) = aamas_node::spec::parse(&text) {
                bail!("{}: {error}; nothing was submitted", file.display());
            }
            // One request id for every try: a try whose answer was lost (the node or the
            // president failed after committing it) returns the first project, not a
            // second one.
            let request = aamas_protocol::MessageId::random()
                .context("no randomness for a request id")?
                .to_string();
            let client = Client::new(&target)?;
            let mut tries = 0;
            let answer = loop {
                tries += 1;
                match client.submit(&text, &request, override_reason.as_deref()) {
                    Ok(answer) => break answer,
                    Err(Failure::Transient(error)) if tries < SUBMIT_TRIES => {
                        eprintln!("{error}; trying again ({tries} of {SUBMIT_TRIES})");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                    Err(Failure::Transient(error) | Failure::Final(error)) => return Err(error),
                }
            };
            if target.json {
                println!("{answer}");
            } else {
                println!(
                    "{}",
                    answer.get("id").and_then(|v| v.as_str()).unwrap_or("")
                );
            }
        }
        ProjectCommand::Show { target, id } => {
            let project =
                Client::new(&target)?.get(&format!("/api/v1/projects/{id}?usage=true"))?;
            if target.json {
                println!("{project}");
            } else {
                print_project(&project);
            }
        }
        ProjectCommand::List { target } => {
            let projects = Client::new(&target)?.get("/api/v1/projects")?;
            if target.json {
                println!("{projects}");
            } else {
                for project in projects.as_array().into_iter().flatten() {
                    let text = |name: &str| {
                        project
                            .get(name)
                            .and_then(|v| v.as_str())
                            .unwrap_or("")
                            .to_string()
                    };
                    println!(
                        "{}  {:<10} {:<13} {}",
                        text("id"),
                        text("status"),
                        text("phase"),
                        text("name")
                    );
                }
            }
        }
        ProjectCommand::Watch { target, id } => {
            let client = Client::new(&target)?;
            let last = watch(&client, &id, |project| {
                print_project(project);
                println!();
            })?;
            if last.get("status").and_then(|v| v.as_str()) == Some("failed") {
                bail!("project {id} failed");
            }
        }
        ProjectCommand::Archive { target, id } => {
            let body = serde_json::json!({ "action": "archive" }).to_string();
            let answer = Client::new(&target)?.send(
                "PUT",
                &format!("/api/v1/projects/{id}/phase"),
                &body,
            )?;
            if target.json {
                println!("{answer}");
            } else {
                println!("{id} archived");
            }
        }
        ProjectCommand::Approve { target, id, note } => {
            decide(&target, &id, "approve", note)?;
        }
        ProjectCommand::Reject { target, id, note } => {
            decide(&target, &id, "reject", note)?;
        }
        ProjectCommand::Phase { target, id, action } => {
            let body = serde_json::json!({ "action": action }).to_string();
            let project = Client::new(&target)?.send(
                "PUT",
                &format!("/api/v1/projects/{id}/phase"),
                &body,
            )?;
            if target.json {
                println!("{project}");
            } else {
                print_project(&project);
            }
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    // A shell task's sandbox launcher never reaches the CLI (see aamas_node::exec::sandbox).
    aamas_node::exec::sandbox::run_if_launcher();
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    match cli.command {
        Commands::Init {
            data_dir,
            mesh,
            json,
            ttl,
            token_uses,
        } => {
            let founded = aamas_node::init(&data_dir, &mesh, parse_duration(&ttl)?, token_uses)?;
            if json {
                println!("{}", serde_json::to_string(&founded)?);
            } else {
                println!("founded mesh {} as {}", founded.mesh_id, founded.peer_id);
                println!("start it:  aamas node --data-dir {}", data_dir.display());
                println!(
                    "join token for {token_uses} node(s) (give it to the next node with --join ADDR --token ...):"
                );
                println!("{}", founded.token);
            }
        }
        Commands::Node {
            config,
            data_dir,
            listen,
            api,
            join,
            token,
            skills,
            executors,
            shell_sandbox,
            no_fsync,
            mdns,
            capacity,
            max_artifact_bytes,
            scale_hook,
        } => {
            let file = match &config {
                Some(path) => NodeFile::load(path)?,
                None => NodeFile::default(),
            };
            let data_dir = data_dir.or(file.data_dir).context(
                "give --data-dir DIR (or AAMAS_DATA_DIR, or data_dir in the --config file)",
            )?;
            let listen = if listen.is_empty() {
                file.listen
                    .unwrap_or_else(|| vec!["/ip4/127.0.0.1/tcp/0".to_string()])
            } else {
                listen
            };
            let api = match (api, file.api) {
                (Some(api), _) => api,
                (None, Some(api)) => api
                    .parse()
                    .with_context(|| format!("bad api address {api:?} in the config file"))?,
                (None, None) => SocketAddr::from(([127, 0, 0, 1], 0)),
            };
            let join = join.or(file.join);
            let token = token.or(file.token);
            let skills = if skills.is_empty() {
                file.skills.unwrap_or_default()
            } else {
                skills
            };
            let executors = match executors.or(file.executors) {
                Some(list) => list
                    .parse::<aamas_node::exec::ExecutorSet>()
                    .with_context(|| format!("bad --executors {list:?}"))?,
                None => aamas_node::exec::ExecutorSet::default(),
            };
            let shell_sandbox = match shell_sandbox.or(file.shell_sandbox) {
                Some(choice) => choice
                    .parse::<aamas_node::exec::sandbox::ShellSandbox>()
                    .map_err(anyhow::Error::msg)?,
                None => aamas_node::exec::sandbox::ShellSandbox::default(),
            };
            if skills
                .iter()
                .any(|skill| skill == aamas_node::spec::SHELL_SKILL)
            {
                bail!(
                    "the skill `shell` comes with --executors builtin,llm,shell, not with --skills"
                );
            }
            let mdns = mdns || file.mdns.unwrap_or(false);
            let no_fsync = no_fsync || !file.fsync.unwrap_or(true);
            if join.is_some() != token.is_some() {
                bail!("--join and --token go together: give both or neither");
            }
            let listen = listen
                .iter()
                .map(|addr| {
                    addr.parse()
                        .with_context(|| format!("bad --listen multiaddr {addr:?}"))
                })
                .collect::<Result<Vec<_>>>()?;
            let join = match (join, token) {
                (Some(addr), Some(token)) => Some((
                    addr.parse()
                        .with_context(|| format!("bad --join multiaddr {addr:?}"))?,
                    token,
                )),
                _ => None,
            };
            let config = NodeConfig {
                data_dir,
                listen,
                api: Some(api),
                join,
                skills,
                executors,
                shell_sandbox,
                raft: aamas_consensus::RaftConfig::default(),
                fsync: !no_fsync,
                mdns,
                capacity: capacity
                    .or(file.capacity)
                    .unwrap_or(aamas_node::driver::runtime::WORKER_CAPACITY),
                // Fault campaigns' switch; unset (always, outside them), no fault layer.
                faults: aamas_node::net::faults::FileFaults::from_env(),
                memtable_bytes: None,
                shared_memory: None,
                kademlia: true,
                liveness: None,
                max_artifact_bytes,
                scale_hook: scale_hook.or(file.scale_hook),
            };
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(aamas_node::run(config, shutdown_signal()))?;
        }
        Commands::Project { command } => project(command)?,
        Commands::Demo {
            nodes,
            llm,
            model,
            idea,
            out,
        } => {
            let llm = llm.map(|base_url| demo::LlmDemo {
                base_url,
                model,
                idea,
                out: out.unwrap_or_else(|| PathBuf::from("aamas-demo-output")),
            });
            demo::run(nodes, llm.as_ref())?
        }
        Commands::Status(target) => {
            let status = Client::new(&target)?.get("/api/v1/system/status")?;
            if target.json {
                println!("{status}");
            } else {
                print_status(&serde_json::from_value(status)?);
            }
        }
        Commands::Members {
            command: Some(MembersCommand::Remove { id, target }),
            ..
        } => {
            if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
                bail!("{id:?} is not a peer id: copy it from `aamas members`");
            }
            let path = format!("/api/v1/members/{id}");
            let evicted = Client::new(&target)?.call("DELETE", &path, None)?;
            if target.json {
                println!("{evicted}");
            } else {
                println!("evicted {id}");
            }
        }
        Commands::Members {
            command: None,
            target,
        } => {
            let members = Client::new(&target)?.get("/api/v1/members")?;
            if target.json {
                println!("{members}");
            } else {
                let members: Vec<MemberView> = serde_json::from_value(members)?;
                println!("{:<54} {:<12} {:<20} alive", "peer id", "state", "roles");
                for member in members {
                    println!(
                        "{:<54} {:<12} {:<20} {}",
                        member.peer_id,
                        member.state.as_deref().unwrap_or("-"),
                        member.roles.join(","),
                        member.alive
                    );
                }
            }
        }
        Commands::Hierarchy(target) => {
            let tree = Client::new(&target)?.get("/api/v1/hierarchy")?;
            if target.json {
                println!("{tree}");
            } else {
                draw_hierarchy(&serde_json::from_value(tree)?);
            }
        }
        Commands::ApiToken { command } => api_token(command)?,
        Commands::Policy { command } => policy(command)?,
        Commands::Resources { command, target } => resources(command, target)?,
        Commands::Alerts {
            command: Some(AlertsCommand::Ack { id, note, target }),
            ..
        } => {
            let body = serde_json::json!({"note": note}).to_string();
            let path = format!("/api/v1/alerts/{id}/ack");
            let acked = Client::new(&target)?.call("POST", &path, Some(&body))?;
            if target.json {
                println!("{acked}");
            } else {
                println!("acknowledged alert {id}");
            }
        }
        Commands::Events(args) => events::events(args)?,
        Commands::Performance(target) => {
            let shown = Client::new(&target)?.get("/api/v1/performance")?;
            if target.json {
                println!("{shown}");
            } else {
                let view: aamas_node::driver::performance::PerformanceView =
                    serde_json::from_value(shown)?;
                print_performance(&view);
            }
        }
        Commands::Alerts {
            command: None,
            target,
        } => {
            let listed = Client::new(&target)?.get("/api/v1/alerts")?;
            if target.json {
                println!("{listed}");
            } else {
                let alerts: Vec<aamas_node::driver::alerts::AlertView> =
                    serde_json::from_value(listed)?;
                println!("{:>4} {:<13} {:<26} message", "id", "status", "metric");
                for alert in alerts {
                    let status = if alert.acknowledged_ms.is_some() {
                        "acknowledged"
                    } else {
                        "open"
                    };
                    println!(
                        "{:>4} {:<13} {:<26} {}",
                        alert.id, status, alert.metric, alert.message
                    );
                }
            }
        }
        Commands::Token {
            command: TokenCommand::List(target),
        } => {
            let tokens = Client::new(&target)?.get("/api/v1/tokens")?;
            if target.json {
                println!("{tokens}");
            } else {
                let tokens: Vec<aamas_node::driver::admin::TokenView> =
                    serde_json::from_value(tokens)?;
                println!(
                    "{:<18} {:<10} {:>9} expires (ms)",
                    "digest", "status", "uses left"
                );
                for token in tokens {
                    println!(
                        "{:<18} {:<10} {:>9} {}",
                        token.digest, token.status, token.uses_left, token.expires_ms
                    );
                }
            }
        }
        Commands::Token {
            command: TokenCommand::Revoke { token, target },
        } => {
            let revoked =
                Client::new(&target)?.call("POST", "/api/v1/tokens/revoke", Some(token.trim()))?;
            if target.json {
                println!("{revoked}");
            } else {
                println!("revoked");
            }
        }
        Commands::Token {
            command: TokenCommand::Create { target, ttl, uses },
        } => {
            let seconds = parse_duration(&ttl)?.as_secs();
            let created = Client::new(&target)?.call(
                "POST",
                &format!("/api/v1/tokens?ttl_secs={seconds}&uses={uses}"),
                None,
            )?;
            let token = created
                .get("token")
                .and_then(|t| t.as_str())
                .context("no token in the answer")?;
            if target.json {
                println!("{created}");
            } else {
                println!("{token}");
            }
        }
    }
    Ok(())
}
