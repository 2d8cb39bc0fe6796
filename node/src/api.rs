//! The control API on localhost: HTTP/JSON behind a bearer token.
//!
//! The token is written to `DATA_DIR/api.token` (0600) and the bound address to
//! `DATA_DIR/api.addr`; the CLI reads both. Requests without the token get 401;
//! `GET /api/v1/system/health` answers without one, for load balancers and probes.
//!
//! Every error is an RFC 9457 problem (`application/problem+json`: `type`, `title`,
//! `status`, `detail`), whatever refused the request: a handler, the token check, the
//! body limit, an extractor that could not read the path, query or body, or the router
//! (an unknown path, a method the path does not take). [`problems`] turns any error
//! answer that is not one yet into one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;

use crate::access::{Scope, TokenStore};
use crate::driver::projects::ProjectError;
use crate::driver::runtime::{Node, NodeError};

#[derive(Clone)]
struct Api {
    node: Arc<Node>,
    /// The admin token of this run (`DATA_DIR/api.token`).
    token: Arc<String>,
    /// The named, scoped tokens ([`crate::access`]).
    tokens: Arc<std::sync::Mutex<TokenStore>>,
}

/// The scope of the request's bearer token: admin for this run's own token, the named
/// token's scope for one of those, `None` without a token this node knows.
fn scope_of(api: &Api, headers: &HeaderMap) -> Option<Scope> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))?;
    if constant_time_eq(bearer.as_bytes(), api.token.as_bytes()) {
        return Some(Scope::Admin);
    }
    api.tokens
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .scope_of(bearer)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Every route needs a bearer token whose scope covers it ([`crate::access::needed`]):
/// requests without one get 401, and with too narrow a one 403, before any handler or
/// extractor runs (a large body is not even read).
async fn require_token(
    State(api): State<Api>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(scope) = scope_of(&api, request.headers()) else {
        return unauthorised(&api);
    };
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(
            || request.uri().path().to_string(),
            |m| m.as_str().to_string(),
        );
    let method = request.method().as_str().to_string();
    let needed = crate::access::needed(&method, &route);
    if scope < needed {
        api.node.metrics.api_forbidden.inc();
        return error(
            StatusCode::FORBIDDEN,
            format!("this API token has scope {scope}; {method} {route} needs {needed}"),
        );
    }
    next.run(request).await
}

fn unauthorised(api: &Api) -> Response {
    api.node.metrics.api_unauthorized.inc();
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong bearer token; it is in DATA_DIR/api.token",
    );
    response.headers_mut().insert(
        axum::http::header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer"),
    );
    response
}

async fn health() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

async fn status(State(api): State<Api>) -> Response {
    Json(api.node.status().await).into_response()
}

async fn members(State(api): State<Api>) -> Response {
    Json(api.node.members().await).into_response()
}

async fn hierarchy(State(api): State<Api>) -> Response {
    Json(api.node.hierarchy().await).into_response()
}

/// The media type of an RFC 9457 problem.
pub const PROBLEM_JSON: &str = "application/problem+json";
/// Most bytes of a non-problem error answer [`problems`] reads to carry as the detail.
const MAX_WRAPPED_ERROR_BYTES: usize = 4 * 1024;

/// An RFC 9457 problem: `about:blank`, so the title is the status's own phrase, and the
/// detail says what went wrong with this request.
fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": message.to_string(),
    });
    (
        status,
        [(axum::http::header::CONTENT_TYPE, PROBLEM_JSON)],
        body.to_string(),
    )
        .into_response()
}

/// Makes every error answer a problem: one that is not (an extractor's or the router's
/// plain-text rejection) is rewritten with its text as the detail.
async fn problems(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_problem = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes() == PROBLEM_JSON.as_bytes());
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_WRAPPED_ERROR_BYTES)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_string())
        .unwrap_or_default();
    let detail = if text.is_empty() {
        match status {
            StatusCode::NOT_FOUND => "no such route in this API (see /api/v1/...)".to_string(),
            StatusCode::METHOD_NOT_ALLOWED => "this route does not take that method".to_string(),
            _ => status.canonical_reason().unwrap_or("error").to_string(),
        }
    } else {
        text
    };
    let mut problem = error(status, detail);
    // Keep what told the client how to go on (Allow, WWW-Authenticate, Retry-After).
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            problem.headers_mut().insert(name, value.clone());
        }
    }
    problem
}

