//! The event stream under load: a real 5-process mesh runs a project of builtin tasks
//! while 100 WebSocket clients read one node's `GET /api/v1/events` (a node that holds
//! no office, so each task's completion reaches it over gossip, sealed under the group
//! key). Prints, for the task completions the clients saw live, the delay from the
//! commit (the governor sealing the event) to a client reading it, p50/p90/p99/max;
//! then the 100 clients read the node's whole kept log at once (`from=0`), which gives
//! the events per second one node streams to 100 clients as fast as they read.
//!
//! Run: `cargo build --release -p aamas-cli && AAMAS_BIN=target/release/aamas cargo run --release -p aamas-tests --example event_stream -- 1000 100`
//! (tasks, clients). Figures are kept in `docs/PERFORMANCE.md`.

use std::time::{Duration, Instant};

use aamas_tests::*;
use futures::StreamExt as _;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

fn spec(tasks: usize) -> String {
    let states = ["technical", "financial", "market", "operations"];
    let mut text = String::from("name = \"stream\"\n[[phase]]\nname = \"development\"\n");
    for i in 0..tasks {
        text.push_str(&format!(
            "  [[phase.task]]\n  name = \"t{i:05}\"\n  state = \"{}\"\n  executor = \"builtin\"\n  action = \"noop\"\n  retries = 0\n",
            states[i % states.len()],
        ));
    }
    text
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One client: connects, then reads event frames until `want` of them, `limit`, or no
/// frame for `idle`; returns (for each event, the ms from its origin sealing it to this read) and when
/// the first and the last arrived.
async fn client(
    addr: String,
    token: String,
    query: String,
    want: usize,
    limit: Duration,
    idle: Duration,
) -> (Vec<u64>, Option<Instant>, Option<Instant>) {
    let url = format!("ws://{addr}/api/v1/events?{query}");
    let mut request = url.into_client_request().expect("request");
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let (mut socket, _) = tokio_tungstenite::client_async(request, tcp)
        .await
        .expect("handshake");
    let mut delays = Vec::with_capacity(want.min(1 << 16));
    let (mut first, mut last) = (None, None);
    let deadline = tokio::time::Instant::now() + limit;
    while delays.len() < want {
        let wait = deadline.min(tokio::time::Instant::now() + idle);
        let frame = match tokio::time::timeout_at(wait, socket.next()).await {
            Ok(Some(Ok(frame))) => frame,
            _ => break,
        };
        let Message::Text(text) = frame else { continue };
        let read = now_ms();
        let value: serde_json::Value = serde_json::from_str(text.as_str()).expect("JSON");
        let Some(origin) = value.get("origin_ms").and_then(serde_json::Value::as_u64) else {
            continue;
        };
        first.get_or_insert_with(Instant::now);
        last = Some(Instant::now());
        delays.push(read.saturating_sub(origin));
    }
    (delays, first, last)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn round(
    addr: &str,
    token: &str,
    query: &str,
    clients: usize,
    want: usize,
    limit: Duration,
    idle: Duration,
) -> Vec<(Vec<u64>, Option<Instant>, Option<Instant>)> {
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(client(
                addr.to_string(),
                token.to_string(),
                query.to_string(),
                want,
                limit,
                idle,
            ))
        })
        .collect();
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.expect("client"));
    }
    out
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let tasks: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1_000);
    let clients: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(100);
    let root = tempfile::tempdir().expect("tempdir");
    let (nodes, president) = start_hierarchy(root.path(), 5);
    let governors: Vec<String> = agreed_governors(&nodes.iter().collect::<Vec<_>>())
        .expect("governors")
        .into_iter()
        .map(|(_, governor, _)| governor)
        .collect();
    let watched = nodes
        .iter()
        .find(|node| {
            let id = node.status().and_then(|s| field(&s, "peer_id"));
            id.is_some_and(|id| id != president && !governors.contains(&id))
        })
        .unwrap_or(&nodes[0]);
    let addr = watched.api_addr().expect("api.addr");
    let token = watched.api_token().expect("token");

    // Live: the clients connect, then the project runs.
    let live = {
        let (addr, token) = (addr.clone(), token.clone());
        tokio::spawn(async move {
            round(
                &addr,
                &token,
                "kind=task_completion",
                clients,
                tasks,
                Duration::from_secs(600),
                Duration::from_secs(600),
            )
            .await
        })
    };
    // Every client is connected before the project starts.
    wait_for("every client connected", || {
        let open = watched.metric("aamas_event_streams")?;
        (open as usize >= clients).then_some(())
    });
    let started = Instant::now();
    let id = nodes[0].submit(&spec(tasks)).expect("submitted");
    let end = wait_for_project_end(&nodes, &id, Duration::from_secs(600));
    let took = started.elapsed();
    let live = live.await.expect("live round");
    let mut delays: Vec<u64> = live
        .iter()
        .flat_map(|(d, _, _)| d.iter().copied())
        .collect();
    delays.sort_unstable();
    let per_client: Vec<usize> = live.iter().map(|(d, _, _)| d.len()).collect();
    println!(
        "project {} ({}) of {tasks} tasks in {:.1} s; {clients} clients on one node saw {} task completions each (min), {} in all",
        id,
        field(&end, "status").unwrap_or_default(),
        took.as_secs_f64(),
        per_client.iter().min().copied().unwrap_or(0),
        delays.len()
    );
    println!(
        "commit -> client delay (ms): p50 {} p90 {} p99 {} max {}",
        percentile(&delays, 0.5),
        percentile(&delays, 0.9),
        percentile(&delays, 0.99),
        delays.last().copied().unwrap_or(0)
    );

    // Burst: every client reads the whole kept log at once.
    let burst_start = Instant::now();
    let burst = round(
        &addr,
        &token,
        "from=0",
        clients,
        usize::MAX,
        Duration::from_secs(300),
        Duration::from_secs(2),
    )
    .await;
    let done = burst.iter().filter_map(|(_, _, last)| *last).max();
    let elapsed = done.map_or(0.0, |done| (done - burst_start).as_secs_f64());
    let read: usize = burst.iter().map(|(d, _, _)| d.len()).sum();
    println!(
        "burst: {clients} clients read the kept log ({} to {} events each, {read} in all) in {:.2} s: {:.0} events/s from one node",
        burst.iter().map(|(d, _, _)| d.len()).min().unwrap_or(0),
        burst.iter().map(|(d, _, _)| d.len()).max().unwrap_or(0),
        elapsed,
        read as f64 / elapsed.max(1e-9)
    );
    let dropped = watched.metric("aamas_event_streams_closed_total{reason=\"lagged\"}");
    println!("streams dropped for lagging: {}", dropped.unwrap_or(0.0));
}
