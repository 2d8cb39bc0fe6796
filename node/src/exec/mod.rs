//! Executors: how a worker runs one task.
//!
//! ```text
//!   worker ── run(spec, name, input, timeout) ──► Executors
//!                                      ├─ builtin  in process, deterministic
//!                                      ├─ shell    /bin/sh with ulimits, own process group,
//!                                      │           clean environment, input on stdin,
//!                                      │           capped stdout, stderr tail on failure
//!                                      └─ llm      POST {base_url}/chat/completions
//!                                                  (HTTP/1.1, plain or rustls),
//!                                                  retries with backoff
//! ```
//!
//! One file per executor: `builtin.rs`, `shell.rs` and `llm.rs`. This module holds what they
//! share: the result ([`Execution`]), the errors ([`ExecError`]) and [`Executors`], which
//! hands each task to its executor.
//!
//! Every run is bounded by the task's timeout, and every error says whether running the
//! task again, possibly on another worker, can help ([`ExecError::retryable`]).
//!
//! The shell executor hands the task's input to the command on stdin and keeps stdout as
//! the output; stderr only feeds the failure reason. A command has finished when its shell
//! has exited and its stdout and stderr are closed (a background process holding them
//! keeps the task running until its timeout). Processes a task leaves behind in its
//! process group are killed when it ends.

mod builtin;
mod llm;
pub mod sandbox;
mod shell;

pub use builtin::BUILTIN_SLEEP_MAX_MS;
pub use llm::{
    ENV_LLM_API_KEY, ENV_LLM_BASE_URL, ENV_LLM_MODEL, ENV_LLM_PRICE_IN, ENV_LLM_PRICE_OUT,
    LLM_ATTEMPTS_MAX, LLM_BACKOFF_MAX, LLM_DEFAULT_ATTEMPTS, LLM_DEFAULT_BACKOFF,
    LLM_DEFAULT_REQUEST_TIMEOUT, LLM_REPLY_MAX_BYTES, LlmConfig,
};
pub use shell::{
    SHELL_INPUT_MAX_BYTES, SHELL_OUTPUT_MAX_BYTES, SHELL_PASSED_ENV, SHELL_STDERR_TAIL_BYTES,
};

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aamas_consensus::resources::Usage;
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;

use crate::spec::ExecutorSpec;

use builtin::run_builtin;
use llm::LlmEndpoint;
use shell::{ShellLimits, run_shell};

pub use crate::spec::LLM_SKILL;

/// Longest [`ExecError::reason`], in bytes.
pub const REASON_MAX_BYTES: usize = 400;

/// What a task execution produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Execution {
    /// The task's result: a builtin's digest, a command's stdout, a model's reply. Capped:
    /// see `output_truncated`.
    pub output: String,
    /// True when `output` is only the start of what the task produced (a shell command
    /// wrote more than its `max_output_bytes`, or a model stopped at `max_tokens`).
    pub output_truncated: bool,
    /// SHA-256 of the whole output when the worker kept it as an artefact
    /// (the driver's artefacts): `output` is then only its start, and the digest is
    /// the task's result.
    pub digest: Option<[u8; 32]>,
    /// Tokens an LLM endpoint reported using, when it reported them.
    pub usage: Option<TokenUsage>,
    /// CPU time of the task's processes (user and system, the shell and every child it
    /// waited for), measured by the worker; 0 for tasks run inside the node.
    pub cpu_ms: u64,
    /// The resident memory of the task's processes over time, KiB-seconds, sampled by the
    /// worker while they run; 0 for tasks run inside the node.
    pub memory_kib_s: u64,
    /// Bytes of output the worker kept as an artefact.
    pub stored_bytes: u64,
}

impl Execution {
    fn complete(output: String) -> Self {
        Execution {
            output,
            output_truncated: false,
            digest: None,
            usage: None,
            cpu_ms: 0,
            memory_kib_s: 0,
            stored_bytes: 0,
        }
    }

