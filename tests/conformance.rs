//! The store conformance suite: every fact here holds on PostgreSQL and on SQLite.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;
use waymark_engine::store::{
    Cause, ClaimRequest, Commit, NewRun, Next, Outcome, Target, TenantScope,
};
use waymark_engine::{RunStatus, StepError, StoreError};

use crate::support::{on_both_backends, Backend, TestDb};

on_both_backends!(
    start_inserts_a_pending_run_with_its_started_history_row,
    same_idempotency_key_returns_the_same_run_and_another_input_conflicts,
    reads_are_scoped_to_the_tenant,
    histories_of_many_runs_come_in_one_read_scoped_to_the_tenant,
    claim_takes_due_runs_once_and_fences_them,
    claim_skips_excluded_runs_even_with_an_expired_lease,
    claim_leaves_unknown_workflows_newer_versions_and_missing_capabilities_alone,
    claim_ignores_timers_that_are_not_due_by_the_engine_clock,
    commit_writes_the_checkpoint_and_one_history_row,
    a_lost_lease_cannot_commit_or_report_progress,
    a_commit_cannot_apply_twice,
    heartbeat_extends_only_the_listed_runs_still_held,
    release_returns_the_run_without_spending_an_attempt,
    retention_deletes_finished_runs_with_their_history,
    retention_keeps_held_runs_and_families_still_in_use,
    database_rejects_statuses_and_timestamps_the_lifecycle_forbids,
    a_schema_newer_than_the_binary_is_refused,
    worker_registry_records_heartbeats_and_stops,
    a_watch_wakes_when_its_run_completes_or_fails,
    the_sweep_wakes_a_watch_whose_run_vanished_unannounced,
);

fn new_run(workflow: &str, tenant: &str, key: Option<&str>, input: serde_json::Value) -> NewRun {
    NewRun {
        id: Uuid::now_v7(),
        tenant: tenant.into(),
        workflow: workflow.into(),
        workflow_version: 1,
        input,
        state: "a".into(),
        state_data: json!({"state": "a"}),
        capability: None,
        compensable: false,
        idempotency_key: key.map(str::to_owned),
        tags: vec![],
        actor: "key:test".into(),
        now: chrono::Utc::now(),
    }
}

fn claim(worker: Uuid, workflows: &[(&str, u32)], caps: &[&str], lease: Duration) -> ClaimRequest {
    ClaimRequest {
        worker_id: worker,
        workflows: workflows.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
        capabilities: caps.iter().map(|c| c.to_string()).collect(),
        limit: 10,
        lease,
        now: chrono::Utc::now(),
        exclude: vec![],
    }
}

fn enter(state: &str, next: Next) -> Commit {
    let now = chrono::Utc::now();
    Commit {
        from_state: "a".into(),
        from_position: (1, 1),
        outcome: Outcome::Enter {
            target: Target {
                state: state.into(),
                data: json!({"state": state}),
                capability: None,
                compensable: false,
            },
            next,
        },
        cause: Cause::Step,
        actor: "worker:test".into(),
        step_started_at: now,
        now,
        lease: Duration::from_secs(30),
        upgrade: None,
    }
}

async fn start_inserts_a_pending_run_with_its_started_history_row(db: TestDb) {
    let started = db
        .store
        .run_start(new_run("w", "acme", None, json!({"n": 1})))
        .await
        .unwrap();
    assert!(started.created);
    let run = started.run;
    assert_eq!(run.status, RunStatus::Pending);
    assert_eq!((run.visit, run.attempt, run.lease_token), (1, 0, 0));
    assert_eq!(run.input, json!({"n": 1}));
    let history = db
        .store
        .run_history(&TenantScope::All, run.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].cause, "started");
    assert_eq!(history[0].from_state, None);
    assert_eq!(history[0].to_state, "a");
    assert_eq!(history[0].to_status, RunStatus::Pending);
    assert_eq!(history[0].actor, "key:test");
}

