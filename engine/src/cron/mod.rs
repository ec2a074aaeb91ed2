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
mod tests;
