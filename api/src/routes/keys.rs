//! API keys (create, list, revoke, reveal, rotate, rotation policies), identity, audit and the worker registry.

use waymark_engine::Workflow;
use waymark_workflows::key_rotation::{self, KeyRotation, RotationInput};

use super::*;

/// API keys, identity, the audit log and the worker registry.
pub(super) fn routes() -> Vec<Route> {
    vec![
        Route {
            method: Method::POST,
            path: "/v1/keys",
            summary: "Create an API key; its secret is in this answer only.",
            auth: Auth::Key(Scope::Operator),
            success: &[201],
            body: Some(json!({
                "type": "object",
                "required": ["scopes"],
                "properties": {
                    "tenant": {"type": "string"},
                    "scopes": {
                        "type": "array",
                        "items": {"enum": ["reader", "operator", "admin"]}
                    },
                    "name": {"type": "string"},
                    "owner_email": {"type": "string"},
                    "expires_at": {"type": "string", "format": "date-time"}
                }
            })),
            handler: post(create_key),
        },
        Route {
            method: Method::GET,
            path: "/v1/keys",
            summary: paged!(
                "API keys of the caller's tenant (all, for an admin), oldest \
                 first."
            ),
            auth: Auth::Key(Scope::Operator),
            success: &[200],
            body: None,
            handler: get(list_keys),
        },
        Route {
            method: Method::GET,
            path: "/v1/keys/{id}",
            summary: "One API key.",
            auth: Auth::Key(Scope::Operator),
            success: &[200],
            body: None,
            handler: get(get_key),
        },
        Route {
            method: Method::DELETE,
            path: "/v1/keys/{id}",
            summary: "Revoke an API key.",
            auth: Auth::Key(Scope::Operator),
            success: &[200],
            body: None,
            handler: delete(revoke_key),
        },
        Route {
            method: Method::POST,
            path: "/v1/keys/{id}/rotate",
            summary: "Rotate a key: a new key (same tenant, scopes, name, owner) is issued \
                      with the rotation's run in one transaction; both work through the \
                      grace, then the old one is revoked. The new secret is in this answer \
                      only.",
            auth: Auth::Key(Scope::Operator),
            success: &[201],
            body: Some(json!({
                "type": "object",
                "properties": {
                    "grace_period": {"type": "string", "examples": ["24h", "90s"]},
                    "reason": {"type": "string"},
                    "emergency": {"type": "boolean"}
                }
            })),
            handler: post(rotate_key),
        },
        Route {
            method: Method::PUT,
            path: "/v1/keys/{id}/rotation-policy",
            summary: "Rotate this key on a schedule (a cron rule); scheduled rotations keep \
                      the new secret sealed until revealed, and the grace starts at the \
                      reveal.",
            auth: Auth::Key(Scope::Operator),
            success: &[200],
            body: Some(json!({
                "type": "object",
                "required": ["cron"],
                "properties": {
                    "cron": {"type": "string"},
                    "timezone": {"type": "string"},
                    "grace_period": {"type": "string"}
                }
            })),
            handler: put(set_rotation_policy),
        },
        Route {
            method: Method::DELETE,
            path: "/v1/keys/{id}/rotation-policy",
            summary: "Stop rotating this key on a schedule.",
            auth: Auth::Key(Scope::Operator),
            success: &[200],
            body: None,
            handler: delete(delete_rotation_policy),
        },
        Route {
            method: Method::POST,
            path: "/v1/keys/{id}/reveal",
            summary: "Reveal, once, the secret of a key nobody has seen yet (a scheduled \
                      rotation's, a new tenant's admin key); afterwards only its hash \
                      remains.",
            auth: Auth::Key(Scope::Operator),
            success: &[200],
            body: None,
            handler: post(reveal_key),
        },
        Route {
            method: Method::GET,
            path: "/v1/whoami",
            summary: "The presented key's id, tenant and scopes.",
            auth: Auth::Key(Scope::Reader),
            success: &[200],
            body: None,
            handler: get(whoami),
        },
        Route {
            method: Method::GET,
            path: "/v1/audit",
            summary: "The append-only audit log of the caller's tenant, newest first \
                      (`before`, `limit`).",
            auth: Auth::Key(Scope::Operator),
            success: &[200],
            body: None,
            handler: get(audit),
        },
        Route {
            method: Method::GET,
            path: "/v1/workers",
            summary: paged!(
                "The worker registry, newest first (hosts and process ids for \
                 admins only)."
            ),
            auth: Auth::Key(Scope::Operator),
            success: &[200],
            body: None,
            handler: get(workers),
        },
    ]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateKey {
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

pub(crate) async fn create_key(
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

pub(super) async fn list_keys(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let page = Page::only(query, |c| c.parse::<Uuid>().ok())?;
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

pub(super) async fn get_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<KeyView>> {
    let key = load_key(&state, &caller.scope(), &id).await?;
    Ok(Json(KeyView::new(key, state.engine.clock.now())))
}

pub(crate) async fn revoke_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<KeyView>> {
    let scope = caller.scope();
    let existing = load_key(&state, &scope, &id).await?;
    let id = existing.id;
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

pub(super) async fn reveal_key(
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
pub(super) async fn tell_rotation_revealed(state: &AppState, scope: &TenantScope, new_key: Uuid) {
    let filter = RunFilter {
        workflow: Some(KeyRotation::NAME.into()),
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
pub(super) struct RotateBody {
    #[serde(default)]
    grace_period: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    emergency: bool,
}

pub(super) fn grace(text: Option<&str>, default: Duration) -> ApiResult<Duration> {
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

pub(crate) async fn rotate_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    request_body: Body,
) -> ApiResult<Response> {
    let scope = caller.scope();
    let old = load_key(&state, &scope, &id).await?;
    let id = old.id;
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
        IssueKey::successor_of(&old, caller.actor(), caller.address.clone()),
        &secret,
        None,
        now,
    );
    let mut audit = audit;
    audit.action = "key.rotated".into();
    audit.detail["replaces"] = json!(id);
    audit.detail["emergency"] = json!(request.emergency);
    let input = RotationInput {
        key_id: id,
        grace_period,
        reason: request.reason,
        emergency: request.emergency,
        new_key_id: Some(new_key.id),
        policy_schedule: None,
    };
    let start = StartRun {
        tenant: old.tenant.clone(),
        workflow: KeyRotation::NAME.into(),
        input: serde_json::to_value(&input).map_err(|e| ApiError::internal(&e))?,
        idempotency_key: None,
        tags: vec![format!("key:{id}")],
        actor: caller.actor(),
    };
    // The new key and the run that manages it commit together: a crash cannot leave a
    // key without its run, or a run without its key.
    let store = &state.engine.store;
    let mut tx = store.begin().await?;
    if let Some(active) = key_rotation::lock_for_rotation(&mut tx, id).await? {
        return Err(ApiError::conflict(format!(
            "key {id} is already being rotated by run {active}"
        )));
    }
    let record = store.key_insert_in(&mut tx, &new_key, &audit).await?;
    let run = state.engine.start_in(&mut tx, start).await?.run;
    crate::ui::session::end_for_key_in(&mut tx, id).await?;
    tx.commit().await?;
    let mut body =
        serde_json::to_value(KeyView::new(record, now)).map_err(|e| ApiError::internal(&e))?;
    body["secret"] = json!(secret.expose());
    body["run_id"] = json!(run.id);
    body["replaces"] = json!(id);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PolicyBody {
    cron: String,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    grace_period: Option<String>,
}

pub(super) fn policy_name(key: Uuid) -> String {
    format!("key-rotation-{key}")
}

pub(super) async fn set_rotation_policy(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    request_body: Body,
) -> ApiResult<Json<Value>> {
    let scope = caller.scope();
    let key = load_key(&state, &scope, &id).await?;
    let id = key.id;
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
        .find(|s| s.input.get("key_id") == Some(&json!(id)) && s.workflow == KeyRotation::NAME);
    let is_new = existing.is_none();
    let schedule_id = existing.as_ref().map(|s| s.id).unwrap_or_else(Uuid::now_v7);
    let mut schedule = existing.unwrap_or(Schedule {
        id: schedule_id,
        tenant: key.tenant.clone(),
        name: policy_name(id),
        cron: String::new(),
        timezone: String::new(),
        workflow: KeyRotation::NAME.into(),
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

pub(super) async fn delete_rotation_policy(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let scope = caller.scope();
    let key = load_key(&state, &scope, &id).await?;
    let id = key.id;
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
        .find(|s| s.input.get("key_id") == Some(&json!(id)) && s.workflow == KeyRotation::NAME)
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

pub(super) async fn whoami(caller: Caller) -> ApiResult<Json<Value>> {
    Ok(Json(json!({
        "key_id": caller.key.id,
        "prefix": caller.key.prefix,
        "tenant": caller.key.tenant,
        "scopes": caller.key.scopes,
        "name": caller.key.name,
    })))
}

pub(super) async fn audit(
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

pub(super) async fn workers(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let page = Page::only(query, |c| c.parse::<Uuid>().ok())?;
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
