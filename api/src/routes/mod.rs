//! Every `/v1` route, in one table that both builds the router and writes the OpenAPI
//! document, so the document cannot miss a route, and whose scopes the router enforces.
//!
//! # Layout
//! - this file: the table, and helpers every route uses (parameters, run views, audit);
//! - [`runs`], [`workflows`], [`keys`] (with identity, audit and workers), [`schedules`]:
//!   the handlers, by what they act on;
//! - [`openapi`]: the document written from the table;
//! - one module per workflow with routes of its own: [`tenants`] (the tenant sagas),
//!   [`disputes`] (payment disputes and their signed webhooks),
//!   [`meetings`] (`meeting_invite`), [`uploads`] (tus resumable uploads of videos).
//!
//! Each module lists its routes in a `routes()` of [`Route`] literals; [`table`] joins
//! them. A workflow's routes go in its own module here, next to the others, and call
//! into the workflow's crate for everything but HTTP.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put, MethodRouter};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;
use waymark_engine::cron::CronSchedule;
use waymark_engine::keys::{IssueKey, Scope};
use waymark_engine::store::{CatchUp, NewAudit, Overlap, RunFilter, Schedule};
use waymark_engine::workflow::ErasedWorkflow;
use waymark_engine::{
    is_valid_tenant, Access, RunStatus, SendSignal, StartRun, TenantScope, Workflow,
};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::paging::Page;
use crate::views::{HistoryView, KeyView, RunView};
use crate::{body, AppState};

mod dispute_files;
pub mod disputes;
mod keys;
pub mod meetings;
mod openapi;
mod runs;
mod schedules;
pub mod tenants;
pub mod uploads;
mod workflows;

pub(crate) use keys::{create_key, revoke_key, rotate_key};
pub use openapi::{openapi, openapi_json};
use runs::*;
pub(crate) use runs::{bulk_apply, filter_from};
pub(crate) use schedules::update_schedule;
use schedules::*;
use workflows::*;

/// A documented route.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub summary: &'static str,
    /// Who may call it: keys of at least a scope, checked by the router before the
    /// handler; or the sender of a signed webhook, which the handler verifies itself.
    pub auth: Auth,
    /// Status codes it answers besides the shared errors.
    pub success: &'static [u16],
    pub body: Option<Value>,
    pub handler: MethodRouter<AppState>,
}

/// How a route authenticates its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer <key>` of at least this scope (the router checks it).
    Key(Scope),
    /// No API key: the handler verifies a `Waymark-Signature` header over the raw body
    /// with the tenant's signing secret (401 when it does not verify).
    WebhookSignature,
}

/// A list route's summary with the paging sentence every list route shares.
macro_rules! paged {
    ($summary:literal) => {
        concat!(
            $summary,
            " Keyset pagination: `limit` (1 to 500, default 50) and `cursor` (the previous \
             page's `next_cursor`, null on the last page)."
        )
    };
}
pub(crate) use paged;

/// The `/v1` routes: each module's, then each workflow's.
pub fn table() -> Vec<Route> {
    [
        runs::routes(),
        workflows::routes(),
        keys::routes(),
        schedules::routes(),
        tenants::routes(),
        disputes::routes(),
        dispute_files::routes(),
        meetings::routes(),
        uploads::routes(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

// ---------------------------------------------------------------------------------
// Helpers

pub(crate) fn params(raw: Option<String>) -> Vec<(String, String)> {
    raw.map(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .into_owned()
            .collect()
    })
    .unwrap_or_default()
}

pub(crate) fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Malformed ids answer 404, exactly like ids that do not exist.
fn run_id(raw: &str) -> ApiResult<Uuid> {
    raw.parse()
        .map_err(|_| ApiError::not_found(format!("run {raw:?} not found")))
}

fn key_id(raw: &str) -> ApiResult<Uuid> {
    raw.parse()
        .map_err(|_| ApiError::not_found(format!("key {raw:?} not found")))
}

fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(value) => {
            let key = value
                .to_str()
                .map_err(|_| ApiError::invalid("Idempotency-Key must be visible ASCII"))?
                .trim();
            if key.is_empty() || key.len() > 255 {
                return Err(ApiError::invalid(
                    "Idempotency-Key must be 1 to 255 characters",
                ));
            }
            Ok(Some(key.to_owned()))
        }
    }
}

