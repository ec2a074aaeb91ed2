//! Claims and commits: due runs claimed once and fenced, exclusions, timers by the
//! engine clock, one history row per commit, lost leases, heartbeats and release.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;
use waymark_engine::store::{Next, Outcome, TenantScope};
use waymark_engine::RunStatus;

use crate::support::{on_both_backends, TestDb};

use super::*;

on_both_backends!(
    claim_takes_due_runs_once_and_fences_them,
    claim_skips_excluded_runs_even_with_an_expired_lease,
    claim_leaves_unknown_workflows_newer_versions_and_missing_capabilities_alone,
    claim_ignores_timers_that_are_not_due_by_the_engine_clock,
    commit_writes_the_checkpoint_and_one_history_row,
    a_lost_lease_cannot_commit_or_report_progress,
    a_commit_cannot_apply_twice,
    heartbeat_extends_only_the_listed_runs_still_held,
    release_returns_the_run_without_spending_an_attempt,
);

async fn claim_takes_due_runs_once_and_fences_them(db: TestDb) {
    let run = db
        .store
        .run_start(new_run("w", "acme", None, json!({})))
        .await
        .unwrap()
        .run;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let claimed = db
        .store
        .run_claim(&claim(a, &[("w", 1)], &[], Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let held = &claimed[0];
    assert_eq!(held.id, run.id);
    assert_eq!(held.status, RunStatus::Running);
    assert_eq!(held.locked_by, Some(a));
    assert_eq!(held.attempt, 1);
    assert!(held.lease_token > run.lease_token);
    // Held: nobody else gets it.
    assert!(db
        .store
        .run_claim(&claim(b, &[("w", 1)], &[], Duration::from_secs(30)))
        .await
        .unwrap()
        .is_empty());
}

async fn claim_skips_excluded_runs_even_with_an_expired_lease(db: TestDb) {
    let run = db
        .store
        .run_start(new_run("w", "acme", None, json!({})))
        .await
        .unwrap()
        .run;
    let other = db
        .store
        .run_start(new_run("w", "acme", None, json!({})))
        .await
        .unwrap()
        .run;
    let worker = Uuid::now_v7();
    let mut request = claim(worker, &[("w", 1)], &[], Duration::from_secs(30));
    request.exclude = vec![other.id];
    let claimed = db.store.run_claim(&request).await.unwrap();
    assert_eq!(
        claimed.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![run.id],
        "a pending run excluded is left alone"
    );
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
    // Its worker still runs the attempt: the expired lease is not claimable by it…
    request.exclude = vec![run.id, other.id];
    assert!(db.store.run_claim(&request).await.unwrap().is_empty());
    // …while any other worker may take it over.
    let taken = db
        .store
        .run_claim(&claim(
            Uuid::now_v7(),
            &[("w", 1)],
            &[],
            Duration::from_secs(30),
        ))
        .await
        .unwrap();
    assert_eq!(taken.len(), 2);
    let again = taken.iter().find(|r| r.id == run.id).unwrap();
    assert_eq!(again.attempt, 2);
}

async fn claim_leaves_unknown_workflows_newer_versions_and_missing_capabilities_alone(db: TestDb) {
    let mut v2 = new_run("w", "acme", None, json!({}));
    v2.workflow_version = 2;
    db.store.run_start(v2).await.unwrap();
    let mut gpu = new_run("render", "acme", None, json!({}));
    gpu.capability = Some("gpu".into());
    let gpu = db.store.run_start(gpu).await.unwrap().run;
    db.store
        .run_start(new_run("other", "acme", None, json!({})))
        .await
        .unwrap();
    let worker = Uuid::now_v7();
    let lease = Duration::from_secs(30);
    assert!(db
        .store
        .run_claim(&claim(worker, &[("w", 1), ("render", 1)], &[], lease))
        .await
        .unwrap()
        .is_empty());
    let got = db
        .store
        .run_claim(&claim(worker, &[("render", 1)], &["gpu"], lease))
        .await
        .unwrap();
    assert_eq!(got.iter().map(|r| r.id).collect::<Vec<_>>(), vec![gpu.id]);
    let got = db
        .store
        .run_claim(&claim(worker, &[("w", 2)], &[], lease))
        .await
        .unwrap();
    assert_eq!(
        got.len(),
        1,
        "a worker that knows version 2 takes the version-2 run"
    );
}

async fn claim_ignores_timers_that_are_not_due_by_the_engine_clock(db: TestDb) {
    db.store
        .run_start(new_run("w", "acme", None, json!({})))
        .await
        .unwrap();
    let worker = Uuid::now_v7();
    let lease = Duration::from_secs(30);
    let run = db
        .store
        .run_claim(&claim(worker, &[("w", 1)], &[], lease))
        .await
        .unwrap()
        .remove(0);
    let wake = chrono::Utc::now() + chrono::Duration::days(7);
    let slept = db
        .store
        .run_commit(&run.lease().unwrap(), &enter("b", Next::Sleep(wake)))
        .await
        .unwrap();
    assert_eq!(slept.status, RunStatus::Sleeping);
    assert_eq!(
        slept.due_at.map(|d| d.timestamp_millis()),
        Some(wake.timestamp_millis())
    );
    assert_eq!(
        db.store
            .run_next_due()
            .await
            .unwrap()
            .map(|d| d.timestamp_millis()),
        Some(wake.timestamp_millis())
    );
    assert!(db
        .store
        .run_claim(&claim(worker, &[("w", 1)], &[], lease))
        .await
        .unwrap()
        .is_empty());
    let mut later = claim(worker, &[("w", 1)], &[], lease);
    later.now = wake + chrono::Duration::milliseconds(1);
    let woke = db.store.run_claim(&later).await.unwrap();
    assert_eq!(woke.len(), 1);
    assert_eq!(
        (woke[0].state.as_str(), woke[0].visit, woke[0].attempt),
        ("b", 2, 1)
    );
}

async fn commit_writes_the_checkpoint_and_one_history_row(db: TestDb) {
    db.store
        .run_start(new_run("w", "acme", None, json!({})))
        .await
        .unwrap();
    let worker = Uuid::now_v7();
    let run = db
        .store
        .run_claim(&claim(worker, &[("w", 1)], &[], Duration::from_secs(30)))
        .await
        .unwrap()
        .remove(0);
    let lease = run.lease().unwrap();
    // Held: the worker keeps the lease and the run stays running in the next visit.
    let held = db
        .store
        .run_commit(&lease, &enter("b", Next::Hold))
        .await
        .unwrap();
    assert_eq!(
        (held.status, held.state.as_str(), held.visit, held.attempt),
        (RunStatus::Running, "b", 2, 1)
    );
    assert_eq!(held.lease_token, lease.token);
    assert_eq!(held.state_data, json!({"state": "b"}));
    let mut done = enter("b", Next::Hold);
    done.from_state = "b".into();
    done.from_position = (2, 1);
    done.outcome = Outcome::Complete {
        output: json!({"ok": true}),
    };
    let finished = db.store.run_commit(&lease, &done).await.unwrap();
    assert_eq!(finished.status, RunStatus::Completed);
    assert_eq!(finished.output, Some(json!({"ok": true})));
    assert!(
        finished.finished_at.is_some() && finished.locked_by.is_none() && finished.due_at.is_none()
    );
    let history = db
        .store
        .run_history(&TenantScope::All, run.id)
        .await
        .unwrap()
        .unwrap();
    let path: Vec<_> = history
        .iter()
        .map(|h| {
            (
                h.from_state.clone(),
                h.to_state.clone(),
                h.to_status,
                h.cause.clone(),
                h.visit,
            )
        })
        .collect();
    assert_eq!(
        path,
        vec![
            (None, "a".into(), RunStatus::Pending, "started".into(), 1),
            (
                Some("a".into()),
                "b".into(),
                RunStatus::Running,
                "step".into(),
                1
            ),
            (
                Some("b".into()),
                "b".into(),
                RunStatus::Completed,
                "step".into(),
                2
            ),
        ]
    );
    assert!(history[1..]
        .iter()
        .all(|h| h.worker_id == Some(worker) && h.actor == "worker:test"));
}

async fn a_lost_lease_cannot_commit_or_report_progress(db: TestDb) {
    let run = db
        .store
        .run_start(new_run("w", "acme", None, json!({})))
        .await
        .unwrap()
        .run;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let short = Duration::from_millis(200);
    let old = db
        .store
        .run_claim(&claim(a, &[("w", 1)], &[], short))
        .await
        .unwrap()
        .remove(0);
    let old_lease = old.lease().unwrap();
    // Once the lease expires by database time, another worker claims the run.
    let new = crate::support::poll_until(
        "worker B gets the run after A's lease expired",
        Duration::from_secs(10),
        || async {
            let mut claimed = db
                .store
                .run_claim(&claim(b, &[("w", 1)], &[], Duration::from_secs(30)))
                .await
                .unwrap();
            claimed.pop().ok_or_else(String::new)
        },
    )
    .await;
    assert!(
        new.lease_token > old_lease.token,
        "the fence only increases"
    );
    assert_eq!(new.attempt, 2, "the expired attempt counts");
    // A, waking up late, cannot commit, report progress, or release.
    let err = db
        .store
        .run_commit(&old_lease, &enter("b", Next::Release))
        .await
        .unwrap_err();
    assert!(err.is_lease_lost(), "{err}");
    assert!(db
        .store
        .run_progress(&old_lease, 0.5, "late")
        .await
        .unwrap_err()
        .is_lease_lost());
    assert!(db
        .store
        .run_release(&old_lease, chrono::Utc::now())
        .await
        .unwrap_err()
        .is_lease_lost());
    // And nothing of A's reached the history.
    let history = db
        .store
        .run_history(&TenantScope::All, run.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(history.len(), 1);
    // B still holds a working lease.
    let mut commit = enter("b", Next::Release);
    commit.from_position = (1, 2);
    let after = db
        .store
        .run_commit(&new.lease().unwrap(), &commit)
        .await
        .unwrap();
    assert_eq!(after.status, RunStatus::Pending);
}

async fn a_commit_cannot_apply_twice(db: TestDb) {
    db.store
        .run_start(new_run("w", "acme", None, json!({})))
        .await
        .unwrap();
    let run = db
        .store
        .run_claim(&claim(
            Uuid::now_v7(),
            &[("w", 1)],
            &[],
            Duration::from_secs(30),
        ))
        .await
        .unwrap()
        .remove(0);
    let lease = run.lease().unwrap();
    let commit = enter("b", Next::Hold);
    db.store.run_commit(&lease, &commit).await.unwrap();
    // Replaying the same commit (as after an ambiguous network error) is refused: the
    // visit moved on, so the fence no longer matches.
    assert!(db
        .store
        .run_commit(&lease, &commit)
        .await
        .unwrap_err()
        .is_lease_lost());
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM waymark_history").await,
        2
    );
}

async fn heartbeat_extends_only_the_listed_runs_still_held(db: TestDb) {
    for _ in 0..3 {
        db.store
            .run_start(new_run("w", "acme", None, json!({})))
            .await
            .unwrap();
    }
    let worker = Uuid::now_v7();
    let runs = db
        .store
        .run_claim(&claim(worker, &[("w", 1)], &[], Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(runs.len(), 3);
    let before: Vec<_> = runs.iter().map(|r| r.lease_expires_at.unwrap()).collect();
    // The worker finished the first one; it lists the other two.
    db.store
        .run_release(&runs[0].lease().unwrap(), chrono::Utc::now())
        .await
        .unwrap();
    let listed: Vec<Uuid> = runs.iter().map(|r| r.id).collect();
    let held = db
        .store
        .runs_heartbeat(worker, &listed[1..], Duration::from_secs(60))
        .await
        .unwrap();
    let mut held_ids: Vec<Uuid> = held.iter().map(|h| h.lease.run_id).collect();
    held_ids.sort();
    let mut expect = listed[1..].to_vec();
    expect.sort();
    assert_eq!(held_ids, expect);
    for run in &runs[1..] {
        let now = db
            .store
            .run_get(&TenantScope::All, run.id)
            .await
            .unwrap()
            .unwrap();
        assert!(now.lease_expires_at.unwrap() > before[1], "lease extended");
    }
    // Another worker's heartbeat extends nothing of ours.
    assert!(db
        .store
        .runs_heartbeat(Uuid::now_v7(), &listed, Duration::from_secs(60))
        .await
        .unwrap()
        .is_empty());
}

async fn release_returns_the_run_without_spending_an_attempt(db: TestDb) {
    db.store
        .run_start(new_run("w", "acme", None, json!({})))
        .await
        .unwrap();
    let worker = Uuid::now_v7();
    let run = db
        .store
        .run_claim(&claim(worker, &[("w", 1)], &[], Duration::from_secs(30)))
        .await
        .unwrap()
        .remove(0);
    db.store
        .run_release(&run.lease().unwrap(), chrono::Utc::now())
        .await
        .unwrap();
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
    let again = db
        .store
        .run_claim(&claim(worker, &[("w", 1)], &[], Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(again[0].attempt, 1);
}
