//! # aamas-tests
//!
//! Multi-process integration tests that drive the real `aamas` binary on loopback
//! (`tests/mesh.rs`), and the helpers they share with the mesh timing tool
//! (`examples/mesh_timing.rs`). The binary is found next to the test executable in the
//! target directory, or at `AAMAS_BIN`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod campaign;
pub mod llm;
pub mod restarts;

/// Bound on every wait: generous for a loaded CI machine; a healthy run takes seconds.
pub const WAIT: Duration = Duration::from_secs(60);
/// How often a wait looks again at the nodes' status.
pub const POLL: Duration = Duration::from_millis(200);

/// The `aamas` binary built with this test (same target directory).
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("AAMAS_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/mesh-<hash> → target/<profile>/aamas
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let binary = dir.join("aamas");
    assert!(
        binary.exists(),
        "{} is missing: build it first (`cargo build --workspace --bins`, as `make test` does), or set AAMAS_BIN",
        binary.display()
    );
    binary
}

/// Runs `aamas` with `args`.
pub fn aamas(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run aamas")
}

/// A running `aamas node` process; killed when dropped.
#[derive(Debug)]
pub struct Node {
    /// Its data dir.
    pub dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// Starts `aamas node` on `dir`, joining through `join` if given.
    pub fn start(dir: &Path, join: Option<(&str, &str)>) -> Self {
        Self::start_with(dir, join, &[])
    }

    /// Starts `aamas node` on `dir` with `extra` arguments.
    pub fn start_with(dir: &Path, join: Option<(&str, &str)>, extra: &[&str]) -> Self {
        Self::start_in(None, dir, join, extra)
    }

    /// Starts `aamas node` on `dir` with `extra` arguments, inside the network namespace
    /// `netns` when given (`ip netns exec`, which runs the binary in its own process).
    pub fn start_in(
        netns: Option<&str>,
        dir: &Path,
        join: Option<(&str, &str)>,
        extra: &[&str],
    ) -> Self {
        Self::start_env(netns, dir, join, extra, &[])
    }

    /// [`Node::start_in`] with `env` added to the node's environment.
    pub fn start_env(
        netns: Option<&str>,
        dir: &Path,
        join: Option<(&str, &str)>,
        extra: &[&str],
        env: &[(String, String)],
    ) -> Self {
        Self::start_durable(netns, dir, join, extra, env, false)
    }

    /// [`Node::start_env`]; with `fsync`, the node syncs its writes as it does by default
    /// (the tests' nodes do not unless asked: a killed process loses no page cache).
    pub fn start_durable(
        netns: Option<&str>,
        dir: &Path,
        join: Option<(&str, &str)>,
        extra: &[&str],
        env: &[(String, String)],
        fsync: bool,
    ) -> Self {
        let mut args = vec![
            "node".to_string(),
            "--data-dir".into(),
            dir.display().to_string(),
        ];
        if !fsync {
            args.push("--no-fsync".into());
        }
        if let Some((addr, token)) = join {
            args.extend(["--join".into(), addr.into(), "--token".into(), token.into()]);
        }
        // The tests' nodes run every executor, shell included (their projects run shell
        // tasks); a test of which executors run passes its own --executors.
        if !extra.contains(&"--executors") {
            args.extend(["--executors".into(), "builtin,llm,shell".into()]);
        }
        args.extend(extra.iter().map(|arg| arg.to_string()));
        std::fs::create_dir_all(dir).expect("data dir");
        // Appended to: a node started again on its data dir follows its earlier runs.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.with_extension("log"))
            .expect("log file");
        let mut command = match netns {
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(binary());
                command
            }
            None => Command::new(binary()),
        };
        let child = command
            .args(&args)
            .envs(env.iter().map(|(name, value)| (name, value)))
            // `AAMAS_TEST_LOG` overrides the nodes' log filter (to follow one task
            // through a benchmark, say); the default keeps the logs short.
            .env(
                "RUST_LOG",
                std::env::var("AAMAS_TEST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn aamas node");
        Self {
            dir: dir.to_owned(),
            child: Some(child),
        }
    }

