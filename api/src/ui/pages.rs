//! The pages around the runs: the overview (what needs an operator, what waits, the
//! backlog, the workers), the workflows with their diagrams, the workers, the audit log.

use axum::extract::{RawQuery, State};
use axum::response::Response;
use maud::{html, Markup};
use waymark_engine::store::RunFilter;
use waymark_engine::RunStatus;

use super::page::{self, layout};
use super::session::UiSession;
use super::why;
use crate::AppState;

/// A few runs of one status, newest first, as a short table.
async fn runs_of(
    state: &AppState,
    session: &UiSession,
    status: RunStatus,
    limit: u32,
) -> Result<Markup, crate::error::ApiError> {
    let filter = RunFilter {
        status: Some(status),
        ..RunFilter::default()
    };
    let runs = state
        .engine
        .store
        .runs_list(&session.caller.scope(), &filter, None, limit)
        .await?;
    let now = state.engine.clock.now();
    Ok(html! {
        @if runs.is_empty() { p { "None." } } @else {
            table { tbody { @for run in &runs { tr data-run=(run.id) {
                td { a href={ "/ui/runs/" (run.id) } { (run.workflow) } }
                td { (page::status(run.status)) }
                td.why { (why::short(run, now)) }
                td { (page::time(run.updated_at)) }
            } } } }
            p { a href={ "/ui/runs?status=" (status.as_str()) } { "All " (status.as_str()) " runs →" } }
        }
    })
}

pub(super) async fn overview(State(state): State<AppState>, session: UiSession) -> Response {
    match overview_inner(&state, &session).await {
        Ok(r) => r,
        Err(e) => page::message(&session, e.status, "Something went wrong", &e.detail),
    }
}

async fn overview_inner(
    state: &AppState,
    session: &UiSession,
) -> Result<Response, crate::error::ApiError> {
    let now = state.engine.clock.now();
    let held = runs_of(state, session, RunStatus::CompensationFailed, 10).await?;
    let failed = runs_of(state, session, RunStatus::Failed, 10).await?;
    let waiting = runs_of(state, session, RunStatus::Waiting, 10).await?;
    let retrying = runs_of(state, session, RunStatus::Retrying, 10).await?;
    // The backlog counts every tenant's runs: only an admin may see it.
    let backlog = if session.caller.is_admin() {
        Some(state.engine.store.runs_due_stats(now).await?)
    } else {
        None
    };
    let live = state
        .engine
        .store
        .workers_live(now - chrono::Duration::seconds(90))
        .await?;
    let scope = session.caller.scope();
    let store = &state.engine.store;
    let counts = store.runs_counts(&scope).await?;
    let day = store
        .runs_activity(
            &scope,
            now - chrono::Duration::hours(24),
            std::time::Duration::from_secs(3600),
        )
        .await?;
    let hour = store
        .runs_activity(
            &scope,
            now - chrono::Duration::hours(1),
            std::time::Duration::from_secs(60),
        )
        .await?;
    let by_hour = super::chart::series(&day, now, chrono::Duration::hours(1), 24);
    let by_minute = super::chart::series(&hour, now, chrono::Duration::minutes(1), 60);
    let (done, failed_day) = by_hour
        .iter()
        .fold((0, 0), |acc, p| (acc.0 + p.2 + p.3, acc.1 + p.3));
    let mut workflows: Vec<&str> = counts.iter().map(|c| c.workflow.as_str()).collect();
    workflows.dedup();
    let statuses: Vec<RunStatus> = {
        let mut s: Vec<RunStatus> = counts.iter().map(|c| c.status).collect();
        s.sort_by_key(|s| s.as_str());
        s.dedup();
        s
    };
    let count = |w: &str, s: RunStatus| {
        counts
            .iter()
            .find(|c| c.workflow == w && c.status == s)
            .map_or(0, |c| c.count)
    };
    let mut schedules: Vec<_> = store
        .schedule_list(&scope)
        .await?
        .into_iter()
        .filter(|s| !s.paused && s.next_fire_at.is_some())
        .collect();
    schedules.sort_by_key(|s| s.next_fire_at);
    schedules.truncate(5);
    let body = html! {
        h1 { "Overview" }
        div #overview data-live {
            @if let Some((due, oldest)) = backlog {
                p.backlog { "Backlog: " strong { (due) } " due runs unclaimed"
                    @if let Some(oldest) = oldest { ", the oldest due since " (page::time(oldest)) " (" (page::relative(oldest, now)) ")" } "." }
            }
            p { (live.len()) " worker process(es) alive. " a href="/ui/workers" { "Workers →" } }
            p.rate { "Failure rate over the last day: "
                @if done == 0 { "no runs ended" } @else {
                    strong { (format!("{:.1} %", failed_day as f64 * 100.0 / done as f64)) } " (" (failed_day) " of " (done) " ended runs failed)"
                }
            }
            section { h2 { "Runs by workflow and status" }
                @if counts.is_empty() { p { "No runs yet." } } @else {
                    div.scroll tabindex="0" { table.counts {
                        thead { tr { th { "Workflow" } @for s in &statuses { th { (page::status(*s)) } } } }
                        tbody { @for w in &workflows { tr {
                            th { a href={ "/ui/runs?workflow=" (w) } { (w) } }
                            @for s in &statuses {
                                @let n = count(w, *s);
                                td { @if n > 0 { a href={ "/ui/runs?workflow=" (w) "&status=" (s.as_str()) } { (n) } } @else { "·" } }
                            }
                        } } }
                    } }
                }
            }
            div.grid {
                section { h2 { "Last hour, per minute" } div.scroll tabindex="0" { (page::svg(super::chart::svg("last hour", &by_minute))) } }
                section { h2 { "Last day, per hour" } div.scroll tabindex="0" { (page::svg(super::chart::svg("last day", &by_hour))) } }
            }
            section { h2 { "Schedules due next" }
                @if schedules.is_empty() { p { "None." } } @else {
                    ul { @for s in &schedules { li { (s.name) " (" (s.workflow) "): " (page::opt_time(s.next_fire_at)) } } }
                }
            }
            div.grid {
                section { h2 { "Compensation failed" } (held) }
                section { h2 { "Failed" } (failed) }
                section { h2 { "Retrying" } (retrying) }
                section { h2 { "Waiting" } (waiting) }
            }
        }
    };
    Ok(layout(Some(session), "Overview", "/ui/", body))
}

