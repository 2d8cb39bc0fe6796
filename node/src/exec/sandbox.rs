//! The shell sandbox: a shell task runs under Linux Landlock, which lets it read and run
//! the system's programs and libraries and write only its workdir — never the node's
//! data dir (its key, its API token, its Raft database), `/proc` (where the node's own
//! environment is) or `/tmp`. Where the kernel has Landlock's network rights (Linux 6.7,
//! ABI 4) a task can neither connect nor bind a TCP socket — not to the node's API, not
//! to the mesh, not out — and where it has scopes (Linux 6.12, ABI 6) it can neither
//! signal a process outside its sandbox (the node) nor reach an abstract Unix socket.
//! On an older kernel those parts are left out and the launcher says so on stderr
//! ([`NETWORK_NOT_CONFINED`]), which the node's start-up probe logs.
//!
//! The launcher also bounds the task's processes: `RLIMIT_NPROC` at what the node's user
//! runs already (processes and threads, counted in `/proc`) plus [`SHELL_PROCESSES`], so
//! a fork bomb stops there. The kernel does not apply that limit to root: a node that
//! runs as root is told so at start (run it as a user of its own, as the systemd unit in
//! `deploy/` does).
//!
//! Landlock restricts the calling thread and what it executes, so it must be set up in
//! a process of its own, single-threaded, before the task's shell starts: the node runs
//! its own binary as the *launcher* (`aamas __aamas_shell_sandbox DIR -- /bin/sh ...`),
//! which restricts itself and then executes the shell. A binary that runs shell tasks
//! calls [`run_if_launcher`] first thing in `main`.
//!
//! ```text
//!   worker ──spawn──► aamas __aamas_shell_sandbox WORKDIR -- /bin/sh -c LIMITS ... CMD
//!                        │ Landlock: read+exec the system dirs, read+write WORKDIR
//!                        └─exec──► /bin/sh (ulimits) ──exec──► /bin/sh -c CMD
//! ```
//!
//! Where Landlock is not available (a kernel before 5.13, or it is disabled), the
//! launcher refuses with the reason, and a node started with shell refuses to start
//! (`--shell-sandbox off` runs shell tasks unconfined, by the operator's choice).

use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, LandlockStatus, Ruleset, RulesetAttr, RulesetCreatedAttr,
    RulesetStatus, Scope, path_beneath_rules,
};

/// The first argument that makes a binary the launcher of a sandboxed shell task.
pub const LAUNCHER_ARG: &str = "__aamas_shell_sandbox";
/// The exit status of a launcher that could not set the sandbox up (its stderr says
/// why, after [`REFUSAL_PREFIX`]).
pub const REFUSED_EXIT: i32 = 122;
/// How the launcher's refusal begins on stderr.
pub const REFUSAL_PREFIX: &str = "aamas shell sandbox: ";
/// Directories a sandboxed task may read and execute from (those that exist).
pub const READ_ROOTS: [&str; 8] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc",
];
/// Device files a sandboxed task may use.
const DEVICES: [&str; 4] = ["/dev/null", "/dev/zero", "/dev/random", "/dev/urandom"];
/// The Landlock ABI whose file-system rights are asked for (best effort below it).
const LANDLOCK_ABI: ABI = ABI::V3;
/// The Landlock ABI of the network rights (TCP bind and connect).
const NETWORK_ABI: ABI = ABI::V4;
/// The Landlock ABI of the scopes (signals, abstract Unix sockets).
const SCOPE_ABI: ABI = ABI::V6;
/// Processes and threads a shell task may add to those its node's user runs already.
pub const SHELL_PROCESSES: u64 = 256;
/// What the start-up probe says of a node that runs as root.
pub const ROOT_NOT_LIMITED: &str = "this node runs as root, for which the kernel does not \
     apply the process limit of shell tasks (RLIMIT_NPROC): run it as a user of its own";
/// What the launcher writes on stderr (after [`REFUSAL_PREFIX`]) when the kernel let it
/// confine files but not the network or signals.
pub const NETWORK_NOT_CONFINED: &str = "note: this kernel's Landlock has no network rights or scopes (Linux 6.12 or later has \
     both): the task may open TCP connections and signal other processes of the node's user";

