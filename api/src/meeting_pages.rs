//! What a meeting's attendees open without an API key: the RSVP page
//! (`/rsvp/{token}`) and their subscription feed (`/calendars/{token}.ics`). The token
//! in the URL is the permission (HMAC-signed for RSVP links, a revocable secret for
//! feeds), since mail clients and calendar apps send no headers.
//!
//! **A GET never answers for anyone**: mail scanners follow links. GET shows the meeting
//! with Accept / Tentative / Decline buttons, each a form that POSTs; only the POST
//! records. A link for an outdated SEQUENCE shows the meeting as it is now with fresh
//! buttons, a cancelled meeting says so, and a tampered token gets a plain error page.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use waymark_workflows::meetings::ical::{self, CalAttendee, Event, Method, PartStat, Scope};
use waymark_workflows::meetings::ops::{self, Answered, Rsvp};
use waymark_workflows::meetings::records::{self, Meeting};
use waymark_workflows::meetings::token::RsvpToken;

use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/rsvp/{token}", get(show).post(answer))
        .route("/calendars/{file}", get(feed))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta name=\"robots\" content=\"noindex\">\
         <title>{}</title></head><body><h1>{}</h1>{body}</body></html>",
        esc(title),
        esc(title)
    );
    let mut response = (status, Html(html)).into_response();
    // The URL holds a secret: keep it out of caches and referrers.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, "no-store".parse().unwrap());
    response
        .headers_mut()
        .insert(header::REFERRER_POLICY, "no-referrer".parse().unwrap());
    response
}

fn internal(error: impl std::fmt::Display) -> Response {
    tracing::error!(%error, "meeting page failed");
    page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        "<p>Please try again later.</p>",
    )
}

fn invalid() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "This link is not valid",
        "<p>The link is incomplete or was changed. Use the link in your most recent invitation.</p>",
    )
}

fn describe(meeting: &Meeting) -> String {
    let spec = &meeting.spec;
    let mut out = format!(
        "<p><strong>{}</strong></p><p>{} to {} ({})</p>",
        esc(&spec.title),
        spec.start.format("%a %e %b %Y %H:%M"),
        spec.end.format("%H:%M"),
        esc(&spec.timezone)
    );
    if let Some(rule) = &spec.recurrence {
        out.push_str(&format!("<p>Repeats: {}</p>", esc(rule)));
    }
    if let Some(place) = spec.location.as_deref().or(spec.join_url.as_deref()) {
        out.push_str(&format!("<p>Where: {}</p>", esc(place)));
    }
    out
}

/// The three buttons, each a form posting to a current token.
fn buttons(
    secret: &[u8],
    meeting: &Meeting,
    attendee_id: uuid::Uuid,
    current: PartStat,
    preselected: Option<PartStat>,
) -> String {
    let token = RsvpToken {
        meeting: meeting.id,
        attendee: attendee_id,
        sequence: meeting.sequence,
        answer: None,
    }
    .sign(secret);
    let mut out = format!(
        "<p>Your answer so far: {}</p>",
        current.ical().to_ascii_lowercase()
    );
    for (label, value) in [
        ("Accept", "accepted"),
        ("Tentative", "tentative"),
        ("Decline", "declined"),
    ] {
        let chosen = preselected.is_some_and(|p| p.ical().eq_ignore_ascii_case(value));
        out.push_str(&format!(
            "<form method=\"post\" action=\"/rsvp/{token}\"><input type=\"hidden\" name=\"answer\" value=\"{value}\">\
             <button type=\"submit\"{}>{label}</button></form>",
            if chosen { " autofocus" } else { "" }
        ));
    }
    out
}

async fn render(state: &AppState, rsvp: Rsvp, notice: &str) -> Response {
    let secret = match records::secret(&state.engine.store).await {
        Ok(secret) => secret,
        Err(e) => return internal(e),
    };
    match rsvp {
        Rsvp::Invalid => invalid(),
        Rsvp::Cancelled { meeting } => page(
            StatusCode::GONE,
            "This meeting is cancelled",
            &format!("{}<p>The organiser cancelled it; there is nothing to answer.</p>", describe(&meeting)),
        ),
        Rsvp::Stale { meeting, attendee, token_sequence } => page(
            StatusCode::OK,
            "This invitation has changed",
            &format!(
                "<p>Your link is for an earlier version (update {token_sequence}); the meeting is now at update {}. \
                 Here is the meeting as it is now:</p>{}{}",
                meeting.sequence,
                describe(&meeting),
                buttons(&secret, &meeting, attendee.id, attendee.partstat, None)
            ),
        ),
        Rsvp::Current { meeting, attendee, preselected } => page(
            StatusCode::OK,
            &format!("Invitation: {}", meeting.spec.title),
            &format!("{notice}{}{}", describe(&meeting), buttons(&secret, &meeting, attendee.id, attendee.partstat, preselected)),
        ),
    }
}

