//! Runs: the filtered list with keyset pagination, a run's page (why it waits, its data,
//! the diagram with its path, its timeline, signals, family, audit) and the operator's
//! actions on it. Actions are offered only where the run's status allows them and the
//! key's scope does; the handlers check both again, and the CSRF token, whatever the
//! page offered.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde_json::Value;
use uuid::Uuid;
use waymark_engine::keys::Scope;
use waymark_engine::store::RunFilter;
use waymark_engine::{EngineError, Run, RunStatus, SendSignal, TenantScope};

use super::page::{self, layout};
use super::session::{check_csrf, UiSession};
use super::{why, Form};
use crate::diagram::{svg_with_path, RunPath};
use crate::error::ApiError;
use crate::AppState;

const PAGE: u32 = 50;
const FILTERS: &[&str] = &[
    "workflow",
    "status",
    "state",
    "tag",
    "created_after",
    "created_before",
];
const STATUSES: &[RunStatus] = &[
    RunStatus::Pending,
    RunStatus::Running,
    RunStatus::Sleeping,
    RunStatus::Waiting,
    RunStatus::Retrying,
    RunStatus::Compensating,
    RunStatus::Completed,
    RunStatus::Failed,
    RunStatus::Cancelled,
    RunStatus::CompensationFailed,
];

/// The runs an admin sees: every tenant's, or the one it picked with `?tenant=`.
/// Anyone else sees its own tenant only, whatever it asks for.
pub(super) fn scope_for(session: &UiSession, query: &[(String, String)]) -> TenantScope {
    match crate::routes::param(query, "tenant").filter(|t| !t.is_empty()) {
        Some(t) if session.caller.is_admin() => TenantScope::Tenant(t.to_owned()),
        _ => session.caller.scope(),
    }
}

fn error_page(session: &UiSession, error: ApiError) -> Response {
    let heading = match error.status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::FORBIDDEN => "Forbidden",
        StatusCode::CONFLICT => "Not possible now",
        StatusCode::UNPROCESSABLE_ENTITY => "Invalid",
        _ => "Something went wrong",
    };
    page::message(session, error.status, heading, &error.detail)
}

