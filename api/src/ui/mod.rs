//! The operator dashboard, served by the same process under `/ui/`: server-rendered
//! HTML (maud, checked at compile time and escaping by default), a little plain
//! JavaScript, every asset embedded in the binary.
//!
//! # Layout
//! - this file: the routes, form bodies, embedded assets, and the headers every answer
//!   carries (no caching of pages, a strict Content-Security-Policy);
//! - [`session`]: login sessions in the database (its own [`SCHEMA`]), the session
//!   extractor, the CSRF and `Origin` checks;
//! - [`login`]: `/ui/login` and `/ui/logout`;
//! - [`runs`]: the runs list, a run's page and the actions on it;
//! - [`pages`]: overview (with [`chart`]), workflows, workers, audit;
//! - [`schedules`]: schedules with their next fire times, pause and resume;
//! - [`tenants`]: tenants, their resources and runs (admins);
//! - [`dead_letters`]: dispute events waiting for their dispute, and their replay;
//! - [`keys`]: API keys (create, revoke, rotate through the API's own handlers);
//! - [`why`]: the "why is it waiting?" line; [`timeline`]: a run's history as SVG
//!   (the state diagram with the run's path is [`crate::diagram::svg_with_path`]);
//! - [`live`]: `/ui/events`, the server-sent events that keep pages current;
//! - [`page`]: the frame and the pieces pages share.
//!
//! Every handler acts as the session's key through the same [`Caller`](crate::auth::Caller)
//! the API uses: same scopes, same tenant scope, same engine calls, the same audit.

use axum::body::Body;
use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::AppState;

mod chart;
mod dead_letters;
mod keys;
mod live;
mod login;
pub mod page;
mod pages;
mod runs;
mod schedules;
pub mod session;
mod tenants;
mod timeline;
pub mod why;

pub use session::{UiConfig, SCHEMA};

/// The dashboard's routes, and `GET /` sending browsers to it.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(pages::overview))
        .route("/ui/login", get(login::form).post(login::submit))
        .route("/ui/logout", post(login::logout))
        .route("/ui/runs", get(runs::list))
        .route("/ui/runs/bulk", post(runs::bulk))
        .route("/ui/runs/{id}", get(runs::detail))
        .route("/ui/runs/{id}/signal", post(runs::signal))
        .route("/ui/runs/{id}/{action}", post(runs::action))
        .route("/ui/workflows", get(pages::workflows))
        .route("/ui/workers", get(pages::workers))
        .route("/ui/schedules", get(schedules::list))
        .route("/ui/schedules/{id}/{action}", post(schedules::action))
        .route("/ui/audit", get(pages::audit))
        .route("/ui/tenants", get(tenants::list))
        .route("/ui/dead-letters", get(dead_letters::list))
        .route("/ui/dead-letters/{id}/replay", post(dead_letters::replay))
        .route("/ui/keys", get(keys::list).post(keys::create))
        .route("/ui/keys/{id}/{action}", post(keys::action))
        .route("/ui/events", get(live::events))
        .route("/ui/assets/{name}", get(asset))
        .layer(axum::middleware::map_response(headers))
}

/// Headers on every dashboard answer. Pages show live data about runs and keys: never
/// cached, never framed, scripts and styles only from this server.
async fn headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

const STYLE: &str = include_str!("assets/style.css");
const SCRIPT: &str = include_str!("assets/app.js");

/// An asset's URL, versioned by the binary so it may be cached for long.
pub(crate) fn asset_path(name: &str) -> String {
    format!("/ui/assets/{name}?v={}", env!("CARGO_PKG_VERSION"))
}

async fn asset(Path(name): Path<String>) -> Response {
    let (body, kind) = match name.as_str() {
        "style.css" => (STYLE, "text/css; charset=utf-8"),
        "app.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        body,
    )
        .into_response()
}

/// A form body (`application/x-www-form-urlencoded`), read under the API's body limit.
#[derive(Debug, Default)]
pub(crate) struct Form(Vec<(String, String)>);

impl Form {
    pub(crate) async fn read(body: Body, limit: usize) -> Result<Form, Response> {
        let bytes = crate::body::read(body, limit)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Form(
            url::form_urlencoded::parse(&bytes).into_owned().collect(),
        ))
    }

    pub(crate) fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The query string's pairs.
pub(crate) fn query(raw: Option<String>) -> Vec<(String, String)> {
    crate::routes::params(raw)
}
