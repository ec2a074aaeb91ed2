//! RFC 5545 iCalendar text for iTIP (RFC 5546): the `VCALENDAR` of an invitation
//! (`METHOD:REQUEST`) or a cancellation (`METHOD:CANCEL`), with a `VTIMEZONE` built from
//! the zone's transitions for the years the series spans, and the parsing of what a
//! calendar client sends back (`METHOD:REPLY`).
//!
//! Written by hand rather than with a calendar crate because the details calendar
//! clients insist on are exactly the ones to control: CRLF line ends, folding at 75
//! octets without splitting a UTF-8 character, TEXT escaping, quoted parameters, and a
//! `VTIMEZONE` whose observances match the zone data the server computed times with.
//! Tests read every calendar back with a parser that did not write it (Python's
//! `icalendar`).

use chrono::{DateTime, Duration, NaiveDate, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::{OffsetComponents, OffsetName, Tz};

use super::schedule::{MeetingSpec, Override};

mod reply;
pub use reply::{content_lines, parse_reply, reply, ContentLine, Reply, ReplyError};

/// An attendee's answer (`PARTSTAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartStat {
    NeedsAction,
    Accepted,
    Tentative,
    Declined,
}

impl PartStat {
    pub fn ical(self) -> &'static str {
        match self {
            PartStat::NeedsAction => "NEEDS-ACTION",
            PartStat::Accepted => "ACCEPTED",
            PartStat::Tentative => "TENTATIVE",
            PartStat::Declined => "DECLINED",
        }
    }

    pub fn parse(s: &str) -> Option<PartStat> {
        match s.trim().to_ascii_uppercase().replace('_', "-").as_str() {
            "NEEDS-ACTION" => Some(PartStat::NeedsAction),
            "ACCEPTED" | "ACCEPT" => Some(PartStat::Accepted),
            "TENTATIVE" => Some(PartStat::Tentative),
            "DECLINED" | "DECLINE" => Some(PartStat::Declined),
            _ => None,
        }
    }
}

/// `METHOD` of a calendar sent by mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Request,
    Cancel,
    /// A subscription feed: no method, no RSVP.
    Publish,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Request => "REQUEST",
            Method::Cancel => "CANCEL",
            Method::Publish => "PUBLISH",
        }
    }
}

/// An attendee as a calendar lists them.
#[derive(Debug, Clone, PartialEq)]
pub struct CalAttendee {
    pub email: String,
    pub name: Option<String>,
    /// The answer for the series.
    pub partstat: PartStat,
    /// Answers for single occurrences (original local start, answer): each is written
    /// as an override (`RECURRENCE-ID`) carrying that `PARTSTAT`.
    pub occurrences: Vec<(NaiveDateTime, PartStat)>,
}

/// One event (a meeting or a series) to write.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    pub uid: &'a str,
    pub sequence: i64,
    pub spec: &'a MeetingSpec,
    pub attendees: &'a [CalAttendee],
    /// Whole series cancelled (or the recipient removed): `STATUS:CANCELLED`.
    pub cancelled: bool,
}

/// What to write: the whole series (with its `EXDATE`s and overrides), or for a
/// `CANCEL` of one occurrence just that occurrence's `RECURRENCE-ID`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scope {
    Series,
    Occurrence(NaiveDateTime),
}

/// Writes one content line, folded at 75 octets with CRLF.
fn line(out: &mut String, content: &str) {
    let mut width = 0;
    for c in content.chars() {
        let len = c.len_utf8();
        if width + len > 75 {
            out.push_str("\r\n ");
            width = 1;
        }
        out.push(c);
        width += len;
    }
    out.push_str("\r\n");
}

