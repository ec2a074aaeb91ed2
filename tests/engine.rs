//! The engine end to end in one process: runners drive test workflows against both
//! backends, with the manual clock where time matters.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use waymark_engine::{
    Clock, EngineError, Limits, RunStatus, StartRun, StoreError, SystemClock, TenantScope,
};

use crate::support::workflows::{flaky_policy, registry};
use crate::support::{
    manual_clock, on_both_backends, spawn_runner, start_req, test_runner_config, wait_for_run,
    wait_for_status, wait_until, TestDb,
};

on_both_backends!(
    start_in_commits_or_rolls_back_with_the_callers_transaction,
    a_run_advances_through_every_state_with_one_history_row_per_transition,
    retries_back_off_by_the_engine_clock_until_the_step_succeeds,
    exhausted_retries_fail_the_run_with_the_error_and_its_causes,
    fatal_errors_fail_without_retrying,
    a_seven_day_timer_fires_after_a_restart_under_the_manual_clock,
    capability_routing_sends_a_state_only_to_capable_workers,
    idempotent_start_through_the_engine,
    payload_limits_refuse_large_input_and_fail_large_output,
    unknown_workflows_and_bad_inputs_are_refused,
    shutdown_releases_runs_whose_steps_outlive_the_grace,
    a_lost_lease_cancels_the_step_and_discards_its_result,
    a_worker_never_reclaims_a_run_whose_attempt_it_still_runs,
    a_step_over_its_timeout_fails_the_attempt,
    retention_sweep_deletes_only_runs_finished_before_the_cutoff,
);

async fn a_step_over_its_timeout_fails_the_attempt(db: TestDb) {
    let (registry, _) = registry();
    let engine = db.engine(registry, Arc::new(SystemClock));
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req("hang", json!({})))
        .await
        .unwrap()
        .run;
    let failed = wait_for_status(&db.store, run.id, RunStatus::Failed).await;
    runner.stop().await;
    let error = failed.error.unwrap();
    assert_eq!(error.message, "step timed out after 0.100s");
    assert_eq!(
        error.kind,
        waymark_engine::ErrorKind::Retryable,
        "a timeout is retryable; this state allows one attempt"
    );
}

