//! The error contract: RFC 9457 `application/problem+json` with a stable `type`.
//!
//! Handlers check in the documented order — 401, 403, 404, 400, 413, 422, 409 — by
//! authenticating in an extractor, checking scope first in the handler, loading what
//! the path names, and only then reading and parsing the body. Internal errors answer a
//! generic 500 with a request id; the log carries the cause chain.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use uuid::Uuid;
use waymark_engine::{EngineError, StoreError};

/// A problem to answer with. `kind` is the stable part of the `type` URI.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub title: &'static str,
    pub detail: String,
    /// `Retry-After` seconds for a 429 (1 unless set).
    pub retry_after: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            title,
            detail: detail.into(),
            retry_after: None,
        }
    }

    /// Tells the client how many seconds to wait before retrying (with a 429).
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            detail,
        )
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "Payload too large",
            format!("the request body is over the limit of {limit} bytes"),
        )
    }

    pub fn invalid(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "Invalid request",
            detail,
        )
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
    }

    pub fn rate_limited() -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests",
            "this key sent more requests than its rate limit allows; retry after a second",
        )
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
            detail,
        )
    }

    /// An error the caller cannot fix: logged with its cause chain under a request id
    /// that the answer names, and nothing else of it is shown.
    pub fn internal(error: &(dyn std::error::Error + 'static)) -> Self {
        let request_id = Uuid::now_v7();
        tracing::error!(%request_id, error = %chain(error), "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            format!("something went wrong on our side; request id {request_id}"),
        )
    }
}

/// An error and its causes on one line.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            Json(json!({
                "type": format!("https://waymark.dev/problems/{}", self.kind),
                "title": self.title,
                "status": self.status.as_u16(),
                "detail": self.detail,
            })),
        )
            .into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(self.retry_after.unwrap_or(1)),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::RunNotFound(id) => ApiError::not_found(format!("run {id} not found")),
            StoreError::Conflict(message) => ApiError::conflict(message),
            StoreError::IdempotencyConflict { key, existing } => ApiError::conflict(format!(
                "idempotency key {key:?} was already used for run {existing} with a different body"
            )),
            StoreError::PayloadTooLarge { what, size, limit } => ApiError::invalid(format!(
                "{what} is {size} bytes, over the limit of {limit} bytes"
            )),
            StoreError::Database(ref db) if is_unavailable(db) => {
                tracing::warn!(error = %chain(&error), "database unavailable");
                ApiError::unavailable("the database is not reachable; try again shortly")
            }
            other => ApiError::internal(&other),
        }
    }
}

fn is_unavailable(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
    )
}

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> Self {
        match error {
            EngineError::UnknownWorkflow(w) => {
                ApiError::not_found(format!("workflow {w:?} not found"))
            }
            EngineError::RunNotFound(id) => ApiError::not_found(format!("run {id} not found")),
            EngineError::UnknownSignal { workflow, signal } => {
                ApiError::not_found(format!("workflow {workflow:?} has no signal {signal:?}"))
            }
            EngineError::InvalidTenant(t) => ApiError::invalid(format!(
                "tenant {t:?} is not a valid slug (expected ^[a-z][a-z0-9-]{{2,39}}$)"
            )),
            EngineError::InvalidInput(e) => ApiError::invalid(e.to_string()),
            EngineError::Conflict(message) => ApiError::conflict(message),
            other @ EngineError::SystemTenantOnly { .. } => ApiError::invalid(other.to_string()),
            EngineError::Store(store) => store.into(),
        }
    }
}
