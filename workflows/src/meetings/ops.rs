//! What the meeting routes do, apart from HTTP: create a meeting with its run, record an
//! answer (RSVP page or calendar REPLY), change or cancel the series or one occurrence.
//! Each writes the rows and the outbox in one transaction, then tells the run.

use chrono::NaiveDateTime;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;
use waymark_engine::{
    Engine, EngineError, SendSignal, StartRun, StoreError, TenantScope, Workflow,
};

use super::ical::{self, PartStat};
use super::records::{self, Attendee, Meeting, MeetingStatus};
use super::schedule::{self, MeetingSpec, Override, Person, Reminder};
use super::token::RsvpToken;
use super::MeetingInvite;

#[derive(Debug, thiserror::Error)]
pub enum MeetingError {
    /// Input the caller must fix; the message names the field.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

type Result<T> = std::result::Result<T, MeetingError>;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAttendee {
    pub email: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub timezone: Option<String>,
}

/// `POST /v1/meetings`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateMeeting {
    pub title: String,
    #[serde(default)]
    pub description: String,
    pub start: NaiveDateTime,
    pub end: NaiveDateTime,
    pub timezone: String,
    pub organizer: Person,
    pub attendees: Vec<NewAttendee>,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub join_url: Option<String>,
    #[serde(default)]
    pub recurrence: Option<String>,
    #[serde(default)]
    pub reminders: Vec<Reminder>,
    /// `{"daily_at": "18:00"}`: the organiser's answers once a day, at that local time
    /// of the meeting's zone.
    #[serde(default)]
    pub organizer_digest: Option<schedule::Digest>,
}

fn check_email(field: &str, email: &str) -> Result<String> {
    waymark_services::mail::parse_mailbox("to", email)
        .map(|m| m.email.to_string().to_ascii_lowercase())
        .map_err(|e| MeetingError::Invalid(format!("{field}: {e}")))
}

fn check_text(field: &str, text: &str, max: usize) -> Result<()> {
    if text.chars().count() > max {
        return Err(MeetingError::Invalid(format!(
            "{field}: at most {max} characters"
        )));
    }
    Ok(())
}

fn time_error(e: schedule::TimeError) -> MeetingError {
    MeetingError::Invalid(e.to_string())
}

fn new_attendees(list: &[NewAttendee], field: &str) -> Result<Vec<Attendee>> {
    let mut out: Vec<Attendee> = Vec::new();
    for (i, a) in list.iter().enumerate() {
        let email = check_email(&format!("{field}[{i}].email"), &a.email)?;
        if let Some(zone) = &a.timezone {
            schedule::zone(&format!("{field}[{i}].timezone"), zone).map_err(time_error)?;
        }
        if out.iter().any(|o| o.email == email) {
            return Err(MeetingError::Invalid(format!(
                "{field}[{i}].email: {email} is listed twice"
            )));
        }
        out.push(Attendee {
            id: Uuid::now_v7(),
            email,
            name: a.name.clone(),
            timezone: a.timezone.clone(),
            partstat: PartStat::NeedsAction,
            removed: false,
            answered_at: None,
        });
    }
    Ok(out)
}

/// A created meeting and what its times resolved to.
#[derive(Debug, Clone)]
pub struct Created {
    pub meeting: Meeting,
    pub attendees: Vec<Attendee>,
    pub warnings: Vec<String>,
}

