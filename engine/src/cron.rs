//! Cron expressions for schedules: crontab(5) syntax, fire times in an IANA time zone,
//! exact daylight-saving rules. Pure: every instant is passed in, nothing reads a clock.
//!
//! # Syntax
//! The Vixie cron / crontab(5) rules users know:
//! - 5 fields, `minute hour day-of-month month day-of-week`, or 6 with a leading
//!   `second` field. Fields are separated by spaces or tabs.
//! - Each field is a comma list of items: `*`, a value `5`, a range `1-5`, each with an
//!   optional step (`*/15`, `1-30/2`); `5/15` means `5-<max>/15` (as in cronie and
//!   Quartz). Ranges must not be reversed (`5-1` is an error), except that a weekday
//!   range may end on Sunday as `0` or `SUN` (`FRI-SUN`).
//! - Months `JAN`..`DEC` and weekdays `SUN`..`SAT` by name (3 letters or in full, any
//!   case), in values, ranges and lists. Weekday `0` and `7` are both Sunday.
//! - Macros: `@yearly` = `@annually` (`0 0 1 1 *`), `@monthly` (`0 0 1 * *`), `@weekly`
//!   (`0 0 * * 0`), `@daily` = `@midnight` (`0 0 * * *`), `@hourly` (`0 * * * *`).
//!   `@reboot` is rejected: a schedule fires at times of day, and "whenever the server
//!   starts" is not one (a restart would also re-fire it).
//! - Day-of-month and day-of-week: if both are restricted, a day matches when **either**
//!   does. "Restricted" is crontab(5)'s definition: the field does not start with `*`.
//!   So `0 0 13 * FRI` fires every Friday and every 13th, while `0 0 */10 * MON` fires
//!   on Mondays that are the 1st, 11th, 21st or 31st (Vixie cron and cronie do the
//!   same). `?` is accepted in these two fields as a synonym for `*` (Quartz habit).
//! - An expression that can never fire (`0 0 30 2 *`) is an error.
//! - Fire times exist up to the end of 2100 (the `cron` crate's year range).
//!
//! # How the `cron` crate is used
//! The crate's conventions differ: it needs the seconds field, counts weekday 1 as
//! Sunday (rejecting 0) and combines day-of-month with day-of-week by AND. So we parse
//! and validate each field ourselves (the error messages are ours), reduce it to the set
//! of values it selects, and hand the crate explicit lists in its own numbering. When
//! both day fields are restricted the crate gets two schedules, one with day-of-week
//! `*` and one with day-of-month `*`, and a time matches if either does.
//!
//! The crate only answers "which wall-clock times match": it iterates in a fixed-offset
//! "floating" zone (UTC standing in for naive local time). Mapping those to instants in
//! the real zone is done here, because the crate's own handling in a `chrono_tz::Tz`
//! (read in its 0.15 source) skips local times that fall in a daylight-saving gap and
//! yields both occurrences of a repeated local time.
//!
//! # Daylight saving
//! The schedule's zone decides which local times match; what happens to a local time
//! that does not exist, or that exists twice, depends on the kind of schedule, as in
//! Vixie cron:
//! - **Fixed-time schedules** (none of the time fields, second/minute/hour, starts with
//!   `*`; e.g. `30 2 * * *`, `0,30 2 * * *`, `@daily`): a local time inside a
//!   spring-forward gap fires at the first instant after the gap (02:30 in Berlin on the
//!   last Sunday of March fires at 03:00 CEST); several such times collapse into that
//!   one fire. A local time that occurs twice (fall back) fires once, at its first
//!   occurrence (the earlier UTC instant).
//! - **Wildcard schedules** (the second, minute or hour field starts with `*`; e.g.
//!   `0 * * * *`, `*/15 * * * *`, `* * * * *`, `@hourly`): they follow real time. They
//!   fire at every instant whose local time matches: a repeated local time fires at
//!   both of its occurrences (`0 * * * *` fires at 01:00 EDT and again at 01:00 EST in
//!   New York, one real hour apart), and a local time that does not exist is skipped
//!   (`0 * * * *` goes 01:00 EST, 03:00 EDT: one real hour). So an hourly or
//!   every-15-minutes job keeps its real-time rhythm through both transitions.
//!
//! # Catch-up
//! A scheduler keeps the last fire time it handled and asks [`CronSchedule::due`] at
//! `now`: it gets the latest fire time in `(last, now]` and whether it is more than the
//! grace period old (missed: skip it, or with run_once fire it once). Only the latest
//! due time matters; older ones in the window are superseded.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// Why an expression or a time zone was rejected. The message says which field and
/// which value, so it can be shown to the user as is (the API's 422 detail).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CronError {
    #[error("cron expression is empty")]
    Empty,
    #[error(
        "cron expression has {0} fields, expected 5 (minute hour day-of-month month \
         day-of-week) or 6 (second first)"
    )]
    FieldCount(usize),
    #[error(
        "`@reboot` is not supported: a schedule fires at times of day, not when the \
         server starts"
    )]
    Reboot,
    #[error(
        "unknown macro `{0}`: expected @yearly, @annually, @monthly, @weekly, @daily, \
         @midnight or @hourly"
    )]
    UnknownMacro(String),
    #[error("macro `{0}` must be the whole expression")]
    MacroWithFields(String),
    /// A field is malformed or holds a value out of range.
    #[error("{field} field `{text}`: {problem}")]
    Field {
        field: CronField,
        text: String,
        problem: String,
    },
    #[error(
        "`{0}` never fires: none of the selected months has any of the selected days \
         of the month"
    )]
    NeverFires(String),
    #[error("time zone is empty: expected an IANA name such as `Europe/Berlin` or `UTC`")]
    EmptyTimeZone,
    #[error("unknown time zone `{zone}`: {}", zone_hint(.suggestion))]
    UnknownTimeZone {
        zone: String,
        /// The zone's correct spelling when only the case was wrong.
        suggestion: Option<String>,
    },
    /// Our translation was refused by the `cron` crate: a bug here, not the user's.
    #[error("internal error: the cron crate rejected the translated expression `{translated}`: {reason}")]
    Translation { translated: String, reason: String },
}

fn zone_hint(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(name) => format!("zone names are case-sensitive, did you mean `{name}`?"),
        None => {
            "expected an IANA name such as `Europe/Berlin`, `America/New_York` or `UTC`".to_owned()
        }
    }
}

/// A field of a cron expression, as named in error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CronField {
    Second,
    Minute,
    Hour,
    DayOfMonth,
    Month,
    DayOfWeek,
}

impl fmt::Display for CronField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CronField::Second => "second",
            CronField::Minute => "minute",
            CronField::Hour => "hour",
            CronField::DayOfMonth => "day-of-month",
            CronField::Month => "month",
            CronField::DayOfWeek => "day-of-week",
        })
    }
}

const MONTH_NAMES: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];
const DAY_NAMES: [&str; 7] = [
    "sunday",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
];

impl CronField {
    /// Values accepted in the field (weekday 7 is Sunday again).
    fn bounds(self) -> (u32, u32) {
        match self {
            CronField::Second | CronField::Minute => (0, 59),
            CronField::Hour => (0, 23),
            CronField::DayOfMonth => (1, 31),
            CronField::Month => (1, 12),
            CronField::DayOfWeek => (0, 7),
        }
    }

    /// What `*` (and the open end of `5/15`) covers.
    fn full_range(self) -> (u32, u32) {
        match self {
            CronField::DayOfWeek => (0, 6),
            other => other.bounds(),
        }
    }

    fn expected(self) -> &'static str {
        match self {
            CronField::Second | CronField::Minute => "0-59",
            CronField::Hour => "0-23",
            CronField::DayOfMonth => "1-31",
            CronField::Month => "1-12 or JAN-DEC",
            CronField::DayOfWeek => "0-7 or SUN-SAT",
        }
    }

    fn name_value(self, word: &str) -> Option<u32> {
        let names: &[&str] = match self {
            CronField::Month => &MONTH_NAMES,
            CronField::DayOfWeek => &DAY_NAMES,
            _ => return None,
        };
        let word = word.to_ascii_lowercase();
        let index = names
            .iter()
            .position(|full| word == full[..3] || word == *full)?;
        // Months count from 1, weekdays from 0 (Sunday).
        Some(index as u32 + u32::from(self == CronField::Month))
    }
}

