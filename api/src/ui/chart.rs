//! The overview's activity chart, drawn on the server as SVG: runs started, completed
//! and failed per interval, one line each, over a fixed window (the last hour by
//! minute, the last day by hour). Intervals the store left out count zero.

use std::fmt::Write as _;

use chrono::{DateTime, Duration, Utc};
use waymark_engine::store::ActivityBucket;

const W: i64 = 640;
const H: i64 = 160;
const PAD: i64 = 30;

/// One interval: its start, runs started, completed, failed.
type Point = (DateTime<Utc>, i64, i64, i64);

/// The series, aligned on `slots` intervals of `step` ending with the one holding `now`.
pub(crate) fn series(
    buckets: &[ActivityBucket],
    now: DateTime<Utc>,
    step: Duration,
    slots: usize,
) -> Vec<Point> {
    let secs = step.num_seconds().max(1);
    let last = now.timestamp().div_euclid(secs);
    (0..slots as i64)
        .map(|i| {
            let index = last - (slots as i64 - 1) + i;
            let start = DateTime::from_timestamp(index * secs, 0).unwrap_or(now);
            let found = buckets.iter().find(|b| b.start == start);
            (
                start,
                found.map_or(0, |b| b.started),
                found.map_or(0, |b| b.completed),
                found.map_or(0, |b| b.failed),
            )
        })
        .collect()
}

/// The SVG for `series`, titled `title`.
pub(crate) fn svg(title: &str, series: &[Point]) -> String {
    let max = series
        .iter()
        .map(|(_, s, c, f)| *s.max(c).max(f))
        .max()
        .unwrap_or(0)
        .max(1);
    let n = series.len().max(2) as i64;
    let x = |i: usize| PAD + i as i64 * (W - 2 * PAD) / (n - 1);
    let y = |v: i64| H - PAD - v * (H - 2 * PAD) / max;
    let line = |pick: fn(&Point) -> i64| {
        series
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{},{}", x(i), y(pick(p))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (started, completed, failed) = series
        .iter()
        .fold((0, 0, 0), |acc, p| (acc.0 + p.1, acc.1 + p.2, acc.2 + p.3));
    let mut out = String::new();
    let _ = writeln!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11" role="img" aria-label="{title}: {started} started, {completed} completed, {failed} failed">"##
    );
    let _ = writeln!(
        out,
        r##"<line x1="{PAD}" y1="{base}" x2="{right}" y2="{base}" stroke="#8c959f"/><text x="4" y="{top}">{max}</text><text x="4" y="{base}">0</text>"##,
        base = H - PAD,
        right = W - PAD,
        top = PAD + 4,
    );
    for (pick, colour, name, total) in [
        (
            (|p: &Point| p.1) as fn(&Point) -> i64,
            "#1a5fd0",
            "started",
            started,
        ),
        (|p: &Point| p.2, "#1e7b34", "completed", completed),
        (|p: &Point| p.3, "#b3261e", "failed", failed),
    ] {
        let _ = writeln!(
            out,
            r##"<polyline class="{name}" fill="none" stroke="{colour}" stroke-width="2" points="{points}"><title>{name}: {total}</title></polyline>"##,
            points = line(pick),
        );
    }
    if let (Some(first), Some(last)) = (series.first(), series.last()) {
        let _ = writeln!(
            out,
            r##"<text x="{PAD}" y="{ty}">{from}</text><text x="{right}" y="{ty}" text-anchor="end">{to} UTC</text><text x="{mid}" y="14" text-anchor="middle">started {started} · completed {completed} · failed {failed}</text>"##,
            ty = H - 10,
            right = W - PAD,
            mid = W / 2,
            from = first.0.format("%H:%M"),
            to = last.0.format("%H:%M"),
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_intervals_count_zero_and_the_last_holds_now() {
        let now: DateTime<Utc> = "2026-12-01T10:30:20Z".parse().unwrap();
        let buckets = [ActivityBucket {
            start: "2026-12-01T10:29:00Z".parse().unwrap(),
            started: 3,
            completed: 2,
            failed: 1,
        }];
        let s = series(&buckets, now, Duration::minutes(1), 60);
        assert_eq!(s.len(), 60);
        assert_eq!(
            s[59].0,
            "2026-12-01T10:30:00Z".parse::<DateTime<Utc>>().unwrap()
        );
        assert_eq!((s[58].1, s[58].2, s[58].3), (3, 2, 1));
        assert_eq!(s.iter().map(|p| p.1).sum::<i64>(), 3);
        let svg = svg("last hour", &s);
        assert!(svg.contains("started 3 · completed 2 · failed 1"));
        assert_eq!(svg.matches("<polyline").count(), 3);
    }
}
