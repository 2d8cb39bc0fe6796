//! `aamas events`: the node's event stream (`GET /api/v1/events`, server-sent events),
//! printed one event per line, or as JSON lines with `--json`.

use std::io::{BufRead as _, BufReader, Write as _};

use anyhow::{Context as _, Result, bail};
use clap::Args;

use crate::{Client, Target, problem_detail};

/// What `aamas events` shows.
#[derive(Args)]
pub struct EventsArgs {
    /// Wait for new events (until interrupted) after those the node keeps.
    #[arg(long, short)]
    follow: bool,
    /// Start at this event index (the node keeps the last few thousand).
    #[arg(long)]
    from: Option<u64>,
    /// Only events about this project.
    #[arg(long)]
    project: Option<String>,
    /// Only events about this state.
    #[arg(long)]
    state: Option<String>,
    /// Only events from or about this member (peer id).
    #[arg(long)]
    agent: Option<String>,
    /// Only events of this kind (phase_transition, task_completion, error_escalation,
    /// resource_request, performance_alert, role_change, leader_change, membership).
    #[arg(long)]
    kind: Option<String>,
    #[command(flatten)]
    target: Target,
}

/// One server-sent event as it was read.
#[derive(Debug, Default, PartialEq)]
struct SseMessage {
    event: String,
    data: String,
}

/// Reads server-sent events (the WHATWG event-stream format's lines) from `lines`,
/// calling `each` for every complete one; comments and keep-alives are skipped.
fn read_sse(
    lines: impl Iterator<Item = std::io::Result<String>>,
    mut each: impl FnMut(SseMessage) -> Result<()>,
) -> Result<()> {
    let mut message = SseMessage::default();
    for line in lines {
        let line = line.context("reading the event stream")?;
        if line.is_empty() {
            if !message.data.is_empty() || !message.event.is_empty() {
                each(std::mem::take(&mut message))?;
            }
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line.as_str(), ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => message.event = value.to_string(),
            "data" => {
                if !message.data.is_empty() {
                    message.data.push('\n');
                }
                message.data.push_str(value);
            }
            _ => {}
        }
    }
    Ok(())
}

/// Prints the node's events.
pub fn events(args: EventsArgs) -> Result<()> {
    let client = Client::new(&args.target)?;
    let mut query = vec![format!("follow={}", args.follow)];
    let pairs = [
        ("from", args.from.map(|from| from.to_string())),
        ("project", args.project),
        ("state", args.state),
        ("agent", args.agent),
        ("kind", args.kind),
    ];
    for (name, value) in pairs {
        if let Some(value) = value {
            query.push(format!("{name}={}", encode(&value)));
        }
    }
    let url = format!("{}/api/v1/events?{}", client.base, query.join("&"));
    let mut request = ureq::get(&url)
        .set("Authorization", &format!("Bearer {}", client.token))
        .set("Accept", "text/event-stream");
    if !args.follow {
        request = request.timeout(std::time::Duration::from_secs(60));
    }
    let response = match request.call() {
        Ok(response) => response,
        Err(ureq::Error::Status(code, response)) => {
            let body = response.into_string().unwrap_or_default();
            bail!("{url}: HTTP {code}: {}", problem_detail(&body))
        }
        Err(error) => bail!("{url}: {error}"),
    };
    let json = args.target.json;
    let mut out = std::io::stdout().lock();
    read_sse(BufReader::new(response.into_reader()).lines(), |message| {
        let line = if json {
            message.data
        } else {
            describe(&message)
        };
        writeln!(out, "{line}").context("writing to stdout")?;
        out.flush().context("writing to stdout")
    })
}

/// One line for a person: the index, the time, the kind and what happened.
fn describe(message: &SseMessage) -> String {
    let value: serde_json::Value = serde_json::from_str(&message.data).unwrap_or_default();
    let text = |key: &str| {
        value
            .get(key)
            .and_then(|v| v.as_str())
            .unwrap_or("-")
            .to_string()
    };
    let short = |peer: String| {
        peer.chars()
            .rev()
            .take(8)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<String>()
    };
    match message.event.as_str() {
        "gap" => {
            return format!(
                "(the node no longer keeps {} of the events asked for)",
                value["missed"]
            );
        }
        "dropped" => {
            return format!(
                "(dropped by the node: {}, {} events behind)",
                text("reason"),
                value["missed"]
            );
        }
        _ => {}
    }
    let what = match message.event.as_str() {
        "phase_transition" => {
            let event = &value["event"]["PhaseTransition"];
            format!(
                "project {} {} -> {}",
                event["project"].as_str().unwrap_or("-"),
                event["from"].as_str().unwrap_or("intake"),
                event["to"].as_str().unwrap_or("-")
            )
        }
        "task_completion" => {
            let event = &value["event"]["TaskCompletion"];
            let outcome = if event["outcome"].get("Succeeded").is_some() {
                "succeeded"
            } else {
                "failed"
            };
            format!(
                "project {} task {} attempt {} {outcome} (state {})",
                event["project"].as_str().unwrap_or("-"),
                event["task"].as_str().unwrap_or("-"),
                event["attempt"],
                text("state")
            )
        }
        "leader_change" | "role_change" => format!(
            "{} {}",
            value["role"],
            value.get("holder").map_or_else(
                || format!("gained: {}", value["gained"]),
                |holder| format!(
                    "holder: {}",
                    holder
                        .as_str()
                        .map_or("none".into(), |h| short(h.to_string()))
                )
            )
        ),
        "membership" => format!(
            "member ..{} {}",
            short(text("member")),
            if value["joined"].as_bool() == Some(true) {
                "joined"
            } else {
                "left"
            }
        ),
        _ => value
            .get("event")
            .map_or_else(String::new, |event| event.to_string()),
    };
    let origin = value
        .get("origin")
        .and_then(|o| o.as_str())
        .map(|o| format!(" from ..{}", short(o.to_string())))
        .unwrap_or_default();
    format!(
        "#{:<6} {} {:<17} {what}{origin}",
        value["index"], value["at_ms"], message.event
    )
}

/// Percent-encodes a query value (everything but unreserved characters).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_sent_events_are_read_whole_and_keep_alives_skipped() {
        let text = ": keep-alive\n\nid: 3\nevent: membership\ndata: {\"a\":1}\n\nevent: gap\ndata: {\"missed\":2}\n\n";
        let mut seen = Vec::new();
        read_sse(text.lines().map(|l| Ok(l.to_string())), |m| {
            seen.push(m);
            Ok(())
        })
        .expect("read");
        assert_eq!(
            seen,
            vec![
                SseMessage {
                    event: "membership".into(),
                    data: "{\"a\":1}".into()
                },
                SseMessage {
                    event: "gap".into(),
                    data: "{\"missed\":2}".into()
                },
            ]
        );
        assert_eq!(encode("a b/ç"), "a%20b%2F%C3%A7");
    }
}