/// The values one field selects, as a bit set, and whether it starts with `*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FieldSet {
    bits: u64,
    /// Starts with `*` (or is `?`): "unrestricted" for crontab(5)'s day rule and a
    /// wildcard for the daylight-saving rule.
    star: bool,
}

impl FieldSet {
    fn contains(self, value: u32) -> bool {
        self.bits & (1 << value) != 0
    }
}

fn parse_field(field: CronField, text: &str) -> Result<FieldSet, CronError> {
    let fail = |problem: String| CronError::Field {
        field,
        text: text.to_owned(),
        problem,
    };
    let day_field = matches!(field, CronField::DayOfMonth | CronField::DayOfWeek);
    let (min, max) = field.bounds();
    let (full_min, full_max) = field.full_range();
    if text == "?" {
        if !day_field {
            return Err(fail(
                "`?` is only allowed in the day-of-month and day-of-week fields".to_owned(),
            ));
        }
        let bits = (full_min..=full_max).fold(0, |bits, v| bits | 1 << v);
        return Ok(FieldSet { bits, star: true });
    }

    let value = |item: &str, word: &str| -> Result<u32, CronError> {
        if word.is_empty() {
            return Err(fail(format!("`{item}` is missing a value")));
        }
        if word.bytes().all(|b| b.is_ascii_digit()) {
            return match word.parse::<u32>() {
                Ok(v) if (min..=max).contains(&v) => Ok(v),
                _ => Err(fail(format!("{word} is out of range {min}-{max}"))),
            };
        }
        field.name_value(word).ok_or_else(|| {
            fail(match field {
                CronField::Month => format!("`{word}` is not a month ({})", field.expected()),
                CronField::DayOfWeek => {
                    format!("`{word}` is not a day of the week ({})", field.expected())
                }
                _ => format!("`{word}` is not a number ({})", field.expected()),
            })
        })
    };

    let mut bits = 0u64;
    for item in text.split(',') {
        if item.is_empty() {
            return Err(fail("empty item in the list".to_owned()));
        }
        let (range, step) = match item.split_once('/') {
            None => (item, None),
            Some((range, step)) => {
                let count = full_max - full_min + 1;
                let step = if step.is_empty() {
                    return Err(fail(format!("`{item}` is missing the step after `/`")));
                } else if !step.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(fail(format!("step `{step}` in `{item}` is not a number")));
                } else {
                    step.parse::<u32>().unwrap_or(u32::MAX)
                };
                if step == 0 || step > count {
                    return Err(fail(format!(
                        "step {step} in `{item}` must be between 1 and {count}"
                    )));
                }
                (range, Some(step))
            }
        };
        let (start, end) = if range == "*" {
            (full_min, full_max)
        } else if let Some((a, b)) = range.split_once('-') {
            let start = value(item, a)?;
            let mut end = value(item, b)?;
            if start > end && field == CronField::DayOfWeek && end == 0 {
                end = 7; // `FRI-SUN`: Sunday closes the week.
            }
            if start > end {
                return Err(fail(format!(
                    "range `{range}` is reversed: {start} comes after {end}"
                )));
            }
            (start, end)
        } else {
            let start = value(item, range)?;
            match step {
                Some(_) => (start, full_max.max(start)),
                None => (start, start),
            }
        };
        for v in (start..=end).step_by(step.unwrap_or(1) as usize) {
            // Weekday 7 is Sunday, stored as 0.
            let v = if field == CronField::DayOfWeek && v == 7 {
                0
            } else {
                v
            };
            bits |= 1 << v;
        }
    }
    Ok(FieldSet {
        bits,
        star: text.starts_with('*'),
    })
}

/// A parsed expression: the value set of each field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fields {
    /// `None` for the 5-field form (second 0).
    seconds: Option<FieldSet>,
    minutes: FieldSet,
    hours: FieldSet,
    days_of_month: FieldSet,
    months: FieldSet,
    /// 0 is Sunday.
    days_of_week: FieldSet,
}

fn macro_expansion(word: &str) -> Result<&'static str, CronError> {
    Ok(match word.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *",
        "@monthly" => "0 0 1 * *",
        "@weekly" => "0 0 * * 0",
        "@daily" | "@midnight" => "0 0 * * *",
        "@hourly" => "0 * * * *",
        "@reboot" => return Err(CronError::Reboot),
        _ => return Err(CronError::UnknownMacro(word.to_owned())),
    })
}

impl Fields {
    fn parse(expression: &str) -> Result<Self, CronError> {
        let words: Vec<&str> = expression.split_whitespace().collect();
        let Some(first) = words.first() else {
            return Err(CronError::Empty);
        };
        if first.starts_with('@') {
            let expansion = macro_expansion(first)?;
            if words.len() > 1 {
                return Err(CronError::MacroWithFields((*first).to_owned()));
            }
            return Self::parse(expansion);
        }
        let (seconds, rest) = match words.len() {
            5 => (None, &words[..]),
            6 => (Some(parse_field(CronField::Second, words[0])?), &words[1..]),
            n => return Err(CronError::FieldCount(n)),
        };
        let fields = Fields {
            seconds,
            minutes: parse_field(CronField::Minute, rest[0])?,
            hours: parse_field(CronField::Hour, rest[1])?,
            days_of_month: parse_field(CronField::DayOfMonth, rest[2])?,
            months: parse_field(CronField::Month, rest[3])?,
            days_of_week: parse_field(CronField::DayOfWeek, rest[4])?,
        };
        if fields.day_of_month_alone_applies() && !fields.some_month_has_a_selected_day() {
            return Err(CronError::NeverFires(expression.to_owned()));
        }
        Ok(fields)
    }

    /// crontab(5): when both day fields are restricted (neither starts with `*`), a day
    /// matches if either matches.
    fn days_either(&self) -> bool {
        !self.days_of_month.star && !self.days_of_week.star
    }

    /// Whether every fire day must match day-of-month (then an impossible
    /// day-of-month/month pair means the schedule never fires).
    fn day_of_month_alone_applies(&self) -> bool {
        !self.days_either()
    }

    fn some_month_has_a_selected_day(&self) -> bool {
        // February counts 29 days: leap years come.
        const LONGEST: [u32; 12] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        (1..=12u32).any(|month| {
            self.months.contains(month)
                && (1..=LONGEST[month as usize - 1]).any(|day| self.days_of_month.contains(day))
        })
    }

    /// Wildcard schedules follow real time across daylight-saving changes; see the
    /// module docs.
    fn wildcard_time(&self) -> bool {
        self.seconds.is_some_and(|s| s.star) || self.minutes.star || self.hours.star
    }

    /// Expressions for the `cron` crate (seconds first, weekday 1 = Sunday, day fields
    /// combined by AND), whose union is this expression.
    fn translate(&self) -> Vec<String> {
        let seconds = self
            .seconds
            .map_or_else(|| "0".to_owned(), |s| list(s.bits, 0, 59, 0));
        let minutes = list(self.minutes.bits, 0, 59, 0);
        let hours = list(self.hours.bits, 0, 23, 0);
        let months = list(self.months.bits, 1, 12, 0);
        let days_of_month = list(self.days_of_month.bits, 1, 31, 0);
        let days_of_week = list(self.days_of_week.bits, 0, 6, 1);
        let time = format!("{seconds} {minutes} {hours}");
        if self.days_either() {
            vec![
                format!("{time} {days_of_month} {months} *"),
                format!("{time} * {months} {days_of_week}"),
            ]
        } else {
            vec![format!("{time} {days_of_month} {months} {days_of_week}")]
        }
    }

    #[cfg(test)]
    fn matches(&self, local: NaiveDateTime) -> bool {
        use chrono::Datelike;
        let day_of_month = self.days_of_month.contains(local.day());
        let day_of_week = self
            .days_of_week
            .contains(local.weekday().num_days_from_sunday());
        let day = if self.days_either() {
            day_of_month || day_of_week
        } else {
            day_of_month && day_of_week
        };
        self.seconds
            .map_or(local.second() == 0, |s| s.contains(local.second()))
            && self.minutes.contains(local.minute())
            && self.hours.contains(local.hour())
            && self.months.contains(local.month())
            && day
    }
}