/// Checks the request, then inserts the meeting, its attendees and their invitations
/// and starts its run, all in one transaction.
pub async fn create(
    engine: &Engine,
    tenant: &str,
    actor: &str,
    req: CreateMeeting,
) -> Result<Created> {
    check_text("title", &req.title, 500)?;
    if req.title.trim().is_empty() {
        return Err(MeetingError::Invalid("title: must not be empty".into()));
    }
    check_text("description", &req.description, 10_000)?;
    let organizer_email = check_email("organizer.email", &req.organizer.email)?;
    if req.attendees.is_empty() {
        return Err(MeetingError::Invalid("attendees: at least one".into()));
    }
    if req.attendees.len() > 500 {
        return Err(MeetingError::Invalid("attendees: at most 500".into()));
    }
    let attendees = new_attendees(&req.attendees, "attendees")?;
    for r in &req.reminders {
        if let Reminder::Offset(d) = r {
            waymark_engine::workflow::check_duration(*d)
                .map_err(|e| MeetingError::Invalid(format!("reminders: {e}")))?;
        }
    }
    let spec = MeetingSpec {
        title: req.title,
        description: req.description,
        timezone: req.timezone,
        start: req.start,
        end: req.end,
        location: req.location,
        join_url: req.join_url,
        organizer: Person {
            email: organizer_email,
            name: req.organizer.name,
        },
        recurrence: req
            .recurrence
            .map(|r| r.trim().trim_start_matches("RRULE:").to_owned()),
        reminders: req.reminders,
        cancelled: Vec::new(),
        overrides: Vec::new(),
        organizer_digest: req.organizer_digest,
    };
    let warnings = spec.validate().map_err(time_error)?;
    let now = engine.clock.now();
    let id = Uuid::now_v7();
    let mut meeting = Meeting {
        id,
        tenant: tenant.to_owned(),
        run_id: None,
        uid: format!("{id}@waymark"),
        sequence: 0,
        status: MeetingStatus::Scheduled,
        spec,
        created_at: now,
        updated_at: now,
    };
    let mut tx = engine.store.begin().await?;
    records::insert(&mut tx, &meeting).await?;
    for a in &attendees {
        records::insert_attendee(&mut tx, id, a).await?;
        records::enqueue(
            &mut tx,
            id,
            "request",
            Some(a.id),
            0,
            json!({"reason": "invited"}),
            now,
        )
        .await?;
    }
    let start = StartRun {
        tenant: tenant.to_owned(),
        workflow: MeetingInvite::NAME.into(),
        input: json!({ "meeting_id": id }),
        idempotency_key: Some(format!("meeting:{id}")),
        tags: vec![format!("meeting:{id}")],
        actor: actor.to_owned(),
    };
    let run = engine.start_in(&mut tx, start).await?.run;
    meeting.run_id = Some(run.id);
    records::update(&mut tx, &meeting).await?;
    tx.commit().await?;
    Ok(Created {
        meeting,
        attendees,
        warnings,
    })
}

pub use super::schedule::next_reminders;

/// Tells the meeting's run to look again. A failure is logged, not returned: the rows
/// are committed, and the run's next timer finds them.
async fn nudge(engine: &Engine, meeting: &Meeting, why: &str) {
    let Some(run_id) = meeting.run_id else { return };
    let signal = SendSignal {
        run_id,
        name: "changed".into(),
        payload: serde_json::Value::Null,
        idempotency_key: None,
        actor: format!("meeting:{}:{why}", meeting.id),
    };
    if let Err(error) = engine
        .signal(&TenantScope::Tenant(meeting.tenant.clone()), signal)
        .await
    {
        tracing::warn!(meeting = %meeting.id, %error, "could not signal the meeting's run");
    }
}

/// What an RSVP token opens.
#[derive(Debug, Clone)]
pub enum Rsvp {
    /// A valid, current link: the meeting and the attendee it answers for.
    Current {
        meeting: Meeting,
        attendee: Attendee,
        preselected: Option<PartStat>,
    },
    /// A link for an older sequence: show what the meeting is now, with fresh links.
    Stale {
        meeting: Meeting,
        attendee: Attendee,
        token_sequence: i64,
    },
    Cancelled {
        meeting: Meeting,
    },
    /// Tampered, unknown, or for an attendee who was removed.
    Invalid,
}

