//! Runs: start, read (with long polls), list, history, signals, operator and bulk actions.

use super::*;

/// Starting runs, reading them, signals and operator actions.
pub(super) fn routes() -> Vec<Route> {
    let filter = json!({
        "type": "object",
        "properties": {
            "workflow": {"type": "string"},
            "status": {"type": "string"},
            "state": {"type": "string"},
            "created_after": {"type": "string", "format": "date-time"},
            "created_before": {"type": "string", "format": "date-time"},
            "tag": {"type": "string"}
        }
    });
    let reason = json!({"type": "object", "properties": {"reason": {"type": "string"}}});
    vec![
        Route {
            method: Method::GET,
            path: "/v1/runs",
            summary: paged!(
                "List runs, newest first, with filters (workflow, status, state, \
                 created_after, created_before, tag)."
            ),
            auth: Auth::Key(Scope::Reader),
            success: &[200],
            body: None,
            handler: get(list_runs),
        },
        Route {
            method: Method::GET,
            path: "/v1/runs/{id}",
            summary: "A run's status; `?wait=30s` holds the answer until the run ends or the \
                      time is up (429 with Retry-After past the caps on waiting requests per \
                      key and per process).",
            auth: Auth::Key(Scope::Reader),
            success: &[200],
            body: None,
            handler: get(get_run),
        },
        Route {
            method: Method::GET,
            path: "/v1/runs/{id}/history",
            summary: paged!(
                "Every transition of a run with cause, actor, attempt, timings \
                 and errors, oldest first."
            ),
            auth: Auth::Key(Scope::Reader),
            success: &[200],
            body: None,
            handler: get(run_history),
        },
        Route {
            method: Method::GET,
            path: "/v1/runs/{id}/signals",
            summary: paged!(
                "Signals delivered to a run and what became of them, oldest \
                 first."
            ),
            auth: Auth::Key(Scope::Reader),
            success: &[200],
            body: None,
            handler: get(run_signals),
        },
        Route {
            method: Method::POST,
            path: "/v1/runs/{id}/signals/{signal}",
            summary: "Deliver a signal; the body is its JSON payload. `Idempotency-Key` is \
                      honoured.",
            auth: Auth::Key(Scope::Operator),
            success: &[200, 201],
            body: Some(json!({})),
            handler: post(send_signal),
        },
        Route {
            method: Method::POST,
            path: "/v1/runs/{id}/cancel",
            summary: "Cancel a run: compensation runs, then it ends `cancelled`.",
            auth: Auth::Key(Scope::Operator),
            success: &[200],
            body: Some(reason.clone()),
            handler: operator_route("cancel"),
        },
        Route {
            method: Method::POST,
            path: "/v1/runs/{id}/terminate",
            summary: "End a run at once without compensation.",
            auth: Auth::Key(Scope::Operator),
            success: &[200],
            body: Some(reason.clone()),
            handler: operator_route("terminate"),
        },
        Route {
            method: Method::POST,
            path: "/v1/runs/{id}/retry",
            summary: "Retry a run held after failing, or a failed compensation.",
            auth: Auth::Key(Scope::Operator),
            success: &[200],
            body: None,
            handler: operator_route("retry"),
        },
        Route {
            method: Method::POST,
            path: "/v1/runs/{id}/skip-compensation",
            summary: "Skip the compensation that failed; the others run.",
            auth: Auth::Key(Scope::Operator),
            success: &[200],
            body: None,
            handler: operator_route("skip_compensation"),
        },
        Route {
            method: Method::POST,
            path: "/v1/runs/cancel",
            summary: "Cancel every run matching a filter (`dry_run` counts them).",
            auth: Auth::Key(Scope::Operator),
            success: &[200],
            body: Some(json!({
                "type": "object",
                "properties": {
                    "filter": filter,
                    "dry_run": {"type": "boolean"},
                    "reason": {"type": "string"}
                }
            })),
            handler: post(bulk_cancel),
        },
        Route {
            method: Method::POST,
            path: "/v1/runs/retry",
            summary: "Retry every run matching a filter (`dry_run` counts them).",
            auth: Auth::Key(Scope::Operator),
            success: &[200],
            body: Some(json!({
                "type": "object",
                "properties": {"filter": filter, "dry_run": {"type": "boolean"}}
            })),
            handler: post(bulk_retry),
        },
    ]
}

pub(super) async fn start_run(
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

pub(super) async fn get_run(
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
        let mut watch = state.engine.store.run_watch(run.id).await?;
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

pub(crate) fn filter_from(query: &[(String, String)]) -> ApiResult<RunFilter> {
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

pub(super) async fn list_runs(
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
    let runs: Vec<RunView> = runs
        .into_iter()
        .map(|r| RunView::new(r).redacted(&state.engine.registry))
        .collect();
    Ok(Json(json!({ "runs": runs, "next_cursor": next_cursor })))
}

pub(super) async fn run_history(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<HistoryView>> {
    let id = run_id(&id)?;
    // History ids are positive serials.
    let page = Page::only(query, |c| c.parse::<i64>().ok().filter(|n| *n > 0))?;
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

pub(super) async fn run_signals(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let id = run_id(&id)?;
    let page = Page::only(query, |c| c.parse::<Uuid>().ok())?;
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

pub(super) async fn send_signal(
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
pub(super) struct ReasonBody {
    #[serde(default)]
    reason: Option<String>,
}

pub(super) async fn operator_action(
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
pub(super) fn operator_route(action: &'static str) -> MethodRouter<AppState> {
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
pub(super) struct FilterBody {
    workflow: Option<String>,
    status: Option<RunStatus>,
    state: Option<String>,
    created_after: Option<DateTime<Utc>>,
    created_before: Option<DateTime<Utc>>,
    tag: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BulkBody {
    filter: FilterBody,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    reason: Option<String>,
}

/// The most runs one bulk call acts on; call again for more.
pub(super) const BULK_LIMIT: u32 = 1000;

pub(super) async fn bulk(
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
    bulk_apply(
        &state,
        &caller,
        caller.scope(),
        &filter,
        action,
        request.dry_run,
        request.reason,
    )
    .await
    .map(Json)
}

/// A bulk action on the runs `filter` matches in `scope` (the caller's, or narrower; at
/// most [`BULK_LIMIT`]): `dry_run` only counts those whose status allows `action`.
pub(crate) async fn bulk_apply(
    state: &AppState,
    caller: &Caller,
    scope: TenantScope,
    filter: &RunFilter,
    action: &'static str,
    dry_run: bool,
    reason: Option<String>,
) -> ApiResult<Value> {
    let runs = state
        .engine
        .store
        .runs_list(&scope, filter, None, BULK_LIMIT)
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
    if dry_run {
        return Ok(json!({ "dry_run": true, "matched": eligible.len() }));
    }
    let reason = reason.unwrap_or_else(|| format!("bulk {action} by {}", caller.actor()));
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
        state,
        caller,
        &tenant,
        &format!("runs.bulk_{action}"),
        "runs".into(),
        json!({ "applied": applied.len(), "reason": reason }),
    )
    .await;
    Ok(
        json!({ "dry_run": false, "matched": eligible.len(), "applied": applied, "conflicts": conflicts }),
    )
}

pub(super) async fn bulk_cancel(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    bulk(state, caller, headers, body, "cancel").await
}

pub(super) async fn bulk_retry(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    bulk(state, caller, headers, body, "retry").await
}