    /// What the attempt used, as its account is charged: measured CPU and memory, the
    /// output kept, and the tokens, call and cost of a model's reply.
    pub fn used(&self) -> Usage {
        let usage = self.usage.as_ref();
        Usage {
            cpu_ms: self.cpu_ms,
            tokens: usage.map_or(0, |u| u.prompt_tokens.saturating_add(u.completion_tokens)),
            api_calls: u64::from(usage.is_some()),
            money_micros: usage.map_or(0, |u| u.cost_micros),
            memory_kib_s: self.memory_kib_s,
            storage_bytes: self.stored_bytes,
        }
    }
}

/// Tokens used by one LLM call, as the endpoint reported them, and what they cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// The model called.
    pub model: String,
    /// Tokens in the prompt (system and user messages).
    pub prompt_tokens: u64,
    /// Tokens in the reply.
    pub completion_tokens: u64,
    /// The estimated cost in millionths of the price unit, from the worker's
    /// `AAMAS_LLM_PRICE_IN` and `AAMAS_LLM_PRICE_OUT` (0 without them).
    pub cost_micros: u64,
}

/// Why a task execution did not produce a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ExecError {
    /// The task did not finish within its timeout; whatever it started has been stopped.
    #[error("task timed out after {after_ms} ms")]
    Timeout {
        /// The task's timeout.
        after_ms: u64,
        /// What it used until it was stopped, as far as it was measured: charged like a
        /// result's (a task that spins until its timeout spends the state's budget too).
        used: Usage,
    },
    /// The task ran and failed; running it again as it is would fail the same way.
    #[error("task failed: {reason}")]
    Failed {
        /// What failed: exit status and stderr tail, the server's error message, ...
        reason: String,
        /// What it used before it failed.
        used: Usage,
    },
    /// The task, or this worker's executor settings, cannot work: fix the spec or the
    /// worker's configuration.
    #[error("executor misconfigured: {reason}")]
    Misconfigured {
        /// What is wrong and what to set.
        reason: String,
    },
    /// A resource the executor needs did not answer or was overloaded (connection refused,
    /// HTTP 429 or 5xx, no reply in time): worth retrying, possibly elsewhere.
    #[error("executor unavailable: {reason}")]
    Unavailable {
        /// What was unreachable and how it failed.
        reason: String,
        /// What the attempt used before (a task that ran but whose output could not be
        /// kept; nothing when the executor's service did not answer).
        used: Usage,
    },
}

impl ExecError {
    /// Its kind as a metric label: `timed_out`, `failed`, `misconfigured`, `unavailable`.
    pub fn kind(&self) -> &'static str {
        match self {
            ExecError::Timeout { .. } => "timed_out",
            ExecError::Failed { .. } => "failed",
            ExecError::Misconfigured { .. } => "misconfigured",
            ExecError::Unavailable { .. } => "unavailable",
        }
    }

    /// Whether running the task again, possibly on another worker, can succeed.
    pub fn retryable(&self) -> bool {
        match self {
            ExecError::Timeout { .. } | ExecError::Unavailable { .. } => true,
            ExecError::Failed { .. } | ExecError::Misconfigured { .. } => false,
        }
    }

    /// What the attempt used before it failed (nothing for a task that never ran).
    pub fn used(&self) -> Usage {
        match self {
            ExecError::Timeout { used, .. }
            | ExecError::Failed { used, .. }
            | ExecError::Unavailable { used, .. } => *used,
            ExecError::Misconfigured { .. } => Usage::default(),
        }
    }

    /// This error with `spent` as what the attempt used (kept by every kind but
    /// [`ExecError::Misconfigured`], which never runs).
    pub(crate) fn using(mut self, spent: Usage) -> Self {
        if let ExecError::Timeout { used, .. }
        | ExecError::Failed { used, .. }
        | ExecError::Unavailable { used, .. } = &mut self
        {
            *used = spent;
        }
        self
    }

    /// The error as one line a user can read: no control characters, at most
    /// [`REASON_MAX_BYTES`] bytes (cut at a character boundary).
    pub fn reason(&self) -> String {
        one_line(&self.to_string(), REASON_MAX_BYTES)
    }
}

