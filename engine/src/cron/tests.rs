//! Fire times checked against hand-worked calendars: syntax, day matching, and the
//! daylight-saving rules in both directions.

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

fn agree_with_reference(s: &CronSchedule, from: DateTime<Utc>, to: DateTime<Utc>, step: TimeDelta) {
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
