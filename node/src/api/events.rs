//! `GET /api/v1/events`: the node's event stream ([`crate::events`]) as a WebSocket
//! (seed §10.2) or as server-sent events.
//!
//! ```text
//!   GET /api/v1/events?from=&project=&state=&agent=&kind=&follow=
//!     Upgrade: websocket ─► WebSocket: events as JSON text frames; the client sends
//!                             {"type":"subscribe", project|state|agent|kind}  (a new filter)
//!                             {"type":"command", "command":"hold", ...}      (an agent command)
//!     otherwise          ─► text/event-stream: `id: INDEX`, `event: KIND`, `data: JSON`
//! ```
//!
//! A reader resumes with `from=INDEX` (or SSE's `Last-Event-ID`) from the events the node
//! still keeps; the first message says how many it asked for are gone (`gap`). A reader
//! that falls behind the log, or whose socket takes no data for [`STALL_LIMIT`], is
//! dropped with the reason (`dropped`, then the end of the stream or a close frame), so
//! no reader holds the node's memory. At most [`MAX_EVENT_STREAMS`] streams are open at
//! once; more get 503.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts as _, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse as _, Response};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::{AgentCommand, Api, Problems, error, run_command};
use crate::access::Scope;
use crate::events::{Filter, Resumed, Stamped};
use crate::metrics::labels;

/// Most event streams one node serves at once.
pub const MAX_EVENT_STREAMS: usize = 256;
/// How long a stream may wait for its client to take one message before it is dropped.
pub const STALL_LIMIT: Duration = Duration::from_secs(10);
/// Largest message a WebSocket client may send.
pub const MAX_CLIENT_MESSAGE_BYTES: usize = 64 << 10;
/// How often an idle stream says it is alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// The WebSocket close code of a stream dropped for falling behind or stalling
/// (RFC 6455 §7.4.2: 4000-4999 are the application's).
const CLOSE_DROPPED: u16 = 4000;

/// Which events, from where, and whether to wait for more.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct EventQuery {
    /// Resume at this event index (from the events the node keeps); left out, the stream
    /// starts with the next event, or with every kept one when `follow=false`.
    from: Option<u64>,
    /// Only events about this project.
    project: Option<String>,
    /// Only events about this state.
    state: Option<String>,
    /// Only events from or about this member (peer id).
    agent: Option<String>,
    /// Only events of this kind (`phase_transition`, `task_completion`, `error_escalation`,
    /// `resource_request`, `performance_alert`, `role_change`, `leader_change`,
    /// `membership`).
    kind: Option<String>,
    /// `false`: send the kept events and end (server-sent events only); `true` (the
    /// default): go on with every new event.
    follow: Option<bool>,
}

/// What a WebSocket client sends.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMessage {
    /// Replace the filter (every field left out matches everything).
    Subscribe(Filter),
    /// An agent command, as `POST /api/v1/agents/command` takes it.
    Command(AgentCommand),
}

/// Holds one of the node's stream slots, and gives it back when the stream ends.
struct Slot {
    api: Api,
}

impl Slot {
    fn take(api: &Api) -> Option<Self> {
        let taken = api
            .streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < MAX_EVENT_STREAMS).then_some(open + 1)
            })
            .is_ok();
        if !taken {
            return None;
        }
        api.node.metrics.event_streams.inc();
        Some(Self { api: api.clone() })
    }

    fn closed(&self, reason: &str) {
        self.api
            .node
            .metrics
            .event_streams_closed
            .get_or_create(&labels(&[("reason", reason)]))
            .inc();
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.api.streams.fetch_sub(1, Ordering::AcqRel);
        self.api.node.metrics.event_streams.dec();
    }
}

/// What the next read of a stream gives.
enum Next {
    Event(Arc<Stamped>),
    /// Dropped: the client fell this many events behind the log.
    Lagged(u64),
    /// The node stops, or a reader that does not follow has had the kept events.
    Closed,
}

/// A reader of the bus: the backlog first, then live events, all through `filter`.
struct Reader {
    backlog: std::collections::VecDeque<Arc<Stamped>>,
    live: tokio::sync::broadcast::Receiver<Arc<Stamped>>,
    filter: Filter,
    /// The index after the last event given (live events before it were in the backlog).
    next: u64,
    /// Whether live events follow the backlog.
    follow: bool,
}

impl Reader {
    fn new(resumed: Resumed, filter: Filter, next: u64, follow: bool) -> Self {
        Self {
            backlog: resumed.backlog.into(),
            live: resumed.live,
            filter,
            next,
            follow,
        }
    }

    async fn next(&mut self) -> Next {
        loop {
            let stamped = match self.backlog.pop_front() {
                Some(stamped) => stamped,
                None if !self.follow => return Next::Closed,
                None => match self.live.recv().await {
                    Ok(stamped) => stamped,
                    Err(RecvError::Lagged(missed)) => return Next::Lagged(missed),
                    Err(RecvError::Closed) => return Next::Closed,
                },
            };
            if stamped.index < self.next {
                continue;
            }
            self.next = stamped.index + 1;
            if self.filter.matches(&stamped.event) {
                return Next::Event(stamped);
            }
        }
    }
}