/// Reads what a token opens, without changing anything (the page's GET).
pub async fn rsvp_open(engine: &Engine, token: &str) -> Result<Rsvp> {
    let secret = records::secret(&engine.store).await?;
    let Some(claims) = RsvpToken::verify(token, &secret) else {
        return Ok(Rsvp::Invalid);
    };
    let Some(meeting) = records::get(&engine.store, None, claims.meeting).await? else {
        return Ok(Rsvp::Invalid);
    };
    let Some(attendee) = records::attendees(&engine.store, meeting.id)
        .await?
        .into_iter()
        .find(|a| a.id == claims.attendee && !a.removed)
    else {
        return Ok(Rsvp::Invalid);
    };
    Ok(classify(meeting, attendee, &claims))
}

fn classify(meeting: Meeting, attendee: Attendee, claims: &RsvpToken) -> Rsvp {
    if meeting.status == MeetingStatus::Cancelled {
        Rsvp::Cancelled { meeting }
    } else if claims.sequence < meeting.sequence {
        Rsvp::Stale {
            meeting,
            attendee,
            token_sequence: claims.sequence,
        }
    } else {
        Rsvp::Current {
            meeting,
            attendee,
            preselected: claims.answer,
        }
    }
}

/// What a POST to an RSVP link did.
#[derive(Debug, Clone)]
pub enum Answered {
    Recorded {
        meeting: Meeting,
        attendee: Attendee,
    },
    /// The same answer again: nothing recorded.
    Unchanged {
        meeting: Meeting,
        attendee: Attendee,
    },
    /// Not recorded; what the link opens instead.
    Refused(Rsvp),
}

/// Records `answer` for the token's attendee, if the token is current.
pub async fn rsvp_answer(engine: &Engine, token: &str, answer: PartStat) -> Result<Answered> {
    let secret = records::secret(&engine.store).await?;
    let Some(claims) = RsvpToken::verify(token, &secret) else {
        return Ok(Answered::Refused(Rsvp::Invalid));
    };
    record(
        engine,
        claims.meeting,
        claims.attendee,
        None,
        Some(claims),
        (answer, None),
        "the RSVP page",
    )
    .await
}

async fn record(
    engine: &Engine,
    meeting_id: Uuid,
    attendee_id: Uuid,
    tenant: Option<&str>,
    claims: Option<RsvpToken>,
    (answer, occurrence): (PartStat, Option<NaiveDateTime>),
    via: &str,
) -> Result<Answered> {
    let now = engine.clock.now();
    let mut tx = engine.store.begin().await?;
    let Some(meeting) = records::lock(&mut tx, meeting_id).await? else {
        return Ok(Answered::Refused(Rsvp::Invalid));
    };
    if tenant.is_some_and(|t| t != meeting.tenant) {
        return Ok(Answered::Refused(Rsvp::Invalid));
    }
    let Some(attendee) = records::attendees_in(&mut tx, meeting_id)
        .await?
        .into_iter()
        .find(|a| a.id == attendee_id && !a.removed)
    else {
        return Ok(Answered::Refused(Rsvp::Invalid));
    };
    let claims = claims.unwrap_or(RsvpToken {
        meeting: meeting_id,
        attendee: attendee_id,
        sequence: meeting.sequence,
        answer: None,
    });
    match classify(meeting.clone(), attendee.clone(), &claims) {
        Rsvp::Current { .. } => {}
        other => return Ok(Answered::Refused(other)),
    }
    if answer == PartStat::NeedsAction {
        return Err(MeetingError::Invalid(
            "answer: accepted, tentative or declined".into(),
        ));
    }
    let changed = match occurrence {
        // A calendar's answer for one occurrence (RECURRENCE-ID) leaves the series
        // answer as it is.
        Some(original) => {
            check_occurrence(&meeting, original)?;
            records::answer_occurrence(&mut tx, attendee_id, original, answer, now).await?
        }
        None => records::answer(&mut tx, attendee_id, answer, now).await?,
    };
    if !changed {
        let attendee = Attendee {
            partstat: answer,
            ..attendee
        };
        return Ok(Answered::Unchanged { meeting, attendee });
    }
    let who = match &attendee.name {
        Some(name) => format!("{name} <{}>", attendee.email),
        None => attendee.email.clone(),
    };
    records::enqueue(
        &mut tx,
        meeting_id,
        "answer",
        None,
        meeting.sequence,
        json!({
            "attendee": who,
            "answer": answer.ical().to_ascii_lowercase(),
            "via": via,
            "occurrence": occurrence,
        }),
        now,
    )
    .await?;
    tx.commit().await?;
    nudge(engine, &meeting, "answer").await;
    let attendee = Attendee {
        partstat: answer,
        answered_at: Some(now),
        ..attendee
    };
    Ok(Answered::Recorded { meeting, attendee })
}

