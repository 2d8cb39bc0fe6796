//! The dashboard: a page, its script and its style, built into the binary (nothing is
//! loaded from anywhere else) and served without a token, since they hold no data. The
//! page asks for an API token and reads everything it shows from the API with it, live
//! over the event stream ([`super::events`]).

use axum::http::header;
use axum::response::{IntoResponse as _, Response};

const PAGE: &str = include_str!("../dashboard/index.html");
const SCRIPT: &str = include_str!("../dashboard/app.js");
const STYLE: &str = include_str!("../dashboard/style.css");

/// Only this node's own page, script, style and API; no frames, no inline script.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                      connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                      form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /dashboard`: the dashboard's page.
#[utoipa::path(get, path = "/dashboard", tag = "dashboard", security(()), responses((status = 200, description = "The dashboard (it asks for an API token)", content_type = "text/html", body = String)))]
pub(super) async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

/// `GET /dashboard/app.js`: the dashboard's script.
#[utoipa::path(get, path = "/dashboard/app.js", tag = "dashboard", security(()), responses((status = 200, description = "The dashboard's script", content_type = "text/javascript", body = String)))]
pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /dashboard/style.css`: the dashboard's style.
#[utoipa::path(get, path = "/dashboard/style.css", tag = "dashboard", security(()), responses((status = 200, description = "The dashboard's style", content_type = "text/css", body = String)))]
pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}