fn failed(reason: impl Into<String>) -> ExecError {
    ExecError::Failed {
        reason: reason.into(),
        used: Usage::default(),
    }
}

fn misconfigured(reason: impl Into<String>) -> ExecError {
    ExecError::Misconfigured {
        reason: reason.into(),
    }
}

fn unavailable(reason: impl Into<String>) -> ExecError {
    ExecError::Unavailable {
        reason: reason.into(),
        used: Usage::default(),
    }
}

fn timed_out(timeout: Duration) -> ExecError {
    ExecError::Timeout {
        after_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        used: Usage::default(),
    }
}

/// Which executors a node runs tasks with (`aamas node --executors builtin,llm,shell`).
/// `builtin` always runs: it is in process and deterministic. `llm` runs by default
/// (when an endpoint is configured). `shell` is off unless asked for: a shell task runs
/// any command its spec names on the worker's machine, as the node's user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecutorSet {
    /// Whether llm tasks run here.
    pub llm: bool,
    /// Whether shell tasks run here.
    pub shell: bool,
}

impl Default for ExecutorSet {
    fn default() -> Self {
        ExecutorSet {
            llm: true,
            shell: false,
        }
    }
}

impl ExecutorSet {
    /// Every executor, shell included.
    pub const ALL: ExecutorSet = ExecutorSet {
        llm: true,
        shell: true,
    };
}

impl fmt::Display for ExecutorSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("builtin")?;
        if self.llm {
            f.write_str(",llm")?;
        }
        if self.shell {
            f.write_str(",shell")?;
        }
        Ok(())
    }
}

/// Why an `--executors` list does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecutorSetError {
    /// A name that is not an executor.
    #[error("unknown executor {0:?}: the executors are builtin, llm and shell")]
    Unknown(String),
    /// A list without `builtin`.
    #[error("builtin cannot be turned off: include it, as in builtin,llm")]
    NoBuiltin,
}

impl std::str::FromStr for ExecutorSet {
    type Err = ExecutorSetError;

    /// A comma-separated list of executor names, `builtin` among them.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut set = ExecutorSet {
            llm: false,
            shell: false,
        };
        let mut builtin = false;
        for name in text
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
        {
            match name {
                "builtin" => builtin = true,
                "llm" => set.llm = true,
                "shell" => set.shell = true,
                other => return Err(ExecutorSetError::Unknown(other.to_string())),
            }
        }
        if builtin {
            Ok(set)
        } else {
            Err(ExecutorSetError::NoBuiltin)
        }
    }
}

/// The executors of one worker: which run here, the LLM endpoint and its HTTP client.
/// Cheap to clone (clones share the client and its connection pool).
#[derive(Clone)]
pub struct Executors {
    /// The endpoint ready to use, or why LLM tasks cannot run on this worker.
    llm: Result<Arc<LlmEndpoint>, ExecError>,
    /// Whether shell tasks run here.
    shell: bool,
    /// How shell tasks are confined.
    sandbox: sandbox::ShellSandbox,
}

impl fmt::Debug for Executors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let llm = match &self.llm {
            Ok(endpoint) => format!("{} ({})", endpoint.url_text, endpoint.config.model),
            Err(error) => error.reason(),
        };
        f.debug_struct("Executors")
            .field("llm", &llm)
            .field("shell", &self.shell)
            .field("sandbox", &self.sandbox)
            .finish()
    }
}

impl Executors {
    /// The executors of `enabled`, with the given LLM endpoint, or none. A bad endpoint
    /// (unparsable URL, missing model) is reported as [`ExecError::Misconfigured`] by
    /// each LLM task, and so is a task of an executor that is off here.
    pub fn new(llm: Option<LlmConfig>, enabled: ExecutorSet) -> Self {
        let llm = match llm {
            _ if !enabled.llm => Err(misconfigured(
                "llm tasks are off on this worker: start it with --executors builtin,llm",
            )),
            None => Err(misconfigured(format!(
                "this worker has no LLM endpoint: set {ENV_LLM_BASE_URL} and {ENV_LLM_MODEL}"
            ))),
            Some(config) => LlmEndpoint::new(config).map(Arc::new),
        };
        if let Err(error) = &llm {
            tracing::debug!(reason = %error.reason(), "llm executor not available");
        }
        Executors {
            llm,
            shell: enabled.shell,
            sandbox: sandbox::ShellSandbox::default(),
        }
    }