pub(super) async fn list(
    State(state): State<AppState>,
    session: UiSession,
    RawQuery(raw): RawQuery,
) -> Response {
    let query = super::query(raw);
    let get = |name: &str| crate::routes::param(&query, name).unwrap_or_default();
    let q = get("q").trim().to_owned();
    if let Ok(id) = q.parse::<Uuid>() {
        return Redirect::to(&format!("/ui/runs/{id}")).into_response();
    }
    let given: Vec<(String, String)> = query
        .iter()
        .filter(|(k, v)| FILTERS.contains(&k.as_str()) && !v.is_empty())
        .cloned()
        .collect();
    let (filter, problem) = match crate::routes::filter_from(&given) {
        Ok(filter) => (filter, None),
        Err(e) => (RunFilter::default(), Some(e.detail)),
    };
    let before = get("before").parse::<Uuid>().ok();
    let scope = scope_for(&session, &query);
    // Anything else searched for is an idempotency key: every run it names, across
    // workflows (the filters do not apply to it).
    let found = if q.is_empty() {
        state
            .engine
            .store
            .runs_list(&scope, &filter, before, PAGE + 1)
            .await
            .map_err(ApiError::from)
    } else {
        runs_by_key(&state, &scope, &q).await
    };
    let mut runs = match found {
        Ok(runs) => runs,
        Err(e) => return error_page(&session, e),
    };
    let more = q.is_empty() && runs.len() > PAGE as usize;
    runs.truncate(PAGE as usize);
    let now = state.engine.clock.now();
    let next = more.then(|| {
        let mut pairs: Vec<(String, String)> = query
            .iter()
            .filter(|(k, _)| k != "before")
            .cloned()
            .collect();
        pairs.push((
            "before".into(),
            runs.last().map(|r| r.id.to_string()).unwrap_or_default(),
        ));
        let encoded: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        format!("/ui/runs?{encoded}")
    });
    let mut workflows: Vec<&str> = state.engine.registry.iter().map(|w| w.name()).collect();
    workflows.sort();
    let body = html! {
        h1 { "Runs" }
        form.filters method="get" action="/ui/runs" {
            label { "Search by run id or idempotency key" input type="search" name="q" value=(get("q")) placeholder="run id or idempotency key"; }
            label { "Workflow"
                select name="workflow" {
                    option value="" { "any" }
                    @for w in &workflows { option value=(w) selected[get("workflow") == *w] { (w) } }
                }
            }
            label { "Status"
                select name="status" {
                    option value="" { "any" }
                    @for s in STATUSES { option value=(s.as_str()) selected[get("status") == s.as_str()] { (s.as_str()) } }
                }
            }
            label { "State" input name="state" value=(get("state")); }
            label { "Tag" input name="tag" value=(get("tag")); }
            label { "Created after" input name="created_after" value=(get("created_after")) placeholder="2026-12-01T00:00:00Z"; }
            label { "Created before" input name="created_before" value=(get("created_before")) placeholder="RFC 3339"; }
            @if session.caller.is_admin() {
                label { "Tenant" input name="tenant" value=(get("tenant")) placeholder="all"; }
            }
            button type="submit" { "Filter" }
        }
        @if let Some(problem) = &problem { p.error role="alert" { (problem) } }
        div #runs-table data-live {
            table.runs {
                thead { tr { th { "Run" } th { "Workflow" } th { "Status" } th { "State" } th { "Why" } th { "Created" } } }
                tbody {
                    @for run in &runs {
                        tr data-run=(run.id) {
                            td { a href={ "/ui/runs/" (run.id) } { code { (short_id(run.id)) } } }
                            td { (run.workflow) }
                            td { (page::status(run.status)) }
                            td { (run.state) }
                            td.why { (why::short(run, now)) }
                            td { (page::time(run.created_at)) }
                        }
                    }
                    @if runs.is_empty() { tr { td colspan="6" { "No runs match." } } }
                }
            }
        }
        @if let Some(next) = &next { p { a rel="next" href=(next) { "Older runs →" } } }
        @if may_act(&session) && q.is_empty() {
            form.bulk method="post" action="/ui/runs/bulk" {
                input type="hidden" name="csrf" value=(session.csrf);
                @for (k, v) in &query { @if FILTERS.contains(&k.as_str()) || (k == "tenant" && session.caller.is_admin()) { input type="hidden" name=(k) value=(v); } }
                label for="bulk-action" { "On every run this filter matches" }
                select #bulk-action name="action" { option value="cancel" { "cancel" } option value="retry" { "retry" } }
                button type="submit" { "Count them first" }
            }
        }
    };
    let mut response = layout(Some(&session), "Runs", "/ui/runs", body);
    if problem.is_some() {
        *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    }
    response
}

/// The runs an idempotency key names in `scope`, newest first. Keys are unique per
/// tenant and workflow, so there are at most a few; the lookup uses the unique index's
/// tenant prefix when the scope is one tenant.
async fn runs_by_key(
    state: &AppState,
    scope: &TenantScope,
    key: &str,
) -> Result<Vec<Run>, ApiError> {
    use waymark_engine::store::sql::Arg;
    if key.len() > 255 {
        return Err(ApiError::invalid(
            "q: an idempotency key is at most 255 characters",
        ));
    }
    let store = &state.engine.store;
    let rows = match scope {
        TenantScope::All => {
            store
                .sql_fetch(
                    "SELECT id FROM waymark_runs WHERE idempotency_key = $1 ORDER BY id DESC LIMIT 51",
                    &[Arg::text(key)],
                )
                .await?
        }
        TenantScope::Tenant(tenant) => {
            store
                .sql_fetch(
                    "SELECT id FROM waymark_runs WHERE tenant = $1 AND idempotency_key = $2 ORDER BY id DESC LIMIT 51",
                    &[Arg::text(tenant.as_str()), Arg::text(key)],
                )
                .await?
        }
    };
    let mut runs = Vec::with_capacity(rows.len());
    for row in &rows {
        if let Some(run) = store.run_get(scope, row.id("id")?).await? {
            runs.push(run);
        }
    }
    Ok(runs)
}

fn short_id(id: Uuid) -> String {
    id.to_string()[..13].to_owned()
}

/// What the signal form shows again after a refused payload.
#[derive(Debug, Default)]
struct SignalAttempt {
    name: String,
    payload: String,
    error: String,
}

