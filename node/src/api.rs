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
use axum::{Json, Router};
use serde::Deserialize;

use crate::access::{Scope, TokenStore};
use crate::driver::projects::ProjectError;
use crate::driver::runtime::{Node, NodeError};

mod dashboard;
mod events;

#[derive(Clone)]
struct Api {
    node: Arc<Node>,
    /// The OpenAPI document of this API, as JSON (set once the router is built).
    openapi: Arc<std::sync::OnceLock<String>>,
    /// The admin token of this run (`DATA_DIR/api.token`).
    token: Arc<String>,
    /// The named, scoped tokens ([`crate::access`]).
    tokens: Arc<std::sync::Mutex<TokenStore>>,
    /// Event streams open now (at most [`events::MAX_EVENT_STREAMS`]).
    streams: Arc<std::sync::atomic::AtomicUsize>,
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
    // A handler that acts by what its body asks (`/api/v1/agents/command`) checks more.
    let mut request = request;
    request.extensions_mut().insert(scope);
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

#[utoipa::path(get, path = "/api/v1/system/health", tag = "system", security(()), responses((status = 200, description = "The node answers", body = serde_json::Value)))]
async fn health() -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

#[utoipa::path(get, path = "/api/v1/system/status", tag = "system", responses((status = 200, description = "This node: peer id, roles, president, members", body = crate::driver::runtime::Status), Problems))]
async fn status(State(api): State<Api>) -> Response {
    Json(api.node.status().await).into_response()
}

#[utoipa::path(get, path = "/api/v1/members", tag = "members", params(Page), responses((status = 200, description = "The mesh's members, their states, roles and liveness, by peer id; a Link header names the next page", body = Vec<crate::driver::runtime::MemberView>), Problems))]
async fn members(State(api): State<Api>, Query(page): Query<Page>) -> Response {
    let members = api.node.members().await;
    paged("/api/v1/members", members, |m| m.peer_id.clone(), &page)
}

#[utoipa::path(get, path = "/api/v1/hierarchy", tag = "members", responses((status = 200, description = "President, governors, mayors and workers", body = crate::driver::runtime::Hierarchy), Problems))]
async fn hierarchy(State(api): State<Api>) -> Response {
    Json(api.node.hierarchy().await).into_response()
}

/// Most items one page of a list holds, and how many it holds unless `limit` says.
pub const MAX_PAGE: usize = 10_000;

/// Which page of a list: at most `limit` items after the cursor `after` (the `next` of
/// the page before, from its `Link` header).
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct Page {
    /// Items per page, 1 to 10,000 (10,000 when left out).
    limit: Option<usize>,
    /// The cursor of the previous page's last item (opaque; from its `Link` header).
    after: Option<String>,
}

/// One page of `items`, in the order of their cursor (`key`), as JSON; a `Link: <...>;
/// rel="next"` header when more follow. Lists are sorted by their ids, so a page asked
/// for again holds the same items, less those removed meanwhile.
fn paged<T: serde::Serialize>(
    path: &str,
    items: Vec<T>,
    key: impl Fn(&T) -> String,
    page: &Page,
) -> Response {
    let limit = page.limit.unwrap_or(MAX_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("limit is 1 to {MAX_PAGE}, not {limit}"),
        );
    }
    let mut keyed: Vec<(String, T)> = items.into_iter().map(|item| (key(&item), item)).collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    let start = page
        .after
        .as_ref()
        .map_or(0, |after| keyed.partition_point(|(key, _)| key <= after));
    let rest = keyed.len().saturating_sub(start);
    let taken: Vec<(String, T)> = keyed.into_iter().skip(start).take(limit).collect();
    let next = (rest > limit)
        .then(|| taken.last().map(|(key, _)| key.clone()))
        .flatten();
    let body: Vec<T> = taken.into_iter().map(|(_, item)| item).collect();
    let mut response = Json(body).into_response();
    if let Some(next) = next {
        let link = format!(
            "<{path}?limit={limit}&after={}>; rel=\"next\"",
            percent_encode(&next)
        );
        if let Ok(value) = axum::http::HeaderValue::from_str(&link) {
            response
                .headers_mut()
                .insert(axum::http::header::LINK, value);
        }
    }
    response
}

/// `text` with every byte but unreserved ones (RFC 3986) percent-encoded.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (byte as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// A numeric id as a cursor that sorts as the number does.
fn numeric_key(id: u64) -> String {
    format!("{id:020}")
}

/// An RFC 9457 problem: what every error answer of this API is.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `about:blank`: the title is the status's own phrase.
    #[serde(rename = "type")]
    pub kind: String,
    /// The HTTP status's phrase.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
}

