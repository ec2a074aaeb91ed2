//! How runs end badly: compensation after failure, cancellation and abort, a failing
//! compensation, hold on failure, terminate, and cancel in every status.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use waymark_engine::{EngineError, RunStatus};

use crate::support::{
    on_both_backends, spawn_runner, start_req, test_runner_config, wait_for_status, wait_until,
    TestDb,
};

use super::*;

on_both_backends!(
    a_failure_compensates_completed_states_in_reverse_including_the_interrupted_one,
    cancelling_a_waiting_run_compensates_and_ends_cancelled,
    abort_compensates_and_ends_cancelled_with_its_reason,
    a_failing_compensation_stops_in_compensation_failed_then_retry_and_skip_finish_it,
    retrying_a_compensated_run_is_a_conflict,
    on_failure_hold_keeps_the_run_retryable_without_compensation,
    terminate_ends_at_once_without_compensation,
    cancel_works_in_every_non_terminal_status,
    a_running_steps_success_after_cancel_is_committed_and_compensated,
);

async fn a_failure_compensates_completed_states_in_reverse_including_the_interrupted_one(
    db: TestDb,
) {
    let (_, engine, probe) = setup(&db).await;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req("saga", json!({"fail_at_three": true})))
        .await
        .unwrap()
        .run;
    let failed = wait_for_status(&db.store, run.id, RunStatus::Failed).await;
    runner.stop().await;
    assert_eq!(*probe.undone.lock().unwrap(), vec!["three", "two", "one"]);
    assert_eq!(failed.error.unwrap().message, "the bank said no");
    let ending = failed.ending.unwrap();
    assert_eq!(
        (ending.status, ending.reason.as_str()),
        (RunStatus::Failed, "the bank said no")
    );
    let h = history(&db, run.id).await;
    let path: Vec<(&str, &str)> = h
        .iter()
        .map(|e| (e.cause.as_str(), e.to_state.as_str()))
        .collect();
    assert_eq!(
        path,
        vec![
            ("started", "one"),
            ("step", "two"),
            ("step", "three"),
            ("failed", "three"),
            ("compensated", "three"),
            ("compensated", "two"),
            ("compensated", "one"),
            ("compensation_done", "three"),
        ]
    );
    assert_eq!(h[3].to_status, RunStatus::Compensating);
}

async fn cancelling_a_waiting_run_compensates_and_ends_cancelled(db: TestDb) {
    let (_, engine, probe) = setup(&db).await;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req("saga", json!({"wait_at_two": true})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, run.id, RunStatus::Waiting).await;
    engine
        .cancel(&ALL, run.id, "key:ops", "customer left", None)
        .await
        .unwrap();
    let cancelled = wait_for_status(&db.store, run.id, RunStatus::Cancelled).await;
    runner.stop().await;
    assert_eq!(*probe.undone.lock().unwrap(), vec!["two", "one"]);
    let ending = cancelled.ending.unwrap();
    assert_eq!(
        (ending.actor.as_str(), ending.reason.as_str()),
        ("key:ops", "customer left")
    );
    let h = history(&db, run.id).await;
    let cancel = h.iter().find(|e| e.cause == "cancel").unwrap();
    assert_eq!(
        (cancel.actor.as_str(), cancel.to_status),
        ("key:ops", RunStatus::Compensating)
    );
    // Cancelling again: it has ended.
    assert!(matches!(
        engine.cancel(&ALL, run.id, "key:ops", "again", None).await,
        Err(EngineError::Conflict(_))
    ));
}

async fn abort_compensates_and_ends_cancelled_with_its_reason(db: TestDb) {
    let (_, engine, probe) = setup(&db).await;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req("saga", json!({"abort_at_two": true})))
        .await
        .unwrap()
        .run;
    let cancelled = wait_for_status(&db.store, run.id, RunStatus::Cancelled).await;
    runner.stop().await;
    assert_eq!(*probe.undone.lock().unwrap(), vec!["two", "one"]);
    assert_eq!(
        cancelled.ending.unwrap().reason,
        "the owner changed their mind"
    );
    assert!(causes(&history(&db, run.id).await).contains(&"abort"));
}

