//! Waymark's HTTP API (axum).
//!
//! # Layout
//! - [`app`] builds the router from an [`AppState`]; it needs no socket, so tests and
//!   `main` serve it the same way.
//! - `/healthz` (process up) and `/readyz` (database reachable, migrations applied) need
//!   no key. The `/v1` routes come with the API issue.
//! - [`blobs`]: `/blobs/…`, the local blob store's signed download links.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use waymark_engine::Engine;

pub mod blobs;

#[derive(Clone, Debug)]
pub struct AppState {
    pub engine: Engine,
    /// Serves signed links of a local blob store; `None` (or S3): `/blobs/…` is 404.
    pub blobs: Option<waymark_services::BlobStore>,
}

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(blobs::routes(state.blobs.clone()))
        .with_state(state)
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
