//! Every `/v1` route, in one table that both builds the router and writes the OpenAPI
//! document, so the document cannot miss a route.

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
use crate::paging::{known_only, Page};
use crate::views::{HistoryView, KeyView, RunView};
use crate::{body, AppState};

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

// ---------------------------------------------------------------------------------
// Runs

async fn start_run(
    State(state): State<AppState>,
    caller: Caller,
    Path(workflow): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    request_body: Body,
) -> ApiResult<Response> {
    let query = params(query);
    let tenant = acting_tenant(&caller, param(&query, "tenant"))?;
    startable(&state, &caller, &workflow)?;
    let bytes = body::read(request_body, state.api.max_body).await?;
    let input: Value = body::json(&headers, &bytes, false)?;
    let key = idempotency_key(&headers)?;
    let mut tags = Vec::new();
    for (name, value) in &query {
        match name.as_str() {
            "tag" if value.is_empty() || value.len() > 200 => {
                return Err(ApiError::invalid("tag: must be 1 to 200 characters"));
            }
            "tag" => tags.push(value.clone()),
            "tenant" => {}
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown query parameter {other:?}"
                )))
            }
        }
    }
    let started = state
        .engine
        .start(StartRun {
            tenant,
            workflow,
            input,
            idempotency_key: key,
            tags,
            actor: caller.actor(),
        })
        .await?;
    let status = if started.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let location = format!("/v1/runs/{}", started.run.id);
    let view = view(&state, started.run).await?;
    Ok((status, [(header::LOCATION, location)], Json(view)).into_response())
}

async fn get_run(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<RunView>> {
    let mut run = load_run(&state, &caller, &id).await?;
    let query = params(query);
    let wait = match param(&query, "wait") {
        None => None,
        Some(text) => Some(
            humantime::parse_duration(text)
                .map_err(|e| {
                    ApiError::invalid(format!(
                        "wait: expected a duration like 30s, got {text:?} ({e})"
                    ))
                })?
                .min(state.api.max_wait),
        ),
    };
    if let Some(wait) = wait.filter(|_| !run.status.is_terminal()) {
        let _slot = state.api.waits.enter(
            caller.key.id,
            state.api.max_waiting,
            state.api.max_waiting_per_key,
        )?;
        // Long poll: the store wakes the watch when the run ends (or may have); only
        // then is the run read again, so a waiting request costs no query meanwhile.
        let mut watch = state.engine.store.run_watch(run.id);
        // Registered before this read: an ending after it wakes the watch.
        run = load_run(&state, &caller, &id).await?;
        let deadline = tokio::time::Instant::now() + wait;
        while !run.status.is_terminal() {
            tokio::select! {
                _ = watch.changed() => {}
                _ = tokio::time::sleep_until(deadline) => break,
            }
            run = load_run(&state, &caller, &id).await?;
        }
    }
    Ok(Json(view(&state, run).await?))
}

fn filter_from(query: &[(String, String)]) -> ApiResult<RunFilter> {
    let mut filter = RunFilter::default();
    for (name, value) in query {
        match name.as_str() {
            "workflow" => filter.workflow = Some(value.clone()),
            "status" => {
                filter.status = Some(value.parse::<RunStatus>().map_err(|_| {
                    ApiError::invalid(format!("status: {value:?} is not a run status"))
                })?)
            }
            "state" => filter.state = Some(value.clone()),
            "created_after" => filter.created_after = Some(timestamp("created_after", value)?),
            "created_before" => filter.created_before = Some(timestamp("created_before", value)?),
            "tag" => filter.tag = Some(value.clone()),
            "tenant" | "cursor" | "limit" => {}
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown query parameter {other:?}"
                )))
            }
        }
    }
    Ok(filter)
}

async fn list_runs(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let query = params(query);
    let filter = filter_from(&query)?;
    let page = Page::from_query(&query, |c| c.parse::<Uuid>().ok())?;
    let scope = match (caller.is_admin(), param(&query, "tenant")) {
        (true, Some(tenant)) => TenantScope::Tenant(tenant.to_owned()),
        (false, Some(tenant)) if tenant != caller.key.tenant => {
            return Err(ApiError::forbidden(
                "only an admin key may read another tenant",
            ))
        }
        _ => caller.scope(),
    };
    let runs = state
        .engine
        .store
        .runs_list(&scope, &filter, page.after, page.fetch())
        .await?;
    let (runs, next_cursor) = page.finish(runs, |r| r.id);
    let runs: Vec<RunView> = runs.into_iter().map(RunView::new).collect();
    Ok(Json(json!({ "runs": runs, "next_cursor": next_cursor })))
}

async fn run_history(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<HistoryView>> {
    let id = run_id(&id)?;
    let query = params(query);
    known_only(&query, &["cursor", "limit"])?;
    // History ids are positive serials.
    let page = Page::from_query(&query, |c| c.parse::<i64>().ok().filter(|n| *n > 0))?;
    let history = state
        .engine
        .store
        .run_history_page(&caller.scope(), id, page.after, page.fetch())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("run {id} not found")))?;
    let (history, next_cursor) = page.finish(history, |h| h.id);
    Ok(Json(HistoryView {
        history,
        next_cursor,
    }))
}

