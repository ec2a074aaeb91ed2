//! Turning what a step returned into the transition to commit.
//!
//! Pure: no I/O, no clock reads (the caller passes `now`), so every rule here (edge
//! enforcement, payload limits, retry and backoff) is unit-tested without a database.
//! The one exception is opt-in: with `WAYMARK_EDGE_LOG` set, the edges taken are
//! appended to a log for transition coverage ([`crate::edge_log`]).

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::error::StepError;
use crate::start::StartRun;
use crate::store::{
    Cause, ChildrenWait, Commit, CompensationRecord, Next, Outcome, Run, SignalTarget, Target,
    Upgrade, WaitingFor,
};
use crate::workflow::{Definition, EdgeKind, OnFailure, RawTransition, Registry};

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
    /// The workflows children may be started from.
    pub registry: &'a Registry,
    /// Set when the run was loaded from an older workflow version.
    pub upgrade: Option<Upgrade>,
}

/// When a step's timer fires: a delay too long to be a date fails the run with a
/// clear error instead of overflowing.
fn wake_at(wake: crate::workflow::Wake, input: &PlanInput<'_>) -> Result<DateTime<Utc>, StepError> {
    wake.instant(input.now).ok_or_else(|| {
        StepError::fatal(format!(
            "a timer {wake:?} from now is beyond any date the engine can keep"
        ))
    })
}

/// Decides the commit for `run` given its step's `result`.
pub fn plan(
    definition: &Definition,
    run: &Run,
    result: Result<RawTransition, StepError>,
    input: &PlanInput<'_>,
) -> Commit {
    let outcome = result.and_then(|transition| forward(definition, run, transition, input));
    let (outcome, cause) = match outcome {
        Ok(outcome) => (outcome, Cause::Step),
        Err(error) => failure(definition, run, error, input.now),
    };
    commit(run, outcome, cause, input)
}

fn commit(run: &Run, outcome: Outcome, cause: Cause, input: &PlanInput<'_>) -> Commit {
    Commit {
        from_state: run.state.clone(),
        from_position: (run.visit, run.attempt),
        outcome,
        cause,
        actor: input.actor.to_owned(),
        step_started_at: input.step_started_at,
        now: input.now,
        lease: input.lease,
        upgrade: input.upgrade.clone(),
    }
}

fn forward(
    definition: &Definition,
    run: &Run,
    transition: RawTransition,
    input: &PlanInput<'_>,
) -> Result<Outcome, StepError> {
    match transition {
        RawTransition::Next { state, data } => {
            let target =
                checked_target(definition, run, &state, data, EdgeKind::Next, None, input)?;
            crate::edge_log::taken(&run.workflow, &run.state, EdgeKind::Next, None, &state);
            let capable = target
                .capability
                .as_ref()
                .is_none_or(|c| input.capabilities.contains(c));
            let next = if input.may_hold && capable {
                Next::Hold
            } else {
                Next::Release
            };
            Ok(Outcome::Enter { target, next })
        }
        RawTransition::Sleep { state, data, wake } => {
            let target =
                checked_target(definition, run, &state, data, EdgeKind::Timer, None, input)?;
            crate::edge_log::taken(&run.workflow, &run.state, EdgeKind::Timer, None, &state);
            Ok(Outcome::Enter {
                target,
                next: Next::Sleep(wake_at(wake, input)?),
            })
        }
        RawTransition::Wait { on, timeout } => {
            if on.is_empty() && timeout.is_none() {
                return Err(StepError::fatal(format!(
                    "state {:?} waits for nothing: name at least one signal or a timeout",
                    run.state
                )));
            }
            let mut waiting = WaitingFor::default();
            for (signal, state, data) in on {
                let target = checked_target(
                    definition,
                    run,
                    &state,
                    data,
                    EdgeKind::Signal,
                    Some(&signal),
                    input,
                )?;
                waiting.signals.push(SignalTarget { signal, target });
            }
            let mut timeout_at = None;
            if let Some((wake, state, data)) = timeout {
                waiting.timeout = Some(checked_target(
                    definition,
                    run,
                    &state,
                    data,
                    EdgeKind::Timer,
                    None,
                    input,
                )?);
                timeout_at = Some(wake_at(wake, input)?);
            }
            Ok(Outcome::Wait {
                waiting,
                timeout_at,
            })
        }
        RawTransition::FanOut {
            children,
            then,
            policy,
        } => {
            let then = checked_target(
                definition,
                run,
                &then.0,
                then.1,
                EdgeKind::Children,
                None,
                input,
            )?;
            let actor = format!("run:{}", run.id);
            let mut new_runs = Vec::with_capacity(children.len());
            for (index, child) in children.into_iter().enumerate() {
                // A tenant's workflow must not reach Waymark's own ones through a
                // fan-out: they check what only their own start paths know.
                let reachable = input
                    .registry
                    .get(&child.workflow)
                    .is_none_or(|w| w.definition().access == crate::Access::Tenant);
                if definition.access == crate::Access::Tenant && !reachable {
                    return Err(StepError::fatal(format!(
                        "child #{index} cannot start: workflow {:?} is started only by Waymark",
                        child.workflow
                    )));
                }
                let new = crate::start::prepare(
                    input.registry,
                    input.max_payload,
                    StartRun {
                        tenant: run.tenant.clone(),
                        workflow: child.workflow,
                        input: child.input,
                        idempotency_key: None,
                        tags: Vec::new(),
                        actor: actor.clone(),
                    },
                    input.now,
                )
                .map_err(|e| StepError::fatal(format!("child #{index} cannot start: {e}")))?;
                new_runs.push(new);
            }
            Ok(Outcome::FanOut {
                waiting: WaitingFor {
                    children: Some(ChildrenWait {
                        visit: run.visit,
                        count: new_runs.len() as u32,
                        policy,
                        then,
                        hold_on_failure: definition.on_failure == OnFailure::Hold,
                    }),
                    ..WaitingFor::default()
                },
                children: new_runs,
            })
        }
        RawTransition::Complete { output } => {
            if !definition.state(&run.state).is_some_and(|s| s.completes) {
                return Err(StepError::fatal(format!(
                    "state {:?} completed the run, but its definition does not declare that it completes",
                    run.state
                )));
            }
            check_size("output", &output, input.max_payload)?;
            Ok(Outcome::Complete { output })
        }
        RawTransition::Abort { reason } => Ok(Outcome::Abort { reason }),
        RawTransition::ContinueAsNew { state, data } => {
            continuation(definition, run, &state, data, input)
        }
    }
}

