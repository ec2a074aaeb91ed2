//! API keys: the list, create (the secret shown once), revoke, rotate (the new secret
//! shown once) and the rotations under way with their grace end.
//!
//! Creating, revoking and rotating call the very handlers behind `POST /v1/keys`,
//! `DELETE /v1/keys/{id}` and `POST /v1/keys/{id}/rotate` with the session's key as the
//! caller, so the dashboard cannot drift from the API: same checks (scope no wider
//! than one's own, own tenant only), same audit, same transaction with the rotation's
//! run. Like `/v1/keys`, the page needs the operator scope.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde_json::{json, Map, Value};
use waymark_engine::keys::Scope;
use waymark_engine::store::{KeyRecord, RunFilter};
use waymark_engine::{Run, TenantScope, Workflow};
use waymark_workflows::key_rotation::KeyRotation;

use super::page::{self, layout};
use super::session::{check_csrf, UiSession};
use super::Form;
use crate::error::ApiError;
use crate::AppState;

/// What a POST left to show once on the page: a new secret, or why it was refused.
enum Outcome {
    None,
    Secret {
        what: &'static str,
        prefix: String,
        secret: String,
        run: Option<String>,
    },
    Refused(ApiError),
}

/// The keys page answers 403 to a reader, as `/v1/keys` does.
fn require_operator(session: &UiSession) -> Option<Response> {
    (session.caller.key.top_scope() < Scope::Operator)
        .then(|| page::forbidden("the keys page needs the operator scope; this key is a reader"))
}

pub(super) async fn list(State(state): State<AppState>, session: UiSession) -> Response {
    if let Some(refused) = require_operator(&session) {
        return refused;
    }
    render(&state, &session, Outcome::None).await
}

async fn render(state: &AppState, session: &UiSession, outcome: Outcome) -> Response {
    match render_inner(state, session, &outcome).await {
        Ok(mut response) => {
            if let Outcome::Refused(e) = &outcome {
                *response.status_mut() = e.status;
            }
            response
        }
        Err(e) => page::message(session, e.status, "Something went wrong", &e.detail),
    }
}

/// Every key of the caller's scope (an operator: its tenant; an admin: all), oldest first.
async fn all_keys(state: &AppState, scope: &TenantScope) -> Result<Vec<KeyRecord>, ApiError> {
    let mut keys = Vec::new();
    let mut after = None;
    loop {
        let page = state.engine.store.keys_page(scope, after, 500).await?;
        let full = page.len() == 500;
        after = page.last().map(|k| k.id);
        keys.extend(page);
        if !full {
            return Ok(keys);
        }
    }
}

/// Key rotations still under way in the caller's scope.
async fn rotations(state: &AppState, scope: &TenantScope) -> Result<Vec<Run>, ApiError> {
    let filter = RunFilter {
        workflow: Some(KeyRotation::NAME.into()),
        ..RunFilter::default()
    };
    let runs = state
        .engine
        .store
        .runs_list(scope, &filter, None, 500)
        .await?;
    Ok(runs
        .into_iter()
        .filter(|r| !r.status.is_terminal())
        .collect())
}

fn may_manage(session: &UiSession, key: &KeyRecord, now: chrono::DateTime<chrono::Utc>) -> bool {
    key.top_scope() <= session.caller.key.top_scope() && key.is_active(now) && !key.awaiting_reveal
}

