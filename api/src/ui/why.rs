//! The "why is it waiting?" line: one plain sentence from what the run row already says
//! (status, due time, what it waits for, attempt, lease, error) and, for a claimable run
//! nobody picks up, the engine's `pending_reason`. A pure function of its inputs, so it
//! is tested without a database.

use chrono::{DateTime, Utc};
use waymark_engine::{Run, RunStatus};

use super::page::relative;

/// What the line needs besides the run.
#[derive(Debug, Default, Clone)]
pub struct Context {
    /// `Engine::pending_reason`: no live worker knows the version, or offers the
    /// capability.
    pub pending_reason: Option<String>,
    /// Attempts the current state's retry policy allows.
    pub max_attempts: Option<u32>,
    /// How many of the children have ended, when the run gathers children.
    pub children_done: Option<u32>,
    /// What the workflow says its wait is for and until when (a dispute's evidence
    /// deadline), from the run's status details.
    pub deadline: Option<Deadline>,
}

/// A waiting state's deadline as the workflow names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadline {
    /// `evidence`, `an appeal`, …
    pub waiting_for: String,
    /// `None`: the wait never ends by itself.
    pub until: Option<DateTime<Utc>>,
    /// `internal deadline`, `appeal window`, …
    pub kind: String,
}

impl Deadline {
    /// The deadline in a run view's `details` (`details.deadline`), if any.
    pub fn from_details(details: &serde_json::Value) -> Option<Deadline> {
        let d = details.get("deadline")?;
        Some(Deadline {
            waiting_for: d.get("waiting_for")?.as_str()?.to_owned(),
            until: d
                .get("until")
                .and_then(|u| u.as_str())
                .and_then(|u| DateTime::parse_from_rfc3339(u).ok())
                .map(|u| u.with_timezone(&Utc)),
            kind: d.get("kind")?.as_str()?.to_owned(),
        })
    }
}