async fn same_idempotency_key_returns_the_same_run_and_another_input_conflicts(db: TestDb) {
    let first = db
        .store
        .run_start(new_run("w", "acme", Some("order-1"), json!({"n": 1})))
        .await
        .unwrap();
    let again = db
        .store
        .run_start(new_run("w", "acme", Some("order-1"), json!({"n": 1})))
        .await
        .unwrap();
    assert!(first.created);
    assert!(!again.created);
    assert_eq!(again.run.id, first.run.id);
    match db
        .store
        .run_start(new_run("w", "acme", Some("order-1"), json!({"n": 2})))
        .await
    {
        Err(StoreError::IdempotencyConflict { key, existing }) => {
            assert_eq!(key, "order-1");
            assert_eq!(existing, first.run.id);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    // The key is scoped by tenant and workflow.
    assert!(
        db.store
            .run_start(new_run("w", "globex", Some("order-1"), json!({"n": 2})))
            .await
            .unwrap()
            .created
    );
    assert!(
        db.store
            .run_start(new_run("v", "acme", Some("order-1"), json!({"n": 2})))
            .await
            .unwrap()
            .created
    );
    // Only the started rows exist: the replay and the conflict wrote nothing.
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM waymark_history").await,
        3
    );
}

async fn reads_are_scoped_to_the_tenant(db: TestDb) {
    let run = db
        .store
        .run_start(new_run("w", "acme", None, json!({})))
        .await
        .unwrap()
        .run;
    let mine = TenantScope::Tenant("acme".into());
    let theirs = TenantScope::Tenant("globex".into());
    assert!(db.store.run_get(&mine, run.id).await.unwrap().is_some());
    assert!(db
        .store
        .run_get(&TenantScope::All, run.id)
        .await
        .unwrap()
        .is_some());
    assert!(db.store.run_get(&theirs, run.id).await.unwrap().is_none());
    assert!(db
        .store
        .run_history(&theirs, run.id)
        .await
        .unwrap()
        .is_none());
}

async fn histories_of_many_runs_come_in_one_read_scoped_to_the_tenant(db: TestDb) {
    let mut ids = Vec::new();
    for tenant in ["acme", "acme", "globex"] {
        let run = db
            .store
            .run_start(new_run("w", tenant, None, json!({})))
            .await
            .unwrap()
            .run;
        ids.push(run.id);
    }
    let mine = TenantScope::Tenant("acme".into());
    let each = |scope: TenantScope| {
        let (store, ids) = (db.store.clone(), ids.clone());
        async move {
            let mut one_by_one = Vec::new();
            for id in &ids {
                one_by_one.extend(
                    store
                        .run_history(&scope, *id)
                        .await
                        .unwrap()
                        .unwrap_or_default(),
                );
            }
            one_by_one
        }
    };
    let batched = db.store.runs_history(&mine, &ids).await.unwrap();
    assert_eq!(
        batched.len(),
        2,
        "one started row per acme run, none of globex's"
    );
    assert_eq!(batched, each(mine).await);
    let all = db
        .store
        .runs_history(&TenantScope::All, &ids)
        .await
        .unwrap();
    assert_eq!(all, each(TenantScope::All).await);
    assert_eq!(all.len(), 3);
    assert!(db
        .store
        .runs_history(&TenantScope::All, &[])
        .await
        .unwrap()
        .is_empty());
}

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

async fn retention_deletes_finished_runs_with_their_history(db: TestDb) {
    let worker = Uuid::now_v7();
    let keep = db
        .store
        .run_start(new_run("w", "acme", None, json!({})))
        .await
        .unwrap()
        .run;
    let done = db
        .store
        .run_start(new_run("x", "acme", None, json!({})))
        .await
        .unwrap()
        .run;
    let run = db
        .store
        .run_claim(&claim(worker, &[("x", 1)], &[], Duration::from_secs(30)))
        .await
        .unwrap()
        .remove(0);
    let mut fail = enter("a", Next::Release);
    fail.outcome = Outcome::Fail {
        error: StepError::fatal("boom"),
        hold: false,
    };
    db.store
        .run_commit(&run.lease().unwrap(), &fail)
        .await
        .unwrap();
    let future = chrono::Utc::now() + chrono::Duration::days(1);
    assert_eq!(
        db.store
            .runs_delete_finished(
                &TenantScope::All,
                chrono::Utc::now() - chrono::Duration::days(1),
                100
            )
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        db.store
            .runs_delete_finished(&TenantScope::All, future, 100)
            .await
            .unwrap(),
        1
    );
    assert!(db
        .store
        .run_get(&TenantScope::All, done.id)
        .await
        .unwrap()
        .is_none());
    assert!(db
        .store
        .run_get(&TenantScope::All, keep.id)
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM waymark_history").await,
        1
    );
}

async fn database_rejects_statuses_and_timestamps_the_lifecycle_forbids(db: TestDb) {
    let run = db
        .store
        .run_start(new_run("w", "acme", None, json!({})))
        .await
        .unwrap()
        .run;
    let id = run.id;
    let bad = [
        // Not a status.
        format!("UPDATE waymark_runs SET status = 'done' WHERE id = '{id}'"),
        // Terminal without finished_at.
        format!("UPDATE waymark_runs SET status = 'completed', output = '1', due_at = NULL WHERE id = '{id}'"),
        // Running without a lease.
        format!("UPDATE waymark_runs SET status = 'running' WHERE id = '{id}'"),
        // Failed without an error.
        format!("UPDATE waymark_runs SET status = 'retrying' WHERE id = '{id}'"),
        // Claimable without a due time.
        format!("UPDATE waymark_runs SET due_at = NULL WHERE id = '{id}'"),
        // Waiting for nothing.
        format!("UPDATE waymark_runs SET status = 'waiting' WHERE id = '{id}'"),
        // Compensating without knowing how it will end.
        format!("UPDATE waymark_runs SET status = 'compensating' WHERE id = '{id}'"),
    ];
    for sql in bad {
        assert!(
            db.execute(&sql).await.is_err(),
            "the database accepted: {sql}"
        );
    }
    // Every status the Rust enum knows passes the status check (with the columns its
    // other constraints require); none is missing from the database's list.
    let (finished, lease) = match db.backend {
        crate::support::Backend::Postgres => ("now()", "now()"),
        crate::support::Backend::Sqlite => ("1", "1"),
    };
    for status in RunStatus::ALL {
        let s = status.as_str();
        let terminal = status.is_terminal();
        let sql = format!(
            "UPDATE waymark_runs SET status = '{s}', \
             finished_at = {fin}, due_at = {due}, output = {out}, error = {err}, \
             locked_by = {lb}, lease_expires_at = {le}, waiting_for = {wf}, ending = {end} \
             WHERE id = '{id}'",
            fin = if terminal { finished } else { "NULL" },
            due = if terminal || status == RunStatus::CompensationFailed {
                "NULL"
            } else {
                "due_at"
            },
            wf = if status == RunStatus::Waiting {
                "'{\"signals\":[]}'"
            } else {
                "NULL"
            },
            end = "'{\"status\":\"cancelled\",\"reason\":\"x\",\"actor\":\"t\"}'",
            out = if status == RunStatus::Completed {
                "'1'"
            } else {
                "NULL"
            },
            err = "'{\"kind\":\"fatal\",\"message\":\"x\"}'",
            lb = if status == RunStatus::Running {
                "locked_by"
            } else {
                "NULL"
            },
            le = if status == RunStatus::Running {
                lease
            } else {
                "NULL"
            },
        );
        let sql = if status == RunStatus::Running {
            sql.replace(
                "locked_by = locked_by",
                &format!("locked_by = '{}'", Uuid::now_v7()),
            )
        } else {
            sql
        };
        // Restore a claimable row first so each status starts from a valid one.
        db.execute(&format!(
            "UPDATE waymark_runs SET status = 'pending', finished_at = NULL, output = NULL, error = NULL, \
             locked_by = NULL, lease_expires_at = NULL, due_at = created_at, waiting_for = NULL, \
             ending = NULL WHERE id = '{id}'"
        ))
        .await
        .unwrap();
        if let Err(e) = db.execute(&sql).await {
            panic!("status {s} was refused: {e}\n{sql}");
        }
    }
}

async fn a_schema_newer_than_the_binary_is_refused(db: TestDb) {
    // As if a newer Waymark had migrated this database.
    let checksum = match db.backend {
        crate::support::Backend::Postgres => "'\\x00'",
        crate::support::Backend::Sqlite => "x'00'",
    };
    db.execute(&format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99990101000000, 'from the future', true, {checksum}, 0)"
    ))
    .await
    .unwrap();
    match db.connect_unmigrated().await.migrate().await {
        Err(StoreError::SchemaTooNew { found, known }) => {
            assert_eq!(found, 99990101000000);
            assert!(known < found);
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    assert!(
        !db.store.ready().await.unwrap(),
        "not ready against a schema it does not know"
    );
}

async fn worker_registry_records_heartbeats_and_stops(db: TestDb) {
    let id = Uuid::now_v7();
    let info = waymark_engine::store::WorkerInfo {
        id,
        host: "host-1".into(),
        pid: 42,
        version: "0.1.0".into(),
        capabilities: vec!["gpu".into()],
        workflows: vec!["demo@1".into()],
        started_at: chrono::Utc::now(),
        last_heartbeat_at: chrono::Utc::now(),
        runs_in_hand: 0,
        stopped_at: None,
    };
    db.store.worker_register(&info).await.unwrap();
    db.store.worker_heartbeat(id, 3).await.unwrap();
    let listed = db.store.worker_list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (
            listed[0].host.as_str(),
            listed[0].pid,
            listed[0].runs_in_hand
        ),
        ("host-1", 42, 3)
    );
    assert_eq!(listed[0].capabilities, vec!["gpu".to_owned()]);
    assert!(listed[0].stopped_at.is_none());
    let hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    let live = db.store.workers_live(hour_ago).await.unwrap();
    assert_eq!(live.iter().map(|w| w.id).collect::<Vec<_>>(), vec![id]);
    let in_a_minute = chrono::Utc::now() + chrono::Duration::minutes(1);
    assert!(db.store.workers_live(in_a_minute).await.unwrap().is_empty());
    db.store.worker_stop(id).await.unwrap();
    let listed = db.store.worker_list().await.unwrap();
    assert!(listed[0].stopped_at.is_some());
    assert_eq!(listed[0].runs_in_hand, 0);
    assert!(db.store.workers_live(hour_ago).await.unwrap().is_empty());
    // Pruning forgets workers gone since before the cutoff, and only those.
    assert_eq!(db.store.workers_prune(hour_ago).await.unwrap(), 0);
    assert_eq!(db.store.worker_list().await.unwrap().len(), 1);
    assert_eq!(db.store.workers_prune(in_a_minute).await.unwrap(), 1);
    assert!(db.store.worker_list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_on_one_postgres_database_all_succeed() {
    use sqlx::Connection;
    let admin_url = crate::support::pg_admin_url();
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    let name = format!("waymark_test_{}", Uuid::now_v7().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let url = format!("{}/{name}", admin_url.rsplit_once('/').unwrap().0);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let store = waymark_engine::Store::connect(&waymark_engine::StoreConfig::Postgres {
                url,
                max_connections: 2,
                worker_connections: 1,
            })
            .await
            .unwrap();
            store.migrate().await.map(|()| store)
        }));
    }
    let mut stores = Vec::new();
    for task in tasks {
        stores.push(
            task.await
                .unwrap()
                .expect("every concurrent migration succeeds"),
        );
    }
    assert!(stores[0].ready().await.unwrap());
    for store in stores {
        if let waymark_engine::Store::Postgres(pg) = store {
            pg.pool().close().await;
        }
    }
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
}