async fn run_signals(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let id = run_id(&id)?;
    let query = params(query);
    known_only(&query, &["cursor", "limit"])?;
    let page = Page::from_query(&query, |c| c.parse::<Uuid>().ok())?;
    let signals = state
        .engine
        .store
        .run_signals_page(&caller.scope(), id, page.after, page.fetch())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("run {id} not found")))?;
    let (signals, next_cursor) = page.finish(signals, |s| s.id);
    Ok(Json(
        json!({ "signals": signals, "next_cursor": next_cursor }),
    ))
}

async fn send_signal(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, signal)): Path<(String, String)>,
    headers: HeaderMap,
    request_body: Body,
) -> ApiResult<Response> {
    let run = load_run(&state, &caller, &id).await?;
    let declared = state
        .engine
        .registry
        .get(&run.workflow)
        .is_some_and(|w| w.definition().signal_def(&signal).is_some());
    if !declared {
        return Err(ApiError::not_found(format!(
            "workflow {:?} has no signal {signal:?}",
            run.workflow
        )));
    }
    let bytes = body::read(request_body, state.api.max_body).await?;
    let payload: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        body::json(&headers, &bytes, false)?
    };
    let key = idempotency_key(&headers)?;
    let receipt = state
        .engine
        .signal(
            &caller.scope(),
            SendSignal {
                run_id: run.id,
                name: signal,
                payload,
                idempotency_key: key,
                actor: caller.actor(),
            },
        )
        .await?;
    let status = if receipt.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({ "id": receipt.id, "run_id": run.id, "consumed": receipt.consumed })),
    )
        .into_response())
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReasonBody {
    #[serde(default)]
    reason: Option<String>,
}

async fn operator_action(
    state: AppState,
    caller: Caller,
    id: String,
    headers: HeaderMap,
    request_body: Body,
    action: &'static str,
) -> ApiResult<Json<RunView>> {
    let run = load_run(&state, &caller, &id).await?;
    let bytes = body::read(request_body, state.api.max_body).await?;
    let reason: ReasonBody = body::json(&headers, &bytes, true)?;
    let reason = reason
        .reason
        .unwrap_or_else(|| format!("{action} by {}", caller.actor()));
    if reason.len() > 1000 {
        return Err(ApiError::invalid("reason: at most 1000 characters"));
    }
    let scope = caller.scope();
    let actor = caller.actor();
    let engine = &state.engine;
    let address = caller.address.as_deref();
    let after = match action {
        "cancel" => {
            engine
                .cancel(&scope, run.id, &actor, &reason, address)
                .await?
        }
        "terminate" => {
            engine
                .terminate(&scope, run.id, &actor, &reason, address)
                .await?
        }
        "retry" => engine.retry(&scope, run.id, &actor, address).await?,
        _ => {
            engine
                .skip_compensation(&scope, run.id, &actor, address)
                .await?
        }
    };
    // The audit record was written with the action, in its transaction.
    Ok(Json(view(&state, after).await?))
}