    /// `aamas COMMAND --data-dir DIR --json`, if the node answers.
    fn json(&self, command: &str) -> Option<Value> {
        let output = aamas(&[
            command,
            "--data-dir",
            &self.dir.display().to_string(),
            "--json",
        ]);
        if !output.status.success() {
            return None;
        }
        serde_json::from_slice(&output.stdout).ok()
    }

    /// `aamas status --json`, if the node answers.
    pub fn status(&self) -> Option<Value> {
        self.json("status")
    }

    /// SIGTERM, then waits for the process to exit; returns whether it exited with 0.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .is_ok_and(|status| status.success());
        assert!(sent, "kill -TERM failed");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the node") {
                let _ = std::fs::remove_file(self.dir.join("api.addr"));
                return status.success();
            }
            assert!(
                Instant::now() < deadline,
                "the node did not stop after SIGTERM"
            );
            std::thread::sleep(POLL);
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the node's process, if it runs.
    pub fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args([format!("-{signal}"), child.id().to_string()])
                .status();
        }
    }

    /// Whether the node's process has exited (of itself: a node that cannot write its
    /// disk stops), and the last error line of its log if so.
    pub fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        let status = child.try_wait().ok()??;
        let log = std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default();
        let error = log
            .lines()
            .rev()
            .find(|line| line.starts_with("Error: "))
            .unwrap_or("no error line in its log")
            .to_string();
        self.child = None;
        Some(format!("exited ({status}): {error}"))
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL: no graceful leave.
            child.kill().expect("kill -9");
            let _ = child.wait();
        }
        // The old process's API address is stale now.
        let _ = std::fs::remove_file(self.dir.join("api.addr"));
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            self.keep_log();
        }
    }
}

impl Node {
    /// For a failed test: copies the node's log to `$TMPDIR/aamas-failed-logs/` (its
    /// data dir goes with the test's) and prints where, with the log's last lines.
    fn keep_log(&self) {
        let log = self.dir.with_extension("log");
        let Ok(text) = std::fs::read_to_string(&log) else {
            return;
        };
        let kept = std::env::temp_dir().join("aamas-failed-logs").join(format!(
            "{}-{}",
            std::process::id(),
            log.display().to_string().replace('/', "_")
        ));
        let _ = std::fs::create_dir_all(kept.parent().unwrap_or(Path::new(".")));
        let _ = std::fs::write(&kept, &text);
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(25)..].join("\n");
        eprintln!(
            "--- {} (kept in {}), last lines:\n{tail}",
            log.display(),
            kept.display()
        );
    }
}

/// `aamas project submit FILE --json` through the node on data dir `dir`: the project
/// id, or the error text.
pub fn submit_in(dir: &Path, spec: &str) -> Result<String, String> {
    // One file per call: threads of one test may submit to one node at once.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = dir.with_extension(format!("spec-{}-{call}.toml", std::process::id()));
    std::fs::write(&file, spec).map_err(|e| format!("write the spec: {e}"))?;
    let output = aamas(&[
        "project",
        "submit",
        "--data-dir",
        &dir.display().to_string(),
        "--json",
        &file.display().to_string(),
    ]);
    let _ = std::fs::remove_file(&file);
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let answer: Value = serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())?;
    field(&answer, "id").ok_or_else(|| "no id".into())
}

/// Polls `probe` until it gives a value, for at most [`WAIT`].
pub fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// The view of phase `name` in a project's JSON view.
pub fn phase<'a>(project: &'a Value, name: &str) -> &'a Value {
    project["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|phase| phase["name"] == name)
        .unwrap_or_else(|| panic!("no phase {name} in {project}"))
}

/// A string field of a JSON object.
pub fn field(status: &Value, name: &str) -> Option<String> {
    status.get(name).and_then(Value::as_str).map(str::to_string)
}

/// Every node's status names the same president (one of `nodes`) and `members` members.
pub fn agreed_president(nodes: &[&Node], members: u64) -> Option<String> {
    let statuses: Vec<Value> = nodes
        .iter()
        .map(|node| node.status())
        .collect::<Option<_>>()?;
    let president = field(&statuses[0], "president")?;
    let all_agree = statuses.iter().all(|status| {
        field(status, "president").as_deref() == Some(president.as_str())
            && status.get("members").and_then(Value::as_u64) == Some(members)
    });
    let is_one_of_them = statuses
        .iter()
        .any(|status| field(status, "peer_id").as_deref() == Some(president.as_str()));
    (all_agree && is_one_of_them).then_some(president)
}