/// Shapes run `id` as the lifecycle allows, as a test factory: the store has no
/// method that writes these states directly.
async fn shape(db: &TestDb, id: Uuid, how: &str) {
    let set = match how {
        "completed" => {
            "status = 'completed', output = '{}', due_at = NULL, finished_at = created_at"
        }
        "held" => {
            "status = 'failed', held = true, due_at = NULL, finished_at = created_at, \
             error = '{\"kind\":\"fatal\",\"message\":\"boom\",\"causes\":[]}'"
        }
        other => panic!("unknown shape {other}"),
    };
    db.execute(&format!("UPDATE waymark_runs SET {set} WHERE id = '{id}'"))
        .await
        .unwrap();
}

async fn child_of(db: &TestDb, child: Uuid, parent: Uuid) {
    db.execute(&format!(
        "UPDATE waymark_runs SET parent_id = '{parent}', parent_visit = 1, child_index = 0 WHERE id = '{child}'"
    ))
    .await
    .unwrap();
}

async fn retention_keeps_held_runs_and_families_still_in_use(db: TestDb) {
    let mut ids = std::collections::BTreeMap::new();
    for name in [
        "done",
        "held",
        "live_parent",
        "its_done_child",
        "done_parent",
        "its_live_child",
        "held_parent",
        "its_child",
        "old_parent",
        "old_child",
        "other_tenant",
    ] {
        let tenant = if name == "other_tenant" {
            "globex"
        } else {
            "acme"
        };
        let run = db
            .store
            .run_start(new_run("w", tenant, None, json!({})))
            .await
            .unwrap()
            .run;
        ids.insert(name, run.id);
    }
    for name in [
        "done",
        "its_done_child",
        "done_parent",
        "its_child",
        "old_parent",
        "old_child",
        "other_tenant",
    ] {
        shape(&db, ids[name], "completed").await;
    }
    for name in ["held", "held_parent"] {
        shape(&db, ids[name], "held").await;
    }
    child_of(&db, ids["its_done_child"], ids["live_parent"]).await;
    child_of(&db, ids["its_live_child"], ids["done_parent"]).await;
    child_of(&db, ids["its_child"], ids["held_parent"]).await;
    child_of(&db, ids["old_child"], ids["old_parent"]).await;

    let future = chrono::Utc::now() + chrono::Duration::days(1);
    let acme = TenantScope::Tenant("acme".into());
    let mut deleted = 0;
    // Batches of one: what a batch leaves must still be right for the next.
    loop {
        let batch = db
            .store
            .runs_delete_finished(&acme, future, 1)
            .await
            .unwrap();
        if batch == 0 {
            break;
        }
        deleted += batch;
    }
    let mut gone = Vec::new();
    for (name, id) in &ids {
        if db
            .store
            .run_get(&TenantScope::All, *id)
            .await
            .unwrap()
            .is_none()
        {
            gone.push(*name);
        }
    }
    gone.sort();
    assert_eq!(gone, vec!["done", "old_child", "old_parent"]);
    assert_eq!(deleted, 3);
}