/// The route of one operator action on a run (cancel, terminate, retry, skip).
fn operator_route(action: &'static str) -> MethodRouter<AppState> {
    post(
        move |State(state): State<AppState>,
              caller: Caller,
              Path(id): Path<String>,
              headers: HeaderMap,
              body: Body| async move {
            operator_action(state, caller, id, headers, body, action).await
        },
    )
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FilterBody {
    workflow: Option<String>,
    status: Option<RunStatus>,
    state: Option<String>,
    created_after: Option<DateTime<Utc>>,
    created_before: Option<DateTime<Utc>>,
    tag: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkBody {
    filter: FilterBody,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    reason: Option<String>,
}

/// The most runs one bulk call acts on; call again for more.
const BULK_LIMIT: u32 = 1000;

async fn bulk(
    state: AppState,
    caller: Caller,
    headers: HeaderMap,
    request_body: Body,
    action: &'static str,
) -> ApiResult<Json<Value>> {
    let bytes = body::read(request_body, state.api.max_body).await?;
    let request: BulkBody = body::json(&headers, &bytes, false)?;
    let filter = RunFilter {
        workflow: request.filter.workflow,
        status: request.filter.status,
        state: request.filter.state,
        created_after: request.filter.created_after,
        created_before: request.filter.created_before,
        tag: request.filter.tag,
    };
    let scope = caller.scope();
    let runs = state
        .engine
        .store
        .runs_list(&scope, &filter, None, BULK_LIMIT)
        .await?;
    let eligible: Vec<_> = runs
        .into_iter()
        .filter(|r| match action {
            "cancel" => {
                !r.status.is_terminal()
                    && !matches!(
                        r.status,
                        RunStatus::Compensating | RunStatus::CompensationFailed
                    )
            }
            _ => {
                (r.status == RunStatus::Failed && r.held)
                    || r.status == RunStatus::CompensationFailed
            }
        })
        .collect();
    if request.dry_run {
        return Ok(Json(json!({ "dry_run": true, "matched": eligible.len() })));
    }
    let reason = request
        .reason
        .unwrap_or_else(|| format!("bulk {action} by {}", caller.actor()));
    let actor = caller.actor();
    let (mut applied, mut conflicts) = (Vec::new(), Vec::new());
    for run in &eligible {
        let outcome = match action {
            "cancel" => {
                state
                    .engine
                    .cancel(&scope, run.id, &actor, &reason, caller.address.as_deref())
                    .await
            }
            _ => {
                state
                    .engine
                    .retry(&scope, run.id, &actor, caller.address.as_deref())
                    .await
            }
        };
        match outcome {
            Ok(_) => applied.push(run.id),
            Err(waymark_engine::EngineError::Conflict(message)) => {
                conflicts.push(json!({ "id": run.id, "detail": message }))
            }
            Err(other) => return Err(other.into()),
        }
    }
    let tenant = match &scope {
        TenantScope::Tenant(t) => t.clone(),
        TenantScope::All => caller.key.tenant.clone(),
    };
    audit_record(
        &state,
        &caller,
        &tenant,
        &format!("runs.bulk_{action}"),
        "runs".into(),
        json!({ "applied": applied.len(), "reason": reason }),
    )
    .await;
    Ok(Json(
        json!({ "dry_run": false, "matched": eligible.len(), "applied": applied, "conflicts": conflicts }),
    ))
}

async fn bulk_cancel(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    bulk(state, caller, headers, body, "cancel").await
}

async fn bulk_retry(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    bulk(state, caller, headers, body, "retry").await
}

// ---------------------------------------------------------------------------------
// Workflows

fn describe(workflow: &dyn waymark_engine::workflow::ErasedWorkflow) -> Value {
    let definition = workflow.definition();
    let mut started_by = vec!["waymark"];
    if definition.startable_by(false) {
        started_by.push("operator");
    }
    if definition.startable_by(true) {
        started_by.push("admin");
    }
    json!({
        "name": workflow.name(),
        "version": workflow.version(),
        "access": definition.access,
        "started_by": started_by,
        "definition": definition,
    })
}

/// A workflow the caller may see: a system workflow (one that acts across tenants) is
/// Waymark's own business, and to a tenant's key it does not exist.
fn visible<'a>(
    state: &'a AppState,
    caller: &Caller,
    name: &str,
) -> ApiResult<&'a Arc<dyn ErasedWorkflow>> {
    state
        .engine
        .registry
        .get(name)
        .filter(|w| caller.is_admin() || w.definition().access != Access::System)
        .ok_or_else(|| ApiError::not_found(format!("workflow {name:?} not found")))
}

/// A workflow the caller may start through the generic route: tenants' keys only
/// tenant workflows (the others answer 404, like a workflow that does not exist);
/// admins also those that allow it. Waymark's own workflows are started by their own
/// routes, which check what this one cannot (a slug reservation, a key's scope).
fn startable<'a>(
    state: &'a AppState,
    caller: &Caller,
    name: &str,
) -> ApiResult<&'a Arc<dyn ErasedWorkflow>> {
    let workflow = state
        .engine
        .registry
        .get(name)
        .filter(|w| caller.is_admin() || w.definition().startable_by(false))
        .ok_or_else(|| ApiError::not_found(format!("workflow {name:?} not found")))?;
    if !workflow.definition().startable_by(caller.is_admin()) {
        return Err(ApiError::forbidden(format!(
            "workflow {name:?} is started only by Waymark itself (through its own route or schedule)"
        )));
    }
    Ok(workflow)
}

async fn list_workflows(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Value>> {
    let workflows: Vec<Value> = state
        .engine
        .registry
        .iter()
        .filter(|w| caller.is_admin() || w.definition().access != Access::System)
        .map(|w| describe(w.as_ref()))
        .collect();
    Ok(Json(json!({ "workflows": workflows })))
}

async fn get_workflow(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let workflow = visible(&state, &caller, &name)?;
    Ok(Json(describe(workflow.as_ref())))
}

async fn workflow_diagram(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let workflow = visible(&state, &caller, &name)?;
    let svg = crate::diagram::svg(workflow.name(), workflow.definition());
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response())
}

// ---------------------------------------------------------------------------------
// Keys, identity, audit, workers

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    #[serde(default)]
    tenant: Option<String>,
    scopes: Vec<Scope>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    owner_email: Option<String>,
    #[serde(default)]
    expires_at: Option<DateTime<Utc>>,
}

