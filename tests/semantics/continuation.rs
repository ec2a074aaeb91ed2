//! Continue-as-new: a run ends `completed` with `{"continued_as": <id>}` and its
//! successor starts in the same transaction from the carried state; signals queued at
//! that moment move to the successor, and signals sent to any run of the chain reach
//! the live one (a keyed one still only once); a cancellation asked for while the
//! continuing step ran is applied to the successor.

use std::time::Duration;

use serde_json::json;
use waymark_engine::RunStatus;

use crate::support::{
    on_both_backends, spawn_runner, start_req, test_runner_config, wait_for_run, wait_for_status,
    TestDb,
};

use super::*;

on_both_backends!(
    a_run_that_continues_as_new_hands_its_state_to_a_fresh_run_with_its_own_history,
    signals_queued_when_a_run_continues_move_to_the_new_run_and_keys_still_dedupe,
    a_cancellation_asked_for_while_the_continuing_step_ran_cancels_the_new_run,
);

/// The chain of runs from `first`, following `continued_as` outputs.
async fn chain(db: &TestDb, first: Uuid) -> Vec<waymark_engine::Run> {
    let mut runs = Vec::new();
    let mut id = Some(first);
    while let Some(next) = id {
        let run = db.store.run_get(&ALL, next).await.unwrap().unwrap();
        id = run.continued_as();
        runs.push(run);
    }
    runs
}

/// Waits until the live run of the chain from `first` waits for a bump.
async fn live_and_waiting(db: &TestDb, first: Uuid) -> waymark_engine::Run {
    crate::support::wait_until(
        "the chain's live run to wait",
        Duration::from_secs(30),
        || async {
            let last = chain(db, first).await.pop().unwrap();
            last.status == RunStatus::Waiting
        },
    )
    .await;
    chain(db, first).await.pop().unwrap()
}

async fn a_run_that_continues_as_new_hands_its_state_to_a_fresh_run_with_its_own_history(
    db: TestDb,
) {
    let (clock, engine, _) = setup(&db).await;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let mut req = start_req("looper", json!({"every": 2, "until": 7}));
    req.tags = vec!["loop:1".into()];
    let first = engine.start(req).await.unwrap().run;
    for _ in 0..7 {
        let live = live_and_waiting(&db, first.id).await;
        // Always signalled through the first run's id: the signal follows the chain.
        let receipt = engine
            .signal(&ALL, signal(first.id, "bump", json!(null), None))
            .await
            .unwrap();
        assert!(receipt.created);
        // After every second bump the live run rests an hour, then continues.
        let live = wait_for_run(&db.store, live.id, "taken the bump", |r| {
            (r.status == RunStatus::Waiting && r.visit > live.visit)
                || matches!(r.status, RunStatus::Sleeping | RunStatus::Completed)
        })
        .await;
        if live.status == RunStatus::Sleeping {
            clock.advance(Duration::from_secs(3600));
            wait_for_status(&db.store, live.id, RunStatus::Completed).await;
        }
    }
    let runs = chain(&db, first.id).await;
    let last = wait_for_status(&db.store, runs.last().unwrap().id, RunStatus::Completed).await;
    runner.stop().await;
    assert_eq!(last.output, Some(json!(7)));
    // 7 bumps, 2 per run: three runs continued, the fourth completed.
    assert_eq!(runs.len(), 4, "{runs:#?}");
    for (before, after) in runs.iter().zip(&runs[1..]) {
        assert_eq!(before.status, RunStatus::Completed);
        assert_eq!(before.output, Some(json!({ "continued_as": after.id })));
        assert_eq!(after.input, before.input);
        assert_eq!(after.tags, vec!["loop:1".to_owned()]);
        assert_eq!(after.workflow, "looper");
        // The successor's history starts afresh, naming the run it continues.
        let h = history(&db, after.id).await;
        assert_eq!(h[0].cause, "started");
        assert_eq!(h[0].actor, format!("run:{}", before.id));
        let ended = history(&db, before.id).await;
        let last_row = ended.last().unwrap();
        assert_eq!(
            (last_row.cause.as_str(), last_row.to_status),
            ("continued_as_new", RunStatus::Completed)
        );
    }
    // Each run's history is bounded by `every`, not by the bumps of the whole chain.
    let sizes: Vec<usize> = {
        let mut sizes = Vec::new();
        for run in &runs {
            sizes.push(history(&db, run.id).await.len());
        }
        sizes
    };
    assert!(sizes.iter().all(|&n| n <= sizes[0]), "{sizes:?}");
    assert_eq!(sizes[0], sizes[1], "{sizes:?}");
    // The carried count went on: each continued run ended resting at 2, 4 and 6.
    for (i, run) in runs[..3].iter().enumerate() {
        assert_eq!(run.state, "rest");
        assert_eq!(run.state_data["n"], json!(2 * (i + 1)));
    }
}