/// `GET /api/v1/events`: the node's events as a WebSocket (with `Upgrade: websocket`) or
/// as server-sent events.
#[utoipa::path(get, path = "/api/v1/events", tag = "events", params(EventQuery), responses(
    (status = 200, description = "Server-sent events: `id` the event's index, `event` its kind (or `gap`, `dropped`), `data` the event as JSON", content_type = "text/event-stream", body = String),
    (status = 101, description = "A WebSocket of events as JSON text frames; the client may send {\"type\":\"subscribe\",...} and {\"type\":\"command\",...}"),
    Problems
))]
pub(super) async fn events(
    State(api): State<Api>,
    axum::Extension(scope): axum::Extension<Scope>,
    Query(query): Query<EventQuery>,
    request: axum::extract::Request,
) -> Response {
    let wants_socket = request
        .headers()
        .get(axum::http::header::UPGRADE)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let last_event_id = request
        .headers()
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .map(|value| value.trim().parse::<u64>());
    let from = match (query.from, last_event_id) {
        (Some(from), _) => Some(from),
        (None, Some(Ok(last))) => Some(last.saturating_add(1)),
        (None, Some(Err(_))) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Last-Event-ID must be an event index",
            );
        }
        (None, None) => None,
    };
    let follow = query.follow.unwrap_or(true);
    let filter = Filter {
        project: query.project,
        state: query.state,
        agent: query.agent,
        kind: query.kind,
    };
    if wants_socket && !follow {
        return error(
            StatusCode::BAD_REQUEST,
            "follow=false is for server-sent events; a WebSocket always follows",
        );
    }
    let upgrade = if wants_socket {
        let (mut parts, _) = request.into_parts();
        match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(upgrade) => Some(upgrade),
            Err(rejection) => return error(rejection.status(), rejection.body_text()),
        }
    } else {
        None
    };
    let Some(slot) = Slot::take(&api) else {
        api.node
            .metrics
            .event_streams_closed
            .get_or_create(&labels(&[("reason", "full")]))
            .inc();
        let mut refused = error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "this node serves {MAX_EVENT_STREAMS} event streams already; try another node or later"
            ),
        );
        refused.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("5"),
        );
        return refused;
    };
    // Tasks' events travel on their state's topic: a node that streams them joins all.
    api.node.follow_state_events().await;
    let from = if follow {
        from
    } else {
        Some(from.unwrap_or(0))
    };
    let resumed = api.node.events.resume(from);
    let gap = resumed.missed;
    let next = from.unwrap_or_else(|| api.node.events.next_index());
    let reader = Reader::new(resumed, filter, next, follow);
    match upgrade {
        Some(upgrade) => upgrade
            .max_message_size(MAX_CLIENT_MESSAGE_BYTES)
            .on_upgrade(move |socket| socket_stream(socket, slot, reader, gap, scope)),
        None => sse_stream(slot, reader, gap),
    }
}

/// The stream as server-sent events.
fn sse_stream(slot: Slot, reader: Reader, gap: u64) -> Response {
    let start = (gap > 0).then(|| {
        SseEvent::default()
            .event("gap")
            .data(serde_json::json!({"missed": gap}).to_string())
    });
    let state = (slot, reader, start, false);
    let stream =
        futures::stream::unfold(state, move |(slot, mut reader, start, done)| async move {
            if done {
                return None;
            }
            if let Some(first) = start {
                return Some((
                    Ok::<_, std::convert::Infallible>(first),
                    (slot, reader, None, false),
                ));
            }
            match reader.next().await {
                Next::Event(stamped) => {
                    let data = serde_json::to_string(&*stamped).unwrap_or_default();
                    let event = SseEvent::default()
                        .id(stamped.index.to_string())
                        .event(stamped.event.label())
                        .data(data);
                    Some((Ok(event), (slot, reader, None, false)))
                }
                Next::Lagged(missed) => {
                    slot.closed("lagged");
                    let event = SseEvent::default().event("dropped").data(
                        serde_json::json!({"reason": "lagged", "missed": missed}).to_string(),
                    );
                    Some((Ok(event), (slot, reader, None, true)))
                }
                Next::Closed => {
                    slot.closed("ended");
                    None
                }
            }
        });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

/// The stream over a WebSocket: events out, subscriptions and commands in.
async fn socket_stream(
    mut socket: WebSocket,
    slot: Slot,
    mut reader: Reader,
    gap: u64,
    scope: Scope,
) {
    if gap > 0 {
        let text = serde_json::json!({"type": "gap", "missed": gap}).to_string();
        if send(&mut socket, Message::Text(text.into())).await.is_err() {
            slot.closed("stalled");
            return;
        }
    }
    loop {
        tokio::select! {
            next = reader.next() => {
                let message = match next {
                    Next::Event(stamped) => serde_json::to_string(&*stamped).unwrap_or_default(),
                    Next::Lagged(missed) => {
                        slot.closed("lagged");
                        let reason = format!("lagged: fell {missed} events behind");
                        close(&mut socket, &reason).await;
                        return;
                    }
                    Next::Closed => {
                        slot.closed("ended");
                        close(&mut socket, "the node stops").await;
                        return;
                    }
                };
                if send(&mut socket, Message::Text(message.into())).await.is_err() {
                    slot.closed("stalled");
                    return;
                }
            }
            incoming = socket.recv() => {
                let text = match incoming {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Binary(_))) => {
                        reply_error(&mut socket, "send JSON text frames").await;
                        continue;
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        slot.closed("ended");
                        return;
                    }
                };
                let reply = match serde_json::from_str::<ClientMessage>(text.as_str()) {
                    Ok(ClientMessage::Subscribe(filter)) => {
                        let answer = serde_json::json!({"type": "subscribed", "filter": &filter});
                        reader.filter = filter;
                        answer
                    }
                    Ok(ClientMessage::Command(command)) => {
                        let response = run_command(&slot.api, scope, command).await;
                        let status = response.status().as_u16();
                        let body = axum::body::to_bytes(response.into_body(), 64 << 10)
                            .await
                            .ok()
                            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
                            .unwrap_or(serde_json::Value::Null);
                        serde_json::json!({"type": "reply", "status": status, "body": body})
                    }
                    Err(failure) => {
                        slot.api.node.metrics.api_bad_messages.inc();
                        serde_json::json!({"type": "error", "detail": format!(
                            "not a message this stream takes ({failure}); send {{\"type\":\"subscribe\",...}} or {{\"type\":\"command\",...}}"
                        )})
                    }
                };
                if send(&mut socket, Message::Text(reply.to_string().into())).await.is_err() {
                    slot.closed("stalled");
                    return;
                }
            }
        }
    }
}