/// An unknown route.
async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such route in this API (see /api/v1/...)",
    )
}

/// A project request's failure as an answer: the request's own fault is a 400 (a 404
/// for an unknown project, a 403 when the requester may not change it); a mesh that
/// cannot take it right now (no president, not committed) is a 503, worth retrying
/// with the same `Idempotency-Key`.
fn project_error(failure: ProjectError) -> Response {
    let status = match &failure {
        ProjectError::NoSuchProject(_) => StatusCode::NOT_FOUND,
        ProjectError::Refused(_) | ProjectError::PolicyDenied(_) => StatusCode::FORBIDDEN,
        ProjectError::NotAwaitingApproval { .. } | ProjectError::NoExecutor(_) => {
            StatusCode::CONFLICT
        }
        failure if failure.is_client_error() => StatusCode::BAD_REQUEST,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, failure)
}

/// Largest project spec accepted, in bytes.
pub const MAX_SPEC_BODY_BYTES: usize = 1 << 20;

/// The header that carries a client's request id: a submission retried with the same
/// one returns the first project.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// The header that carries an operator's reason to override soft policy rules.
pub const POLICY_OVERRIDE: &str = "x-policy-override";

async fn submit_project(
    State(api): State<Api>,
    headers: axum::http::HeaderMap,
    body: String,
) -> Response {
    if body.len() > MAX_SPEC_BODY_BYTES {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the spec is larger than 1 MiB",
        );
    }
    // A header that is there but not plain text is refused by its name.
    let header = |name: &'static str| match headers.get(name).map(|value| value.to_str()) {
        None => Ok(None),
        Some(Ok(value)) => Ok(Some(value)),
        Some(Err(_)) => Err(name),
    };
    let submission = match (header(IDEMPOTENCY_KEY), header(POLICY_OVERRIDE)) {
        (Ok(request), Ok(override_reason)) => crate::driver::projects::Submission {
            request,
            override_reason,
        },
        (Err(name), _) | (_, Err(name)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the {name} header is not plain text"),
            );
        }
    };
    match api.node.submit_project(&body, submission).await {
        Ok(id) => (StatusCode::CREATED, Json(serde_json::json!({"id": id}))).into_response(),
        Err(reason) => project_error(reason),
    }
}

async fn list_projects(State(api): State<Api>) -> Response {
    Json(api.node.projects().await).into_response()
}

#[derive(Deserialize)]
struct ShowQuery {
    /// Add the model use of the project's tasks (asks every state for its tasks).
    #[serde(default)]
    usage: bool,
}

async fn show_project(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(query): Query<ShowQuery>,
) -> Response {
    match api.node.project(&id).await {
        Some(mut project) => {
            if query.usage {
                let tasks = api.node.project_tasks_anywhere(&id).await;
                project.usage = crate::driver::projects::ProjectUsage::of(&tasks);
            }
            Json(project).into_response()
        }
        None => error(StatusCode::NOT_FOUND, format!("no project {id}")),
    }
}

async fn project_tasks(State(api): State<Api>, Path(id): Path<String>) -> Response {
    Json(api.node.project_tasks_anywhere(&id).await).into_response()
}

async fn project_artifacts(State(api): State<Api>, Path(id): Path<String>) -> Response {
    Json(api.node.project_artifacts(&id).await).into_response()
}