/// Claims the run of workflow `workflow` and commits `outcome` for it.
async fn end_run(db: &TestDb, workflow: &str, outcome: Outcome) {
    let run = db
        .store
        .run_claim(&claim(
            Uuid::now_v7(),
            &[(workflow, 1)],
            &[],
            Duration::from_secs(30),
        ))
        .await
        .unwrap()
        .remove(0);
    let mut commit = enter("a", Next::Release);
    commit.outcome = outcome;
    db.store
        .run_commit(&run.lease().unwrap(), &commit)
        .await
        .unwrap();
}

/// The deadline of a wait on a watch; the sweep (every 5 s) would wake it well before.
const WATCH_DEADLINE: Duration = Duration::from_secs(30);

async fn a_watch_wakes_when_its_run_completes_or_fails(db: TestDb) {
    // On PostgreSQL the first watch starts the LISTEN connection, which wakes every
    // watcher once it listens (endings before it were not heard); wait for that, so
    // what wakes the watches below is the ending itself.
    let mut keeper = db.store.run_watch(Uuid::now_v7());
    if db.backend == Backend::Postgres {
        tokio::time::timeout(WATCH_DEADLINE, keeper.changed())
            .await
            .expect("the listener starts");
    }
    // Completing and failing: both end the run, and both announce it.
    for (workflow, outcome) in [
        (
            "done",
            Outcome::Complete {
                output: json!("ok"),
            },
        ),
        (
            "broken",
            Outcome::Fail {
                error: StepError::fatal("boom"),
                hold: false,
            },
        ),
    ] {
        let run = db
            .store
            .run_start(new_run(workflow, "acme", None, json!({})))
            .await
            .unwrap()
            .run;
        let mut watch = db.store.run_watch(run.id);
        assert_eq!(
            db.store.runs_unfinished(&[run.id]).await.unwrap(),
            vec![run.id]
        );
        end_run(&db, workflow, outcome).await;
        tokio::time::timeout(WATCH_DEADLINE, watch.changed())
            .await
            .unwrap_or_else(|_| panic!("the watch on the {workflow} run was not woken"));
        assert!(db
            .store
            .runs_unfinished(&[run.id])
            .await
            .unwrap()
            .is_empty());
    }
    drop(keeper);
}

