//! Workflow versions: golden fixtures of version-one checkpoints still advance, and a
//! worker leaves runs of a version newer than it knows alone.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;
use waymark_engine::RunStatus;

use crate::support::{
    on_both_backends, spawn_runner, start_req, test_runner_config, wait_for_run, wait_for_status,
    TestDb,
};

use super::*;

on_both_backends!(
    golden_fixtures_from_version_one_advance_to_completion,
    a_worker_leaves_runs_of_a_newer_version_alone_and_says_why,
);

#[derive(Deserialize)]
struct Fixture {
    workflow_version: u32,
    input: Value,
    state: String,
    state_data: Value,
    #[serde(default)]
    queued_signal: Option<(String, Value)>,
}

async fn golden_fixtures_from_version_one_advance_to_completion(db: TestDb) {
    let (clock, engine, _) = setup(&db).await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/versioned");
    let mut ids = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    assert!(names.len() >= 2, "fixtures missing in {}", dir.display());
    for path in names {
        let fixture: Fixture =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(fixture.workflow_version, 1);
        let started = db
            .store
            .run_start(waymark_engine::store::NewRun {
                id: Uuid::now_v7(),
                tenant: "acme".into(),
                workflow: "versioned".into(),
                workflow_version: fixture.workflow_version,
                input: fixture.input,
                state: fixture.state,
                state_data: fixture.state_data,
                capability: None,
                compensable: false,
                idempotency_key: None,
                tags: vec![],
                actor: "fixture".into(),
                now: clock_now(&clock),
            })
            .await
            .unwrap();
        if let Some((name, payload)) = fixture.queued_signal {
            // Stored as version 1 stored it, bypassing today's payload check.
            db.store
                .run_signal(
                    &ALL,
                    started.run.id,
                    &waymark_engine::store::NewSignal {
                        id: Uuid::now_v7(),
                        name,
                        payload,
                        idempotency_key: None,
                        actor: "fixture".into(),
                        now: clock_now(&clock),
                        only_while_waiting: false,
                        version: 1,
                    },
                )
                .await
                .unwrap();
        }
        ids.push((path, started.run.id));
    }
    let runner = spawn_runner(engine.clone(), test_runner_config());
    for (path, id) in &ids {
        let done = wait_for_run(&db.store, *id, "completed", |r| r.status.is_terminal()).await;
        assert_eq!(
            done.status,
            RunStatus::Completed,
            "{}: {:?}",
            path.display(),
            done.error
        );
        assert_eq!(
            done.workflow_version, 2,
            "rewritten under the current version"
        );
        assert_eq!(done.input, json!({"full_name": "Ada Lovelace"}));
        assert_eq!(
            done.output,
            Some(json!(
                "Ada Lovelace greeted 3 time(s), poked: hello from v1"
            ))
        );
    }
    runner.stop().await;
}

async fn a_worker_leaves_runs_of_a_newer_version_alone_and_says_why(db: TestDb) {
    let (clock, engine, _) = setup(&db).await;
    let newer = db
        .store
        .run_start(waymark_engine::store::NewRun {
            id: Uuid::now_v7(),
            tenant: "acme".into(),
            workflow: "versioned".into(),
            workflow_version: 3,
            input: json!({"whatever": "v3 shape"}),
            state: "greet".into(),
            state_data: json!({"state": "greet", "v3": true}),
            capability: None,
            compensable: false,
            idempotency_key: None,
            tags: vec![],
            actor: "new-deploy".into(),
            // Due by the engine's clock: only the version keeps workers away.
            now: clock_now(&clock),
        })
        .await
        .unwrap()
        .run;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    // The old worker is idle and has looked: a three-step run started after completes.
    let probe = engine
        .start(start_req("versioned", json!({"full_name": "x"})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, probe.id, RunStatus::Waiting).await;
    let still = db.store.run_get(&ALL, newer.id).await.unwrap().unwrap();
    assert_eq!(
        (still.status, still.attempt),
        (RunStatus::Pending, 0),
        "never claimed, never failed"
    );
    let reason = engine
        .pending_reason(&still, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    assert!(
        reason.contains("versioned at version 3") && reason.contains("versioned@2"),
        "{reason}"
    );
    runner.stop().await;
}