/// The bytes of one task's artefact, checked against its committed digest: 404 when the
/// task has no committed result, 503 when no holder answered with it.
async fn task_artifact(
    State(api): State<Api>,
    Path((id, task)): Path<(String, String)>,
) -> Response {
    use crate::driver::artifacts::ArtifactFailure;
    match api.node.artifact(&id, &task).await {
        Ok(bytes) => (
            [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
            bytes,
        )
            .into_response(),
        Err(failure @ ArtifactFailure::NoResult(_)) => error(StatusCode::NOT_FOUND, failure),
        Err(failure) => error(StatusCode::SERVICE_UNAVAILABLE, failure),
    }
}

#[derive(Deserialize)]
struct PhaseChange {
    action: String,
    #[serde(default)]
    note: Option<String>,
}

async fn change_phase(
    State(api): State<Api>,
    Path(id): Path<String>,
    Json(change): Json<PhaseChange>,
) -> Response {
    match api
        .node
        .change_project(&id, &change.action, change.note.as_deref())
        .await
    {
        Ok(()) if change.action == "archive" => {
            Json(serde_json::json!({"id": id, "status": "archived"})).into_response()
        }
        Ok(()) => match api.node.project(&id).await {
            Some(project) => Json(project).into_response(),
            None => Json(serde_json::json!({"id": id})).into_response(),
        },
        Err(reason) => project_error(reason),
    }
}

#[derive(Deserialize)]
struct TokenQuery {
    ttl_secs: Option<u64>,
    uses: Option<u32>,
}

async fn create_token(State(api): State<Api>, Query(query): Query<TokenQuery>) -> Response {
    let ttl = Duration::from_secs(query.ttl_secs.unwrap_or(3_600).clamp(1, 30 * 24 * 3_600));
    let uses = query.uses.unwrap_or(1);
    if uses == 0 || uses > crate::token::MAX_TOKEN_USES {
        let max = crate::token::MAX_TOKEN_USES;
        return error(
            StatusCode::BAD_REQUEST,
            format!("uses must be 1 to {max}, not {uses}"),
        );
    }
    match api.node.create_token(ttl, uses) {
        Ok(token) => Json(serde_json::json!({"token": token, "uses": uses})).into_response(),
        Err(failure) => error(StatusCode::INTERNAL_SERVER_ERROR, failure),
    }
}

async fn list_tokens(State(api): State<Api>) -> Response {
    Json(api.node.join_tokens().await).into_response()
}

fn admin_error(failure: crate::driver::admin::AdminError) -> Response {
    let status =
        StatusCode::from_u16(failure.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error(status, failure)
}

/// `POST /api/v1/tokens/revoke` with the token's text as the body.
async fn revoke_token(State(api): State<Api>, body: String) -> Response {
    if body.len() > crate::token::MAX_TOKEN_CHARS {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "that is no join token: too long",
        );
    }
    match api.node.revoke_token(&body).await {
        Ok(()) => Json(serde_json::json!({"revoked": true})).into_response(),
        Err(failure) => admin_error(failure),
    }
}

#[derive(Deserialize)]
struct NewApiToken {
    name: String,
    scope: String,
}

fn access_error(failure: &crate::access::AccessError) -> Response {
    let status = if failure.is_client_error() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    error(status, failure)
}

/// `POST /api/v1/api-tokens` with `{"name", "scope"}`: a new named token; its secret is
/// in the answer and nowhere else.
async fn create_api_token(State(api): State<Api>, Json(new): Json<NewApiToken>) -> Response {
    let scope = match Scope::parse(&new.scope) {
        Ok(scope) => scope,
        Err(failure) => return access_error(&failure),
    };
    let mut secret = [0u8; 32];
    if let Err(failure) = getrandom::fill(&mut secret) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, failure);
    }
    let secret: String = secret.iter().map(|byte| format!("{byte:02x}")).collect();
    let created = api
        .tokens
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .create(&new.name, scope, &secret, crate::driver::runtime::now_ms());
    match created {
        Ok(()) => Json(serde_json::json!({"name": new.name, "scope": scope, "token": secret}))
            .into_response(),
        Err(failure) => access_error(&failure),
    }
}

async fn list_api_tokens(State(api): State<Api>) -> Response {
    let tokens = api
        .tokens
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .list();
    let listed: Vec<serde_json::Value> = tokens
        .iter()
        .map(|token| {
            serde_json::json!({"name": token.name, "scope": token.scope, "created_ms": token.created_ms})
        })
        .collect();
    Json(listed).into_response()
}

async fn revoke_api_token(State(api): State<Api>, Path(name): Path<String>) -> Response {
    let revoked = api
        .tokens
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .revoke(&name);
    match revoked {
        Ok(()) => Json(serde_json::json!({"revoked": name})).into_response(),
        Err(crate::access::AccessError::NoSuchToken(name)) => error(
            StatusCode::NOT_FOUND,
            crate::access::AccessError::NoSuchToken(name),
        ),
        Err(failure) => access_error(&failure),
    }
}

/// `GET /api/v1/policy`: the policy in force.
async fn show_policy(State(api): State<Api>) -> Response {
    match api.node.policy_view().await {
        Some(view) => Json(view).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "no policy is in force; apply one with `aamas policy apply FILE`",
        ),
    }
}