/// The OpenAPI document's frame: its info, the bearer scheme every route but the health
/// check needs, and the problem schema. The paths come from the handlers' annotations.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "AAMAS control API",
        description = "One node's control API: the mesh's members and hierarchy, projects, \
                       policy, resources, alerts and access. Every error is an RFC 9457 \
                       problem (application/problem+json).",
        license(name = "Apache-2.0")
    ),
    components(schemas(Problem)),
    security(("bearer" = [])),
    modifiers(&BearerScheme)
)]
struct ApiDoc;

/// Adds the bearer token scheme (`DATA_DIR/api.token`, or a named API token).
struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The node's token (DATA_DIR/api.token) or a named API token",
                    ))
                    .build(),
            ),
        );
    }
}

/// `GET /api/v1/openapi.json`: this API's OpenAPI 3.1 document, generated from the code.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "system", responses((status = 200, description = "The OpenAPI document", body = serde_json::Value)))]
async fn openapi_json(State(api): State<Api>) -> Response {
    match api.openapi.get() {
        Some(document) => (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            document.clone(),
        )
            .into_response(),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the document is not built yet",
        ),
    }
}

/// This API's OpenAPI document (what `GET /api/v1/openapi.json` serves).
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    split().2
}

/// The routes that need a token, those that do not (the health check), and the
/// document of both.
fn split() -> (Router<Api>, Router<Api>, utoipa::openapi::OpenApi) {
    let (protected, mut document) = router().split_for_parts();
    let (open, open_document) = utoipa_axum::router::OpenApiRouter::new()
        .routes(utoipa_axum::routes!(health))
        .routes(utoipa_axum::routes!(dashboard::page))
        .routes(utoipa_axum::routes!(dashboard::script))
        .routes(utoipa_axum::routes!(dashboard::style))
        .split_for_parts();
    document.merge(open_document);
    (protected, open, document)
}

/// The routes that need a token, and their documentation; the token check, limits and
/// state are put on by [`serve`].
fn router() -> utoipa_axum::router::OpenApiRouter<Api> {
    use utoipa::OpenApi as _;
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(status))
        .routes(routes!(members))
        .routes(routes!(hierarchy))
        .routes(routes!(evict_member))
        .routes(routes!(create_token, list_tokens))
        .routes(routes!(revoke_token))
        .routes(routes!(show_policy, apply_policy))
        .routes(routes!(check_policy))
        .routes(routes!(list_alerts))
        .routes(routes!(performance))
        .routes(routes!(ack_alert))
        .routes(routes!(list_resources))
        .routes(routes!(list_resource_requests))
        .routes(routes!(approve_resource_request))
        .routes(routes!(deny_resource_request))
        .routes(routes!(set_limit, remove_limit, get_limit))
        .routes(routes!(create_api_token, list_api_tokens))
        .routes(routes!(revoke_api_token))
        .routes(routes!(submit_project, list_projects))
        .routes(routes!(show_project))
        .routes(routes!(change_phase))
        .routes(routes!(project_tasks))
        .routes(routes!(project_artifacts))
        .routes(routes!(task_artifact))
        .routes(routes!(openapi_json))
        .routes(routes!(system_metrics))
        .routes(routes!(governor_status))
        .routes(routes!(governor_performance))
        .routes(routes!(governor_tasks, governor_task_list))
        .routes(routes!(governor_resources))
        .routes(routes!(agent_command))
        .routes(routes!(events::events))
        .layer(axum::extract::DefaultBodyLimit::max(
            MAX_SPEC_BODY_BYTES + 1024,
        ))
        .routes(routes!(metrics))
}

/// The error answers every route may give, as the document lists them.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum Problems {
    /// The request's fault (a bad body, path or query, no or a wrong token, an unknown
    /// id), as an RFC 9457 problem.
    #[response(status = "4XX", content_type = "application/problem+json")]
    Client(Problem),
    /// The mesh could not take it now (no president, not committed), as a problem.
    #[response(status = "5XX", content_type = "application/problem+json")]
    Server(Problem),
}

