//! The LLM executor: `POST {base_url}/chat/completions` (HTTP/1.1, plain or rustls),
//! retries with backoff.

use std::fmt;
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
use tokio::time::Instant;

use super::{
    ExecError, Execution, TokenUsage, failed, misconfigured, one_line, timed_out, unavailable,
};

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

/// Environment variable holding the LLM endpoint, e.g. `http://127.0.0.1:11434/v1`.
pub const ENV_LLM_BASE_URL: &str = "AAMAS_LLM_BASE_URL";
/// Environment variable holding the model name.
pub const ENV_LLM_MODEL: &str = "AAMAS_LLM_MODEL";
/// Environment variable holding the API key (optional: local servers need none).
pub const ENV_LLM_API_KEY: &str = "AAMAS_LLM_API_KEY";
/// Environment variable holding the price of a million prompt tokens of the model
/// (optional; any unit, e.g. USD: a task's cost is kept in millionths of it).
pub const ENV_LLM_PRICE_IN: &str = "AAMAS_LLM_PRICE_IN";
/// Environment variable holding the price of a million completion tokens.
pub const ENV_LLM_PRICE_OUT: &str = "AAMAS_LLM_PRICE_OUT";

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
    /// Price of a million prompt tokens and of a million completion tokens, for the
    /// cost kept with each result; unset prices count as 0. Not a number or negative is
    /// reported as [`ExecError::Misconfigured`] by each LLM task.
    pub prices: (Option<f64>, Option<f64>),
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
            prices: (
                present(ENV_LLM_PRICE_IN).map(|price| price.parse().unwrap_or(f64::NAN)),
                present(ENV_LLM_PRICE_OUT).map(|price| price.parse().unwrap_or(f64::NAN)),
            ),
        })
    }

    /// The cost of `usage` in millionths of the price unit.
    fn cost_micros(&self, prompt_tokens: u64, completion_tokens: u64) -> u64 {
        // Prices are per million tokens, the cost in millionths: tokens times price.
        let cost = prompt_tokens as f64 * self.prices.0.unwrap_or(0.0)
            + completion_tokens as f64 * self.prices.1.unwrap_or(0.0);
        // Saturating float-to-int conversion: a huge cost stays u64::MAX.
        cost.round() as u64
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
            .field("prices", &self.prices)
            .finish()
    }
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A validated [`LlmConfig`] with its HTTP client.
pub(super) struct LlmEndpoint {
    pub(super) config: LlmConfig,
    /// `{base_url}/chat/completions`.
    url: Uri,
    /// `url` without credentials, for messages.
    pub(super) url_text: String,
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
    pub(super) fn new(config: LlmConfig) -> Result<Self, ExecError> {
        for (name, price) in [
            (ENV_LLM_PRICE_IN, config.prices.0),
            (ENV_LLM_PRICE_OUT, config.prices.1),
        ] {
            if price.is_some_and(|price| !price.is_finite() || price < 0.0) {
                return Err(misconfigured(format!(
                    "{name} must be a price of a million tokens: a number, 0 or more"
                )));
            }
        }
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

    pub(super) async fn complete(
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
                    Ok(Ok(mut execution)) => {
                        if let Some(usage) = &mut execution.usage {
                            usage.model.clone_from(&self.config.model);
                            usage.cost_micros = self
                                .config
                                .cost_micros(usage.prompt_tokens, usage.completion_tokens);
                        }
                        return Ok(execution);
                    }
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
        ExecError::Unavailable { reason, used } => {
            unavailable(format!("{reason} ({note})")).using(used)
        }
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
                    model: String::new(),
                    prompt_tokens: prompt.unwrap_or(0),
                    completion_tokens: completion.unwrap_or(0),
                    cost_micros: 0,
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
        digest: None,
        usage,
        cpu_ms: 0,
        memory_kib_s: 0,
        stored_bytes: 0,
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use aamas_consensus::resources::Usage;

    use std::net::SocketAddr;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    use axum::extract::State;
    use axum::http::{HeaderMap as AxumHeaders, StatusCode as AxumStatus};
    use axum::response::{IntoResponse, Response};

    use crate::exec::testing::LONG;
    use crate::exec::{ExecutorSet, Executors};
    use crate::spec::ExecutorSpec;

    fn llm_spec() -> ExecutorSpec {
        ExecutorSpec::Llm {
            system: Some("be brief".to_owned()),
            max_tokens: 64,
            context: Vec::new(),
        }
    }

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
            prices: (Some(2.5), Some(10.0)),
        }
    }

    async fn complete(config: LlmConfig, timeout: Duration) -> Result<Execution, ExecError> {
        Executors::new(Some(config), ExecutorSet::default())
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
                digest: None,
                usage: Some(TokenUsage {
                    model: "test-model".to_owned(),
                    prompt_tokens: 12,
                    completion_tokens: 5,
                    // 12 x 2.5 + 5 x 10 millionths.
                    cost_micros: 80,
                }),
                cpu_ms: 0,
                memory_kib_s: 0,
                stored_bytes: 0,
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
            context: Vec::new(),
        };
        Executors::new(Some(config), ExecutorSet::default())
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
        assert_eq!(
            error,
            ExecError::Timeout {
                after_ms: 300,
                used: Usage::default()
            }
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(server.requests(), 1);
    }

    #[tokio::test]
    async fn llm_slow_requests_are_retried_then_given_up() {
        let (server, address) = serve(Behaviour::Hang).await;
        let mut config = config(address);
        config.request_timeout = Duration::from_millis(100);
        let error = complete(config, LONG).await.unwrap_err();
        let ExecError::Unavailable { reason, .. } = &error else {
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
        let ExecError::Unavailable { reason, .. } = &error else {
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
            let ExecError::Failed { reason, .. } = &error else {
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
        let ExecError::Failed { reason, .. } = &error else {
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
                ),
                used: Usage::default(),
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
        let ExecError::Unavailable { reason, .. } = &error else {
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
        let error = Executors::new(None, ExecutorSet::default())
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
        assert!(!Executors::new(None, ExecutorSet::default()).has_llm());
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
            let executors = Executors::new(Some(config.clone()), ExecutorSet::default());
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
        assert!(Executors::new(Some(good), ExecutorSet::default()).has_llm());
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
        let printed = format!(
            "{config:?} {:?}",
            Executors::new(Some(config.clone()), ExecutorSet::default())
        );
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
        assert_eq!(local.prices, (None, None));
        let priced = LlmConfig::from_lookup(|name| match name {
            "AAMAS_LLM_BASE_URL" => Some("http://127.0.0.1:11434/v1".to_owned()),
            "AAMAS_LLM_MODEL" => Some("m".to_owned()),
            "AAMAS_LLM_PRICE_IN" => Some("0.15".to_owned()),
            "AAMAS_LLM_PRICE_OUT" => Some("lots".to_owned()),
            _ => None,
        })
        .unwrap();
        assert_eq!(priced.prices.0, Some(0.15));
        assert!(
            !Executors::new(Some(priced), ExecutorSet::default()).has_llm(),
            "a bad price is refused"
        );
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
}
