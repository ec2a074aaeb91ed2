//! Runs through the API: start, status, history, long poll, signals, operator and bulk actions.

use std::sync::atomic::Ordering;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::app::{problem_type, TestApp};
use crate::support::{on_both_backends, wait_until, TestDb};

on_both_backends!(
    runs_start_idempotently_and_report_status_history_and_long_poll,
    signals_are_delivered_idempotently_through_http,
    operator_actions_and_bulk_actions_with_dry_run,
);

async fn runs_start_idempotently_and_report_status_history_and_long_poll(db: TestDb) {
    let api = TestApp::on(db).spawn().await;
    let (_, op) = api.key("acme", &["operator"]).await;
    let path = "/v1/workflows/three_step/runs?tag=order-7";
    let first = api
        .raw(
            Method::POST,
            path,
            &op,
            Some("application/json"),
            br#"{"n": 1}"#.to_vec(),
            &[("idempotency-key", "k-1")],
        )
        .await;
    assert_eq!(first.0, StatusCode::CREATED, "{}", first.1);
    let id = first.1["id"].as_str().unwrap().to_owned();
    assert_eq!(
        (first.1["tenant"].as_str(), first.1["tags"].clone()),
        (Some("acme"), json!(["order-7"]))
    );
    let again = api
        .raw(
            Method::POST,
            path,
            &op,
            Some("application/json"),
            br#"{"n": 1}"#.to_vec(),
            &[("idempotency-key", "k-1")],
        )
        .await;
    assert_eq!(
        (again.0, again.1["id"].as_str()),
        (StatusCode::OK, Some(id.as_str()))
    );
    let conflict = api
        .raw(
            Method::POST,
            path,
            &op,
            Some("application/json"),
            br#"{"n": 2}"#.to_vec(),
            &[("idempotency-key", "k-1")],
        )
        .await;
    assert_eq!(
        (conflict.0, problem_type(&conflict.1).as_str()),
        (StatusCode::CONFLICT, "conflict")
    );

    let (status, run) = api.get(&format!("/v1/runs/{id}?wait=20s"), &op).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (run["status"].as_str(), run["output"].clone()),
        (Some("completed"), json!({"n": 3}))
    );
    let (status, history) = api.get(&format!("/v1/runs/{id}/history"), &op).await;
    assert_eq!(status, StatusCode::OK);
    let causes: Vec<&str> = history["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["cause"].as_str().unwrap())
        .collect();
    assert_eq!(causes, vec!["started", "step", "step", "step"]);
    assert!(history["history"][0]["actor"]
        .as_str()
        .unwrap()
        .starts_with("key:"));

    // Long poll: the answer comes when the gated run ends, not before.
    let gated = api.start_run(&op, "gated", json!({})).await;
    let gated_id = gated["id"].as_str().unwrap().to_owned();
    let poll = {
        let http = api.http.clone();
        let url = format!("{}/v1/runs/{gated_id}?wait=30s", api.base);
        let op = op.clone();
        tokio::spawn(async move {
            http.get(url)
                .bearer_auth(op)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    let entered = api.handles.gate_entered.clone();
    wait_until("the gated step runs", Duration::from_secs(10), || {
        let entered = entered.clone();
        async move { entered.load(Ordering::SeqCst) == 1 }
    })
    .await;
    assert!(
        !poll.is_finished(),
        "the long poll holds while the run is running"
    );
    api.handles.gate.add_permits(1);
    let answered = poll.await.unwrap();
    assert_eq!(answered["status"], "completed");
    api.stop().await;
}

async fn signals_are_delivered_idempotently_through_http(db: TestDb) {
    let api = TestApp::on(db).spawn().await;
    let (_, op) = api.key("acme", &["operator"]).await;
    let run = api.start_run(&op, "doorbell", json!({})).await;
    let id = run["id"].as_str().unwrap();
    let path = format!("/v1/runs/{id}/signals/ring");
    let first = api
        .raw(
            Method::POST,
            &path,
            &op,
            Some("application/json"),
            br#"{"by": "ana"}"#.to_vec(),
            &[("idempotency-key", "s-1")],
        )
        .await;
    assert_eq!(first.0, StatusCode::CREATED, "{}", first.1);
    let again = api
        .raw(
            Method::POST,
            &path,
            &op,
            Some("application/json"),
            br#"{"by": "ana"}"#.to_vec(),
            &[("idempotency-key", "s-1")],
        )
        .await;
    assert_eq!(
        (again.0, again.1["id"].clone()),
        (StatusCode::OK, first.1["id"].clone())
    );
    let (_, done) = api.get(&format!("/v1/runs/{id}?wait=20s"), &op).await;
    assert_eq!(done["output"], "opened for ana");
    let (_, signals) = api.get(&format!("/v1/runs/{id}/signals"), &op).await;
    assert_eq!(signals["signals"].as_array().unwrap().len(), 1);
    // Signals to a finished run are a conflict.
    let late = api
        .raw(
            Method::POST,
            &path,
            &op,
            Some("application/json"),
            br#"{"by": "bo"}"#.to_vec(),
            &[],
        )
        .await;
    assert_eq!(
        (late.0, problem_type(&late.1).as_str()),
        (StatusCode::CONFLICT, "conflict")
    );
    api.stop().await;
}

async fn operator_actions_and_bulk_actions_with_dry_run(db: TestDb) {
    let api = TestApp::on(db).spawn().await;
    let (_, op) = api.key("acme", &["operator"]).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            api.start_run(&op, "doorbell", json!({})).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for id in &ids {
        let store = api.engine.store.clone();
        let id: uuid::Uuid = id.parse().unwrap();
        wait_until("waiting", Duration::from_secs(20), || {
            let store = store.clone();
            async move {
                store
                    .run_get(&waymark_engine::TenantScope::All, id)
                    .await
                    .unwrap()
                    .unwrap()
                    .status
                    == waymark_engine::RunStatus::Waiting
            }
        })
        .await;
    }
    // Cancel one with a reason; terminate a second; bulk-cancel the rest by filter.
    let (status, cancelled) = api
        .post(
            &format!("/v1/runs/{}/cancel", ids[0]),
            &op,
            json!({"reason": "duplicate order"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    let (_, cancelled) = api.get(&format!("/v1/runs/{}?wait=20s", ids[0]), &op).await;
    assert_eq!(
        (
            cancelled["status"].as_str(),
            cancelled["ending"]["reason"].as_str()
        ),
        (Some("cancelled"), Some("duplicate order"))
    );
    let (status, terminated) = api
        .call(
            Method::POST,
            &format!("/v1/runs/{}/terminate", ids[1]),
            Some(&op),
            None,
        )
        .await;
    assert_eq!(
        (status, terminated["status"].as_str()),
        (StatusCode::OK, Some("cancelled"))
    );
    let (status, dry) = api
        .post(
            "/v1/runs/cancel",
            &op,
            json!({"filter": {"workflow": "doorbell", "status": "waiting"}, "dry_run": true}),
        )
        .await;
    assert_eq!((status, dry["matched"].as_u64()), (StatusCode::OK, Some(1)));
    let (_, still) = api.get(&format!("/v1/runs/{}", ids[2]), &op).await;
    assert_eq!(still["status"], "waiting", "a dry run changes nothing");
    let (status, applied) = api
        .post(
            "/v1/runs/cancel",
            &op,
            json!({"filter": {"workflow": "doorbell", "status": "waiting"}, "reason": "closing"}),
        )
        .await;
    assert_eq!(
        (status, applied["applied"].as_array().unwrap().len()),
        (StatusCode::OK, 1)
    );
    // Retrying a cancelled (compensated) run is a conflict; bulk retry finds nothing.
    let (status, body) = api
        .call(
            Method::POST,
            &format!("/v1/runs/{}/retry", ids[0]),
            Some(&op),
            None,
        )
        .await;
    assert_eq!(
        (status, problem_type(&body).as_str()),
        (StatusCode::CONFLICT, "conflict")
    );
    let (status, body) = api
        .call(
            Method::POST,
            &format!("/v1/runs/{}/skip-compensation", ids[0]),
            Some(&op),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (_, dry) = api
        .post(
            "/v1/runs/retry",
            &op,
            json!({"filter": {}, "dry_run": true}),
        )
        .await;
    assert_eq!(dry["matched"], 0);
    // Every action is in the audit log with its actor and address.
    let (_, audit) = api.get("/v1/audit", &op).await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for expected in ["run.cancel", "run.terminate", "runs.bulk_cancel"] {
        assert!(actions.contains(&expected), "{actions:?}");
    }
    assert!(audit["entries"][0]["address"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1"));
    // Each single-run action is recorded once, in its own transaction, with the target
    // run and the caller's address; a bulk action adds one record per run it changed.
    let cancels: Vec<&Value> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "run.cancel")
        .collect();
    assert_eq!(cancels.len(), 2, "{audit}");
    assert!(cancels
        .iter()
        .any(|e| e["target"] == format!("run:{}", ids[0])));
    assert!(cancels
        .iter()
        .any(|e| e["target"] == format!("run:{}", ids[2])));
    assert!(cancels
        .iter()
        .all(|e| e["address"].as_str().unwrap().starts_with("127.0.0.1")));
    api.stop().await;
}
