//! Fan-out: children gathered in order, fail-fast and collect policies, a crashed
//! parent worker, cancellation and compensation through the family.

use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;
use waymark_engine::RunStatus;

use crate::support::{
    on_both_backends, spawn_runner, start_req, test_runner_config, wait_for_status, wait_until,
    TestDb,
};

use super::*;

on_both_backends!(
    fan_out_gathers_child_outputs_in_index_order,
    fan_out_fail_fast_cancels_siblings_and_fails_the_parent,
    fan_out_collect_hands_each_output_or_error_to_the_parent,
    a_crashed_parent_worker_does_not_duplicate_children,
    cancelling_a_parent_cascades_to_its_children,
    compensating_a_fan_out_compensates_its_completed_children,
);

async fn fan_out_gathers_child_outputs_in_index_order(db: TestDb) {
    let (_, engine, _) = setup(&db).await;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let mut req = start_req("parent", json!({"count": 4}));
    req.tenant = "initech".into();
    let run = engine.start(req).await.unwrap().run;
    let done = wait_for_status(&db.store, run.id, RunStatus::Completed).await;
    runner.stop().await;
    let outputs: Vec<Value> = done
        .output
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["output"].clone())
        .collect();
    assert_eq!(outputs, vec![json!(0), json!(10), json!(20), json!(30)]);
    let children = db.store.run_children(run.id, 1).await.unwrap();
    assert_eq!(children.len(), 4);
    assert!(
        children.iter().all(|c| c.tenant == "initech"),
        "children inherit the tenant"
    );
    assert!(children
        .iter()
        .enumerate()
        .all(|(i, c)| c.child_index == Some(i as i32) && c.parent_id == Some(run.id)));
}

async fn fan_out_fail_fast_cancels_siblings_and_fails_the_parent(db: TestDb) {
    let (_, engine, _) = setup(&db).await;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req(
            "parent",
            json!({"count": 3, "failing_child": 1, "waiting_children": true}),
        ))
        .await
        .unwrap()
        .run;
    let failed = wait_for_status(&db.store, run.id, RunStatus::Failed).await;
    let children = db.store.run_children(run.id, 1).await.unwrap();
    for child in &children {
        wait_for_status(
            &db.store,
            child.id,
            if child.child_index == Some(1) {
                RunStatus::Failed
            } else {
                RunStatus::Cancelled
            },
        )
        .await;
    }
    runner.stop().await;
    let message = failed.error.unwrap().message;
    assert!(message.starts_with("child #1 (kid"), "{message}");
    assert!(message.contains("kid 1 broke"), "{message}");
}

async fn fan_out_collect_hands_each_output_or_error_to_the_parent(db: TestDb) {
    let (_, engine, _) = setup(&db).await;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req(
            "parent",
            json!({"count": 3, "failing_child": 2, "collect": true}),
        ))
        .await
        .unwrap()
        .run;
    let done = wait_for_status(&db.store, run.id, RunStatus::Completed).await;
    runner.stop().await;
    assert_eq!(
        done.output.unwrap(),
        json!([
            {"index": 0, "status": "completed", "output": 0, "error": null},
            {"index": 1, "status": "completed", "output": 10, "error": null},
            {"index": 2, "status": "failed", "output": null, "error": "kid 2 broke"},
        ])
    );
}

async fn a_crashed_parent_worker_does_not_duplicate_children(db: TestDb) {
    let (_, engine, _) = setup(&db).await;
    let run = engine
        .start(start_req("parent", json!({"count": 3})))
        .await
        .unwrap()
        .run;
    // A worker claims the parent and dies before committing its fan-out.
    let crashed = db
        .store
        .run_claim(&waymark_engine::store::ClaimRequest {
            worker_id: Uuid::now_v7(),
            workflows: vec![("parent".into(), 1)],
            capabilities: vec![],
            limit: 1,
            lease: Duration::from_millis(300),
            now: chrono::Utc::now(),
            exclude: vec![],
        })
        .await
        .unwrap();
    assert_eq!(crashed.len(), 1);
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let done = wait_for_status(&db.store, run.id, RunStatus::Completed).await;
    runner.stop().await;
    assert_eq!(done.output.unwrap().as_array().unwrap().len(), 3);
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM waymark_runs WHERE parent_id IS NOT NULL")
            .await,
        3
    );
    let fan_outs = causes(&history(&db, run.id).await)
        .iter()
        .filter(|c| **c == "fan_out")
        .count();
    assert_eq!(fan_outs, 1);
}

async fn cancelling_a_parent_cascades_to_its_children(db: TestDb) {
    let (_, engine, _) = setup(&db).await;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req(
            "parent",
            json!({"count": 2, "waiting_children": true}),
        ))
        .await
        .unwrap()
        .run;
    let store = db.store.clone();
    wait_until("both children wait", Duration::from_secs(30), || {
        let store = store.clone();
        async move {
            let kids = store.run_children(run.id, 1).await.unwrap();
            kids.len() == 2 && kids.iter().all(|k| k.status == RunStatus::Waiting)
        }
    })
    .await;
    engine
        .cancel(&ALL, run.id, "key:ops", "not needed", None)
        .await
        .unwrap();
    wait_for_status(&db.store, run.id, RunStatus::Cancelled).await;
    for kid in db.store.run_children(run.id, 1).await.unwrap() {
        let kid = wait_for_status(&db.store, kid.id, RunStatus::Cancelled).await;
        assert_eq!(kid.ending.unwrap().actor, format!("run:{}", run.id));
    }
    runner.stop().await;
}

async fn compensating_a_fan_out_compensates_its_completed_children(db: TestDb) {
    let (_, engine, probe) = setup(&db).await;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req(
            "parent",
            json!({"count": 2, "fail_after_gather": true}),
        ))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, run.id, RunStatus::Failed).await;
    for kid in db.store.run_children(run.id, 1).await.unwrap() {
        let kid = wait_for_status(&db.store, kid.id, RunStatus::Cancelled).await;
        assert!(kid.ending.unwrap().reason.contains("compensating"));
    }
    runner.stop().await;
    let mut undone = probe.undone.lock().unwrap().clone();
    undone.sort();
    assert_eq!(undone, vec!["kid 0", "kid 1"]);
}