async fn render_inner(
    state: &AppState,
    session: &UiSession,
    outcome: &Outcome,
) -> Result<Response, ApiError> {
    let scope = session.caller.scope();
    let now = state.engine.clock.now();
    let keys = all_keys(state, &scope).await?;
    let rotations = rotations(state, &scope).await?;
    let admin = session.caller.is_admin();
    let mine = session.caller.key.top_scope();
    let csrf = &session.csrf;
    let field = |run: &Run, name: &str| -> Option<String> {
        run.state_data
            .get(name)
            .or_else(|| run.input.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let prefix_of = |id: Option<String>| -> String {
        id.and_then(|id| keys.iter().find(|k| k.id.to_string() == id))
            .map_or_else(|| "—".to_owned(), |k| k.prefix.clone())
    };
    let body = html! {
        h1 { "API keys" }
        @match outcome {
            Outcome::Secret { what, prefix, secret, run } => {
                section.secret #new-secret role="status" {
                    h2 { (what) }
                    p { "The secret of key " code { (prefix) } " is shown " strong { "this once" } "; only its hash is kept. Copy it now." }
                    p { label for="secret-value" { "Secret" } " " input #secret-value type="text" readonly value=(secret) size="60"; }
                    @if let Some(run) = run { p { "The rotation runs as " a href={ "/ui/runs/" (run) } { code { (run) } } "." } }
                }
            }
            Outcome::Refused(e) => { p.error #key-error role="alert" { (e.detail) } }
            Outcome::None => {}
        }
        section { h2 { "Keys" }
            div.scroll tabindex="0" { table #keys { thead { tr {
                th { "Prefix" } @if admin { th { "Tenant" } } th { "Name" } th { "Scopes" } th { "Created" }
                th { "Expires" } th { "Last used" } th { "State" } th { "Actions" }
            } }
            tbody { @for k in &keys { tr data-key=(k.id) {
                td { code { (k.prefix) } } @if admin { td { (k.tenant) } }
                td { (k.name.as_deref().unwrap_or("")) }
                td { (k.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")) }
                td { (page::time(k.created_at)) } td { (page::opt_time(k.expires_at)) } td { (page::opt_time(k.last_used_at)) }
                td { (key_state(k, now)) }
                td {
                    @if may_manage(session, k, now) {
                        form.inline method="post" action={ "/ui/keys/" (k.id) "/revoke" } data-confirm={ "Revoke key " (k.prefix) "? Clients using it stop working now." } {
                            input type="hidden" name="csrf" value=(csrf);
                            button.danger type="submit" aria-label={ "Revoke key " (k.prefix) } { "Revoke" }
                        }
                        details.rotate { summary { "Rotate…" }
                            form method="post" action={ "/ui/keys/" (k.id) "/rotate" } data-confirm={ "Rotate key " (k.prefix) "?" } {
                                input type="hidden" name="csrf" value=(csrf);
                                label { "Grace period " input type="text" name="grace_period" placeholder="24h"; }
                                label { "Reason " input type="text" name="reason" maxlength="1000"; }
                                label { input type="checkbox" name="emergency" value="true"; " Emergency (revoke the old key now)" }
                                button type="submit" { "Rotate" }
                            }
                        }
                    }
                }
            } } } } }
        }
        section { h2 { "Rotations under way" }
            @if rotations.is_empty() { p #rotations { "None." } } @else {
                div.scroll tabindex="0" { table #rotations { thead { tr { th { "Run" } th { "Old key" } th { "New key" } th { "State" } th { "Grace ends" } } }
                tbody { @for r in &rotations { tr data-run=(r.id) {
                    td { a href={ "/ui/runs/" (r.id) } { code { (r.id.to_string()[..13]) } } }
                    td { code { (prefix_of(field(r, "key_id"))) } }
                    td { code { (prefix_of(field(r, "new_key_id"))) } }
                    td { (r.state) }
                    td { @match field(r, "ends_at").and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok()) {
                        Some(t) => { (page::time(t)) " (" (page::relative(t, now)) ")" }
                        None => { "—" }
                    } }
                } } } } }
            }
        }
        section { h2 { "Create a key" }
            form #create-key method="post" action="/ui/keys" {
                input type="hidden" name="csrf" value=(csrf);
                @if admin { p { label { "Tenant " input type="text" name="tenant" required pattern="[a-z][a-z0-9-]{2,39}"; } } }
                p { label { "Name " input type="text" name="name" maxlength="200"; } }
                p { label { "Owner email " input type="email" name="owner_email"; } }
                p { label { "Expires at (RFC 3339, optional) " input type="text" name="expires_at" placeholder="2030-01-01T00:00:00Z"; } }
                fieldset { legend { "Scopes" }
                    @for s in Scope::ALL { @if s <= mine {
                        label { input type="checkbox" name="scopes" value=(s.as_str()) checked[s == Scope::Reader]; " " (s.as_str()) } " "
                    } }
                }
                button type="submit" { "Create key" }
            }
        }
    };
    Ok(layout(Some(session), "API keys", "/ui/keys", body))
}