async fn create_key(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    request_body: Body,
) -> ApiResult<Response> {
    let bytes = body::read(request_body, state.api.max_body).await?;
    let request: CreateKey = body::json(&headers, &bytes, false)?;
    let tenant = match (&request.tenant, caller.is_admin()) {
        (None, true) => {
            return Err(ApiError::invalid(
                "tenant: required when an admin creates a key",
            ))
        }
        (None, false) => caller.key.tenant.clone(),
        (Some(t), false) if *t != caller.key.tenant => {
            return Err(ApiError::forbidden(
                "an operator manages only its own tenant's keys",
            ))
        }
        (Some(t), _) if !is_valid_tenant(t) => {
            return Err(ApiError::invalid(format!(
                "tenant: {t:?} is not a valid slug (expected ^[a-z][a-z0-9-]{{2,39}}$)"
            )))
        }
        (Some(t), _) => t.clone(),
    };
    if request.scopes.is_empty() {
        return Err(ApiError::invalid("scopes: at least one scope is required"));
    }
    let widest = request
        .scopes
        .iter()
        .copied()
        .max()
        .unwrap_or(Scope::Reader);
    if widest > caller.key.top_scope() {
        return Err(ApiError::forbidden(format!(
            "a key may not grant a scope wider than its own ({} > {})",
            widest,
            caller.key.top_scope()
        )));
    }
    if let Some(name) = &request.name {
        if name.is_empty() || name.len() > 200 {
            return Err(ApiError::invalid("name: 1 to 200 characters"));
        }
    }
    if let Some(email) = &request.owner_email {
        waymark_services::mail::parse_mailbox("owner_email", email)
            .map_err(|e| ApiError::invalid(e.to_string()))?;
    }
    let now = state.engine.clock.now();
    if request.expires_at.is_some_and(|t| t <= now) {
        return Err(ApiError::invalid("expires_at: must be in the future"));
    }
    let mut scopes = request.scopes;
    scopes.sort();
    scopes.dedup();
    let (record, secret) = waymark_engine::keys::issue(
        &state.engine.store,
        IssueKey {
            tenant,
            scopes,
            name: request.name,
            owner_email: request.owner_email,
            expires_at: request.expires_at,
            actor: caller.actor(),
            address: caller.address.clone(),
        },
        None,
        now,
    )
    .await?;
    let mut body =
        serde_json::to_value(KeyView::new(record, now)).map_err(|e| ApiError::internal(&e))?;
    body["secret"] = json!(secret.expose());
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn list_keys(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let query = params(query);
    known_only(&query, &["cursor", "limit"])?;
    let page = Page::from_query(&query, |c| c.parse::<Uuid>().ok())?;
    let now = state.engine.clock.now();
    let keys = state
        .engine
        .store
        .keys_page(&caller.scope(), page.after, page.fetch())
        .await?;
    let (keys, next_cursor) = page.finish(keys, |k| k.id);
    let keys: Vec<KeyView> = keys.into_iter().map(|k| KeyView::new(k, now)).collect();
    Ok(Json(json!({ "keys": keys, "next_cursor": next_cursor })))
}

async fn get_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<KeyView>> {
    let id = key_id(&id)?;
    let key = state
        .engine
        .store
        .key_get(&caller.scope(), id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("key {id} not found")))?;
    Ok(Json(KeyView::new(key, state.engine.clock.now())))
}

async fn revoke_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<KeyView>> {
    let id = key_id(&id)?;
    let scope = caller.scope();
    let existing = state
        .engine
        .store
        .key_get(&scope, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("key {id} not found")))?;
    if existing.top_scope() > caller.key.top_scope() {
        return Err(ApiError::forbidden(
            "a key may not revoke a key with a wider scope than its own",
        ));
    }
    let now = state.engine.clock.now();
    let audit = NewAudit {
        tenant: existing.tenant.clone(),
        actor: caller.actor(),
        action: "key.revoked".into(),
        target: Some(format!("key:{id}")),
        detail: json!({ "prefix": existing.prefix }),
        address: caller.address.clone(),
        at: now,
    };
    let key = state
        .engine
        .store
        .key_revoke(&scope, id, &caller.actor(), now, &audit)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("key {id} not found")))?;
    Ok(Json(KeyView::new(key, now)))
}

async fn reveal_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = key_id(&id)?;
    let scope = caller.scope();
    if let Some(key) = state.engine.store.key_get(&scope, id).await? {
        if key.top_scope() > caller.key.top_scope() {
            return Err(ApiError::forbidden(
                "a key may not reveal a key with a wider scope than its own",
            ));
        }
    }
    let now = state.engine.clock.now();
    match waymark_engine::keys::reveal(
        &state.engine.store,
        &state.api.sealer,
        &scope,
        id,
        &caller.actor(),
        caller.address.clone(),
        now,
    )
    .await
    {
        Ok(secret) => {
            tell_rotation_revealed(&state, &scope, id).await;
            Ok(Json(json!({ "id": id, "secret": secret.expose() })))
        }
        Err(waymark_engine::keys::RevealError::NotFound) => {
            Err(ApiError::not_found(format!("key {id} not found")))
        }
        Err(e @ waymark_engine::keys::RevealError::NothingToReveal) => {
            Err(ApiError::conflict(e.to_string()))
        }
        Err(waymark_engine::keys::RevealError::Store(e)) => Err(e.into()),
        // This process cannot open it but one with the right master key can (behind
        // the same load balancer, or after WAYMARK_MASTER_KEY is fixed): the secret
        // is kept, and the ids say what to fix.
        Err(
            e @ (waymark_engine::keys::RevealError::OtherMasterKey { .. }
            | waymark_engine::keys::RevealError::Unsealable { .. }),
        ) => {
            tracing::error!(key = %id, error = %e, "cannot reveal a sealed secret");
            Err(ApiError::unavailable(e.to_string()))
        }
    }
}