/// How many nodes the founder's token from [`init`] admits: the tests join every node
/// of a mesh with it.
pub const FOUNDER_TOKEN_USES: u32 = 1_000;

/// `aamas init --json` on `dir`, with a token for [`FOUNDER_TOKEN_USES`] nodes: (token,
/// founder peer id).
pub fn init(dir: &Path) -> (String, String) {
    let uses = FOUNDER_TOKEN_USES.to_string();
    let dir = dir.display().to_string();
    let output = aamas(&["init", "--data-dir", &dir, "--json", "--token-uses", &uses]);
    assert!(
        output.status.success(),
        "init failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let founded: Value = serde_json::from_slice(&output.stdout).expect("init prints JSON");
    (
        field(&founded, "token").expect("token"),
        field(&founded, "peer_id").expect("peer id"),
    )
}

/// Runs `aamas node` on `root/name` joining through `addr` with `token`, which must be
/// refused: the node exits with an error, whose text (stderr) is returned.
pub fn join_error(root: &Path, name: &str, addr: &str, token: &str) -> String {
    let dir = root.join(name);
    let output = Command::new(binary())
        .args([
            "node",
            "--data-dir",
            &dir.display().to_string(),
            "--no-fsync",
            "--join",
            addr,
            "--token",
            token,
        ])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run aamas node");
    assert!(
        !output.status.success(),
        "{name}: a bad token must make the node exit with an error"
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Waits for the node's API and returns its first listen address.
pub fn first_listen_addr(node: &Node) -> String {
    wait_for("the founder's API", || {
        node.status().and_then(|status| {
            status
                .get("listen_addrs")?
                .get(0)?
                .as_str()
                .map(str::to_string)
        })
    })
}

/// The index of the node whose peer id is `peer`.
pub fn index_of(nodes: &[Node], peer: &str) -> usize {
    nodes
        .iter()
        .position(|node| node.status().and_then(|s| field(&s, "peer_id")).as_deref() == Some(peer))
        .unwrap_or_else(|| panic!("no running node is {peer}"))
}

/// Every node but the one at `index`.
pub fn all_but(nodes: &[Node], index: usize) -> Vec<&Node> {
    nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, node)| node)
        .collect()
}

/// `kill -9` the president among `nodes`, wait until the others agree on a new one, then
/// restart the killed node from its data dir (no token) and wait until it follows the new
/// president. Returns the new president and how long the survivors took to agree.
pub fn kill_president(nodes: &mut [Node], president: &str, members: u64) -> (String, Duration) {
    let index = index_of(nodes, president);
    let killed_at = Instant::now();
    nodes[index].kill();
    let survivors = all_but(nodes, index);
    let successor = wait_for("the survivors to agree on a new president", || {
        agreed_president(&survivors, members).filter(|p| p != president)
    });
    let failover = killed_at.elapsed();
    let dir = nodes[index].dir.clone();
    nodes[index] = Node::start(&dir, None);
    wait_for("the restarted node to follow the new president", || {
        let status = nodes[index].status()?;
        (field(&status, "president").as_deref() == Some(successor.as_str())
            && status.get("members").and_then(Value::as_u64) == Some(members))
        .then_some(())
    });
    (successor, failover)
}

impl Node {
    /// `aamas hierarchy --json`, if the node answers.
    pub fn hierarchy(&self) -> Option<Value> {
        self.json("hierarchy")
    }

    /// The value of one series of the node's `/metrics`, named in full with its labels as
    /// the exposition prints them (`aamas_events_total{kind="error_escalation"}`), if the
    /// node answers and has it.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.api_get("/metrics")?;
        body.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
    }

    /// An API GET with the node's bearer token: (status line, body).
    pub fn api_get(&self, path: &str) -> Option<(String, String)> {
        self.api_request("GET", path, &[], "")
    }

    /// An API request with the node's bearer token, extra `headers` and `body`: (status
    /// line, body).
    pub fn api_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Option<(String, String)> {
        self.api_request_as(&self.api_token()?, method, path, headers, body)
    }

    /// One raw exchange with the node's API: `token` as the bearer (none: no
    /// Authorization header), `headers` and `body` as given; the status code, the
    /// Content-Type and the body of the answer.
    pub fn api_exchange(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Option<(u16, Option<String>, String)> {
        let (code, answered, body) =
            self.api_exchange_headers(token, method, path, headers, body)?;
        let content_type = answered
            .into_iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
            .map(|(_, value)| value);
        Some((code, content_type, body))
    }

    /// [`Node::api_exchange`] with every header of the answer.
    pub fn api_exchange_headers(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Option<(u16, Headers, String)> {
        let (status, answered, body) = self.exchange(token, method, path, headers, body)?;
        let code = status.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, answered, body))
    }

    /// [`Node::api_request`] with the bearer token `token` instead of the node's own.
    pub fn api_request_as(
        &self,
        token: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Option<(String, String)> {
        let (status, _, body) =
            self.exchange(Some(token), method, path, headers, body.as_bytes())?;
        Some((status, body))
    }

    /// The address the node's API listens on (`DATA_DIR/api.addr`), while it runs.
    pub fn api_addr(&self) -> Option<String> {
        let addr = std::fs::read_to_string(self.dir.join("api.addr")).ok()?;
        Some(addr.trim().to_string())
    }

    /// The node's own API token (`DATA_DIR/api.token`).
    pub fn api_token(&self) -> Option<String> {
        let token = std::fs::read_to_string(self.dir.join("api.token")).ok()?;
        Some(token.trim().to_string())
    }

    /// One HTTP/1.1 exchange with the node's API over a fresh connection: the status
    /// line, the headers and the body of the answer.
    fn exchange(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Option<(String, Headers, String)> {
        let request = HttpRequest {
            token,
            method,
            path,
            headers,
            body,
        };
        http_exchange(&self.api_addr()?, &request, None).ok()
    }
}

/// One HTTP/1.1 request, for [`http_exchange`].
#[derive(Debug)]
pub struct HttpRequest<'a> {
    /// The bearer token, if any.
    pub token: Option<&'a str>,
    /// The method.
    pub method: &'a str,
    /// The path and query.
    pub path: &'a str,
    /// More headers.
    pub headers: &'a [(&'a str, &'a str)],
    /// The body.
    pub body: &'a [u8],
}

/// One HTTP/1.1 exchange with `addr` over a fresh connection: the status line, the
/// headers and the body of the answer. With a `timeout`, connecting and each read wait
/// at most that long, and an answer not in time is an error.
pub fn http_exchange(
    addr: &str,
    request: &HttpRequest<'_>,
    timeout: Option<Duration>,
) -> Result<(String, Headers, String), String> {
    use std::io::{Read as _, Write as _};
    let socket: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut stream = match timeout {
        Some(timeout) => std::net::TcpStream::connect_timeout(&socket, timeout),
        None => std::net::TcpStream::connect(socket),
    }
    .map_err(|e| format!("{addr}: {e}"))?;
    stream
        .set_read_timeout(timeout)
        .map_err(|e| e.to_string())?;
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: x\r\n",
        request.method, request.path
    );
    if let Some(token) = request.token {
        head.push_str(&format!("Authorization: Bearer {}\r\n", token.trim()));
    }
    for (name, value) in request.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        request.body.len()
    ));
    stream
        .write_all(head.as_bytes())
        .map_err(|e| e.to_string())?;
    // A server that refuses early may close before reading all of a large body.
    let _ = stream.write_all(request.body);
    let mut response = Vec::new();
    if let Err(error) = stream.read_to_end(&mut response)
        && matches!(
            error.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    {
        return Err(format!("no answer within {timeout:?}: {error}"));
    }
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").ok_or("no HTTP answer")?;
    let mut lines = head.lines();
    let status = lines.next().ok_or("no status line")?.to_string();
    let answered = lines
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_string(), value.trim().to_string()))
        })
        .collect();
    Ok((status, answered, body.to_string()))
}