async fn retention_sweep_deletes_only_runs_finished_before_the_cutoff(db: TestDb) {
    let (mut registry, _) = registry();
    registry
        .register(waymark_workflows::housekeeping::Retention::new(
            db.store.clone(),
        ))
        .unwrap();
    let (clock, shared) = manual_clock();
    let engine = db.engine(registry, shared);
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let old = engine
        .start(start_req("three_step", json!({"n": 1})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, old.id, RunStatus::Completed).await;
    clock.advance(Duration::from_secs(10 * 86_400));
    let recent = engine
        .start(start_req("three_step", json!({"n": 2})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, recent.id, RunStatus::Completed).await;
    let unfinished = engine
        .start(start_req("sleeper", json!({"days": 30})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, unfinished.id, RunStatus::Sleeping).await;
    clock.advance(Duration::from_secs(86_400));
    // The mail ledger: a message sent 11 days ago, one sent yesterday, one never sent.
    {
        use waymark_engine::Clock;
        let now = clock.now();
        let (old, recent) = (
            now - chrono::Duration::days(11),
            now - chrono::Duration::days(1),
        );
        let stamp = |t: chrono::DateTime<chrono::Utc>| match db.backend {
            crate::support::Backend::Postgres => format!("'{}'", t.to_rfc3339()),
            crate::support::Backend::Sqlite => t.timestamp_millis().to_string(),
        };
        for (key, status, at, sent) in [
            ("old", "sent", old, Some(old)),
            ("recent", "sent", recent, Some(recent)),
            ("stuck", "sending", old, None),
        ] {
            db.execute(&format!(
                "INSERT INTO waymark_mail_ledger (idempotency_key, message_id, status, transport, recipients, \
                 subject, attempts, created_at, updated_at, sent_at) VALUES ('{key}', '<{key}@x>', '{status}', \
                 'smtp', '[]', 's', 1, {at}, {at}, {sent})",
                at = stamp(at),
                sent = sent.map(stamp).unwrap_or_else(|| "NULL".into()),
            ))
            .await
            .unwrap();
        }
    }
    // Retain 7 days: the run finished 11 days ago goes, the one from yesterday stays.
    let sweep = engine
        .start(StartRun {
            tenant: waymark_engine::SYSTEM_TENANT.into(),
            ..start_req("waymark.retention", json!({"older_than": "7d"}))
        })
        .await
        .unwrap()
        .run;
    let swept = wait_for_status(&db.store, sweep.id, RunStatus::Completed).await;
    runner.stop().await;
    assert_eq!(
        swept.output,
        Some(json!({"deleted": 1, "mail_ledger_pruned": 1}))
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM waymark_mail_ledger")
            .await,
        2,
        "the recent and the unsent entries stay"
    );
    let get = |id| {
        let store = db.store.clone();
        async move { store.run_get(&TenantScope::All, id).await.unwrap() }
    };
    assert!(get(old.id).await.is_none());
    assert!(get(recent.id).await.is_some());
    assert!(get(unfinished.id).await.is_some());
    // Bad input is refused before anything runs.
    assert!(matches!(
        engine
            .start(StartRun {
                tenant: waymark_engine::SYSTEM_TENANT.into(),
                ..start_req("waymark.retention", json!({"older_than": "soon"}))
            })
            .await,
        Err(EngineError::InvalidInput(_))
    ));
}

async fn a_run_advances_through_every_state_with_one_history_row_per_transition(db: TestDb) {
    let (registry, _) = registry();
    let engine = db.engine(registry, Arc::new(SystemClock));
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req("three_step", json!({"n": 1})))
        .await
        .unwrap()
        .run;
    let done = wait_for_status(&db.store, run.id, RunStatus::Completed).await;
    runner.stop().await;
    assert_eq!(done.output, Some(json!({"n": 3})));
    let history = db
        .store
        .run_history(&TenantScope::All, run.id)
        .await
        .unwrap()
        .unwrap();
    let path: Vec<_> = history
        .iter()
        .map(|h| (h.to_state.as_str(), h.to_status, h.visit))
        .collect();
    assert_eq!(
        path,
        vec![
            ("a", RunStatus::Pending, 1),
            ("b", RunStatus::Running, 1),
            ("c", RunStatus::Running, 2),
            ("c", RunStatus::Completed, 3),
        ]
    );
    // The worker kept its lease from a to c: one claim, attempt 1 throughout.
    assert!(history[1..]
        .iter()
        .all(|h| h.attempt == 1 && h.worker_id == Some(runner_id(&history))));
}

fn runner_id(history: &[waymark_engine::store::HistoryEntry]) -> uuid::Uuid {
    history[1].worker_id.expect("worker recorded")
}

async fn retries_back_off_by_the_engine_clock_until_the_step_succeeds(db: TestDb) {
    let (registry, handles) = registry();
    let (clock, shared) = manual_clock();
    let engine = db.engine(registry, shared);
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req("flaky", json!({"fail_times": 2})))
        .await
        .unwrap()
        .run;

    let retrying = wait_for_status(&db.store, run.id, RunStatus::Retrying).await;
    let error = retrying.error.clone().expect("last error visible");
    assert_eq!(error.message, "upstream unavailable (call 1)");
    assert_eq!(error.causes, vec!["connection refused".to_owned()]);
    assert_eq!(retrying.attempt, 1);
    // First retry after initial_delay (60 s, no jitter) by the engine clock.
    let due = retrying.due_at.unwrap();
    assert_eq!((due - clock.now()).num_seconds(), 60);
    assert_eq!(handles.flaky_calls.load(Ordering::SeqCst), 1);

    clock.advance(Duration::from_secs(60));
    let second = wait_for_run(&db.store, run.id, "the second attempt failed", |r| {
        r.status == RunStatus::Retrying && r.attempt == 2
    })
    .await;
    // Doubled: 120 s after the second failure.
    assert_eq!((second.due_at.unwrap() - clock.now()).num_seconds(), 120);
    clock.advance(Duration::from_secs(120));
    let done = wait_for_status(&db.store, run.id, RunStatus::Completed).await;
    runner.stop().await;
    assert_eq!(done.output, Some(json!(3)));
    let causes: Vec<String> = db
        .store
        .run_history(&TenantScope::All, run.id)
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|h| h.cause)
        .collect();
    assert_eq!(causes, vec!["started", "retry", "retry", "step"]);
}

async fn exhausted_retries_fail_the_run_with_the_error_and_its_causes(db: TestDb) {
    let (registry, handles) = registry();
    let (clock, shared) = manual_clock();
    let engine = db.engine(registry, shared);
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req("flaky", json!({"fail_times": 99})))
        .await
        .unwrap()
        .run;
    for attempt in 1..flaky_policy().max_attempts {
        let calls = handles.flaky_calls.clone();
        wait_until("attempt ran", Duration::from_secs(10), || {
            let calls = calls.clone();
            async move { calls.load(Ordering::SeqCst) == attempt }
        })
        .await;
        wait_for_status(&db.store, run.id, RunStatus::Retrying).await;
        clock.advance(Duration::from_secs(3600));
    }
    let failed = wait_for_status(&db.store, run.id, RunStatus::Failed).await;
    runner.stop().await;
    assert_eq!(
        handles.flaky_calls.load(Ordering::SeqCst),
        flaky_policy().max_attempts
    );
    let error = failed.error.expect("error kept");
    assert_eq!(error.message, "upstream unavailable (call 3)");
    assert_eq!(error.causes, vec!["connection refused".to_owned()]);
    assert!(failed.finished_at.is_some());
}

