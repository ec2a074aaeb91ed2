//! Payment disputes (`payment_dispute` in `waymark-workflows`): the processor's signed
//! webhooks in, the tenant's signing secret and settings, dead letters and their
//! replay, and the disputes as a merchant sees them with their evidence.
//!
//! The webhook route takes no API key: its handler reads the raw body (413 past
//! [`WEBHOOK_MAX_BODY`]), verifies `Waymark-Signature` with the tenant's secrets (401,
//! saying no more), parses the event (400), and answers 2xx only once the event is
//! in the inbox (see `waymark_workflows::disputes::ingress`).

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;
use waymark_engine::keys::Scope;
use waymark_engine::{EngineError, SendSignal, TenantScope};
use waymark_workflows::disputes::files;
use waymark_workflows::disputes::ingress::{self, IngressError, Outcome};
use waymark_workflows::disputes::record::{self, Dispute, ListFilter, Settings};
use waymark_workflows::disputes::{signature, status};

use super::{acting_tenant, audit_record, paged, param, params, timestamp, Auth, Route};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::paging::{known_only, Page};
use crate::{body, AppState};

/// Webhook bodies larger than this answer 413.
pub const WEBHOOK_MAX_BODY: usize = 64 * 1024;

/// Text fields evidence may carry.
const EVIDENCE_FIELDS: &[&str] = &[
    "product_description",
    "customer_communication",
    "refund_policy",
    "shipping_documentation",
    "uncategorized_text",
];

pub fn routes() -> Vec<Route> {
    vec![
        Route {
            method: Method::POST,
            path: "/v1/webhooks/{tenant}/disputes",
            summary: "The payment processor's dispute events, signed with the tenant's secret \
                      (`Waymark-Signature`, no API key). 2xx once the raw event is stored; \
                      200 with `\"duplicate\": true` for an event id seen before; 401 for a \
                      bad or stale signature; 400 for a body that is not an event; 413 past \
                      64 KiB.",
            auth: Auth::WebhookSignature,
            success: &[200, 202],
            body: Some(json!({"type": "object", "required": ["id", "type", "created", "data"]})),
            handler: post(receive_webhook),
        },
        Route {
            method: Method::GET,
            path: "/v1/webhooks/dead-letters",
            summary: paged!(
                "Dispute events that named no known dispute, or a closed one, not yet \
                 replayed (an operator sees its own tenant's)."
            ),
            auth: Auth::Key(Scope::Operator),
            success: &[200],
            body: None,
            handler: get(list_dead_letters),
        },
        Route {
            method: Method::POST,
            path: "/v1/webhooks/dead-letters/{id}/replay",
            summary: "Applies a dead letter's event again (after its dispute exists); 409 \
                      when it still cannot be applied.",
            auth: Auth::Key(Scope::Operator),
            success: &[200],
            body: Some(json!({"type": "object"})),
            handler: post(replay_dead_letter),
        },
        Route {
            method: Method::POST,
            path: "/v1/disputes/webhook-secret",
            summary: "Creates the tenant's webhook signing secret, or rolls it: the new \
                      secret is shown once; the previous one stays valid for `grace` \
                      (default 24h), then stops.",
            auth: Auth::Key(Scope::Operator),
            success: &[201],
            body: Some(json!({"type": "object", "properties": {"grace": {"type": "string"}}})),
            handler: post(create_secret),
        },
        Route {
            method: Method::PUT,
            path: "/v1/disputes/settings",
            summary: "The tenant's dispute settings: `safety_margin` (the internal evidence \
                      deadline is this long before the network's; default 24h) and \
                      `approval_thresholds` (minor units per currency at or above which \
                      evidence waits for an operator's `approve`).",
            auth: Auth::Key(Scope::Operator),
            success: &[200],
            body: Some(json!({"type": "object", "properties": {
                "safety_margin": {"type": "string"},
                "approval_thresholds": {"type": "object", "additionalProperties": {"type": "integer"}}}})),
            handler: put(put_settings),
        },
        Route {
            method: Method::GET,
            path: "/v1/disputes",
            summary: paged!(
                "Disputes by id, filtered by `status`, `due_before` (RFC 3339) and \
                 `min_amount`/`max_amount` (minor units)."
            ),
            auth: Auth::Key(Scope::Reader),
            success: &[200],
            body: None,
            handler: get(list_disputes),
        },
        Route {
            method: Method::GET,
            path: "/v1/disputes/{id}",
            summary: "One dispute as the merchant sees it: amount (formatted), deadlines, \
                      evidence and its files, cycle, funds movements, timeline and run.",
            auth: Auth::Key(Scope::Reader),
            success: &[200],
            body: None,
            handler: get(get_dispute),
        },
        Route {
            method: Method::POST,
            path: "/v1/disputes/{id}/evidence",
            summary: "Submits the cycle's evidence (text fields and file ids) and signals \
                      the run; 409 after the evidence deadline (saying when it was) or when \
                      this cycle's evidence was already submitted.",
            auth: Auth::Key(Scope::Operator),
            success: &[202],
            body: Some(json!({"type": "object", "properties": {
                "product_description": {"type": "string"},
                "customer_communication": {"type": "string"},
                "refund_policy": {"type": "string"},
                "file_ids": {"type": "array", "items": {"type": "string"}}}})),
            handler: post(submit_evidence),
        },
        Route {
            method: Method::POST,
            path: "/v1/disputes/{id}/accept",
            summary: "The merchant concedes the dispute (before its evidence is submitted); \
                      409 afterwards.",
            auth: Auth::Key(Scope::Operator),
            success: &[202],
            body: Some(json!({"type": "object"})),
            handler: post(accept_dispute),
        },
    ]
}