/// Copies the nodes' logs (`*.log`) under `root` into `to`, for a run that found a
/// violation: the data dirs go with the run's temporary dir.
pub fn keep_logs(root: &Path, to: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let _ = std::fs::create_dir_all(to);
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|ext| ext == "log")
            && let Some(name) = path.file_name()
        {
            let _ = std::fs::copy(&path, to.join(name));
        }
    }
}

/// The headers of an HTTP answer, names and values, in order.
pub type Headers = Vec<(String, String)>;

/// Each state with workers: its governor and voters, as one node's hierarchy has them.
pub fn governors(hierarchy: &Value) -> Option<Vec<(String, String, Vec<String>)>> {
    let states = hierarchy.get("states")?.as_array()?;
    let mut governed = Vec::new();
    for state in states {
        let workers = state.get("workers")?.as_array()?;
        if workers.is_empty() {
            continue;
        }
        let name = field(state, "name")?;
        let governor = field(state, "governor")?;
        let voters: Vec<String> = state
            .get("voters")?
            .as_array()?
            .iter()
            .filter_map(|voter| voter.as_str().map(str::to_string))
            .collect();
        governed.push((name, governor, voters));
    }
    Some(governed)
}

/// Every node's hierarchy names a governor for each populated state, the governor is one
/// of that state's voters, and all nodes agree: (state, governor, voters) per state.
pub fn agreed_governors(nodes: &[&Node]) -> Option<Vec<(String, String, Vec<String>)>> {
    let views: Vec<Vec<(String, String, Vec<String>)>> = nodes
        .iter()
        .map(|node| node.hierarchy().as_ref().and_then(governors))
        .collect::<Option<_>>()?;
    let first = views.first()?.clone();
    let consistent = first
        .iter()
        .all(|(_, governor, voters)| voters.contains(governor));
    (consistent && !first.is_empty() && views.iter().all(|view| *view == first)).then_some(first)
}