/// `GET /api/v1/system/metrics`: a JSON summary of the mesh as this node sees it (seed
/// §10.1), for those who do not scrape `/metrics`.
#[utoipa::path(get, path = "/api/v1/system/metrics", tag = "system", responses((status = 200, description = "Members, task slots, open tasks, projects, phase transitions, project times and this node's attempts", body = serde_json::Value), Problems))]
async fn system_metrics(State(api): State<Api>) -> Response {
    let status = api.node.status().await;
    let load = api.node.mesh_load().await;
    let performance = api.node.performance().await;
    let mesh = &performance.mesh;
    Json(serde_json::json!({
        "peer_id": status.peer_id,
        "president": status.president,
        "term": status.term,
        "members": load.members,
        "task_slots": load.slots,
        "open_tasks": load.open_tasks,
        "projects": {
            "open": mesh.projects_open,
            "completed": mesh.projects_completed,
            "failed": mesh.projects_failed,
        },
        "phase_transitions": {
            "passed": mesh.transitions_passed,
            "failed": mesh.transitions_failed,
            "success_rate": mesh.transition_success_rate,
        },
        "completed_seconds": mesh.completed_seconds,
        "failed_seconds": mesh.failed_seconds,
        "attempts_here": performance.executors,
    }))
    .into_response()
}

/// The state a governor id names: a state's name, or the peer id of its governor.
async fn governed_state(
    api: &Api,
    id: &str,
) -> Result<crate::driver::runtime::StateView, Response> {
    let hierarchy = api.node.hierarchy().await;
    hierarchy
        .states
        .into_iter()
        .find(|state| state.name == id || state.governor.as_deref() == Some(id))
        .ok_or_else(|| {
            error(
                StatusCode::NOT_FOUND,
                format!("no state or governor {id:?}; `aamas hierarchy` lists them"),
            )
        })
}

/// `GET /api/v1/governors/{id}/status`: a state's governor, term, voters, cities,
/// mayors and workers; `id` is the state's name or its governor's peer id.
#[utoipa::path(get, path = "/api/v1/governors/{id}/status", tag = "governors", params(("id" = String, Path, description = "A state's name, or its governor's peer id")), responses((status = 200, description = "The state as this node's Registry copy has it", body = crate::driver::runtime::StateView), Problems))]
async fn governor_status(State(api): State<Api>, Path(id): Path<String>) -> Response {
    match governed_state(&api, &id).await {
        Ok(state) => Json(state).into_response(),
        Err(problem) => problem,
    }
}

/// `GET /api/v1/governors/{id}/performance`: a state's attempts and use against its
/// limits, and the open alerts about its members.
#[utoipa::path(get, path = "/api/v1/governors/{id}/performance", tag = "governors", params(("id" = String, Path, description = "A state's name, or its governor's peer id")), responses((status = 200, description = "Attempts charged, use and limits, open alerts", body = serde_json::Value), Problems))]
async fn governor_performance(State(api): State<Api>, Path(id): Path<String>) -> Response {
    let state = match governed_state(&api, &id).await {
        Ok(state) => state,
        Err(problem) => return problem,
    };
    let resources = api
        .node
        .resources()
        .await
        .into_iter()
        .find(|view| view.state == state.name);
    let alerts: Vec<_> = api
        .node
        .alerts()
        .await
        .into_iter()
        .filter(|alert| alert.acknowledged_ms.is_none() && state.workers.contains(&alert.subject))
        .collect();
    Json(serde_json::json!({
        "state": state.name,
        "governor": state.governor,
        "workers": state.workers.len(),
        "cities": state.cities.len(),
        "resources": resources,
        "open_alerts": alerts,
    }))
    .into_response()
}

/// `POST /api/v1/governors/{id}/tasks`: hands a state tasks, as a one-phase project of
/// its own (`[[task]]` tables in TOML, each as a project's task without `state`).
#[utoipa::path(post, path = "/api/v1/governors/{id}/tasks", tag = "governors", params(("id" = String, Path, description = "A state's name, or its governor's peer id")), request_body(content = String, description = "TOML: `name = \"...\"` (optional) and `[[task]]` tables", content_type = "text/plain"), responses((status = 201, description = "The project that carries the tasks", body = serde_json::Value), Problems))]
async fn governor_tasks(
    State(api): State<Api>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let state = match governed_state(&api, &id).await {
        Ok(state) => state,
        Err(problem) => return problem,
    };
    let spec = match tasks_as_project(&state.name, &body) {
        Ok(spec) => spec,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    let request = headers
        .get(IDEMPOTENCY_KEY)
        .and_then(|value| value.to_str().ok());
    let submission = crate::driver::projects::Submission {
        request,
        override_reason: None,
    };
    match api.node.submit_project(&spec, submission).await {
        Ok(project) => (
            StatusCode::CREATED,
            Json(serde_json::json!({"id": project, "state": state.name})),
        )
            .into_response(),
        Err(reason) => project_error(reason),
    }
}

/// A task of a state, with its project.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct GovernorTask {
    /// The project.
    project: String,
    /// The task.
    task: crate::net::wire::TaskView,
}