fn at(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// The sentence, or `None` for a run that waits for nothing (running, or ended).
pub fn line(run: &Run, now: DateTime<Utc>, context: &Context) -> Option<String> {
    if let Some(reason) = &context.pending_reason {
        return Some(format!("Pending because {reason}."));
    }
    let held_by = |run: &Run| {
        run.locked_by.map(|w| {
            format!(
                "held by worker {w}{}",
                run.lease_expires_at
                    .map(|t| format!(", lease until {}", at(t)))
                    .unwrap_or_default()
            )
        })
    };
    match run.status {
        RunStatus::Sleeping => Some(match run.due_at {
            Some(due) => format!("Sleeping until {} ({}).", at(due), relative(due, now)),
            None => "Sleeping.".into(),
        }),
        RunStatus::Waiting => {
            let wait = run.waiting_for.as_ref()?;
            let since = format!("since {}", at(run.updated_at));
            if let Some(d) = &context.deadline {
                return Some(match d.until {
                    Some(until) => format!(
                        "Waiting for {} until {} ({}, {}) {since}.",
                        d.waiting_for,
                        at(until),
                        d.kind,
                        relative(until, now)
                    ),
                    None => format!("Waiting for {} ({}) {since}.", d.waiting_for, d.kind),
                });
            }
            let timeout = run
                .due_at
                .map(|t| format!("; times out at {} ({})", at(t), relative(t, now)))
                .unwrap_or_default();
            if let Some(children) = &wait.children {
                let done = context
                    .children_done
                    .map(|d| format!("{d} of {} done", children.count))
                    .unwrap_or_else(|| format!("{} started", children.count));
                return Some(format!(
                    "Waiting on its children ({done}) {since}{timeout}."
                ));
            }
            let names = wait
                .signal_names()
                .iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(" or ");
            Some(format!("Waiting for signal {names} {since}{timeout}."))
        }
        RunStatus::Retrying => {
            let of = context
                .max_attempts
                .map(|m| format!(" of {m}"))
                .unwrap_or_default();
            let when = run
                .due_at
                .map(|t| format!(" at {} ({})", at(t), relative(t, now)))
                .unwrap_or_default();
            let error = run
                .error
                .as_ref()
                .map(|e| format!(" after error: {}", e.message))
                .unwrap_or_default();
            Some(format!("Retry {}{of}{when}{error}.", run.attempt))
        }
        RunStatus::Pending => Some(match run.due_at {
            Some(due) if due > now => {
                format!("Pending until {} ({}).", at(due), relative(due, now))
            }
            Some(due) => format!(
                "Due since {} ({}), waiting for a worker.",
                at(due),
                relative(due, now)
            ),
            None => "Due, waiting for a worker.".into(),
        }),
        RunStatus::Running | RunStatus::Compensating => {
            let doing = if run.status == RunStatus::Running {
                "Running"
            } else {
                "Compensating"
            };
            Some(match held_by(run) {
                Some(h) => format!("{doing}, {h}."),
                None => format!("{doing}, waiting for a worker."),
            })
        }
        RunStatus::Failed if run.held => Some(format!(
            "Held for an operator after failing{}: retry it, or cancel it.",
            run.error
                .as_ref()
                .map(|e| format!(" ({})", e.message))
                .unwrap_or_default()
        )),
        RunStatus::CompensationFailed => Some(format!(
            "A compensation failed{}: retry it or skip it.",
            run.error
                .as_ref()
                .map(|e| format!(" ({})", e.message))
                .unwrap_or_default()
        )),
        _ => None,
    }
}

/// The line cut to a list row's width.
pub fn short(run: &Run, now: DateTime<Utc>) -> String {
    let mut text = line(run, now, &Context::default()).unwrap_or_default();
    if text.chars().count() > 90 {
        text = text.chars().take(89).collect::<String>() + "…";
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use uuid::Uuid;
    use waymark_engine::store::{SignalTarget, Target, WaitingFor};

    fn run(status: RunStatus) -> Run {
        let at: DateTime<Utc> = "2026-12-01T10:00:00Z".parse().unwrap();
        Run {
            id: Uuid::nil(),
            tenant: "acme".into(),
            workflow: "w".into(),
            workflow_version: 1,
            status,
            state: "s".into(),
            state_data: json!({}),
            input: json!({}),
            output: None,
            error: None,
            idempotency_key: None,
            capability: None,
            visit: 1,
            attempt: 1,
            due_at: None,
            lease_token: 0,
            locked_by: None,
            lease_expires_at: None,
            progress_pct: None,
            progress_message: None,
            parent_id: None,
            parent_visit: None,
            child_index: None,
            waiting_for: None,
            received: None,
            cancel_request: None,
            ending: None,
            held: false,
            tags: vec![],
            claimed_from: None,
            created_at: at,
            updated_at: at,
            finished_at: None,
        }
    }

    fn now() -> DateTime<Utc> {
        "2026-12-01T10:05:00Z".parse().unwrap()
    }

    #[test]
    fn a_sleeping_run_says_until_when() {
        let mut r = run(RunStatus::Sleeping);
        r.due_at = Some("2026-12-01T10:15:00Z".parse().unwrap());
        assert_eq!(
            line(&r, now(), &Context::default()).unwrap(),
            "Sleeping until 2026-12-01 10:15:00 UTC (in 10 min)."
        );
    }

    #[test]
    fn a_waiting_run_names_its_signal_since_and_timeout() {
        let mut r = run(RunStatus::Waiting);
        r.due_at = Some("2026-12-01T11:00:00Z".parse().unwrap());
        r.waiting_for = Some(WaitingFor {
            signals: vec![SignalTarget {
                signal: "confirm".into(),
                target: Target {
                    state: "next".into(),
                    data: json!(null),
                    capability: None,
                    compensable: false,
                },
            }],
            timeout: None,
            children: None,
        });
        assert_eq!(
            line(&r, now(), &Context::default()).unwrap(),
            "Waiting for signal `confirm` since 2026-12-01 10:00:00 UTC; times out at \
             2026-12-01 11:00:00 UTC (in 55 min)."
        );
    }

    #[test]
    fn a_workflows_deadline_names_what_it_waits_for_and_until_when() {
        let mut r = run(RunStatus::Waiting);
        // The timer fires earlier (a reminder): the line names the deadline instead.
        r.due_at = Some("2026-12-02T10:00:00Z".parse().unwrap());
        r.waiting_for = Some(WaitingFor {
            signals: vec![],
            timeout: None,
            children: None,
        });
        let details = json!({"deadline": {"waiting_for": "evidence",
            "until": "2026-12-08T10:05:00Z", "kind": "internal deadline"}});
        let context = Context {
            deadline: Deadline::from_details(&details),
            ..Context::default()
        };
        assert_eq!(
            line(&r, now(), &context).unwrap(),
            "Waiting for evidence until 2026-12-08 10:05:00 UTC (internal deadline, in 7 d) \
             since 2026-12-01 10:00:00 UTC."
        );
        let details = json!({"deadline": {"waiting_for": "the network's decision",
            "until": null, "kind": "escalated to an operator, no deadline"}});
        let context = Context {
            deadline: Deadline::from_details(&details),
            ..Context::default()
        };
        assert_eq!(
            line(&r, now(), &context).unwrap(),
            "Waiting for the network's decision (escalated to an operator, no deadline) \
             since 2026-12-01 10:00:00 UTC."
        );
    }

    #[test]
    fn a_retry_counts_attempts_and_names_the_error() {
        let mut r = run(RunStatus::Retrying);
        r.attempt = 2;
        r.due_at = Some("2026-12-01T10:06:00Z".parse().unwrap());
        r.error = Some(waymark_engine::StepError::retryable("smtp down"));
        let context = Context {
            max_attempts: Some(5),
            ..Context::default()
        };
        assert_eq!(
            line(&r, now(), &context).unwrap(),
            "Retry 2 of 5 at 2026-12-01 10:06:00 UTC (in 1 min) after error: smtp down."
        );
    }

    #[test]
    fn the_pending_reason_wins_and_ended_runs_wait_for_nothing() {
        let r = run(RunStatus::Pending);
        let context = Context {
            pending_reason: Some("no live worker knows workflow w at version 3".into()),
            ..Context::default()
        };
        assert_eq!(
            line(&r, now(), &context).unwrap(),
            "Pending because no live worker knows workflow w at version 3."
        );
        assert_eq!(
            line(&run(RunStatus::Completed), now(), &Context::default()),
            None
        );
        let mut held = run(RunStatus::Failed);
        held.held = true;
        assert!(line(&held, now(), &Context::default())
            .unwrap()
            .starts_with("Held for an operator"));
    }
}