/// How shell tasks are confined.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ShellSandbox {
    /// Under Landlock, through this binary as the launcher (the default).
    #[default]
    Landlock,
    /// Unconfined, as the node's user: only by the operator's explicit choice
    /// (`--shell-sandbox off`), and for tests of the executor itself.
    Off,
}

impl std::str::FromStr for ShellSandbox {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "landlock" => Ok(ShellSandbox::Landlock),
            "off" => Ok(ShellSandbox::Off),
            other => Err(format!(
                "unknown shell sandbox {other:?}: use landlock (the default) or off"
            )),
        }
    }
}

/// If this process was started as a launcher (`argv[1]` is [`LAUNCHER_ARG`]), sets the
/// sandbox up and executes the task's program; never returns then. Otherwise returns at
/// once. Call it first thing in `main`, before any thread starts.
pub fn run_if_launcher() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_none_or(|arg| arg != LAUNCHER_ARG) {
        return;
    }
    let refuse = |reason: String| -> ! {
        eprintln!("{REFUSAL_PREFIX}{reason}");
        std::process::exit(REFUSED_EXIT);
    };
    // LAUNCHER_ARG WORKDIR|- -- PROGRAM ARGS...
    let (Some(workdir), Some(separator), Some(program)) = (args.get(2), args.get(3), args.get(4))
    else {
        refuse("usage: __aamas_shell_sandbox WORKDIR|- -- PROGRAM [ARGS...]".into());
    };
    if separator != "--" {
        refuse("usage: __aamas_shell_sandbox WORKDIR|- -- PROGRAM [ARGS...]".into());
    }
    let workdir = (workdir != "-").then(|| PathBuf::from(workdir));
    if let Err(reason) = limit_processes() {
        refuse(reason);
    }
    match restrict(workdir.as_deref()) {
        Err(reason) => refuse(reason),
        Ok(Confined::FilesOnly) => eprintln!("{REFUSAL_PREFIX}{NETWORK_NOT_CONFINED}"),
        Ok(Confined::All) => {}
    }
    use std::os::unix::process::CommandExt as _;
    let error = std::process::Command::new(program).args(&args[5..]).exec();
    refuse(format!("cannot run {}: {error}", program.to_string_lossy()));
}

/// Limits this process and what it starts to [`SHELL_PROCESSES`] more processes (and
/// threads) than its user runs now.
fn limit_processes() -> Result<(), String> {
    use nix::sys::resource::{Resource, setrlimit};
    let running = user_tasks().ok_or("cannot count this user's processes in /proc")?;
    let most = running.saturating_add(SHELL_PROCESSES);
    setrlimit(Resource::RLIMIT_NPROC, most, most)
        .map_err(|error| format!("cannot limit the task's processes: {error}"))
}

/// The processes' threads of this process's real user, from `/proc`.
fn user_tasks() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = real_uid(&status)?;
    let entries = std::fs::read_dir("/proc").ok()?;
    let count = entries
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("status")).ok())
        .filter(|status| real_uid(status) == Some(uid))
        .map(|status| threads(&status).unwrap_or(1))
        .fold(0u64, u64::saturating_add);
    Some(count)
}

