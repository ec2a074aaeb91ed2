//! Retention: finished runs go with their history; held runs and families still in
//! use stay.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;
use waymark_engine::store::{Next, Outcome, TenantScope};
use waymark_engine::StepError;

use crate::support::{on_both_backends, TestDb};

use super::*;

on_both_backends!(
    retention_deletes_finished_runs_with_their_history,
    retention_keeps_held_runs_and_families_still_in_use,
);

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