async fn show(State(state): State<AppState>, Path(token): Path<String>) -> Response {
    match ops::rsvp_open(&state.engine, &token).await {
        Ok(rsvp) => render(&state, rsvp, "").await,
        Err(e) => internal(e),
    }
}

async fn answer(
    State(state): State<AppState>,
    Path(token): Path<String>,
    form: axum::body::Bytes,
) -> Response {
    // The buttons' form: `answer=accepted` (application/x-www-form-urlencoded).
    let chosen = url::form_urlencoded::parse(&form)
        .find(|(k, _)| k == "answer")
        .and_then(|(_, v)| PartStat::parse(&v));
    let Some(answer) = chosen.filter(|p| *p != PartStat::NeedsAction) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Choose an answer",
            "<p>Answer accepted, tentative or declined.</p>",
        );
    };
    match ops::rsvp_answer(&state.engine, &token, answer).await {
        Ok(Answered::Recorded { meeting, attendee }) => {
            render(
                &state,
                Rsvp::Current {
                    meeting,
                    attendee,
                    preselected: None,
                },
                &format!(
                    "<p class=\"recorded\">Thank you: your answer ({}) is recorded.</p>",
                    answer.ical().to_ascii_lowercase()
                ),
            )
            .await
        }
        Ok(Answered::Unchanged { meeting, attendee }) => {
            render(
                &state,
                Rsvp::Current {
                    meeting,
                    attendee,
                    preselected: None,
                },
                "<p class=\"unchanged\">That was already your answer; nothing changed.</p>",
            )
            .await
        }
        Ok(Answered::Refused(rsvp)) => {
            let mut response = render(&state, rsvp, "").await;
            if response.status() == StatusCode::OK {
                // A stale link: shown, not recorded.
                *response.status_mut() = StatusCode::CONFLICT;
            }
            response
        }
        Err(ops::MeetingError::Invalid(m)) => page(
            StatusCode::BAD_REQUEST,
            "Choose an answer",
            &format!("<p>{}</p>", esc(&m)),
        ),
        Err(e) => internal(e),
    }
}

async fn feed(State(state): State<AppState>, Path(file): Path<String>) -> Response {
    let not_found = || (StatusCode::NOT_FOUND, "no such calendar\n").into_response();
    let Some(token) = file.strip_suffix(".ics") else {
        return not_found();
    };
    let store = &state.engine.store;
    let (tenant, email) = match records::feed_open(store, token).await {
        Ok(Some(found)) => found,
        Ok(None) => return not_found(),
        Err(e) => return internal(e),
    };
    let meetings = match records::meetings_of(store, &tenant, &email).await {
        Ok(m) => m,
        Err(e) => return internal(e),
    };
    let mut lists: Vec<Vec<CalAttendee>> = Vec::with_capacity(meetings.len());
    for (m, a) in &meetings {
        // The attendee's answers for single occurrences become overrides with their own
        // PARTSTAT, so a calendar shows the declined Tuesday as declined.
        let occurrences = match records::occurrence_answers(store, m.id).await {
            Ok(answers) => answers
                .into_iter()
                .filter(|(attendee, _, _)| *attendee == a.id)
                .map(|(_, original, answer)| (original, answer))
                .collect(),
            Err(e) => return internal(e),
        };
        lists.push(vec![CalAttendee {
            email: a.email.clone(),
            name: a.name.clone(),
            partstat: a.partstat,
            occurrences,
        }]);
    }
    let events: Vec<Event<'_>> = meetings
        .iter()
        .zip(&lists)
        .map(|((m, _), list)| Event {
            uid: &m.uid,
            sequence: m.sequence,
            spec: &m.spec,
            attendees: list,
            cancelled: m.status == records::MeetingStatus::Cancelled,
        })
        .collect();
    let text = ical::calendar_of(
        &events,
        Method::Publish,
        Scope::Series,
        state.engine.clock.now(),
    );
    (
        [
            (header::CONTENT_TYPE, "text/calendar; charset=UTF-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        text,
    )
        .into_response()
}
