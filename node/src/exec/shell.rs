//! The shell executor: `/bin/sh` with ulimits, its own process group, a clean environment,
//! the input on stdin, capped stdout and the stderr tail on failure. What the task used
//! is measured: its CPU time from `/proc` when it exits (or is stopped at its timeout),
//! and its resident memory over time, sampled every [`MEMORY_SAMPLE`] while it runs.

use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};

use aamas_consensus::resources::Usage;

use super::{ExecError, Execution, failed, misconfigured, one_line, timed_out, unavailable};

/// Largest `max_output_bytes` a shell task may ask for: outputs travel in messages.
pub const SHELL_OUTPUT_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// Files a shell task may hold open at once.
pub const SHELL_OPEN_FILES: u32 = 1_024;
/// Largest file a shell task may write, in 512-byte blocks (1 GiB).
pub const SHELL_FILE_BLOCKS: u64 = 2 * 1024 * 1024;
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
/// How often the resident memory of a running shell task's processes is sampled.
pub const MEMORY_SAMPLE: Duration = Duration::from_millis(200);
/// Applies the limits in the child shell, then replaces it with a shell running the
/// task's command. The command arrives as `$4` and is never spliced into this script, so
/// no quoting in it can change what the limits are. The CPU limit is soft at `$1` s
/// (SIGXCPU, which says what happened) and hard one second later (SIGKILL, for commands
/// that catch SIGXCPU); soft first, as a hard limit below the current soft one is refused.
/// Open files are limited to [`SHELL_OPEN_FILES`] and written files to 1 GiB
/// ([`SHELL_FILE_BLOCKS`] blocks of 512 bytes, as `/bin/sh` (dash) counts them).
const SHELL_LIMITS_SCRIPT: &str = concat!(
    r#"ulimit -S -t "$1" && ulimit -H -t "$2" && ulimit -v "$3" && ulimit -n "$5" && ulimit -f "$6" || exit 125"#,
    "\n",
    r#"exec /bin/sh -c "$4""#,
);

#[derive(Debug, Clone, Copy)]
pub(super) struct ShellLimits {
    pub(super) cpu_secs: u64,
    pub(super) memory_mb: u64,
    pub(super) max_output_bytes: u64,
}

pub(super) async fn run_shell(
    command: &str,
    workdir: Option<&str>,
    limits: ShellLimits,
    input: &str,
    timeout: Duration,
    sandbox: super::sandbox::ShellSandbox,
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

    let mut shell = match sandbox {
        super::sandbox::ShellSandbox::Off => tokio::process::Command::new("/bin/sh"),
        super::sandbox::ShellSandbox::Landlock => {
            let launcher = std::env::current_exe().map_err(|error| {
                unavailable(format!("cannot find the shell sandbox launcher: {error}"))
            })?;
            let mut launch = tokio::process::Command::new(launcher);
            launch
                .arg(super::sandbox::LAUNCHER_ARG)
                .arg(workdir.unwrap_or("-"))
                .arg("--")
                .arg("/bin/sh");
            launch
        }
    };
    shell
        .arg("-c")
        .arg(SHELL_LIMITS_SCRIPT)
        .arg("aamas-task")
        .arg(limits.cpu_secs.to_string())
        .arg(limits.cpu_secs.saturating_add(1).to_string())
        .arg(memory_kb.to_string())
        .arg(command)
        .arg(SHELL_OPEN_FILES.to_string())
        .arg(SHELL_FILE_BLOCKS.to_string())
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

    let memory = Arc::new(Mutex::new(MemoryUse::default()));
    let finished = tokio::time::timeout(timeout, async {
        let feed = async {
            // A command that does not read its input closes the pipe: not an error.
            let _ = stdin.write_all(input.as_bytes()).await;
            drop(stdin);
        };
        let work = async {
            tokio::join!(
                feed,
                read_capped(stdout, output_cap),
                read_tail(stderr, SHELL_STDERR_TAIL_BYTES),
                wait_measuring(&mut child)
            )
        };
        let sampling = sample_memory(group, memory.clone());
        let ((), stdout, stderr, (status, cpu_ms)) = tokio::select! {
            done = work => done,
            never = sampling => match never {},
        };
        (stdout, stderr, status, cpu_ms)
    })
    .await;
    let memory_kib_s = {
        let mut memory = memory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        memory.close(Instant::now());
        memory.kib_s()
    };
    // A task stopped at its timeout is charged what its processes used until then.
    let spent_ms = match (&finished, group) {
        (Err(_), Some(group)) => tokio::task::spawn_blocking(move || group_cpu_ms(group))
            .await
            .unwrap_or(0),
        _ => 0,
    };
    let cpu = |cpu_ms: u64| Usage {
        cpu_ms,
        memory_kib_s,
        ..Usage::default()
    };
    // Whatever the command left running in its group goes with it. The shell has been
    // reaped only if it exited; its group id stays unused while stragglers remain, and a
    // new process reusing it within microseconds would need the pid space to wrap.
    kill_process_group(group);
    let (stdout, stderr, status, cpu_ms) = match finished {
        Ok(finished) => finished,
        Err(_) => {
            if tokio::time::timeout(SHELL_REAP_TIMEOUT, child.kill())
                .await
                .is_err()
            {
                tracing::warn!(pid = ?group, "killed task shell not reaped; tokio reaps it later");
            }
            return Err(timed_out(timeout).using(cpu(spent_ms)));
        }
    };
    let status =
        status.map_err(|error| unavailable(format!("cannot wait for /bin/sh: {error}")))?;
    let (stdout, truncated) = stdout
        .map_err(|error| unavailable(format!("cannot read the command's stdout: {error}")))?;
    let stderr = stderr
        .map_err(|error| unavailable(format!("cannot read the command's stderr: {error}")))?;
    if status.code() == Some(super::sandbox::REFUSED_EXIT) {
        let said = String::from_utf8_lossy(&stderr);
        if let Some(reason) = said.trim().strip_prefix(super::sandbox::REFUSAL_PREFIX) {
            return Err(unavailable(format!(
                "the shell sandbox cannot be set up on this worker: {}",
                one_line(reason, SHELL_STDERR_TAIL_BYTES)
            )));
        }
    }
    if !status.success() {
        return Err(failed(exit_reason(status, &stderr, limits)).using(cpu(cpu_ms)));
    }
    Ok(Execution {
        output: text_of(stdout, truncated),
        output_truncated: truncated,
        digest: None,
        usage: None,
        cpu_ms,
        memory_kib_s,
        stored_bytes: 0,
    })
}

