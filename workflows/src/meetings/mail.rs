//! The messages a meeting's run sends: invitations and updates (text, HTML and an iTIP
//! REQUEST), cancellations (CANCEL), answers told to the organiser, and reminders.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::Value;
use waymark_services::Email;

use super::ical::{self, CalAttendee, Event, Method, PartStat, Scope};
use super::records::{Attendee, Meeting, Outgoing};
use super::schedule::Occurrence;
use super::token::RsvpToken;

pub(super) struct Composer<'a> {
    pub meeting: &'a Meeting,
    pub attendees: &'a [Attendee],
    pub secret: &'a [u8],
    pub public_url: &'a str,
    pub now: DateTime<Utc>,
}

pub(crate) fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn mailbox(email: &str, name: Option<&str>) -> String {
    match name.map(|n| n.replace(['"', '\\', '\r', '\n'], "")) {
        Some(n) if !n.trim().is_empty() => format!("\"{}\" <{email}>", n.trim()),
        _ => email.to_owned(),
    }
}

/// The calendar's attendee list: everyone current, with their answers.
pub(crate) fn cal_attendees(attendees: &[Attendee]) -> Vec<CalAttendee> {
    attendees
        .iter()
        .filter(|a| !a.removed)
        .map(|a| CalAttendee {
            email: a.email.clone(),
            name: a.name.clone(),
            partstat: a.partstat,
            occurrences: Vec::new(),
        })
        .collect()
}

/// The RSVP page link for `attendee` at `sequence`, preselecting `answer`.
pub(crate) fn rsvp_link(
    public_url: &str,
    secret: &[u8],
    meeting: &Meeting,
    attendee: &Attendee,
    answer: Option<PartStat>,
) -> String {
    let token = RsvpToken {
        meeting: meeting.id,
        attendee: attendee.id,
        sequence: meeting.sequence,
        answer,
    }
    .sign(secret);
    format!("{}/rsvp/{token}", public_url.trim_end_matches('/'))
}

fn when(meeting: &Meeting, zone: Option<&str>) -> String {
    let spec = &meeting.spec;
    let mut text = format!(
        "{} to {} ({})",
        spec.start.format("%a %e %b %Y %H:%M"),
        spec.end.format("%H:%M"),
        spec.timezone
    );
    if let Some(rule) = &spec.recurrence {
        text.push_str(&format!(", repeating {rule}"));
    }
    if let (Some(zone), Ok(tz)) = (zone.and_then(|z| z.parse::<Tz>().ok()), spec.tz()) {
        if zone != tz {
            let start = super::schedule::resolve_lenient(tz, spec.start).with_timezone(&zone);
            text.push_str(&format!(
                "; first one {} in {}",
                start.format("%a %e %b %Y %H:%M"),
                zone.name()
            ));
        }
    }
    text
}