/// `*` if `bits` covers `min..=max`, else the explicit list, each value plus `shift`.
fn list(bits: u64, min: u32, max: u32, shift: u32) -> String {
    let values: Vec<u32> = (min..=max).filter(|v| bits & (1 << v) != 0).collect();
    if values.len() == (max - min + 1) as usize {
        return "*".to_owned();
    }
    values
        .iter()
        .map(|v| (v + shift).to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_timezone(name: &str) -> Result<Tz, CronError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(CronError::EmptyTimeZone);
    }
    name.parse::<Tz>().map_err(|_| CronError::UnknownTimeZone {
        zone: name.to_owned(),
        suggestion: chrono_tz::TZ_VARIANTS
            .iter()
            .find(|tz| tz.name().eq_ignore_ascii_case(name))
            .map(|tz| tz.name().to_owned()),
    })
}

/// The latest fire time due at `now`, as [`CronSchedule::due`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// The first fire time after `last`; equal to `latest` unless several came due.
    pub earliest: DateTime<Utc>,
    /// The latest fire time at or before `now`: the one to act on. Earlier ones in the
    /// window are superseded by it.
    pub latest: DateTime<Utc>,
    /// `latest` is more than the grace period before `now`: skip it or, with run_once,
    /// fire once for it.
    pub missed: bool,
}

/// How daylight-saving gaps and repeats are handled; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DstRule {
    /// Gap: fire at the first instant after it. Repeat: fire at the first occurrence.
    FixedTime,
    /// Gap: no fire. Repeat: fire at each occurrence.
    Wildcard,
}

/// A cron expression in a time zone. See the module docs for syntax and rules.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    expression: String,
    tz: Tz,
    /// A wall-clock time matches if it matches any of these (two when both day fields
    /// are restricted). Evaluated in UTC standing for naive local time.
    plans: Vec<::cron::Schedule>,
    rule: DstRule,
    #[cfg(test)]
    fields: Fields,
}

const SECOND: TimeDelta = TimeDelta::seconds(1);
/// Longest daylight-saving gap searched for (Samoa skipped a whole day in 2011).
const MAX_GAP_SECONDS: i64 = 2 * 86_400;

impl CronSchedule {
    /// Parses `expression` (crontab(5) syntax, see the module docs) and the IANA
    /// `timezone` (e.g. `Europe/Berlin`, `UTC`; case-sensitive).
    pub fn parse(expression: &str, timezone: &str) -> Result<Self, CronError> {
        let expression = expression.trim();
        let fields = Fields::parse(expression)?;
        let tz = parse_timezone(timezone)?;
        let plans = fields
            .translate()
            .into_iter()
            .map(|translated| {
                ::cron::Schedule::from_str(&translated).map_err(|err| CronError::Translation {
                    reason: err.to_string(),
                    translated,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            expression: expression.to_owned(),
            tz,
            plans,
            rule: if fields.wildcard_time() {
                DstRule::Wildcard
            } else {
                DstRule::FixedTime
            },
            #[cfg(test)]
            fields,
        })
    }

    /// The expression as given (surrounding whitespace trimmed).
    pub fn expression(&self) -> &str {
        &self.expression
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The first fire time strictly after `after`, or `None` past the end of 2100.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Every local time with a fire instant after `after` is at or after this one
        // (the lower of the two readings if `after` is inside a repeated hour).
        let mut cursor = self.local_bound(after, false)?.checked_sub_signed(SECOND)?;
        let mut best: Option<DateTime<Utc>> = None;
        // Local times come in order; their first fire instants never decrease, so once
        // one is no earlier than the best found, none later can beat it.
        while let Some(local) = self.next_local(cursor) {
            cursor = local;
            let (first, second) = match self.resolve(local) {
                Resolved::Fires(first, second) => (first, second),
                Resolved::Gap { end, fire } => {
                    cursor = end.checked_sub_signed(SECOND).unwrap_or(local);
                    match fire {
                        Some(fire) => (fire, None),
                        None => continue,
                    }
                }
                Resolved::Unresolvable => continue,
            };
            if best.is_some_and(|best| first >= best) {
                break;
            }
            if first > after {
                best = Some(first);
            } else if let Some(second) = second.filter(|s| *s > after) {
                best = Some(best.map_or(second, |best| best.min(second)));
            }
        }
        best
    }

    /// The next `n` fire times after `after`, in order (fewer past the end of 2100).
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        let mut times = Vec::with_capacity(n.min(64));
        let mut cursor = after;
        while times.len() < n {
            let Some(next) = self.next_after(cursor) else {
                break;
            };
            times.push(next);
            cursor = next;
        }
        times
    }

    /// The last fire time at or before `at`.
    pub fn prev_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut cursor = self.local_bound(at, true)?.checked_add_signed(SECOND)?;
        let mut best: Option<DateTime<Utc>> = None;
        // Mirror of `next_after`: last fire instants never increase going back.
        while let Some(local) = self.prev_local(cursor) {
            cursor = local;
            let (first, second) = match self.resolve(local) {
                Resolved::Fires(first, second) => (first, second),
                Resolved::Gap { end: _, fire } => {
                    // Skip the rest of the gap (all of it maps to the same `fire`).
                    if let Some(edge) = gap_edge(self.tz, local, false) {
                        cursor = edge.checked_add_signed(SECOND).unwrap_or(local);
                    }
                    match fire {
                        Some(fire) => (fire, None),
                        None => continue,
                    }
                }
                Resolved::Unresolvable => continue,
            };
            let last = second.unwrap_or(first);
            if best.is_some_and(|best| last <= best) {
                break;
            }
            if last <= at {
                best = Some(last);
            } else if first <= at {
                best = Some(best.map_or(first, |best| best.max(first)));
            }
        }
        best
    }

    /// The latest fire time `t` with `after < t <= until`.
    pub fn latest_in(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if until <= after {
            return None;
        }
        self.prev_at_or_before(until).filter(|t| *t > after)
    }

    /// For a scheduler at `now` whose last handled fire time is `last`: the fire times
    /// due in `(last, now]`, if any. `missed` when the latest is more than `grace` old
    /// (the rule: 60 s). Afterwards the scheduler records `latest` as handled,
    /// fired or skipped, and waits for [`CronSchedule::next_after`]`(now)`.
    pub fn due(&self, last: DateTime<Utc>, now: DateTime<Utc>, grace: Duration) -> Option<Due> {
        let latest = self.latest_in(last, now)?;
        let earliest = self
            .next_after(last)
            .filter(|t| *t <= latest)
            .unwrap_or(latest);
        let grace = TimeDelta::from_std(grace).unwrap_or(TimeDelta::MAX);
        Some(Due {
            earliest,
            latest,
            missed: now - latest > grace,
        })
    }

    /// Bounds the local (wall-clock) times whose fire instants can lie after (`upper`
    /// false) or at/before (`upper` true) `t`: `t`'s local reading, taking the lower
    /// (resp. higher) of the two readings when `t`'s local time occurs twice. Whole
    /// seconds, since fire times are.
    fn local_bound(&self, t: DateTime<Utc>, upper: bool) -> Option<NaiveDateTime> {
        let local = t.with_timezone(&self.tz);
        let mut offset = local.offset().fix().local_minus_utc();
        if let LocalResult::Ambiguous(a, b) = self.tz.from_local_datetime(&local.naive_local()) {
            let (a, b) = (
                a.offset().fix().local_minus_utc(),
                b.offset().fix().local_minus_utc(),
            );
            offset = if upper { a.max(b) } else { a.min(b) };
        }
        t.naive_utc()
            .checked_add_signed(TimeDelta::seconds(i64::from(offset)))?
            .with_nanosecond(0)
    }

    /// The first matching wall-clock time strictly after `local`.
    fn next_local(&self, local: NaiveDateTime) -> Option<NaiveDateTime> {
        let floating = local.and_utc();
        self.plans
            .iter()
            .filter_map(|plan| plan.after(&floating).next())
            .map(|t| t.naive_utc())
            .min()
    }