/// The resident memory of a task's processes over time: each sample holds until the next
/// one (or the end).
#[derive(Debug, Default)]
struct MemoryUse {
    /// The last sample: when, and KiB resident.
    last: Option<(Instant, u64)>,
    /// KiB-milliseconds so far.
    kib_ms: u128,
}

impl MemoryUse {
    /// Counts the last sample up to `at`, and takes `kib` from then on.
    fn sample(&mut self, at: Instant, kib: u64) {
        self.close(at);
        self.last = Some((at, kib));
    }

    /// Counts the last sample up to `at`.
    fn close(&mut self, at: Instant) {
        if let Some((since, kib)) = self.last {
            let held_ms = at.saturating_duration_since(since).as_millis();
            self.kib_ms = self.kib_ms.saturating_add(u128::from(kib) * held_ms);
            self.last = Some((at, kib));
        }
    }

    fn kib_s(&self) -> u64 {
        u64::try_from(self.kib_ms / 1_000).unwrap_or(u64::MAX)
    }
}

/// Samples the resident memory of process group `group` every [`MEMORY_SAMPLE`] into
/// `into`, from the start; never ends (it is dropped with the task).
async fn sample_memory(
    group: Option<u32>,
    into: Arc<Mutex<MemoryUse>>,
) -> std::convert::Infallible {
    let mut ticker = tokio::time::interval(MEMORY_SAMPLE);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(group) = group else { continue };
        let kib = tokio::task::spawn_blocking(move || group_rss_kib(group))
            .await
            .unwrap_or(0);
        into.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .sample(Instant::now(), kib);
    }
}

/// The resident memory of the live processes of process group `group`, in KiB (`VmRSS`
/// of `/proc/PID/status`; 0 where `/proc` cannot be read).
fn group_rss_kib(group: u32) -> u64 {
    group_members(group)
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| rss_kib_of_status(&status))
        .fold(0u64, u64::saturating_add)
}

/// The pids of the live processes of process group `group`.
fn group_members(group: u32) -> impl Iterator<Item = String> {
    let group = group.to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        .filter(move |pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| process_group_of_stat(&stat) == Some(group.as_str()))
        })
}

/// `VmRSS` of a `/proc/PID/status`, in KiB.
fn rss_kib_of_status(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Waits for the shell and measures the CPU time it and the children it waited for used:
/// `waitid(WNOWAIT)` leaves the exited shell a zombie, whose `/proc/PID/stat` still holds
/// its own and its children's times, and only then does tokio reap it. 0 when the times
/// cannot be read.
async fn wait_measuring(child: &mut tokio::process::Child) -> (std::io::Result<ExitStatus>, u64) {
    let cpu_ms = match child.id() {
        Some(pid) => tokio::task::spawn_blocking(move || zombie_cpu_ms(pid))
            .await
            .ok()
            .flatten(),
        None => None,
    };
    (child.wait().await, cpu_ms.unwrap_or(0))
}

/// The CPU time of exited (not yet reaped) child `pid` and of the children it waited for,
/// in milliseconds; blocks until it exits.
fn zombie_cpu_ms(pid: u32) -> Option<u64> {
    use nix::sys::wait::{Id, WaitPidFlag, waitid};
    let raw = i32::try_from(pid).ok()?;
    waitid(
        Id::Pid(nix::unistd::Pid::from_raw(raw)),
        WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
    )
    .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    cpu_ms_of_stat(&stat)
}

/// The CPU time the live processes of process group `group` used, and the children they
/// waited for, in milliseconds (0 where `/proc` cannot be read). A process of the group
/// that already exited and was reaped by init is not counted.
fn group_cpu_ms(group: u32) -> u64 {
    group_members(group)
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| cpu_ms_of_stat(&stat))
        .fold(0u64, u64::saturating_add)
}