/// Records a calendar client's `METHOD:REPLY` for meeting `id` of `tenant`.
pub async fn reply(engine: &Engine, tenant: &str, id: Uuid, text: &str) -> Result<Answered> {
    let parsed = ical::parse_reply(text).map_err(|e| MeetingError::Invalid(e.to_string()))?;
    let meeting = records::get(&engine.store, Some(tenant), id)
        .await?
        .ok_or_else(|| MeetingError::NotFound(format!("meeting {id} not found")))?;
    if parsed.uid != meeting.uid {
        return Err(MeetingError::Invalid(format!(
            "UID: {} is not this meeting's ({})",
            parsed.uid, meeting.uid
        )));
    }
    let email = parsed.attendee.to_ascii_lowercase();
    let attendee = records::attendees(&engine.store, id)
        .await?
        .into_iter()
        .find(|a| a.email == email && !a.removed)
        .ok_or_else(|| MeetingError::Invalid(format!("ATTENDEE: {email} is not invited")))?;
    if parsed.sequence < meeting.sequence {
        return Err(MeetingError::Conflict(format!(
            "the reply answers SEQUENCE {}, but the meeting is at SEQUENCE {}: the attendee \
             answered an outdated invitation",
            parsed.sequence, meeting.sequence
        )));
    }
    let claims = RsvpToken {
        meeting: id,
        attendee: attendee.id,
        sequence: parsed.sequence,
        answer: None,
    };
    record(
        engine,
        id,
        attendee.id,
        Some(tenant),
        Some(claims),
        (parsed.partstat, parsed.recurrence_id),
        "a calendar reply",
    )
    .await
}

/// `POST /v1/meetings/{id}/cancel`: the series, or one occurrence by its original start.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelMeeting {
    #[serde(default)]
    pub occurrence: Option<NaiveDateTime>,
}

/// `PATCH /v1/meetings/{id}`: for the series, or for one occurrence (by original start).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeMeeting {
    #[serde(default)]
    pub occurrence: Option<NaiveDateTime>,
    #[serde(default)]
    pub start: Option<NaiveDateTime>,
    #[serde(default)]
    pub end: Option<NaiveDateTime>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub location: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default, skip_serializing)]
    pub attendees_added: Vec<NewAttendee>,
    #[serde(default)]
    pub attendees_removed: Vec<String>,
}

async fn locked(
    engine: &Engine,
    tenant: &str,
    id: Uuid,
) -> Result<(waymark_engine::store::Tx, Meeting)> {
    let mut tx = engine.store.begin().await?;
    let meeting = records::lock(&mut tx, id)
        .await?
        .filter(|m| m.tenant == tenant)
        .ok_or_else(|| MeetingError::NotFound(format!("meeting {id} not found")))?;
    if meeting.status != MeetingStatus::Scheduled {
        return Err(MeetingError::Conflict(format!(
            "meeting {id} is {}",
            meeting.status.as_str()
        )));
    }
    Ok((tx, meeting))
}

