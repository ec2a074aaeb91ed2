//! Waits, signals and timeouts: a signal reaches its state whether it comes before or
//! during the wait, once per key; bad ones are refused; leftovers are recorded.

use std::time::Duration;

use serde_json::json;
use waymark_engine::{EngineError, RunStatus, TenantScope};

use crate::support::{
    on_both_backends, spawn_runner, start_req, test_runner_config, wait_for_status, TestDb,
};

use super::*;

on_both_backends!(
    a_signal_sent_while_the_state_waits_leads_to_its_state,
    a_signal_sent_before_the_state_waits_is_queued_and_taken_when_it_waits,
    a_repeated_signal_with_the_same_key_returns_the_first_signals_id,
    unknown_signals_bad_payloads_finished_runs_and_unawaited_only_while_waiting_signals_are_refused,
    a_wait_that_times_out_goes_to_its_timeout_state,
    signals_still_queued_when_the_run_ends_are_recorded_as_unconsumed,
    signals_racing_a_runs_end_are_each_consumed_or_recorded_unconsumed,
);

async fn a_signal_sent_while_the_state_waits_leads_to_its_state(db: TestDb) {
    let (clock, engine, _) = setup(&db).await;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req("approval", json!({})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, run.id, RunStatus::Sleeping).await;
    clock.advance(Duration::from_secs(3600));
    let waiting = wait_for_status(&db.store, run.id, RunStatus::Waiting).await;
    assert_eq!(
        waiting.waiting_for.unwrap().signal_names(),
        vec!["approve", "reject", "ping"]
    );
    let receipt = engine
        .signal(&ALL, signal(run.id, "approve", json!({"by": "ana"}), None))
        .await
        .unwrap();
    assert!(receipt.created && receipt.consumed);
    let done = wait_for_status(&db.store, run.id, RunStatus::Completed).await;
    runner.stop().await;
    assert_eq!(done.output, Some(json!("approved by ana (user:ana)")));
    let h = history(&db, run.id).await;
    let consumed = h
        .iter()
        .find(|e| e.cause == "signal")
        .expect("signal in history");
    assert_eq!(
        (consumed.actor.as_str(), consumed.to_state.as_str()),
        ("user:ana", "approved")
    );
    let signals = db.store.run_signals(&ALL, run.id).await.unwrap().unwrap();
    assert_eq!(signals[0].status, "consumed");
}

async fn a_signal_sent_before_the_state_waits_is_queued_and_taken_when_it_waits(db: TestDb) {
    let (clock, engine, _) = setup(&db).await;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req("approval", json!({})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, run.id, RunStatus::Sleeping).await;
    let receipt = engine
        .signal(
            &ALL,
            signal(run.id, "reject", json!({"reason": "too late"}), None),
        )
        .await
        .unwrap();
    assert!(receipt.created && !receipt.consumed, "queued, not consumed");
    let queued = format!(
        "SELECT CAST(signals_queued AS bigint) FROM waymark_runs WHERE id = '{}'",
        run.id
    );
    assert_eq!(
        db.scalar_i64(&queued).await,
        1,
        "the row counts its queued signal"
    );
    clock.advance(Duration::from_secs(3600));
    let done = wait_for_status(&db.store, run.id, RunStatus::Completed).await;
    runner.stop().await;
    assert_eq!(done.output, Some(json!("rejected: too late")));
    assert_eq!(db.scalar_i64(&queued).await, 0, "taking it uncounts it");
    // The wait and the consumption are two history rows of the same commit.
    let c = causes(&history(&db, run.id).await).join(",");
    assert!(c.contains("wait,signal"), "{c}");
}