/// Sends within [`STALL_LIMIT`].
async fn send(socket: &mut WebSocket, message: Message) -> Result<(), ()> {
    match tokio::time::timeout(STALL_LIMIT, socket.send(message)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

async fn reply_error(socket: &mut WebSocket, detail: &str) {
    let text = serde_json::json!({"type": "error", "detail": detail}).to_string();
    let _ = send(socket, Message::Text(text.into())).await;
}

async fn close(socket: &mut WebSocket, reason: &str) {
    let frame = CloseFrame {
        code: CLOSE_DROPPED,
        reason: reason.into(),
    };
    let _ = send(socket, Message::Close(Some(frame))).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{BusEvent, EventBus};
    use crate::metrics::Metrics;

    fn member(n: u64) -> BusEvent {
        BusEvent::Membership {
            member: format!("m{n}"),
            joined: true,
        }
    }

    #[tokio::test]
    async fn a_reader_that_falls_behind_the_log_is_dropped_with_how_far() {
        let (bus, metrics) = (EventBus::new(4), Metrics::default());
        let mut reader = Reader::new(bus.resume(None), Filter::default(), 0, true);
        for n in 0..10 {
            bus.publish(n, member(n), &metrics);
        }
        assert!(matches!(reader.next().await, Next::Lagged(6)));
    }

    #[tokio::test]
    async fn a_reader_resumes_filters_and_ends_with_the_log_when_it_does_not_follow() {
        let (bus, metrics) = (EventBus::new(8), Metrics::default());
        for n in 0..5 {
            bus.publish(n, member(n), &metrics);
        }
        let filter = Filter {
            agent: Some("m3".into()),
            ..Filter::default()
        };
        let mut reader = Reader::new(bus.resume(Some(1)), filter, 1, false);
        match reader.next().await {
            Next::Event(stamped) => assert_eq!(stamped.index, 3),
            _ => panic!("the kept event of m3"),
        }
        assert!(matches!(reader.next().await, Next::Closed));
        // A follower sees the next event once, though it is both kept and live.
        let mut follower = Reader::new(bus.resume(Some(4)), Filter::default(), 4, true);
        bus.publish(5, member(5), &metrics);
        let indexes = [follower.next().await, follower.next().await].map(|next| match next {
            Next::Event(stamped) => stamped.index,
            _ => u64::MAX,
        });
        assert_eq!(indexes, [4, 5]);
    }

    #[test]
    fn client_messages_are_subscriptions_or_agent_commands() {
        let parse = |text: &str| serde_json::from_str::<ClientMessage>(text);
        match parse(r#"{"type":"subscribe","project":"p1"}"#) {
            Ok(ClientMessage::Subscribe(filter)) => {
                assert_eq!(filter.project.as_deref(), Some("p1"));
            }
            _ => panic!("a subscription"),
        }
        assert!(matches!(
            parse(r#"{"type":"command","command":"hold","project":"p1"}"#),
            Ok(ClientMessage::Command(AgentCommand::Hold { .. }))
        ));
        assert!(parse(r#"{"type":"subscribe","colour":"red"}"#).is_err());
        assert!(parse(r#"{"type":"shout"}"#).is_err());
        assert!(parse("not json").is_err());
    }
}
