//! When a meeting happens and when its reminders fire: the meeting's description
//! ([`MeetingSpec`]), local times resolved in an IANA zone (a DST gap refused, an
//! ambiguous time taken at its first occurrence), occurrences of a series with cancelled
//! ones flagged and moved ones moved (expanded in [`super::series`]), and reminder
//! instants per attendee in the attendee's own zone.
//!
//! Everything here is pure: "now" is a parameter, so tests and the workflow see the
//! same answers.

use std::time::Duration;

use chrono::{DateTime, Days, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// The largest `COUNT` a series may have: a series with `COUNT` is walked from its
/// first occurrence (the count starts there), so this bounds that walk. A series with
/// `UNTIL` or without end is walked only over the window asked about ([`super::series`]).
pub const MAX_EXPANSION: usize = 5_000;

/// A person: organiser or attendee.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Person {
    pub email: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// A reminder rule: a fixed offset before the start (`"24h"`, `"15m"`), or the day
/// before at a local time of the attendee's zone (`{"day_before_at": "09:00"}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reminder {
    Offset(#[serde(with = "humantime_serde_compat")] Duration),
    DayBeforeAt { day_before_at: NaiveTime },
}

impl Reminder {
    /// A stable label, part of each reminder's mail idempotency key.
    pub fn label(&self) -> String {
        match self {
            Reminder::Offset(d) => humantime::format_duration(*d).to_string().replace(' ', ""),
            Reminder::DayBeforeAt { day_before_at } => {
                format!("day_before_at_{}", day_before_at.format("%H%M"))
            }
        }
    }
}

mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// One occurrence moved or retitled on its own: a `RECURRENCE-ID` override.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Override {
    /// The occurrence's original local start (its `RECURRENCE-ID`).
    pub original: NaiveDateTime,
    pub start: NaiveDateTime,
    pub end: NaiveDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

/// What a meeting is: everything its invitations say, in the meeting's zone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeetingSpec {
    pub title: String,
    #[serde(default)]
    pub description: String,
    /// IANA zone of `start`, `end` and every local time of the series.
    pub timezone: String,
    pub start: NaiveDateTime,
    pub end: NaiveDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_url: Option<String>,
    pub organizer: Person,
    /// An RFC 5545 RRULE value (`FREQ=WEEKLY;BYDAY=TU;COUNT=6`), without `RRULE:`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recurrence: Option<String>,
    #[serde(default)]
    pub reminders: Vec<Reminder>,
    /// Original local starts of cancelled occurrences (`EXDATE`).
    #[serde(default)]
    pub cancelled: Vec<NaiveDateTime>,
    #[serde(default)]
    pub overrides: Vec<Override>,
    /// When set, the organiser gets the answers once a day in one message instead of
    /// one message per answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organizer_digest: Option<Digest>,
}

/// The organiser's digest of answers: daily at a local time of the meeting's zone.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Digest {
    pub daily_at: NaiveTime,
}

impl Digest {
    /// The first digest instant strictly after `after`, in `zone` (a time in a DST gap
    /// is taken at the first instant after it).
    pub fn next_after(&self, after: DateTime<Utc>, zone: Tz) -> DateTime<Utc> {
        let mut day = after.with_timezone(&zone).date_naive();
        loop {
            let at = resolve_lenient(zone, day.and_time(self.daily_at));
            if at > after {
                return at;
            }
            day = day.succ_opt().unwrap_or(day);
        }
    }
}

/// Why a meeting's times were refused; each names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TimeError {
    #[error("{field}: {zone:?} is not an IANA time zone")]
    UnknownZone { field: String, zone: String },
    #[error(
        "{field}: {local} does not exist in {zone} (the clocks skip that hour for daylight \
         saving time); choose a time outside the gap"
    )]
    Gap {
        field: String,
        local: NaiveDateTime,
        zone: String,
    },
    #[error("recurrence: {0}")]
    Rule(String),
    #[error("end: must be after start")]
    EndBeforeStart,
}