    /// These executors with shell tasks confined by `sandbox` (Landlock by default).
    pub fn with_sandbox(mut self, sandbox: sandbox::ShellSandbox) -> Self {
        self.sandbox = sandbox;
        self
    }

    /// Whether a task of `spec` can run here: its executor is on (an llm task also needs
    /// a valid endpoint).
    pub fn allows(&self, spec: &ExecutorSpec) -> bool {
        match spec {
            ExecutorSpec::Builtin { .. } => true,
            ExecutorSpec::Llm { .. } => self.has_llm(),
            ExecutorSpec::Shell { .. } => self.shell,
        }
    }

    /// Whether this worker can run LLM tasks (an endpoint is configured and valid).
    pub fn has_llm(&self) -> bool {
        self.llm.is_ok()
    }

    /// Runs one task: `name` is the task's name, `input` its input, `timeout` the task's
    /// timeout. Dropping the returned future stops the task (a shell task's processes are
    /// killed).
    pub async fn run(
        &self,
        spec: &ExecutorSpec,
        name: &str,
        input: &str,
        timeout: Duration,
    ) -> Result<Execution, ExecError> {
        let executor = match spec {
            ExecutorSpec::Builtin { .. } => "builtin",
            ExecutorSpec::Shell { .. } => "shell",
            ExecutorSpec::Llm { .. } => "llm",
        };
        let span = tracing::debug_span!("execute", task = name, executor);
        let result = async {
            match spec {
                ExecutorSpec::Builtin { action } => run_builtin(action, name, input, timeout).await,
                ExecutorSpec::Shell {
                    command,
                    workdir,
                    cpu_secs,
                    memory_mb,
                    max_output_bytes,
                } => {
                    if !self.shell {
                        return Err(misconfigured(
                            "shell tasks are off on this worker: start it with \
                             --executors builtin,llm,shell",
                        ));
                    }
                    let limits = ShellLimits {
                        cpu_secs: *cpu_secs,
                        memory_mb: *memory_mb,
                        max_output_bytes: *max_output_bytes,
                    };
                    run_shell(
                        command,
                        workdir.as_deref(),
                        limits,
                        input,
                        timeout,
                        self.sandbox,
                    )
                    .await
                }
                ExecutorSpec::Llm {
                    system, max_tokens, ..
                } => {
                    let endpoint = self.llm.as_ref().map_err(Clone::clone)?;
                    endpoint
                        .complete(system.as_deref(), *max_tokens, input, timeout)
                        .await
                }
            }
        }
        .instrument(span.clone())
        .await;
        span.in_scope(|| match &result {
            Ok(execution) => tracing::debug!(
                output_bytes = execution.output.len(),
                truncated = execution.output_truncated,
                "task ran"
            ),
            Err(error) => tracing::debug!(
                reason = %error.reason(),
                retryable = error.retryable(),
                "task did not run to a result"
            ),
        });
        result
    }
}

// ---------------------------------------------------------------------------------------
// text

/// `text` on one line: control characters become spaces, runs of whitespace one space,
/// cut to at most `max_bytes` at a character boundary (marked with "…").
fn one_line(text: &str, max_bytes: usize) -> String {
    let mut line = String::with_capacity(text.len().min(max_bytes));
    for word in text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|word| !word.is_empty())
    {
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
        if line.len() > max_bytes {
            break;
        }
    }
    if line.len() > max_bytes {
        let mut end = max_bytes.saturating_sub('…'.len_utf8());
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push('…');
    }
    line
}