fn ingress_error(error: IngressError) -> ApiError {
    match error {
        IngressError::Unauthorized(_) => ApiError::unauthorized("bad or stale signature"),
        IngressError::Invalid(why) => ApiError::bad_request(format!("not a valid event: {why}")),
        IngressError::Conflict(why) => ApiError::conflict(why),
        IngressError::Store(e) => e.into(),
        IngressError::Engine(e) => e.into(),
    }
}

async fn receive_webhook(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    request_body: Body,
) -> ApiResult<Response> {
    let bytes = body::read(request_body, WEBHOOK_MAX_BODY).await?;
    let header = headers.get(signature::HEADER).and_then(|v| v.to_str().ok());
    let outcome = ingress::receive(&state.engine, &state.api.sealer, &tenant, header, &bytes)
        .await
        .map_err(ingress_error)?;
    Ok(match outcome {
        Outcome::Duplicate => (StatusCode::OK, Json(json!({"duplicate": true}))).into_response(),
        outcome => (
            StatusCode::ACCEPTED,
            Json(json!({"duplicate": false, "result": outcome})),
        )
            .into_response(),
    })
}

async fn list_dead_letters(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let page = Page::only(query, |c| c.parse::<Uuid>().ok())?;
    let only = match caller.scope() {
        TenantScope::All => None,
        TenantScope::Tenant(own) => Some(own),
    };
    let letters = record::dead_letters(
        &state.engine.store,
        only.as_deref(),
        page.after,
        i64::from(page.fetch()),
    )
    .await?;
    let (letters, next_cursor) = page.finish(letters, |l| l.id);
    Ok(Json(
        json!({"dead_letters": letters, "next_cursor": next_cursor}),
    ))
}

async fn replay_dead_letter(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let not_found = || ApiError::not_found(format!("dead letter {id:?} not found"));
    let letter_id: Uuid = id.parse().map_err(|_| not_found())?;
    let scope = caller.scope();
    let outcome = ingress::replay(
        &state.engine,
        letter_id,
        |tenant| scope.allows(tenant),
        &caller.actor(),
    )
    .await
    .map_err(ingress_error)?
    .ok_or_else(not_found)?;
    Ok(Json(json!({"id": letter_id, "result": outcome})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretRequest {
    #[serde(default, with = "waymark_workflows::duration")]
    grace: Option<std::time::Duration>,
}

async fn create_secret(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    request_body: Body,
) -> ApiResult<Response> {
    let query = params(query);
    known_only(&query, &["tenant"])?;
    let tenant = acting_tenant(&caller, param(&query, "tenant"))?;
    let bytes = body::read(request_body, state.api.max_body).await?;
    let request: SecretRequest = body::json(&headers, &bytes, true)?;
    let grace = request
        .grace
        .unwrap_or(std::time::Duration::from_secs(24 * 3600));
    let now = state.engine.clock.now();
    let previous_until = waymark_engine::workflow::checked_after(now, grace)
        .ok_or_else(|| ApiError::invalid("grace: ends beyond any date"))?;
    let id = Uuid::now_v7();
    let secret = new_secret();
    let sealed = state.api.sealer.seal_text(id, &secret);
    let mut tx = state.engine.store.begin().await?;
    let rolled = record::secret_roll(
        &mut tx,
        &tenant,
        id,
        &sealed,
        state.api.sealer.key_id(),
        previous_until,
        now,
    )
    .await?;
    tx.commit().await?;
    audit_record(
        &state,
        &caller,
        &tenant,
        if rolled {
            "disputes.webhook_secret_rolled"
        } else {
            "disputes.webhook_secret_created"
        },
        format!("webhook_secret:{id}"),
        json!({"previous_valid_until": rolled.then_some(previous_until)}),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": id,
            "tenant": tenant,
            "secret": secret,
            "rolled": rolled,
            "previous_valid_until": rolled.then_some(previous_until),
        })),
    )
        .into_response())
}

