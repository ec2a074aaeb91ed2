//! `/v1/meetings`: meetings run by `meeting_invite` (`waymark_workflows::meetings`):
//! create one with its run, read it with every occurrence, each attendee's answer and
//! the next reminders, change or cancel it (the series or one occurrence), record a
//! calendar client's REPLY, and issue or revoke an attendee's feed token. The public
//! RSVP pages and feeds are in `crate::meeting_pages`.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use axum::Json;
use chrono::DateTime;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;
use waymark_engine::keys::Scope;
use waymark_workflows::meetings::ops::{self, MeetingError};
use waymark_workflows::meetings::records::{self, Meeting};

use super::{Auth, Route};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::{body, AppState};

pub fn routes() -> Vec<Route> {
    vec![
        Route {
            method: Method::POST,
            path: "/v1/meetings",
            summary: "Create a meeting and start its `meeting_invite` run: invitations \
                      (iCalendar REQUEST) to every attendee, RSVPs, reminders in each \
                      attendee's zone. `start`/`end` are local times in `timezone`; a time \
                      in a DST gap is refused (422), an ambiguous one is taken at its first \
                      occurrence and said so in `warnings`.",
            auth: Auth::Key(Scope::Operator),
            success: &[201],
            body: Some(json!({
                "type": "object",
                "required": ["title", "start", "end", "timezone", "organizer", "attendees"],
                "properties": {
                    "title": {"type": "string"},
                    "description": {"type": "string"},
                    "start": {"type": "string", "example": "2026-03-03T10:00:00"},
                    "end": {"type": "string"},
                    "timezone": {"type": "string", "example": "Europe/Berlin"},
                    "organizer": {"type": "object", "properties": {"email": {"type": "string"}, "name": {"type": "string"}}},
                    "attendees": {"type": "array", "items": {"type": "object", "properties": {
                        "email": {"type": "string"}, "name": {"type": "string"}, "timezone": {"type": "string"}}}},
                    "location": {"type": "string"},
                    "join_url": {"type": "string"},
                    "recurrence": {"type": "string", "example": "FREQ=WEEKLY;BYDAY=TU;COUNT=6"},
                    "reminders": {"type": "array", "items": {}, "example": ["24h", {"day_before_at": "09:00"}]}
                }
            })),
            handler: post(create),
        },
        Route {
            method: Method::GET,
            path: "/v1/meetings/{id}",
            summary: "A meeting: its occurrences (the next ones for a series without end), \
                      each attendee's answer, and each attendee's next reminder.",
            auth: Auth::Key(Scope::Reader),
            success: &[200],
            body: None,
            handler: get(show),
        },
        Route {
            method: Method::PATCH,
            path: "/v1/meetings/{id}",
            summary: "Change the series, or one occurrence (`occurrence`: its original \
                      local start): `start`, `end`, `title`, `location`, `description`, \
                      `attendees_added`, `attendees_removed`. A change attendees see bumps \
                      SEQUENCE and re-invites them; added attendees are invited, removed \
                      ones get a CANCEL, nobody else is mailed.",
            auth: Auth::Key(Scope::Operator),
            success: &[200],
            body: Some(json!({"type": "object"})),
            handler: patch(change),
        },
        Route {
            method: Method::POST,
            path: "/v1/meetings/{id}/cancel",
            summary: "Cancel the series, or one occurrence (`occurrence`: its original \
                      local start): attendees get an iCalendar CANCEL, its reminders are \
                      dropped.",
            auth: Auth::Key(Scope::Operator),
            success: &[200],
            body: Some(json!({"type": "object", "properties": {"occurrence": {"type": "string"}}})),
            handler: post(cancel),
        },
        Route {
            method: Method::POST,
            path: "/v1/meetings/{id}/replies",
            summary: "Record a calendar client's answer: an iCalendar `METHOD:REPLY` posted \
                      as `text/calendar`. 409 for a reply to an outdated SEQUENCE.",
            auth: Auth::Key(Scope::Operator),
            success: &[200],
            body: None,
            handler: post(reply),
        },
        Route {
            method: Method::POST,
            path: "/v1/meetings/feeds",
            summary: "Issue a subscription feed for an attendee (`email`): answers its \
                      secret URL `/calendars/{token}.ics` once, listing that attendee's \
                      meetings with their answers.",
            auth: Auth::Key(Scope::Operator),
            success: &[201],
            body: Some(
                json!({"type": "object", "required": ["email"], "properties": {"email": {"type": "string"}}}),
            ),
            handler: post(feed_create),
        },
        Route {
            method: Method::DELETE,
            path: "/v1/meetings/feeds/{id}",
            summary: "Revoke a feed: its URL answers 404 from now on.",
            auth: Auth::Key(Scope::Operator),
            success: &[204],
            body: None,
            handler: delete(feed_revoke),
        },
    ]
}