async fn signals_queued_when_a_run_continues_move_to_the_new_run_and_keys_still_dedupe(db: TestDb) {
    let (clock, engine, _) = setup(&db).await;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let first = engine
        .start(start_req("looper", json!({"every": 1, "until": 3})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, first.id, RunStatus::Waiting).await;
    engine
        .signal(&ALL, signal(first.id, "bump", json!(null), None))
        .await
        .unwrap();
    // The first run rests now: two bumps sent meanwhile are queued on it.
    wait_for_status(&db.store, first.id, RunStatus::Sleeping).await;
    let keyed = engine
        .signal(&ALL, signal(first.id, "bump", json!(null), Some("b-2")))
        .await
        .unwrap();
    let plain = engine
        .signal(&ALL, signal(first.id, "bump", json!(null), None))
        .await
        .unwrap();
    assert!(keyed.created && !keyed.consumed && !plain.consumed);
    clock.advance(Duration::from_secs(3600));
    let ended = wait_for_status(&db.store, first.id, RunStatus::Completed).await;
    let second = ended.continued_as().expect("continued");
    // Nothing was left behind as unconsumed: both moved with the continuation.
    let left = db.store.run_signals(&ALL, first.id).await.unwrap().unwrap();
    assert_eq!(
        left.len(),
        1,
        "only the consumed first bump stays: {left:#?}"
    );
    assert_eq!(left[0].status, "consumed");
    assert!(!causes(&history(&db, first.id).await).contains(&"signal_unconsumed"));
    let moved = db.store.run_signals(&ALL, second).await.unwrap().unwrap();
    let ids: Vec<Uuid> = moved.iter().map(|s| s.id).collect();
    assert_eq!(ids, vec![keyed.id, plain.id]);
    // Moved signals are counted on the run they moved to, so its one-statement
    // completion cannot skip them.
    super::signals::assert_signal_counts(&db).await;
    // The successor takes the keyed bump at its first wait, then rests and continues.
    wait_for_run(&db.store, second, "took the moved bump", |r| {
        r.status == RunStatus::Sleeping
    })
    .await;
    // The same key sent again to the first run finds the moved signal.
    let again = engine
        .signal(&ALL, signal(first.id, "bump", json!(null), Some("b-2")))
        .await
        .unwrap();
    assert_eq!((again.id, again.created), (keyed.id, false));
    clock.advance(Duration::from_secs(3600));
    // The third run takes the plain bump that was queued on the first one.
    let runs = {
        crate::support::wait_until("the chain to complete", Duration::from_secs(30), || async {
            chain(&db, first.id).await.pop().unwrap().status == RunStatus::Completed
                && chain(&db, first.id).await.len() == 3
        })
        .await;
        chain(&db, first.id).await
    };
    runner.stop().await;
    assert_eq!(runs[2].output, Some(json!(3)));
    super::signals::assert_signal_counts(&db).await;
    let statuses: Vec<String> = db
        .store
        .run_signals(&ALL, second)
        .await
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|s| s.status)
        .collect();
    assert_eq!(statuses[0], "consumed");
}

async fn a_cancellation_asked_for_while_the_continuing_step_ran_cancels_the_new_run(db: TestDb) {
    let (clock, engine, probe) = setup(&db).await;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let first = engine
        .start(start_req(
            "looper",
            json!({"every": 1, "until": 5, "hold_rest": true}),
        ))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, first.id, RunStatus::Waiting).await;
    engine
        .signal(&ALL, signal(first.id, "bump", json!(null), None))
        .await
        .unwrap();
    wait_for_status(&db.store, first.id, RunStatus::Sleeping).await;
    clock.advance(Duration::from_secs(3600));
    // The resting step, which will continue as new, now runs and holds until its
    // cancellation token fires.
    crate::support::wait_until(
        "the continuing step to run",
        Duration::from_secs(30),
        || async { probe.rest_entered.load(std::sync::atomic::Ordering::SeqCst) == 1 },
    )
    .await;
    let requested = engine
        .cancel(&ALL, first.id, "key:ops", "stop", None)
        .await
        .unwrap();
    assert_eq!(
        (requested.status, requested.state.as_str()),
        (RunStatus::Running, "rest"),
        "a held run is asked to stop"
    );
    assert!(requested.cancel_request.is_some());

    // The step's answer still commits: the old run ends continued, and the process it
    // handed on is what the operator cancelled.
    let ended = wait_for_status(&db.store, first.id, RunStatus::Completed).await;
    let second = ended.continued_as().expect("continued as new");
    assert!(ended.cancel_request.is_none(), "{ended:#?}");
    assert_eq!(
        causes(&history(&db, first.id).await),
        vec![
            "started",
            "wait",
            "signal",
            "step",
            "cancel_requested",
            "continued_as_new"
        ]
    );
    let cancelled = wait_for_status(&db.store, second, RunStatus::Cancelled).await;
    runner.stop().await;
    let ending = cancelled.ending.clone().expect("an ending");
    assert_eq!(
        (ending.actor.as_str(), ending.reason.as_str()),
        ("key:ops", "stop")
    );
    assert_eq!(cancelled.state, "count");
    assert_eq!(cancelled.state_data["n"], json!(1), "the carried count");
    let h = history(&db, second).await;
    assert_eq!(
        (h[0].cause.as_str(), h[0].actor.clone()),
        ("started", format!("run:{}", first.id))
    );
    // Cancelled before any step of its own ran; nothing continued after it.
    assert_eq!(h[1].cause, "cancel");
    assert_eq!(h[1].actor, "key:ops");
    assert!(!causes(&h).contains(&"step"), "{:?}", causes(&h));
    let runs = chain(&db, first.id).await;
    assert_eq!(runs.len(), 2, "{runs:#?}");
    assert_eq!(
        probe.rest_entered.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}