/// `GET /api/v1/governors/{id}/tasks`: the tasks in the state, by project and task name,
/// in pages; projects are read in order, eight at a time, until the page is full.
#[utoipa::path(get, path = "/api/v1/governors/{id}/tasks", tag = "governors", params(("id" = String, Path, description = "A state's name, or its governor's peer id"), Page), responses((status = 200, description = "The state's tasks; a Link header names the next page", body = Vec<GovernorTask>), Problems))]
async fn governor_task_list(
    State(api): State<Api>,
    Path(id): Path<String>,
    Query(page): Query<Page>,
) -> Response {
    let state = match governed_state(&api, &id).await {
        Ok(state) => state,
        Err(problem) => return problem,
    };
    // The cursor sorts as (project, task): no id holds a NUL.
    let key = |project: &str, task: &str| format!("{project}\u{0}{task}");
    let from = page
        .after
        .as_deref()
        .map(|after| after.split('\u{0}').next().unwrap_or_default().to_string());
    let mut projects: Vec<String> = api
        .node
        .projects()
        .await
        .into_iter()
        .map(|project| project.id)
        .filter(|id| from.as_ref().is_none_or(|from| id >= from))
        .collect();
    projects.sort_unstable();
    let wanted = page.limit.unwrap_or(MAX_PAGE).min(MAX_PAGE);
    let mut tasks: Vec<GovernorTask> = Vec::new();
    let mut beyond = 0;
    for chunk in projects.chunks(8) {
        for (project, task) in api.node.state_tasks(&state.name, chunk).await {
            if page
                .after
                .as_ref()
                .is_none_or(|after| key(&project, &task.name) > *after)
            {
                beyond += 1;
            }
            tasks.push(GovernorTask { project, task });
        }
        // One more than a page tells whether another follows.
        if beyond > wanted {
            break;
        }
    }
    paged(
        &format!("/api/v1/governors/{}/tasks", state.name),
        tasks,
        |task| key(&task.project, &task.task.name),
        &page,
    )
}

/// A project spec of one `development` phase holding the `[[task]]` tables of `text`,
/// each in `state`; the submission checks it like any other.
fn tasks_as_project(state: &str, text: &str) -> Result<String, String> {
    if text.len() > MAX_SPEC_BODY_BYTES {
        return Err("the tasks are larger than 1 MiB".into());
    }
    let mut document: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let name = match document.remove("name") {
        None => format!("{state}-tasks"),
        Some(toml::Value::String(name)) => name,
        Some(_) => return Err("name is a string".into()),
    };
    let Some(toml::Value::Array(tasks)) = document.remove("task") else {
        return Err("no [[task]] tables".into());
    };
    if let Some(key) = document.keys().next() {
        return Err(format!("unknown key {key:?}: use name and [[task]]"));
    }
    let mut placed = Vec::with_capacity(tasks.len());
    for task in tasks {
        let toml::Value::Table(mut task) = task else {
            return Err("each [[task]] is a table".into());
        };
        if task.contains_key("state") {
            return Err("a task here takes the governor's state: leave state out".into());
        }
        task.insert("state".into(), toml::Value::String(state.to_string()));
        placed.push(toml::Value::Table(task));
    }
    let mut phase = toml::Table::new();
    phase.insert("name".into(), toml::Value::String("development".into()));
    phase.insert("task".into(), toml::Value::Array(placed));
    let mut project = toml::Table::new();
    project.insert("name".into(), toml::Value::String(name));
    project.insert(
        "phase".into(),
        toml::Value::Array(vec![toml::Value::Table(phase)]),
    );
    toml::to_string(&project).map_err(|e| e.to_string())
}

/// `PUT /api/v1/governors/{id}/resources`: sets a limit of the state (as
/// `PUT /api/v1/resources/{state}/{resource}` does).
#[utoipa::path(put, path = "/api/v1/governors/{id}/resources", tag = "governors", params(("id" = String, Path, description = "A state's name, or its governor's peer id")), request_body = GovernorLimit, responses((status = 200, description = "The limit is set", body = serde_json::Value), Problems))]
async fn governor_resources(
    State(api): State<Api>,
    Path(id): Path<String>,
    Json(body): Json<GovernorLimit>,
) -> Response {
    let state = match governed_state(&api, &id).await {
        Ok(state) => state,
        Err(problem) => return problem,
    };
    let resource = match body
        .resource
        .parse::<aamas_consensus::resources::Resource>()
    {
        Ok(resource) => resource,
        Err(failure) => return error(StatusCode::BAD_REQUEST, failure),
    };
    let limit = aamas_consensus::resources::Limit {
        amount: body.amount,
        period: body.per,
        hard: body.hard,
    };
    put_limit(&api, &state.name, resource, limit).await
}

