//! `meeting_invite`: a meeting as a small long-running process. Invitations go out as
//! iCalendar REQUESTs, answers come back through RSVP pages or calendar replies,
//! reminders fire per occurrence and attendee in the attendee's zone, and changes and
//! cancellations made while all that is in flight reach exactly those concerned.
//!
//! ```text
//! tick ─(changed signal | next reminder or the series' end, a durable timer)─▶ tick
//!   └─(cancelled, or the last occurrence ended)─▶ finish ─▶ (completed: attendance summary)
//! ```
//!
//! The meeting's rows are the truth ([`records`]); routes change them and queue what
//! must be mailed in an outbox in the same transaction, then signal `changed`. Each
//! `tick` sends the outbox, sends the reminders that fell due since the previous tick,
//! and waits for the next due instant or the next change. So the run's state is one
//! instant (the previous tick), whatever the number of occurrences, attendees or
//! changes; reminders are recomputed from the rows at every tick, which is how a move
//! re-targets them and a cancellation or a decline drops them.
//!
//! # Layout
//! - [`schedule`]: the meeting's description, local times, reminder instants;
//! - [`series`]: the occurrences of a series, expanded over the window asked about only;
//! - [`ical`]: the VCALENDAR written for REQUEST and CANCEL, and REPLY parsing;
//! - [`token`]: RSVP link tokens; [`records`]: the rows; [`ops`]: what routes call;
//! - `mail`: the messages the run sends.

pub mod ical;
mod mail;
pub mod ops;
pub mod records;
pub mod schedule;
pub mod series;
pub mod token;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use waymark_engine::store::{Migration, Schema};
use waymark_engine::{
    Access, Definition, ResultExt, StateDef, StepContext, StepError, Store, Transition, Wait,
    Workflow, WorkflowSignal, WorkflowState,
};
use waymark_services::Mailer;

use ical::PartStat;
use records::MeetingStatus;

/// The tables of [`SCHEMA`] that hold a tenant's rows (a `tenant` column), dependents
/// first; attendees and the outbox go with their meeting (`ON DELETE CASCADE`).
pub const TENANT_TABLES: &[&str] = &["meeting_feeds", "meetings"];

pub const SCHEMA: Schema = Schema {
    name: "meetings",
    postgres: &[
        Migration::new(
            1,
            "meetings",
            include_str!("migrations/postgres/0001_meetings.sql"),
        ),
        Migration::new(
            2,
            "occurrence answers",
            include_str!("migrations/postgres/0002_occurrence_answers.sql"),
        ),
    ],
    sqlite: &[
        Migration::new(
            1,
            "meetings",
            include_str!("migrations/sqlite/0001_meetings.sql"),
        ),
        Migration::new(
            2,
            "occurrence answers",
            include_str!("migrations/sqlite/0002_occurrence_answers.sql"),
        ),
    ],
};

/// How many upcoming occurrences a tick looks at first; it looks further (doubling)
/// while the occurrences found still start within the longest reminder's lead, so a
/// reminder is found in time however many occurrences lie before its meeting.
pub const WINDOW: usize = 8;

/// What the workflow needs besides its input.
#[derive(Debug, Clone)]
pub struct MeetingInvite {
    pub store: Store,
    pub mailer: Mailer,
    pub settings: MeetingSettings,
}

#[derive(Debug, Clone)]
pub struct MeetingSettings {
    /// Where attendees reach Waymark (`WAYMARK_PUBLIC_URL`): the base of RSVP links.
    pub public_url: String,
    /// After this many occurrences have ended in one run, the run continues as new,
    /// so a series without end keeps a bounded history per run.
    pub continue_after_occurrences: u32,
    /// After this many ticks in one run (answers and changes wake it too), the run
    /// continues as new: the other bound on its history.
    pub continue_after_ticks: u32,
}

