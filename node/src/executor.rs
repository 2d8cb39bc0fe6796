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
//! Every run is bounded by the task's timeout, and every error says whether running the
//! task again, possibly on another worker, can help ([`ExecError::retryable`]).
//!
//! The shell executor hands the task's input to the command on stdin and keeps stdout as
//! the output; stderr only feeds the failure reason. A command has finished when its shell
//! has exited and its stdout and stderr are closed (a background process holding them
//! keeps the task running until its timeout). Processes a task leaves behind in its
//! process group are killed when it ends.

use std::fmt;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::spec::ExecutorSpec;

/// Longest `sleep:<ms>` a builtin task may ask for.
pub const BUILTIN_SLEEP_MAX_MS: u64 = 60_000;
/// Largest `max_output_bytes` a shell task may ask for: outputs travel in messages.
pub const SHELL_OUTPUT_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// How much of the end of a failed command's stderr goes into the failure reason.
pub const SHELL_STDERR_TAIL_BYTES: usize = 200;
/// Largest task input handed to a shell command on stdin.
pub const SHELL_INPUT_MAX_BYTES: usize = 16 * 1024 * 1024;
/// The only variables of the worker's environment a shell task sees.
pub const SHELL_PASSED_ENV: [&str; 2] = ["PATH", "HOME"];
/// `PATH` for shell tasks when the worker itself has none.
const SHELL_DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Bytes read from a pipe at a time.
const SHELL_READ_CHUNK_BYTES: usize = 8 * 1024;
/// How long to wait for a killed task's shell to be reaped before leaving it to tokio.
const SHELL_REAP_TIMEOUT: Duration = Duration::from_secs(5);
/// Applies the limits in the child shell, then replaces it with a shell running the
/// task's command. The command arrives as `$4` and is never spliced into this script, so
/// no quoting in it can change what the limits are. The CPU limit is soft at `$1` s
/// (SIGXCPU, which says what happened) and hard one second later (SIGKILL, for commands
/// that catch SIGXCPU); soft first, as a hard limit below the current soft one is refused.
const SHELL_LIMITS_SCRIPT: &str = concat!(
    r#"ulimit -S -t "$1" && ulimit -H -t "$2" && ulimit -v "$3" || exit 125"#,
    "\n",
    r#"exec /bin/sh -c "$4""#,
);

/// Largest reply body read from an LLM endpoint.
pub const LLM_REPLY_MAX_BYTES: usize = 4 * 1024 * 1024;
/// Most attempts one LLM task makes, whatever [`LlmConfig::attempts`] says.
pub const LLM_ATTEMPTS_MAX: u32 = 10;
/// Longest wait between two attempts, including a server's `Retry-After`.
pub const LLM_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Default for [`LlmConfig::request_timeout`].
pub const LLM_DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Default for [`LlmConfig::attempts`].
pub const LLM_DEFAULT_ATTEMPTS: u32 = 3;
/// Default for [`LlmConfig::backoff`].
pub const LLM_DEFAULT_BACKOFF: Duration = Duration::from_millis(500);
/// Longest TCP connect to an LLM endpoint (the request timeout bounds it too).
const LLM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle keep-alive connections kept per endpoint.
const LLM_POOL_IDLE_PER_HOST: usize = 4;
/// How long an idle keep-alive connection is kept.
const LLM_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Most characters of a server's error message quoted in a reason.
const LLM_SERVER_MESSAGE_MAX_CHARS: usize = 200;

/// Longest [`ExecError::reason`], in bytes.
pub const REASON_MAX_BYTES: usize = 400;

/// Environment variable holding the LLM endpoint, e.g. `http://127.0.0.1:11434/v1`.
pub const ENV_LLM_BASE_URL: &str = "AAMAS_LLM_BASE_URL";
/// Environment variable holding the model name.
pub const ENV_LLM_MODEL: &str = "AAMAS_LLM_MODEL";
/// Environment variable holding the API key (optional: local servers need none).
pub const ENV_LLM_API_KEY: &str = "AAMAS_LLM_API_KEY";

/// What a task execution produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Execution {
    /// The task's result: a builtin's digest, a command's stdout, a model's reply. Capped:
    /// see `output_truncated`.
    pub output: String,
    /// True when `output` is only the start of what the task produced (a shell command
    /// wrote more than its `max_output_bytes`, or a model stopped at `max_tokens`).
    pub output_truncated: bool,
    /// Tokens an LLM endpoint reported using, when it reported them.
    pub usage: Option<TokenUsage>,
}

impl Execution {
    fn complete(output: String) -> Self {
        Execution {
            output,
            output_truncated: false,
            usage: None,
        }
    }
}

/// Tokens used by one LLM call, as the endpoint reported them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Tokens in the prompt (system and user messages).
    pub prompt_tokens: u64,
    /// Tokens in the reply.
    pub completion_tokens: u64,
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
    },
    /// The task ran and failed; running it again as it is would fail the same way.
    #[error("task failed: {reason}")]
    Failed {
        /// What failed: exit status and stderr tail, the server's error message, ...
        reason: String,
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
    },
}

impl ExecError {
    /// Whether running the task again, possibly on another worker, can succeed.
    pub fn retryable(&self) -> bool {
        match self {
            ExecError::Timeout { .. } | ExecError::Unavailable { .. } => true,
            ExecError::Failed { .. } | ExecError::Misconfigured { .. } => false,
        }
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
    }
}

fn timed_out(timeout: Duration) -> ExecError {
    ExecError::Timeout {
        after_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
    }
}

/// LLM endpoint settings, normally from `AAMAS_LLM_BASE_URL`, `AAMAS_LLM_MODEL` and
/// `AAMAS_LLM_API_KEY`. `Debug` does not print the key.
#[derive(Clone)]
pub struct LlmConfig {
    /// The OpenAI-compatible API root, e.g. `http://127.0.0.1:11434/v1` (Ollama) or
    /// `https://api.openai.com/v1`; `/chat/completions` is appended.
    pub base_url: String,
    /// The model name the endpoint serves.
    pub model: String,
    /// Sent as `Authorization: Bearer <key>` when set.
    pub api_key: Option<String>,
    /// Longest wait for one request's reply (the task's timeout also bounds it).
    pub request_timeout: Duration,
    /// Requests made at most per task (1 = no retry); capped at [`LLM_ATTEMPTS_MAX`].
    pub attempts: u32,
    /// Wait before the first retry; doubled for each further retry, with jitter.
    pub backoff: Duration,
}

impl LlmConfig {
    /// Reads the endpoint from the environment; `None` when `AAMAS_LLM_BASE_URL` is unset
    /// or empty. A missing model shows up as [`ExecError::Misconfigured`] when a task runs.
    pub fn from_env() -> Option<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`LlmConfig::from_env`], with `lookup` standing in for the environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let present = |name: &str| {
            lookup(name)
                .map(|value| value.trim().to_owned())
                .filter(|value| !value.is_empty())
        };
        Some(LlmConfig {
            base_url: present(ENV_LLM_BASE_URL)?,
            model: present(ENV_LLM_MODEL).unwrap_or_default(),
            api_key: present(ENV_LLM_API_KEY),
            request_timeout: LLM_DEFAULT_REQUEST_TIMEOUT,
            attempts: LLM_DEFAULT_ATTEMPTS,
            backoff: LLM_DEFAULT_BACKOFF,
        })
    }
}