/// `PUT /api/v1/policy` with the document as the body: puts it in force.
async fn apply_policy(State(api): State<Api>, body: String) -> Response {
    match api.node.apply_policy(&body).await {
        Ok(version) => Json(serde_json::json!({"version": version})).into_response(),
        Err(failure) => admin_error(failure),
    }
}

/// `POST /api/v1/policy/check` with a document as the body: whether it would apply.
async fn check_policy(body: String) -> Response {
    match crate::governance::policy::parse(&body) {
        Ok(policy) => Json(crate::driver::policy::summary(&policy)).into_response(),
        Err(failure) => error(StatusCode::BAD_REQUEST, failure),
    }
}

/// `GET /api/v1/performance`: this node's figures as a worker and the mesh's phase
/// transitions.
async fn performance(State(api): State<Api>) -> Response {
    Json(api.node.performance().await).into_response()
}

async fn list_alerts(State(api): State<Api>) -> Response {
    Json(api.node.alerts().await).into_response()
}

#[derive(Deserialize)]
struct AckBody {
    #[serde(default)]
    note: String,
}

/// `POST /api/v1/alerts/{id}/ack` with `{"note"}`.
async fn ack_alert(
    State(api): State<Api>,
    Path(id): Path<u64>,
    Json(body): Json<AckBody>,
) -> Response {
    match api.node.ack_alert(id, &body.note).await {
        Ok(()) => Json(serde_json::json!({"acknowledged": id})).into_response(),
        Err(failure) => admin_error(failure),
    }
}