impl Composer<'_> {
    fn event<'b>(&'b self, attendees: &'b [CalAttendee], sequence: i64) -> Event<'b> {
        Event {
            uid: &self.meeting.uid,
            sequence,
            spec: &self.meeting.spec,
            attendees,
            cancelled: false,
        }
    }

    fn organizer(&self) -> String {
        let o = &self.meeting.spec.organizer;
        mailbox(&o.email, o.name.as_deref())
    }

    /// The message for an outbox row, or `None` when its recipient is gone.
    pub fn outgoing(&self, out: &Outgoing) -> Option<Email> {
        match out.kind.as_str() {
            "answer" => Some(self.answer(&out.detail)),
            kind => {
                let attendee = self
                    .attendees
                    .iter()
                    .find(|a| Some(a.id) == out.attendee_id)?;
                match kind {
                    "request" => Some(self.request(attendee, &out.detail)),
                    _ => Some(self.cancel(attendee, out.sequence, &out.detail)),
                }
            }
        }
    }

    fn request(&self, attendee: &Attendee, detail: &Value) -> Email {
        let meeting = self.meeting;
        let spec = &meeting.spec;
        let list = cal_attendees(self.attendees);
        let calendar = ical::calendar(
            &self.event(&list, meeting.sequence),
            Method::Request,
            Scope::Series,
            self.now,
        );
        let update = meeting.sequence > 0 && detail["reason"] != "invited";
        let subject = if update {
            format!("Updated invitation: {}", spec.title)
        } else {
            format!("Invitation: {}", spec.title)
        };
        let links: Vec<(&str, String)> = [
            ("Accept", PartStat::Accepted),
            ("Tentative", PartStat::Tentative),
            ("Decline", PartStat::Declined),
        ]
        .into_iter()
        .map(|(label, answer)| {
            (
                label,
                rsvp_link(
                    self.public_url,
                    self.secret,
                    meeting,
                    attendee,
                    Some(answer),
                ),
            )
        })
        .collect();
        let changed = detail["changes"].as_str().unwrap_or_default();
        let place = spec
            .location
            .as_deref()
            .or(spec.join_url.as_deref())
            .unwrap_or("not given");
        let mut text = format!(
            "{} invites you to: {}\n\nWhen: {}\nWhere: {}\n",
            self.organizer(),
            spec.title,
            when(meeting, attendee.timezone.as_deref()),
            place
        );
        if !changed.is_empty() {
            text.push_str(&format!("What changed: {changed}\n"));
        }
        if !spec.description.is_empty() {
            text.push_str(&format!("\n{}\n", spec.description));
        }
        text.push_str("\nAnswer:\n");
        let mut html = format!(
            "<p>{} invites you to <strong>{}</strong></p><p>When: {}<br>Where: {}</p>",
            html_escape(&self.organizer()),
            html_escape(&spec.title),
            html_escape(&when(meeting, attendee.timezone.as_deref())),
            html_escape(place)
        );
        if !changed.is_empty() {
            html.push_str(&format!("<p>What changed: {}</p>", html_escape(changed)));
        }
        html.push_str("<p>");
        for (label, link) in &links {
            text.push_str(&format!("  {label}: {link}\n"));
            html.push_str(&format!("<a href=\"{}\">{label}</a> ", html_escape(link)));
        }
        html.push_str("</p>");
        Email::new()
            .to(mailbox(&attendee.email, attendee.name.as_deref()))
            .reply_to(self.organizer())
            .subject(subject)
            .text(text)
            .html(html)
            .calendar("REQUEST", calendar)
    }

    fn cancel(&self, attendee: &Attendee, sequence: i64, detail: &Value) -> Email {
        let spec = &self.meeting.spec;
        let me = [CalAttendee {
            email: attendee.email.clone(),
            name: attendee.name.clone(),
            partstat: attendee.partstat,
            occurrences: Vec::new(),
        }];
        let occurrence = detail["occurrence"]
            .as_str()
            .and_then(|s| s.parse::<chrono::NaiveDateTime>().ok());
        let (scope, subject, what) = match occurrence {
            Some(original) => (
                Scope::Occurrence(original),
                format!(
                    "Cancelled: {} on {}",
                    spec.title,
                    original.format("%a %e %b %Y %H:%M")
                ),
                format!(
                    "The occurrence of {} on {} ({}) is cancelled.",
                    spec.title,
                    original.format("%a %e %b %Y %H:%M"),
                    spec.timezone
                ),
            ),
            None if detail["reason"] == "removed" => (
                Scope::Series,
                format!("Removed from: {}", spec.title),
                format!("You are no longer invited to {}.", spec.title),
            ),
            None => (
                Scope::Series,
                format!("Cancelled: {}", spec.title),
                format!("{} is cancelled.", spec.title),
            ),
        };
        let mut event = self.event(&me, sequence);
        event.cancelled = true;
        let calendar = ical::calendar(&event, Method::Cancel, scope, self.now);
        Email::new()
            .to(mailbox(&attendee.email, attendee.name.as_deref()))
            .reply_to(self.organizer())
            .subject(subject)
            .text(format!("{what}\n"))
            .html(format!("<p>{}</p>", html_escape(&what)))
            .calendar("CANCEL", calendar)
    }

    fn answer(&self, detail: &Value) -> Email {
        let spec = &self.meeting.spec;
        let who = detail["attendee"].as_str().unwrap_or("an attendee");
        let answer = detail["answer"].as_str().unwrap_or("answered");
        // An answer for one occurrence of a series names it.
        let only = detail["occurrence"]
            .as_str()
            .map(|o| format!(" (the occurrence of {})", o.replace('T', " ")))
            .unwrap_or_default();
        Email::new()
            .to(self.organizer())
            .subject(format!("{who} {answer}: {}{only}", spec.title))
            .text(format!(
                "{who} {answer} your invitation to {}{only} (via {}).\n",
                spec.title,
                detail["via"].as_str().unwrap_or("the RSVP page")
            ))
    }

    /// One message with the answers of `rows` (outbox rows of kind `answer`), for an
    /// organiser who asked for a daily digest.
    pub fn digest(&self, rows: &[&Outgoing], day: chrono::NaiveDate) -> Email {
        let spec = &self.meeting.spec;
        let lines: Vec<String> = rows
            .iter()
            .map(|row| {
                let d = &row.detail;
                let only = d["occurrence"]
                    .as_str()
                    .map(|o| format!(" (the occurrence of {})", o.replace('T', " ")))
                    .unwrap_or_default();
                format!(
                    "- {} {}{only} (via {})",
                    d["attendee"].as_str().unwrap_or("an attendee"),
                    d["answer"].as_str().unwrap_or("answered"),
                    d["via"].as_str().unwrap_or("the RSVP page"),
                )
            })
            .collect();
        let text = format!(
            "Answers to your invitation to {} since the last digest:\n{}\n",
            spec.title,
            lines.join("\n")
        );
        Email::new()
            .to(self.organizer())
            .subject(format!(
                "Daily answers: {} ({day}, {} answer(s))",
                spec.title,
                rows.len()
            ))
            .text(text.clone())
            .html(format!("<pre>{}</pre>", html_escape(&text)))
    }

    pub fn reminder(&self, attendee: &Attendee, occurrence: &Occurrence, zone: Tz) -> Email {
        let spec = &self.meeting.spec;
        let local = occurrence.start.with_timezone(&zone);
        let text = format!(
            "Reminder: {} starts {} ({}).\nWhere: {}\n",
            spec.title,
            local.format("%a %e %b %Y %H:%M"),
            zone.name(),
            spec.location
                .as_deref()
                .or(spec.join_url.as_deref())
                .unwrap_or("not given")
        );
        Email::new()
            .to(mailbox(&attendee.email, attendee.name.as_deref()))
            .subject(format!(
                "Reminder: {} at {} {}",
                spec.title,
                local.format("%Y-%m-%d %H:%M"),
                zone.name()
            ))
            .text(text)
    }
}