    /// The last matching wall-clock time strictly before `local`.
    fn prev_local(&self, local: NaiveDateTime) -> Option<NaiveDateTime> {
        let floating = local.and_utc();
        self.plans
            .iter()
            .filter_map(|plan| plan.after(&floating).next_back())
            .map(|t| t.naive_utc())
            .max()
    }

    /// The instants at which the matching wall-clock time `local` fires.
    fn resolve(&self, local: NaiveDateTime) -> Resolved {
        match self.tz.from_local_datetime(&local) {
            LocalResult::Single(t) => Resolved::Fires(t.with_timezone(&Utc), None),
            LocalResult::Ambiguous(a, b) => {
                let (a, b) = (a.with_timezone(&Utc), b.with_timezone(&Utc));
                let (first, second) = (a.min(b), a.max(b));
                match self.rule {
                    DstRule::FixedTime => Resolved::Fires(first, None),
                    DstRule::Wildcard => Resolved::Fires(first, Some(second)),
                }
            }
            LocalResult::None => {
                let Some(end) = gap_edge(self.tz, local, true) else {
                    return Resolved::Unresolvable;
                };
                let fire = match self.rule {
                    DstRule::FixedTime => self
                        .tz
                        .from_local_datetime(&end)
                        .earliest()
                        .map(|t| t.with_timezone(&Utc)),
                    DstRule::Wildcard => None,
                };
                Resolved::Gap { end, fire }
            }
        }
    }
}

enum Resolved {
    /// The wall-clock time exists: its first instant, and the second when it occurs
    /// twice and the schedule fires at both.
    Fires(DateTime<Utc>, Option<DateTime<Utc>>),
    /// The wall-clock time falls in a gap ending (first existing time) at `end`;
    /// `fire` is the first instant after the gap for fixed-time schedules.
    Gap {
        end: NaiveDateTime,
        fire: Option<DateTime<Utc>>,
    },
    /// A gap longer than any known (no existing time within two days): no fire.
    Unresolvable,
}

/// The nearest wall-clock time to `local` (which does not exist) that exists, going
/// forward or backward, to the second. Gallops then bisects, so a gap of any length
/// costs a few dozen zone look-ups.
fn gap_edge(tz: Tz, local: NaiveDateTime, forward: bool) -> Option<NaiveDateTime> {
    let sign = if forward { 1 } else { -1 };
    let at = |seconds: i64| local.checked_add_signed(TimeDelta::seconds(sign * seconds));
    let exists = |seconds: i64| {
        at(seconds).is_some_and(|t| !matches!(tz.from_local_datetime(&t), LocalResult::None))
    };
    let (mut inside, mut step) = (0i64, 1i64);
    let mut outside = loop {
        let probe = inside + step;
        if probe > MAX_GAP_SECONDS {
            return None;
        }
        if exists(probe) {
            break probe;
        }
        inside = probe;
        step *= 2;
    };
    while outside - inside > 1 {
        let middle = inside + (outside - inside) / 2;
        if exists(middle) {
            outside = middle;
        } else {
            inside = middle;
        }
    }
    at(outside)
}