/// Sets `state`'s limit on `resource` (the president's operator only), as both limit
/// routes answer it.
async fn put_limit(
    api: &Api,
    state: &str,
    resource: aamas_consensus::resources::Resource,
    limit: aamas_consensus::resources::Limit,
) -> Response {
    match api.node.set_limit(state, resource, Some(limit)).await {
        Ok(()) => {
            Json(serde_json::json!({"state": state, "resource": resource.name()})).into_response()
        }
        Err(failure) => admin_error(failure),
    }
}

/// A limit set through a governor.
#[derive(Deserialize, utoipa::ToSchema)]
struct GovernorLimit {
    /// cpu_ms, tokens, api_calls, money_micros, memory_kib_s or storage_bytes.
    resource: String,
    /// Most per period.
    amount: u64,
    /// hour, day, month or total.
    #[schema(value_type = String)]
    per: aamas_consensus::resources::Period,
    /// Hard (dispatch stops) or soft (an alert); hard when left out.
    #[serde(default = "hard_by_default")]
    hard: bool,
}

/// One command to the mesh's agents (seed §10.1).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
enum AgentCommand {
    /// Hold a project (its president stops dispatching its phases).
    Hold {
        /// The project.
        project: String,
    },
    /// Resume a held project.
    Resume {
        /// The project.
        project: String,
    },
    /// Move a project to its next phase.
    Advance {
        /// The project.
        project: String,
    },
    /// Acknowledge a PerformanceAlert.
    Ack {
        /// The alert's id.
        alert: u64,
        /// Why, for the record.
        #[serde(default)]
        note: String,
    },
    /// Evict a member (admin scope).
    Evict {
        /// Its peer id.
        member: String,
    },
}

/// `POST /api/v1/agents/command`: one command to the mesh's agents: hold, resume or
/// advance a project, acknowledge an alert (scope operate), evict a member (admin).
#[utoipa::path(post, path = "/api/v1/agents/command", tag = "system", request_body = AgentCommand, responses((status = 200, description = "Done", body = serde_json::Value), Problems))]
async fn agent_command(
    State(api): State<Api>,
    axum::Extension(scope): axum::Extension<Scope>,
    Json(command): Json<AgentCommand>,
) -> Response {
    run_command(&api, scope, command).await
}

/// Carries out one agent command for a token of `scope` (the route and the event
/// stream's WebSocket both take them).
async fn run_command(api: &Api, scope: Scope, command: AgentCommand) -> Response {
    let project = |id: &str, action: &str| (id.to_string(), action.to_string());
    let change = match &command {
        AgentCommand::Hold { project: id } => Some(project(id, "hold")),
        AgentCommand::Resume { project: id } => Some(project(id, "resume")),
        AgentCommand::Advance { project: id } => Some(project(id, "advance")),
        AgentCommand::Ack { .. } | AgentCommand::Evict { .. } => None,
    };
    if let Some((id, action)) = change {
        return match api.node.change_project(&id, &action, None).await {
            Ok(()) => Json(serde_json::json!({"project": id, "done": action})).into_response(),
            Err(reason) => project_error(reason),
        };
    }
    match command {
        AgentCommand::Ack { alert, note } => match api.node.ack_alert(alert, &note).await {
            Ok(()) => Json(serde_json::json!({"acknowledged": alert})).into_response(),
            Err(failure) => admin_error(failure),
        },
        AgentCommand::Evict { member } if scope < Scope::Admin => {
            api.node.metrics.api_forbidden.inc();
            error(
                StatusCode::FORBIDDEN,
                format!("this API token has scope {scope}; evicting {member} needs admin"),
            )
        }
        AgentCommand::Evict { member } => match api.node.evict_member(&member).await {
            Ok(()) => Json(serde_json::json!({"evicted": member})).into_response(),
            Err(failure) => admin_error(failure),
        },
        _ => error(StatusCode::BAD_REQUEST, "unknown command"),
    }
}

/// The media type of an RFC 9457 problem.
pub const PROBLEM_JSON: &str = "application/problem+json";
/// Most bytes of a non-problem error answer [`problems`] reads to carry as the detail.
const MAX_WRAPPED_ERROR_BYTES: usize = 4 * 1024;