async fn a_repeated_signal_with_the_same_key_returns_the_first_signals_id(db: TestDb) {
    let (_, engine, _) = setup(&db).await;
    let run = engine
        .start(start_req("approval", json!({})))
        .await
        .unwrap()
        .run;
    let first = engine
        .signal(
            &ALL,
            signal(run.id, "approve", json!({"by": "a"}), Some("k1")),
        )
        .await
        .unwrap();
    let again = engine
        .signal(
            &ALL,
            signal(run.id, "approve", json!({"by": "a"}), Some("k1")),
        )
        .await
        .unwrap();
    assert_eq!(first.id, again.id);
    assert!(first.created && !again.created);
    let other = engine
        .signal(
            &ALL,
            signal(run.id, "approve", json!({"by": "a"}), Some("k2")),
        )
        .await
        .unwrap();
    assert_ne!(other.id, first.id);
    assert_eq!(
        db.store
            .run_signals(&ALL, run.id)
            .await
            .unwrap()
            .unwrap()
            .len(),
        2
    );
}

async fn unknown_signals_bad_payloads_finished_runs_and_unawaited_only_while_waiting_signals_are_refused(
    db: TestDb,
) {
    let (clock, engine, _) = setup(&db).await;
    let run = engine
        .start(start_req("approval", json!({})))
        .await
        .unwrap()
        .run;
    match engine
        .signal(&ALL, signal(run.id, "escalate", json!({}), None))
        .await
    {
        Err(EngineError::UnknownSignal { signal, .. }) => assert_eq!(signal, "escalate"),
        other => panic!("expected UnknownSignal, got {other:?}"),
    }
    for bad in [
        json!({"by": 5}),
        json!({}),
        json!("ana"),
        json!({"reason": "x"}),
    ] {
        match engine
            .signal(&ALL, signal(run.id, "approve", bad.clone(), None))
            .await
        {
            Err(EngineError::InvalidInput(e)) => assert_eq!(e.what, "signal payload", "{bad}"),
            other => panic!("{bad}: expected InvalidInput, got {other:?}"),
        }
    }
    // `ping` is only accepted while the run waits for it; it is pending now.
    assert!(matches!(
        engine.signal(&ALL, signal(run.id, "ping", json!(null), None)).await,
        Err(EngineError::Conflict(m)) if m.contains("only while the run waits")
    ));
    // Another tenant cannot see the run at all.
    let other = TenantScope::Tenant("globex".into());
    assert!(matches!(
        engine
            .signal(&other, signal(run.id, "approve", json!({"by": "x"}), None))
            .await,
        Err(EngineError::RunNotFound(_))
    ));
    let runner = spawn_runner(engine.clone(), test_runner_config());
    wait_for_status(&db.store, run.id, RunStatus::Sleeping).await;
    clock.advance(Duration::from_secs(3600));
    wait_for_status(&db.store, run.id, RunStatus::Waiting).await;
    engine
        .signal(&ALL, signal(run.id, "ping", json!(null), None))
        .await
        .unwrap();
    wait_for_status(&db.store, run.id, RunStatus::Completed).await;
    runner.stop().await;
    assert!(matches!(
        engine.signal(&ALL, signal(run.id, "approve", json!({"by": "x"}), None)).await,
        Err(EngineError::Conflict(m)) if m.contains("finished")
    ));
    assert_eq!(
        db.store
            .run_signals(&ALL, run.id)
            .await
            .unwrap()
            .unwrap()
            .len(),
        1,
        "refused signals were not stored"
    );
}

async fn a_wait_that_times_out_goes_to_its_timeout_state(db: TestDb) {
    let (clock, engine, _) = setup(&db).await;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req("approval", json!({})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, run.id, RunStatus::Sleeping).await;
    clock.advance(Duration::from_secs(3600));
    let waiting = wait_for_status(&db.store, run.id, RunStatus::Waiting).await;
    assert_eq!(
        (waiting.due_at.unwrap() - clock_now(&clock)).num_hours(),
        24
    );
    clock.advance(Duration::from_secs(86_400));
    let done = wait_for_status(&db.store, run.id, RunStatus::Completed).await;
    runner.stop().await;
    assert_eq!(done.output, Some(json!("expired")));
    assert!(causes(&history(&db, run.id).await).contains(&"timeout"));
}