async fn a_failing_compensation_stops_in_compensation_failed_then_retry_and_skip_finish_it(
    db: TestDb,
) {
    let (_, engine, probe) = setup(&db).await;
    probe.fail_compensation_of_two.store(true, Ordering::SeqCst);
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req("saga", json!({"fail_at_three": true})))
        .await
        .unwrap()
        .run;
    let stuck = wait_for_status(&db.store, run.id, RunStatus::CompensationFailed).await;
    assert_eq!(
        stuck.error.unwrap().message,
        "cannot release the reservation"
    );
    assert_eq!(*probe.undone.lock().unwrap(), vec!["three"]);
    // Cancelling it is a conflict; it is not silently failed.
    assert!(matches!(
        engine.cancel(&ALL, run.id, "key:ops", "x", None).await,
        Err(EngineError::Conflict(_))
    ));
    // Retried while the reservation still cannot be released: stuck again.
    engine.retry(&ALL, run.id, "key:ops", None).await.unwrap();
    let store = db.store.clone();
    wait_until(
        "the retried compensation fails again",
        Duration::from_secs(30),
        || {
            let store = store.clone();
            async move {
                let h = store.run_history(&ALL, run.id).await.unwrap().unwrap();
                h.iter()
                    .filter(|e| e.cause == "compensation_failed")
                    .count()
                    == 2
            }
        },
    )
    .await;
    wait_for_status(&db.store, run.id, RunStatus::CompensationFailed).await;
    // The operator skips it: compensation goes on with `one`, and the run fails.
    engine
        .skip_compensation(&ALL, run.id, "key:ops", None)
        .await
        .unwrap();
    let failed = wait_for_status(&db.store, run.id, RunStatus::Failed).await;
    runner.stop().await;
    assert_eq!(*probe.undone.lock().unwrap(), vec!["three", "one"]);
    assert_eq!(failed.error.unwrap().message, "the bank said no");
    let h = history(&db, run.id).await;
    let skip = h.iter().find(|e| e.cause == "skip_compensation").unwrap();
    assert_eq!(
        (skip.actor.as_str(), skip.to_state.as_str()),
        ("key:ops", "two")
    );
    let retried = h.iter().find(|e| e.cause == "retry_compensation").unwrap();
    assert_eq!(retried.actor, "key:ops");
    let records = db.store.run_compensations(run.id).await.unwrap();
    let statuses: Vec<_> = records
        .iter()
        .map(|c| (c.state.as_str(), c.status.as_str()))
        .collect();
    assert_eq!(
        statuses,
        vec![("one", "done"), ("two", "skipped"), ("three", "done")]
    );
}

async fn retrying_a_compensated_run_is_a_conflict(db: TestDb) {
    let (_, engine, _) = setup(&db).await;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req("saga", json!({"fail_at_three": true})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, run.id, RunStatus::Failed).await;
    runner.stop().await;
    match engine.retry(&ALL, run.id, "key:ops", None).await {
        Err(EngineError::Conflict(m)) => assert!(m.contains("for good"), "{m}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(matches!(
        engine
            .skip_compensation(&ALL, run.id, "key:ops", None)
            .await,
        Err(EngineError::Conflict(_))
    ));
}

async fn on_failure_hold_keeps_the_run_retryable_without_compensation(db: TestDb) {
    let (_, engine, probe) = setup(&db).await;
    probe.hold_step_fails.store(true, Ordering::SeqCst);
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req("held", json!({})))
        .await
        .unwrap()
        .run;
    let failed = wait_for_status(&db.store, run.id, RunStatus::Failed).await;
    assert!(failed.held);
    assert!(
        probe.undone.lock().unwrap().is_empty(),
        "no compensation under hold"
    );
    probe.hold_step_fails.store(false, Ordering::SeqCst);
    engine.retry(&ALL, run.id, "key:ops", None).await.unwrap();
    let done = wait_for_status(&db.store, run.id, RunStatus::Completed).await;
    runner.stop().await;
    assert_eq!(done.output, Some(json!("posted")));
    assert!(causes(&history(&db, run.id).await).contains(&"operator_retry"));
}

async fn terminate_ends_at_once_without_compensation(db: TestDb) {
    let (_, engine, probe) = setup(&db).await;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req("saga", json!({"wait_at_two": true})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, run.id, RunStatus::Waiting).await;
    let ended = engine
        .terminate(&ALL, run.id, "key:admin", "runaway", None)
        .await
        .unwrap();
    runner.stop().await;
    assert_eq!(ended.status, RunStatus::Cancelled);
    assert!(probe.undone.lock().unwrap().is_empty());
    let ending = ended.ending.unwrap();
    assert_eq!(
        (ending.actor.as_str(), ending.reason.as_str()),
        ("key:admin", "terminated: runaway")
    );
    let h = history(&db, run.id).await;
    assert_eq!(h.last().unwrap().cause, "terminate");
    assert!(matches!(
        engine
            .terminate(&ALL, run.id, "key:admin", "again", None)
            .await,
        Err(EngineError::Conflict(_))
    ));
}

