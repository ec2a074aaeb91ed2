//! Process metrics in the Prometheus text format. No tenant labels: a label per
//! tenant would leak who the customers are to whoever scrapes, and grow without bound.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0, 300.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum in microseconds, so it can be an integer.
    sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, value: Duration) {
        let secs = value.as_secs_f64();
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            if secs <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            value.as_micros().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let total = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {total}");
    }
}

/// Counters and histograms a process keeps; shared by the API and the runner.
#[derive(Debug, Default)]
pub struct Metrics {
    runs_started: Mutex<BTreeMap<String, u64>>,
    runs_ended: Mutex<BTreeMap<(String, &'static str), u64>>,
    transitions: AtomicU64,
    lease_losses: AtomicU64,
    step_latency: Histogram,
    schedule_to_start: Histogram,
    timer_lateness: Histogram,
}

impl Metrics {
    pub fn run_started(&self, workflow: &str) {
        *self
            .runs_started
            .lock()
            .expect("metrics lock")
            .entry(workflow.to_owned())
            .or_default() += 1;
    }

    /// A run reached `status` (completed, failed, cancelled).
    pub fn run_ended(&self, workflow: &str, status: crate::RunStatus) {
        let status = status.as_str();
        *self
            .runs_ended
            .lock()
            .expect("metrics lock")
            .entry((workflow.to_owned(), status))
            .or_default() += 1;
    }

    pub fn transition(&self) {
        self.transitions.fetch_add(1, Ordering::Relaxed);
    }

    pub fn lease_lost(&self) {
        self.lease_losses.fetch_add(1, Ordering::Relaxed);
    }

    pub fn step_took(&self, took: Duration) {
        self.step_latency.observe(took);
    }

    /// A claimed run was due `late` before it was claimed.
    pub fn claimed_late(&self, late: Duration, after_timer: bool) {
        self.schedule_to_start.observe(late);
        if after_timer {
            self.timer_lateness.observe(late);
        }
    }

    /// The Prometheus text, with the due backlog read from the store at scrape time.
    pub fn render(&self, due_backlog: i64, oldest_due_age: Option<Duration>) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# HELP waymark_runs_started_total Runs started, by workflow.\n# TYPE waymark_runs_started_total counter");
        for (workflow, n) in self.runs_started.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "waymark_runs_started_total{{workflow=\"{}\"}} {n}",
                escape(workflow)
            );
        }
        let _ = writeln!(out, "# HELP waymark_runs_ended_total Runs that ended, by workflow and status.\n# TYPE waymark_runs_ended_total counter");
        for ((workflow, status), n) in self.runs_ended.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "waymark_runs_ended_total{{workflow=\"{}\",status=\"{status}\"}} {n}",
                escape(workflow)
            );
        }
        let _ = writeln!(out, "# HELP waymark_transitions_total Transitions committed by this process.\n# TYPE waymark_transitions_total counter\nwaymark_transitions_total {}", self.transitions.load(Ordering::Relaxed));
        let _ = writeln!(out, "# HELP waymark_lease_losses_total Steps whose lease was lost before they committed.\n# TYPE waymark_lease_losses_total counter\nwaymark_lease_losses_total {}", self.lease_losses.load(Ordering::Relaxed));
        self.step_latency.render(
            &mut out,
            "waymark_step_duration_seconds",
            "Time a step took, per attempt.",
        );
        self.schedule_to_start.render(
            &mut out,
            "waymark_schedule_to_start_seconds",
            "How long a run was due before a worker claimed it.",
        );
        self.timer_lateness.render(
            &mut out,
            "waymark_timer_lateness_seconds",
            "How late a durable timer fired.",
        );
        let _ = writeln!(out, "# HELP waymark_due_runs Runs due now and not yet claimed.\n# TYPE waymark_due_runs gauge\nwaymark_due_runs {due_backlog}");
        let _ = writeln!(
            out,
            "# HELP waymark_oldest_due_run_age_seconds How long the oldest due run has waited.\n# TYPE waymark_oldest_due_run_age_seconds gauge\nwaymark_oldest_due_run_age_seconds {}",
            oldest_due_age.map(|d| d.as_secs_f64()).unwrap_or(0.0)
        );
        out
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.run_started("demo");
        m.run_started("demo");
        m.run_ended("demo", crate::RunStatus::Completed);
        m.step_took(Duration::from_millis(30));
        m.step_took(Duration::from_secs(3));
        m.claimed_late(Duration::from_millis(2), true);
        let text = m.render(4, Some(Duration::from_secs(9)));
        assert!(
            text.contains("waymark_runs_started_total{workflow=\"demo\"} 2"),
            "{text}"
        );
        assert!(text.contains("waymark_runs_ended_total{workflow=\"demo\",status=\"completed\"} 1"));
        assert!(text.contains("waymark_step_duration_seconds_bucket{le=\"0.05\"} 1"));
        assert!(text.contains("waymark_step_duration_seconds_bucket{le=\"5\"} 2"));
        assert!(text.contains("waymark_step_duration_seconds_count 2"));
        assert!(text.contains("waymark_timer_lateness_seconds_count 1"));
        assert!(text.contains("waymark_due_runs 4"));
        assert!(text.contains("waymark_oldest_due_run_age_seconds 9"));
        assert!(!text.contains("tenant"));
    }
}