pub(super) async fn detail(
    State(state): State<AppState>,
    session: UiSession,
    Path(id): Path<String>,
) -> Response {
    render(&state, &session, &id, None).await
}

/// May this caller act on runs at all?
fn may_act(session: &UiSession) -> bool {
    session.caller.key.top_scope() >= Scope::Operator
}

fn can_cancel(run: &Run) -> bool {
    !run.status.is_terminal()
        && !matches!(
            run.status,
            RunStatus::Compensating | RunStatus::CompensationFailed
        )
}

fn can_terminate(run: &Run) -> bool {
    !run.status.is_terminal()
}

fn can_retry(run: &Run) -> bool {
    (run.status == RunStatus::Failed && run.held) || run.status == RunStatus::CompensationFailed
}

fn can_skip(run: &Run) -> bool {
    run.status == RunStatus::CompensationFailed
}

async fn render(
    state: &AppState,
    session: &UiSession,
    id: &str,
    attempt: Option<SignalAttempt>,
) -> Response {
    match render_inner(state, session, id, attempt).await {
        Ok(response) => response,
        Err(error) => error_page(session, error),
    }
}

async fn render_inner(
    state: &AppState,
    session: &UiSession,
    id: &str,
    attempt: Option<SignalAttempt>,
) -> Result<Response, ApiError> {
    let caller = &session.caller;
    let mut run = crate::routes::load_run(state, caller, id).await?;
    // Fields the workflow marks sensitive are never on the page.
    if let Some(workflow) = state.engine.registry.get(&run.workflow) {
        let definition = workflow.definition();
        definition.redact(&mut run.input);
        definition.redact(&mut run.state_data);
        if let Some(output) = &mut run.output {
            definition.redact(output);
        }
    }
    let scope = caller.scope();
    let now = state.engine.clock.now();
    let store = &state.engine.store;
    let history = store.run_history(&scope, run.id).await?.unwrap_or_default();
    let signals = store.run_signals(&scope, run.id).await?.unwrap_or_default();
    let workflow = state.engine.registry.get(&run.workflow).cloned();
    let view = crate::routes::view(state, run.clone()).await?;
    let children_done = if view.children.is_empty() {
        None
    } else {
        Some(store.runs_unfinished(&view.children).await?.len() as u32)
            .map(|unfinished| view.children.len() as u32 - unfinished)
    };
    let context = why::Context {
        pending_reason: view.pending_reason.clone(),
        max_attempts: workflow
            .as_ref()
            .map(|w| w.definition().retry_for(&run.state).max_attempts),
        children_done,
        deadline: view.details.as_ref().and_then(why::Deadline::from_details),
    };
    let line = why::line(&run, now, &context);
    let target = format!("run:{}", run.id);
    let audit: Vec<_> = store
        .audit_list(&scope, None, 500)
        .await?
        .into_iter()
        .filter(|a| a.target.as_deref() == Some(target.as_str()))
        .collect();
    let diagram = workflow.as_ref().map(|w| {
        let path = RunPath::from_history(&history, &run.state);
        svg_with_path(w.name(), w.definition(), Some(&path))
    });
    let timeline = super::timeline::svg(&history, now, run.status.is_terminal());
    let act = may_act(session);
    let attempt = attempt.unwrap_or_default();
    let declared: Vec<&str> = workflow
        .as_ref()
        .map(|w| w.definition().signals.iter().map(|s| s.name).collect())
        .unwrap_or_default();
    let waited: Vec<String> = run
        .waiting_for
        .as_ref()
        .map(|w| w.signal_names())
        .unwrap_or_default();
    let csrf = &session.csrf;
    let body = html! {
        p.crumbs data-live-url={ "/ui/runs/" (run.id) } { a href="/ui/runs" { "Runs" } " / " code { (run.id) } }
        div #run-head data-live {
        h1 { (run.workflow) " " (page::status(run.status)) }
        @if let Some(line) = &line { p.why #why role="status" { (line) } }
        dl.facts {
            dt { "Run" } dd { code { (run.id) } }
            dt { "Tenant" } dd { (run.tenant) }
            dt { "State" } dd { (run.state) }
            dt { "Version" } dd { (run.workflow_version) }
            dt { "Attempt" } dd { (run.attempt) " (visit " (run.visit) ")" }
            @if let Some(key) = &run.idempotency_key { dt { "Idempotency key" } dd { code { (key) } } }
            @if !run.tags.is_empty() { dt { "Tags" } dd { (run.tags.join(", ")) } }
            dt { "Created" } dd { (page::time(run.created_at)) }
            dt { "Updated" } dd { (page::time(run.updated_at)) }
            dt { "Finished" } dd { (page::opt_time(run.finished_at)) }
            @if let Some(p) = &view.progress {
                dt { "Progress" } dd { progress value=(p.fraction) max="1" {} " " (p.message.clone().unwrap_or_default()) }
            }
        }
        }
        div #run-actions data-live data-run=(run.id) {
        @if act && (can_cancel(&run) || can_terminate(&run) || can_retry(&run) || can_skip(&run) || (!run.status.is_terminal() && !declared.is_empty())) {
            section.actions #actions aria-label="Actions" {
                h2 { "Actions" }
                @if can_cancel(&run) {
                    form method="post" action={ "/ui/runs/" (run.id) "/cancel" } data-confirm="Cancel this run? Its compensations will run." {
                        input type="hidden" name="csrf" value=(csrf);
                        label { "Reason " input name="reason" maxlength="1000"; }
                        button type="submit" { "Cancel run" }
                    }
                }
                @if can_terminate(&run) {
                    form method="post" action={ "/ui/runs/" (run.id) "/terminate" } data-confirm="Terminate this run now, without compensation?" {
                        input type="hidden" name="csrf" value=(csrf);
                        label { "Reason " input name="reason" maxlength="1000"; }
                        button.danger type="submit" { "Terminate" }
                    }
                }
                @if can_retry(&run) {
                    form method="post" action={ "/ui/runs/" (run.id) "/retry" } data-confirm="Retry this run?" {
                        input type="hidden" name="csrf" value=(csrf);
                        button type="submit" { "Retry" }
                    }
                }
                @if can_skip(&run) {
                    form method="post" action={ "/ui/runs/" (run.id) "/skip-compensation" } data-confirm="Skip the failed compensation? The others still run." {
                        input type="hidden" name="csrf" value=(csrf);
                        button type="submit" { "Skip compensation" }
                    }
                }
                @if !run.status.is_terminal() && !declared.is_empty() {
                    form.signal method="post" action={ "/ui/runs/" (run.id) "/signal" } data-confirm="Send this signal?" {
                        input type="hidden" name="csrf" value=(csrf);
                        label for="signal-name" { "Signal" }
                        select #signal-name name="name" {
                            @for s in &declared {
                                @let chosen = if attempt.name.is_empty() { waited.iter().any(|w| w == s) } else { attempt.name == *s };
                                option value=(s) selected[chosen] { (s) }
                            }
                        }
                        label for="signal-payload" { "Payload (JSON)" }
                        textarea #signal-payload name="payload" rows="4" data-keep
                            aria-invalid=[(!attempt.error.is_empty()).then_some("true")]
                            aria-describedby=[(!attempt.error.is_empty()).then_some("signal-error")] { (attempt.payload) }
                        @if !attempt.error.is_empty() { p #signal-error .error role="alert" { (attempt.error) } }
                        button type="submit" { "Send signal" }
                    }
                }
            }
        }
        }
        div #run-body data-live {
        @if let Some(error) = &run.error {
            section { h2 { "Error" }
                p.error { (error.message) }
                @if !error.causes.is_empty() { ol.causes { @for c in &error.causes { li { (c) } } } }
            }
        }
        @if let Some(output) = &run.output { section { h2 { "Output" } (page::json(output)) } }
        section.two {
            div { h2 { "Input" } (page::json(&run.input)) }
            div { h2 { "State data" } (page::json(&run.state_data)) }
        }
        @if let Some(diagram) = diagram {
            section { h2 { "Path through the workflow" } div.diagram #diagram { (page::svg(diagram)) } }
        }
        @if let Some(timeline) = timeline {
            section { h2 { "Timeline" } div.scroll tabindex="0" { (page::svg(timeline)) } }
        }
        section { h2 { "History" } (history_table(&history)) }
        section { h2 { "Signals" }
            @if signals.is_empty() { p { "None delivered." } } @else {
                table { thead { tr { th { "Signal" } th { "Received" } th { "From" } th { "Became" } th { "Payload" } } }
                    tbody { @for s in &signals { tr {
                        td { (s.name) } td { (page::time(s.received_at)) } td { (s.actor) } td { (s.status) }
                        td { code { (s.payload.to_string()) } }
                    } } } }
            }
        }
        section { h2 { "Family" }
            @if let Some(parent) = &view.parent { p { "Parent: " a href={ "/ui/runs/" (parent.id) } { code { (parent.id) } } " (child " (parent.index) ")" } }
            @if view.children.is_empty() { p { "No children in the current visit." } } @else {
                ul { @for c in &view.children { li { a href={ "/ui/runs/" (c) } { code { (c) } } } } }
            }
        }
        section { h2 { "Audit" }
            @if audit.is_empty() { p { "No audit records about this run." } } @else {
                table { thead { tr { th { "When" } th { "Who" } th { "What" } th { "Detail" } } }
                    tbody { @for a in &audit { tr { td { (page::time(a.at)) } td { (a.actor) } td { (a.action) } td { code { (a.detail.to_string()) } } } } } }
            }
        }
        }
    };
    let status = if attempt.error.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let mut response = layout(
        Some(session),
        &format!("Run {}", short_id(run.id)),
        "/ui/runs",
        body,
    );
    *response.status_mut() = status;
    Ok(response)
}