/// A state with a governor on which every node agrees (the first by name).
pub fn governed_state(nodes: &[Node]) -> String {
    agreed_governors(&nodes.iter().collect::<Vec<_>>())
        .and_then(|governed| governed.into_iter().next())
        .map(|(state, _, _)| state)
        .expect("a governed state")
}

/// The version of the policy in force on `node`, if it answers.
pub fn policy_version(node: &Node) -> Option<u64> {
    let shown = node.cli(&["policy", "show", "--json"]).ok()?;
    let shown: Value = serde_json::from_str(&shown).ok()?;
    shown.get("version")?.as_u64()
}

/// Applies the policy in `file` through the president's node `chief`, and waits until
/// every node has it (the founder's policy is version 1).
pub fn apply_policy_everywhere(nodes: &[Node], chief: &Node, file: &str) {
    chief.cli(&["policy", "apply", file]).expect("applied");
    wait_for("the policy on every node", || {
        nodes
            .iter()
            .all(|node| policy_version(node).is_some_and(|v| v >= 2))
            .then_some(())
    });
}

/// Starts `n` nodes: one founds the mesh, the others join it; waits for one president.
pub fn start_mesh(root: &Path, n: usize) -> (Vec<Node>, String) {
    start_mesh_env(root, n, &[])
}

/// [`start_mesh`] with `env` in every node's environment.
pub fn start_mesh_env(root: &Path, n: usize, env: &[(String, String)]) -> (Vec<Node>, String) {
    let dirs: Vec<PathBuf> = (1..=n).map(|i| root.join(format!("n{i}"))).collect();
    let (token, _) = init(&dirs[0]);
    let mut nodes = vec![Node::start_env(None, &dirs[0], None, &[], env)];
    let addr = first_listen_addr(&nodes[0]);
    for dir in &dirs[1..] {
        nodes.push(Node::start_env(None, dir, Some((&addr, &token)), &[], env));
    }
    let president = wait_for("the nodes to agree on a president", || {
        agreed_president(&nodes.iter().collect::<Vec<_>>(), n as u64)
    });
    (nodes, president)
}

/// Starts `n` nodes and waits until every populated state has an agreed governor.
pub fn start_hierarchy(root: &Path, n: usize) -> (Vec<Node>, String) {
    start_hierarchy_env(root, n, &[])
}