/// `whsec_` and 32 random bytes, URL-safe base64.
fn new_secret() -> String {
    waymark_engine::keys::Secret::generate()
        .expose()
        .rsplit('_')
        .next()
        .map(|random| format!("whsec_{random}"))
        .unwrap_or_default()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsRequest {
    #[serde(default, with = "waymark_workflows::duration")]
    safety_margin: Option<std::time::Duration>,
    #[serde(default)]
    approval_thresholds: Option<std::collections::BTreeMap<String, i64>>,
}

async fn put_settings(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    request_body: Body,
) -> ApiResult<Json<Value>> {
    let query = params(query);
    known_only(&query, &["tenant"])?;
    let tenant = acting_tenant(&caller, param(&query, "tenant"))?;
    let bytes = body::read(request_body, state.api.max_body).await?;
    let request: SettingsRequest = body::json(&headers, &bytes, false)?;
    let store = &state.engine.store;
    let mut settings: Settings = record::settings(store, &tenant).await?;
    if let Some(margin) = request.safety_margin {
        settings.safety_margin = margin;
    }
    if let Some(thresholds) = request.approval_thresholds {
        let mut map = serde_json::Map::new();
        for (code, minor) in thresholds {
            let currency =
                waymark_workflows::disputes::money::Currency::parse(&code).ok_or_else(|| {
                    ApiError::invalid(format!(
                        "approval_thresholds: {code:?} is not a known ISO 4217 currency"
                    ))
                })?;
            if minor < 0 {
                return Err(ApiError::invalid(format!(
                    "approval_thresholds.{code}: must be at least 0"
                )));
            }
            map.insert(currency.code().to_owned(), json!(minor));
        }
        settings.approval_thresholds = map;
    }
    record::settings_put(store, &tenant, &settings, state.engine.clock.now()).await?;
    Ok(Json(json!({
        "tenant": tenant,
        "safety_margin": humantime::format_duration(settings.safety_margin).to_string(),
        "approval_thresholds": settings.approval_thresholds,
    })))
}

async fn list_disputes(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let query = params(query);
    known_only(
        &query,
        &[
            "cursor",
            "limit",
            "status",
            "due_before",
            "min_amount",
            "max_amount",
            "tenant",
        ],
    )?;
    // The cursor is `<tenant>/<dispute id>`.
    let page = Page::from_query(&query, |c| {
        c.split_once('/').map(|(t, d)| (t.to_owned(), d.to_owned()))
    })?;
    let tenant = match (caller.scope(), param(&query, "tenant")) {
        (TenantScope::All, None) => None,
        (_, requested) => Some(acting_tenant(&caller, requested)?),
    };
    let amount = |name: &str| -> ApiResult<Option<i64>> {
        param(&query, name)
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    ApiError::invalid(format!("{name}: expected an integer of minor units"))
                })
            })
            .transpose()
    };
    let filter = ListFilter {
        tenant,
        status: param(&query, "status").map(str::to_owned),
        due_before: param(&query, "due_before")
            .map(|v| timestamp("due_before", v))
            .transpose()?,
        min_amount: amount("min_amount")?,
        max_amount: amount("max_amount")?,
        after: page.after.clone(),
        limit: i64::from(page.fetch()),
    };
    let disputes = record::list(&state.engine.store, &filter).await?;
    let (disputes, next_cursor) =
        page.finish(disputes, |d| format!("{}/{}", d.tenant, d.dispute_id));
    let mut views = Vec::with_capacity(disputes.len());
    for d in disputes {
        views.push(summary(&state, &d).await?);
    }
    Ok(Json(json!({"disputes": views, "next_cursor": next_cursor})))
}

