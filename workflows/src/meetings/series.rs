//! The occurrences of a series, expanded only over the window a caller asks about.
//!
//! A recurrence rule is walked from its `DTSTART`, so a naive expansion of a series
//! without end costs more every day it runs and, under any cap, eventually stops
//! finding occurrences. Here the rule is re-anchored instead: validated once against
//! the series' start (which fills in what the rule leaves to `DTSTART`: weekday, day of
//! month, time of day), then walked from a later `DTSTART` a whole number of periods
//! (`INTERVAL` × `FREQ`) after the start, at or before the window. The periods after
//! the anchor are the series' own periods, so they yield exactly the series'
//! occurrences, and the cost is the window's, not the series' age. A rule with `COUNT`
//! is counted from its first occurrence, so it is walked from the start; `COUNT` is
//! at most [`MAX_EXPANSION`], which bounds that walk.
//!
//! Overrides (`RECURRENCE-ID`) are a short explicit list: they are placed by their own
//! times, whatever their original start, and the rule's walk skips their originals.

use chrono::{DateTime, Datelike, Days, LocalResult, Months, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use rrule::{Frequency, RRule, RRuleSet, Unvalidated};

use super::schedule::MAX_EXPANSION;
use super::schedule::{resolve, resolve_lenient, MeetingSpec, Occurrence, Override, TimeError};

/// How much earlier than the window's local start the walk begins, besides the
/// series' length: instants and local times differ by the zone's offset, which a day
/// covers.
fn margin() -> chrono::Duration {
    chrono::Duration::days(1)
}

/// A series' rule, validated against its start.
struct Rule {
    rule: RRule,
    tz: Tz,
    /// The series' first local start (`DTSTART`).
    start: NaiveDateTime,
}

impl Rule {
    /// The latest local time at or before `from`, a whole number of the rule's periods
    /// after the start, that exists in the zone; `None` to walk from the start.
    fn anchor(&self, from: NaiveDateTime) -> Option<NaiveDateTime> {
        if self.rule.get_count().is_some() || from <= self.start {
            return None;
        }
        let interval = u32::from(self.rule.get_interval().max(1));
        // Sub-daily rules step whole days too: `interval` days are a whole number of
        // their periods, and the time of day stays the start's.
        let (months, days) = match self.rule.get_freq() {
            Frequency::Yearly => (12 * interval, 0),
            Frequency::Monthly => (interval, 0),
            Frequency::Weekly => (0, 7 * interval),
            _ => (0, interval),
        };
        let at = |k: u32| -> Option<NaiveDateTime> {
            if months > 0 {
                // A day of month that does not exist is clamped to the month's last:
                // only the instant matters, the rule's own days of month are filled in.
                self.start
                    .checked_add_months(Months::new(k.checked_mul(months)?))
            } else {
                self.start
                    .checked_add_days(Days::new(u64::from(k.checked_mul(days)?)))
            }
        };
        let (between, step) = if months > 0 {
            let between = (from.year() - self.start.year()) * 12 + from.month() as i32
                - self.start.month() as i32;
            (i64::from(between), months)
        } else {
            ((from - self.start).num_days(), days)
        };
        let mut k = u32::try_from(between.max(0)).ok()?.checked_div(step)?;
        while k > 0 {
            if let Some(anchor) = at(k).filter(|a| *a <= from) {
                // A time in a DST gap is not a local time the walk can start from.
                if !matches!(self.tz.from_local_datetime(&anchor), LocalResult::None) {
                    return Some(anchor);
                }
            }
            k -= 1;
        }
        None
    }

    /// The rule's original local starts from `from` on, in order, lazily.
    fn originals_from(&self, from: NaiveDateTime) -> impl Iterator<Item = NaiveDateTime> {
        let start = self.anchor(from).unwrap_or(self.start);
        // The start is checked and the anchor never lies in a gap: this is exact.
        let dt_start = resolve_lenient(self.tz, start).with_timezone(&rrule::Tz::Tz(self.tz));
        // `limit` stops a rule that can never match (30 February) instead of looping.
        let set = RRuleSet::new(dt_start).rrule(self.rule.clone()).limit();
        let counted = self.rule.get_count().is_some();
        (&set)
            .into_iter()
            .take(if counted { MAX_EXPANSION } else { usize::MAX })
            .map(|t| t.naive_local())
            .skip_while(move |t| *t < from)
    }
}

/// The occurrences a tick looks at: those ending after its `after` and starting by its
/// horizon, and when the first one beyond the horizon starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// In order of original start; cancelled ones included (flagged).
    pub occurrences: Vec<Occurrence>,
    /// The start of the first occurrence (not cancelled) after the horizon.
    pub next_start: Option<DateTime<Utc>>,
}