fn meeting_error(error: MeetingError) -> ApiError {
    match error {
        MeetingError::Invalid(m) => ApiError::invalid(m),
        MeetingError::NotFound(m) => ApiError::not_found(m),
        MeetingError::Conflict(m) => ApiError::conflict(m),
        MeetingError::Store(e) => e.into(),
        MeetingError::Engine(e) => e.into(),
    }
}

fn meeting_id(raw: &str) -> ApiResult<Uuid> {
    raw.parse()
        .map_err(|_| ApiError::not_found(format!("meeting {raw:?} not found")))
}

/// The meeting as the API shows it.
pub(crate) async fn view(state: &AppState, meeting: Meeting) -> ApiResult<Value> {
    let store = &state.engine.store;
    let now = state.engine.clock.now();
    let attendees = records::attendees(store, meeting.id).await?;
    // A bounded series is shown whole; one without end, its next 20 (from its start, it
    // would show long-past dates once it has run for a while).
    let (after, limit) = if meeting.spec.is_bounded() {
        (DateTime::<chrono::Utc>::MIN_UTC, 500)
    } else {
        (now, 20)
    };
    let occurrences = meeting.spec.occurrences(after, limit).unwrap_or_default();
    let current: Vec<_> = attendees.iter().filter(|a| !a.removed).collect();
    let answers = records::occurrence_answers(store, meeting.id).await?;
    let occurrences: Vec<Value> = occurrences
        .iter()
        .map(|o| {
            json!({
                "original_start": o.original,
                "start": o.local_start,
                "end": o.local_end,
                "start_utc": o.start,
                "end_utc": o.end,
                "cancelled": o.cancelled,
                "moved": o.moved,
                "answers": current
                    .iter()
                    .map(|a| json!({"email": a.email, "answer": records::answer_for(&answers, a, o.original)}))
                    .collect::<Vec<_>>(),
            })
        })
        .collect();
    let reminders = ops::next_reminders(&meeting, &attendees, &answers, now);
    Ok(json!({
        "id": meeting.id,
        "run_id": meeting.run_id,
        "uid": meeting.uid,
        "sequence": meeting.sequence,
        "status": meeting.status,
        "title": meeting.spec.title,
        "description": meeting.spec.description,
        "timezone": meeting.spec.timezone,
        "start": meeting.spec.start,
        "end": meeting.spec.end,
        "location": meeting.spec.location,
        "join_url": meeting.spec.join_url,
        "organizer": meeting.spec.organizer,
        "recurrence": meeting.spec.recurrence,
        "reminders": meeting.spec.reminders,
        "organizer_digest": meeting.spec.organizer_digest,
        "attendees": current,
        "occurrences": occurrences,
        "next_reminders": reminders,
        "created_at": meeting.created_at,
        "updated_at": meeting.updated_at,
    }))
}

fn tenant_of(caller: &Caller, raw: Option<String>) -> ApiResult<String> {
    let params = super::params(raw);
    super::acting_tenant(caller, super::param(&params, "tenant"))
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    request_body: Body,
) -> ApiResult<Response> {
    let tenant = tenant_of(&caller, query)?;
    let bytes = body::read(request_body, state.api.max_body).await?;
    let request: ops::CreateMeeting = body::json(&headers, &bytes, false)?;
    let created = ops::create(&state.engine, &tenant, &caller.actor(), request)
        .await
        .map_err(meeting_error)?;
    let mut out = view(&state, created.meeting).await?;
    out["warnings"] = json!(created.warnings);
    Ok((StatusCode::CREATED, Json(out)).into_response())
}

