//! Waymark's HTTP API (axum).
//!
//! # Layout
//! - [`app`] builds the router from an [`AppState`]; it needs no socket, so tests and
//!   `main` serve it the same way.
//! - `/healthz` (process up), `/readyz` (database reachable, migrations applied),
//!   `/openapi.json` and `/metrics` (Prometheus; optionally behind a token) need no key.
//! - [`diagram`]: a workflow's state machine drawn as SVG.
//! - [`routes`]: every `/v1` route in one table that builds both the router and the
//!   OpenAPI document, with one module per workflow that has routes of its own; [`auth`] (API keys, scopes, rate limit), [`body`] (reading and
//!   checking bodies), [`error`] (the RFC 9457 error contract), [`views`]; `paging`
//!   reads `limit` and `cursor` the same way for every list route.
//! - [`blobs`]: `/blobs/…`, the local blob store's signed download links.
//! - [`play`]: `/play/{token}/…`, a video's HLS files behind a signed playback token.
//! - [`meeting_pages`]: `/rsvp/{token}` and `/calendars/{token}.ics`, the meeting pages
//!   and feeds an attendee opens without a key (the token is the permission).
//! - [`waits`]: the caps on long polls (`?wait=`), per key and per process.
//! - [`ui`]: the operator dashboard under `/ui/` (`GET /` redirects there), with its own
//!   sessions table ([`schemas`]).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use waymark_engine::Engine;

pub mod auth;
pub mod blobs;
pub mod body;
pub mod diagram;
pub mod error;
pub mod meeting_pages;
mod paging;
pub mod play;
pub mod routes;
pub mod ui;
pub mod views;
pub mod waits;

pub use auth::ApiConfig;

/// The API's own tables (the dashboard's sessions), for the store to migrate with the
/// engine's and the workflows'.
pub fn schemas() -> Vec<waymark_engine::store::Schema> {
    vec![ui::SCHEMA]
}

#[derive(Clone, Debug)]
pub struct AppState {
    pub engine: Engine,
    /// The blob store: dispute evidence and tus uploads (`/v1/uploads`) keep their bytes
    /// there, and `/blobs/…` serves a local one's signed links. `None`: uploads answer
    /// 503 and `/blobs/…` 404 (as with S3).
    pub blobs: Option<waymark_services::BlobStore>,
    pub api: ApiConfig,
}

pub fn app(state: AppState) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(routes::openapi_json))
        .route("/metrics", get(metrics));
    for route in routes::table() {
        router = match route.auth {
            routes::Auth::Key(scope) => {
                let check = axum::middleware::from_fn_with_state(
                    (state.clone(), scope),
                    auth::require_scope,
                );
                router.route(route.path, route.handler.route_layer(check))
            }
            // Verified by its handler against the raw body it must read anyway.
            routes::Auth::WebhookSignature => router.route(route.path, route.handler),
        };
    }
    router
        .fallback(not_found)
        .merge(blobs::routes(state.blobs.clone()))
        .merge(play::routes(state.blobs.clone()))
        .merge(meeting_pages::routes())
        .merge(ui::routes())
        .with_state(state)
}

/// Prometheus metrics; behind `WAYMARK_METRICS_TOKEN` when one is set.
async fn metrics(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Response, error::ApiError> {
    if let Some(token) = &state.api.metrics_token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let matches = presented.is_some_and(|p| {
            p.len() == token.len()
                && p.bytes()
                    .zip(token.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if !matches {
            return Err(error::ApiError::unauthorized(
                "the metrics token is required: Authorization: Bearer <token>",
            ));
        }
    }
    let now = state.engine.clock.now();
    let (due, oldest) = state.engine.store.runs_due_stats(now).await?;
    let age = oldest.and_then(|t| (now - t).to_std().ok());
    let mut text = state.engine.metrics.render(due, age);
    text.push_str(&format!(
        "# HELP waymark_api_waiting_requests Status requests (?wait=) waiting for their run to end.\n\
         # TYPE waymark_api_waiting_requests gauge\n\
         waymark_api_waiting_requests {}\n",
        state.api.waits.current()
    ));
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

async fn not_found() -> error::ApiError {
    error::ApiError::not_found("no such route")
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> Response {
    let store = &state.engine.store;
    match store.ready().await {
        Ok(true) => Json(json!({ "status": "ready", "backend": store.backend() })).into_response(),
        Ok(false) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "Not ready",
            "the database schema is not migrated to this version yet",
        ),
        Err(error) => {
            tracing::warn!(error = %error, "readiness check failed");
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "database-unavailable",
                "Database unavailable",
                "the database did not answer",
            )
        }
    }
}

/// An RFC 9457 problem document.
fn problem(status: StatusCode, kind: &str, title: &str, detail: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        Json(json!({
            "type": format!("https://waymark.dev/problems/{kind}"),
            "title": title,
            "status": status.as_u16(),
            "detail": detail,
        })),
    )
        .into_response()
}
