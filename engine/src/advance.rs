//! Turning what a step returned into the transition to commit.
//!
//! Pure: no I/O, no clock reads (the caller passes `now`), so every rule here (edge
//! enforcement, payload limits, retry and backoff) is unit-tested without a database.

use chrono::{DateTime, Utc};

use crate::error::StepError;
use crate::store::{Cause, Commit, Next, Outcome, Run};
use crate::workflow::{Definition, EdgeKind, RawTransition};

/// What the caller knows besides the step's result.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    pub now: DateTime<Utc>,
    pub step_started_at: DateTime<Utc>,
    pub lease: std::time::Duration,
    pub max_payload: usize,
    pub actor: &'a str,
    /// Capabilities of the committing worker: it keeps the lease on the next state only
    /// if it can run that state's step.
    pub capabilities: &'a [String],
    /// A worker that is shutting down hands the next state to others.
    pub may_hold: bool,
}

/// Decides the commit for `run` given its step's `result`.
pub fn plan(
    definition: &Definition,
    run: &Run,
    result: Result<RawTransition, StepError>,
    input: &PlanInput<'_>,
) -> Commit {
    let outcome = match result {
        Ok(RawTransition::Next { state, data }) => {
            enter(definition, run, state, data, EdgeKind::Next, None, input)
        }
        Ok(RawTransition::Sleep { state, data, wake }) => {
            let at = wake.instant(input.now);
            enter(
                definition,
                run,
                state,
                data,
                EdgeKind::Timer,
                Some(at),
                input,
            )
        }
        Ok(RawTransition::Complete { output }) => {
            if !definition.state(&run.state).is_some_and(|s| s.completes) {
                Err(StepError::fatal(format!(
                    "state {:?} completed the run, but its definition does not declare that it completes",
                    run.state
                )))
            } else {
                check_size("output", &output, input.max_payload)
                    .map(|()| Outcome::Complete { output })
            }
        }
        Err(error) => Err(error),
    };
    let (outcome, cause) = match outcome {
        Ok(outcome) => (outcome, Cause::Step),
        Err(error) => failure(definition, run, error, input.now),
    };
    Commit {
        from_state: run.state.clone(),
        from_position: (run.visit, run.attempt),
        outcome,
        cause,
        actor: input.actor.to_owned(),
        step_started_at: input.step_started_at,
        now: input.now,
        lease: input.lease,
    }
}

fn enter(
    definition: &Definition,
    run: &Run,
    state: String,
    data: serde_json::Value,
    kind: EdgeKind,
    wake: Option<DateTime<Utc>>,
    input: &PlanInput<'_>,
) -> Result<Outcome, StepError> {
    if !definition.allows(&run.state, &state, kind) {
        let how = match kind {
            EdgeKind::Next => "an edge",
            EdgeKind::Timer => "a timer edge",
        };
        return Err(StepError::fatal(format!(
            "undeclared transition: state {:?} has no {how} to {state:?}",
            run.state
        )));
    }
    check_size("state data", &data, input.max_payload)?;
    let capability = definition
        .state(&state)
        .and_then(|s| s.capability)
        .map(str::to_owned);
    let next = match wake {
        Some(at) => Next::Sleep(at),
        None => {
            let capable = capability
                .as_ref()
                .is_none_or(|c| input.capabilities.contains(c));
            if input.may_hold && capable {
                Next::Hold
            } else {
                Next::Release
            }
        }
    };
    Ok(Outcome::Enter {
        state,
        data,
        capability,
        next,
    })
}

fn check_size(what: &str, value: &serde_json::Value, limit: usize) -> Result<(), StepError> {
    let size = value.to_string().len();
    if size > limit {
        Err(StepError::fatal(format!(
            "{what} is {size} bytes, over the limit of {limit} bytes"
        )))
    } else {
        Ok(())
    }
}