/// A local time resolved to an instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resolved {
    pub instant: DateTime<Utc>,
    /// The local time happens twice (clocks go back); `instant` is the first.
    pub ambiguous: bool,
}

pub fn zone(field: &str, name: &str) -> Result<Tz, TimeError> {
    name.parse::<Tz>().map_err(|_| TimeError::UnknownZone {
        field: field.to_owned(),
        zone: name.to_owned(),
    })
}

/// Resolves `local` in `tz`: a time in a DST gap is refused (naming `field`), an
/// ambiguous one is taken at its first occurrence and flagged.
pub fn resolve(field: &str, tz: Tz, local: NaiveDateTime) -> Result<Resolved, TimeError> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => Ok(Resolved {
            instant: t.with_timezone(&Utc),
            ambiguous: false,
        }),
        LocalResult::Ambiguous(first, _) => Ok(Resolved {
            instant: first.with_timezone(&Utc),
            ambiguous: true,
        }),
        LocalResult::None => Err(TimeError::Gap {
            field: field.to_owned(),
            local,
            zone: tz.name().to_owned(),
        }),
    }
}

/// Resolves a local time the rules computed (not one a person typed): a time in a gap
/// moves to the first instant after it, like a wall clock would show.
pub fn resolve_lenient(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    let mut probe = local;
    for _ in 0..(4 * 60) {
        match tz.from_local_datetime(&probe) {
            LocalResult::Single(t) => return t.with_timezone(&Utc),
            LocalResult::Ambiguous(first, _) => return first.with_timezone(&Utc),
            LocalResult::None => probe += chrono::Duration::minutes(1),
        }
    }
    Utc.from_utc_datetime(&local)
}

/// One occurrence of a meeting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Occurrence {
    /// Its original local start: `RECURRENCE-ID`, and how PATCH and cancel name it.
    pub original: NaiveDateTime,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub local_start: NaiveDateTime,
    pub local_end: NaiveDateTime,
    pub cancelled: bool,
    pub moved: bool,
}

impl MeetingSpec {
    pub fn tz(&self) -> Result<Tz, TimeError> {
        zone("timezone", &self.timezone)
    }

    /// Checks the times: zone, DST gap, order, recurrence rule. Answers the warnings
    /// (an ambiguous local time taken at its first occurrence).
    pub fn validate(&self) -> Result<Vec<String>, TimeError> {
        let tz = self.tz()?;
        let mut warnings = Vec::new();
        for (field, local) in [("start", self.start), ("end", self.end)] {
            if resolve(field, tz, local)?.ambiguous {
                warnings.push(format!(
                    "{field}: {local} happens twice in {} (the clocks go back); taken at its \
                     first occurrence, before the change",
                    tz.name()
                ));
            }
        }
        if self.end <= self.start {
            return Err(TimeError::EndBeforeStart);
        }
        self.check_rule(tz)?;
        Ok(warnings)
    }

    /// Whether the series has a last occurrence (`COUNT` or `UNTIL`, or no rule).
    pub fn is_bounded(&self) -> bool {
        match &self.recurrence {
            None => true,
            Some(rule) => {
                let upper = rule.to_ascii_uppercase();
                upper.contains("COUNT=") || upper.contains("UNTIL=")
            }
        }
    }
}

/// The instant `rule` fires for an occurrence starting at `start`, in `zone` (the
/// attendee's): an offset counts back from the instant; `day_before_at` is that
/// wall-clock time on the day before the occurrence's local date in `zone`.
pub fn reminder_at(rule: &Reminder, start: DateTime<Utc>, zone: Tz) -> Option<DateTime<Utc>> {
    match rule {
        Reminder::Offset(d) => chrono::Duration::from_std(*d)
            .ok()
            .and_then(|d| start.checked_sub_signed(d)),
        Reminder::DayBeforeAt { day_before_at } => {
            let day: NaiveDate = start.with_timezone(&zone).date_naive();
            let before = day.checked_sub_days(Days::new(1))?;
            Some(resolve_lenient(zone, before.and_time(*day_before_at)))
        }
    }
}