pub(super) async fn workflows(State(state): State<AppState>, session: UiSession) -> Response {
    let mut all: Vec<_> = state.engine.registry.iter().collect();
    all.sort_by_key(|w| w.name());
    let admin = session.caller.is_admin();
    let body = html! {
        h1 { "Workflows" }
        @for w in &all {
            @let d = w.definition();
            @if d.startable_by(true) || admin {
                section.workflow id={ "wf-" (w.name()) } {
                    h2 { (w.name()) " " small { "v" (w.version()) } }
                    p {
                        "Signals: " (if d.signals.is_empty() { "none".to_owned() } else { d.signals.iter().map(|s| s.name).collect::<Vec<_>>().join(", ") })
                        " · Retries: " (d.retry.max_attempts) " attempts"
                        " · Compensating states: " (d.states.iter().filter(|s| s.compensates).count())
                        " · " a href={ "/ui/runs?workflow=" (w.name()) } { "Runs →" }
                    }
                    div.diagram tabindex="0" { (page::svg(crate::diagram::svg(w.name(), d))) }
                }
            }
        }
    };
    layout(Some(&session), "Workflows", "/ui/workflows", body)
}

pub(super) async fn workers(State(state): State<AppState>, session: UiSession) -> Response {
    let workers = match state.engine.store.workers_page(None, 200).await {
        Ok(w) => w,
        Err(e) => {
            let e = crate::error::ApiError::from(e);
            return page::message(&session, e.status, "Something went wrong", &e.detail);
        }
    };
    let now = state.engine.clock.now();
    // Hosts and process ids are the installation's business: admins only, as in the API.
    let admin = session.caller.is_admin();
    let body = html! {
        h1 { "Workers" }
        table { thead { tr { @if admin { th { "Host" } th { "Pid" } } th { "Version" } th { "Workflows" } th { "Capabilities" } th { "Holds" } th { "Last heartbeat" } th { "Stopped" } } }
            tbody { @for w in &workers { tr {
                @if admin { td { (w.host) } td { (w.pid) } }
                td { (w.version) } td { (w.workflows.join(", ")) } td { (w.capabilities.join(", ")) }
                td { (w.runs_in_hand) }
                td { (page::time(w.last_heartbeat_at)) " (" (page::relative(w.last_heartbeat_at, now)) ")" }
                td { (page::opt_time(w.stopped_at)) }
            } } } }
    };
    layout(Some(&session), "Workers", "/ui/workers", body)
}

pub(super) async fn audit(
    State(state): State<AppState>,
    session: UiSession,
    RawQuery(raw): RawQuery,
) -> Response {
    let query = super::query(raw);
    let before = crate::routes::param(&query, "before").and_then(|b| b.parse::<i64>().ok());
    let entries = match state
        .engine
        .store
        .audit_list(&session.caller.scope(), before, 101)
        .await
    {
        Ok(e) => e,
        Err(e) => {
            let e = crate::error::ApiError::from(e);
            return page::message(&session, e.status, "Something went wrong", &e.detail);
        }
    };
    let more = entries.len() > 100;
    let entries = &entries[..entries.len().min(100)];
    let body = html! {
        h1 { "Audit log" }
        table { thead { tr { th { "When" } th { "Tenant" } th { "Who" } th { "What" } th { "Target" } th { "Detail" } } }
            tbody { @for a in entries { tr {
                td { (page::time(a.at)) } td { (a.tenant) } td { (a.actor) } td { (a.action) }
                td { @if let Some(t) = &a.target {
                    @if let Some(run) = t.strip_prefix("run:") { a href={ "/ui/runs/" (run) } { (t) } } @else { (t) }
                } }
                td { code { (a.detail.to_string()) } }
            } } } }
        @if more { @if let Some(last) = entries.last() { p { a rel="next" href={ "/ui/audit?before=" (last.id) } { "Older →" } } } }
    };
    layout(Some(&session), "Audit", "/ui/audit", body)
}