/// A run continuing as new: only from a state that declares it, and only a top-level
/// run (a parent gathers its child's output, which a continuation does not have).
fn continuation(
    definition: &Definition,
    run: &Run,
    state: &str,
    data: Value,
    input: &PlanInput<'_>,
) -> Result<Outcome, StepError> {
    if !definition
        .state(&run.state)
        .is_some_and(|s| s.continues_as_new)
    {
        return Err(StepError::fatal(format!(
            "state {:?} continued the run as new, but its definition does not declare that it may",
            run.state
        )));
    }
    if run.parent_id.is_some() {
        return Err(StepError::fatal(
            "a child run cannot continue as new: its parent waits for its own output",
        ));
    }
    let next = crate::start::prepare_continuation(
        input.registry,
        input.max_payload,
        run,
        state,
        data,
        input.now,
    )?;
    Ok(Outcome::ContinueAsNew { next })
}

fn checked_target(
    definition: &Definition,
    run: &Run,
    state: &str,
    data: Value,
    kind: EdgeKind,
    signal: Option<&str>,
    input: &PlanInput<'_>,
) -> Result<Target, StepError> {
    if !definition.allows(&run.state, state, kind, signal) {
        let how = match (kind, signal) {
            (EdgeKind::Next, _) => "an edge".to_owned(),
            (EdgeKind::Timer, _) => "a timer edge".to_owned(),
            (EdgeKind::Signal, Some(signal)) => format!("an edge on signal {signal:?}"),
            (EdgeKind::Signal, None) => "a signal edge".to_owned(),
            (EdgeKind::Children, _) => "a children edge".to_owned(),
        };
        return Err(StepError::fatal(format!(
            "undeclared transition: state {:?} has no {how} to {state:?}",
            run.state
        )));
    }
    check_size("state data", &data, input.max_payload)?;
    Ok(definition.target(state, data))
}

fn check_size(what: &str, value: &Value, limit: usize) -> Result<(), StepError> {
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
        (
            Outcome::Fail {
                error,
                hold: definition.on_failure == OnFailure::Hold,
            },
            Cause::Failed,
        )
    }
}

/// Decides the commit after running the compensation of `compensation` (a visit of a
/// compensable state), under that state's retry policy.
pub fn plan_compensation(
    definition: &Definition,
    run: &Run,
    compensation: &CompensationRecord,
    result: Result<(), StepError>,
    input: &PlanInput<'_>,
) -> Commit {
    let outcome = match result {
        Ok(()) => Outcome::Compensated {
            visit: compensation.visit,
            state: compensation.state.clone(),
        },
        Err(error) => {
            let policy = definition.retry_for(&compensation.state);
            let attempt = run.attempt.max(1) as u32;
            if error.is_retryable() && policy.allows_retry_after(attempt) {
                let delay = chrono::Duration::from_std(policy.backoff(attempt + 1))
                    .unwrap_or(chrono::Duration::MAX);
                Outcome::CompensationRetry {
                    error,
                    due_at: input.now + delay,
                }
            } else {
                Outcome::CompensationFailed { error }
            }
        }
    };
    commit(run, outcome, Cause::Step, input)
}