/// The real uid of a `/proc/PID/status`.
fn real_uid(status: &str) -> Option<u32> {
    let line = status.lines().find(|line| line.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The thread count of a `/proc/PID/status`.
fn threads(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("Threads:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// What the kernel let the launcher confine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Confined {
    /// Files, TCP and signals.
    All,
    /// Files only: the kernel's Landlock is older than [`SCOPE_ABI`].
    FilesOnly,
}

/// Restricts this thread (and what it executes) to reading and executing
/// [`READ_ROOTS`], the device files, and reading and writing `workdir`; with no TCP bind
/// or connect, and no signal or abstract Unix socket outside the sandbox, where the
/// kernel has those rights.
fn restrict(workdir: Option<&Path>) -> Result<Confined, String> {
    let abi = LANDLOCK_ABI;
    let existing = |paths: &[&str]| -> Vec<PathBuf> {
        paths
            .iter()
            .map(PathBuf::from)
            .filter(|path| path.exists())
            .collect()
    };
    let failed = |error: landlock::RulesetError| format!("Landlock: {error}");
    // No network rule is added: every TCP bind and connect is denied.
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(failed)?
        .handle_access(AccessNet::from_all(NETWORK_ABI))
        .map_err(failed)?
        .scope(Scope::from_all(SCOPE_ABI))
        .map_err(failed)?
        .create()
        .map_err(failed)?
        .add_rules(path_beneath_rules(
            existing(&READ_ROOTS),
            AccessFs::from_read(abi),
        ))
        .map_err(failed)?
        .add_rules(path_beneath_rules(
            existing(&DEVICES),
            AccessFs::from_read(abi) | AccessFs::WriteFile,
        ))
        .map_err(failed)?;
    if let Some(dir) = workdir {
        ruleset = ruleset
            .add_rules(path_beneath_rules([dir], AccessFs::from_all(abi)))
            .map_err(failed)?;
    }
    let status = ruleset.restrict_self().map_err(failed)?;
    let everything = matches!(
        status.landlock,
        LandlockStatus::Available { effective_abi, .. } if effective_abi >= SCOPE_ABI
    );
    match status.ruleset {
        RulesetStatus::FullyEnforced | RulesetStatus::PartiallyEnforced if everything => {
            Ok(Confined::All)
        }
        RulesetStatus::FullyEnforced | RulesetStatus::PartiallyEnforced => Ok(Confined::FilesOnly),
        RulesetStatus::NotEnforced => Err(
            "Landlock is not available on this kernel (Linux 5.13 or later, with the LSM \
             enabled): shell tasks cannot be confined here"
                .into(),
        ),
    }
}

/// Checks, at a node's start, that shell tasks can be sandboxed here: the data dir is
/// outside what a task may read, and the launcher (this binary) sets Landlock up and runs
/// a program under it. The error says what to do; `Ok(notes)`: what is not confined here
/// (the network and signals on an older kernel; the process limit for root).
pub fn probe(data_dir: &Path) -> Result<Vec<&'static str>, String> {
    let data_dir = data_dir.canonicalize().map_err(|error| {
        format!(
            "cannot resolve the data dir {}: {error}",
            data_dir.display()
        )
    })?;
    if let Some(root) = READ_ROOTS
        .iter()
        .find(|root| data_dir.starts_with(Path::new(root)))
    {
        return Err(format!(
            "the data dir {} is under {root}, which sandboxed shell tasks may read: move it \
             elsewhere (e.g. /var/lib/aamas)",
            data_dir.display()
        ));
    }
    let launcher = std::env::current_exe()
        .map_err(|error| format!("cannot find this binary to launch shell tasks: {error}"))?;
    let output = std::process::Command::new(&launcher)
        .args([LAUNCHER_ARG, "-", "--", "/bin/sh", "-c", "exit 0"])
        .env_clear()
        .output()
        .map_err(|error| format!("cannot run the shell sandbox launcher: {error}"))?;
    if output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let mut notes = Vec::new();
        if stderr.contains(NETWORK_NOT_CONFINED) {
            notes.push(NETWORK_NOT_CONFINED);
        }
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        if real_uid(&status) == Some(0) {
            notes.push(ROOT_NOT_LIMITED);
        }
        return Ok(notes);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(match stderr.trim().strip_prefix(REFUSAL_PREFIX) {
        Some(reason) => reason.to_string(),
        None => format!(
            "the shell sandbox launcher {} failed ({}): {}",
            launcher.display(),
            output.status,
            stderr.trim()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_dir_that_tasks_could_read_is_refused() {
        let refusal = probe(Path::new("/usr/share")).expect_err("under /usr");
        assert!(refusal.contains("is under /usr"), "{refusal}");
        assert!(probe(Path::new("/nonexistent/aamas")).is_err());
    }

    #[test]
    fn a_status_gives_its_real_uid_and_threads() {
        let status = "Name:\tsh\nUid:\t1000\t0\t0\t0\nThreads:\t7\n";
        assert_eq!(real_uid(status), Some(1000));
        assert_eq!(threads(status), Some(7));
        assert_eq!(real_uid("Name:\tsh\n"), None);
        assert!(user_tasks().is_some_and(|count| count >= 1));
    }

    #[test]
    fn the_choice_parses() {
        assert_eq!("landlock".parse(), Ok(ShellSandbox::Landlock));
        assert_eq!("off".parse(), Ok(ShellSandbox::Off));
        assert!("chroot".parse::<ShellSandbox>().is_err());
        assert_eq!(ShellSandbox::default(), ShellSandbox::Landlock);
    }
}