/// TEXT value escaping (RFC 5545 §3.3.11).
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            ';' => out.push_str("\\;"),
            ',' => out.push_str("\\,"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// A parameter value: quoted when it holds `:`, `;` or `,`; `"` and controls dropped
/// (a parameter value cannot hold them).
fn param(value: &str) -> String {
    let clean: String = value
        .chars()
        .filter(|c| *c != '"' && !c.is_control())
        .collect();
    if clean.contains([':', ';', ',']) {
        format!("\"{clean}\"")
    } else {
        clean
    }
}

fn local_fmt(t: NaiveDateTime) -> String {
    t.format("%Y%m%dT%H%M%S").to_string()
}

fn utc_fmt(t: DateTime<Utc>) -> String {
    t.format("%Y%m%dT%H%M%SZ").to_string()
}

fn offset_fmt(seconds: i32) -> String {
    let sign = if seconds < 0 { '-' } else { '+' };
    let s = seconds.abs();
    if s % 60 == 0 {
        format!("{sign}{:02}{:02}", s / 3600, (s % 3600) / 60)
    } else {
        format!("{sign}{:02}{:02}{:02}", s / 3600, (s % 3600) / 60, s % 60)
    }
}

/// One change of a zone's offset.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub at: DateTime<Utc>,
    pub from: i32,
    pub to: i32,
    pub daylight: bool,
    pub name: String,
}

fn offset_at(tz: Tz, t: DateTime<Utc>) -> i32 {
    tz.offset_from_utc_datetime(&t.naive_utc())
        .fix()
        .local_minus_utc()
}