impl fmt::Debug for LlmConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("request_timeout", &self.request_timeout)
            .field("attempts", &self.attempts)
            .field("backoff", &self.backoff)
            .finish()
    }
}

/// The executors of one worker: the LLM endpoint and its HTTP client. Cheap to clone
/// (clones share the client and its connection pool).
#[derive(Clone)]
pub struct Executors {
    /// The endpoint ready to use, or why LLM tasks cannot run on this worker.
    llm: Result<Arc<LlmEndpoint>, ExecError>,
}

impl fmt::Debug for Executors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let llm = match &self.llm {
            Ok(endpoint) => format!("{} ({})", endpoint.url_text, endpoint.config.model),
            Err(error) => error.reason(),
        };
        f.debug_struct("Executors").field("llm", &llm).finish()
    }
}

impl Executors {
    /// Executors with the given LLM endpoint, or none. A bad endpoint (unparsable URL,
    /// missing model) is reported as [`ExecError::Misconfigured`] by each LLM task.
    pub fn new(llm: Option<LlmConfig>) -> Self {
        let llm = match llm {
            None => Err(misconfigured(format!(
                "this worker has no LLM endpoint: set {ENV_LLM_BASE_URL} and {ENV_LLM_MODEL}"
            ))),
            Some(config) => LlmEndpoint::new(config).map(Arc::new),
        };
        if let Err(error) = &llm {
            tracing::debug!(reason = %error.reason(), "llm executor not available");
        }
        Executors { llm }
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
                    let limits = ShellLimits {
                        cpu_secs: *cpu_secs,
                        memory_mb: *memory_mb,
                        max_output_bytes: *max_output_bytes,
                    };
                    run_shell(command, workdir.as_deref(), limits, input, timeout).await
                }
                ExecutorSpec::Llm { system, max_tokens } => {
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
// builtin

async fn run_builtin(
    action: &str,
    name: &str,
    input: &str,
    timeout: Duration,
) -> Result<Execution, ExecError> {
    match action {
        "noop" => Ok(Execution::complete(String::new())),
        "digest" => Ok(Execution::complete(digest_hex(name, input))),
        "fail" => Err(failed("builtin fail action")),
        _ => {
            let Some(ms) = action.strip_prefix("sleep:") else {
                return Err(misconfigured(format!(
                    "unknown builtin action {action:?}: use noop, digest, fail or sleep:<ms>"
                )));
            };
            let ms = ms
                .parse::<u64>()
                .ok()
                .filter(|ms| *ms <= BUILTIN_SLEEP_MAX_MS)
                .ok_or_else(|| {
                    misconfigured(format!(
                        "builtin action {action:?}: sleep takes 0 to {BUILTIN_SLEEP_MAX_MS} ms"
                    ))
                })?;
            tokio::time::timeout(timeout, tokio::time::sleep(Duration::from_millis(ms)))
                .await
                .map_err(|_| timed_out(timeout))?;
            Ok(Execution::complete(String::new()))
        }
    }
}

/// Hex SHA-256 of `name ‖ 0x00 ‖ input`: the zero byte keeps ("ab", "c") and ("a", "bc")
/// apart.
fn digest_hex(name: &str, input: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([0u8]);
    hasher.update(input.as_bytes());
    hasher
        .finalize()
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
            hex.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
            hex
        })
}

// ---------------------------------------------------------------------------------------
// shell

#[derive(Debug, Clone, Copy)]
struct ShellLimits {
    cpu_secs: u64,
    memory_mb: u64,
    max_output_bytes: u64,
}

async fn run_shell(
    command: &str,
    workdir: Option<&str>,
    limits: ShellLimits,
    input: &str,
    timeout: Duration,
) -> Result<Execution, ExecError> {
    if limits.cpu_secs == 0 {
        return Err(misconfigured(
            "shell cpu_secs is 0: give the command at least 1 s of CPU time",
        ));
    }
    let memory_kb = limits
        .memory_mb
        .checked_mul(1024)
        .filter(|kb| *kb > 0)
        .ok_or_else(|| {
            misconfigured(format!(
                "shell memory_mb {} is out of range: use 1 or more MiB",
                limits.memory_mb
            ))
        })?;
    let output_cap = usize::try_from(limits.max_output_bytes)
        .ok()
        .filter(|_| limits.max_output_bytes <= SHELL_OUTPUT_MAX_BYTES)
        .ok_or_else(|| {
            misconfigured(format!(
                "shell max_output_bytes {} is above the limit of {SHELL_OUTPUT_MAX_BYTES}",
                limits.max_output_bytes
            ))
        })?;
    if input.len() > SHELL_INPUT_MAX_BYTES {
        return Err(misconfigured(format!(
            "task input of {} bytes is above the shell limit of {SHELL_INPUT_MAX_BYTES}",
            input.len()
        )));
    }
    if let Some(dir) = workdir {
        match tokio::fs::metadata(dir).await {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(misconfigured(format!(
                    "shell workdir {dir:?} is not a directory on this worker"
                )));
            }
            Err(error) => {
                return Err(misconfigured(format!(
                    "shell workdir {dir:?} is not usable on this worker: {error}"
                )));
            }
        }
    }

    let mut shell = tokio::process::Command::new("/bin/sh");
    shell
        .arg("-c")
        .arg(SHELL_LIMITS_SCRIPT)
        .arg("aamas-task")
        .arg(limits.cpu_secs.to_string())
        .arg(limits.cpu_secs.saturating_add(1).to_string())
        .arg(memory_kb.to_string())
        .arg(command)
        // Secrets in the worker's environment (AAMAS_LLM_API_KEY, ...) stay out of tasks.
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout can kill everything the command started.
        .process_group(0)
        .kill_on_drop(true);
    for name in SHELL_PASSED_ENV {
        match std::env::var_os(name) {
            Some(value) => {
                shell.env(name, value);
            }
            None if name == "PATH" => {
                shell.env(name, SHELL_DEFAULT_PATH);
            }
            None => {}
        }
    }
    if let Some(dir) = workdir {
        shell.current_dir(dir);
    }
    let mut child = shell
        .spawn()
        .map_err(|error| unavailable(format!("cannot start /bin/sh: {error}")))?;
    let group = child.id();
    let (Some(mut stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        kill_process_group(group);
        return Err(unavailable("cannot start /bin/sh: its pipes are missing"));
    };

    let finished = tokio::time::timeout(timeout, async {
        let feed = async {
            // A command that does not read its input closes the pipe: not an error.
            let _ = stdin.write_all(input.as_bytes()).await;
            drop(stdin);
        };
        let ((), stdout, stderr, status) = tokio::join!(
            feed,
            read_capped(stdout, output_cap),
            read_tail(stderr, SHELL_STDERR_TAIL_BYTES),
            child.wait()
        );
        (stdout, stderr, status)
    })
    .await;
    // Whatever the command left running in its group goes with it. The shell has been
    // reaped only if it exited; its group id stays unused while stragglers remain, and a
    // new process reusing it within microseconds would need the pid space to wrap.
    kill_process_group(group);
    let (stdout, stderr, status) = match finished {
        Ok(finished) => finished,
        Err(_) => {
            if tokio::time::timeout(SHELL_REAP_TIMEOUT, child.kill())
                .await
                .is_err()
            {
                tracing::warn!(pid = ?group, "killed task shell not reaped; tokio reaps it later");
            }
            return Err(timed_out(timeout));
        }
    };
    let status =
        status.map_err(|error| unavailable(format!("cannot wait for /bin/sh: {error}")))?;
    let (stdout, truncated) = stdout
        .map_err(|error| unavailable(format!("cannot read the command's stdout: {error}")))?;
    let stderr = stderr
        .map_err(|error| unavailable(format!("cannot read the command's stderr: {error}")))?;
    if !status.success() {
        return Err(failed(exit_reason(status, &stderr, limits)));
    }
    Ok(Execution {
        output: text_of(stdout, truncated),
        output_truncated: truncated,
        usage: None,
    })
}