/// A scheduled rotation waits for its new key's reveal: tell it.
async fn tell_rotation_revealed(state: &AppState, scope: &TenantScope, new_key: Uuid) {
    let filter = RunFilter {
        workflow: Some("key_rotation".into()),
        status: Some(RunStatus::Waiting),
        ..Default::default()
    };
    let Ok(runs) = state
        .engine
        .store
        .runs_list(scope, &filter, None, 500)
        .await
    else {
        return;
    };
    for run in runs
        .into_iter()
        .filter(|r| r.state_data.get("new_key_id") == Some(&json!(new_key)))
    {
        let signal = SendSignal {
            run_id: run.id,
            name: "revealed".into(),
            payload: Value::Null,
            idempotency_key: Some(format!("revealed:{new_key}")),
            actor: "waymark".into(),
        };
        if let Err(error) = state.engine.signal(scope, signal).await {
            tracing::warn!(run = %run.id, error = %error, "cannot tell the rotation its key was revealed");
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    #[serde(default)]
    grace_period: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    emergency: bool,
}

fn grace(text: Option<&str>, default: Duration) -> ApiResult<Duration> {
    let Some(text) = text else { return Ok(default) };
    let grace = humantime::parse_duration(text).map_err(|e| {
        ApiError::invalid(format!(
            "grace_period: expected a duration like 24h or 90s, got {text:?} ({e})"
        ))
    })?;
    if grace < Duration::from_secs(1) {
        return Err(ApiError::invalid("grace_period: at least 1s"));
    }
    waymark_engine::workflow::check_duration(grace)
        .map_err(|e| ApiError::invalid(format!("grace_period: {e}")))
}

async fn rotate_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    request_body: Body,
) -> ApiResult<Response> {
    let id = key_id(&id)?;
    let scope = caller.scope();
    let old = state
        .engine
        .store
        .key_get(&scope, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("key {id} not found")))?;
    if old.top_scope() > caller.key.top_scope() {
        return Err(ApiError::forbidden(
            "a key may not rotate a key with a wider scope than its own",
        ));
    }
    let bytes = body::read(request_body, state.api.max_body).await?;
    let request: RotateBody = body::json(&headers, &bytes, true)?;
    let grace_period = grace(request.grace_period.as_deref(), state.api.rotation_grace)?;
    if request.reason.as_ref().is_some_and(|r| r.len() > 1000) {
        return Err(ApiError::invalid("reason: at most 1000 characters"));
    }
    let now = state.engine.clock.now();
    if !old.is_active(now) || old.awaiting_reveal {
        return Err(ApiError::conflict(format!("key {id} is not active (revoked, expired, suspended or never revealed); nothing to rotate")));
    }
    let secret = waymark_engine::keys::Secret::generate();
    let (new_key, audit) = waymark_engine::keys::prepare_key(
        IssueKey {
            tenant: old.tenant.clone(),
            scopes: old.scopes.clone(),
            name: old.name.clone(),
            owner_email: old.owner_email.clone(),
            expires_at: None,
            actor: caller.actor(),
            address: caller.address.clone(),
        },
        &secret,
        None,
        now,
    );
    let mut audit = audit;
    audit.action = "key.rotated".into();
    audit.detail["replaces"] = json!(id);
    audit.detail["emergency"] = json!(request.emergency);
    let input = json!({
        "key_id": id,
        "grace_period": humantime::format_duration(grace_period).to_string(),
        "reason": request.reason,
        "emergency": request.emergency,
        "new_key_id": new_key.id,
    });
    let run = state.engine.prepare(StartRun {
        tenant: old.tenant.clone(),
        workflow: "key_rotation".into(),
        input,
        idempotency_key: None,
        tags: vec![format!("key:{id}")],
        actor: caller.actor(),
    })?;
    let (record, run) = state
        .engine
        .store
        .key_rotation_start(id, &new_key, &audit, &run)
        .await?;
    state.engine.metrics.run_started("key_rotation");
    let mut body =
        serde_json::to_value(KeyView::new(record, now)).map_err(|e| ApiError::internal(&e))?;
    body["secret"] = json!(secret.expose());
    body["run_id"] = json!(run.id);
    body["replaces"] = json!(id);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyBody {
    cron: String,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    grace_period: Option<String>,
}

fn policy_name(key: Uuid) -> String {
    format!("key-rotation-{key}")
}

async fn set_rotation_policy(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    request_body: Body,
) -> ApiResult<Json<Value>> {
    let id = key_id(&id)?;
    let scope = caller.scope();
    let key = state
        .engine
        .store
        .key_get(&scope, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("key {id} not found")))?;
    if key.top_scope() > caller.key.top_scope() {
        return Err(ApiError::forbidden(
            "a key may not set the rotation policy of a key with a wider scope than its own",
        ));
    }
    let bytes = body::read(request_body, state.api.max_body).await?;
    let request: PolicyBody = body::json(&headers, &bytes, false)?;
    let grace_period = grace(request.grace_period.as_deref(), state.api.rotation_grace)?;
    let now = state.engine.clock.now();
    let existing = state
        .engine
        .store
        .schedule_list(&TenantScope::Tenant(key.tenant.clone()))
        .await?
        .into_iter()
        .find(|s| s.input.get("key_id") == Some(&json!(id)) && s.workflow == "key_rotation");
    let is_new = existing.is_none();
    let schedule_id = existing.as_ref().map(|s| s.id).unwrap_or_else(Uuid::now_v7);
    let mut schedule = existing.unwrap_or(Schedule {
        id: schedule_id,
        tenant: key.tenant.clone(),
        name: policy_name(id),
        cron: String::new(),
        timezone: String::new(),
        workflow: "key_rotation".into(),
        input: Value::Null,
        overlap: Overlap::Skip,
        catch_up: CatchUp::RunOnce,
        paused: false,
        last_fired_at: now,
        next_fire_at: None,
        last_run_id: None,
        buffered_fire_at: None,
        created_at: now,
        updated_at: now,
        created_by: caller.actor(),
    });
    schedule.cron = request.cron;
    schedule.timezone = request.timezone.unwrap_or_else(|| "UTC".into());
    schedule.input = json!({
        "key_id": id,
        "grace_period": humantime::format_duration(grace_period).to_string(),
        "reason": "rotation policy",
        "policy_schedule": schedule_id,
    });
    schedule.last_fired_at = now;
    schedule.updated_at = now;
    let cron = check_schedule(&state, &schedule)?;
    schedule.next_fire_at = cron.next_after(now);
    let stored = if is_new {
        state
            .engine
            .store
            .schedule_insert(&schedule, false)
            .await?
            .ok_or_else(|| ApiError::conflict("a rotation policy schedule already exists"))?
    } else {
        state.engine.store.schedule_update(&schedule).await?
    };
    audit_record(
        &state,
        &caller,
        &key.tenant,
        "key.rotation_policy",
        format!("key:{id}"),
        json!({ "cron": stored.cron, "schedule": stored.id }),
    )
    .await;
    Ok(Json(schedule_view(stored, now)))
}