async fn signals_still_queued_when_the_run_ends_are_recorded_as_unconsumed(db: TestDb) {
    let (clock, engine, _) = setup(&db).await;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req("approval", json!({})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, run.id, RunStatus::Sleeping).await;
    let first = engine
        .signal(
            &ALL,
            signal(run.id, "approve", json!({"by": "first"}), None),
        )
        .await
        .unwrap();
    let second = engine
        .signal(
            &ALL,
            signal(run.id, "reject", json!({"reason": "second"}), None),
        )
        .await
        .unwrap();
    clock.advance(Duration::from_secs(3600));
    let done = wait_for_status(&db.store, run.id, RunStatus::Completed).await;
    runner.stop().await;
    assert_eq!(
        done.output,
        Some(json!("approved by first (user:ana)")),
        "the oldest queued signal wins"
    );
    let signals = db.store.run_signals(&ALL, run.id).await.unwrap().unwrap();
    let status = |id| signals.iter().find(|s| s.id == id).unwrap().status.clone();
    assert_eq!(
        (status(first.id), status(second.id)),
        ("consumed".into(), "unconsumed".into())
    );
    let h = history(&db, run.id).await;
    let unconsumed: Vec<_> = h
        .iter()
        .filter(|e| e.cause == "signal_unconsumed")
        .collect();
    assert_eq!(unconsumed.len(), 1);
    assert_signal_counts(&db).await;
    assert_eq!(unconsumed[0].actor, "user:ana");
    assert!(unconsumed[0]
        .error
        .as_ref()
        .unwrap()
        .message
        .contains("reject"));
}

/// Signals sent in a tight loop while runs complete: whichever way each race goes, no
/// signal of an ended run stays `queued`, and each unconsumed one has its history row.
async fn signals_racing_a_runs_end_are_each_consumed_or_recorded_unconsumed(db: TestDb) {
    let (_, engine, _) = setup(&db).await;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let mut senders = Vec::new();
    for _ in 0..40 {
        let run = engine
            .start(start_req("chatter", json!({})))
            .await
            .unwrap()
            .run;
        let engine = engine.clone();
        senders.push(tokio::spawn(async move {
            let mut accepted = 0;
            // Until the run's end refuses the next one (bounded, should it never end).
            for _ in 0..10_000 {
                match engine
                    .signal(&ALL, signal(run.id, "note", json!(null), None))
                    .await
                {
                    Ok(_) => accepted += 1,
                    Err(waymark_engine::EngineError::Conflict(_)) => break,
                    Err(other) => panic!("{other}"),
                }
            }
            (run.id, accepted)
        }));
    }
    let mut accepted_total = 0;
    for sender in senders {
        let (run, accepted) = sender.await.unwrap();
        accepted_total += accepted;
        wait_for_status(&db.store, run, RunStatus::Completed).await;
    }
    runner.stop().await;
    assert!(
        accepted_total > 0,
        "some signals arrived before the runs ended"
    );
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM waymark_signals s JOIN waymark_runs r ON r.id = s.run_id \
             WHERE s.status = 'queued' AND r.finished_at IS NOT NULL"
        )
        .await,
        0,
        "no signal of an ended run is left queued"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM waymark_signals WHERE status = 'unconsumed'")
            .await,
        db.scalar_i64("SELECT count(*) FROM waymark_history WHERE cause = 'signal_unconsumed'")
            .await,
    );
    assert_signal_counts(&db).await;
}

/// The one-statement commit ends a run only when the row's own count says no signal is
/// queued: that count, kept by triggers on the signals table, must match it exactly.
pub(super) async fn assert_signal_counts(db: &TestDb) {
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM waymark_runs r WHERE r.signals_queued <> \
             (SELECT count(*) FROM waymark_signals s WHERE s.run_id = r.id AND s.status = 'queued')"
        )
        .await,
        0,
        "every run's signals_queued matches its queued signals"
    );
}
