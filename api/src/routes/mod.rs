//! Every `/v1` route, in one table that both builds the router and writes the OpenAPI
//! document, so the document cannot miss a route, and whose scopes the router enforces.
//!
//! # Layout
//! - this file: the table, and helpers every route uses (parameters, run views, audit);
//! - [`runs`], [`workflows`], [`keys`] (with identity, audit and workers), [`schedules`]:
//!   the handlers, by what they act on;
//! - [`openapi`]: the document written from the table.
//!
//! The tenant routes live with their saga in `crate::tenants`.

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
use waymark_engine::{is_valid_tenant, Access, RunStatus, SendSignal, StartRun, TenantScope};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::paging::Page;
use crate::views::{HistoryView, KeyView, RunView};
use crate::{body, AppState};

mod keys;
mod openapi;
mod runs;
mod schedules;
mod workflows;

use keys::*;
pub use openapi::{openapi, openapi_json};
use runs::*;
use schedules::*;
use workflows::*;

/// A documented route.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub summary: &'static str,
    /// The least scope that may call it.
    pub scope: Scope,
    /// Status codes it answers besides the shared errors.
    pub success: &'static [u16],
    pub body: Option<Value>,
    pub handler: MethodRouter<AppState>,
}

pub(crate) fn route(
    method: Method,
    path: &'static str,
    summary: &'static str,
    scope: Scope,
    success: &'static [u16],
    body: Option<Value>,
    handler: MethodRouter<AppState>,
) -> Route {
    Route {
        method,
        path,
        summary,
        scope,
        success,
        body,
        handler,
    }
}