/// Reads all of `reader`, keeping the first `cap` bytes; the rest is read and discarded so
/// the writer never blocks on a full pipe. Returns the kept bytes and whether any were
/// discarded.
async fn read_capped(
    mut reader: impl AsyncRead + Unpin,
    cap: usize,
) -> std::io::Result<(Vec<u8>, bool)> {
    let mut kept = Vec::with_capacity(cap.min(SHELL_READ_CHUNK_BYTES));
    let mut chunk = vec![0u8; SHELL_READ_CHUNK_BYTES];
    let mut truncated = false;
    loop {
        let read = reader.read(&mut chunk).await?;
        if read == 0 {
            return Ok((kept, truncated));
        }
        let take = read.min(cap - kept.len());
        kept.extend_from_slice(&chunk[..take]);
        truncated |= take < read;
    }
}

/// Reads all of `reader`, keeping only its last `keep` bytes.
async fn read_tail(mut reader: impl AsyncRead + Unpin, keep: usize) -> std::io::Result<Vec<u8>> {
    let mut tail = Vec::with_capacity(keep + SHELL_READ_CHUNK_BYTES);
    let mut chunk = vec![0u8; SHELL_READ_CHUNK_BYTES];
    loop {
        let read = reader.read(&mut chunk).await?;
        if read == 0 {
            return Ok(tail);
        }
        tail.extend_from_slice(&chunk[..read]);
        if tail.len() > keep {
            tail.drain(..tail.len() - keep);
        }
    }
}

/// Output bytes as text. Invalid UTF-8 becomes U+FFFD, except a character cut in half by
/// truncation, which is dropped.
fn text_of(mut bytes: Vec<u8>, truncated: bool) -> String {
    if truncated
        && let Err(error) = std::str::from_utf8(&bytes)
        && error.error_len().is_none()
    {
        bytes.truncate(error.valid_up_to());
    }
    match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(error) => String::from_utf8_lossy(error.as_bytes()).into_owned(),
    }
}

fn exit_reason(status: ExitStatus, stderr_tail: &[u8], limits: ShellLimits) -> String {
    use nix::sys::signal::Signal;
    use std::os::unix::process::ExitStatusExt as _;
    let signal_hint = |signal: i32| {
        if signal == Signal::SIGXCPU as i32 {
            format!(" (SIGXCPU: the CPU limit of {} s)", limits.cpu_secs)
        } else if signal == Signal::SIGKILL as i32 {
            " (SIGKILL: the hard CPU limit, the OOM killer or another process)".to_owned()
        } else if signal == Signal::SIGSEGV as i32 {
            format!(
                " (SIGSEGV: with a memory limit of {} MiB, often a failed allocation)",
                limits.memory_mb
            )
        } else {
            String::new()
        }
    };
    let what = match (status.code(), status.signal()) {
        (_, Some(signal)) => {
            format!(
                "command was killed by signal {signal}{}",
                signal_hint(signal)
            )
        }
        // The command's shell reports a child killed by signal N as status 128 + N.
        (Some(code), None) if code > 128 && code <= 128 + 64 => format!(
            "command exited with status {code}: a process was killed by signal {}{}",
            code - 128,
            signal_hint(code - 128)
        ),
        (Some(code), None) => format!("command exited with status {code}"),
        (None, None) => format!("command ended with {status}"),
    };
    // Drop a character cut in half at the start of the tail.
    let start = stderr_tail
        .iter()
        .position(|byte| byte & 0b1100_0000 != 0b1000_0000)
        .unwrap_or(stderr_tail.len());
    let stderr = one_line(
        &String::from_utf8_lossy(&stderr_tail[start..]),
        SHELL_STDERR_TAIL_BYTES,
    );
    if stderr.is_empty() {
        what
    } else {
        format!("{what}; stderr ends: {stderr}")
    }
}

/// Kills the process group led by the task's shell (ids of exited groups are ignored).
fn kill_process_group(leader: Option<u32>) {
    let Some(group) = leader.and_then(|pid| i32::try_from(pid).ok()) else {
        return;
    };
    let signal = nix::sys::signal::Signal::SIGKILL;
    match nix::sys::signal::killpg(nix::unistd::Pid::from_raw(group), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(error) => tracing::warn!(group, %error, "cannot kill a task's process group"),
    }
}

// ---------------------------------------------------------------------------------------
// llm

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A validated [`LlmConfig`] with its HTTP client.
struct LlmEndpoint {
    config: LlmConfig,
    /// `{base_url}/chat/completions`.
    url: Uri,
    /// `url` without credentials, for messages.
    url_text: String,
    authorization: Option<HeaderValue>,
    client: HttpClient,
}

/// How one request failed.
enum AttemptError {
    /// Worth another attempt after `retry_after` (or the backoff).
    Retry {
        error: ExecError,
        retry_after: Option<Duration>,
    },
    /// Another attempt would fail the same way.
    Final(ExecError),
}