async fn fatal_errors_fail_without_retrying(db: TestDb) {
    let (registry, handles) = registry();
    let engine = db.engine(registry, Arc::new(SystemClock));
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req("flaky", json!({"fail_times": 1, "fatal": true})))
        .await
        .unwrap()
        .run;
    let failed = wait_for_status(&db.store, run.id, RunStatus::Failed).await;
    runner.stop().await;
    assert_eq!(handles.flaky_calls.load(Ordering::SeqCst), 1);
    assert_eq!(failed.error.unwrap().kind, waymark_engine::ErrorKind::Fatal);
}

async fn a_seven_day_timer_fires_after_a_restart_under_the_manual_clock(db: TestDb) {
    let (registry, _) = registry();
    let (clock, shared) = manual_clock();
    let engine = db.engine(registry, shared.clone());
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req("sleeper", json!({"days": 7})))
        .await
        .unwrap()
        .run;
    let asleep = wait_for_status(&db.store, run.id, RunStatus::Sleeping).await;
    assert_eq!((asleep.due_at.unwrap() - clock.now()).num_days(), 7);
    runner.stop().await;

    // A new process (a fresh connection and runner) after 7 days.
    let store = db.reopen().await;
    clock.advance(Duration::from_secs(7 * 86_400));
    let (registry, _) = crate::support::workflows::registry();
    let engine = waymark_engine::Engine::new(store.clone(), Arc::new(registry), shared);
    let runner = spawn_runner(engine, test_runner_config());
    let done = wait_for_status(&store, run.id, RunStatus::Completed).await;
    runner.stop().await;
    assert_eq!(done.state, "wake");
    assert_eq!(
        done.output,
        Some(json!(format!("woke at {}", clock.now().to_rfc3339())))
    );
}