/// [`start_hierarchy`] with `env` in every node's environment.
pub fn start_hierarchy_env(root: &Path, n: usize, env: &[(String, String)]) -> (Vec<Node>, String) {
    let (nodes, president) = start_mesh_env(root, n, env);
    wait_for("a governor for each populated state", || {
        agreed_governors(&nodes.iter().collect::<Vec<_>>())
    });
    (nodes, president)
}

impl Node {
    /// `aamas project submit FILE --json`: the project id, or the error text.
    pub fn submit(&self, spec: &str) -> Result<String, String> {
        submit_in(&self.dir, spec)
    }

    /// `aamas ARGS --data-dir DIR` on this node: stdout (trimmed) on success, else the
    /// error (stderr).
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let dir = self.dir.display().to_string();
        let mut all = args.to_vec();
        all.extend(["--data-dir", &dir]);
        let output = aamas(&all);
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// `GET /api/v1/projects/ID`, if the node answers.
    pub fn project(&self, id: &str) -> Option<Value> {
        let (status, body) = self.api_get(&format!("/api/v1/projects/{id}"))?;
        status.contains("200").then_some(())?;
        serde_json::from_str(&body).ok()
    }

    /// `GET /api/v1/projects/ID/tasks`: the tasks in this node's states.
    pub fn tasks(&self, id: &str) -> Vec<Value> {
        self.api_get(&format!("/api/v1/projects/{id}/tasks"))
            .and_then(|(_, body)| serde_json::from_str::<Vec<Value>>(&body).ok())
            .unwrap_or_default()
    }
}