/// The commit that ends a compensating run with nothing left to undo.
pub fn plan_compensation_done(run: &Run, input: &PlanInput<'_>) -> Commit {
    commit(run, Outcome::CompensationDone, Cause::Step, input)
}

/// The commit that applies a cancellation to a step that did not return in its grace.
pub fn plan_abandon(run: &Run, input: &PlanInput<'_>) -> Commit {
    commit(run, Outcome::Abandon, Cause::Step, input)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use uuid::Uuid;

    use super::*;
    use crate::retry::RetryPolicy;
    use crate::status::RunStatus;
    use crate::workflow::{OnFailure, StateDef, Wake};

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
            created_at: now,
            updated_at: now,
            finished_at: None,
        }
    }

    fn input<'a>(caps: &'a [String]) -> PlanInput<'a> {
        static REGISTRY: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
        PlanInput {
            registry: REGISTRY.get_or_init(Registry::new),
            upgrade: None,
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
                target: Target {
                    state: "b".into(),
                    data: json!("b"),
                    capability: Some("gpu".into()),
                    compensable: false,
                },
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
    fn continuing_as_new_is_refused_from_an_undeclared_state_and_in_a_child_run() {
        let definition = Definition::new([
            StateDef::new("a").next("b"),
            StateDef::new("b").continues_as_new(),
        ]);
        let again = || RawTransition::ContinueAsNew {
            state: "a".into(),
            data: json!("a"),
        };
        let commit = plan(&definition, &run_in("a", 1), Ok(again()), &input(&[]));
        let Outcome::Fail { error, .. } = commit.outcome else {
            panic!("{:?}", commit.outcome)
        };
        assert!(error.message.contains("does not declare"), "{error:?}");
        let mut child = run_in("b", 1);
        child.parent_id = Some(Uuid::now_v7());
        let commit = plan(&definition, &child, Ok(again()), &input(&[]));
        let Outcome::Fail { error, .. } = commit.outcome else {
            panic!("{:?}", commit.outcome)
        };
        assert!(error.message.contains("child run"), "{error:?}");
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
        let Outcome::Fail { error, .. } = commit.outcome else {
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
        let Outcome::Fail { error, .. } = commit.outcome else {
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
        assert_eq!(
            commit.outcome,
            Outcome::Fail {
                error: err,
                hold: false
            }
        );
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
        assert_eq!(
            commit.outcome,
            Outcome::Fail {
                error: err,
                hold: false
            }
        );
    }

    fn signal_definition() -> Definition {
        Definition::new([
            StateDef::new("a")
                .on_signal("go", "b")
                .timer("c")
                .children("c"),
            StateDef::new("b").compensates().completes(),
            StateDef::new("c").completes(),
        ])
        .signal("go")
        .on_failure(OnFailure::Hold)
    }

    #[test]
    fn a_wait_names_each_signal_target_and_the_timeout() {
        let i = input(&[]);
        let t = RawTransition::Wait {
            on: vec![("go".into(), "b".into(), json!("b"))],
            timeout: Some((Wake::After(Duration::from_secs(60)), "c".into(), json!("c"))),
        };
        let commit = plan(&signal_definition(), &run_in("a", 1), Ok(t), &i);
        let Outcome::Wait {
            waiting,
            timeout_at,
        } = commit.outcome
        else {
            panic!("{:?}", commit.outcome)
        };
        assert_eq!(timeout_at, Some(i.now + chrono::Duration::seconds(60)));
        assert_eq!(waiting.signals.len(), 1);
        assert_eq!(waiting.signals[0].signal, "go");
        assert!(
            waiting.signals[0].target.compensable,
            "b declares a compensation"
        );
        assert_eq!(waiting.timeout.unwrap().state, "c");
        // A signal the table does not route from here is refused.
        let t = RawTransition::Wait {
            on: vec![("stop".into(), "b".into(), json!("b"))],
            timeout: None,
        };
        let commit = plan(&signal_definition(), &run_in("a", 1), Ok(t), &i);
        assert!(
            matches!(commit.outcome, Outcome::Fail { ref error, .. } if error.message.contains("signal \"stop\""))
        );
        // Waiting for nothing at all is a bug in the step.
        let t = RawTransition::Wait {
            on: vec![],
            timeout: None,
        };
        let commit = plan(&signal_definition(), &run_in("a", 1), Ok(t), &i);
        assert!(matches!(commit.outcome, Outcome::Fail { .. }));
    }

    #[test]
    fn a_fan_out_to_an_unknown_workflow_fails_fatally() {
        let t = RawTransition::FanOut {
            children: vec![crate::workflow::ChildSpec {
                workflow: "nope".into(),
                input: json!({}),
            }],
            then: ("c".into(), json!("c")),
            policy: crate::workflow::FanOutPolicy::FailFast,
        };
        let commit = plan(&signal_definition(), &run_in("a", 1), Ok(t), &input(&[]));
        let Outcome::Fail { error, hold } = commit.outcome else {
            panic!()
        };
        assert!(error.message.contains("child #0 cannot start"), "{error}");
        assert!(hold, "the workflow holds failures");
    }

    /// A workflow that acts across tenants, as the registry sees it.
    struct Sweeper;

    impl crate::workflow::Workflow for Sweeper {
        const NAME: &'static str = "sweeper";
        type Input = Value;
        type State = SweepState;
        type Output = ();
        type Signal = crate::workflow::NoSignal;

        fn definition() -> Definition {
            Definition::new([StateDef::new("sweep").completes()])
                .access(crate::workflow::Access::System)
        }

        fn initial_state(_: &Value) -> SweepState {
            SweepState
        }

        async fn step(
            &self,
            _: &crate::workflow::StepContext,
            _: &Value,
            _: SweepState,
        ) -> Result<crate::workflow::Transition<SweepState, ()>, StepError> {
            Ok(crate::workflow::Transition::complete(()))
        }
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct SweepState;

    impl crate::workflow::WorkflowState for SweepState {
        fn name(&self) -> &'static str {
            "sweep"
        }
    }

    #[test]
    fn a_tenant_workflow_cannot_fan_out_to_a_system_workflow() {
        let mut registry = Registry::new();
        registry.register(Sweeper).unwrap();
        let fan_out = || RawTransition::FanOut {
            children: vec![crate::workflow::ChildSpec {
                workflow: "sweeper".into(),
                input: json!({}),
            }],
            then: ("c".into(), json!("c")),
            policy: crate::workflow::FanOutPolicy::FailFast,
        };
        let i = PlanInput {
            registry: &registry,
            ..input(&[])
        };
        let commit = plan(&signal_definition(), &run_in("a", 1), Ok(fan_out()), &i);
        let Outcome::Fail { error, .. } = commit.outcome else {
            panic!("{:?}", commit.outcome)
        };
        assert!(error.message.contains("started only by Waymark"), "{error}");
        // A system parent (in the system tenant) may start it.
        let system = signal_definition().access(crate::workflow::Access::System);
        let mut run = run_in("a", 1);
        run.tenant = crate::SYSTEM_TENANT.into();
        let commit = plan(&system, &run, Ok(fan_out()), &i);
        assert!(
            matches!(commit.outcome, Outcome::FanOut { .. }),
            "{:?}",
            commit.outcome
        );
        // And in another tenant the engine refuses it even then: system runs live in
        // the system tenant only.
        let commit = plan(&system, &run_in("a", 1), Ok(fan_out()), &i);
        assert!(
            matches!(commit.outcome, Outcome::Fail { ref error, .. } if error.message.contains("runs only in the \"system\" tenant")),
            "{:?}",
            commit.outcome
        );
    }

    #[test]
    fn a_timer_beyond_any_date_fails_the_run_instead_of_overflowing() {
        for wake in [
            Wake::After(Duration::MAX),
            Wake::After(Duration::from_secs(u64::MAX / 2)),
        ] {
            let sleep = RawTransition::Sleep {
                state: "c".into(),
                data: json!("c"),
                wake,
            };
            let wait = RawTransition::Wait {
                on: vec![("go".into(), "b".into(), json!("b"))],
                timeout: Some((wake, "c".into(), json!("c"))),
            };
            for t in [sleep, wait] {
                let commit = plan(&signal_definition(), &run_in("a", 1), Ok(t), &input(&[]));
                assert!(
                    matches!(commit.outcome, Outcome::Fail { ref error, .. } if error.message.contains("beyond any date")),
                    "{:?}",
                    commit.outcome
                );
            }
        }
    }

    #[test]
    fn abort_carries_its_reason() {
        let t = RawTransition::Abort {
            reason: "owner said stop".into(),
        };
        let commit = plan(&signal_definition(), &run_in("a", 1), Ok(t), &input(&[]));
        assert_eq!(
            commit.outcome,
            Outcome::Abort {
                reason: "owner said stop".into()
            }
        );
    }
}