fn history_table(history: &[waymark_engine::store::HistoryEntry]) -> Markup {
    html! {
        table.history {
            thead { tr { th { "When" } th { "From" } th { "To" } th { "Cause" } th { "Attempt" } th { "By" } th { "Error" } } }
            tbody { @for h in history { tr {
                td { (page::time(h.committed_at)) }
                td { (h.from_state.clone().unwrap_or_default()) " " @if let Some(s) = h.from_status { (page::status(s)) } }
                td { (h.to_state) " " (page::status(h.to_status)) }
                td { (h.cause) } td { (h.attempt) } td { (h.actor) }
                td { @if let Some(e) = &h.error { (e.message) } }
            } } }
        }
    }
}

/// Reads an action's form after the session's checks: the CSRF token, then the scope.
async fn checked_form(state: &AppState, session: &UiSession, body: Body) -> Result<Form, Response> {
    let form = Form::read(body, state.api.max_body).await?;
    check_csrf(session, &form).map_err(IntoResponse::into_response)?;
    if !may_act(session) {
        return Err(page::forbidden(&format!(
            "this key's scope ({}) may look but not act; operator is needed",
            session.caller.key.top_scope()
        )));
    }
    Ok(form)
}

pub(super) async fn action(
    State(state): State<AppState>,
    session: UiSession,
    Path((id, action)): Path<(String, String)>,
    body: Body,
) -> Response {
    let form = match checked_form(&state, &session, body).await {
        Ok(form) => form,
        Err(response) => return response,
    };
    let caller = &session.caller;
    let run = match crate::routes::load_run(&state, caller, &id).await {
        Ok(run) => run,
        Err(e) => return error_page(&session, e),
    };
    let reason = form
        .get("reason")
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{action} by {} from the dashboard", caller.actor()));
    if reason.len() > 1000 {
        return error_page(
            &session,
            ApiError::invalid("reason: at most 1000 characters"),
        );
    }
    let (scope, actor, address) = (caller.scope(), caller.actor(), caller.address.as_deref());
    let engine = &state.engine;
    let outcome = match action.as_str() {
        "cancel" => {
            engine
                .cancel(&scope, run.id, &actor, &reason, address)
                .await
        }
        "terminate" => {
            engine
                .terminate(&scope, run.id, &actor, &reason, address)
                .await
        }
        "retry" => engine.retry(&scope, run.id, &actor, address).await,
        "skip-compensation" => {
            engine
                .skip_compensation(&scope, run.id, &actor, address)
                .await
        }
        _ => {
            return error_page(
                &session,
                ApiError::not_found(format!("no action {action:?}")),
            )
        }
    };
    match outcome {
        Ok(_) => Redirect::to(&format!("/ui/runs/{}", run.id)).into_response(),
        Err(e) => error_page(&session, e.into()),
    }
}