/// The dispute's own fields with its amount formatted and its internal deadline.
async fn summary(state: &AppState, d: &Dispute) -> ApiResult<Value> {
    let settings = record::settings(&state.engine.store, &d.tenant).await?;
    let deadline =
        d.evidence_due_by - chrono::Duration::from_std(settings.safety_margin).unwrap_or_default();
    let mut view = serde_json::to_value(d).map_err(|e| ApiError::internal(&e))?;
    view["amount_formatted"] = json!(d.formatted_amount());
    view["evidence_deadline"] = json!(deadline);
    Ok(view)
}

pub(super) async fn load(
    state: &AppState,
    caller: &Caller,
    id: &str,
    query: Option<String>,
) -> ApiResult<Dispute> {
    let query = params(query);
    known_only(&query, &["tenant"])?;
    let tenant = acting_tenant(caller, param(&query, "tenant"))?;
    record::get(&state.engine.store, &tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("dispute {id:?} not found")))
}

async fn get_dispute(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let d = load(&state, &caller, &id, query).await?;
    let store = &state.engine.store;
    let mut view = summary(&state, &d).await?;
    view["funds_movements"] = json!(record::funds_list(store, &d.tenant, &d.dispute_id).await?);
    view["timeline"] = json!(record::timeline_list(store, &d.tenant, &d.dispute_id).await?);
    view["evidence_files"] = json!(files::list(store, &d.tenant, &d.dispute_id).await?);
    view["evidence"] = match record::evidence(store, &d.tenant, &d.dispute_id, d.cycle).await? {
        Some((fields, files)) => json!({"cycle": d.cycle, "fields": fields, "file_ids": files}),
        None => Value::Null,
    };
    if let Some(run_id) = d.run_id {
        if let Some(run) = store.run_get(&caller.scope(), run_id).await? {
            view["run"] = json!({"id": run.id, "state": run.state, "status": run.status,
                                 "state_data": run.state_data});
        }
    }
    Ok(Json(view))
}

async fn submit_evidence(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    request_body: Body,
) -> ApiResult<Response> {
    let d = load(&state, &caller, &id, query).await?;
    let bytes = body::read(request_body, state.api.max_body).await?;
    let request: serde_json::Map<String, Value> = body::json(&headers, &bytes, false)?;
    let mut fields = serde_json::Map::new();
    let mut file_ids = Vec::new();
    for (name, value) in request {
        match (name.as_str(), value) {
            ("file_ids", Value::Array(ids)) => {
                for file in ids {
                    let id = file
                        .as_str()
                        .and_then(|s| s.parse::<Uuid>().ok())
                        .ok_or_else(|| {
                            ApiError::invalid("file_ids: expected ids of uploaded evidence files")
                        })?;
                    file_ids.push(json!(id));
                }
            }
            (field, Value::String(text)) if EVIDENCE_FIELDS.contains(&field) => {
                if text.len() > 20_000 {
                    return Err(ApiError::invalid(format!("{field}: at most 20000 bytes")));
                }
                fields.insert(field.to_owned(), Value::String(text));
            }
            (field, _) => {
                return Err(ApiError::invalid(format!(
                    "{field}: not an evidence field (expected text in one of {} or file_ids)",
                    EVIDENCE_FIELDS.join(", ")
                )))
            }
        }
    }
    if fields.is_empty() && file_ids.is_empty() {
        return Err(ApiError::invalid(
            "evidence needs at least one field or file",
        ));
    }
    evidence_open(&state, &d).await?;
    let store = &state.engine.store;
    let now = state.engine.clock.now();
    let ids: Vec<Uuid> = file_ids
        .iter()
        .filter_map(|v| v.as_str().and_then(|s| s.parse().ok()))
        .collect();
    if let Err(unknown) = files::of_cycle(store, &d.tenant, &d.dispute_id, d.cycle, &ids).await? {
        return Err(ApiError::invalid(format!(
            "file_ids: {unknown} is not an evidence file of dispute {id:?} (cycle {}); \
             upload it with POST /v1/disputes/{id}/evidence/files",
            d.cycle
        )));
    }
    let run_id = d
        .run_id
        .ok_or_else(|| ApiError::conflict(format!("dispute {id:?} has no run yet")))?;
    let mut tx = store.begin().await?;
    let inserted = record::evidence_insert(
        &mut tx,
        &d.tenant,
        &d.dispute_id,
        d.cycle,
        Value::Object(fields),
        Value::Array(file_ids),
        &caller.actor(),
        now,
    )
    .await?;
    if !inserted {
        return Err(ApiError::conflict(format!(
            "evidence for cycle {} of dispute {id:?} was already submitted",
            d.cycle
        )));
    }
    tx.commit().await?;
    let signal = SendSignal {
        run_id,
        name: "evidence_submitted".into(),
        payload: json!({"cycle": d.cycle}),
        idempotency_key: None,
        actor: caller.actor(),
    };
    match state
        .engine
        .signal(&TenantScope::Tenant(d.tenant.clone()), signal)
        .await
    {
        // Not waiting yet (still notifying the merchant): the run finds the evidence
        // when it enters `awaiting_evidence`.
        Ok(_) | Err(EngineError::Conflict(_)) => {}
        Err(other) => return Err(other.into()),
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"dispute_id": d.dispute_id, "cycle": d.cycle, "run_id": run_id})),
    )
        .into_response())
}