async fn delete_rotation_policy(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = key_id(&id)?;
    let scope = caller.scope();
    let key = state
        .engine
        .store
        .key_get(&scope, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("key {id} not found")))?;
    if key.top_scope() > caller.key.top_scope() {
        return Err(ApiError::forbidden(
            "a key may not remove the rotation policy of a key with a wider scope than its own",
        ));
    }
    let existing = state
        .engine
        .store
        .schedule_list(&TenantScope::Tenant(key.tenant.clone()))
        .await?
        .into_iter()
        .find(|s| s.input.get("key_id") == Some(&json!(id)) && s.workflow == "key_rotation")
        .ok_or_else(|| ApiError::not_found(format!("key {id} has no rotation policy")))?;
    state
        .engine
        .store
        .schedule_delete(&scope, existing.id)
        .await?;
    audit_record(
        &state,
        &caller,
        &key.tenant,
        "key.rotation_policy_removed",
        format!("key:{id}"),
        json!({ "schedule": existing.id }),
    )
    .await;
    Ok(Json(json!({ "key_id": id, "deleted": true })))
}

async fn whoami(caller: Caller) -> ApiResult<Json<Value>> {
    Ok(Json(json!({
        "key_id": caller.key.id,
        "prefix": caller.key.prefix,
        "tenant": caller.key.tenant,
        "scopes": caller.key.scopes,
        "name": caller.key.name,
    })))
}

async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let query = params(query);
    let limit = match param(&query, "limit") {
        None => 100,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| ApiError::invalid(format!("limit: expected 1 to 1000, got {text:?}")))?,
    };
    let before = match param(&query, "before") {
        None => None,
        Some(text) => Some(
            text.parse::<i64>()
                .map_err(|_| ApiError::invalid(format!("before: {text:?} is not an audit id")))?,
        ),
    };
    let entries = state
        .engine
        .store
        .audit_list(&caller.scope(), before, limit)
        .await?;
    Ok(Json(json!({ "entries": entries })))
}

async fn workers(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let query = params(query);
    known_only(&query, &["cursor", "limit"])?;
    let page = Page::from_query(&query, |c| c.parse::<Uuid>().ok())?;
    let workers = state
        .engine
        .store
        .workers_page(page.after, page.fetch())
        .await?;
    let (workers, next_cursor) = page.finish(workers, |w| w.id);
    let mut workers = serde_json::to_value(workers).map_err(|e| ApiError::internal(&e))?;
    // Where Waymark runs (hosts, process ids) is the installation's business, not a
    // tenant's: only an admin sees it.
    if !caller.is_admin() {
        for worker in workers.as_array_mut().into_iter().flatten() {
            if let Some(fields) = worker.as_object_mut() {
                fields.remove("host");
                fields.remove("pid");
            }
        }
    }
    Ok(Json(
        json!({ "workers": workers, "next_cursor": next_cursor }),
    ))
}

// ---------------------------------------------------------------------------------
// Schedules

fn schedule_id(raw: &str) -> ApiResult<Uuid> {
    raw.parse()
        .map_err(|_| ApiError::not_found(format!("schedule {raw:?} not found")))
}

fn schedule_view(schedule: Schedule, now: DateTime<Utc>) -> Value {
    let upcoming = match (
        schedule.paused,
        CronSchedule::parse(&schedule.cron, &schedule.timezone),
    ) {
        (false, Ok(cron)) => cron.upcoming(now, 5),
        _ => Vec::new(),
    };
    let mut view = serde_json::to_value(&schedule).unwrap_or_default();
    view["next_fire_times"] = json!(upcoming);
    view
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleBody {
    name: Option<String>,
    cron: Option<String>,
    timezone: Option<String>,
    workflow: Option<String>,
    input: Option<Value>,
    overlap: Option<Overlap>,
    catch_up: Option<CatchUp>,
    paused: Option<bool>,
}

fn check_schedule_name(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_. ".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "name: {name:?} must be 1 to 100 letters, digits, spaces or -_."
        )))
    }
}