fn failure(
    definition: &Definition,
    run: &Run,
    error: StepError,
    now: DateTime<Utc>,
) -> (Outcome, Cause) {
    let policy = definition.retry_for(&run.state);
    let attempt = run.attempt.max(1) as u32;
    if error.is_retryable() && policy.allows_retry_after(attempt) {
        let delay = chrono::Duration::from_std(policy.backoff(attempt + 1))
            .unwrap_or(chrono::Duration::MAX);
        (
            Outcome::Retry {
                error,
                due_at: now + delay,
            },
            Cause::Retry,
        )
    } else {
        (Outcome::Fail { error }, Cause::Failed)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::retry::RetryPolicy;
    use crate::status::RunStatus;
    use crate::workflow::{StateDef, Wake};

    fn definition() -> Definition {
        Definition::new([
            StateDef::new("a").next("b").timer("c"),
            StateDef::new("b").capability("gpu").next("c"),
            StateDef::new("c").completes(),
        ])
        .with_retry(RetryPolicy {
            max_attempts: 3,
            initial_delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(60),
            jitter: 0.0,
            step_timeout: Duration::from_secs(5),
        })
    }

    fn run_in(state: &str, attempt: i32) -> Run {
        let now = Utc::now();
        Run {
            id: Uuid::now_v7(),
            tenant: "acme".into(),
            workflow: "w".into(),
            workflow_version: 1,
            status: RunStatus::Running,
            state: state.into(),
            state_data: json!({}),
            input: json!({}),
            output: None,
            error: None,
            idempotency_key: None,
            capability: None,
            visit: 4,
            attempt,
            due_at: Some(now),
            lease_token: 1,
            locked_by: Some(Uuid::now_v7()),
            lease_expires_at: Some(now),
            progress_pct: None,
            progress_message: None,
            created_at: now,
            updated_at: now,
            finished_at: None,
        }
    }

    fn input(caps: &[String]) -> PlanInput<'_> {
        PlanInput {
            now: Utc::now(),
            step_started_at: Utc::now(),
            lease: Duration::from_secs(30),
            max_payload: 64,
            actor: "worker",
            capabilities: caps,
            may_hold: true,
        }
    }

    #[test]
    fn a_declared_edge_enters_the_next_state_holding_the_lease_when_capable() {
        let caps = vec!["gpu".to_owned()];
        let next = RawTransition::Next {
            state: "b".into(),
            data: json!("b"),
        };
        let commit = plan(
            &definition(),
            &run_in("a", 1),
            Ok(next.clone()),
            &input(&caps),
        );
        assert_eq!(
            commit.outcome,
            Outcome::Enter {
                state: "b".into(),
                data: json!("b"),
                capability: Some("gpu".into()),
                next: Next::Hold
            }
        );
        assert_eq!(commit.from_position, (4, 1));
        // Without the capability the worker hands the run to one that has it.
        let commit = plan(&definition(), &run_in("a", 1), Ok(next), &input(&[]));
        assert!(matches!(
            commit.outcome,
            Outcome::Enter {
                next: Next::Release,
                ..
            }
        ));
    }

    #[test]
    fn a_timer_edge_sleeps_until_its_instant() {
        let i = input(&[]);
        let t = RawTransition::Sleep {
            state: "c".into(),
            data: json!("c"),
            wake: Wake::After(Duration::from_secs(7 * 86400)),
        };
        let commit = plan(&definition(), &run_in("a", 1), Ok(t), &i);
        let Outcome::Enter {
            next: Next::Sleep(at),
            ..
        } = commit.outcome
        else {
            panic!("{:?}", commit.outcome)
        };
        assert_eq!(at - i.now, chrono::Duration::days(7));
    }

    #[test]
    fn an_undeclared_edge_fails_the_run_fatally() {
        // "a" may reach "c" only through a timer.
        let t = RawTransition::Next {
            state: "c".into(),
            data: json!("c"),
        };
        let commit = plan(&definition(), &run_in("a", 1), Ok(t), &input(&[]));
        let Outcome::Fail { error } = commit.outcome else {
            panic!()
        };
        assert!(error.message.contains("undeclared transition"), "{error}");
        // Completing from a state that does not declare it fails too.
        let t = RawTransition::Complete { output: json!(1) };
        let commit = plan(&definition(), &run_in("a", 1), Ok(t), &input(&[]));
        assert!(matches!(commit.outcome, Outcome::Fail { .. }));
    }

    #[test]
    fn oversized_state_data_fails_with_a_clear_error() {
        let t = RawTransition::Next {
            state: "b".into(),
            data: json!("x".repeat(100)),
        };
        let commit = plan(&definition(), &run_in("a", 1), Ok(t), &input(&[]));
        let Outcome::Fail { error } = commit.outcome else {
            panic!()
        };
        assert_eq!(
            error.message,
            "state data is 102 bytes, over the limit of 64 bytes"
        );
    }

    #[test]
    fn retryable_errors_back_off_until_attempts_run_out() {
        let i = input(&[]);
        let err = StepError::retryable("flaky");
        let commit = plan(&definition(), &run_in("c", 1), Err(err.clone()), &i);
        assert_eq!(commit.cause, Cause::Retry);
        assert_eq!(
            commit.outcome,
            Outcome::Retry {
                error: err.clone(),
                due_at: i.now + chrono::Duration::seconds(10)
            }
        );
        let commit = plan(&definition(), &run_in("c", 2), Err(err.clone()), &i);
        assert!(
            matches!(commit.outcome, Outcome::Retry { due_at, .. } if due_at == i.now + chrono::Duration::seconds(20))
        );
        let commit = plan(&definition(), &run_in("c", 3), Err(err.clone()), &i);
        assert_eq!(commit.outcome, Outcome::Fail { error: err });
        assert_eq!(commit.cause, Cause::Failed);
    }

    #[test]
    fn fatal_errors_fail_at_once() {
        let err = StepError::fatal("no such customer");
        let commit = plan(
            &definition(),
            &run_in("c", 1),
            Err(err.clone()),
            &input(&[]),
        );
        assert_eq!(commit.outcome, Outcome::Fail { error: err });
    }
}