/// A dispute run's status details: its dispute, the deadline of the state it waits in
/// (`deadline`: what for, until when, what that time is) and the why-waiting line.
pub(super) async fn run_details(
    state: &AppState,
    run: &waymark_engine::Run,
) -> ApiResult<Option<Value>> {
    let Some(id) = run.input.get("dispute_id").and_then(Value::as_str) else {
        return Ok(None);
    };
    let store = &state.engine.store;
    let Some(d) = record::get(store, &run.tenant, id).await? else {
        return Ok(None);
    };
    let settings = record::settings(store, &d.tenant).await?;
    let deadline = status::deadline(&run.state, &run.state_data, &d, &settings);
    let context = crate::ui::why::Context {
        deadline: deadline.as_ref().map(|d| crate::ui::why::Deadline {
            waiting_for: d.waiting_for.to_owned(),
            until: d.until,
            kind: d.kind.to_owned(),
        }),
        ..Default::default()
    };
    let why = crate::ui::why::line(run, state.engine.clock.now(), &context);
    Ok(Some(json!({
        "dispute_id": d.dispute_id,
        "dispute_status": d.status,
        "cycle": d.cycle,
        "deadline": deadline,
        "why": why,
    })))
}

/// 409 unless the dispute takes evidence now: before its internal deadline (the
/// answer says when that passed) and while it awaits evidence.
pub(super) async fn evidence_open(state: &AppState, d: &Dispute) -> ApiResult<()> {
    let now = state.engine.clock.now();
    let settings = record::settings(&state.engine.store, &d.tenant).await?;
    let deadline =
        d.evidence_due_by - chrono::Duration::from_std(settings.safety_margin).unwrap_or_default();
    if now >= deadline {
        return Err(ApiError::conflict(format!(
            "the evidence deadline passed at {}; evidence is no longer accepted",
            deadline.to_rfc3339()
        )));
    }
    if !matches!(d.status.as_str(), "opened" | "awaiting_evidence") {
        return Err(ApiError::conflict(format!(
            "dispute {:?} is {}; it takes evidence only while awaiting it",
            d.dispute_id, d.status
        )));
    }
    Ok(())
}

async fn accept_dispute(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    request_body: Body,
) -> ApiResult<Response> {
    let d = load(&state, &caller, &id, query).await?;
    let bytes = body::read(request_body, state.api.max_body).await?;
    let _: serde_json::Map<String, Value> = body::json(&headers, &bytes, true)?;
    let run_id = d
        .run_id
        .ok_or_else(|| ApiError::conflict(format!("dispute {id:?} has no run yet")))?;
    let signal = SendSignal {
        run_id,
        name: "accept".into(),
        payload: Value::Null,
        idempotency_key: None,
        actor: caller.actor(),
    };
    state
        .engine
        .signal(&TenantScope::Tenant(d.tenant.clone()), signal)
        .await
        .map_err(|e| match e {
            EngineError::Conflict(_) => ApiError::conflict(format!(
                "dispute {id:?} is {}; it can be conceded only before its evidence is submitted",
                d.status
            )),
            other => other.into(),
        })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"dispute_id": d.dispute_id, "run_id": run_id})),
    )
        .into_response())
}
