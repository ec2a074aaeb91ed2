//! Dispute dead letters: processor events that named no known dispute (or a closed
//! one), not yet replayed, and their replay. The list and the replay are
//! `waymark_workflows::disputes`' own `record::dead_letters` and `ingress::replay`, the
//! functions behind `/v1/webhooks/dead-letters*`, with the same scopes: an operator
//! sees and replays its own tenant's, an admin every tenant's.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::html;
use uuid::Uuid;
use waymark_engine::keys::Scope;
use waymark_engine::TenantScope;
use waymark_workflows::disputes::ingress::{self, IngressError};
use waymark_workflows::disputes::record;

use super::page::{self, layout};
use super::session::{check_csrf, UiSession};
use super::Form;
use crate::error::ApiError;
use crate::AppState;

const PAGE: i64 = 200;

/// What the last replay did, shown above the list.
enum Notice {
    None,
    Replayed(Uuid, String),
    Refused(ApiError),
}

/// The same answers the API gives for a replay's errors.
fn replay_error(error: IngressError) -> ApiError {
    match error {
        IngressError::Unauthorized(_) => ApiError::unauthorized("bad or stale signature"),
        IngressError::Invalid(why) => ApiError::bad_request(format!("not a valid event: {why}")),
        IngressError::Conflict(why) => ApiError::conflict(why),
        IngressError::Store(e) => e.into(),
        IngressError::Engine(e) => e.into(),
    }
}

fn require_operator(session: &UiSession) -> Option<Response> {
    (session.caller.key.top_scope() < Scope::Operator)
        .then(|| page::forbidden("dead letters need the operator scope; this key is a reader"))
}

pub(super) async fn list(State(state): State<AppState>, session: UiSession) -> Response {
    if let Some(refused) = require_operator(&session) {
        return refused;
    }
    render(&state, &session, Notice::None).await
}

async fn render(state: &AppState, session: &UiSession, notice: Notice) -> Response {
    let only = match session.caller.scope() {
        TenantScope::All => None,
        TenantScope::Tenant(own) => Some(own),
    };
    let letters = match record::dead_letters(&state.engine.store, only.as_deref(), None, PAGE).await
    {
        Ok(l) => l,
        Err(e) => {
            let e = ApiError::from(e);
            return page::message(session, e.status, "Something went wrong", &e.detail);
        }
    };
    let admin = session.caller.is_admin();
    let status = match &notice {
        Notice::Refused(e) => e.status,
        _ => StatusCode::OK,
    };
    let body = html! {
        h1 { "Dispute dead letters" }
        p { "Events from the payment processor that named no known dispute, or a closed one. Replay one once its dispute exists." }
        @match &notice {
            Notice::Replayed(id, outcome) => { p #replay-result role="status" { "Dead letter " code { (id) } " replayed: " strong { (outcome) } "." } }
            Notice::Refused(e) => { p.error #replay-result role="alert" { (e.detail) } }
            Notice::None => {}
        }
        @if letters.is_empty() { p #dead-letters { "None." } } @else {
            div.scroll tabindex="0" { table #dead-letters { thead { tr {
                @if admin { th { "Tenant" } } th { "Event" } th { "Type" } th { "Dispute" } th { "Why" } th { "Received" } th { "Actions" }
            } }
            tbody { @for l in &letters { tr data-letter=(l.id) {
                @if admin { td { (l.tenant) } }
                td { code { (l.event_id) } } td { (l.event_type) } td { code { (l.dispute_id) } } td { (l.why) }
                td { (page::time(l.received_at)) }
                td { form method="post" action={ "/ui/dead-letters/" (l.id) "/replay" } data-confirm={ "Replay event " (l.event_id) "?" } {
                    input type="hidden" name="csrf" value=(session.csrf);
                    button type="submit" aria-label={ "Replay event " (l.event_id) } { "Replay" }
                } }
            } } } } }
            @if letters.len() as i64 == PAGE { p { "The oldest " (PAGE) " are shown; replay them to see more." } }
        }
    };
    let mut response = layout(Some(session), "Dead letters", "/ui/dead-letters", body);
    *response.status_mut() = status;
    response
}

pub(super) async fn replay(
    State(state): State<AppState>,
    session: UiSession,
    Path(id): Path<String>,
    body: Body,
) -> Response {
    let form = match Form::read(body, state.api.max_body).await {
        Ok(form) => form,
        Err(response) => return response,
    };
    if let Err(refused) = check_csrf(&session, &form) {
        return refused.into_response();
    }
    if let Some(refused) = require_operator(&session) {
        return refused;
    }
    let not_found = || ApiError::not_found(format!("dead letter {id:?} not found"));
    let Ok(letter) = id.parse::<Uuid>() else {
        return render(&state, &session, Notice::Refused(not_found())).await;
    };
    let scope = session.caller.scope();
    let replayed = ingress::replay(
        &state.engine,
        letter,
        |tenant| scope.allows(tenant),
        &session.caller.actor(),
    )
    .await;
    let notice = match replayed {
        Ok(Some(outcome)) => {
            let text = serde_json::to_value(&outcome)
                .ok()
                .and_then(|v| v["outcome"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "done".into());
            Notice::Replayed(letter, text)
        }
        Ok(None) => Notice::Refused(not_found()),
        Err(e) => Notice::Refused(replay_error(e)),
    };
    render(&state, &session, notice).await
}