impl Default for MeetingSettings {
    fn default() -> Self {
        Self {
            public_url: "http://127.0.0.1:8080".into(),
            continue_after_occurrences: 20,
            continue_after_ticks: 200,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeetingInput {
    pub meeting_id: Uuid,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum MeetingState {
    /// Everything due up to `since` has been done.
    Tick {
        since: DateTime<Utc>,
        /// Occurrences that ended during this run, and ticks it made: at the
        /// settings' bounds the run continues as new with both at zero.
        #[serde(default)]
        ended: u32,
        #[serde(default)]
        ticks: u32,
    },
    Finish,
}

impl WorkflowState for MeetingState {
    fn name(&self) -> &'static str {
        match self {
            MeetingState::Tick { .. } => "tick",
            MeetingState::Finish => "finish",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "signal", content = "payload", rename_all = "snake_case")]
pub enum MeetingSignal {
    /// The meeting's rows changed (an answer, an update, a cancellation): look again.
    Changed,
}

impl WorkflowSignal for MeetingSignal {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttendanceSummary {
    pub meeting_id: Uuid,
    /// `completed` or `cancelled`.
    pub outcome: String,
    /// Occurrences that took place (cancelled ones not counted).
    pub occurrences: usize,
    pub accepted: usize,
    pub tentative: usize,
    pub declined: usize,
    pub no_answer: usize,
    pub attendees: Vec<AttendeeAnswer>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttendeeAnswer {
    pub email: String,
    pub answer: PartStat,
}

impl Workflow for MeetingInvite {
    const NAME: &'static str = "meeting_invite";
    type Input = MeetingInput;
    type State = MeetingState;
    type Output = AttendanceSummary;
    type Signal = MeetingSignal;

    fn definition() -> Definition {
        Definition::new([
            StateDef::new("tick")
                .on_signal("changed", "tick")
                .timer("tick")
                .next("finish")
                .continues_as_new(),
            StateDef::new("finish").completes(),
        ])
        .signal("changed")
        // Only `POST /v1/meetings` starts it, with the meeting's rows in the same
        // transaction.
        .access(Access::Internal)
    }

    fn initial_state(_: &MeetingInput) -> MeetingState {
        MeetingState::Tick {
            since: DateTime::<Utc>::MIN_UTC,
            ended: 0,
            ticks: 0,
        }
    }

    async fn step(
        &self,
        ctx: &StepContext,
        input: &MeetingInput,
        state: MeetingState,
    ) -> Result<Transition<MeetingState, AttendanceSummary>, StepError> {
        match state {
            MeetingState::Tick {
                since,
                ended,
                ticks,
            } => {
                self.tick(ctx, input.meeting_id, since, (ended, ticks))
                    .await
            }
            MeetingState::Finish => self.finish(ctx, input.meeting_id).await,
        }
    }
}

impl MeetingInvite {
    async fn tick(
        &self,
        ctx: &StepContext,
        meeting_id: Uuid,
        since: DateTime<Utc>,
        (ended, ticks): (u32, u32),
    ) -> Result<Transition<MeetingState, AttendanceSummary>, StepError> {
        let now = ctx.clock.now();
        let meeting = self.meeting(ctx, meeting_id).await?;
        if meeting.run_id != Some(ctx.run_id) {
            // This run continued an earlier one: routes signal it directly from now on
            // (signals sent to the earlier run meanwhile follow it here).
            records::set_run(&self.store, meeting_id, ctx.run_id)
                .await
                .retryable()?;
        }
        let attendees = records::attendees(&self.store, meeting_id)
            .await
            .retryable()?;
        let answers = records::occurrence_answers(&self.store, meeting_id)
            .await
            .retryable()?;
        let secret = records::secret(&self.store).await.retryable()?;
        let mail = mail::Composer {
            meeting: &meeting,
            attendees: &attendees,
            secret: &secret,
            public_url: &self.settings.public_url,
            now,
        };
        let meeting_zone = meeting
            .spec
            .tz()
            .map_err(|e| StepError::fatal(e.to_string()))?;
        let last_end = meeting
            .spec
            .last_end()
            .map_err(|e| StepError::fatal(e.to_string()))?;
        // A meeting that is over (or cancelled) sends what a digest still holds now.
        let over = meeting.status != MeetingStatus::Scheduled || last_end.is_some_and(|e| e <= now);
        let digest = meeting.spec.organizer_digest.filter(|_| !over);
        let unsent = records::unsent(&self.store, meeting_id).await.retryable()?;
        let mut held: Vec<&records::Outgoing> = Vec::new();
        for outgoing in &unsent {
            if outgoing.kind == "answer" && meeting.spec.organizer_digest.is_some() {
                // The organiser asked for a digest: answers wait for it.
                held.push(outgoing);
                continue;
            }
            if let Some(email) = mail.outgoing(outgoing) {
                // Keyed by the outbox row: one message per row whatever the retries.
                self.mailer
                    .send(
                        &format!("meeting:{meeting_id}:outbox:{}", outgoing.id),
                        email,
                    )
                    .await?;
            }
            records::mark_sent(&self.store, outgoing.id, now)
                .await
                .retryable()?;
        }
        // The digest is due at the first digest instant after its oldest answer.
        let mut digest_next = None;
        if let Some(oldest) = held.iter().map(|o| o.created_at).min() {
            let due = digest.map(|d| d.next_after(oldest, meeting_zone));
            match due {
                Some(due) if due > now => digest_next = Some(due),
                _ => {
                    let day = now.with_timezone(&meeting_zone).date_naive();
                    // Keyed by its newest row: a retried tick sends it once, and a
                    // later digest (newer answers) is a new message.
                    let newest = held.iter().map(|o| o.id).max().unwrap_or_default();
                    self.mailer
                        .send(
                            &format!("meeting:{meeting_id}:digest:{newest}"),
                            mail.digest(&held, day),
                        )
                        .await?;
                    for outgoing in &held {
                        records::mark_sent(&self.store, outgoing.id, now)
                            .await
                            .retryable()?;
                    }
                }
            }
        }
        if meeting.status != MeetingStatus::Scheduled {
            return Ok(Transition::next(MeetingState::Finish));
        }
        let spec = &meeting.spec;
        let fatal = |e: schedule::TimeError| StepError::fatal(e.to_string());
        let meeting_zone = spec.tz().map_err(fatal)?;
        let lead = schedule::longest_lead(&spec.reminders);
        let after = since.max(now - chrono::Duration::days(2));
        let horizon = now
            .checked_add_signed(lead)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        // Every occurrence whose reminders may be due by the horizon; the first one
        // beyond it says when to look again. Only that window is expanded, so a tick
        // costs the same in a series' first week and in its twentieth year.
        let window = spec.window(after, horizon).map_err(fatal)?;
        let upcoming = window.occurrences;
        let mut next: Option<DateTime<Utc>> = digest_next;
        let mut ended_now = 0;
        for occurrence in upcoming.iter().filter(|o| !o.cancelled) {
            if occurrence.end > since && occurrence.end <= now {
                ended_now += 1;
            }
            // A decline drops the reminders of what it declines: the series, or one
            // occurrence (a calendar's REPLY with a RECURRENCE-ID).
            for attendee in attendees.iter().filter(|a| {
                !a.removed
                    && records::answer_for(&answers, a, occurrence.original) != PartStat::Declined
            }) {
                let zone = attendee
                    .timezone
                    .as_deref()
                    .and_then(|z| z.parse().ok())
                    .unwrap_or(meeting_zone);
                for rule in &spec.reminders {
                    let Some(at) = schedule::reminder_at(rule, occurrence.start, zone) else {
                        continue;
                    };
                    if at > since && at <= now && occurrence.start > now {
                        // Keyed by what it is about and when it was due: a moved meeting's
                        // reminder is a new one, a retried tick sends none twice.
                        let key = format!(
                            "meeting:{meeting_id}:reminder:{}:{}:{}:{}",
                            attendee.id,
                            occurrence.original.format("%Y%m%dT%H%M%S"),
                            rule.label(),
                            at.timestamp()
                        );
                        self.mailer
                            .send(&key, mail.reminder(attendee, occurrence, zone))
                            .await?;
                    } else if at > now {
                        next = Some(next.map_or(at, |n| n.min(at)));
                    }
                }
            }
        }
        // Occurrences past the lookahead have no reminder due before `now + lead`:
        // wake up when the first of them comes within reach.
        if let Some(first) = window.next_start {
            let at = first.checked_sub_signed(lead).unwrap_or(now).max(now);
            next = Some(next.map_or(at, |n| n.min(at)));
        }
        if let Some(end) = spec.last_end().map_err(fatal)? {
            if end <= now {
                return Ok(Transition::next(MeetingState::Finish));
            }
            next = Some(next.map_or(end, |n| n.min(end)));
        }
        let (ended, ticks) = (ended + ended_now, ticks + 1);
        if ended >= self.settings.continue_after_occurrences
            || ticks >= self.settings.continue_after_ticks
        {
            // Everything due up to now is done: the next run starts from here, with
            // an empty history.
            return Ok(Transition::continue_as_new(MeetingState::Tick {
                since: now,
                ended: 0,
                ticks: 0,
            }));
        }
        let then = MeetingState::Tick {
            since: now,
            ended,
            ticks,
        };
        let wait = Wait::on("changed", then.clone());
        Ok(match next {
            Some(at) => wait.timeout_at(at, then).into(),
            None => wait.into(),
        })
    }

    async fn finish(
        &self,
        ctx: &StepContext,
        meeting_id: Uuid,
    ) -> Result<Transition<MeetingState, AttendanceSummary>, StepError> {
        let now = ctx.clock.now();
        let meeting = self.meeting(ctx, meeting_id).await?;
        records::set_status(&self.store, meeting_id, MeetingStatus::Completed, now)
            .await
            .retryable()?;
        let attendees = records::attendees(&self.store, meeting_id)
            .await
            .retryable()?;
        let current: Vec<_> = attendees.iter().filter(|a| !a.removed).collect();
        let count = |p: PartStat| current.iter().filter(|a| a.partstat == p).count();
        let occurrences = meeting.spec.ended_by(now).unwrap_or(0);
        Ok(Transition::complete(AttendanceSummary {
            meeting_id,
            outcome: match meeting.status {
                MeetingStatus::Cancelled => "cancelled".into(),
                _ => "completed".into(),
            },
            occurrences,
            accepted: count(PartStat::Accepted),
            tentative: count(PartStat::Tentative),
            declined: count(PartStat::Declined),
            no_answer: count(PartStat::NeedsAction),
            attendees: current
                .iter()
                .map(|a| AttendeeAnswer {
                    email: a.email.clone(),
                    answer: a.partstat,
                })
                .collect(),
        }))
    }

    async fn meeting(&self, ctx: &StepContext, id: Uuid) -> Result<records::Meeting, StepError> {
        records::get(&self.store, Some(&ctx.tenant), id)
            .await
            .retryable()?
            .ok_or_else(|| StepError::fatal(format!("meeting {id} does not exist")))
    }
}