async fn the_sweep_wakes_a_watch_whose_run_vanished_unannounced(db: TestDb) {
    let live = db
        .store
        .run_start(new_run("w", "acme", None, json!({})))
        .await
        .unwrap()
        .run;
    let gone = db
        .store
        .run_start(new_run("w", "acme", None, json!({})))
        .await
        .unwrap()
        .run;
    let mut watch = db.store.run_watch(gone.id);
    if db.backend == Backend::Postgres {
        // The LISTEN connection's start wakes every watcher once; not what is tested.
        tokio::time::timeout(WATCH_DEADLINE, watch.changed())
            .await
            .expect("the listener starts");
    }
    // Behind the store's back, as another process or a lost NOTIFY would leave it.
    for table in ["waymark_history", "waymark_run_tags"] {
        db.execute(&format!("DELETE FROM {table} WHERE run_id = '{}'", gone.id))
            .await
            .unwrap();
    }
    db.execute(&format!(
        "DELETE FROM waymark_runs WHERE id = '{}'",
        gone.id
    ))
    .await
    .unwrap();
    assert_eq!(
        db.store.runs_unfinished(&[live.id, gone.id]).await.unwrap(),
        vec![live.id]
    );
    tokio::time::timeout(WATCH_DEADLINE, watch.changed())
        .await
        .expect("the sweep wakes the watch");
}
