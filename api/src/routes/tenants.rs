//! `/v1/tenants`: onboarding and offboarding customers through the tenant sagas
//! (`tenant_provisioning`, `tenant_deprovisioning` in `waymark-workflows`), and their
//! records with every resource they own and the run that made it.
//!
//! `POST /v1/tenants` checks everything before it answers, then reserves the slug and
//! starts the provisioning run so that a crash cannot leave one without the other: one
//! transaction of the caller's (`Store::begin`) inserts the tenant row, starts the run
//! (`Engine::start_in`) and names the run on the row, on either backend.
//!
//! The slug's primary key and the run's idempotency key `tenant:<slug>` decide every
//! race; the saga's first step still finds (or, for a run started some other way,
//! makes) the row, so it is idempotent on its own.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use waymark_engine::keys::Scope;
use waymark_engine::store::NewAudit;
use waymark_engine::{is_valid_tenant, StartRun, Store, StoreError, TenantScope, Workflow};
use waymark_workflows::tenant_deprovisioning::{DeprovisioningInput, TenantDeprovisioning};
use waymark_workflows::tenant_provisioning::{slug_problem, TenantProvisioning};
use waymark_workflows::tenants::names::SYSTEM_TENANT;
use waymark_workflows::tenants::record::{self, DeprovisionClaim};
use waymark_workflows::tenants::{plans, NewTenant, Tenant, TenantStatus};

use super::{paged, Auth, Route};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::paging::Page;
use crate::{body, AppState};