impl LlmEndpoint {
    fn new(config: LlmConfig) -> Result<Self, ExecError> {
        if config.model.trim().is_empty() {
            return Err(misconfigured(format!(
                "{ENV_LLM_MODEL} is not set: name the model the endpoint serves, e.g. llama3.1"
            )));
        }
        let base = config.base_url.trim().trim_end_matches('/');
        let url: Uri = format!("{base}/chat/completions")
            .parse()
            .map_err(|error| {
                misconfigured(format!(
                    "{ENV_LLM_BASE_URL} {base:?} is not a URL ({error}): \
                 use e.g. http://127.0.0.1:11434/v1"
                ))
            })?;
        let (Some(scheme @ ("http" | "https")), Some(host)) = (url.scheme_str(), url.host()) else {
            return Err(misconfigured(format!(
                "{ENV_LLM_BASE_URL} {base:?} must start with http:// or https:// and name a host"
            )));
        };
        let port = url
            .port_u16()
            .map(|port| format!(":{port}"))
            .unwrap_or_default();
        let url_text = format!("{scheme}://{host}{port}{}", url.path());
        let authorization = match &config.api_key {
            None => None,
            Some(key) => {
                let mut value = HeaderValue::try_from(format!("Bearer {key}")).map_err(|_| {
                    misconfigured(format!(
                        "{ENV_LLM_API_KEY} holds characters that cannot go in an HTTP header"
                    ))
                })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(LlmEndpoint {
            config,
            url,
            url_text,
            authorization,
            client: http_client()?,
        })
    }

    async fn complete(
        &self,
        system: Option<&str>,
        max_tokens: u32,
        input: &str,
        timeout: Duration,
    ) -> Result<Execution, ExecError> {
        // A timeout too large to add to the clock is as good as none.
        let deadline = Instant::now().checked_add(timeout);
        let time_left = || {
            deadline.map_or(Duration::MAX, |deadline| {
                deadline.saturating_duration_since(Instant::now())
            })
        };
        let mut messages = Vec::with_capacity(2);
        if let Some(system) = system.filter(|system| !system.is_empty()) {
            messages.push(ChatMessage {
                role: "system",
                content: system,
            });
        }
        messages.push(ChatMessage {
            role: "user",
            content: input,
        });
        let request = ChatRequest {
            model: &self.config.model,
            messages,
            max_tokens,
            stream: false,
        };
        let body = Bytes::from(
            serde_json::to_vec(&request)
                .map_err(|error| failed(format!("cannot encode the request: {error}")))?,
        );

        let attempts = self.config.attempts.clamp(1, LLM_ATTEMPTS_MAX);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let remaining = time_left();
            if remaining.is_zero() {
                return Err(timed_out(timeout));
            }
            let request_timeout = remaining.min(self.config.request_timeout);
            let (error, retry_after) =
                match tokio::time::timeout(request_timeout, self.post(body.clone())).await {
                    Ok(Ok(execution)) => return Ok(execution),
                    Ok(Err(AttemptError::Final(error))) => return Err(error),
                    Ok(Err(AttemptError::Retry { error, retry_after })) => (error, retry_after),
                    Err(_) if time_left().is_zero() => return Err(timed_out(timeout)),
                    Err(_) => (
                        unavailable(format!(
                            "no reply from {} within {} ms",
                            self.url_text,
                            request_timeout.as_millis()
                        )),
                        None,
                    ),
                };
            if attempt >= attempts {
                return Err(gave_up(error, format!("after {attempt} attempts")));
            }
            let delay = backoff_delay(self.config.backoff, attempt, retry_after);
            if delay >= time_left() {
                let note =
                    format!("after {attempt} of {attempts} attempts: the task times out first");
                return Err(gave_up(error, note));
            }
            tracing::debug!(
                attempt,
                delay_ms = delay.as_millis(),
                reason = %error.reason(),
                "llm request failed; retrying"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// One request, without timeout or retry.
    async fn post(&self, body: Bytes) -> Result<Execution, AttemptError> {
        let mut request = Request::post(self.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .header(
                header::USER_AGENT,
                concat!("aamas/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(authorization) = &self.authorization {
            request = request.header(header::AUTHORIZATION, authorization.clone());
        }
        let request = request.body(Full::new(body)).map_err(|error| {
            AttemptError::Final(misconfigured(format!(
                "cannot build a request to {}: {error}",
                self.url_text
            )))
        })?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|error| AttemptError::Retry {
                error: unavailable(format!(
                    "cannot reach {}: {}",
                    self.url_text,
                    error_chain(&error)
                )),
                retry_after: None,
            })?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = match Limited::new(response.into_body(), LLM_REPLY_MAX_BYTES)
            .collect()
            .await
        {
            Ok(collected) => Some(collected.to_bytes()),
            Err(error) if error.is::<LengthLimitError>() => None,
            Err(error) => {
                return Err(AttemptError::Retry {
                    error: unavailable(format!(
                        "reply from {} broke off: {}",
                        self.url_text,
                        error_chain(&*error)
                    )),
                    retry_after: None,
                });
            }
        };
        let message = || match &body {
            Some(body) => server_message(body),
            None => format!("error body larger than {LLM_REPLY_MAX_BYTES} bytes"),
        };
        if status.is_success() {
            let body = body.ok_or_else(|| {
                AttemptError::Final(failed(format!(
                    "reply from {} is larger than {LLM_REPLY_MAX_BYTES} bytes",
                    self.url_text
                )))
            })?;
            return parse_reply(&body).map_err(|detail| {
                AttemptError::Final(failed(format!(
                    "malformed reply: {detail} (from {})",
                    self.url_text
                )))
            });
        }
        let reason = format!(
            "HTTP {} from {}: {}",
            status.as_u16(),
            self.url_text,
            message()
        );
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            Err(AttemptError::Retry {
                error: unavailable(reason),
                retry_after,
            })
        } else {
            Err(AttemptError::Final(failed(reason)))
        }
    }
}

fn http_client() -> Result<HttpClient, ExecError> {
    // An explicit provider, not the process default: rustls cannot choose a default when
    // other crates enable both of its backends, and nothing here installs one.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| misconfigured(format!("cannot set up TLS for the LLM endpoint: {error}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(LLM_CONNECT_TIMEOUT));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(LLM_POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(LLM_POOL_IDLE_PER_HOST)
        .build(connector))
}

/// `error` with `note` appended, as [`ExecError::Unavailable`] (what retries give up as).
fn gave_up(error: ExecError, note: String) -> ExecError {
    match error {
        ExecError::Unavailable { reason } => unavailable(format!("{reason} ({note})")),
        other => other,
    }
}

/// Wait before attempt `attempt + 1`: `backoff · 2^(attempt-1)`, scaled by a random factor in
/// [0.5, 1) so that workers failing together do not retry together, at least the
/// server's `Retry-After`, at most [`LLM_BACKOFF_MAX`].
fn backoff_delay(backoff: Duration, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let exponential = backoff
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
        .min(LLM_BACKOFF_MAX);
    let jittered = exponential.mul_f64(0.5 + jitter_unit() / 2.0);
    jittered
        .max(retry_after.unwrap_or_default())
        .min(LLM_BACKOFF_MAX)
}

/// A number in [0, 1) that differs between calls. Only spreads retries out; std's
/// per-instance random hasher keys are enough for that without an RNG dependency.
fn jitter_unit() -> f64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// `Retry-After` in seconds (the HTTP-date form is ignored).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds = headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

/// The error and its sources on one line ("client error (Connect): tcp connect error: ...").
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<ChatMessage<'a>>,
    max_tokens: u32,
    stream: bool,
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'a str,
    content: &'a str,
}

#[derive(Deserialize)]
struct ChatReply {
    choices: Vec<ChatChoice>,
    #[serde(default)]
    usage: Option<ChatUsage>,
}

#[derive(Deserialize)]
struct ChatChoice {
    message: ChatReplyMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChatReplyMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct ChatUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

/// What is wrong with a chat completion reply.
#[derive(Debug, thiserror::Error)]
enum MalformedReply {
    #[error("not a chat completion ({0})")]
    NotJson(serde_json::Error),
    #[error("no choices[0]")]
    NoChoice,
    #[error("no choices[0].message.content")]
    NoContent,
}

/// The first choice's content; `Err` says what is missing.
fn parse_reply(body: &[u8]) -> Result<Execution, MalformedReply> {
    let reply: ChatReply = serde_json::from_slice(body).map_err(MalformedReply::NotJson)?;
    let usage =
        reply.usage.and_then(
            |usage| match (usage.prompt_tokens, usage.completion_tokens) {
                (None, None) => None,
                (prompt, completion) => Some(TokenUsage {
                    prompt_tokens: prompt.unwrap_or(0),
                    completion_tokens: completion.unwrap_or(0),
                }),
            },
        );
    let choice = reply
        .choices
        .into_iter()
        .next()
        .ok_or(MalformedReply::NoChoice)?;
    let output = choice.message.content.ok_or(MalformedReply::NoContent)?;
    Ok(Execution {
        output,
        output_truncated: choice.finish_reason.as_deref() == Some("length"),
        usage,
    })
}

/// The message of an error reply: OpenAI's `{"error": {"message": ...}}`, Ollama's
/// `{"error": "..."}`, or the start of the body.
fn server_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ErrorReply {
        error: ErrorField,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ErrorField {
        Text(String),
        Object { message: String },
    }
    let message = match serde_json::from_slice::<ErrorReply>(body) {
        Ok(ErrorReply {
            error: ErrorField::Text(message) | ErrorField::Object { message },
        }) => message,
        Err(_) => String::from_utf8_lossy(body).into_owned(),
    };
    let message = one_line(&message, LLM_SERVER_MESSAGE_MAX_CHARS * 4);
    let message: String = message.chars().take(LLM_SERVER_MESSAGE_MAX_CHARS).collect();
    if message.is_empty() {
        "no error message".to_owned()
    } else {
        message
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    use std::net::SocketAddr;
    use std::path::PathBuf;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use axum::extract::State;
    use axum::http::{HeaderMap as AxumHeaders, StatusCode as AxumStatus};
    use axum::response::{IntoResponse, Response};

    const LONG: Duration = Duration::from_secs(30);

    fn builtin(action: &str) -> ExecutorSpec {
        ExecutorSpec::Builtin {
            action: action.to_owned(),
        }
    }

    fn shell(command: &str) -> ExecutorSpec {
        ExecutorSpec::Shell {
            command: command.to_owned(),
            workdir: None,
            cpu_secs: 10,
            memory_mb: 1024,
            max_output_bytes: 1 << 20,
        }
    }

    fn shell_with(command: &str, edit: impl FnOnce(&mut u64, &mut u64, &mut u64)) -> ExecutorSpec {
        let mut spec = shell(command);
        if let ExecutorSpec::Shell {
            cpu_secs,
            memory_mb,
            max_output_bytes,
            ..
        } = &mut spec
        {
            edit(cpu_secs, memory_mb, max_output_bytes);
        }
        spec
    }

    fn llm_spec() -> ExecutorSpec {
        ExecutorSpec::Llm {
            system: Some("be brief".to_owned()),
            max_tokens: 64,
        }
    }

    async fn run(
        spec: &ExecutorSpec,
        input: &str,
        timeout: Duration,
    ) -> Result<Execution, ExecError> {
        Executors::new(None).run(spec, "task", input, timeout).await
    }

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(label: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("aamas-executor-{}-{label}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    // --- builtin ---------------------------------------------------------------------

    #[tokio::test]
    async fn builtin_noop_produces_nothing() {
        let execution = run(&builtin("noop"), "ignored", LONG).await.unwrap();
        assert_eq!(
            execution,
            Execution {
                output: String::new(),
                output_truncated: false,
                usage: None
            }
        );
    }

    #[tokio::test]
    async fn builtin_digest_is_sha256_of_name_zero_input() {
        let execution = run(&builtin("digest"), "input", LONG).await.unwrap();
        // printf 'task\0input' | sha256sum
        assert_eq!(
            execution.output,
            "cb74fc2708234490b0f14e0438f71af9428f9b7ea0f80f8c49bfcdb6dde810d6"
        );
        assert_eq!(
            digest_hex("ab", "c"),
            "6c032e631d39a14d85aff7e319546af701e26c97b57ca95fbfe9c6ba855f67bf"
        );
        assert_ne!(digest_hex("ab", "c"), digest_hex("a", "bc"));
    }

    #[tokio::test]
    async fn builtin_fail_fails_for_good() {
        let error = run(&builtin("fail"), "", LONG).await.unwrap_err();
        assert_eq!(
            error,
            ExecError::Failed {
                reason: "builtin fail action".to_owned()
            }
        );
        assert!(!error.retryable());
    }

    #[tokio::test]
    async fn builtin_sleep_finishes_within_its_timeout() {
        let execution = run(&builtin("sleep:5"), "", LONG).await.unwrap();
        assert_eq!(execution.output, "");
    }

    #[tokio::test]
    async fn builtin_sleep_past_the_timeout_times_out() {
        let started = std::time::Instant::now();
        let error = run(&builtin("sleep:60000"), "", Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(error, ExecError::Timeout { after_ms: 50 });
        assert!(error.retryable());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn builtin_rejects_unknown_and_out_of_range_actions() {
        for action in [
            "explode",
            "sleep:",
            "sleep:-1",
            "sleep:60001",
            "sleep:1e3",
            "NOOP",
        ] {
            let error = run(&builtin(action), "", LONG).await.unwrap_err();
            assert!(
                matches!(error, ExecError::Misconfigured { .. }),
                "{action}: {error:?}"
            );
            assert!(!error.retryable());
        }
    }

    // --- shell -----------------------------------------------------------------------

    #[tokio::test]
    async fn shell_returns_stdout_and_reads_the_input_on_stdin() {
        let execution = run(&shell("printf 'got:'; cat; echo noise >&2"), "hello", LONG)
            .await
            .unwrap();
        assert_eq!(
            execution,
            Execution {
                output: "got:hello".to_owned(),
                output_truncated: false,
                usage: None
            }
        );
    }

    #[tokio::test]
    async fn shell_command_reaches_the_inner_shell_verbatim() {
        // Quotes and `$` in the command must not interact with the limits script.
        let execution = run(&shell(r#"printf '%s|%s|%s' "it's" '$1' "$0""#), "", LONG)
            .await
            .unwrap();
        assert_eq!(execution.output, "it's|$1|/bin/sh");
    }

    #[tokio::test]
    async fn shell_output_is_capped_and_the_rest_drained() {
        // 1 MB is far more than a pipe holds: if the rest were not drained, the command
        // would block and the task would time out.
        let spec = shell_with("head -c 1000000 /dev/zero | tr '\\0' x", |_, _, max| {
            *max = 1000
        });
        let execution = run(&spec, "", LONG).await.unwrap();
        assert_eq!(execution.output, "x".repeat(1000));
        assert!(execution.output_truncated);
    }

    #[tokio::test]
    async fn shell_truncation_does_not_split_a_character() {
        let spec = shell_with("printf 'a\\303\\251b'", |_, _, max| *max = 2);
        let execution = run(&spec, "", LONG).await.unwrap();
        assert_eq!(execution.output, "a");
        assert!(execution.output_truncated);
        let spec = shell_with("printf 'a\\303\\251'", |_, _, max| *max = 3);
        let execution = run(&spec, "", LONG).await.unwrap();
        assert_eq!(execution.output, "aé");
        assert!(!execution.output_truncated);
    }

    #[tokio::test]
    async fn shell_non_zero_exit_fails_with_status_and_stderr_tail() {
        let command = "i=0; while [ $i -lt 100 ]; do echo filler-line-$i >&2; i=$((i+1)); done
            echo 'disk full' >&2; exit 3";
        let error = run(&shell(command), "", LONG).await.unwrap_err();
        let ExecError::Failed { reason } = &error else {
            panic!("{error:?}")
        };
        assert!(
            reason.starts_with("command exited with status 3; stderr ends: "),
            "{reason}"
        );
        assert!(reason.ends_with("disk full"), "{reason}");
        assert!(
            !reason.contains("filler-line-0 "),
            "only the tail is kept: {reason}"
        );
        assert!(!error.retryable());
        assert!(!error.reason().contains('\n'));
    }

    #[tokio::test]
    async fn shell_timeout_kills_the_whole_process_group() {
        let dir = TempDir::new("timeout");
        let spec = ExecutorSpec::Shell {
            command: "sleep 30 & echo $! > sleeper.pid; wait".to_owned(),
            workdir: Some(dir.0.display().to_string()),
            cpu_secs: 10,
            memory_mb: 1024,
            max_output_bytes: 1024,
        };
        let started = std::time::Instant::now();
        let error = run(&spec, "", Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(error, ExecError::Timeout { after_ms: 1000 });
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );

        // The background `sleep` (a grandchild) was killed too. SIGKILL is delivered
        // asynchronously, so wait for its end, with a bound.
        let pid: u32 = std::fs::read_to_string(dir.0.join("sleeper.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let gone_by = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Gone, or a zombie waiting for init to reap it.
            let state = stat
                .rsplit(") ")
                .next()
                .and_then(|rest| rest.chars().next());
            if stat.is_empty() || state == Some('Z') {
                break;
            }
            assert!(
                std::time::Instant::now() < gone_by,
                "sleep {pid} survived the timeout: {stat}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn shell_missing_workdir_is_misconfigured() {
        let spec = ExecutorSpec::Shell {
            command: "true".to_owned(),
            workdir: Some("/nonexistent/aamas-executor-test".to_owned()),
            cpu_secs: 10,
            memory_mb: 1024,
            max_output_bytes: 1024,
        };
        let error = run(&spec, "", LONG).await.unwrap_err();
        let ExecError::Misconfigured { reason } = &error else {
            panic!("{error:?}")
        };
        assert!(
            reason.contains("/nonexistent/aamas-executor-test"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn shell_runs_in_its_workdir() {
        let dir = TempDir::new("workdir");
        std::fs::write(dir.0.join("marker"), "here").unwrap();
        let spec = ExecutorSpec::Shell {
            command: "cat marker".to_owned(),
            workdir: Some(dir.0.display().to_string()),
            cpu_secs: 10,
            memory_mb: 1024,
            max_output_bytes: 1024,
        };
        assert_eq!(run(&spec, "", LONG).await.unwrap().output, "here");
    }

    #[tokio::test]
    async fn shell_sees_only_path_and_home_of_the_worker_environment() {
        // Setting a variable needs `unsafe` in edition 2024, so rely on one the worker
        // already has: cargo sets CARGO_MANIFEST_DIR for test runs.
        let leaked = std::env::vars()
            .map(|(name, _)| name)
            .find(|name| !SHELL_PASSED_ENV.contains(&name.as_str()));
        let leaked = leaked.expect("the test process has some variable besides PATH and HOME");
        let execution = run(&shell("env"), "", LONG).await.unwrap();
        let names: Vec<&str> = execution
            .output
            .lines()
            .filter_map(|line| line.split('=').next())
            .collect();
        assert!(
            !names.contains(&leaked.as_str()),
            "{leaked} leaked: {names:?}"
        );
        // What is left is PATH, HOME and what the shell itself sets.
        for name in &names {
            assert!(
                ["PATH", "HOME", "PWD", "OLDPWD", "SHLVL", "_"].contains(name),
                "unexpected {name}"
            );
        }
        assert!(names.contains(&"PATH"));
    }

    #[tokio::test]
    async fn shell_cpu_limit_stops_a_busy_loop() {
        let spec = shell_with("while :; do :; done", |cpu, _, _| *cpu = 1);
        let started = std::time::Instant::now();
        let error = run(&spec, "", LONG).await.unwrap_err();
        let ExecError::Failed { reason } = &error else {
            panic!("{error:?}")
        };
        assert!(reason.contains("SIGXCPU: the CPU limit of 1 s"), "{reason}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "took {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn shell_memory_limit_stops_a_big_allocation() {
        // dash keeps a command substitution's output in memory: 100 MB of it.
        let command = "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo ${#x}";
        let error = run(&shell_with(command, |_, memory, _| *memory = 64), "", LONG)
            .await
            .unwrap_err();
        assert!(matches!(error, ExecError::Failed { .. }), "{error:?}");
        // The same command with room to spare succeeds: the limit made the difference.
        let execution = run(
            &shell_with(command, |_, memory, _| *memory = 1024),
            "",
            LONG,
        )
        .await
        .unwrap();
        assert_eq!(execution.output, "100000000\n");
    }

    #[tokio::test]
    async fn shell_rejects_limits_out_of_range() {
        let specs = [
            shell_with("true", |cpu, _, _| *cpu = 0),
            shell_with("true", |_, memory, _| *memory = 0),
            shell_with("true", |_, memory, _| *memory = u64::MAX),
            shell_with("true", |_, _, max| *max = SHELL_OUTPUT_MAX_BYTES + 1),
        ];
        for spec in specs {
            let error = run(&spec, "", LONG).await.unwrap_err();
            assert!(
                matches!(error, ExecError::Misconfigured { .. }),
                "{spec:?}: {error:?}"
            );
        }
    }

    // --- llm -------------------------------------------------------------------------

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Behaviour {
        Normal,
        StopsAtLength,
        Hang,
        FailOnce,
        AlwaysFail,
        Malformed,
        NoContent,
        Unauthorized,
        Huge,
    }

    struct Server {
        behaviour: Behaviour,
        requests: AtomicU32,
        seen: Mutex<Vec<(Option<String>, serde_json::Value)>>,
    }

    impl Server {
        fn requests(&self) -> u32 {
            self.requests.load(Ordering::SeqCst)
        }
    }

    const REPLY: &str = r#"{"id":"c1","object":"chat.completion","model":"test-model",
        "choices":[{"index":0,"finish_reason":"stop",
                    "message":{"role":"assistant","content":"hello from the model"}}],
        "usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}"#;

    async fn chat(
        State(server): State<Arc<Server>>,
        headers: AxumHeaders,
        body: axum::body::Bytes,
    ) -> Response {
        let count = server.requests.fetch_add(1, Ordering::SeqCst) + 1;
        let authorization = headers
            .get("authorization")
            .map(|value| value.to_str().unwrap().to_owned());
        let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        server.seen.lock().unwrap().push((authorization, body));
        let json = [("content-type", "application/json")];
        let error_500 = (
            AxumStatus::INTERNAL_SERVER_ERROR,
            json,
            r#"{"error":{"message":"model crashed"}}"#,
        );
        match server.behaviour {
            Behaviour::Normal => (json, REPLY).into_response(),
            Behaviour::StopsAtLength => {
                (json, REPLY.replace(r#""stop""#, r#""length""#)).into_response()
            }
            Behaviour::Hang => std::future::pending().await,
            Behaviour::FailOnce if count == 1 => error_500.into_response(),
            Behaviour::FailOnce => (json, REPLY).into_response(),
            Behaviour::AlwaysFail => error_500.into_response(),
            Behaviour::Malformed => (json, "<html>definitely not json</html>").into_response(),
            Behaviour::NoContent => {
                (json, r#"{"choices":[{"message":{"role":"assistant"}}]}"#).into_response()
            }
            Behaviour::Unauthorized => (
                AxumStatus::UNAUTHORIZED,
                json,
                r#"{"error":{"message":"invalid api key","type":"auth"}}"#,
            )
                .into_response(),
            Behaviour::Huge => (json, "x".repeat(LLM_REPLY_MAX_BYTES + 1)).into_response(),
        }
    }

    /// A chat-completions server on 127.0.0.1 (listening before this returns).
    async fn serve(behaviour: Behaviour) -> (Arc<Server>, SocketAddr) {
        let server = Arc::new(Server {
            behaviour,
            requests: AtomicU32::new(0),
            seen: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .route("/v1/chat/completions", axum::routing::post(chat))
            .with_state(server.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (server, address)
    }

    fn config(address: SocketAddr) -> LlmConfig {
        LlmConfig {
            base_url: format!("http://{address}/v1/"),
            model: "test-model".to_owned(),
            api_key: Some("sk-test-secret".to_owned()),
            request_timeout: Duration::from_secs(10),
            attempts: 3,
            backoff: Duration::from_millis(1),
        }
    }

    async fn complete(config: LlmConfig, timeout: Duration) -> Result<Execution, ExecError> {
        Executors::new(Some(config))
            .run(&llm_spec(), "task", "say hello", timeout)
            .await
    }

    #[tokio::test]
    async fn llm_returns_the_reply_and_its_usage() {
        let (server, address) = serve(Behaviour::Normal).await;
        let execution = complete(config(address), LONG).await.unwrap();
        assert_eq!(
            execution,
            Execution {
                output: "hello from the model".to_owned(),
                output_truncated: false,
                usage: Some(TokenUsage {
                    prompt_tokens: 12,
                    completion_tokens: 5
                }),
            }
        );
        let seen = server.seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        let (authorization, body) = &seen[0];
        assert_eq!(authorization.as_deref(), Some("Bearer sk-test-secret"));
        assert_eq!(body["model"], "test-model");
        assert_eq!(body["max_tokens"], 64);
        assert_eq!(
            body["messages"],
            serde_json::json!([
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "say hello"},
            ])
        );
    }

    #[tokio::test]
    async fn llm_without_key_or_system_sends_neither() {
        let (server, address) = serve(Behaviour::Normal).await;
        let mut config = config(address);
        config.api_key = None;
        config.base_url = format!("http://{address}/v1"); // no trailing slash this time
        let spec = ExecutorSpec::Llm {
            system: None,
            max_tokens: 8,
        };
        Executors::new(Some(config))
            .run(&spec, "task", "hi", LONG)
            .await
            .unwrap();
        let seen = server.seen.lock().unwrap().clone();
        assert_eq!(seen[0].0, None);
        assert_eq!(
            seen[0].1["messages"],
            serde_json::json!([{"role": "user", "content": "hi"}])
        );
    }

    #[tokio::test]
    async fn llm_reply_cut_at_max_tokens_is_marked_truncated() {
        let (_server, address) = serve(Behaviour::StopsAtLength).await;
        let execution = complete(config(address), LONG).await.unwrap();
        assert!(execution.output_truncated);
    }

    #[tokio::test]
    async fn llm_server_that_never_answers_times_out() {
        let (server, address) = serve(Behaviour::Hang).await;
        let started = std::time::Instant::now();
        let error = complete(config(address), Duration::from_millis(300))
            .await
            .unwrap_err();
        assert_eq!(error, ExecError::Timeout { after_ms: 300 });
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(server.requests(), 1);
    }

    #[tokio::test]
    async fn llm_slow_requests_are_retried_then_given_up() {
        let (server, address) = serve(Behaviour::Hang).await;
        let mut config = config(address);
        config.request_timeout = Duration::from_millis(100);
        let error = complete(config, LONG).await.unwrap_err();
        let ExecError::Unavailable { reason } = &error else {
            panic!("{error:?}")
        };
        assert!(
            reason.contains("no reply") && reason.contains("after 3 attempts"),
            "{reason}"
        );
        assert_eq!(server.requests(), 3);
    }

    #[tokio::test]
    async fn llm_retries_after_a_server_error() {
        let (server, address) = serve(Behaviour::FailOnce).await;
        let execution = complete(config(address), LONG).await.unwrap();
        assert_eq!(execution.output, "hello from the model");
        assert_eq!(server.requests(), 2);
    }

    #[tokio::test]
    async fn llm_gives_up_after_its_attempts() {
        let (server, address) = serve(Behaviour::AlwaysFail).await;
        let error = complete(config(address), LONG).await.unwrap_err();
        let ExecError::Unavailable { reason } = &error else {
            panic!("{error:?}")
        };
        assert!(
            reason.contains("HTTP 500") && reason.contains("model crashed"),
            "{reason}"
        );
        assert!(error.retryable());
        assert_eq!(server.requests(), 3);
    }

    #[tokio::test]
    async fn llm_malformed_replies_fail() {
        for behaviour in [Behaviour::Malformed, Behaviour::NoContent] {
            let (server, address) = serve(behaviour).await;
            let error = complete(config(address), LONG).await.unwrap_err();
            let ExecError::Failed { reason } = &error else {
                panic!("{error:?}")
            };
            assert!(reason.starts_with("malformed reply: "), "{reason}");
            assert_eq!(server.requests(), 1, "not retried");
        }
    }

    #[tokio::test]
    async fn llm_oversized_reply_fails() {
        let (_server, address) = serve(Behaviour::Huge).await;
        let error = complete(config(address), LONG).await.unwrap_err();
        let ExecError::Failed { reason } = &error else {
            panic!("{error:?}")
        };
        assert!(reason.contains("larger than"), "{reason}");
    }

    #[tokio::test]
    async fn llm_client_errors_are_not_retried() {
        let (server, address) = serve(Behaviour::Unauthorized).await;
        let error = complete(config(address), LONG).await.unwrap_err();
        assert_eq!(
            error,
            ExecError::Failed {
                reason: format!(
                    "HTTP 401 from http://{address}/v1/chat/completions: invalid api key"
                )
            }
        );
        assert!(!error.retryable());
        assert_eq!(server.requests(), 1);
        assert!(!format!("{error:?}").contains("sk-test-secret"));
    }

    #[tokio::test]
    async fn llm_connection_refused_is_unavailable() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let error = complete(config(address), LONG).await.unwrap_err();
        let ExecError::Unavailable { reason } = &error else {
            panic!("{error:?}")
        };
        assert!(
            reason.contains("cannot reach") && reason.contains("after 3 attempts"),
            "{reason}"
        );
    }

    #[tokio::test]
    async fn llm_https_to_a_plain_server_fails_the_handshake() {
        // Exercises the TLS stack without leaving the machine.
        let (_server, address) = serve(Behaviour::Normal).await;
        let mut config = config(address);
        config.base_url = format!("https://{address}/v1");
        config.attempts = 1;
        let error = complete(config, LONG).await.unwrap_err();
        assert!(matches!(error, ExecError::Unavailable { .. }), "{error:?}");
    }

    #[tokio::test]
    async fn llm_without_endpoint_is_misconfigured() {
        let error = Executors::new(None)
            .run(&llm_spec(), "task", "hi", LONG)
            .await
            .unwrap_err();
        let ExecError::Misconfigured { reason } = &error else {
            panic!("{error:?}")
        };
        assert!(
            reason.contains("AAMAS_LLM_BASE_URL") && reason.contains("AAMAS_LLM_MODEL"),
            "{reason}"
        );
        assert!(!Executors::new(None).has_llm());
    }

    #[tokio::test]
    async fn llm_bad_endpoint_settings_are_misconfigured() {
        let good = config("127.0.0.1:9".parse().unwrap());
        let mut no_model = good.clone();
        no_model.model = " ".to_owned();
        let mut bad_scheme = good.clone();
        bad_scheme.base_url = "ftp://example.invalid/v1".to_owned();
        let mut not_a_url = good.clone();
        not_a_url.base_url = "http://exa mple/v1".to_owned();
        let mut bad_key = good.clone();
        bad_key.api_key = Some("line\nbreak".to_owned());
        for config in [no_model, bad_scheme, not_a_url, bad_key] {
            let executors = Executors::new(Some(config.clone()));
            assert!(!executors.has_llm(), "{config:?}");
            let error = executors
                .run(&llm_spec(), "task", "hi", LONG)
                .await
                .unwrap_err();
            assert!(
                matches!(error, ExecError::Misconfigured { .. }),
                "{config:?}: {error:?}"
            );
        }
        assert!(Executors::new(Some(good)).has_llm());
    }

    #[test]
    fn llm_config_from_lookup_reads_the_three_variables() {
        let vars = |name: &str| match name {
            "AAMAS_LLM_BASE_URL" => Some("https://api.openai.com/v1".to_owned()),
            "AAMAS_LLM_MODEL" => Some("gpt-4o-mini".to_owned()),
            "AAMAS_LLM_API_KEY" => Some("sk-very-secret".to_owned()),
            _ => None,
        };
        let config = LlmConfig::from_lookup(vars).unwrap();
        assert_eq!(config.base_url, "https://api.openai.com/v1");
        assert_eq!(config.model, "gpt-4o-mini");
        assert_eq!(config.api_key.as_deref(), Some("sk-very-secret"));
        assert_eq!(config.attempts, LLM_DEFAULT_ATTEMPTS);
        let printed = format!("{config:?} {:?}", Executors::new(Some(config.clone())));
        assert!(!printed.contains("sk-very-secret"), "{printed}");
        assert!(printed.contains("<redacted>"), "{printed}");

        assert!(LlmConfig::from_lookup(|_| None).is_none());
        assert!(
            LlmConfig::from_lookup(|name| (name == "AAMAS_LLM_BASE_URL").then(|| "  ".to_owned()))
                .is_none()
        );
        let local = LlmConfig::from_lookup(|name| {
            (name == "AAMAS_LLM_BASE_URL").then(|| "http://127.0.0.1:11434/v1".to_owned())
        })
        .unwrap();
        assert_eq!(local.api_key, None);
        assert_eq!(local.model, "");
    }

    #[test]
    fn backoff_doubles_with_jitter_and_stays_bounded() {
        let base = Duration::from_millis(100);
        for attempt in 1..=4 {
            let full = base * 2u32.pow(attempt - 1);
            let delay = backoff_delay(base, attempt, None);
            assert!(
                delay >= full / 2 && delay <= full,
                "attempt {attempt}: {delay:?}"
            );
        }
        let late = backoff_delay(base, 40, None);
        assert!(
            late >= LLM_BACKOFF_MAX / 2 && late <= LLM_BACKOFF_MAX,
            "{late:?}"
        );
        assert_eq!(
            backoff_delay(base, 1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            backoff_delay(base, 1, Some(Duration::from_secs(3600))),
            LLM_BACKOFF_MAX
        );
    }

    #[test]
    fn server_messages_are_found_in_common_error_shapes() {
        assert_eq!(
            server_message(br#"{"error":{"message":"bad model","code":404}}"#),
            "bad model"
        );
        assert_eq!(
            server_message(br#"{"error":"model 'x' not found"}"#),
            "model 'x' not found"
        );
        assert_eq!(
            server_message(b"upstream\nconnect error"),
            "upstream connect error"
        );
        assert_eq!(server_message(b""), "no error message");
    }

    #[test]
    fn reasons_are_one_bounded_line() {
        let error = ExecError::Failed {
            reason: format!("first\nsecond\t{}", "é".repeat(500)),
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
            ExecError::Timeout { after_ms: 5 }.reason(),
            "task timed out after 5 ms"
        );
    }

    #[test]
    fn errors_survive_serialization() {
        let errors = [
            ExecError::Timeout { after_ms: 1 },
            ExecError::Failed {
                reason: "f".to_owned(),
            },
            ExecError::Misconfigured {
                reason: "m".to_owned(),
            },
            ExecError::Unavailable {
                reason: "u".to_owned(),
            },
        ];
        for error in errors {
            let json = serde_json::to_string(&error).unwrap();
            assert_eq!(serde_json::from_str::<ExecError>(&json).unwrap(), error);
        }
    }
}
