//! A local OpenAI-compatible chat server for the multi-process tests: real HTTP on a
//! loopback port, answering `POST /v1/chat/completions` by rules the test gives, and
//! recording every request. No model and no network: the replies are scripted, and
//! what is tested is what the mesh does with them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};

/// One chat request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The system message, if any.
    pub system: String,
    /// The user message.
    pub user: String,
}

/// The rule that answers a request: the reply's text.
pub type Rule = dyn Fn(&Seen) -> String + Send + Sync;

struct Shared {
    rule: Box<Rule>,
    seen: Mutex<Vec<Seen>>,
}

/// A running mock server; it stops with the test process.
pub struct MockLlm {
    address: SocketAddr,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MockLlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockLlm")
            .field("address", &self.address)
            .finish()
    }
}

impl MockLlm {
    /// Starts the server on a free loopback port, on its own thread and runtime.
    pub fn start(rule: impl Fn(&Seen) -> String + Send + Sync + 'static) -> Self {
        let shared = Arc::new(Shared {
            rule: Box::new(rule),
            seen: Mutex::new(Vec::new()),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the mock llm");
        listener.set_nonblocking(true).expect("nonblocking");
        let address = listener.local_addr().expect("its address");
        let state = shared.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let app = axum::Router::new()
                    .route("/v1/chat/completions", post(chat))
                    .with_state(state);
                let _ = axum::serve(listener, app).await;
            });
        });
        Self { address, shared }
    }

    /// The API root the nodes are given (`AAMAS_LLM_BASE_URL`).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.address)
    }

    /// The environment that points a node at this server, with prices.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AAMAS_LLM_BASE_URL".into(), self.base_url()),
            ("AAMAS_LLM_MODEL".into(), "mock-model".into()),
            ("AAMAS_LLM_PRICE_IN".into(), "2".into()),
            ("AAMAS_LLM_PRICE_OUT".into(), "8".into()),
        ]
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().expect("not poisoned").clone()
    }
}

async fn chat(State(shared): State<Arc<Shared>>, Json(body): Json<Value>) -> Json<Value> {
    let message = |role: &str| -> String {
        body["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["role"] == role)
            .filter_map(|m| m["content"].as_str())
            .collect::<Vec<_>>()
            .join("\n")
    };
    let seen = Seen {
        system: message("system"),
        user: message("user"),
    };
    let reply = (shared.rule)(&seen);
    let prompt_tokens = (seen.system.len() + seen.user.len()) / 4 + 1;
    let completion_tokens = reply.len() / 4 + 1;
    shared.seen.lock().expect("not poisoned").push(seen);
    Json(json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "model": body["model"],
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": reply},
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens
        }
    }))
}