fn check_occurrence(meeting: &Meeting, original: NaiveDateTime) -> Result<()> {
    let known = meeting.spec.recurrence.is_some()
        && meeting.spec.has_occurrence(original).map_err(time_error)?;
    if !known {
        return Err(MeetingError::Invalid(format!(
            "occurrence: {original} is not an occurrence of this series (give its original local start)"
        )));
    }
    if meeting.spec.cancelled.contains(&original) {
        return Err(MeetingError::Conflict(format!(
            "occurrence {original} is already cancelled"
        )));
    }
    Ok(())
}

pub async fn cancel(
    engine: &Engine,
    tenant: &str,
    id: Uuid,
    req: CancelMeeting,
) -> Result<Meeting> {
    let now = engine.clock.now();
    let (mut tx, mut meeting) = locked(engine, tenant, id).await?;
    let detail = match req.occurrence {
        Some(original) => {
            check_occurrence(&meeting, original)?;
            meeting.spec.cancelled.push(original);
            json!({"occurrence": original})
        }
        None => {
            meeting.status = MeetingStatus::Cancelled;
            json!({"reason": "cancelled"})
        }
    };
    meeting.sequence += 1;
    meeting.updated_at = now;
    records::update(&mut tx, &meeting).await?;
    for a in records::attendees_in(&mut tx, id)
        .await?
        .iter()
        .filter(|a| !a.removed)
    {
        records::enqueue(
            &mut tx,
            id,
            "cancel",
            Some(a.id),
            meeting.sequence,
            detail.clone(),
            now,
        )
        .await?;
    }
    tx.commit().await?;
    nudge(engine, &meeting, "cancel").await;
    Ok(meeting)
}