async fn load(state: &AppState, caller: &Caller, raw: &str) -> ApiResult<Meeting> {
    let id = meeting_id(raw)?;
    let meeting = records::get(&state.engine.store, None, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("meeting {id} not found")))?;
    if !caller.scope().allows(&meeting.tenant) {
        return Err(ApiError::not_found(format!("meeting {id} not found")));
    }
    Ok(meeting)
}

async fn show(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let meeting = load(&state, &caller, &id).await?;
    Ok(Json(view(&state, meeting).await?))
}

async fn change(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    request_body: Body,
) -> ApiResult<Json<Value>> {
    let meeting = load(&state, &caller, &id).await?;
    let bytes = body::read(request_body, state.api.max_body).await?;
    let request: ops::ChangeMeeting = body::json(&headers, &bytes, false)?;
    let (meeting, warnings) = ops::change(&state.engine, &meeting.tenant, meeting.id, request)
        .await
        .map_err(meeting_error)?;
    let mut out = view(&state, meeting).await?;
    out["warnings"] = json!(warnings);
    Ok(Json(out))
}

async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    request_body: Body,
) -> ApiResult<Json<Value>> {
    let meeting = load(&state, &caller, &id).await?;
    let bytes = body::read(request_body, state.api.max_body).await?;
    let request: ops::CancelMeeting = body::json(&headers, &bytes, true)?;
    let meeting = ops::cancel(&state.engine, &meeting.tenant, meeting.id, request)
        .await
        .map_err(meeting_error)?;
    Ok(Json(view(&state, meeting).await?))
}

async fn reply(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    request_body: Body,
) -> ApiResult<Json<Value>> {
    let meeting = load(&state, &caller, &id).await?;
    let is_calendar = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("text/calendar"));
    if !is_calendar {
        return Err(ApiError::bad_request(
            "expected Content-Type: text/calendar",
        ));
    }
    let bytes = body::read(request_body, state.api.max_body).await?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| ApiError::bad_request("the calendar is not UTF-8"))?;
    // Which occurrence the reply answers, if one (the answer is recorded for it only).
    let occurrence = waymark_workflows::meetings::ical::parse_reply(text)
        .ok()
        .and_then(|r| r.recurrence_id);
    let answered = ops::reply(&state.engine, &meeting.tenant, meeting.id, text)
        .await
        .map_err(meeting_error)?;
    let (recorded, attendee) = match answered {
        ops::Answered::Recorded { attendee, .. } => (true, attendee),
        ops::Answered::Unchanged { attendee, .. } => (false, attendee),
        ops::Answered::Refused(ops::Rsvp::Cancelled { .. }) => {
            return Err(ApiError::conflict("the meeting is cancelled"))
        }
        ops::Answered::Refused(_) => return Err(ApiError::invalid("ATTENDEE: not invited")),
    };
    Ok(Json(json!({
        "recorded": recorded,
        "attendee": attendee.email,
        "answer": attendee.partstat,
        "occurrence": occurrence,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedBody {
    email: String,
}

async fn feed_create(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    request_body: Body,
) -> ApiResult<Response> {
    let tenant = tenant_of(&caller, query)?;
    let bytes = body::read(request_body, state.api.max_body).await?;
    let request: FeedBody = body::json(&headers, &bytes, false)?;
    let email = waymark_services::mail::parse_mailbox("email", &request.email)
        .map_err(|e| ApiError::invalid(e.to_string()))?
        .email
        .to_string()
        .to_ascii_lowercase();
    let (id, token) = records::feed_create(
        &state.engine.store,
        &tenant,
        &email,
        state.engine.clock.now(),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "email": email, "token": token, "path": format!("/calendars/{token}.ics")})),
    )
        .into_response())
}

async fn feed_revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> ApiResult<StatusCode> {
    let tenant = tenant_of(&caller, query)?;
    let id: Uuid = id
        .parse()
        .map_err(|_| ApiError::not_found(format!("feed {id:?} not found")))?;
    if records::feed_revoke(&state.engine.store, &tenant, id, state.engine.clock.now()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("feed {id} not found")))
    }
}