fn timestamp(name: &str, value: &str) -> ApiResult<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ApiError::invalid(format!(
                "{name}: expected an RFC 3339 timestamp, got {value:?} ({e})"
            ))
        })
}

pub(crate) async fn load_run(
    state: &AppState,
    caller: &Caller,
    raw: &str,
) -> ApiResult<waymark_engine::Run> {
    let id = run_id(raw)?;
    state
        .engine
        .store
        .run_get(&caller.scope(), id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("run {id} not found")))
}

/// A key in `scope` by its raw id; malformed and unknown ids alike answer 404.
async fn load_key(
    state: &AppState,
    scope: &TenantScope,
    raw: &str,
) -> ApiResult<waymark_engine::store::KeyRecord> {
    let id = key_id(raw)?;
    state
        .engine
        .store
        .key_get(scope, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("key {id} not found")))
}

pub(crate) async fn view(state: &AppState, run: waymark_engine::Run) -> ApiResult<RunView> {
    let reason = state
        .engine
        .pending_reason(&run, Duration::from_secs(90))
        .await?;
    let children_visit = match (&run.waiting_for, &run.received) {
        (Some(w), _) if w.children.is_some() => w.children.as_ref().map(|c| c.visit),
        (_, Some(waymark_engine::store::Inbox::Children { visit })) => Some(*visit),
        _ => None,
    };
    let children = match children_visit {
        Some(visit) => state
            .engine
            .store
            .run_children(run.id, visit)
            .await?
            .into_iter()
            .map(|c| c.id)
            .collect(),
        None => Vec::new(),
    };
    let details = details(state, &run).await?;
    let mut view = RunView::new(run).redacted(&state.engine.registry);
    view.pending_reason = reason;
    view.children = children;
    view.details = details;
    Ok(view)
}

/// What a workflow's status adds: for a key rotation, the keys, so an operator sees
/// whether clients still use the old one (`last_used_at`); for a dispute, the deadline
/// of the state it waits in and the why-waiting line that names it.
async fn details(state: &AppState, run: &waymark_engine::Run) -> ApiResult<Option<Value>> {
    if run.workflow == waymark_workflows::disputes::PaymentDispute::NAME {
        return disputes::run_details(state, run).await;
    }
    if run.workflow != waymark_workflows::key_rotation::KeyRotation::NAME {
        return Ok(None);
    }
    let key = |field: &str| {
        run.input
            .get(field)
            .or_else(|| run.state_data.get(field))
            .and_then(|v| v.as_str())
            .and_then(|s| s.parse::<Uuid>().ok())
    };
    let now = state.engine.clock.now();
    let mut out = serde_json::Map::new();
    for (label, id) in [("old_key", key("key_id")), ("new_key", key("new_key_id"))] {
        if let Some(id) = id {
            // The run's own tenant only: a run's input names key ids, and a view must not
            // become a way to read another tenant's keys.
            let scope = TenantScope::Tenant(run.tenant.clone());
            if let Some(k) = state.engine.store.key_get(&scope, id).await? {
                out.insert(
                    label.into(),
                    serde_json::to_value(KeyView::new(k, now)).unwrap_or_default(),
                );
            }
        }
    }
    Ok(Some(Value::Object(out)))
}

async fn audit_record(
    state: &AppState,
    caller: &Caller,
    tenant: &str,
    action: &str,
    target: String,
    detail: Value,
) {
    let entry = NewAudit {
        tenant: tenant.to_owned(),
        actor: caller.actor(),
        action: action.to_owned(),
        target: Some(target),
        detail,
        address: caller.address.clone(),
        at: state.engine.clock.now(),
    };
    if let Err(error) = state.engine.store.audit_append(&entry).await {
        tracing::error!(error = %crate::error::chain(&error), action, "cannot append to the audit log");
    }
}

/// The tenant a write acts for: the caller's own, or for an admin `?tenant=`.
fn acting_tenant(caller: &Caller, requested: Option<&str>) -> ApiResult<String> {
    match requested {
        None => Ok(caller.key.tenant.clone()),
        Some(t) if t == caller.key.tenant => Ok(t.to_owned()),
        Some(_) if !caller.is_admin() => Err(ApiError::forbidden(
            "only an admin key may act for another tenant",
        )),
        Some(t) if is_valid_tenant(t) => Ok(t.to_owned()),
        Some(t) => Err(ApiError::invalid(format!(
            "tenant {t:?} is not a valid slug (expected ^[a-z][a-z0-9-]{{2,39}}$)"
        ))),
    }
}