async fn capability_routing_sends_a_state_only_to_capable_workers(db: TestDb) {
    let (registry, _) = registry();
    let engine = db.engine(registry, Arc::new(SystemClock));
    let plain = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req("needs_gpu", json!({})))
        .await
        .unwrap()
        .run;
    assert_eq!(run.capability.as_deref(), Some("gpu"));
    // The plain runner is idle and a three-step run started after completes, so it has
    // looked at the queue: the gpu run is still pending.
    let probe = engine
        .start(start_req("three_step", json!({"n": 0})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, probe.id, RunStatus::Completed).await;
    let still = db
        .store
        .run_get(&TenantScope::All, run.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(still.status, RunStatus::Pending);
    let mut config = test_runner_config();
    config.capabilities = vec!["gpu".into()];
    let gpu = spawn_runner(engine.clone(), config);
    let done = wait_for_status(&db.store, run.id, RunStatus::Completed).await;
    let history = db
        .store
        .run_history(&TenantScope::All, run.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(history.last().unwrap().worker_id, Some(gpu.worker_id));
    assert_eq!(done.output, Some(json!("rendered")));
    plain.stop().await;
    gpu.stop().await;
}

async fn idempotent_start_through_the_engine(db: TestDb) {
    let (registry, _) = registry();
    let engine = db.engine(registry, Arc::new(SystemClock));
    let mut req = start_req("three_step", json!({"n": 1}));
    req.idempotency_key = Some("k-1".into());
    let first = engine.start(req.clone()).await.unwrap();
    let again = engine.start(req.clone()).await.unwrap();
    assert_eq!((first.created, again.created), (true, false));
    assert_eq!(first.run.id, again.run.id);
    req.input = json!({"n": 2});
    match engine.start(req).await {
        Err(EngineError::Store(StoreError::IdempotencyConflict { existing, .. })) => {
            assert_eq!(existing, first.run.id)
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
}

async fn payload_limits_refuse_large_input_and_fail_large_output(db: TestDb) {
    let (registry, _) = registry();
    let engine = db
        .engine(registry, Arc::new(SystemClock))
        .with_limits(Limits { max_payload: 1024 });
    let big = json!({"n": 1, "pad": "x".repeat(2000)});
    match engine.start(start_req("three_step", big)).await {
        Err(EngineError::Store(StoreError::PayloadTooLarge { what, size, limit })) => {
            assert_eq!((what, limit), ("input", 1024));
            assert!(size > 2000);
        }
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req("bloat", json!({"n": 5000})))
        .await
        .unwrap()
        .run;
    let failed = wait_for_status(&db.store, run.id, RunStatus::Failed).await;
    runner.stop().await;
    assert_eq!(
        failed.error.unwrap().message,
        "output is 5002 bytes, over the limit of 1024 bytes"
    );
}

async fn unknown_workflows_and_bad_inputs_are_refused(db: TestDb) {
    let (registry, _) = registry();
    let engine = db.engine(registry, Arc::new(SystemClock));
    assert!(matches!(
        engine.start(start_req("nope", json!({}))).await,
        Err(EngineError::UnknownWorkflow(w)) if w == "nope"
    ));
    let cases = [
        json!({}),
        json!({"n": "one"}),
        json!({"n": -1}),
        json!("one"),
        json!(null),
    ];
    for input in cases {
        match engine.start(start_req("three_step", input.clone())).await {
            Err(EngineError::InvalidInput(e)) => assert_eq!(e.what, "input", "{input}"),
            other => panic!("{input}: expected InvalidInput, got {other:?}"),
        }
    }
    let mut req = start_req("three_step", json!({"n": 1}));
    req.tenant = "Not A Slug".into();
    assert!(matches!(
        engine.start(req).await,
        Err(EngineError::InvalidTenant(_))
    ));
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM waymark_runs").await,
        0,
        "nothing was written"
    );
}

async fn shutdown_releases_runs_whose_steps_outlive_the_grace(db: TestDb) {
    let (registry, handles) = registry();
    let engine = db.engine(registry, Arc::new(SystemClock));
    let mut config = test_runner_config();
    config.shutdown_grace = Duration::from_millis(100);
    let runner = spawn_runner(engine.clone(), config);
    let run = engine
        .start(start_req("gated", json!({})))
        .await
        .unwrap()
        .run;
    let entered = handles.gate_entered.clone();
    wait_until("the step started", Duration::from_secs(10), || {
        let entered = entered.clone();
        async move { entered.load(Ordering::SeqCst) == 1 }
    })
    .await;
    runner.stop().await;
    let back = db
        .store
        .run_get(&TenantScope::All, run.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (back.status, back.attempt, back.locked_by),
        (RunStatus::Pending, 0, None)
    );
    // Another worker picks it up at once, without waiting for a lease to expire.
    handles.gate.add_permits(1);
    let next = spawn_runner(engine.clone(), test_runner_config());
    let done = wait_for_status(&db.store, run.id, RunStatus::Completed).await;
    next.stop().await;
    assert_eq!(done.output, Some(json!("done on visit 1")));
    let workers = db.store.worker_list().await.unwrap();
    assert!(
        workers.iter().all(|w| w.stopped_at.is_some()),
        "both workers marked stopped"
    );
}

async fn a_lost_lease_cancels_the_step_and_discards_its_result(db: TestDb) {
    let (registry, handles) = registry();
    let engine = db.engine(registry, Arc::new(SystemClock));
    let mut config = test_runner_config();
    config.lease = Duration::from_millis(900);
    let runner = spawn_runner(engine.clone(), config);
    let run = engine
        .start(start_req("gated", json!({})))
        .await
        .unwrap()
        .run;
    let running = wait_for_status(&db.store, run.id, RunStatus::Running).await;
    // Someone else takes the run (as if the lease had expired): bump the fence.
    db.execute(&format!(
        "UPDATE waymark_runs SET lease_token = lease_token + 1 WHERE id = '{}'",
        run.id
    ))
    .await
    .unwrap();
    // The next heartbeat notices and cancels the step; the runner commits nothing, so
    // the run stays as its new owner has it.
    let cancelled = handles.gate_cancelled.clone();
    wait_until(
        "the heartbeat cancels the step",
        Duration::from_secs(10),
        || {
            let cancelled = cancelled.clone();
            async move { cancelled.load(Ordering::SeqCst) == 1 }
        },
    )
    .await;
    handles.gate.add_permits(1);
    runner.stop().await;
    let after = db
        .store
        .run_get(&TenantScope::All, run.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.status, RunStatus::Running);
    assert_eq!(after.lease_token, running.lease_token + 1);
    let history = db
        .store
        .run_history(&TenantScope::All, run.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        history.len(),
        1,
        "no transition from the worker that lost its lease"
    );
}

/// Heartbeats that fail for longer than the lease (a database restart) leave a run
/// with an expired lease while its step still runs here. The same worker must not
/// claim it again: that would run a second attempt next to the first.
async fn a_worker_never_reclaims_a_run_whose_attempt_it_still_runs(db: TestDb) {
    let (registry, handles) = registry();
    let engine = db.engine(registry, Arc::new(SystemClock));
    let mut config = test_runner_config();
    // No heartbeat during the test: the lease only expires when the test says so.
    config.lease = Duration::from_secs(600);
    let runner = spawn_runner(engine.clone(), config);
    let run = engine
        .start(start_req("gated", json!({})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, run.id, RunStatus::Running).await;
    let entered = handles.gate_entered.clone();
    wait_until("the step starts", Duration::from_secs(10), || {
        let entered = entered.clone();
        async move { entered.load(Ordering::SeqCst) == 1 }
    })
    .await;
    // As if every heartbeat had failed for a whole lease.
    let expire = match db.backend {
        crate::support::Backend::Postgres => "now() - interval '1 minute'",
        crate::support::Backend::Sqlite => "0",
    };
    db.execute(&format!(
        "UPDATE waymark_runs SET lease_expires_at = {expire} WHERE id = '{}'",
        run.id
    ))
    .await
    .unwrap();
    // A run started after the expiry and finished proves the worker claimed after it
    // (a claim takes every due run it has permits for, the expired one included).
    let marker = engine
        .start(start_req("three_step", json!({"n": 1})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, marker.id, RunStatus::Completed).await;
    let held = db
        .store
        .run_get(&TenantScope::All, run.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (entered.load(Ordering::SeqCst), held.attempt),
        (1, 1),
        "the step must not start again while its first attempt runs"
    );
    // The first attempt finishes but its lease expired: its result is refused, the run
    // is claimed again (once) and the second attempt completes it.
    handles.gate.add_permits(2);
    let done = wait_for_status(&db.store, run.id, RunStatus::Completed).await;
    runner.stop().await;
    assert_eq!(
        (entered.load(Ordering::SeqCst), done.attempt),
        (2, 2),
        "one more attempt, not two"
    );
}

/// The caller's transaction seam on either backend: a business row written with the
/// seam's SQL and a run started in the same transaction roll back or commit together;
/// the started run is counted once in the metrics.
async fn start_in_commits_or_rolls_back_with_the_callers_transaction(db: TestDb) {
    use waymark_engine::store::Arg;
    let (registry, _) = registry();
    let engine = db.engine(registry, Arc::new(SystemClock));
    db.store
        .sql_execute(
            "CREATE TABLE orders (id integer PRIMARY KEY, run_id text, placed_at bigint)",
            &[],
        )
        .await
        .unwrap();
    let order =
        |n: i64, run: uuid::Uuid| vec![Arg::int(n), Arg::text(run.to_string()), Arg::int(n * 10)];
    let insert = "INSERT INTO orders (id, run_id, placed_at) VALUES ($1, $2, $3)";

    let mut tx = db.store.begin().await.unwrap();
    let run = engine
        .start_in(&mut tx, start_req("three_step", json!({"n": 1})))
        .await
        .unwrap()
        .run;
    assert_eq!(tx.execute(insert, &order(1, run.id)).await.unwrap(), 1);
    drop(tx);
    assert!(
        db.store
            .run_get(&TenantScope::All, run.id)
            .await
            .unwrap()
            .is_none(),
        "rolled back with the order"
    );
    let orders = db
        .store
        .sql_fetch("SELECT id FROM orders", &[])
        .await
        .unwrap();
    assert!(orders.is_empty());

    let mut tx = db.store.begin().await.unwrap();
    let run = engine
        .start_in(&mut tx, start_req("three_step", json!({"n": 1})))
        .await
        .unwrap()
        .run;
    tx.execute(insert, &order(1, run.id)).await.unwrap();
    let read = tx
        .fetch(
            "SELECT id, run_id, placed_at FROM orders WHERE id = $1",
            &[Arg::int(1)],
        )
        .await
        .unwrap();
    assert_eq!(read[0].int("placed_at").unwrap(), 10);
    assert_eq!(read[0].text("run_id").unwrap(), run.id.to_string());
    tx.commit().await.unwrap();
    let runner = spawn_runner(engine.clone(), test_runner_config());
    wait_for_status(&db.store, run.id, RunStatus::Completed).await;
    runner.stop().await;
    let metrics = engine.metrics.render(0, None);
    assert!(
        metrics.contains("waymark_runs_started_total{workflow=\"three_step\"} 1"),
        "only the committed start is counted: {metrics}"
    );
}