/// The process group id (field 5 of `/proc/PID/stat`).
fn process_group_of_stat(stat: &str) -> Option<&str> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(2)
}

/// utime + stime + cutime + cstime (fields 14 to 17 of `/proc/PID/stat`, counted after
/// the command name, which may hold spaces and parentheses) in milliseconds. The kernel
/// reports them in USER_HZ, which is 100 on Linux.
fn cpu_ms_of_stat(stat: &str) -> Option<u64> {
    const USER_HZ: u64 = 100;
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts at field 3 (the state).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11..15)?.iter().try_fold(0u64, |sum, field| {
        Some(sum.saturating_add(field.parse::<u64>().ok()?))
    })?;
    Some(ticks.saturating_mul(1_000 / USER_HZ))
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    use std::path::PathBuf;

    use crate::exec::testing::{LONG, run};
    use crate::spec::ExecutorSpec;

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
                digest: None,
                usage: None,
                cpu_ms: execution.cpu_ms,
                memory_kib_s: execution.memory_kib_s,
                stored_bytes: 0,
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
        let ExecError::Failed { reason, .. } = &error else {
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
        assert!(
            matches!(error, ExecError::Timeout { after_ms: 1000, .. }),
            "{error:?}"
        );
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
    async fn shell_cpu_time_is_measured_from_the_shell_and_its_children() {
        // The loop runs in a child of the task's shell, as a real command's programs do.
        let command = "sh -c 'i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done'; echo done";
        let execution = run(&shell(command), "", LONG).await.unwrap();
        assert_eq!(execution.output, "done\n");
        assert!(execution.cpu_ms >= 10, "{} ms", execution.cpu_ms);
        assert_eq!(execution.used().cpu_ms, execution.cpu_ms);
    }

    #[tokio::test]
    async fn a_failed_task_reports_the_cpu_time_it_used() {
        let command = "sh -c 'i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done'; exit 3";
        let error = run(&shell(command), "", LONG).await.unwrap_err();
        assert!(matches!(error, ExecError::Failed { .. }), "{error:?}");
        assert!(error.used().cpu_ms >= 10, "{error:?}");
    }

    #[tokio::test]
    async fn a_timed_out_task_reports_the_cpu_time_its_group_used() {
        // A child that spins until the timeout stops it.
        let command = "sh -c 'while :; do :; done'";
        let error = run(&shell(command), "", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(error, ExecError::Timeout { .. }), "{error:?}");
        // About a second of one core; at least a tenth of it on a loaded machine.
        assert!(error.used().cpu_ms >= 100, "{error:?}");
    }

    #[tokio::test]
    async fn a_task_is_charged_the_memory_its_processes_held_over_time() {
        // A shell and a sleep hold a MiB or more for about a second: at least 200 KiB-s.
        let execution = run(&shell("sleep 1; echo done"), "", LONG).await.unwrap();
        assert!(
            execution.memory_kib_s >= 200,
            "{} KiB-s",
            execution.memory_kib_s
        );
        assert_eq!(execution.used().memory_kib_s, execution.memory_kib_s);
        // So is a task stopped at its timeout.
        let error = run(&shell("sleep 5"), "", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(error, ExecError::Timeout { .. }), "{error:?}");
        assert!(error.used().memory_kib_s >= 200, "{error:?}");
    }

    #[test]
    fn memory_over_time_holds_each_sample_until_the_next() {
        let start = Instant::now();
        let mut memory = MemoryUse::default();
        memory.close(start);
        assert_eq!(memory.kib_s(), 0, "nothing sampled yet");
        memory.sample(start, 1_024);
        memory.sample(start + Duration::from_millis(500), 2_048);
        memory.close(start + Duration::from_millis(1_500));
        assert_eq!(memory.kib_s(), 1_024 / 2 + 2_048);
        let status = "Name:\tsh\nVmPeak:\t 9000 kB\nVmRSS:\t    1664 kB\nThreads:\t1\n";
        assert_eq!(rss_kib_of_status(status), Some(1_664));
        assert_eq!(rss_kib_of_status("Name:\tzombie\n"), None);
    }

    #[test]
    fn cpu_times_are_read_after_a_command_name_with_spaces() {
        let stat = "42 (a b) c) Z 1 42 42 0 -1 4228 1 2 0 0 7 3 20 10 20 0 1 0 5";
        assert_eq!(cpu_ms_of_stat(stat), Some((7 + 3 + 20 + 10) * 10));
        assert_eq!(cpu_ms_of_stat("42 (sh) Z 1"), None);
        assert_eq!(process_group_of_stat(stat), Some("42"));
    }

    #[tokio::test]
    async fn shell_cpu_limit_stops_a_busy_loop() {
        let spec = shell_with("while :; do :; done", |cpu, _, _| *cpu = 1);
        let started = std::time::Instant::now();
        let error = run(&spec, "", LONG).await.unwrap_err();
        let ExecError::Failed { reason, .. } = &error else {
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
}