/// Bulk cancel or retry of the filtered list: the first POST only counts (a dry run);
/// the page it shows offers to apply it to what was counted.
pub(super) async fn bulk(
    State(state): State<AppState>,
    session: UiSession,
    body: Body,
) -> Response {
    let form = match checked_form(&state, &session, body).await {
        Ok(form) => form,
        Err(response) => return response,
    };
    let pairs: Vec<(String, String)> = form
        .pairs()
        .iter()
        .filter(|(k, v)| (FILTERS.contains(&k.as_str()) || k == "tenant") && !v.is_empty())
        .cloned()
        .collect();
    let filters: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| k != "tenant")
        .cloned()
        .collect();
    let filter = match crate::routes::filter_from(&filters) {
        Ok(f) => f,
        Err(e) => return error_page(&session, e),
    };
    let action = match form.get("action") {
        Some("cancel") => "cancel",
        Some("retry") => "retry",
        _ => return error_page(&session, ApiError::invalid("action: cancel or retry")),
    };
    let dry_run = form.get("apply") != Some("yes");
    let scope = scope_for(&session, &pairs);
    let reason = Some(format!(
        "bulk {action} by {} from the dashboard",
        session.caller.actor()
    ));
    let outcome = match crate::routes::bulk_apply(
        &state,
        &session.caller,
        scope,
        &filter,
        action,
        dry_run,
        reason,
    )
    .await
    {
        Ok(v) => v,
        Err(e) => return error_page(&session, e),
    };
    let matched = outcome["matched"].as_u64().unwrap_or(0);
    let back: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&pairs)
        .finish();
    let body = html! {
        h1 { "Bulk " (action) }
        @if dry_run {
            p #bulk-count role="status" { (matched) " run(s) matching this filter can be " (if action == "cancel" { "cancelled" } else { "retried" }) "." }
            @if matched > 0 {
                form method="post" action="/ui/runs/bulk" data-confirm={ (action) " " (matched) " run(s)?" } {
                    input type="hidden" name="csrf" value=(session.csrf);
                    @for (k, v) in &pairs { input type="hidden" name=(k) value=(v); }
                    input type="hidden" name="action" value=(action);
                    input type="hidden" name="apply" value="yes";
                    button.danger type="submit" { (action) " " (matched) " run(s)" }
                }
            }
        } @else {
            p #bulk-count role="status" {
                (outcome["applied"].as_array().map_or(0, Vec::len)) " of " (matched) " run(s) done; "
                (outcome["conflicts"].as_array().map_or(0, Vec::len)) " could not be (their status changed)."
            }
        }
        p { a href={ "/ui/runs?" (back) } { "Back to the list" } }
    };
    layout(Some(&session), "Bulk action", "/ui/runs", body)
}