/// Whether the caller may point a schedule at `name`: the same rule as the generic
/// start route, answered as a field error (a tenant's key cannot tell Waymark's own
/// workflows from workflows that do not exist).
fn check_schedulable(state: &AppState, caller: &Caller, name: &str) -> ApiResult<()> {
    match state.engine.registry.get(name) {
        Some(w) if w.definition().startable_by(caller.is_admin()) => Ok(()),
        Some(w) if caller.is_admin() || w.definition().startable_by(false) => {
            Err(ApiError::invalid(format!(
                "workflow: {name:?} is started only by Waymark itself, not by schedules"
            )))
        }
        _ => Err(ApiError::invalid(format!(
            "workflow: {name:?} is not a registered workflow"
        ))),
    }
}

/// Checks the parts of a schedule that must fit together: the rule, the zone, the
/// workflow and its input (so a schedule never fires a run that cannot start).
fn check_schedule(state: &AppState, s: &Schedule) -> ApiResult<CronSchedule> {
    check_schedule_name(&s.name)?;
    let cron = CronSchedule::parse(&s.cron, &s.timezone)
        .map_err(|e| ApiError::invalid(format!("cron: {e}")))?;
    let workflow = state.engine.registry.get(&s.workflow).ok_or_else(|| {
        ApiError::invalid(format!(
            "workflow: {:?} is not a registered workflow",
            s.workflow
        ))
    })?;
    if workflow.definition().access == Access::System && s.tenant != waymark_engine::SYSTEM_TENANT {
        return Err(ApiError::invalid(format!(
            "workflow: {:?} runs only in the {:?} tenant",
            s.workflow,
            waymark_engine::SYSTEM_TENANT
        )));
    }
    workflow
        .initial_state(&s.input)
        .map_err(|e| ApiError::invalid(format!("input: {e}")))?;
    Ok(cron)
}

async fn create_schedule(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    request_body: Body,
) -> ApiResult<Response> {
    let query = params(query);
    let tenant = acting_tenant(&caller, param(&query, "tenant"))?;
    let bytes = body::read(request_body, state.api.max_body).await?;
    let body: ScheduleBody = body::json(&headers, &bytes, false)?;
    let now = state.engine.clock.now();
    let mut schedule = Schedule {
        id: Uuid::now_v7(),
        tenant: tenant.clone(),
        name: body
            .name
            .ok_or_else(|| ApiError::invalid("name: required"))?,
        cron: body
            .cron
            .ok_or_else(|| ApiError::invalid("cron: required"))?,
        timezone: body.timezone.unwrap_or_else(|| "UTC".to_owned()),
        workflow: body
            .workflow
            .ok_or_else(|| ApiError::invalid("workflow: required"))?,
        input: body.input.unwrap_or_else(|| json!({})),
        overlap: body.overlap.unwrap_or_default(),
        catch_up: body.catch_up.unwrap_or_default(),
        paused: body.paused.unwrap_or(false),
        last_fired_at: now,
        next_fire_at: None,
        last_run_id: None,
        buffered_fire_at: None,
        created_at: now,
        updated_at: now,
        created_by: caller.actor(),
    };
    check_schedulable(&state, &caller, &schedule.workflow)?;
    let cron = check_schedule(&state, &schedule)?;
    schedule.next_fire_at = cron.next_after(now);
    let stored = state
        .engine
        .store
        .schedule_insert(&schedule, false)
        .await?
        .ok_or_else(|| {
            ApiError::conflict(format!(
                "a schedule named {:?} already exists",
                schedule.name
            ))
        })?;
    audit_record(
        &state,
        &caller,
        &tenant,
        "schedule.created",
        format!("schedule:{}", stored.id),
        json!({ "name": stored.name, "cron": stored.cron, "workflow": stored.workflow }),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v1/schedules/{}", stored.id))],
        Json(schedule_view(stored, now)),
    )
        .into_response())
}

async fn list_schedules(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let query = params(query);
    known_only(&query, &["cursor", "limit"])?;
    let page = Page::from_query(&query, |c| c.parse::<Uuid>().ok())?;
    let now = state.engine.clock.now();
    let schedules = state
        .engine
        .store
        .schedules_page(&caller.scope(), page.after, page.fetch())
        .await?;
    let (schedules, next_cursor) = page.finish(schedules, |s| s.id);
    let schedules: Vec<Value> = schedules
        .into_iter()
        .map(|s| schedule_view(s, now))
        .collect();
    Ok(Json(
        json!({ "schedules": schedules, "next_cursor": next_cursor }),
    ))
}

async fn load_schedule(state: &AppState, caller: &Caller, raw: &str) -> ApiResult<Schedule> {
    let id = schedule_id(raw)?;
    state
        .engine
        .store
        .schedule_get(&caller.scope(), id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("schedule {id} not found")))
}