impl MeetingSpec {
    fn rule(&self, tz: Tz) -> Result<Option<Rule>, TimeError> {
        let Some(text) = &self.recurrence else {
            return Ok(None);
        };
        let text = text.trim().trim_start_matches("RRULE:");
        let parsed: RRule<Unvalidated> =
            text.parse().map_err(|e| TimeError::Rule(format!("{e}")))?;
        let start = resolve("start", tz, self.start)?.instant;
        let rule = parsed
            .validate(start.with_timezone(&rrule::Tz::Tz(tz)))
            .map_err(|e| TimeError::Rule(format!("{e}")))?;
        if rule.get_count().is_some_and(|c| c as usize > MAX_EXPANSION) {
            return Err(TimeError::Rule(format!(
                "COUNT may be at most {MAX_EXPANSION}; leave it out for a series without end"
            )));
        }
        Ok(Some(Rule {
            rule,
            tz,
            start: self.start,
        }))
    }

    /// Checks the rule against the start (`validate` reports its errors).
    pub(super) fn check_rule(&self, tz: Tz) -> Result<(), TimeError> {
        self.rule(tz).map(|_| ())
    }

    /// The series' original local starts from `from` on, in order, lazily (a series
    /// without a rule has one).
    fn originals_from(
        &self,
        tz: Tz,
        from: NaiveDateTime,
    ) -> Result<Box<dyn Iterator<Item = NaiveDateTime>>, TimeError> {
        Ok(match self.rule(tz)? {
            None => Box::new(std::iter::once(self.start).filter(move |o| *o >= from)),
            Some(rule) => Box::new(rule.originals_from(from)),
        })
    }

    fn override_of(&self, original: NaiveDateTime) -> Option<&Override> {
        self.overrides.iter().find(|o| o.original == original)
    }

    fn occurrence(&self, tz: Tz, original: NaiveDateTime, over: Option<&Override>) -> Occurrence {
        let (local_start, local_end) = match over {
            Some(o) => (o.start, o.end),
            None => (original, original + (self.end - self.start)),
        };
        Occurrence {
            original,
            start: resolve_lenient(tz, local_start),
            end: resolve_lenient(tz, local_end),
            local_start,
            local_end,
            cancelled: self.cancelled.contains(&original),
            moved: over.is_some(),
        }
    }

    /// Where a walk for occurrences ending after `after` starts, in local time: the
    /// series' length (and a margin) before it, or the series' start.
    fn walk_from(&self, tz: Tz, after: DateTime<Utc>) -> NaiveDateTime {
        if after <= resolve_lenient(tz, self.start) {
            return self.start;
        }
        after
            .with_timezone(&tz)
            .naive_local()
            .checked_sub_signed(self.end - self.start)
            .and_then(|l| l.checked_sub_signed(margin()))
            .map_or(self.start, |l| l.max(self.start))
    }

    /// The overrides as occurrences, in order of original start.
    fn moved(&self, tz: Tz) -> Vec<Occurrence> {
        let mut moved: Vec<Occurrence> = self
            .overrides
            .iter()
            .map(|o| self.occurrence(tz, o.original, Some(o)))
            .collect();
        moved.sort_by_key(|o| o.original);
        moved
    }