fn key_state(k: &KeyRecord, now: chrono::DateTime<chrono::Utc>) -> Markup {
    let text = if k.revoked_at.is_some() {
        "revoked"
    } else if k.suspended_at.is_some() {
        "suspended"
    } else if k.awaiting_reveal {
        "awaiting reveal"
    } else if !k.is_active(now) {
        "expired"
    } else {
        "active"
    };
    html! { span class={ "key-state k-" (text.replace(' ', "-")) } { (text) } }
}

/// The form's CSRF token first, then the operator scope; nothing is read before both.
async fn checked(state: &AppState, session: &UiSession, body: Body) -> Result<Form, Response> {
    let form = Form::read(body, state.api.max_body).await?;
    check_csrf(session, &form).map_err(IntoResponse::into_response)?;
    if let Some(refused) = require_operator(session) {
        return Err(refused);
    }
    Ok(form)
}

fn json_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers
}

/// The JSON an API handler answered.
async fn answer(response: Response) -> Result<Value, ApiError> {
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::internal(&e))
}

fn text(form: &Form, name: &str) -> Option<String> {
    form.get(name)
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

pub(super) async fn create(
    State(state): State<AppState>,
    session: UiSession,
    body: Body,
) -> Response {
    let form = match checked(&state, &session, body).await {
        Ok(form) => form,
        Err(response) => return response,
    };
    let mut request = Map::new();
    let scopes: Vec<&str> = form
        .pairs()
        .iter()
        .filter(|(k, _)| k == "scopes")
        .map(|(_, v)| v.as_str())
        .collect();
    request.insert("scopes".into(), json!(scopes));
    for name in ["tenant", "name", "owner_email", "expires_at"] {
        if let Some(value) = text(&form, name) {
            request.insert(name.into(), json!(value));
        }
    }
    let created = crate::routes::create_key(
        State(state.clone()),
        session.caller.clone(),
        json_headers(),
        Body::from(Value::Object(request).to_string()),
    )
    .await;
    let outcome = match created {
        Ok(response) => match answer(response).await {
            Ok(v) => Outcome::Secret {
                what: "Key created",
                prefix: v["prefix"].as_str().unwrap_or_default().to_owned(),
                secret: v["secret"].as_str().unwrap_or_default().to_owned(),
                run: None,
            },
            Err(e) => Outcome::Refused(e),
        },
        Err(e) => Outcome::Refused(e),
    };
    let mut response = render(&state, &session, outcome).await;
    if response.status() == StatusCode::OK {
        *response.status_mut() = StatusCode::CREATED;
    }
    response
}

pub(super) async fn action(
    State(state): State<AppState>,
    session: UiSession,
    Path((id, action)): Path<(String, String)>,
    body: Body,
) -> Response {
    let form = match checked(&state, &session, body).await {
        Ok(form) => form,
        Err(response) => return response,
    };
    let caller = session.caller.clone();
    match action.as_str() {
        "revoke" => match crate::routes::revoke_key(State(state.clone()), caller, Path(id)).await {
            Ok(_) => Redirect::to("/ui/keys").into_response(),
            Err(e) => render(&state, &session, Outcome::Refused(e)).await,
        },
        "rotate" => {
            let mut request = Map::new();
            for name in ["grace_period", "reason"] {
                if let Some(value) = text(&form, name) {
                    request.insert(name.into(), json!(value));
                }
            }
            if form.get("emergency") == Some("true") {
                request.insert("emergency".into(), json!(true));
            }
            let rotated = crate::routes::rotate_key(
                State(state.clone()),
                caller,
                Path(id),
                json_headers(),
                Body::from(Value::Object(request).to_string()),
            )
            .await;
            let outcome = match rotated {
                Ok(response) => match answer(response).await {
                    Ok(v) => Outcome::Secret {
                        what: "Key rotated",
                        prefix: v["prefix"].as_str().unwrap_or_default().to_owned(),
                        secret: v["secret"].as_str().unwrap_or_default().to_owned(),
                        run: v["run_id"].as_str().map(str::to_owned),
                    },
                    Err(e) => Outcome::Refused(e),
                },
                Err(e) => Outcome::Refused(e),
            };
            let mut response = render(&state, &session, outcome).await;
            if response.status() == StatusCode::OK {
                *response.status_mut() = StatusCode::CREATED;
            }
            response
        }
        _ => page::message(
            &session,
            StatusCode::NOT_FOUND,
            "Not found",
            &format!("no key action {action:?}"),
        ),
    }
}