async fn get_schedule(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let schedule = load_schedule(&state, &caller, &id).await?;
    Ok(Json(schedule_view(schedule, state.engine.clock.now())))
}

async fn update_schedule(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    request_body: Body,
) -> ApiResult<Json<Value>> {
    let mut schedule = load_schedule(&state, &caller, &id).await?;
    let bytes = body::read(request_body, state.api.max_body).await?;
    let body: ScheduleBody = body::json(&headers, &bytes, false)?;
    let now = state.engine.clock.now();
    let was_paused = schedule.paused;
    let rule_changed = body.cron.is_some() || body.timezone.is_some();
    // What a schedule starts is the caller's to choose only for workflows the caller
    // could start: a key's rotation policy names its key in its input, and pointing it
    // at another key would rotate a key the caller may not manage.
    if body.workflow.is_some() || body.input.is_some() {
        if !state
            .engine
            .registry
            .get(&schedule.workflow)
            .is_some_and(|w| w.definition().startable_by(caller.is_admin()))
        {
            return Err(ApiError::invalid(format!(
                "workflow, input: this schedule starts {:?}, which Waymark manages; change it through its own route",
                schedule.workflow
            )));
        }
        check_schedulable(
            &state,
            &caller,
            body.workflow.as_deref().unwrap_or(&schedule.workflow),
        )?;
    }
    if let Some(name) = body.name {
        schedule.name = name;
    }
    if let Some(cron) = body.cron {
        schedule.cron = cron;
    }
    if let Some(timezone) = body.timezone {
        schedule.timezone = timezone;
    }
    if let Some(workflow) = body.workflow {
        schedule.workflow = workflow;
    }
    if let Some(input) = body.input {
        schedule.input = input;
    }
    if let Some(overlap) = body.overlap {
        schedule.overlap = overlap;
    }
    if let Some(catch_up) = body.catch_up {
        schedule.catch_up = catch_up;
    }
    if let Some(paused) = body.paused {
        schedule.paused = paused;
    }
    let cron = check_schedule(&state, &schedule)?;
    // A resumed or re-timed schedule starts from now: fire times it passed while paused
    // or under its old rule are not owed.
    if (was_paused && !schedule.paused) || rule_changed {
        schedule.last_fired_at = now;
        schedule.buffered_fire_at = None;
    }
    schedule.next_fire_at = cron.next_after(schedule.last_fired_at.max(now));
    schedule.updated_at = now;
    let stored = state.engine.store.schedule_update(&schedule).await?;
    audit_record(
        &state,
        &caller,
        &stored.tenant,
        "schedule.updated",
        format!("schedule:{}", stored.id),
        json!({ "paused": stored.paused, "cron": stored.cron }),
    )
    .await;
    Ok(Json(schedule_view(stored, now)))
}

async fn delete_schedule(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let schedule = load_schedule(&state, &caller, &id).await?;
    state
        .engine
        .store
        .schedule_delete(&caller.scope(), schedule.id)
        .await?;
    audit_record(
        &state,
        &caller,
        &schedule.tenant,
        "schedule.deleted",
        format!("schedule:{}", schedule.id),
        json!({ "name": schedule.name }),
    )
    .await;
    Ok(Json(json!({ "id": schedule.id, "deleted": true })))
}

// ---------------------------------------------------------------------------------
// OpenAPI

/// The OpenAPI 3.1 document, written from [`table`].
pub fn openapi() -> Value {
    let mut paths: HashMap<String, serde_json::Map<String, Value>> = HashMap::new();
    let problem = json!({"description": "A problem (RFC 9457)", "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}});
    for route in table() {
        let mut responses = serde_json::Map::new();
        for code in route.success {
            responses.insert(code.to_string(), json!({"description": "Success", "content": {"application/json": {"schema": {"type": "object"}}}}));
        }
        for code in [400, 401, 403, 404, 409, 413, 422, 429, 503] {
            responses.insert(code.to_string(), problem.clone());
        }
        let parameters: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let mut operation = json!({
            "summary": route.summary,
            "security": [{"bearer": []}],
            "x-waymark-scope": route.scope,
            "parameters": parameters,
            "responses": responses,
        });
        if let Some(schema) = route.body {
            operation["requestBody"] = json!({"content": {"application/json": {"schema": schema}}});
        }
        paths
            .entry(route.path.to_owned())
            .or_default()
            .insert(route.method.as_str().to_ascii_lowercase(), operation);
    }
    for (path, summary) in [
        ("/healthz", "The process is up."),
        (
            "/readyz",
            "The database answers and migrations are applied.",
        ),
        ("/openapi.json", "This document."),
        (
            "/metrics",
            "Prometheus metrics (a bearer token when WAYMARK_METRICS_TOKEN is set).",
        ),
    ] {
        paths.entry(path.to_owned()).or_default().insert(
            "get".into(),
            json!({"summary": summary, "security": [], "responses": {"200": {"description": "OK"}, "503": problem}}),
        );
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Waymark", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Problem": {"type": "object", "required": ["type", "title", "status", "detail"], "properties": {
                "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"}, "detail": {"type": "string"}}}}
        }
    })
}

pub async fn openapi_json() -> impl IntoResponse {
    Json(openapi())
}