impl fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.expression, self.tz.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap_or_else(|err| panic!("bad test time {text}: {err}"))
            .with_timezone(&Utc)
    }

    fn schedule(expression: &str, zone: &str) -> CronSchedule {
        CronSchedule::parse(expression, zone)
            .unwrap_or_else(|err| panic!("`{expression}` in {zone}: {err}"))
    }

    /// `upcoming(after)` is exactly `expected`, and walking back from each fire time
    /// finds it and, one second earlier, the one before.
    fn check(expression: &str, zone: &str, after: &str, expected: &[&str]) {
        let s = schedule(expression, zone);
        let after = utc(after);
        let want: Vec<_> = expected.iter().map(|t| utc(t)).collect();
        let got = s.upcoming(after, want.len());
        assert_eq!(got, want, "`{expression}` in {zone} after {after}");
        for (i, fire) in got.iter().enumerate() {
            assert_eq!(s.prev_at_or_before(*fire), Some(*fire), "`{expression}`");
            let before = s.prev_at_or_before(*fire - SECOND);
            match i {
                0 => assert!(
                    before.is_none_or(|b| b <= after),
                    "`{expression}`: {before:?}"
                ),
                _ => assert_eq!(before, Some(got[i - 1]), "`{expression}` before {fire}"),
            }
        }
    }

    const JAN1: &str = "2025-01-01T00:00:00Z"; // a Wednesday

    #[test]
    fn next_fire_times_table() {
        #[rustfmt::skip]
        let table: &[(&str, &str, &str, &[&str])] = &[
            // Minutes: every, steps, lists, steps on ranges, `start/step`.
            ("* * * * *", "UTC", JAN1, &["2025-01-01T00:01:00Z", "2025-01-01T00:02:00Z"]),
            ("*/15 * * * *", "UTC", "2025-01-01T00:07:30Z",
                &["2025-01-01T00:15:00Z", "2025-01-01T00:30:00Z", "2025-01-01T00:45:00Z", "2025-01-01T01:00:00Z"]),
            ("5,35 * * * *", "UTC", JAN1, &["2025-01-01T00:05:00Z", "2025-01-01T00:35:00Z", "2025-01-01T01:05:00Z"]),
            ("10-20/5 * * * *", "UTC", JAN1,
                &["2025-01-01T00:10:00Z", "2025-01-01T00:15:00Z", "2025-01-01T00:20:00Z", "2025-01-01T01:10:00Z"]),
            ("7/20 * * * *", "UTC", JAN1,
                &["2025-01-01T00:07:00Z", "2025-01-01T00:27:00Z", "2025-01-01T00:47:00Z", "2025-01-01T01:07:00Z"]),
            // Hours.
            ("0 9-17/4 * * *", "UTC", JAN1,
                &["2025-01-01T09:00:00Z", "2025-01-01T13:00:00Z", "2025-01-01T17:00:00Z", "2025-01-02T09:00:00Z"]),
            ("0 22,2 * * *", "UTC", JAN1, &["2025-01-01T02:00:00Z", "2025-01-01T22:00:00Z", "2025-01-02T02:00:00Z"]),
            ("30 6 * * *", "UTC", JAN1, &["2025-01-01T06:30:00Z", "2025-01-02T06:30:00Z"]),
            // Day of month with day-of-week `*`: only the day of month counts.
            ("0 0 15 * *", "UTC", JAN1, &["2025-01-15T00:00:00Z", "2025-02-15T00:00:00Z", "2025-03-15T00:00:00Z"]),
            // Months: numbers, names in any case, full names, ranges, steps.
            ("0 0 * 3 *", "UTC", JAN1, &["2025-03-01T00:00:00Z", "2025-03-02T00:00:00Z"]),
            ("0 0 1 jan,Jul *", "UTC", JAN1, &["2025-07-01T00:00:00Z", "2026-01-01T00:00:00Z"]),
            ("0 0 1 JAN-mar *", "UTC", JAN1, &["2025-02-01T00:00:00Z", "2025-03-01T00:00:00Z", "2026-01-01T00:00:00Z"]),
            ("0 0 1 January,DECEMBER *", "UTC", JAN1, &["2025-12-01T00:00:00Z", "2026-01-01T00:00:00Z"]),
            ("0 0 1 */4 *", "UTC", JAN1, &["2025-05-01T00:00:00Z", "2025-09-01T00:00:00Z", "2026-01-01T00:00:00Z"]),
            // Days of week: MON-FRI (strictly after Friday noon), 0 and 7 and names are Sunday.
            ("0 12 * * MON-FRI", "UTC", "2025-01-03T12:00:00Z", &["2025-01-06T12:00:00Z", "2025-01-07T12:00:00Z"]),
            ("0 12 * * 0", "UTC", JAN1, &["2025-01-05T12:00:00Z", "2025-01-12T12:00:00Z"]),
            ("0 12 * * 7", "UTC", JAN1, &["2025-01-05T12:00:00Z", "2025-01-12T12:00:00Z"]),
            ("0 12 * * sun", "UTC", JAN1, &["2025-01-05T12:00:00Z", "2025-01-12T12:00:00Z"]),
            ("0 12 * * Sunday", "UTC", JAN1, &["2025-01-05T12:00:00Z", "2025-01-12T12:00:00Z"]),
            ("0 12 * * 5-7", "UTC", JAN1,
                &["2025-01-03T12:00:00Z", "2025-01-04T12:00:00Z", "2025-01-05T12:00:00Z", "2025-01-10T12:00:00Z"]),
            ("0 12 * * FRI-SUN", "UTC", JAN1,
                &["2025-01-03T12:00:00Z", "2025-01-04T12:00:00Z", "2025-01-05T12:00:00Z", "2025-01-10T12:00:00Z"]),
            ("0 12 * * 1-5/2", "UTC", JAN1, &["2025-01-01T12:00:00Z", "2025-01-03T12:00:00Z", "2025-01-06T12:00:00Z"]),
            ("0 12 * * */3", "UTC", JAN1,
                &["2025-01-01T12:00:00Z", "2025-01-04T12:00:00Z", "2025-01-05T12:00:00Z", "2025-01-08T12:00:00Z"]),
            // Both day fields restricted: either matches. Every Friday and every 13th,
            // Friday 13 June once.
            ("0 0 13 * FRI", "UTC", "2025-06-01T00:00:00Z",
                &["2025-06-06T00:00:00Z", "2025-06-13T00:00:00Z", "2025-06-20T00:00:00Z", "2025-06-27T00:00:00Z",
                  "2025-07-04T00:00:00Z", "2025-07-11T00:00:00Z", "2025-07-13T00:00:00Z"]),
            ("0 0 1,15 * MON", "UTC", JAN1,
                &["2025-01-06T00:00:00Z", "2025-01-13T00:00:00Z", "2025-01-15T00:00:00Z", "2025-01-20T00:00:00Z",
                  "2025-01-27T00:00:00Z", "2025-02-01T00:00:00Z", "2025-02-03T00:00:00Z"]),
            // crontab(5): a field starting with `*` is not restricted, so this is AND:
            // Mondays that are the 1st, 11th, 21st or 31st.
            ("0 0 */10 * MON", "UTC", JAN1,
                &["2025-03-31T00:00:00Z", "2025-04-21T00:00:00Z", "2025-07-21T00:00:00Z", "2025-08-11T00:00:00Z",
                  "2025-09-01T00:00:00Z"]),
            ("0 0 ? * MON", "UTC", JAN1, &["2025-01-06T00:00:00Z", "2025-01-13T00:00:00Z"]),
            // 6 fields: seconds first.
            ("*/20 * * * * *", "UTC", JAN1, &["2025-01-01T00:00:20Z", "2025-01-01T00:00:40Z", "2025-01-01T00:01:00Z"]),
            ("30 15 10 * * *", "UTC", JAN1, &["2025-01-01T10:15:30Z", "2025-01-02T10:15:30Z"]),
            ("0 0 12 13 * FRI", "UTC", "2025-06-01T00:00:00Z", &["2025-06-06T12:00:00Z", "2025-06-13T12:00:00Z"]),
            // Macros.
            ("@yearly", "UTC", JAN1, &["2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z"]),
            ("@annually", "UTC", JAN1, &["2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z"]),
            ("@monthly", "UTC", JAN1, &["2025-02-01T00:00:00Z", "2025-03-01T00:00:00Z"]),
            ("@weekly", "UTC", JAN1, &["2025-01-05T00:00:00Z", "2025-01-12T00:00:00Z"]),
            ("@daily", "UTC", JAN1, &["2025-01-02T00:00:00Z", "2025-01-03T00:00:00Z"]),
            ("@midnight", "UTC", JAN1, &["2025-01-02T00:00:00Z", "2025-01-03T00:00:00Z"]),
            ("@Daily", "UTC", JAN1, &["2025-01-02T00:00:00Z", "2025-01-03T00:00:00Z"]),
            ("@hourly", "UTC", JAN1, &["2025-01-01T01:00:00Z", "2025-01-01T02:00:00Z"]),
            // Calendar edges: 29 February only in leap years, the 31st only in long months.
            ("0 0 29 2 *", "UTC", JAN1, &["2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"]),
            ("0 0 31 * *", "UTC", JAN1,
                &["2025-01-31T00:00:00Z", "2025-03-31T00:00:00Z", "2025-05-31T00:00:00Z", "2025-07-31T00:00:00Z",
                  "2025-08-31T00:00:00Z", "2025-10-31T00:00:00Z", "2025-12-31T00:00:00Z", "2026-01-31T00:00:00Z"]),
            ("0 0 30 * *", "UTC", JAN1, &["2025-01-30T00:00:00Z", "2025-03-30T00:00:00Z"]),
            // Strictly after, with sub-second instants.
            ("* * * * *", "UTC", "2025-01-01T00:00:30.5Z", &["2025-01-01T00:01:00Z"]),
            ("* * * * * *", "UTC", "2025-01-01T00:00:00.5Z", &["2025-01-01T00:00:01Z", "2025-01-01T00:00:02Z"]),
            // Zones: local time and local weekday decide.
            ("0 9 * * MON-FRI", "Europe/Berlin", "2025-01-03T00:00:00Z", &["2025-01-03T08:00:00Z", "2025-01-06T08:00:00Z"]),
            ("0 9 * * *", "Europe/Berlin", "2025-07-01T00:00:00Z", &["2025-07-01T07:00:00Z"]),
            ("0 9 * * *", "Asia/Kolkata", JAN1, &["2025-01-01T03:30:00Z", "2025-01-02T03:30:00Z"]),
            ("0 0 1 * *", "America/New_York", JAN1, &["2025-01-01T05:00:00Z", "2025-02-01T05:00:00Z"]),
            ("0 1 * * MON", "Asia/Tokyo", JAN1, &["2025-01-05T16:00:00Z", "2025-01-12T16:00:00Z"]),
            // Whitespace: tabs, repeated and surrounding spaces.
            ("\t0  9 * *\tMON ", "UTC", JAN1, &["2025-01-06T09:00:00Z"]),
        ];
        for (expression, zone, after, expected) in table {
            check(expression, zone, after, expected);
        }
    }

    #[test]
    fn invalid_expressions_say_what_is_wrong() {
        #[rustfmt::skip]
        let table: &[(&str, &str)] = &[
            ("", "cron expression is empty"),
            ("   ", "cron expression is empty"),
            ("* * * *", "cron expression has 4 fields, expected 5 (minute hour day-of-month month day-of-week) or 6 (second first)"),
            ("* * * * * * *", "cron expression has 7 fields"),
            ("hello world", "cron expression has 2 fields"),
            ("60 * * * *", "minute field `60`: 60 is out of range 0-59"),
            ("* 24 * * *", "hour field `24`: 24 is out of range 0-23"),
            ("* * 0 * *", "day-of-month field `0`: 0 is out of range 1-31"),
            ("* * 32 * *", "day-of-month field `32`: 32 is out of range 1-31"),
            ("* * * 13 *", "month field `13`: 13 is out of range 1-12"),
            ("* * * 0 *", "month field `0`: 0 is out of range 1-12"),
            ("* * * * 8", "day-of-week field `8`: 8 is out of range 0-7"),
            ("0 1,2,99 * * *", "hour field `1,2,99`: 99 is out of range 0-23"),
            ("99999999999 * * * *", "minute field `99999999999`: 99999999999 is out of range 0-59"),
            ("60 * * * * *", "second field `60`: 60 is out of range 0-59"),
            ("* * * FOO *", "month field `FOO`: `FOO` is not a month (1-12 or JAN-DEC)"),
            ("* * * * MON-FUN", "day-of-week field `MON-FUN`: `FUN` is not a day of the week (0-7 or SUN-SAT)"),
            ("* * * * MO", "day-of-week field `MO`: `MO` is not a day of the week"),
            ("MON * * * *", "minute field `MON`: `MON` is not a number (0-59)"),
            ("* * JAN * *", "day-of-month field `JAN`: `JAN` is not a number (1-31)"),
            ("*/0 * * * *", "minute field `*/0`: step 0 in `*/0` must be between 1 and 60"),
            ("* */25 * * *", "hour field `*/25`: step 25 in `*/25` must be between 1 and 24"),
            ("*/x * * * *", "minute field `*/x`: step `x` in `*/x` is not a number"),
            ("*/ * * * *", "minute field `*/`: `*/` is missing the step after `/`"),
            ("*/2/3 * * * *", "minute field `*/2/3`: step `2/3` in `*/2/3` is not a number"),
            ("5-1 * * * *", "minute field `5-1`: range `5-1` is reversed: 5 comes after 1"),
            ("* * * DEC-JAN *", "month field `DEC-JAN`: range `DEC-JAN` is reversed: 12 comes after 1"),
            ("* * * * FRI-MON", "day-of-week field `FRI-MON`: range `FRI-MON` is reversed: 5 comes after 1"),
            ("-5 * * * *", "minute field `-5`: `-5` is missing a value"),
            ("1- * * * *", "minute field `1-`: `1-` is missing a value"),
            ("1,,2 * * * *", "minute field `1,,2`: empty item in the list"),
            ("1, * * * *", "minute field `1,`: empty item in the list"),
            ("? * * * *", "minute field `?`: `?` is only allowed in the day-of-month and day-of-week fields"),
            ("a b c d e", "minute field `a`: `a` is not a number (0-59)"),
            ("0 0 30 2 *", "`0 0 30 2 *` never fires: none of the selected months has any of the selected days of the month"),
            ("0 0 31 4,6,9,11 *", "never fires"),
            ("@reboot", "`@reboot` is not supported: a schedule fires at times of day, not when the server starts"),
            ("@every 5m", "unknown macro `@every`: expected @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly"),
            ("@daily 5", "macro `@daily` must be the whole expression"),
        ];
        for (expression, message) in table {
            let err = CronSchedule::parse(expression, "UTC")
                .expect_err(&format!("`{expression}` should be rejected"));
            let text = err.to_string();
            assert!(
                text.contains(message),
                "`{expression}`: got `{text}`, want `{message}`"
            );
        }
        // Structured too, for callers that want the field.
        assert_eq!(
            CronSchedule::parse("* * * * 8", "UTC").unwrap_err(),
            CronError::Field {
                field: CronField::DayOfWeek,
                text: "8".to_owned(),
                problem: "8 is out of range 0-7".to_owned(),
            }
        );
        // Never-fires only applies when the day of month must match: with a restricted
        // weekday too, either matches and Mondays still fire.
        assert!(CronSchedule::parse("0 0 30 2 MON", "UTC").is_ok());
    }

    #[test]
    fn time_zones_are_iana_names() {
        let cases: &[(&str, &str)] = &[
            ("Mars/Olympus_Mons", "unknown time zone `Mars/Olympus_Mons`: expected an IANA name such as `Europe/Berlin`, `America/New_York` or `UTC`"),
            ("europe/berlin", "unknown time zone `europe/berlin`: zone names are case-sensitive, did you mean `Europe/Berlin`?"),
            ("CEST", "unknown time zone `CEST`"),
            ("+02:00", "unknown time zone `+02:00`"),
            ("", "time zone is empty: expected an IANA name such as `Europe/Berlin` or `UTC`"),
            (" ", "time zone is empty"),
        ];
        for (zone, message) in cases {
            let text = CronSchedule::parse("0 9 * * *", zone)
                .unwrap_err()
                .to_string();
            assert!(text.contains(message), "{zone:?}: got `{text}`");
        }
        for zone in [
            "UTC",
            "Etc/UTC",
            "Europe/Berlin",
            "America/New_York",
            "Asia/Kathmandu",
        ] {
            assert_eq!(schedule("0 9 * * *", zone).timezone().name(), zone);
        }
        // The expression is checked first.
        assert_eq!(
            CronSchedule::parse("", "Nowhere").unwrap_err(),
            CronError::Empty
        );
    }

    #[test]
    fn accessors_and_display() {
        let s = schedule("  0 9 * * MON-FRI ", "Europe/Berlin");
        assert_eq!(s.expression(), "0 9 * * MON-FRI");
        assert_eq!(s.timezone(), chrono_tz::Europe::Berlin);
        assert_eq!(s.to_string(), "0 9 * * MON-FRI (Europe/Berlin)");
        assert_eq!(schedule("@daily", "UTC").expression(), "@daily");
    }

    #[test]
    fn translation_into_the_cron_crate() {
        let translated = |expression: &str| Fields::parse(expression).unwrap().translate();
        // Seconds field added, weekday numbers shifted (Sunday 0 and 7 become 1), lists
        // made explicit, a full field left as `*`.
        assert_eq!(
            translated("*/20 9-11 * * 0,5-7"),
            ["0 0,20,40 9,10,11 * * 1,6,7"]
        );
        assert_eq!(translated("0 0 * * SUN-SAT"), ["0 0 0 * * *"]);
        // Both day fields restricted: two schedules, either may match.
        assert_eq!(translated("0 0 13 * FRI"), ["0 0 0 13 * *", "0 0 0 * * 6"]);
        // Day of month starts with `*`: one schedule, both must match.
        assert_eq!(translated("0 0 */10 * MON"), ["0 0 0 1,11,21,31 * 2"]);
        assert_eq!(translated("5 4 3 2 1 0"), ["5 4 3 2 1 *", "5 4 3 * 1 1"]);
    }

    #[test]
    fn last_fire_time_is_2100() {
        let s = schedule("0 0 1 1 *", "UTC");
        assert_eq!(
            s.next_after(utc("2099-06-01T00:00:00Z")),
            Some(utc("2100-01-01T00:00:00Z"))
        );
        assert_eq!(s.next_after(utc("2100-01-01T00:00:00Z")), None);
        assert_eq!(
            s.upcoming(utc("2099-06-01T00:00:00Z"), 5),
            [utc("2100-01-01T00:00:00Z")]
        );
    }

    // --- Daylight saving. Berlin: 2025-03-30 02:00 CET -> 03:00 CEST (01:00Z) and
    // 2025-10-26 03:00 CEST -> 02:00 CET (01:00Z). New York: 2025-03-09 02:00 EST ->
    // 03:00 EDT (07:00Z) and 2025-11-02 02:00 EDT -> 01:00 EST (06:00Z).

    #[test]
    fn daily_0230_on_spring_forward_fires_at_the_end_of_the_gap() {
        // 02:30 does not exist on the day: it fires at 03:00 local, the first instant
        // after the gap. The day before and after are normal.
        check(
            "30 2 * * *",
            "Europe/Berlin",
            "2025-03-28T12:00:00Z",
            &[
                "2025-03-29T01:30:00Z", // 02:30 CET
                "2025-03-30T01:00:00Z", // 03:00 CEST
                "2025-03-31T00:30:00Z", // 02:30 CEST
            ],
        );
        check(
            "30 2 * * *",
            "America/New_York",
            "2025-03-07T12:00:00Z",
            &[
                "2025-03-08T07:30:00Z", // 02:30 EST
                "2025-03-09T07:00:00Z", // 03:00 EDT
                "2025-03-10T06:30:00Z", // 02:30 EDT
            ],
        );
    }

    #[test]
    fn daily_0230_on_fall_back_fires_once_at_the_first_occurrence() {
        // Berlin repeats 02:00-03:00: 02:30 CEST (00:30Z) fires, 02:30 CET (01:30Z) not.
        check(
            "30 2 * * *",
            "Europe/Berlin",
            "2025-10-24T12:00:00Z",
            &[
                "2025-10-25T00:30:00Z", // 02:30 CEST
                "2025-10-26T00:30:00Z", // the first 02:30, CEST
                "2025-10-27T01:30:00Z", // 02:30 CET
            ],
        );
        // New York repeats 01:00-02:00, so 02:30 happens once there anyway ...
        check(
            "30 2 * * *",
            "America/New_York",
            "2025-10-31T12:00:00Z",
            &[
                "2025-11-01T06:30:00Z", // 02:30 EDT
                "2025-11-02T07:30:00Z", // 02:30 EST
                "2025-11-03T07:30:00Z",
            ],
        );
        // ... and 01:30 is the repeated time: the first one, EDT, fires.
        check(
            "30 1 * * *",
            "America/New_York",
            "2025-10-31T12:00:00Z",
            &[
                "2025-11-01T05:30:00Z", // 01:30 EDT
                "2025-11-02T05:30:00Z", // the first 01:30, EDT
                "2025-11-03T06:30:00Z", // 01:30 EST
            ],
        );
        // Asked from between the two occurrences, or from within the second, the next
        // fire is the following day: the repeat never fires.
        for zone_after in [
            ("Europe/Berlin", "2025-10-26T00:45:00Z"),
            ("Europe/Berlin", "2025-10-26T01:29:59Z"),
        ] {
            let s = schedule("30 2 * * *", zone_after.0);
            assert_eq!(
                s.next_after(utc(zone_after.1)),
                Some(utc("2025-10-27T01:30:00Z"))
            );
        }
        let s = schedule("30 1 * * *", "America/New_York");
        assert_eq!(
            s.next_after(utc("2025-11-02T06:00:00Z")),
            Some(utc("2025-11-03T06:30:00Z"))
        );
        // Looking back from the second 02:30 finds the first.
        let s = schedule("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            s.prev_at_or_before(utc("2025-10-26T01:45:00Z")),
            Some(utc("2025-10-26T00:30:00Z"))
        );
    }

    #[test]
    fn fixed_times_in_a_gap_collapse_into_one_fire() {
        // 02:00 and 02:30 both fall in New York's gap: one fire at 03:00 EDT.
        check(
            "0,30 2 * * *",
            "America/New_York",
            "2025-03-08T12:00:00Z",
            &[
                "2025-03-09T07:00:00Z",
                "2025-03-10T06:00:00Z",
                "2025-03-10T06:30:00Z",
            ],
        );
        // A half-hour shift (Lord Howe, 02:00 +10:30 -> 02:30 +11:00): 02:15 fires at 02:30.
        check(
            "15 2 * * *",
            "Australia/Lord_Howe",
            "2025-10-03T12:00:00Z",
            &[
                "2025-10-03T15:45:00Z", // 02:15 +10:30
                "2025-10-04T15:30:00Z", // 02:30 +11:00
                "2025-10-05T15:15:00Z", // 02:15 +11:00
            ],
        );
        // A gap at midnight (Santiago, 2025-09-07 00:00 -04 -> 01:00 -03): @daily
        // fires at 01:00.
        check(
            "@daily",
            "America/Santiago",
            "2025-09-05T12:00:00Z",
            &[
                "2025-09-06T04:00:00Z",
                "2025-09-07T04:00:00Z", // 01:00 -03
                "2025-09-08T03:00:00Z",
            ],
        );
    }

    #[test]
    fn wildcard_schedules_keep_real_time_across_both_transitions() {
        // Hourly: every real hour. Spring: 01:00 EST then 03:00 EDT (02:00 does not
        // exist and is not made up for). Fall: 01:00 EDT and 01:00 EST both fire.
        check(
            "0 * * * *",
            "America/New_York",
            "2025-03-09T05:30:00Z",
            &[
                "2025-03-09T06:00:00Z", // 01:00 EST
                "2025-03-09T07:00:00Z", // 03:00 EDT
                "2025-03-09T08:00:00Z", // 04:00 EDT
            ],
        );
        check(
            "0 * * * *",
            "America/New_York",
            "2025-11-02T03:30:00Z",
            &[
                "2025-11-02T04:00:00Z", // 00:00 EDT
                "2025-11-02T05:00:00Z", // 01:00 EDT
                "2025-11-02T06:00:00Z", // 01:00 EST
                "2025-11-02T07:00:00Z", // 02:00 EST
            ],
        );
        check(
            "@hourly",
            "Europe/Berlin",
            "2025-10-25T23:30:00Z",
            &[
                "2025-10-26T00:00:00Z", // 02:00 CEST
                "2025-10-26T01:00:00Z", // 02:00 CET
                "2025-10-26T02:00:00Z", // 03:00 CET
            ],
        );
        check(
            "@hourly",
            "Europe/Berlin",
            "2025-03-29T23:30:00Z",
            &[
                "2025-03-30T00:00:00Z", // 01:00 CET
                "2025-03-30T01:00:00Z", // 03:00 CEST
                "2025-03-30T02:00:00Z", // 04:00 CEST
            ],
        );
        // Every 15 minutes through New York's repeated hour: no pause, no burst.
        let quarters: Vec<String> = (0..9)
            .map(|i| (utc("2025-11-02T05:00:00Z") + TimeDelta::minutes(15 * i)).to_rfc3339())
            .collect();
        let quarters: Vec<&str> = quarters.iter().map(String::as_str).collect();
        check(
            "*/15 * * * *",
            "America/New_York",
            "2025-11-02T04:50:00Z",
            &quarters,
        );
        // Every minute: continuous through both.
        check(
            "* * * * *",
            "America/New_York",
            "2025-03-09T06:58:00Z",
            &[
                "2025-03-09T06:59:00Z", // 01:59 EST
                "2025-03-09T07:00:00Z", // 03:00 EDT
                "2025-03-09T07:01:00Z",
            ],
        );
        check(
            "* * * * *",
            "America/New_York",
            "2025-11-02T05:58:00Z",
            &[
                "2025-11-02T05:59:00Z", // 01:59 EDT
                "2025-11-02T06:00:00Z", // 01:00 EST
                "2025-11-02T06:01:00Z",
            ],
        );
        // Asked from late in the first 01:xx hour, the second 01:00 is next, but an
        // earlier fire in the first pass still comes first.
        let s = schedule("*/5 * * * *", "America/New_York");
        assert_eq!(
            s.next_after(utc("2025-11-02T05:50:00Z")),
            Some(utc("2025-11-02T05:55:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2025-11-02T05:55:00Z")),
            Some(utc("2025-11-02T06:00:00Z"))
        );
        assert_eq!(
            s.prev_at_or_before(utc("2025-11-02T06:07:00Z")),
            Some(utc("2025-11-02T06:05:00Z"))
        );
        // A minute wildcard during the missing hour: nothing that day (as Vixie cron).
        check(
            "* 2 * * *",
            "America/New_York",
            "2025-03-09T00:00:00Z",
            &[
                "2025-03-10T06:00:00Z", // 02:00 EDT the next day
            ],
        );
    }

    /// The `cron` crate on its own, iterating in a `chrono_tz::Tz`, skips a daily time
    /// in the spring gap and fires a repeated one twice: why we map local times to
    /// instants ourselves. (If a new version changes this, the module docs need a look.)
    #[test]
    fn the_cron_crate_alone_skips_and_doubles_across_dst() {
        let daily = ::cron::Schedule::from_str("0 30 2 * * *").unwrap();
        let berlin = chrono_tz::Europe::Berlin;
        let spring: Vec<_> = daily
            .after(&utc("2025-03-29T12:00:00Z").with_timezone(&berlin))
            .take(1)
            .map(|t| t.with_timezone(&Utc))
            .collect();
        assert_eq!(spring, [utc("2025-03-31T00:30:00Z")]); // 30 March skipped
        let fall: Vec<_> = daily
            .after(&utc("2025-10-25T12:00:00Z").with_timezone(&berlin))
            .take(2)
            .map(|t| t.with_timezone(&Utc))
            .collect();
        assert_eq!(
            fall,
            [utc("2025-10-26T00:30:00Z"), utc("2025-10-26T01:30:00Z")]
        );
        // And it counts weekday 1 as Sunday.
        let sunday = ::cron::Schedule::from_str("0 0 0 * * 1").unwrap();
        assert_eq!(
            sunday.after(&utc(JAN1)).next(),
            Some(utc("2025-01-05T00:00:00Z"))
        );
    }

    /// Independent reference for the rules: scan every `step` of UTC time in
    /// `(from, to]` and decide each instant from its local reading alone.
    fn reference(
        s: &CronSchedule,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        step: TimeDelta,
    ) -> Vec<DateTime<Utc>> {
        let tz = s.tz;
        let mut fires = Vec::new();
        let mut t = from + step;
        while t <= to {
            let local = t.with_timezone(&tz).naive_local();
            let matches = s.fields.matches(local);
            let fires_here = match s.rule {
                DstRule::Wildcard => matches,
                DstRule::FixedTime => {
                    let first_occurrence = tz
                        .from_local_datetime(&local)
                        .earliest()
                        .is_some_and(|e| e.with_timezone(&Utc) == t);
                    // A clock jump forward just before `t`: the skipped local seconds
                    // fire now.
                    let before = (t - SECOND).with_timezone(&tz).naive_local();
                    let mut skipped = before + SECOND;
                    let mut gap_match = false;
                    while skipped < local {
                        gap_match |= s.fields.matches(skipped);
                        skipped += SECOND;
                    }
                    (matches && first_occurrence) || gap_match
                }
            };
            if fires_here {
                fires.push(t);
            }
            t += step;
        }
        fires
    }

    fn agree_with_reference(
        s: &CronSchedule,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        step: TimeDelta,
    ) {
        let want = reference(s, from, to, step);
        let got: Vec<_> = s
            .upcoming(from, want.len() + 1)
            .into_iter()
            .filter(|t| *t <= to)
            .collect();
        assert_eq!(got, want, "{s} from {from} to {to}");
        assert_eq!(s.latest_in(from, to), want.last().copied(), "{s}");
        // From arbitrary instants (sub-second ones too), both directions.
        let mut probe = from;
        while probe < to {
            if let Some(next) = want.iter().find(|t| **t > probe) {
                assert_eq!(s.next_after(probe), Some(*next), "{s} next after {probe}");
            }
            match want.iter().rev().find(|t| **t <= probe) {
                Some(prev) => assert_eq!(s.prev_at_or_before(probe), Some(*prev), "{s} at {probe}"),
                None => assert!(s.prev_at_or_before(probe).is_none_or(|p| p <= from)),
            }
            probe += TimeDelta::seconds(7 * 60 + 13) + TimeDelta::milliseconds(250);
        }
    }

    #[test]
    fn dst_rules_agree_with_a_brute_force_scan() {
        // (zone, an instant near a transition)
        let transitions = [
            ("Europe/Berlin", "2025-03-30T01:00:00Z"),
            ("Europe/Berlin", "2025-10-26T01:00:00Z"),
            ("America/New_York", "2025-03-09T07:00:00Z"),
            ("America/New_York", "2025-11-02T06:00:00Z"),
            ("Australia/Lord_Howe", "2025-04-05T15:00:00Z"),
            ("Australia/Lord_Howe", "2025-10-04T15:30:00Z"),
            ("America/Santiago", "2025-09-07T04:00:00Z"),
            ("America/Santiago", "2025-04-06T03:00:00Z"),
            ("UTC", "2025-03-30T01:00:00Z"),
        ];
        let expressions = [
            "30 2 * * *",
            "30 1 * * *",
            "45 1 * * *",
            "0,30 2 * * *",
            "15,45 1-3 * * *",
            "0 0 * * *",
            "30 23 * * *",
            "20 2 * * SUN",
            "0 0 13 * FRI",
            "0 * * * *",
            "*/15 * * * *",
            "*/7 2 * * *",
            "0 */2 * * *",
            "* * * * *",
        ];
        for (zone, transition) in transitions {
            let transition = utc(transition);
            let (from, to) = (
                transition - TimeDelta::days(1),
                transition + TimeDelta::days(1),
            );
            for expression in expressions {
                agree_with_reference(&schedule(expression, zone), from, to, TimeDelta::minutes(1));
            }
            // Seconds: a narrower window, scanned second by second.
            let (from, to) = (
                transition - TimeDelta::hours(2),
                transition + TimeDelta::hours(2),
            );
            for expression in ["0 30 2 * * *", "*/20 30 1 * * *", "*/10 * * * * *"] {
                agree_with_reference(&schedule(expression, zone), from, to, SECOND);
            }
        }
    }

    #[test]
    fn day_rules_agree_with_a_brute_force_scan() {
        let from = utc("2024-12-20T00:00:00Z");
        let to = utc("2025-03-10T00:00:00Z");
        for expression in [
            "0 12 * * MON-FRI",
            "0 0 */10 * MON",
            "0 0 1-7 * MON",
            "0 0 13 * FRI",
            "0 9 * 2 SAT,SUN",
            "0 0 1,31 * 0",
            "0 6 29-31 * *",
        ] {
            agree_with_reference(
                &schedule(expression, "UTC"),
                from,
                to,
                TimeDelta::minutes(1),
            );
        }
        agree_with_reference(
            &schedule("0 0 29 2 *", "UTC"),
            utc("2027-12-01T00:00:00Z"),
            utc("2028-03-15T00:00:00Z"),
            TimeDelta::minutes(1),
        );
    }

    #[test]
    fn due_reports_the_latest_fire_time_and_whether_it_was_missed() {
        let hourly = schedule("0 * * * *", "UTC");
        let grace = Duration::from_secs(60);
        let last = utc("2025-01-01T10:00:00Z");
        // Nothing new yet.
        assert_eq!(hourly.due(last, utc("2025-01-01T10:59:59Z"), grace), None);
        assert_eq!(hourly.due(last, last, grace), None);
        // On time, at and within the grace period.
        for now in [
            "2025-01-01T11:00:00Z",
            "2025-01-01T11:00:30Z",
            "2025-01-01T11:01:00Z",
        ] {
            assert_eq!(
                hourly.due(last, utc(now), grace),
                Some(Due {
                    earliest: utc("2025-01-01T11:00:00Z"),
                    latest: utc("2025-01-01T11:00:00Z"),
                    missed: false
                }),
                "{now}"
            );
        }
        // More than the grace period late: missed.
        assert_eq!(
            hourly.due(last, utc("2025-01-01T11:01:00.001Z"), grace),
            Some(Due {
                earliest: utc("2025-01-01T11:00:00Z"),
                latest: utc("2025-01-01T11:00:00Z"),
                missed: true
            })
        );
        // Down for hours: the latest is what counts; the earliest shows how far back.
        assert_eq!(
            hourly.due(last, utc("2025-01-01T14:30:00Z"), grace),
            Some(Due {
                earliest: utc("2025-01-01T11:00:00Z"),
                latest: utc("2025-01-01T14:00:00Z"),
                missed: true
            })
        );
        // Several came due but the latest is on time: fire it, the rest are superseded.
        assert_eq!(
            hourly.due(last, utc("2025-01-01T14:00:20Z"), grace),
            Some(Due {
                earliest: utc("2025-01-01T11:00:00Z"),
                latest: utc("2025-01-01T14:00:00Z"),
                missed: false
            })
        );
        // Far behind on a per-second schedule: answered without walking every second.
        let every_second = schedule("* * * * * *", "UTC");
        let due = every_second
            .due(
                utc("2020-01-01T00:00:00Z"),
                utc("2025-01-01T00:00:00.5Z"),
                grace,
            )
            .unwrap();
        assert_eq!(
            (due.earliest, due.latest, due.missed),
            (
                utc("2020-01-01T00:00:01Z"),
                utc("2025-01-01T00:00:00Z"),
                false
            )
        );
        // latest_in is (after, until].
        assert_eq!(
            hourly.latest_in(last, utc("2025-01-01T12:00:00Z")),
            Some(utc("2025-01-01T12:00:00Z"))
        );
        assert_eq!(
            hourly.latest_in(utc("2025-01-01T12:00:00Z"), utc("2025-01-01T12:00:00Z")),
            None
        );
        assert_eq!(
            hourly.latest_in(utc("2025-01-01T12:00:00Z"), utc("2025-01-01T11:00:00Z")),
            None
        );
        // Across the fall-back in Berlin, a daily 02:30 due at 01:45Z is the first 02:30.
        let daily = schedule("30 2 * * *", "Europe/Berlin");
        assert_eq!(
            daily.due(
                utc("2025-10-25T12:00:00Z"),
                utc("2025-10-26T01:45:00Z"),
                grace
            ),
            Some(Due {
                earliest: utc("2025-10-26T00:30:00Z"),
                latest: utc("2025-10-26T00:30:00Z"),
                missed: true
            })
        );
    }
}