/// An RFC 9457 problem: `about:blank`, so the title is the status's own phrase, and the
/// detail says what went wrong with this request.
fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    let problem = Problem {
        kind: "about:blank".to_string(),
        title: status.canonical_reason().unwrap_or("Error").to_string(),
        status: status.as_u16(),
        detail: message.to_string(),
    };
    (
        status,
        [(axum::http::header::CONTENT_TYPE, PROBLEM_JSON)],
        serde_json::to_string(&problem).unwrap_or_default(),
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

#[utoipa::path(post, path = "/api/v1/projects", tag = "projects", request_body(content = String, description = "A project spec (TOML)", content_type = "text/plain"), params(("Idempotency-Key" = Option<String>, Header, description = "A retry with the same key returns the first project"), ("X-Policy-Override" = Option<String>, Header, description = "A reason to pass soft policy rules")), responses((status = 201, description = "The new project's id", body = serde_json::Value), Problems))]
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

#[utoipa::path(get, path = "/api/v1/projects", tag = "projects", params(Page), responses((status = 200, description = "The projects, by id; a Link header names the next page", body = Vec<crate::driver::projects::ProjectView>), Problems))]
async fn list_projects(State(api): State<Api>, Query(page): Query<Page>) -> Response {
    let projects = api.node.projects().await;
    paged("/api/v1/projects", projects, |p| p.id.clone(), &page)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ShowQuery {
    /// Add the model use of the project's tasks (asks every state for its tasks).
    #[serde(default)]
    usage: bool,
}

#[utoipa::path(get, path = "/api/v1/projects/{id}", tag = "projects", params(("id" = String, Path, description = "The project's id"), ShowQuery), responses((status = 200, description = "The project", body = crate::driver::projects::ProjectView), Problems))]
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

#[utoipa::path(get, path = "/api/v1/projects/{id}/tasks", tag = "projects", params(("id" = String, Path, description = "The project's id")), responses((status = 200, description = "The project's tasks", body = Vec<crate::net::wire::TaskView>), Problems))]
async fn project_tasks(State(api): State<Api>, Path(id): Path<String>) -> Response {
    Json(api.node.project_tasks_anywhere(&id).await).into_response()
}

#[utoipa::path(get, path = "/api/v1/projects/{id}/artifacts", tag = "projects", params(("id" = String, Path, description = "The project's id")), responses((status = 200, description = "The project's artefacts", body = Vec<crate::driver::artifacts::ArtifactView>), Problems))]
async fn project_artifacts(State(api): State<Api>, Path(id): Path<String>) -> Response {
    Json(api.node.project_artifacts(&id).await).into_response()
}

/// The bytes of one task's artefact, checked against its committed digest: 404 when the
/// task has no committed result, 503 when no holder answered with it.
#[utoipa::path(get, path = "/api/v1/projects/{id}/artifacts/{task}", tag = "projects", params(("id" = String, Path, description = "The project's id"), ("task" = String, Path, description = "The task's name")), responses((status = 200, description = "The artefact's bytes, checked against the committed digest", content_type = "application/octet-stream"), Problems))]
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

#[derive(Deserialize, utoipa::ToSchema)]
struct PhaseChange {
    action: String,
    #[serde(default)]
    note: Option<String>,
}

#[utoipa::path(put, path = "/api/v1/projects/{id}/phase", tag = "projects", params(("id" = String, Path, description = "The project's id")), request_body = PhaseChange, responses((status = 200, description = "Done", body = serde_json::Value), Problems))]
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

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct TokenQuery {
    ttl_secs: Option<u64>,
    uses: Option<u32>,
}

#[utoipa::path(post, path = "/api/v1/tokens", tag = "members", params(TokenQuery), responses((status = 200, description = "A new join token", body = serde_json::Value), Problems))]
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

#[utoipa::path(get, path = "/api/v1/tokens", tag = "members", responses((status = 200, description = "The join tokens", body = serde_json::Value), Problems))]
async fn list_tokens(State(api): State<Api>) -> Response {
    Json(api.node.join_tokens().await).into_response()
}

fn admin_error(failure: crate::driver::admin::AdminError) -> Response {
    let status =
        StatusCode::from_u16(failure.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error(status, failure)
}

/// `POST /api/v1/tokens/revoke` with the token's text as the body.
#[utoipa::path(post, path = "/api/v1/tokens/revoke", tag = "members", request_body(content = String, description = "The join token", content_type = "text/plain"), responses((status = 200, description = "The token is revoked", body = serde_json::Value), Problems))]
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

#[derive(Deserialize, utoipa::ToSchema)]
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
#[utoipa::path(post, path = "/api/v1/api-tokens", tag = "access", request_body = NewApiToken, responses((status = 200, description = "The new token, shown once", body = serde_json::Value), Problems))]
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

#[utoipa::path(get, path = "/api/v1/api-tokens", tag = "access", params(Page), responses((status = 200, description = "The named tokens (names and scopes), by name; a Link header names the next page", body = serde_json::Value), Problems))]
async fn list_api_tokens(State(api): State<Api>, Query(page): Query<Page>) -> Response {
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
    let name = |token: &serde_json::Value| token["name"].as_str().unwrap_or_default().to_string();
    paged("/api/v1/api-tokens", listed, name, &page)
}

#[utoipa::path(delete, path = "/api/v1/api-tokens/{name}", tag = "access", params(("name" = String, Path, description = "The token's name")), responses((status = 200, description = "Revoked", body = serde_json::Value), Problems))]
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
#[utoipa::path(get, path = "/api/v1/policy", tag = "policy", responses((status = 200, description = "The policy in force", body = serde_json::Value), Problems))]
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
#[utoipa::path(put, path = "/api/v1/policy", tag = "policy", request_body(content = String, description = "A policy document (TOML)", content_type = "text/plain"), responses((status = 200, description = "The new version", body = serde_json::Value), Problems))]
async fn apply_policy(State(api): State<Api>, body: String) -> Response {
    match api.node.apply_policy(&body).await {
        Ok(version) => Json(serde_json::json!({"version": version})).into_response(),
        Err(failure) => admin_error(failure),
    }
}

/// `POST /api/v1/policy/check` with a document as the body: whether it would apply.
#[utoipa::path(post, path = "/api/v1/policy/check", tag = "policy", request_body(content = String, description = "A policy document (TOML)", content_type = "text/plain"), responses((status = 200, description = "What the valid document says", body = serde_json::Value), Problems))]
async fn check_policy(body: String) -> Response {
    match crate::governance::policy::parse(&body) {
        Ok(policy) => Json(crate::driver::policy::summary(&policy)).into_response(),
        Err(failure) => error(StatusCode::BAD_REQUEST, failure),
    }
}

/// `GET /api/v1/performance`: this node's figures as a worker and the mesh's phase
/// transitions.
#[utoipa::path(get, path = "/api/v1/performance", tag = "alerts", responses((status = 200, description = "This node's figures as a worker and the mesh's", body = crate::driver::performance::PerformanceView), Problems))]
async fn performance(State(api): State<Api>) -> Response {
    Json(api.node.performance().await).into_response()
}

#[utoipa::path(get, path = "/api/v1/alerts", tag = "alerts", params(Page), responses((status = 200, description = "PerformanceAlerts, open and acknowledged, by id; a Link header names the next page", body = Vec<crate::driver::alerts::AlertView>), Problems))]
async fn list_alerts(State(api): State<Api>, Query(page): Query<Page>) -> Response {
    let alerts = api.node.alerts().await;
    paged("/api/v1/alerts", alerts, |a| numeric_key(a.id), &page)
}

#[derive(Deserialize, utoipa::ToSchema)]
struct AckBody {
    #[serde(default)]
    note: String,
}

/// `POST /api/v1/alerts/{id}/ack` with `{"note"}`.
#[utoipa::path(post, path = "/api/v1/alerts/{id}/ack", tag = "alerts", params(("id" = u64, Path, description = "The alert's id")), request_body = AckBody, responses((status = 200, description = "Acknowledged", body = serde_json::Value), Problems))]
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

#[utoipa::path(get, path = "/api/v1/resources", tag = "resources", responses((status = 200, description = "Each state's use against its limits", body = Vec<crate::driver::resources::StateResources>), Problems))]
async fn list_resources(State(api): State<Api>) -> Response {
    Json(api.node.resources().await).into_response()
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct LimitBody {
    amount: u64,
    /// hour, day, month or total.
    #[schema(value_type = String)]
    per: aamas_consensus::resources::Period,
    #[serde(default = "hard_by_default")]
    hard: bool,
}

fn hard_by_default() -> bool {
    true
}

/// `PUT /api/v1/resources/{state}/{resource}` with `{"amount", "per", "hard"}`: sets
/// the state's limit (the president's operator only).
#[utoipa::path(put, path = "/api/v1/resources/{state}/{resource}", tag = "resources", params(("state" = String, Path, description = "The state"), ("resource" = String, Path, description = "cpu_ms, tokens, api_calls, money_micros, memory_kib_s or storage_bytes")), request_body = LimitBody, responses((status = 200, description = "The limit is set", body = serde_json::Value), Problems))]
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
    put_limit(&api, &state, resource, limit).await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ReadQuery {
    /// Read linearizably: the president confirms its lead with a quorum and this node
    /// answers once its copy has caught up (a 503 when that cannot be done in 2 s);
    /// otherwise this node's own copy answers, which may lag.
    #[serde(default)]
    consistent: bool,
}

/// `GET /api/v1/resources/{state}/{resource}`: the state's limit on the resource (`null`
/// when it has none), from this node's Registry copy or, with `?consistent=true`,
/// linearizably.
#[utoipa::path(get, path = "/api/v1/resources/{state}/{resource}", tag = "resources", params(("state" = String, Path, description = "The state"), ("resource" = String, Path, description = "cpu_ms, tokens, api_calls, money_micros, memory_kib_s or storage_bytes"), ReadQuery), responses((status = 200, description = "The limit, or null", body = serde_json::Value), Problems))]
async fn get_limit(
    State(api): State<Api>,
    Path((state, resource)): Path<(String, String)>,
    Query(query): Query<ReadQuery>,
) -> Response {
    let resource = match resource.parse::<aamas_consensus::resources::Resource>() {
        Ok(resource) => resource,
        Err(failure) => return error(StatusCode::NOT_FOUND, failure),
    };
    let read = |registry: &aamas_consensus::registry::Registry| {
        registry
            .states()
            .get(&state)
            .map(|info| info.limits.get(&resource).copied())
    };
    let found = if query.consistent {
        match api.node.registry_linearizable(read).await {
            Ok(found) => found,
            Err(reason) => return error(StatusCode::SERVICE_UNAVAILABLE, reason),
        }
    } else {
        api.node.registry(read).await.flatten()
    };
    match found {
        Some(limit) => Json(serde_json::json!({
            "state": state,
            "resource": resource.name(),
            "limit": limit,
            "consistent": query.consistent,
        }))
        .into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no state {state:?}")),
    }
}

/// `DELETE /api/v1/resources/{state}/{resource}`: removes the state's limit.
#[utoipa::path(delete, path = "/api/v1/resources/{state}/{resource}", tag = "resources", params(("state" = String, Path, description = "The state"), ("resource" = String, Path, description = "The resource")), responses((status = 200, description = "The limit is removed", body = serde_json::Value), Problems))]
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

#[utoipa::path(get, path = "/api/v1/resources/requests", tag = "resources", params(Page), responses((status = 200, description = "ResourceRequests, open and decided, by id; a Link header names the next page", body = serde_json::Value), Problems))]
async fn list_resource_requests(State(api): State<Api>, Query(page): Query<Page>) -> Response {
    let requests = api.node.resource_requests().await;
    paged(
        "/api/v1/resources/requests",
        requests,
        |r| numeric_key(r.id),
        &page,
    )
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    #[serde(default)]
    amount: Option<u64>,
    #[serde(default)]
    note: String,
}

/// `POST /api/v1/resources/requests/{id}/approve` with `{"amount", "note"}`.
#[utoipa::path(post, path = "/api/v1/resources/requests/{id}/approve", tag = "resources", params(("id" = u64, Path, description = "The request's id")), request_body = DecisionBody, responses((status = 200, description = "Approved", body = serde_json::Value), Problems))]
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
#[utoipa::path(post, path = "/api/v1/resources/requests/{id}/deny", tag = "resources", params(("id" = u64, Path, description = "The request's id")), request_body = DecisionBody, responses((status = 200, description = "Denied", body = serde_json::Value), Problems))]
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
#[utoipa::path(delete, path = "/api/v1/members/{id}", tag = "members", params(("id" = String, Path, description = "The member's peer id")), responses((status = 200, description = "The member was evicted", body = serde_json::Value), Problems))]
async fn evict_member(State(api): State<Api>, Path(id): Path<String>) -> Response {
    match api.node.evict_member(&id).await {
        Ok(()) => Json(serde_json::json!({"evicted": id})).into_response(),
        Err(failure) => admin_error(failure),
    }
}

#[utoipa::path(get, path = "/metrics", tag = "system", responses((status = 200, description = "Prometheus metrics", content_type = "text/plain"), Problems))]
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
    let api = Api {
        node,
        openapi: Arc::new(std::sync::OnceLock::new()),
        token: Arc::new(token),
        tokens: Arc::new(std::sync::Mutex::new(tokens)),
        streams: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
    };
    let (routes, health, document) = split();
    let _ = api.openapi.set(document.to_json().unwrap_or_default());
    // The health check is added after the token check, which it needs not.
    let app = routes
        .route_layer(axum::middleware::from_fn_with_state(
            api.clone(),
            require_token,
        ))
        .merge(health)
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