/// The tenant routes, appended to [`crate::routes::table`].
pub fn routes() -> Vec<Route> {
    vec![
        Route {
            method: Method::POST,
            path: "/v1/tenants",
            summary: "Provision a tenant: reserve its slug and start the \
                      `tenant_provisioning` saga (database space, storage space, admin key \
                      revealed once through `POST /v1/keys/{id}/reveal`, welcome email). 422 \
                      for an invalid slug, email or unknown plan; 409 if the slug is taken in \
                      any status.",
            auth: Auth::Key(Scope::Admin),
            success: &[202],
            body: Some(json!({
                "type": "object",
                "required": ["slug", "name", "plan", "admin_email"],
                "properties": {
                    "slug": {"type": "string", "pattern": "^[a-z][a-z0-9-]{2,39}$"},
                    "name": {"type": "string"},
                    "plan": {"type": "string"},
                    "admin_email": {"type": "string", "format": "email"}
                }
            })),
            handler: post(create_tenant),
        },
        Route {
            method: Method::GET,
            path: "/v1/tenants",
            summary: paged!(
                "Tenants by slug with their status and every resource created, \
                 with the run that created it (an operator sees only its own \
                 tenant)."
            ),
            auth: Auth::Key(Scope::Operator),
            success: &[200],
            body: None,
            handler: get(list_tenants),
        },
        Route {
            method: Method::GET,
            path: "/v1/tenants/{slug}",
            summary: "One tenant: status (provisioning, active, failed, suspended, deleted), \
                      quotas, resources and the runs that made them.",
            auth: Auth::Key(Scope::Operator),
            success: &[200],
            body: None,
            handler: get(get_tenant),
        },
        Route {
            method: Method::POST,
            path: "/v1/tenants/{slug}/deprovision",
            summary: "Deprovision an active tenant: suspend it (keys, schedules, runs), \
                      export its data, wait out the retention (signal `restore` to the run \
                      reactivates it), then delete it.",
            auth: Auth::Key(Scope::Admin),
            success: &[202],
            body: Some(json!({"type": "object"})),
            handler: post(deprovision_tenant),
        },
    ]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    slug: String,
    name: String,
    plan: String,
    admin_email: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Deprovision {}

fn db(error: sqlx::Error) -> ApiError {
    StoreError::Database(error).into()
}

/// A tenant as the API shows it: its record and its resources.
async fn view(store: &Store, tenant: Tenant) -> ApiResult<Value> {
    let resources = record::resources(store, &tenant.slug).await.map_err(db)?;
    let mut body = serde_json::to_value(&tenant).map_err(|e| ApiError::internal(&e))?;
    body["resources"] = serde_json::to_value(resources).map_err(|e| ApiError::internal(&e))?;
    Ok(body)
}

fn taken(slug: &str) -> ApiError {
    ApiError::conflict(format!("slug {slug:?} is taken"))
}

async fn audit(state: &AppState, caller: &Caller, slug: &str, action: &str, detail: Value) {
    let entry = NewAudit {
        tenant: slug.to_owned(),
        actor: caller.actor(),
        action: action.to_owned(),
        target: Some(format!("tenant:{slug}")),
        detail,
        address: caller.address.clone(),
        at: state.engine.clock.now(),
    };
    if let Err(error) = state.engine.store.audit_append(&entry).await {
        tracing::error!(error = %crate::error::chain(&error), action, "cannot append to the audit log");
    }
}

async fn create_tenant(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    request_body: Body,
) -> ApiResult<Response> {
    let bytes = body::read(request_body, state.api.max_body).await?;
    let request: CreateTenant = body::json(&headers, &bytes, false)?;
    let store = &state.engine.store;

    // 422: everything about the request itself.
    if !waymark_engine::is_valid_tenant(&request.slug) {
        return Err(ApiError::invalid(format!(
            "slug: {:?} is not valid (expected ^[a-z][a-z0-9-]{{2,39}}$)",
            request.slug
        )));
    }
    let name = request.name.trim();
    if name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name: 1 to 200 characters, no control characters",
        ));
    }
    let admin_email = waymark_services::mail::parse_mailbox("admin_email", &request.admin_email)
        .map_err(|e| ApiError::invalid(e.to_string()))?
        .email
        .to_string();
    let plan = plans::get(store, &request.plan)
        .await
        .map_err(db)?
        .ok_or_else(|| {
            ApiError::invalid(format!("plan: {:?} is not a known plan", request.plan))
        })?;
    // 409: the slug against what exists.
    if slug_problem(&request.slug).is_some() {
        return Err(ApiError::conflict(format!(
            "slug {:?} is reserved",
            request.slug
        )));
    }
    let slug = request.slug;
    let new = NewTenant {
        slug: slug.clone(),
        name: name.to_owned(),
        plan: plan.name,
        admin_email,
        quota: plan.quota,
    };
    let start = StartRun {
        tenant: SYSTEM_TENANT.into(),
        workflow: TenantProvisioning::NAME.into(),
        input: serde_json::to_value(&new).map_err(|e| ApiError::internal(&e))?,
        idempotency_key: Some(format!("tenant:{slug}")),
        tags: vec![format!("tenant:{slug}")],
        actor: caller.actor(),
    };
    let now = state.engine.clock.now();
    // The slug's reservation and its run commit together: the slug's primary key and
    // the run's idempotency key `tenant:<slug>` settle every race.
    let mut tx = store.begin().await?;
    if !record::reserve(&mut tx, &new, now).await? {
        return Err(taken(&slug));
    }
    let started = state.engine.start_in(&mut tx, start).await?;
    if !started.created {
        // The key `tenant:<slug>` names an earlier run: the slug is taken.
        return Err(taken(&slug));
    }
    record::attach_run(&mut tx, &slug, started.run.id).await?;
    tx.commit().await?;
    let run_id = started.run.id;
    audit(
        &state,
        &caller,
        &slug,
        "tenant.provisioning_started",
        json!({ "run": run_id, "plan": new.plan }),
    )
    .await;
    let tenant = record::get(store, &slug)
        .await
        .map_err(db)?
        .ok_or_else(|| ApiError::internal(&StoreError::Corrupt("tenant vanished".into())))?;
    let mut body = view(store, tenant).await?;
    body["run_id"] = json!(run_id);
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/v1/tenants/{slug}"))],
        Json(body),
    )
        .into_response())
}