/// The longest time any of `rules` can fall before its occurrence's start: a
/// `day_before_at` one at most two days (and an hour more across a clock change).
pub fn longest_lead(rules: &[Reminder]) -> chrono::Duration {
    rules
        .iter()
        .map(|rule| match rule {
            Reminder::Offset(d) => chrono::Duration::from_std(*d).unwrap_or(chrono::Duration::MAX),
            Reminder::DayBeforeAt { .. } => chrono::Duration::hours(49),
        })
        .max()
        .unwrap_or_else(chrono::Duration::zero)
}

/// `rule` with the weekdays of its `BYDAY` (ordinals such as `1TU` kept) moved by
/// `days`.
pub fn shift_byday(rule: &str, days: i64) -> String {
    const DAYS: [&str; 7] = ["MO", "TU", "WE", "TH", "FR", "SA", "SU"];
    if days.rem_euclid(7) == 0 {
        return rule.to_owned();
    }
    rule.split(';')
        .map(|part| {
            let Some(list) = part
                .strip_prefix("BYDAY=")
                .or_else(|| part.strip_prefix("byday="))
            else {
                return part.to_owned();
            };
            let moved: Vec<String> = list
                .split(',')
                .map(|day| {
                    let upper = day.to_ascii_uppercase();
                    let (ordinal, name) = upper.split_at(upper.len().saturating_sub(2));
                    match DAYS.iter().position(|d| *d == name) {
                        Some(i) => format!(
                            "{ordinal}{}",
                            DAYS[(i as i64 + days).rem_euclid(7) as usize]
                        ),
                        None => day.to_owned(),
                    }
                })
                .collect();
            format!("BYDAY={}", moved.join(","))
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// The next reminders of a meeting per attendee, for its view.
pub fn next_reminders(
    meeting: &super::records::Meeting,
    attendees: &[super::records::Attendee],
    answers: &[(uuid::Uuid, NaiveDateTime, super::ical::PartStat)],
    now: DateTime<Utc>,
) -> Vec<serde_json::Value> {
    let Ok(zone) = meeting.spec.tz() else {
        return Vec::new();
    };
    let Ok(upcoming) = meeting.spec.occurrences(now, super::WINDOW) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for a in attendees.iter().filter(|a| !a.removed) {
        let tz = a
            .timezone
            .as_deref()
            .and_then(|z| z.parse().ok())
            .unwrap_or(zone);
        let next = upcoming
            .iter()
            .filter(|o| {
                !o.cancelled
                    && super::records::answer_for(answers, a, o.original)
                        != super::ical::PartStat::Declined
            })
            .flat_map(|o| {
                meeting
                    .spec
                    .reminders
                    .iter()
                    .filter_map(move |r| reminder_at(r, o.start, tz).map(|at| (at, o, r)))
            })
            .filter(|(at, _, _)| *at > now)
            .min_by_key(|(at, _, _)| *at);
        if let Some((at, o, r)) = next {
            out.push(serde_json::json!({
                "attendee": a.email,
                "at": at,
                "local": at.with_timezone(&tz).format("%Y-%m-%dT%H:%M").to_string(),
                "timezone": tz.name(),
                "occurrence": o.original,
                "rule": r.label(),
            }));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M").unwrap()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn spec(start: &str, end: &str, zone: &str, rule: Option<&str>) -> MeetingSpec {
        MeetingSpec {
            title: "Planning".into(),
            description: String::new(),
            timezone: zone.into(),
            start: local(start),
            end: local(end),
            location: None,
            join_url: None,
            organizer: Person {
                email: "org@example.com".into(),
                name: None,
            },
            recurrence: rule.map(str::to_owned),
            reminders: vec![],
            cancelled: vec![],
            overrides: vec![],
            organizer_digest: None,
        }
    }

    #[test]
    fn a_start_in_the_spring_gap_is_refused_naming_the_field() {
        let s = spec(
            "2026-03-29T02:30",
            "2026-03-29T03:30",
            "Europe/Berlin",
            None,
        );
        let err = s.validate().unwrap_err();
        assert!(
            matches!(&err, TimeError::Gap { field, .. } if field == "start"),
            "{err}"
        );
        assert!(
            err.to_string().contains("does not exist in Europe/Berlin"),
            "{err}"
        );
    }

    #[test]
    fn an_ambiguous_start_is_taken_at_its_first_occurrence_and_said_so() {
        let s = spec(
            "2026-10-25T02:30",
            "2026-10-25T03:30",
            "Europe/Berlin",
            None,
        );
        let warnings = s.validate().unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("first occurrence"));
        let tz = s.tz().unwrap();
        // 02:30 CEST (+02:00) is 00:30 UTC; the second 02:30 (CET) would be 01:30 UTC.
        assert_eq!(
            resolve("start", tz, s.start).unwrap().instant,
            utc("2026-10-25T00:30:00Z")
        );
    }

    #[test]
    fn unknown_zones_and_bad_rules_are_refused() {
        let s = spec("2026-03-03T10:00", "2026-03-03T11:00", "Mars/Olympus", None);
        assert!(matches!(s.validate(), Err(TimeError::UnknownZone { .. })));
        let s = spec(
            "2026-03-03T10:00",
            "2026-03-03T11:00",
            "UTC",
            Some("FREQ=SOMETIMES"),
        );
        assert!(matches!(s.validate(), Err(TimeError::Rule(_))));
        let s = spec("2026-03-03T10:00", "2026-03-03T09:00", "UTC", None);
        assert_eq!(s.validate(), Err(TimeError::EndBeforeStart));
    }

    #[test]
    fn a_weekly_series_keeps_its_local_time_across_dst_and_applies_exdate_and_overrides() {
        let mut s = spec(
            "2026-03-17T10:00",
            "2026-03-17T11:00",
            "Europe/Berlin",
            Some("FREQ=WEEKLY;BYDAY=TU;COUNT=4"),
        );
        s.cancelled.push(local("2026-03-24T10:00"));
        s.overrides.push(Override {
            original: local("2026-03-31T10:00"),
            start: local("2026-04-01T15:00"),
            end: local("2026-04-01T16:00"),
            title: None,
            location: None,
        });
        let all = s.occurrences(DateTime::<Utc>::MIN_UTC, 10).unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[0].start, utc("2026-03-17T09:00:00Z"), "CET");
        assert!(all[1].cancelled);
        assert!(all[2].moved);
        assert_eq!(all[2].start, utc("2026-04-01T13:00:00Z"), "CEST, moved");
        assert_eq!(all[3].start, utc("2026-04-07T08:00:00Z"), "CEST");
        assert!(s.is_bounded());
        assert_eq!(s.last_end().unwrap(), Some(utc("2026-04-07T09:00:00Z")));
        assert!(s.has_occurrence(local("2026-04-07T10:00")).unwrap());
        assert!(!s.has_occurrence(local("2026-04-08T10:00")).unwrap());
        // Only those still to end after a given instant.
        let later = s.occurrences(utc("2026-03-25T00:00:00Z"), 10).unwrap();
        assert_eq!(later.len(), 2);
    }

    #[test]
    fn a_series_without_end_expands_lazily_and_spans_five_years_of_zone_data() {
        let s = spec(
            "2026-01-05T09:00",
            "2026-01-05T09:30",
            "UTC",
            Some("FREQ=DAILY"),
        );
        assert!(!s.is_bounded());
        assert_eq!(s.last_end().unwrap(), None);
        let next = s.occurrences(utc("2027-01-01T00:00:00Z"), 3).unwrap();
        assert_eq!(next.len(), 3);
        assert_eq!(next[0].start, utc("2027-01-01T09:00:00Z"));
        assert_eq!(s.years().unwrap(), (2026, 2031));
    }

    #[test]
    fn reminders_fire_in_each_attendees_zone_across_the_weeks_only_one_zone_changed() {
        // A Berlin meeting at 16:00 on Tuesdays in March 2026. New York moves to summer
        // time on 8 March, Berlin on 29 March: between them the gap is 5 h, not 6 h.
        let s = spec(
            "2026-03-03T16:00",
            "2026-03-03T17:00",
            "Europe/Berlin",
            Some("FREQ=WEEKLY;BYDAY=TU;COUNT=5"),
        );
        let ny: Tz = "America/New_York".parse().unwrap();
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let nine = Reminder::DayBeforeAt {
            day_before_at: NaiveTime::from_hms_opt(9, 0, 0).unwrap(),
        };
        let occ = s.occurrences(DateTime::<Utc>::MIN_UTC, 10).unwrap();
        let ny_times: Vec<_> = occ
            .iter()
            .map(|o| reminder_at(&nine, o.start, ny).unwrap())
            .collect();
        let berlin_times: Vec<_> = occ
            .iter()
            .map(|o| reminder_at(&nine, o.start, berlin).unwrap())
            .collect();
        // New York: 09:00 EST (14:00 UTC) on 2 March, 09:00 EDT (13:00 UTC) from 9 March.
        assert_eq!(ny_times[0], utc("2026-03-02T14:00:00Z"));
        assert_eq!(ny_times[1], utc("2026-03-09T13:00:00Z"));
        assert_eq!(ny_times[3], utc("2026-03-23T13:00:00Z"));
        // Berlin: 09:00 CET (08:00 UTC) through 30 March, then CEST (07:00 UTC).
        assert_eq!(berlin_times[3], utc("2026-03-23T08:00:00Z"));
        assert_eq!(berlin_times[4], utc("2026-03-30T07:00:00Z"));
        // The meeting itself stays at 16:00 Berlin: 15:00 UTC, then 14:00 UTC.
        assert_eq!(occ[3].start, utc("2026-03-24T15:00:00Z"));
        assert_eq!(occ[4].start, utc("2026-03-31T14:00:00Z"));
        let day = Reminder::Offset(Duration::from_secs(86_400));
        assert_eq!(
            reminder_at(&day, occ[4].start, ny).unwrap(),
            utc("2026-03-30T14:00:00Z")
        );
    }

    #[test]
    fn reminders_parse_from_offsets_and_local_rules() {
        let rules: Vec<Reminder> =
            serde_json::from_str(r#"["24h", "15m", {"day_before_at": "09:00"}]"#).unwrap();
        assert_eq!(rules[0], Reminder::Offset(Duration::from_secs(86_400)));
        assert_eq!(rules[1].label(), "15m");
        assert_eq!(rules[2].label(), "day_before_at_0900");
    }

    #[test]
    fn moving_a_series_moves_the_weekdays_of_its_rule() {
        assert_eq!(
            shift_byday("FREQ=WEEKLY;BYDAY=TU;COUNT=3", 1),
            "FREQ=WEEKLY;BYDAY=WE;COUNT=3"
        );
        assert_eq!(
            shift_byday("FREQ=WEEKLY;BYDAY=SU,MO", 1),
            "FREQ=WEEKLY;BYDAY=MO,TU"
        );
        assert_eq!(
            shift_byday("FREQ=MONTHLY;BYDAY=1TU", -1),
            "FREQ=MONTHLY;BYDAY=1MO"
        );
        assert_eq!(
            shift_byday("FREQ=WEEKLY;BYDAY=TU", 7),
            "FREQ=WEEKLY;BYDAY=TU"
        );
        assert_eq!(shift_byday("FREQ=DAILY", 3), "FREQ=DAILY");
    }
}