async fn list_resources(State(api): State<Api>) -> Response {
    Json(api.node.resources().await).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitBody {
    amount: u64,
    per: aamas_consensus::resources::Period,
    #[serde(default = "hard_by_default")]
    hard: bool,
}

fn hard_by_default() -> bool {
    true
}

/// `PUT /api/v1/resources/{state}/{resource}` with `{"amount", "per", "hard"}`: sets
/// the state's limit (the president's operator only).
async fn set_limit(
    State(api): State<Api>,
    Path((state, resource)): Path<(String, String)>,
    Json(body): Json<LimitBody>,
) -> Response {
    let resource = match resource.parse::<aamas_consensus::resources::Resource>() {
        Ok(resource) => resource,
        Err(failure) => return error(StatusCode::NOT_FOUND, failure),
    };
    let limit = aamas_consensus::resources::Limit {
        amount: body.amount,
        period: body.per,
        hard: body.hard,
    };
    match api.node.set_limit(&state, resource, Some(limit)).await {
        Ok(()) => {
            Json(serde_json::json!({"state": state, "resource": resource.name()})).into_response()
        }
        Err(failure) => admin_error(failure),
    }
}

/// `DELETE /api/v1/resources/{state}/{resource}`: removes the state's limit.
async fn remove_limit(
    State(api): State<Api>,
    Path((state, resource)): Path<(String, String)>,
) -> Response {
    let resource = match resource.parse::<aamas_consensus::resources::Resource>() {
        Ok(resource) => resource,
        Err(failure) => return error(StatusCode::NOT_FOUND, failure),
    };
    match api.node.set_limit(&state, resource, None).await {
        Ok(()) => {
            Json(serde_json::json!({"state": state, "removed": resource.name()})).into_response()
        }
        Err(failure) => admin_error(failure),
    }
}

async fn list_resource_requests(State(api): State<Api>) -> Response {
    Json(api.node.resource_requests().await).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    #[serde(default)]
    amount: Option<u64>,
    #[serde(default)]
    note: String,
}

/// `POST /api/v1/resources/requests/{id}/approve` with `{"amount", "note"}`.
async fn approve_resource_request(
    State(api): State<Api>,
    Path(id): Path<u64>,
    Json(body): Json<DecisionBody>,
) -> Response {
    let decided = api
        .node
        .decide_resource_request(id, true, body.amount, &body.note)
        .await;
    match decided {
        Ok(()) => Json(serde_json::json!({"approved": id})).into_response(),
        Err(failure) => admin_error(failure),
    }
}

/// `POST /api/v1/resources/requests/{id}/deny` with `{"note"}`.
async fn deny_resource_request(
    State(api): State<Api>,
    Path(id): Path<u64>,
    Json(body): Json<DecisionBody>,
) -> Response {
    let decided = api
        .node
        .decide_resource_request(id, false, None, &body.note)
        .await;
    match decided {
        Ok(()) => Json(serde_json::json!({"denied": id})).into_response(),
        Err(failure) => admin_error(failure),
    }
}

/// `DELETE /api/v1/members/{id}`: evicts the member.
async fn evict_member(State(api): State<Api>, Path(id): Path<String>) -> Response {
    match api.node.evict_member(&id).await {
        Ok(()) => Json(serde_json::json!({"evicted": id})).into_response(),
        Err(failure) => admin_error(failure),
    }
}

async fn metrics(State(api): State<Api>) -> Response {
    let status = api.node.status().await;
    api.node
        .metrics
        .federal_term
        .set(i64::try_from(status.term).unwrap_or(i64::MAX));
    let text = api.node.metrics.encode();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn write_private(path: &std::path::Path, contents: &str) -> Result<(), NodeError> {
    let io = |source| NodeError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    use std::io::Write as _;
    options
        .open(path)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .map_err(io)
}

/// Starts the API on `addr`; returns the bound address and the serving task.
pub async fn serve(
    node: Arc<Node>,
    addr: SocketAddr,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), NodeError> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|error| NodeError::Invalid(error.to_string()))?;
    let token: String = secret.iter().map(|byte| format!("{byte:02x}")).collect();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| NodeError::Io {
            path: std::path::PathBuf::from(addr.to_string()),
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| NodeError::Io {
        path: std::path::PathBuf::from(addr.to_string()),
        source,
    })?;
    let tokens = TokenStore::load(&node.data_dir)
        .map_err(|failure| NodeError::Invalid(format!("the API tokens: {failure}")))?;
    write_private(&node.data_dir.join("api.token"), &token)?;
    write_private(&node.data_dir.join("api.addr"), &bound.to_string())?;
    let app = Router::new()
        .route("/api/v1/system/status", get(status))
        .route("/api/v1/members", get(members))
        .route("/api/v1/hierarchy", get(hierarchy))
        .route("/api/v1/members/{id}", axum::routing::delete(evict_member))
        .route("/api/v1/tokens", post(create_token).get(list_tokens))
        .route("/api/v1/tokens/revoke", post(revoke_token))
        .route("/api/v1/policy", get(show_policy).put(apply_policy))
        .route("/api/v1/policy/check", post(check_policy))
        .route("/api/v1/alerts", get(list_alerts))
        .route("/api/v1/performance", get(performance))
        .route("/api/v1/alerts/{id}/ack", post(ack_alert))
        .route("/api/v1/resources", get(list_resources))
        .route("/api/v1/resources/requests", get(list_resource_requests))
        .route(
            "/api/v1/resources/requests/{id}/approve",
            post(approve_resource_request),
        )
        .route(
            "/api/v1/resources/requests/{id}/deny",
            post(deny_resource_request),
        )
        .route(
            "/api/v1/resources/{state}/{resource}",
            put(set_limit).delete(remove_limit),
        )
        .route(
            "/api/v1/api-tokens",
            post(create_api_token).get(list_api_tokens),
        )
        .route(
            "/api/v1/api-tokens/{name}",
            axum::routing::delete(revoke_api_token),
        )
        .route("/api/v1/projects", post(submit_project).get(list_projects))
        .route("/api/v1/projects/{id}", get(show_project))
        .route("/api/v1/projects/{id}/phase", put(change_phase))
        .route("/api/v1/projects/{id}/tasks", get(project_tasks))
        .route("/api/v1/projects/{id}/artifacts", get(project_artifacts))
        .route("/api/v1/projects/{id}/artifacts/{task}", get(task_artifact))
        .layer(axum::extract::DefaultBodyLimit::max(
            MAX_SPEC_BODY_BYTES + 1024,
        ))
        .route("/metrics", get(metrics));
    let api = Api {
        node,
        token: Arc::new(token),
        tokens: Arc::new(std::sync::Mutex::new(tokens)),
    };
    let app = app
        .route_layer(axum::middleware::from_fn_with_state(
            api.clone(),
            require_token,
        ))
        // Added after the token check: it needs none.
        .route("/api/v1/system/health", get(health))
        .fallback(not_found)
        .layer(axum::middleware::from_fn(problems))
        .with_state(api);
    let serving = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "control API stopped");
        }
    });
    Ok((bound, serving))
}