async fn list_tenants(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    // The cursor is a slug, and every stored slug is a valid one.
    let page = Page::only(query, |c| is_valid_tenant(c).then(|| c.to_owned()))?;
    let store = &state.engine.store;
    let only = match caller.scope() {
        TenantScope::All => None,
        TenantScope::Tenant(own) => Some(own),
    };
    let tenants = record::list_page(store, only.as_deref(), page.after.as_deref(), page.fetch())
        .await
        .map_err(db)?;
    let (tenants, next_cursor) = page.finish(tenants, |t| t.slug.clone());
    let mut views = Vec::with_capacity(tenants.len());
    for tenant in tenants {
        views.push(view(store, tenant).await?);
    }
    Ok(Json(
        json!({ "tenants": views, "next_cursor": next_cursor }),
    ))
}

/// The tenant `slug` as the caller may see it: any for an admin, its own otherwise;
/// everything else is 404, as if it did not exist.
async fn load(state: &AppState, caller: &Caller, slug: &str) -> ApiResult<Tenant> {
    let not_found = || ApiError::not_found(format!("tenant {slug:?} not found"));
    if !caller.scope().allows(slug) {
        return Err(not_found());
    }
    record::get(&state.engine.store, slug)
        .await
        .map_err(db)?
        .ok_or_else(not_found)
}

async fn get_tenant(
    State(state): State<AppState>,
    caller: Caller,
    Path(slug): Path<String>,
) -> ApiResult<Json<Value>> {
    let tenant = load(&state, &caller, &slug).await?;
    Ok(Json(view(&state.engine.store, tenant).await?))
}

fn not_deprovisionable(tenant: &Tenant) -> Option<ApiError> {
    if let Some(run) = tenant.deprovision_run_id {
        return Some(ApiError::conflict(format!(
            "tenant {:?} is already being deprovisioned by run {run}",
            tenant.slug
        )));
    }
    (tenant.status != TenantStatus::Active).then(|| {
        ApiError::conflict(format!(
            "tenant {:?} is {}; only an active tenant can be deprovisioned",
            tenant.slug, tenant.status
        ))
    })
}

async fn deprovision_tenant(
    State(state): State<AppState>,
    caller: Caller,
    Path(slug): Path<String>,
    headers: HeaderMap,
    request_body: Body,
) -> ApiResult<Response> {
    let tenant = load(&state, &caller, &slug).await?;
    let bytes = body::read(request_body, state.api.max_body).await?;
    let Deprovision {} = body::json(&headers, &bytes, true)?;
    if let Some(conflict) = not_deprovisionable(&tenant) {
        return Err(conflict);
    }
    let start = |key: String| -> ApiResult<StartRun> {
        Ok(StartRun {
            tenant: SYSTEM_TENANT.into(),
            workflow: TenantDeprovisioning::NAME.into(),
            input: serde_json::to_value(DeprovisioningInput { slug: slug.clone() })
                .map_err(|e| ApiError::internal(&e))?,
            idempotency_key: Some(key),
            tags: vec![format!("tenant:{slug}")],
            actor: caller.actor(),
        })
    };
    let store = &state.engine.store;
    let now = state.engine.clock.now();
    // Locked, checked, started and claimed in one transaction: of two requests racing
    // for one tenant, the second finds the first's claim.
    let mut tx = store.begin().await?;
    let locked = record::get_locked(&mut tx, &slug)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("tenant {slug:?} not found")))?;
    if let Some(conflict) = not_deprovisionable(&locked) {
        return Err(conflict);
    }
    let started = state
        .engine
        .start_in(&mut tx, start(record::deprovision_key(&locked))?)
        .await?;
    match record::claim_deprovision_in(&mut tx, &slug, started.run.id, now).await? {
        DeprovisionClaim::Claimed(_) => {}
        _ => {
            return Err(ApiError::conflict(format!(
                "tenant {slug:?} changed while being deprovisioned; try again"
            )))
        }
    }
    tx.commit().await?;
    let run_id = started.run.id;
    audit(
        &state,
        &caller,
        &slug,
        "tenant.deprovisioning_started",
        json!({ "run": run_id }),
    )
    .await;
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/v1/runs/{run_id}"))],
        Json(json!({ "slug": slug, "run_id": run_id, "status": tenant.status })),
    )
        .into_response())
}