/// The zone's offset changes from the start of `first` to the end of `last`, found by
/// walking the zone data a day at a time and bisecting each change to the second.
pub fn transitions(tz: Tz, first: i32, last: i32) -> Vec<Transition> {
    let Some(start) = NaiveDate::from_ymd_opt(first, 1, 1) else {
        return Vec::new();
    };
    let Some(end) = NaiveDate::from_ymd_opt(last + 1, 1, 1) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut t = Utc.from_utc_datetime(&start.and_hms_opt(0, 0, 0).unwrap_or_default());
    let end = Utc.from_utc_datetime(&end.and_hms_opt(0, 0, 0).unwrap_or_default());
    while t < end {
        let next = t + Duration::days(1);
        let (a, b) = (offset_at(tz, t), offset_at(tz, next));
        if a != b {
            // The change lies in (lo, hi]: bisect to the second (zone data has whole
            // seconds).
            let (mut lo, mut hi) = (t.timestamp(), next.timestamp());
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if offset_at(tz, Utc.timestamp_opt(mid, 0).single().unwrap_or(t)) == a {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            let hi = Utc.timestamp_opt(hi, 0).single().unwrap_or(next);
            let offset = tz.offset_from_utc_datetime(&hi.naive_utc());
            out.push(Transition {
                at: hi,
                from: a,
                to: b,
                daylight: !offset.dst_offset().is_zero(),
                name: offset
                    .abbreviation()
                    .map(str::to_owned)
                    .unwrap_or_else(|| offset_fmt(b)),
            });
        }
        t = next;
    }
    out
}

/// The `VTIMEZONE` for `tz` over the years `first..=last` (and the year before, so the
/// observance in force at the series' start is defined): one observance per transition,
/// `DTSTART` in the local time before it, as RFC 5545 §3.6.5 prescribes.
pub fn vtimezone(out: &mut String, tz: Tz, first: i32, last: i32) {
    line(out, "BEGIN:VTIMEZONE");
    line(out, &format!("TZID:{}", tz.name()));
    let changes = transitions(tz, first - 1, last);
    if changes.is_empty() {
        // A zone without changes in the span: one standard observance.
        let at = NaiveDate::from_ymd_opt(first, 1, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .unwrap_or_default();
        let offset = tz.offset_from_utc_datetime(&at);
        let seconds = offset.fix().local_minus_utc();
        line(out, "BEGIN:STANDARD");
        line(out, "DTSTART:19700101T000000");
        line(out, &format!("TZOFFSETFROM:{}", offset_fmt(seconds)));
        line(out, &format!("TZOFFSETTO:{}", offset_fmt(seconds)));
        line(
            out,
            &format!(
                "TZNAME:{}",
                escape(offset.abbreviation().unwrap_or(&offset_fmt(seconds)))
            ),
        );
        line(out, "END:STANDARD");
    }
    for change in changes {
        let kind = if change.daylight {
            "DAYLIGHT"
        } else {
            "STANDARD"
        };
        let local_before = change.at.naive_utc() + Duration::seconds(i64::from(change.from));
        line(out, &format!("BEGIN:{kind}"));
        line(out, &format!("DTSTART:{}", local_fmt(local_before)));
        line(out, &format!("TZOFFSETFROM:{}", offset_fmt(change.from)));
        line(out, &format!("TZOFFSETTO:{}", offset_fmt(change.to)));
        line(out, &format!("TZNAME:{}", escape(&change.name)));
        line(out, &format!("END:{kind}"));
    }
    line(out, "END:VTIMEZONE");
}

fn mailto(email: &str) -> String {
    format!("mailto:{}", email.trim())
}

fn person_line(property: &str, email: &str, name: Option<&str>, extra: &str) -> String {
    let cn = name
        .filter(|n| !n.trim().is_empty())
        .map(|n| format!(";CN={}", param(n)))
        .unwrap_or_default();
    format!("{property}{cn}{extra}:{}", mailto(email))
}

/// Writes the VCALENDAR for `event` with `method`, stamped `now`.
pub fn calendar(event: &Event<'_>, method: Method, scope: Scope, now: DateTime<Utc>) -> String {
    calendar_of(std::slice::from_ref(event), method, scope, now)
}

/// A VCALENDAR holding several meetings (a subscription feed) or one.
pub fn calendar_of(
    events: &[Event<'_>],
    method: Method,
    scope: Scope,
    now: DateTime<Utc>,
) -> String {
    let mut out = String::new();
    line(&mut out, "BEGIN:VCALENDAR");
    line(&mut out, "VERSION:2.0");
    line(&mut out, "PRODID:-//Waymark//Meetings//EN");
    line(&mut out, "CALSCALE:GREGORIAN");
    line(&mut out, &format!("METHOD:{}", method.as_str()));
    let mut zones: Vec<(Tz, i32, i32)> = Vec::new();
    for event in events {
        if let (Ok(tz), Ok((first, last))) = (event.spec.tz(), event.spec.years()) {
            match zones.iter_mut().find(|(z, _, _)| *z == tz) {
                Some(z) => {
                    z.1 = z.1.min(first);
                    z.2 = z.2.max(last);
                }
                None => zones.push((tz, first, last)),
            }
        }
    }
    for (tz, first, last) in zones {
        vtimezone(&mut out, tz, first, last);
    }
    for event in events {
        write_event(&mut out, event, method, scope, now);
    }
    line(&mut out, "END:VCALENDAR");
    out
}

fn write_event(
    out: &mut String,
    event: &Event<'_>,
    method: Method,
    scope: Scope,
    now: DateTime<Utc>,
) {
    let spec = event.spec;
    let tzid = spec.timezone.as_str();
    let dt = |name: &str, t: NaiveDateTime| format!("{name};TZID={tzid}:{}", local_fmt(t));
    let cancelled = event.cancelled || method == Method::Cancel;
    let common = |out: &mut String, title: &str, location: Option<&str>| {
        line(out, &format!("UID:{}", event.uid));
        line(out, &format!("SEQUENCE:{}", event.sequence));
        line(out, &format!("DTSTAMP:{}", utc_fmt(now)));
        line(out, &format!("SUMMARY:{}", escape(title)));
        if !spec.description.is_empty() {
            line(out, &format!("DESCRIPTION:{}", escape(&spec.description)));
        }
        if let Some(location) = location.or(spec.join_url.as_deref()) {
            line(out, &format!("LOCATION:{}", escape(location)));
        }
        if let Some(url) = &spec.join_url {
            line(out, &format!("URL:{}", url.trim()));
        }
        line(
            out,
            &person_line(
                "ORGANIZER",
                &spec.organizer.email,
                spec.organizer.name.as_deref(),
                "",
            ),
        );
        for a in event.attendees {
            let rsvp = if method == Method::Request {
                ";RSVP=TRUE"
            } else {
                ""
            };
            let extra = format!(
                ";CUTYPE=INDIVIDUAL;ROLE=REQ-PARTICIPANT;PARTSTAT={}{rsvp}",
                a.partstat.ical()
            );
            line(
                out,
                &person_line("ATTENDEE", &a.email, a.name.as_deref(), &extra),
            );
        }
        line(
            out,
            if cancelled {
                "STATUS:CANCELLED"
            } else {
                "STATUS:CONFIRMED"
            },
        );
    };
    match scope {
        Scope::Series => {
            line(out, "BEGIN:VEVENT");
            common(out, &spec.title, spec.location.as_deref());
            line(out, &dt("DTSTART", spec.start));
            line(out, &dt("DTEND", spec.end));
            if let Some(rule) = &spec.recurrence {
                line(
                    out,
                    &format!("RRULE:{}", rule.trim().trim_start_matches("RRULE:")),
                );
                for ex in &spec.cancelled {
                    line(out, &dt("EXDATE", *ex));
                }
            }
            line(out, "END:VEVENT");
            if spec.recurrence.is_some() {
                // An override per moved occurrence and per occurrence someone answered on
                // its own (its answer differs from the series' only there); a cancelled
                // one is an EXDATE instead.
                let mut originals: Vec<NaiveDateTime> =
                    spec.overrides.iter().map(|o| o.original).collect();
                originals.extend(
                    event
                        .attendees
                        .iter()
                        .flat_map(|a| a.occurrences.iter().map(|(o, _)| *o)),
                );
                originals.sort();
                originals.dedup();
                for original in originals {
                    if spec.cancelled.contains(&original) {
                        continue;
                    }
                    let over = spec
                        .overrides
                        .iter()
                        .find(|o| o.original == original)
                        .cloned()
                        .unwrap_or_else(|| Override {
                            original,
                            start: original,
                            end: original + (spec.end - spec.start),
                            title: None,
                            location: None,
                        });
                    let attendees: Vec<CalAttendee> = event
                        .attendees
                        .iter()
                        .map(|a| CalAttendee {
                            email: a.email.clone(),
                            name: a.name.clone(),
                            partstat: a
                                .occurrences
                                .iter()
                                .find(|(o, _)| *o == original)
                                .map_or(a.partstat, |(_, p)| *p),
                            occurrences: Vec::new(),
                        })
                        .collect();
                    let this = Event {
                        attendees: &attendees,
                        ..event.clone()
                    };
                    let text = common_for(spec, &over);
                    write_override(out, &this, &over, &text, now, method, &dt);
                }
            }
        }
        Scope::Occurrence(original) => {
            let (start, end) = spec
                .overrides
                .iter()
                .find(|o| o.original == original)
                .map(|o| (o.start, o.end))
                .unwrap_or((original, original + (spec.end - spec.start)));
            line(out, "BEGIN:VEVENT");
            common(out, &spec.title, spec.location.as_deref());
            line(out, &dt("RECURRENCE-ID", original));
            line(out, &dt("DTSTART", start));
            line(out, &dt("DTEND", end));
            line(out, "END:VEVENT");
        }
    }

    fn common_for(spec: &MeetingSpec, over: &Override) -> (String, Option<String>) {
        (
            over.title.clone().unwrap_or_else(|| spec.title.clone()),
            over.location.clone().or_else(|| spec.location.clone()),
        )
    }

    fn write_override(
        out: &mut String,
        event: &Event<'_>,
        over: &Override,
        (title, location): &(String, Option<String>),
        now: DateTime<Utc>,
        method: Method,
        dt: &dyn Fn(&str, NaiveDateTime) -> String,
    ) {
        let sub = Event {
            cancelled: event.cancelled,
            ..event.clone()
        };
        let mut spec = sub.spec.clone();
        spec.title = title.clone();
        spec.location = location.clone();
        spec.recurrence = None;
        spec.start = over.start;
        spec.end = over.end;
        let moved = Event { spec: &spec, ..sub };
        let mut body = String::new();
        write_event(&mut body, &moved, method, Scope::Series, now);
        // Same event, with the override's RECURRENCE-ID right after BEGIN:VEVENT.
        let recurrence = {
            let mut l = String::new();
            line(&mut l, &dt("RECURRENCE-ID", over.original));
            l
        };
        out.push_str(&body.replacen(
            "BEGIN:VEVENT\r\n",
            &format!("BEGIN:VEVENT\r\n{recurrence}"),
            1,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meetings::schedule::Person;

    fn local(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M").unwrap()
    }

    fn spec() -> MeetingSpec {
        MeetingSpec {
            title: "Planning; Q2, \"big\" one".into(),
            description: "Line one\nLine two — with ünïcödé, and a very long sentence that will certainly need folding at seventy-five octets".into(),
            timezone: "Europe/Berlin".into(),
            start: local("2026-03-03T10:00"),
            end: local("2026-03-03T11:00"),
            location: Some("Room 1".into()),
            join_url: None,
            organizer: Person {
                email: "org@example.com".into(),
                name: Some("Org, The".into()),
            },
            recurrence: Some("FREQ=WEEKLY;BYDAY=TU;COUNT=6".into()),
            reminders: vec![],
            cancelled: vec![local("2026-03-17T10:00")],
            overrides: vec![Override {
                original: local("2026-03-24T10:00"),
                start: local("2026-03-25T14:00"),
                end: local("2026-03-25T15:00"),
                title: None,
                location: None,
            }],
            organizer_digest: None,
        }
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 2, 1, 12, 0, 0).unwrap()
    }

    #[test]
    fn lines_are_folded_at_75_octets_with_crlf_and_never_split_a_character() {
        let mut out = String::new();
        let long = format!("DESCRIPTION:{}", "é".repeat(100));
        line(&mut out, &long);
        assert!(out.ends_with("\r\n"));
        for l in out.split("\r\n").filter(|l| !l.is_empty()) {
            assert!(l.len() <= 75, "{} octets: {l}", l.len());
        }
        let unfolded = out.replace("\r\n ", "");
        assert_eq!(unfolded.trim_end(), long);
    }

    #[test]
    fn text_is_escaped_and_parameters_quoted() {
        assert_eq!(escape("a;b,c\\d\ne"), "a\\;b\\,c\\\\d\\ne");
        assert_eq!(param("Org, The"), "\"Org, The\"");
        assert_eq!(param("Ada \"the\" one"), "Ada the one");
    }

    #[test]
    fn a_request_has_method_uid_sequence_zone_rule_exdate_override_and_attendees() {
        let spec = spec();
        let attendees = [CalAttendee {
            email: "ada@example.com".into(),
            name: Some("Ada".into()),
            partstat: PartStat::NeedsAction,
            occurrences: vec![],
        }];
        let event = Event {
            uid: "m-1@waymark",
            sequence: 2,
            spec: &spec,
            attendees: &attendees,
            cancelled: false,
        };
        let text = calendar(&event, Method::Request, Scope::Series, now());
        let unfolded = text.replace("\r\n ", "");
        for needle in [
            "METHOD:REQUEST",
            "UID:m-1@waymark",
            "SEQUENCE:2",
            "DTSTAMP:20260201T120000Z",
            "TZID:Europe/Berlin",
            "DTSTART;TZID=Europe/Berlin:20260303T100000",
            "RRULE:FREQ=WEEKLY;BYDAY=TU;COUNT=6",
            "EXDATE;TZID=Europe/Berlin:20260317T100000",
            "RECURRENCE-ID;TZID=Europe/Berlin:20260324T100000",
            "DTSTART;TZID=Europe/Berlin:20260325T140000",
            "ORGANIZER;CN=\"Org, The\":mailto:org@example.com",
            "PARTSTAT=NEEDS-ACTION;RSVP=TRUE:mailto:ada@example.com",
            "SUMMARY:Planning\\; Q2\\, \"big\" one",
            // Berlin's spring change in 2026, in the local time before it.
            "BEGIN:DAYLIGHT\r\nDTSTART:20260329T020000\r\nTZOFFSETFROM:+0100\r\nTZOFFSETTO:+0200\r\nTZNAME:CEST",
        ] {
            assert!(unfolded.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert!(
            !text.contains("\n\n") && text.split('\n').all(|l| l.is_empty() || l.ends_with('\r'))
        );
    }

    #[test]
    fn an_answer_for_one_occurrence_is_an_override_with_its_partstat() {
        let spec = spec();
        let attendees = [CalAttendee {
            email: "ada@example.com".into(),
            name: None,
            partstat: PartStat::Accepted,
            occurrences: vec![
                (local("2026-03-10T10:00"), PartStat::Declined),
                // Moved: its existing override carries the answer.
                (local("2026-03-24T10:00"), PartStat::Tentative),
                // Cancelled: an EXDATE, no override.
                (local("2026-03-17T10:00"), PartStat::Declined),
            ],
        }];
        let event = Event {
            uid: "m-1@waymark",
            sequence: 1,
            spec: &spec,
            attendees: &attendees,
            cancelled: false,
        };
        let text = calendar(&event, Method::Publish, Scope::Series, now()).replace("\r\n ", "");
        let events: Vec<&str> = text.split("BEGIN:VEVENT").skip(1).collect();
        assert_eq!(events.len(), 3, "{text}");
        assert!(events[0].contains("RRULE:") && events[0].contains("PARTSTAT=ACCEPTED"));
        assert!(events[1].contains("RECURRENCE-ID;TZID=Europe/Berlin:20260310T100000"));
        assert!(events[1].contains("DTSTART;TZID=Europe/Berlin:20260310T100000"));
        assert!(events[1].contains("DTEND;TZID=Europe/Berlin:20260310T110000"));
        assert!(events[1].contains("PARTSTAT=DECLINED") && !events[1].contains("RRULE"));
        assert!(events[2].contains("RECURRENCE-ID;TZID=Europe/Berlin:20260324T100000"));
        assert!(events[2].contains("DTSTART;TZID=Europe/Berlin:20260325T140000"));
        assert!(events[2].contains("PARTSTAT=TENTATIVE"));
        assert!(!text.contains("RECURRENCE-ID;TZID=Europe/Berlin:20260317T100000"));
    }

    #[test]
    fn a_cancel_of_one_occurrence_names_it_by_recurrence_id() {
        let spec = spec();
        let event = Event {
            uid: "m-1@waymark",
            sequence: 3,
            spec: &spec,
            attendees: &[],
            cancelled: false,
        };
        let text = calendar(
            &event,
            Method::Cancel,
            Scope::Occurrence(local("2026-03-10T10:00")),
            now(),
        );
        assert!(text.contains("METHOD:CANCEL"));
        assert!(text.contains("STATUS:CANCELLED"));
        assert!(text.contains("RECURRENCE-ID;TZID=Europe/Berlin:20260310T100000"));
        assert!(!text.contains("RRULE"));
    }

    #[test]
    fn transitions_of_new_york_in_2026_are_found_to_the_second() {
        let ny: Tz = "America/New_York".parse().unwrap();
        let t = transitions(ny, 2026, 2026);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].at, Utc.with_ymd_and_hms(2026, 3, 8, 7, 0, 0).unwrap());
        assert!(t[0].daylight);
        assert_eq!((t[0].from, t[0].to), (-5 * 3600, -4 * 3600));
        assert_eq!(t[1].at, Utc.with_ymd_and_hms(2026, 11, 1, 6, 0, 0).unwrap());
        assert_eq!(t[1].name, "EST");
        let utc_zone: Tz = "UTC".parse().unwrap();
        assert!(transitions(utc_zone, 2026, 2030).is_empty());
    }
}