/// Helpers shared by the tests of the three executors.
#[cfg(test)]
mod testing {
    use super::*;

    pub(super) const LONG: Duration = Duration::from_secs(30);

    pub(super) async fn run(
        spec: &ExecutorSpec,
        input: &str,
        timeout: Duration,
    ) -> Result<Execution, ExecError> {
        Executors::new(None, ExecutorSet::ALL)
            .with_sandbox(sandbox::ShellSandbox::Off)
            .run(spec, "task", input, timeout)
            .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn executor_lists_parse_with_builtin_always_and_shell_only_when_named() {
        let default = ExecutorSet::default();
        assert!(default.llm && !default.shell, "shell is off by default");
        assert_eq!("builtin,llm".parse::<ExecutorSet>(), Ok(default));
        assert_eq!(" builtin , llm , shell ".parse(), Ok(ExecutorSet::ALL));
        assert_eq!(
            "builtin".parse(),
            Ok(ExecutorSet {
                llm: false,
                shell: false
            })
        );
        assert_eq!(
            "llm,shell".parse::<ExecutorSet>(),
            Err(ExecutorSetError::NoBuiltin)
        );
        assert_eq!(
            "builtin,python".parse::<ExecutorSet>(),
            Err(ExecutorSetError::Unknown("python".into()))
        );
        for set in [default, ExecutorSet::ALL, "builtin".parse().unwrap()] {
            assert_eq!(set.to_string().parse(), Ok(set));
        }
    }

    #[tokio::test]
    async fn a_worker_without_shell_runs_no_shell_task() {
        let dir = tempfile::tempdir().unwrap();
        let touched = dir.path().join("ran");
        let spec = ExecutorSpec::Shell {
            command: format!("touch {}", touched.display()),
            workdir: None,
            cpu_secs: 10,
            memory_mb: 1024,
            max_output_bytes: 1 << 10,
        };
        let executors = Executors::new(None, ExecutorSet::default());
        assert!(!executors.allows(&spec));
        let error = executors
            .run(&spec, "t", "", Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(
            matches!(&error, ExecError::Misconfigured { reason } if reason.contains("--executors")),
            "{error}"
        );
        assert!(!touched.exists(), "the command ran");
        // With shell on, the same task runs (unconfined: this test binary is no sandbox
        // launcher; tests/tests/executors.rs runs tasks in the sandbox).
        let executors =
            Executors::new(None, ExecutorSet::ALL).with_sandbox(sandbox::ShellSandbox::Off);
        assert!(executors.allows(&spec));
        executors
            .run(&spec, "t", "", Duration::from_secs(10))
            .await
            .unwrap();
        assert!(touched.exists());
    }

    #[test]
    fn reasons_are_one_bounded_line() {
        let error = ExecError::Failed {
            reason: format!("first\nsecond\t{}", "é".repeat(500)),
            used: Usage::default(),
        };
        let reason = error.reason();
        assert!(
            reason.starts_with("task failed: first second éé"),
            "{reason}"
        );
        assert!(reason.len() <= REASON_MAX_BYTES);
        assert!(reason.ends_with('…'));
        assert!(!reason.chars().any(char::is_control));
        assert_eq!(
            ExecError::Timeout {
                after_ms: 5,
                used: Usage::default()
            }
            .reason(),
            "task timed out after 5 ms"
        );
    }

    #[test]
    fn errors_survive_serialization() {
        let errors = [
            ExecError::Timeout {
                after_ms: 1,
                used: Usage::default(),
            },
            ExecError::Failed {
                reason: "f".to_owned(),
                used: Usage {
                    cpu_ms: 7,
                    ..Usage::default()
                },
            },
            ExecError::Misconfigured {
                reason: "m".to_owned(),
            },
            ExecError::Unavailable {
                reason: "u".to_owned(),
                used: Usage::default(),
            },
        ];
        for error in errors {
            let json = serde_json::to_string(&error).unwrap();
            assert_eq!(serde_json::from_str::<ExecError>(&json).unwrap(), error);
        }
    }
}