/// Waits (up to `limit`) until some live node reports the project completed or failed.
pub fn wait_for_project_end(nodes: &[Node], id: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        for node in nodes {
            if let Some(project) = node.project(id) {
                let status = field(&project, "status").unwrap_or_default();
                if status == "completed" || status == "failed" {
                    return project;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "project {id} did not end within {limit:?}"
        );
        std::thread::sleep(POLL);
    }
}

/// Every task of the project across the nodes, one entry per (state, task): the union
/// of what each node's state Ledgers hold, taking the most advanced copy.
pub fn all_tasks(nodes: &[Node], id: &str) -> std::collections::BTreeMap<(String, String), Value> {
    let mut tasks = std::collections::BTreeMap::new();
    for node in nodes {
        for task in node.tasks(id) {
            let key = (
                field(&task, "state").unwrap_or_default(),
                field(&task, "name").unwrap_or_default(),
            );
            let attempt = |t: &Value| t.get("attempt").and_then(Value::as_u64).unwrap_or(0);
            let newer = tasks.get(&key).is_none_or(|known: &Value| {
                attempt(&task) > attempt(known)
                    || (attempt(&task) == attempt(known)
                        && task.get("result").is_some_and(Value::is_string))
            });
            if newer {
                tasks.insert(key, task);
            }
        }
    }
    tasks
}

/// Hosts on one switch, each in a Linux network namespace of its own, for tests of what
/// crosses a real network: a host's link can be cut (its switch port down, so its TCP
/// connections look established and simply go quiet, as after a pulled cable) and healed.
///
/// ```text
///   root ns ── mgmt veth ── host i (10.78.S.4i+2)      API, reachable from the test
///   host i ── data veth ── switch ns (bridge) ── ...   libp2p (10.77.S.i), can be cut
/// ```
/// Needs root and iproute2. Every namespace is deleted on drop (with its links).
#[derive(Debug)]
pub struct Hosts {
    tag: String,
    subnet: u8,
    count: usize,
}

impl Hosts {
    /// Creates `count` hosts (at most 60) and the switch between them.
    pub fn new(count: usize) -> Self {
        assert!((1..=60).contains(&count), "1 to 60 hosts");
        // Short (interface names have at most 15 bytes) and unique to this process and
        // this call, so that concurrent tests and leftovers of a killed run do not clash.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let call = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let unique = std::process::id().wrapping_mul(7).wrapping_add(call * 131) % 250;
        let subnet = u8::try_from(unique).expect("below 250");
        let hosts = Self {
            tag: format!("a{subnet}"),
            subnet,
            count,
        };
        hosts.delete();
        let switch = hosts.switch();
        ip(&["netns", "add", &switch]);
        ip(&["-n", &switch, "link", "set", "lo", "up"]);
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        for i in 1..=count {
            let host = hosts.netns(i);
            ip(&["netns", "add", &host]);
            ip(&["-n", &host, "link", "set", "lo", "up"]);
            // Data: host ↔ switch.
            let (data, port) = (format!("{}d{i}", hosts.tag), hosts.port(i));
            ip(&["link", "add", &data, "type", "veth", "peer", "name", &port]);
            ip(&["link", "set", &data, "netns", &host]);
            ip(&["link", "set", &port, "netns", &switch]);
            ip(&["-n", &switch, "link", "set", &port, "master", "br0", "up"]);
            let address = format!("{}/24", hosts.data_ip(i));
            ip(&["-n", &host, "addr", "add", &address, "dev", &data]);
            ip(&["-n", &host, "link", "set", &data, "up"]);
            // Management: host ↔ the root namespace, for the API only.
            let (outside, inside) = (format!("{}m{i}", hosts.tag), format!("{}g{i}", hosts.tag));
            ip(&[
                "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ]);
            ip(&["link", "set", &inside, "netns", &host]);
            let root_side = format!("10.78.{}.{}/30", subnet, 4 * i + 1);
            ip(&["addr", "add", &root_side, "dev", &outside]);
            ip(&["link", "set", &outside, "up"]);
            let host_side = format!("{}/30", hosts.api_ip(i));
            ip(&["-n", &host, "addr", "add", &host_side, "dev", &inside]);
            ip(&["-n", &host, "link", "set", &inside, "up"]);
        }
        hosts
    }

    fn switch(&self) -> String {
        format!("{}-sw", self.tag)
    }

    fn port(&self, i: usize) -> String {
        format!("{}p{i}", self.tag)
    }

    /// The network namespace of host `i` (from 1).
    pub fn netns(&self, i: usize) -> String {
        format!("{}-h{i}", self.tag)
    }

    /// Host `i`'s address on the switch.
    pub fn data_ip(&self, i: usize) -> String {
        format!("10.77.{}.{i}", self.subnet)
    }

    /// Host `i`'s address towards the test (its API listens there).
    pub fn api_ip(&self, i: usize) -> String {
        format!("10.78.{}.{}", self.subnet, 4 * i + 2)
    }

    /// Starts `aamas node` on host `i` with data dir `dir`, listening for peers on the
    /// switch and serving its API towards the test.
    pub fn start(&self, i: usize, dir: &Path, join: Option<(&str, &str)>) -> Node {
        self.start_env(i, dir, join, &[])
    }

    /// [`Hosts::start`] with `env` in the node's environment.
    pub fn start_env(
        &self,
        i: usize,
        dir: &Path,
        join: Option<(&str, &str)>,
        env: &[(String, String)],
    ) -> Node {
        self.start_durable(i, dir, join, env, false)
    }

    /// [`Hosts::start_env`], syncing writes with `fsync` ([`Node::start_durable`]).
    pub fn start_durable(
        &self,
        i: usize,
        dir: &Path,
        join: Option<(&str, &str)>,
        env: &[(String, String)],
        fsync: bool,
    ) -> Node {
        let listen = format!("/ip4/{}/tcp/0", self.data_ip(i));
        let api = format!("{}:0", self.api_ip(i));
        Node::start_durable(
            Some(&self.netns(i)),
            dir,
            join,
            &["--listen", &listen, "--api", &api],
            env,
            fsync,
        )
    }

    /// Takes host `i`'s switch port down: its link is cut, nothing is closed.
    pub fn cut(&self, i: usize) {
        ip(&["-n", &self.switch(), "link", "set", &self.port(i), "down"]);
    }

    /// Brings host `i`'s switch port back up.
    pub fn heal(&self, i: usize) {
        ip(&["-n", &self.switch(), "link", "set", &self.port(i), "up"]);
    }

    /// Splits the switch: the hosts in `side` go to a second bridge, where they reach
    /// one another but none of the rest (each side of a partition works on its own).
    pub fn split(&self, side: &[usize]) {
        let switch = self.switch();
        if quiet_ip(&["-n", &switch, "link", "show", "br1"]).is_none() {
            ip(&["-n", &switch, "link", "add", "br1", "type", "bridge"]);
            ip(&["-n", &switch, "link", "set", "br1", "up"]);
        }
        for i in side {
            ip(&[
                "-n",
                &switch,
                "link",
                "set",
                &self.port(*i),
                "master",
                "br1",
            ]);
        }
    }

    /// Puts every host back on the one bridge (ends a [`Hosts::split`]).
    pub fn unsplit(&self) {
        for i in 1..=self.count {
            ip(&[
                "-n",
                &self.switch(),
                "link",
                "set",
                &self.port(i),
                "master",
                "br0",
            ]);
        }
    }

    /// Drops `percent` of the packets host `i` receives on its data link, at random
    /// (nftables' `numgen random`; the kernel here has no netem).
    pub fn lose(&self, i: usize, percent: u8) {
        self.apply_table(
            i,
            "aamas_loss",
            &format!(
                "  chain input {{\n    type filter hook input priority 0; policy accept;\n    \
                 iifname \"{}d{i}\" numgen random mod 100 < {percent} drop\n  }}\n",
                self.tag
            ),
        );
    }

    /// Ends a [`Hosts::lose`] on host `i`.
    pub fn stop_losing(&self, i: usize) {
        self.delete_table(i, "aamas_loss");
    }

    /// Drops every packet between host `i` and the hosts in `peers` on the data link,
    /// both ways, at host `i` (an nftables table of its own): with [`Hosts::block`] on
    /// both sides of a pair the two cannot talk, while each still reaches every other
    /// host, as a bridge host between two halves does.
    pub fn block(&self, i: usize, peers: &[usize]) {
        let ips: Vec<String> = peers.iter().map(|peer| self.data_ip(*peer)).collect();
        let set = ips.join(", ");
        self.apply_table(
            i,
            "aamas_block",
            &format!(
                "  chain input {{\n    type filter hook input priority 0; policy accept;\n    \
                 ip saddr {{ {set} }} drop\n  }}\n  chain output {{\n    \
                 type filter hook output priority 0; policy accept;\n    \
                 ip daddr {{ {set} }} drop\n  }}\n"
            ),
        );
    }

    /// Ends a [`Hosts::block`] on host `i`.
    pub fn unblock(&self, i: usize) {
        self.delete_table(i, "aamas_block");
    }

    /// Loads the nftables table `inet name` with `chains` in host `i`'s namespace.
    fn apply_table(&self, i: usize, name: &str, chains: &str) {
        let file = std::env::temp_dir().join(format!("{}-{name}-{i}.nft", self.tag));
        std::fs::write(&file, format!("table inet {name} {{\n{chains}}}\n"))
            .expect("write the nft rules");
        let status = Command::new("ip")
            .args(["netns", "exec", &self.netns(i), "nft", "-f"])
            .arg(&file)
            .status()
            .expect("nft runs (apt-get install nftables)");
        assert!(status.success(), "nft -f {}", file.display());
    }

    /// Deletes the nftables table `inet name` from host `i`'s namespace, if it is there.
    fn delete_table(&self, i: usize, name: &str) {
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns(i),
                "nft",
                "delete",
                "table",
                "inet",
                name,
            ])
            .stderr(Stdio::null())
            .status();
    }

    fn delete(&self) {
        for i in 1..=self.count {
            let _ = quiet_ip(&["netns", "delete", &self.netns(i)]);
            let _ = quiet_ip(&["link", "delete", &format!("{}m{i}", self.tag)]);
        }
        let _ = quiet_ip(&["netns", "delete", &self.switch()]);
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.delete();
    }
}

fn quiet_ip(args: &[&str]) -> Option<()> {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?
        .success()
        .then_some(())
}

/// Runs `ip ARGS`, failing the test with its error.
fn ip(args: &[&str]) {
    let output = Command::new("ip")
        .args(args)
        .output()
        .expect("iproute2's `ip` (tests of several hosts need root and iproute2)");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}