    /// Occurrences whose end is after `after`, in order of original start, at most
    /// `limit`; cancelled ones included (flagged) so callers can show them. The walk
    /// starts near `after`, so its cost is `limit`'s, not the series' age.
    pub fn occurrences(
        &self,
        after: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Occurrence>, TimeError> {
        let tz = self.tz()?;
        let mut plain = self
            .originals_from(tz, self.walk_from(tz, after))?
            .filter(|o| self.override_of(*o).is_none())
            .map(|o| self.occurrence(tz, o, None))
            .filter(|o| o.end > after)
            .peekable();
        let mut moved = self
            .moved(tz)
            .into_iter()
            .filter(|o| o.end > after)
            .peekable();
        let mut out = Vec::new();
        while out.len() < limit {
            let take_moved = match (plain.peek(), moved.peek()) {
                (None, None) => break,
                (Some(p), Some(m)) => m.original < p.original,
                (None, Some(_)) => true,
                (Some(_), None) => false,
            };
            out.extend(if take_moved {
                moved.next()
            } else {
                plain.next()
            });
        }
        Ok(out)
    }

    /// The occurrences that end after `after` and start by `horizon`, and the start of
    /// the first one beyond: what one tick needs, walked over that window only (and
    /// past it over cancelled occurrences until one is not).
    pub fn window(
        &self,
        after: DateTime<Utc>,
        horizon: DateTime<Utc>,
    ) -> Result<Window, TimeError> {
        let tz = self.tz()?;
        let mut occurrences = Vec::new();
        let mut next_start: Option<DateTime<Utc>> = None;
        for original in self.originals_from(tz, self.walk_from(tz, after))? {
            if self.override_of(original).is_some() {
                continue;
            }
            let o = self.occurrence(tz, original, None);
            if o.start > horizon {
                if !o.cancelled {
                    next_start = Some(o.start);
                    break;
                }
            } else if o.end > after {
                occurrences.push(o);
            }
        }
        for o in self.moved(tz) {
            if o.start > horizon {
                if !o.cancelled {
                    next_start = Some(next_start.map_or(o.start, |n| n.min(o.start)));
                }
            } else if o.end > after {
                occurrences.push(o);
            }
        }
        occurrences.sort_by_key(|o| o.original);
        Ok(Window {
            occurrences,
            next_start,
        })
    }

    /// Whether `original` is an occurrence of the series (a start the rule produces).
    pub fn has_occurrence(&self, original: NaiveDateTime) -> Result<bool, TimeError> {
        let tz = self.tz()?;
        Ok(self
            .originals_from(tz, original)?
            .take_while(|o| *o <= original)
            .any(|o| o == original))
    }

    /// The last original start the rule produces that `keep` accepts, for a bounded
    /// series: walked back from `UNTIL` a widening stretch at a time, or (`COUNT`)
    /// from the start.
    fn last_original(
        &self,
        tz: Tz,
        keep: impl Fn(NaiveDateTime) -> bool,
    ) -> Result<Option<NaiveDateTime>, TimeError> {
        let Some(rule) = self.rule(tz)? else {
            return Ok(Some(self.start).filter(|s| keep(*s)));
        };
        let until = match (rule.rule.get_count(), rule.rule.get_until()) {
            (Some(_), _) => return Ok(rule.originals_from(self.start).filter(|o| keep(*o)).last()),
            (None, Some(until)) => until.with_timezone(&tz).naive_local(),
            (None, None) => return Ok(None),
        };
        let mut span = chrono::Duration::days(32);
        loop {
            let from = until
                .checked_sub_signed(span)
                .map_or(self.start, |f| f.max(self.start));
            if let Some(last) = rule.originals_from(from).filter(|o| keep(*o)).last() {
                return Ok(Some(last));
            }
            if from <= self.start {
                return Ok(None);
            }
            span = span * 2;
        }
    }

    /// The end of the last occurrence that takes place, for a bounded series.
    pub fn last_end(&self) -> Result<Option<DateTime<Utc>>, TimeError> {
        if !self.is_bounded() {
            return Ok(None);
        }
        let tz = self.tz()?;
        let plain = self.last_original(tz, |o| {
            !self.cancelled.contains(&o) && self.override_of(o).is_none()
        })?;
        let plain = plain.map(|o| self.occurrence(tz, o, None).end);
        let moved = self
            .moved(tz)
            .into_iter()
            .filter(|o| !o.cancelled)
            .map(|o| o.end)
            .max();
        Ok(plain.max(moved))
    }

    /// The calendar years the series spans (for VTIMEZONE): first to last occurrence
    /// (cancelled and moved ones included, their `EXDATE` and `RECURRENCE-ID` need the
    /// zone too), or for a series without end, five years from its start.
    pub fn years(&self) -> Result<(i32, i32), TimeError> {
        let first = self.start.year();
        if !self.is_bounded() {
            return Ok((first, first + 5));
        }
        let tz = self.tz()?;
        let last = self
            .last_original(tz, |_| true)?
            .map(|o| (o + (self.end - self.start)).year())
            .into_iter()
            .chain(self.overrides.iter().map(|o| o.end.year()))
            .max()
            .unwrap_or(first);
        Ok((first, last.max(first)))
    }

    /// How many occurrences (not cancelled) ended by `now`: walked from the start once,
    /// for the attendance summary.
    pub fn ended_by(&self, now: DateTime<Utc>) -> Result<usize, TimeError> {
        let tz = self.tz()?;
        let mut count = 0;
        for original in self.originals_from(tz, self.start)? {
            if self.override_of(original).is_some() || self.cancelled.contains(&original) {
                continue;
            }
            let o = self.occurrence(tz, original, None);
            if o.end > now {
                break;
            }
            count += 1;
        }
        let moved = self.moved(tz);
        Ok(count
            + moved
                .iter()
                .filter(|o| !o.cancelled && o.end <= now)
                .count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meetings::schedule::Person;

    fn local(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M").unwrap()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn spec(start: &str, minutes: i64, zone: &str, rule: &str) -> MeetingSpec {
        MeetingSpec {
            title: "Standup".into(),
            description: String::new(),
            timezone: zone.into(),
            start: local(start),
            end: local(start) + chrono::Duration::minutes(minutes),
            location: None,
            join_url: None,
            organizer: Person {
                email: "org@example.com".into(),
                name: None,
            },
            recurrence: Some(rule.into()),
            reminders: vec![],
            cancelled: vec![],
            overrides: vec![],
            organizer_digest: None,
        }
    }

    /// The series' original starts up to `until`, walked from its first the plain way:
    /// what the windowed walk must agree with.
    fn reference(s: &MeetingSpec, until: NaiveDateTime) -> Vec<NaiveDateTime> {
        let tz = s.tz().unwrap();
        let rule: RRule<Unvalidated> = s.recurrence.as_ref().unwrap().parse().unwrap();
        let start = resolve("start", tz, s.start).unwrap().instant;
        let set = rule.build(start.with_timezone(&rrule::Tz::Tz(tz))).unwrap();
        (&set)
            .into_iter()
            .map(|t| t.naive_local())
            .take_while(|t| *t <= until)
            .collect()
    }

    #[test]
    fn the_windowed_walk_finds_exactly_the_occurrences_of_a_walk_from_the_start() {
        // Rules whose periods differ (years, months, weeks, days, hours), with
        // intervals, set positions, days that some months lack, and times in DST gaps.
        let cases = [
            ("2006-01-02T09:00", "UTC", "FREQ=DAILY"),
            ("2006-01-02T09:00", "Europe/Berlin", "FREQ=DAILY;INTERVAL=3"),
            ("2006-03-01T02:30", "Europe/Berlin", "FREQ=DAILY"),
            (
                "2006-01-05T16:00",
                "America/New_York",
                "FREQ=WEEKLY;INTERVAL=2;BYDAY=MO,TH",
            ),
            (
                "2006-01-03T10:00",
                "Europe/Berlin",
                "FREQ=WEEKLY;INTERVAL=3;WKST=SU;BYDAY=SU,TU",
            ),
            ("2006-01-31T10:00", "Europe/Berlin", "FREQ=MONTHLY"),
            (
                "2006-01-27T10:00",
                "America/New_York",
                "FREQ=MONTHLY;INTERVAL=5;BYDAY=-1FR",
            ),
            (
                "2006-01-31T18:00",
                "UTC",
                "FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-1",
            ),
            ("2008-02-29T12:00", "Asia/Tokyo", "FREQ=YEARLY"),
            (
                "2006-06-15T08:00",
                "Australia/Sydney",
                "FREQ=YEARLY;INTERVAL=2;BYMONTH=6,12",
            ),
            (
                "2006-01-01T10:00",
                "Europe/Berlin",
                "FREQ=HOURLY;INTERVAL=7;BYMINUTE=0",
            ),
            (
                "2006-01-02T09:00",
                "UTC",
                "FREQ=DAILY;UNTIL=20270101T000000Z",
            ),
        ];
        let until = local("2035-01-01T00:00");
        for (start, zone, rule) in cases {
            let s = spec(start, 90, zone, rule);
            s.validate().unwrap();
            let tz = s.tz().unwrap();
            let all = reference(&s, until);
            assert!(all.len() > 5, "{rule}: {}", all.len());
            for after in [
                "2006-01-01T00:00:00Z",
                "2011-07-17T13:45:00Z",
                "2019-03-31T00:30:00Z",
                "2026-10-25T01:15:00Z",
                "2026-12-30T23:00:00Z",
            ] {
                let after = utc(after);
                let expected: Vec<NaiveDateTime> = all
                    .iter()
                    .copied()
                    .filter(|o| s.occurrence(tz, *o, None).end > after)
                    .take(12)
                    .collect();
                let got: Vec<NaiveDateTime> = s
                    .occurrences(after, 12)
                    .unwrap()
                    .iter()
                    .map(|o| o.original)
                    // The reference stops at `until`.
                    .filter(|o| *o <= until)
                    .collect();
                assert_eq!(got, expected, "{rule} in {zone} after {after}");
                let horizon = after + chrono::Duration::days(40);
                let window = s.window(after, horizon).unwrap();
                let expected: Vec<NaiveDateTime> = all
                    .iter()
                    .copied()
                    .filter(|o| {
                        let o = s.occurrence(tz, *o, None);
                        o.end > after && o.start <= horizon
                    })
                    .collect();
                let got: Vec<NaiveDateTime> =
                    window.occurrences.iter().map(|o| o.original).collect();
                assert_eq!(got, expected, "{rule} in {zone}, window after {after}");
                let next = all
                    .iter()
                    .map(|o| s.occurrence(tz, *o, None).start)
                    .find(|t| *t > horizon);
                if next.is_some_and(|n| n < resolve_lenient(tz, until)) {
                    assert_eq!(window.next_start, next, "{rule} in {zone} after {after}");
                }
                for o in expected.iter().take(3) {
                    assert!(s.has_occurrence(*o).unwrap(), "{rule}: {o}");
                    let off = *o + chrono::Duration::minutes(1);
                    assert!(!s.has_occurrence(off).unwrap(), "{rule}: {off}");
                }
            }
        }
    }

    #[test]
    fn an_endless_series_started_twenty_years_ago_walks_only_the_window_of_now() {
        // A daily series from January 2006: 7,300 occurrences lie before "now", more
        // than any walk from the start would go before giving up.
        let mut s = spec("2006-01-02T09:00", 30, "Europe/Berlin", "FREQ=DAILY");
        let now = utc("2026-03-27T12:00:00Z");
        s.cancelled = vec![local("2026-03-29T09:00"), local("2026-03-30T09:00")];
        s.overrides = vec![Override {
            original: local("2026-03-28T09:00"),
            start: local("2026-03-28T15:00"),
            end: local("2026-03-28T16:00"),
            title: None,
            location: None,
        }];
        let tz = s.tz().unwrap();
        let rule = s.rule(tz).unwrap().unwrap();
        // The walk starts at most one period (a day) before where it is asked to.
        let from = s.walk_from(tz, now - chrono::Duration::days(2));
        let anchor = rule.anchor(from).unwrap();
        assert!(
            anchor <= from && from - anchor < chrono::Duration::days(1),
            "{anchor}"
        );
        assert!(
            from - local("2026-03-25T09:00") < chrono::Duration::days(2),
            "{from}"
        );

        // A tick's window: from two days back to a 49-hour lookahead.
        let window = s
            .window(
                now - chrono::Duration::days(2),
                now + chrono::Duration::hours(49),
            )
            .unwrap();
        let got: Vec<_> = window
            .occurrences
            .iter()
            .map(|o| (o.original, o.start, o.cancelled, o.moved))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    local("2026-03-26T09:00"),
                    utc("2026-03-26T08:00:00Z"),
                    false,
                    false
                ),
                (
                    local("2026-03-27T09:00"),
                    utc("2026-03-27T08:00:00Z"),
                    false,
                    false
                ),
                (
                    local("2026-03-28T09:00"),
                    utc("2026-03-28T14:00:00Z"),
                    false,
                    true
                ),
                // Summer time from 29 March: 09:00 CEST is 07:00 UTC.
                (
                    local("2026-03-29T09:00"),
                    utc("2026-03-29T07:00:00Z"),
                    true,
                    false
                ),
            ]
        );
        // Beyond the horizon the cancelled 30 March is skipped: 31 March is next.
        assert_eq!(window.next_start, Some(utc("2026-03-31T07:00:00Z")));
        let next = s.occurrences(now, 3).unwrap();
        assert_eq!(
            next.iter().map(|o| o.original).collect::<Vec<_>>(),
            vec![
                local("2026-03-28T09:00"),
                local("2026-03-29T09:00"),
                local("2026-03-30T09:00")
            ]
        );
        // And it never ends: a hundred years on, there still are occurrences.
        let far = s.occurrences(utc("2126-01-01T00:00:00Z"), 2).unwrap();
        assert_eq!(far[0].original, local("2126-01-01T09:00"));
        assert!(s.has_occurrence(local("2026-03-27T09:00")).unwrap());
        assert_eq!(s.last_end().unwrap(), None);
        // The summary counts every occurrence that took place, all 7,390 of them
        // (2 January 2006 to 27 March 2026; the moved one on 28 March not yet).
        assert_eq!(s.ended_by(now).unwrap(), 7_390);
    }

