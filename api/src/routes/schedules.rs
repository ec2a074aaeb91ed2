//! Schedules: cron rules that start runs, checked so that they never fire a run that cannot start.

use super::*;

/// Cron schedules.
pub(super) fn routes() -> Vec<Route> {
    vec![
        Route {
            method: Method::POST,
            path: "/v1/schedules",
            summary: "Create a schedule: a cron rule (crontab(5) syntax, 5 or 6 fields, in an \
                      IANA time zone) that starts runs of a workflow with a fixed input.",
            auth: Auth::Key(Scope::Operator),
            success: &[201],
            body: Some(json!({
                "type": "object",
                "required": ["name", "cron", "workflow"],
                "properties": {
                    "name": {"type": "string"},
                    "cron": {"type": "string"},
                    "timezone": {"type": "string", "default": "UTC"},
                    "workflow": {"type": "string"},
                    "input": {},
                    "overlap": {"enum": ["skip", "buffer_one", "allow", "cancel_previous"]},
                    "catch_up": {"enum": ["skip", "run_once"]},
                    "paused": {"type": "boolean"}
                }
            })),
            handler: post(create_schedule),
        },
        Route {
            method: Method::GET,
            path: "/v1/schedules",
            summary: paged!(
                "Schedules of the caller's tenant (all, for an admin), oldest \
                 first."
            ),
            auth: Auth::Key(Scope::Reader),
            success: &[200],
            body: None,
            handler: get(list_schedules),
        },
        Route {
            method: Method::GET,
            path: "/v1/schedules/{id}",
            summary: "One schedule with its next 5 fire times.",
            auth: Auth::Key(Scope::Reader),
            success: &[200],
            body: None,
            handler: get(get_schedule),
        },
        Route {
            method: Method::PATCH,
            path: "/v1/schedules/{id}",
            summary: "Edit, pause or resume a schedule.",
            auth: Auth::Key(Scope::Operator),
            success: &[200],
            body: Some(json!({"type": "object"})),
            handler: patch(update_schedule),
        },
        Route {
            method: Method::DELETE,
            path: "/v1/schedules/{id}",
            summary: "Delete a schedule (its runs stay).",
            auth: Auth::Key(Scope::Operator),
            success: &[200],
            body: None,
            handler: delete(delete_schedule),
        },
    ]
}

pub(super) fn schedule_id(raw: &str) -> ApiResult<Uuid> {
    raw.parse()
        .map_err(|_| ApiError::not_found(format!("schedule {raw:?} not found")))
}

pub(super) fn schedule_view(schedule: Schedule, now: DateTime<Utc>) -> Value {
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
pub(super) struct ScheduleBody {
    name: Option<String>,
    cron: Option<String>,
    timezone: Option<String>,
    workflow: Option<String>,
    input: Option<Value>,
    overlap: Option<Overlap>,
    catch_up: Option<CatchUp>,
    paused: Option<bool>,
}

pub(super) fn check_schedule_name(name: &str) -> ApiResult<()> {
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
pub(super) fn check_schedulable(state: &AppState, caller: &Caller, name: &str) -> ApiResult<()> {
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
pub(super) fn check_schedule(state: &AppState, s: &Schedule) -> ApiResult<CronSchedule> {
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

pub(super) async fn create_schedule(
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

pub(super) async fn list_schedules(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> ApiResult<Json<Value>> {
    let page = Page::only(query, |c| c.parse::<Uuid>().ok())?;
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

pub(super) async fn load_schedule(
    state: &AppState,
    caller: &Caller,
    raw: &str,
) -> ApiResult<Schedule> {
    let id = schedule_id(raw)?;
    state
        .engine
        .store
        .schedule_get(&caller.scope(), id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("schedule {id} not found")))
}

pub(super) async fn get_schedule(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let schedule = load_schedule(&state, &caller, &id).await?;
    Ok(Json(schedule_view(schedule, state.engine.clock.now())))
}

pub(crate) async fn update_schedule(
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

pub(super) async fn delete_schedule(
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