pub(super) async fn signal(
    State(state): State<AppState>,
    session: UiSession,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    let form = match checked_form(&state, &session, body).await {
        Ok(form) => form,
        Err(response) => return response,
    };
    let caller = &session.caller;
    let run = match crate::routes::load_run(&state, caller, &id).await {
        Ok(run) => run,
        Err(e) => return error_page(&session, e),
    };
    let name = form.get("name").unwrap_or_default().to_owned();
    let text = form.get("payload").unwrap_or_default().to_owned();
    let refuse = |error: String| SignalAttempt {
        name: name.clone(),
        payload: text.clone(),
        error,
    };
    let payload: Value = if text.trim().is_empty() {
        Value::Null
    } else {
        match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                return render(
                    &state,
                    &session,
                    &id,
                    Some(refuse(format!("not JSON: {e}"))),
                )
                .await
            }
        }
    };
    let sent = state
        .engine
        .signal(
            &caller.scope(),
            SendSignal {
                run_id: run.id,
                name: name.clone(),
                payload,
                idempotency_key: None,
                actor: caller.actor(),
            },
        )
        .await;
    match sent {
        Ok(_) => Redirect::to(&format!("/ui/runs/{}", run.id)).into_response(),
        // The payload's or the name's fault: shown next to the field, the text kept.
        Err(
            e @ (EngineError::InvalidInput(_)
            | EngineError::UnknownSignal { .. }
            | EngineError::Conflict(_)),
        ) => {
            let message = ApiError::from(e).detail;
            render(&state, &session, &id, Some(refuse(message))).await
        }
        Err(e) => error_page(&session, e.into()),
    }
}