async fn cancel_works_in_every_non_terminal_status(db: TestDb) {
    let (clock, engine, _) = setup(&db).await;
    let (registry, handles) = crate::support::workflows::registry();
    let shared_engine =
        waymark_engine::Engine::new(db.store.clone(), Arc::new(registry), engine.clock.clone());
    // pending: no runner yet.
    let pending = engine
        .start(start_req("saga", json!({})))
        .await
        .unwrap()
        .run;
    assert_eq!(
        engine
            .cancel(&ALL, pending.id, "key:ops", "x", None)
            .await
            .unwrap()
            .status,
        RunStatus::Compensating
    );
    let runner = spawn_runner(engine.clone(), test_runner_config());
    wait_for_status(&db.store, pending.id, RunStatus::Cancelled).await;
    // sleeping
    let sleeping = engine
        .start(start_req("approval", json!({})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, sleeping.id, RunStatus::Sleeping).await;
    engine
        .cancel(&ALL, sleeping.id, "key:ops", "x", None)
        .await
        .unwrap();
    wait_for_status(&db.store, sleeping.id, RunStatus::Cancelled).await;
    // waiting
    let waiting = engine
        .start(start_req("saga", json!({"wait_at_two": true})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, waiting.id, RunStatus::Waiting).await;
    engine
        .cancel(&ALL, waiting.id, "key:ops", "x", None)
        .await
        .unwrap();
    wait_for_status(&db.store, waiting.id, RunStatus::Cancelled).await;
    runner.stop().await;
    // retrying and running use the shared test workflows.
    let other_runner = spawn_runner(shared_engine.clone(), test_runner_config());
    let retrying = shared_engine
        .start(start_req("flaky", json!({"fail_times": 5})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, retrying.id, RunStatus::Retrying).await;
    shared_engine
        .cancel(&ALL, retrying.id, "key:ops", "x", None)
        .await
        .unwrap();
    wait_for_status(&db.store, retrying.id, RunStatus::Cancelled).await;
    let running = shared_engine
        .start(start_req("gated", json!({})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, running.id, RunStatus::Running).await;
    let entered = handles.gate_entered.clone();
    wait_until("the gated step runs", Duration::from_secs(10), || {
        let entered = entered.clone();
        async move { entered.load(Ordering::SeqCst) == 1 }
    })
    .await;
    let requested = shared_engine
        .cancel(&ALL, running.id, "key:ops", "x", None)
        .await
        .unwrap();
    assert_eq!(
        requested.status,
        RunStatus::Running,
        "a held run is asked to stop"
    );
    assert!(requested.cancel_request.is_some());
    let cancelled = wait_for_status(&db.store, running.id, RunStatus::Cancelled).await;
    other_runner.stop().await;
    assert_eq!(
        handles.gate_cancelled.load(Ordering::SeqCst),
        1,
        "the step's token fired"
    );
    assert_eq!(cancelled.ending.unwrap().actor, "key:ops");
    let _ = clock;
}

async fn a_running_steps_success_after_cancel_is_committed_and_compensated(db: TestDb) {
    let (_, engine, _) = setup(&db).await;
    let mut config = test_runner_config();
    config.lease = Duration::from_millis(900);
    let runner = spawn_runner(engine.clone(), config);
    let run = engine
        .start(start_req("stubborn", json!({})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, run.id, RunStatus::Running).await;
    engine
        .cancel(&ALL, run.id, "key:ops", "stop", None)
        .await
        .unwrap();
    let cancelled = wait_for_status(&db.store, run.id, RunStatus::Cancelled).await;
    runner.stop().await;
    let h = history(&db, run.id).await;
    let path: Vec<(&str, &str)> = h
        .iter()
        .map(|e| (e.cause.as_str(), e.to_state.as_str()))
        .collect();
    assert_eq!(
        path,
        vec![
            ("started", "one"),
            ("cancel_requested", "one"),
            ("step", "two"),
            ("cancel", "two"),
            ("compensated", "two"),
            ("compensated", "one"),
            ("compensation_done", "two"),
        ]
    );
    assert_eq!(cancelled.state, "two");
}
