//! A run's history as a timeline: one bar per stretch the run spent in a state and
//! status (from the history row that entered it to the next one, or to now), so
//! retries, sleeps, waits and compensations show as bars of their own, with their
//! durations.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use waymark_engine::store::HistoryEntry;
use waymark_engine::RunStatus;

const ROW: i64 = 22;
const LABEL: i64 = 230;
const WIDTH: i64 = 760;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn colour(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Running | RunStatus::Pending => "#1a5fd0",
        RunStatus::Sleeping | RunStatus::Waiting => "#9aa5b1",
        RunStatus::Retrying => "#c25e00",
        RunStatus::Compensating | RunStatus::CompensationFailed => "#7b3fa0",
        RunStatus::Failed | RunStatus::Cancelled => "#b3261e",
        RunStatus::Completed => "#1e7b34",
    }
}

/// "1.2 s", "3 min 4 s", "2 h 5 min".
pub(crate) fn duration(ms: i64) -> String {
    match ms {
        ..=999 => format!("{ms} ms"),
        1000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000),
        _ => format!("{} h {} min", ms / 3_600_000, (ms % 3_600_000) / 60_000),
    }
}

/// The SVG, or `None` for a run without history.
pub(crate) fn svg(history: &[HistoryEntry], now: DateTime<Utc>, ended: bool) -> Option<String> {
    let first = history.first()?.committed_at;
    let last = if ended {
        history.last()?.committed_at
    } else {
        now.max(history.last()?.committed_at)
    };
    let span = (last - first).num_milliseconds().max(1);
    let height = ROW * history.len() as i64 + 30;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12" role="img" aria-label="timeline of the run's history">"##
    );
    let plot = WIDTH - LABEL - 90;
    for (i, entry) in history.iter().enumerate() {
        let start = entry.committed_at;
        let end = match history.get(i + 1) {
            Some(next) => next.committed_at,
            None if ended => start,
            None => last,
        };
        let ms = (end - start).num_milliseconds().max(0);
        let x = LABEL + (start - first).num_milliseconds() * plot / span;
        let w = (ms * plot / span).max(2);
        let y = 10 + i as i64 * ROW;
        let label = format!("{} · {}", entry.to_state, entry.to_status.as_str());
        let attempt = if entry.attempt > 1 {
            format!(" (attempt {})", entry.attempt)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            r##"<g class="bar"><title>{label}{attempt}: {dur}, {cause}</title><text x="4" y="{ty}">{short}</text><rect x="{x}" y="{y}" width="{w}" height="{h}" rx="3" fill="{fill}"/><text x="{dx}" y="{ty}" fill="#444">{dur}</text></g>"##,
            label = escape(&label),
            attempt = escape(&attempt),
            cause = escape(&entry.cause),
            short = escape(
                &format!("{label}{attempt}")
                    .chars()
                    .take(34)
                    .collect::<String>()
            ),
            dur = duration(ms),
            ty = y + 13,
            h = ROW - 6,
            fill = colour(entry.to_status),
            dx = (x + w + 6).min(WIDTH - 80),
        );
    }
    out.push_str("</svg>\n");
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(12), "12 ms");
        assert_eq!(duration(1500), "1.5 s");
        assert_eq!(duration(125_000), "2 min 5 s");
        assert_eq!(duration(7_500_000), "2 h 5 min");
    }
}
