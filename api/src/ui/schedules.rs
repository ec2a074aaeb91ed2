//! Schedules: each with its next fire times in its own zone and in the operator's (the
//! page's script turns `<time>` into the browser's zone), its recent runs, and pause or
//! resume for operators. Pausing and resuming call the handler behind
//! `PATCH /v1/schedules/{id}` with `{"paused": …}`, so the dashboard does what the API
//! does: a resumed schedule starts from now, the change is audited.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use maud::{html, Markup};
use serde_json::json;
use waymark_engine::cron::CronSchedule;
use waymark_engine::keys::Scope;
use waymark_engine::store::RunFilter;
use waymark_engine::TenantScope;

use super::page::{self, layout};
use super::session::{check_csrf, UiSession};
use super::Form;
use crate::AppState;

/// How many upcoming fire times each schedule shows.
const UPCOMING: usize = 3;

/// How many of its latest runs each schedule shows; the rest are a link away.
const RECENT: u32 = 5;

/// The tag the scheduler gives every run a schedule starts (see
/// `waymark_workers::scheduler`): the link from a schedule to its runs.
fn schedule_tag(id: uuid::Uuid) -> String {
    format!("schedule:{id}")
}

/// A time in the schedule's own zone, UTC in the tooltip. Not a `<time>`: the page's
/// script would move it into the browser's zone, which has its own column.
fn zoned(at: DateTime<Utc>, cron: &CronSchedule) -> Markup {
    let local = at.with_timezone(&cron.timezone());
    html! {
        span.zoned title=(at.format("%Y-%m-%d %H:%M:%S UTC")) {
            (local.format("%Y-%m-%d %H:%M %Z"))
        }
    }
}

pub(super) async fn list(State(state): State<AppState>, session: UiSession) -> Response {
    let store = &state.engine.store;
    let schedules = match store.schedule_list(&session.caller.scope()).await {
        Ok(s) => s,
        Err(e) => {
            let e = crate::error::ApiError::from(e);
            return page::message(&session, e.status, "Something went wrong", &e.detail);
        }
    };
    let now = state.engine.clock.now();
    let may_act = session.caller.key.top_scope() >= Scope::Operator;
    // Each schedule's latest runs, newest first, found by the tag the scheduler puts on
    // them (the tags' primary key is (tag, run_id) and run ids are time-ordered). Only
    // in the schedule's own tenant, which is in the caller's scope: a run another
    // tenant tagged with this schedule's id through the API is not one of its runs.
    let mut recent_runs = Vec::with_capacity(schedules.len());
    for s in &schedules {
        let filter = RunFilter {
            tag: Some(schedule_tag(s.id)),
            ..RunFilter::default()
        };
        match store
            .runs_list(
                &TenantScope::Tenant(s.tenant.clone()),
                &filter,
                None,
                RECENT,
            )
            .await
        {
            Ok(runs) => recent_runs.push(runs),
            Err(e) => {
                let e = crate::error::ApiError::from(e);
                return page::message(&session, e.status, "Something went wrong", &e.detail);
            }
        }
    }
    let body = html! {
        h1 { "Schedules" }
        @if schedules.is_empty() { p { "No schedules." } } @else {
            div.scroll tabindex="0" { table #schedules { thead { tr {
                th { "Name" } th { "Tenant" } th { "Workflow" } th { "Cron" } th { "Zone" } th { "State" }
                th { "Next fires (schedule's zone)" } th { "Next fires (yours)" } th { "Last fired" } th { "Recent runs" }
                @if may_act { th { "Actions" } }
            } }
            tbody { @for (s, recent) in schedules.iter().zip(&recent_runs) {
                @let cron = CronSchedule::parse(&s.cron, &s.timezone).ok();
                @let upcoming = match (&cron, s.paused) { (Some(c), false) => c.upcoming(now, UPCOMING), _ => Vec::new() };
                tr data-schedule=(s.id) {
                    td { (s.name) } td { (s.tenant) } td { (s.workflow) } td { code { (s.cron) } } td { (s.timezone) }
                    td { @if s.paused { "paused" } @else { "active" } }
                    td.zone { @if let Some(c) = &cron { @for t in &upcoming { (zoned(*t, c)) br; } } @if upcoming.is_empty() { "—" } }
                    td.yours { @for t in &upcoming { (page::time(*t)) br; } @if upcoming.is_empty() { "—" } }
                    td { (page::time(s.last_fired_at)) }
                    td.recent { @if recent.is_empty() { "—" } @else {
                        ul.recent-runs { @for r in recent { li data-run=(r.id) {
                            a href={ "/ui/runs/" (r.id) } { code { (r.id.to_string()[..13]) } } " " (page::status(r.status)) " " (page::time(r.created_at))
                        } } }
                        @if recent.len() == RECENT as usize {
                            a href={ "/ui/runs?tag=" (schedule_tag(s.id)) } { "All runs of " (s.name) }
                        }
                    } }
                    @if may_act { td {
                        @let (action, label) = if s.paused { ("resume", "Resume") } else { ("pause", "Pause") };
                        form method="post" action={ "/ui/schedules/" (s.id) "/" (action) } data-confirm={ (label) " schedule " (s.name) "?" } {
                            input type="hidden" name="csrf" value=(session.csrf);
                            button type="submit" aria-label={ (label) " schedule " (s.name) } { (label) }
                        }
                    } }
                }
            } } } }
        }
    };
    layout(Some(&session), "Schedules", "/ui/schedules", body)
}

pub(super) async fn action(
    State(state): State<AppState>,
    session: UiSession,
    Path((id, action)): Path<(String, String)>,
    body: Body,
) -> Response {
    let form = match Form::read(body, state.api.max_body).await {
        Ok(form) => form,
        Err(response) => return response,
    };
    if let Err(refused) = check_csrf(&session, &form) {
        return refused.into_response();
    }
    if session.caller.key.top_scope() < Scope::Operator {
        return page::forbidden(
            "this key's scope (reader) may look but not act; operator is needed",
        );
    }
    let paused = match action.as_str() {
        "pause" => true,
        "resume" => false,
        _ => {
            return page::message(
                &session,
                StatusCode::NOT_FOUND,
                "Not found",
                &format!("no schedule action {action:?}"),
            )
        }
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let updated = crate::routes::update_schedule(
        State(state.clone()),
        session.caller.clone(),
        Path(id),
        headers,
        Body::from(json!({ "paused": paused }).to_string()),
    )
    .await;
    match updated {
        Ok(_) => Redirect::to("/ui/schedules").into_response(),
        Err(e) => page::message(&session, e.status, "Not possible", &e.detail),
    }
}