/// Applies a change. Time, title, location or description changes bump SEQUENCE and
/// re-invite every current attendee; attendees added get an invitation, removed ones a
/// CANCEL, and nobody else hears of it.
pub async fn change(
    engine: &Engine,
    tenant: &str,
    id: Uuid,
    req: ChangeMeeting,
) -> Result<(Meeting, Vec<String>)> {
    let now = engine.clock.now();
    let (mut tx, mut meeting) = locked(engine, tenant, id).await?;
    let mut changes: Vec<String> = Vec::new();
    if let Some(title) = &req.title {
        check_text("title", title, 500)?;
    }
    match req.occurrence {
        Some(original) => {
            check_occurrence(&meeting, original)?;
            let spec = &mut meeting.spec;
            let current = spec
                .overrides
                .iter()
                .find(|o| o.original == original)
                .cloned();
            let length = spec.end - spec.start;
            let mut over = current.clone().unwrap_or(Override {
                original,
                start: original,
                end: original + length,
                title: None,
                location: None,
            });
            if let Some(start) = req.start {
                over.end = req.end.unwrap_or(start + (over.end - over.start));
                over.start = start;
                changes.push(format!("the occurrence of {original} moves to {start}"));
            } else if let Some(end) = req.end {
                over.end = end;
                changes.push(format!("the occurrence of {original} now ends at {end}"));
            }
            if let Some(title) = &req.title {
                over.title = Some(title.clone());
                changes.push(format!(
                    "the occurrence of {original} is now titled {title:?}"
                ));
            }
            if let Some(location) = &req.location {
                over.location = Some(location.clone());
                changes.push(format!("the occurrence of {original} is now at {location}"));
            }
            let tz = spec.tz().map_err(time_error)?;
            // A moved occurrence is checked like a new meeting: no start or end in a gap.
            schedule::resolve("start", tz, over.start).map_err(time_error)?;
            schedule::resolve("end", tz, over.end).map_err(time_error)?;
            if over.end <= over.start {
                return Err(MeetingError::Invalid("end: must be after start".into()));
            }
            spec.overrides.retain(|o| o.original != original);
            spec.overrides.push(over);
        }
        None => {
            let spec = &mut meeting.spec;
            if let Some(start) = req.start {
                let length = spec.end - spec.start;
                // The series' occurrences move with its start: cancelled ones (EXDATE),
                // overrides (RECURRENCE-ID) and per-occurrence answers keep naming the
                // same occurrences by their new original starts.
                let shift = start - spec.start;
                for cancelled in &mut spec.cancelled {
                    *cancelled += shift;
                }
                for over in &mut spec.overrides {
                    over.original += shift;
                }
                records::shift_occurrence_answers(&mut tx, id, shift).await?;
                // A weekly rule names its weekdays: they move with the start, or a
                // series moved from Tuesday to Wednesday would still fall on Tuesdays.
                let days = (start.date() - spec.start.date()).num_days();
                if let Some(rule) = &spec.recurrence {
                    spec.recurrence = Some(schedule::shift_byday(rule, days));
                }
                spec.end = req.end.unwrap_or(start + length);
                spec.start = start;
                changes.push(format!("now starts {start}"));
            } else if let Some(end) = req.end {
                spec.end = end;
                changes.push(format!("now ends {end}"));
            }
            if let Some(title) = &req.title {
                spec.title = title.clone();
                changes.push(format!("now titled {title:?}"));
            }
            if let Some(location) = &req.location {
                spec.location = Some(location.clone());
                changes.push(format!("now at {location}"));
            }
            if let Some(description) = &req.description {
                spec.description = description.clone();
                changes.push("new description".into());
            }
        }
    }
    let warnings = meeting.spec.validate().map_err(time_error)?;
    let everyone = records::attendees_in(&mut tx, id).await?;
    let mut removed = Vec::new();
    for (i, email) in req.attendees_removed.iter().enumerate() {
        let email = check_email(&format!("attendees_removed[{i}]"), email)?;
        let a = everyone
            .iter()
            .find(|a| a.email == email && !a.removed)
            .ok_or_else(|| {
                MeetingError::Invalid(format!("attendees_removed[{i}]: {email} is not invited"))
            })?;
        removed.push(a.clone());
    }
    let added = new_attendees(&req.attendees_added, "attendees_added")?;
    if changes.is_empty() && added.is_empty() && removed.is_empty() {
        return Err(MeetingError::Invalid("nothing to change".into()));
    }
    if !changes.is_empty() {
        meeting.sequence += 1;
    }
    meeting.updated_at = now;
    records::update(&mut tx, &meeting).await?;
    let summary = changes.join("; ");
    for a in &removed {
        records::set_removed(&mut tx, a.id, true).await?;
        records::enqueue(
            &mut tx,
            id,
            "cancel",
            Some(a.id),
            meeting.sequence,
            json!({"reason": "removed"}),
            now,
        )
        .await?;
    }
    if !changes.is_empty() {
        for a in everyone
            .iter()
            .filter(|a| !a.removed && !removed.iter().any(|r| r.id == a.id))
        {
            records::enqueue(
                &mut tx,
                id,
                "request",
                Some(a.id),
                meeting.sequence,
                json!({"reason": "updated", "changes": summary}),
                now,
            )
            .await?;
        }
    }
    for a in &added {
        match everyone.iter().find(|e| e.email == a.email) {
            Some(before) if !before.removed => {
                return Err(MeetingError::Invalid(format!(
                    "attendees_added: {} is already invited",
                    a.email
                )));
            }
            Some(before) => {
                records::set_removed(&mut tx, before.id, false).await?;
                records::enqueue(
                    &mut tx,
                    id,
                    "request",
                    Some(before.id),
                    meeting.sequence,
                    json!({"reason": "invited"}),
                    now,
                )
                .await?;
            }
            None => {
                records::insert_attendee(&mut tx, id, a).await?;
                records::enqueue(
                    &mut tx,
                    id,
                    "request",
                    Some(a.id),
                    meeting.sequence,
                    json!({"reason": "invited"}),
                    now,
                )
                .await?;
            }
        }
    }
    tx.commit().await?;
    nudge(engine, &meeting, "change").await;
    Ok((meeting, warnings))
}