/// The `/v1` routes.
pub fn table() -> Vec<Route> {
    let filter = json!({"type": "object", "properties": {
        "workflow": {"type": "string"}, "status": {"type": "string"}, "state": {"type": "string"},
        "created_after": {"type": "string", "format": "date-time"},
        "created_before": {"type": "string", "format": "date-time"}, "tag": {"type": "string"}}});
    let reason = json!({"type": "object", "properties": {"reason": {"type": "string"}}});
    vec![
        route(Method::POST, "/v1/workflows/{workflow}/runs", "Start a run; the body is the workflow's input. `Idempotency-Key` makes it idempotent; `?tag=` labels it; an admin acting for a tenant passes `?tenant=`.", Scope::Operator, &[200, 201], Some(json!({"type": "object"})), post(start_run)),
        route(Method::GET, "/v1/runs", "List runs, newest first, with filters (workflow, status, state, created_after, created_before, tag). Keyset pagination: `limit` (1 to 500, default 50) and `cursor` (the previous page's `next_cursor`, null on the last page).", Scope::Reader, &[200], None, get(list_runs)),
        route(Method::GET, "/v1/runs/{id}", "A run's status; `?wait=30s` holds the answer until the run ends or the time is up (429 with Retry-After past the caps on waiting requests per key and per process).", Scope::Reader, &[200], None, get(get_run)),
        route(Method::GET, "/v1/runs/{id}/history", "Every transition of a run with cause, actor, attempt, timings and errors, oldest first. Keyset pagination: `limit` (1 to 500, default 50) and `cursor` (the previous page's `next_cursor`, null on the last page).", Scope::Reader, &[200], None, get(run_history)),
        route(Method::GET, "/v1/runs/{id}/signals", "Signals delivered to a run and what became of them, oldest first. Keyset pagination: `limit` (1 to 500, default 50) and `cursor` (the previous page's `next_cursor`, null on the last page).", Scope::Reader, &[200], None, get(run_signals)),
        route(Method::POST, "/v1/runs/{id}/signals/{signal}", "Deliver a signal; the body is its JSON payload. `Idempotency-Key` is honoured.", Scope::Operator, &[200, 201], Some(json!({})), post(send_signal)),
        route(Method::POST, "/v1/runs/{id}/cancel", "Cancel a run: compensation runs, then it ends `cancelled`.", Scope::Operator, &[200], Some(reason.clone()), operator_route("cancel")),
        route(Method::POST, "/v1/runs/{id}/terminate", "End a run at once without compensation.", Scope::Operator, &[200], Some(reason.clone()), operator_route("terminate")),
        route(Method::POST, "/v1/runs/{id}/retry", "Retry a run held after failing, or a failed compensation.", Scope::Operator, &[200], None, operator_route("retry")),
        route(Method::POST, "/v1/runs/{id}/skip-compensation", "Skip the compensation that failed; the others run.", Scope::Operator, &[200], None, operator_route("skip_compensation")),
        route(Method::POST, "/v1/runs/cancel", "Cancel every run matching a filter (`dry_run` counts them).", Scope::Operator, &[200], Some(json!({"type": "object", "properties": {"filter": filter, "dry_run": {"type": "boolean"}, "reason": {"type": "string"}}})), post(bulk_cancel)),
        route(Method::POST, "/v1/runs/retry", "Retry every run matching a filter (`dry_run` counts them).", Scope::Operator, &[200], Some(json!({"type": "object", "properties": {"filter": filter, "dry_run": {"type": "boolean"}}})), post(bulk_retry)),
        route(Method::GET, "/v1/workflows", "Registered workflow types with their state machines.", Scope::Reader, &[200], None, get(list_workflows)),
        route(Method::GET, "/v1/workflows/{workflow}", "One workflow type: states, edges, signals, timers, compensations.", Scope::Reader, &[200], None, get(get_workflow)),
        route(Method::GET, "/v1/workflows/{workflow}/diagram.svg", "The workflow's state machine as an SVG picture.", Scope::Reader, &[200], None, get(workflow_diagram)),
        route(Method::POST, "/v1/keys", "Create an API key; its secret is in this answer only.", Scope::Operator, &[201], Some(json!({"type": "object", "required": ["scopes"], "properties": {"tenant": {"type": "string"}, "scopes": {"type": "array", "items": {"enum": ["reader", "operator", "admin"]}}, "name": {"type": "string"}, "owner_email": {"type": "string"}, "expires_at": {"type": "string", "format": "date-time"}}})), post(create_key)),
        route(Method::GET, "/v1/keys", "API keys of the caller's tenant (all, for an admin), oldest first. Keyset pagination: `limit` (1 to 500, default 50) and `cursor` (the previous page's `next_cursor`, null on the last page).", Scope::Operator, &[200], None, get(list_keys)),
        route(Method::GET, "/v1/keys/{id}", "One API key.", Scope::Operator, &[200], None, get(get_key)),
        route(Method::DELETE, "/v1/keys/{id}", "Revoke an API key.", Scope::Operator, &[200], None, delete(revoke_key)),
        route(Method::POST, "/v1/keys/{id}/rotate", "Rotate a key: a new key (same tenant, scopes, name, owner) is issued with the rotation's run in one transaction; both work through the grace, then the old one is revoked. The new secret is in this answer only.", Scope::Operator, &[201], Some(json!({"type": "object", "properties": {"grace_period": {"type": "string", "examples": ["24h", "90s"]}, "reason": {"type": "string"}, "emergency": {"type": "boolean"}}})), post(rotate_key)),
        route(Method::PUT, "/v1/keys/{id}/rotation-policy", "Rotate this key on a schedule (a cron rule); scheduled rotations keep the new secret sealed until revealed, and the grace starts at the reveal.", Scope::Operator, &[200], Some(json!({"type": "object", "required": ["cron"], "properties": {"cron": {"type": "string"}, "timezone": {"type": "string"}, "grace_period": {"type": "string"}}})), put(set_rotation_policy)),
        route(Method::DELETE, "/v1/keys/{id}/rotation-policy", "Stop rotating this key on a schedule.", Scope::Operator, &[200], None, delete(delete_rotation_policy)),
        route(Method::POST, "/v1/keys/{id}/reveal", "Reveal, once, the secret of a key nobody has seen yet (a scheduled rotation's, a new tenant's admin key); afterwards only its hash remains.", Scope::Operator, &[200], None, post(reveal_key)),
        route(Method::POST, "/v1/schedules", "Create a schedule: a cron rule (crontab(5) syntax, 5 or 6 fields, in an IANA time zone) that starts runs of a workflow with a fixed input.", Scope::Operator, &[201], Some(json!({"type": "object", "required": ["name", "cron", "workflow"], "properties": {"name": {"type": "string"}, "cron": {"type": "string"}, "timezone": {"type": "string", "default": "UTC"}, "workflow": {"type": "string"}, "input": {}, "overlap": {"enum": ["skip", "buffer_one", "allow", "cancel_previous"]}, "catch_up": {"enum": ["skip", "run_once"]}, "paused": {"type": "boolean"}}})), post(create_schedule)),
        route(Method::GET, "/v1/schedules", "Schedules of the caller's tenant (all, for an admin), oldest first. Keyset pagination: `limit` (1 to 500, default 50) and `cursor` (the previous page's `next_cursor`, null on the last page).", Scope::Reader, &[200], None, get(list_schedules)),
        route(Method::GET, "/v1/schedules/{id}", "One schedule with its next 5 fire times.", Scope::Reader, &[200], None, get(get_schedule)),
        route(Method::PATCH, "/v1/schedules/{id}", "Edit, pause or resume a schedule.", Scope::Operator, &[200], Some(json!({"type": "object"})), patch(update_schedule)),
        route(Method::DELETE, "/v1/schedules/{id}", "Delete a schedule (its runs stay).", Scope::Operator, &[200], None, delete(delete_schedule)),
        route(Method::GET, "/v1/whoami", "The presented key's id, tenant and scopes.", Scope::Reader, &[200], None, get(whoami)),
        route(Method::GET, "/v1/audit", "The append-only audit log of the caller's tenant, newest first (`before`, `limit`).", Scope::Operator, &[200], None, get(audit)),
        route(Method::GET, "/v1/workers", "The worker registry, newest first (hosts and process ids for admins only). Keyset pagination: `limit` (1 to 500, default 50) and `cursor` (the previous page's `next_cursor`, null on the last page).", Scope::Operator, &[200], None, get(workers)),
    ].into_iter().chain(crate::tenants::routes()).collect()
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

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
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

async fn load_run(state: &AppState, caller: &Caller, raw: &str) -> ApiResult<waymark_engine::Run> {
    let id = run_id(raw)?;
    state
        .engine
        .store
        .run_get(&caller.scope(), id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("run {id} not found")))
}

async fn view(state: &AppState, run: waymark_engine::Run) -> ApiResult<RunView> {
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
    let mut view = RunView::new(run);
    view.pending_reason = reason;
    view.children = children;
    view.details = details;
    Ok(view)
}

/// What a workflow's status adds: for a key rotation, the keys, so an operator sees
/// whether clients still use the old one (`last_used_at`).
async fn details(state: &AppState, run: &waymark_engine::Run) -> ApiResult<Option<Value>> {
    if run.workflow != "key_rotation" {
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