    #[test]
    fn a_series_until_a_far_date_ends_at_its_last_occurrence_not_cancelled() {
        let mut s = spec(
            "2006-01-02T09:00",
            30,
            "Europe/Berlin",
            "FREQ=DAILY;UNTIL=20451231T235959Z",
        );
        assert!(s.is_bounded());
        assert_eq!(s.last_end().unwrap(), Some(utc("2045-12-31T08:30:00Z")));
        assert_eq!(s.years().unwrap(), (2006, 2045));
        // The last month cancelled: the series ends with November's last day.
        let mut day = local("2045-12-01T09:00");
        while day.year() == 2045 {
            s.cancelled.push(day);
            day += chrono::Duration::days(1);
        }
        assert_eq!(s.last_end().unwrap(), Some(utc("2045-11-30T08:30:00Z")));
        // Moving an earlier occurrence past that makes it the last.
        s.overrides.push(Override {
            original: local("2045-11-30T09:00"),
            start: local("2046-01-05T10:00"),
            end: local("2046-01-05T11:00"),
            title: None,
            location: None,
        });
        assert_eq!(s.last_end().unwrap(), Some(utc("2046-01-05T10:00:00Z")));
        assert_eq!(s.years().unwrap(), (2006, 2046));
    }

    #[test]
    fn a_count_above_the_bound_is_refused_naming_the_rule() {
        let s = spec("2026-01-05T09:00", 30, "UTC", "FREQ=DAILY;COUNT=5001");
        let err = s.validate().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("recurrence: COUNT may be at most 5000"),
            "{err}"
        );
        let s = spec("2026-01-05T09:00", 30, "UTC", "FREQ=DAILY;COUNT=5000");
        s.validate().unwrap();
        assert_eq!(s.last_end().unwrap(), Some(utc("2039-09-13T09:30:00Z")));
    }
}
