//! Starting runs idempotently and reading them, their histories included, within a
//! tenant.

use serde_json::json;
use waymark_engine::store::TenantScope;
use waymark_engine::{RunStatus, StoreError};

use crate::support::{on_both_backends, TestDb};

use super::*;

on_both_backends!(
    start_inserts_a_pending_run_with_its_started_history_row,
    same_idempotency_key_returns_the_same_run_and_another_input_conflicts,
    reads_are_scoped_to_the_tenant,
    histories_of_many_runs_come_in_one_read_scoped_to_the_tenant,
);

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
