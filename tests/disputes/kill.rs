//! A real `waymark serve` is SIGKILLed while its submission to the card network is in
//! flight (the stand-in network holds the first request open until the process is
//! dead), then started again: the run resumes the submission with the same
//! idempotency key, and the network counts exactly one accepted submission.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::Notify;
use waymark_engine::RunStatus;
use waymark_workflows::disputes::signature;

use super::event;
use crate::binary::{command, spawn_with, Proc};
use crate::support::{on_both_backends, wait_for_run, TestDb};

const MASTER_KEY: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";

/// The card network: accepts a submission once per idempotency key (a repeat is
/// answered 200 and not counted), and holds the very first request open until told.
#[derive(Default)]
struct StandIn {
    accepted: Mutex<BTreeSet<String>>,
    /// Every request's idempotency key, in arrival order.
    requests: Mutex<Vec<String>>,
    first_arrived: Notify,
    release: Notify,
}

async fn submission(
    State(net): State<Arc<StandIn>>,
    Path(_dispute): Path<String>,
    headers: HeaderMap,
) -> (StatusCode, axum::Json<Value>) {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let first = {
        let mut requests = net.requests.lock().unwrap();
        requests.push(key.clone());
        requests.len() == 1
    };
    let new = net.accepted.lock().unwrap().insert(key);
    if first {
        // Accepted on the network's side, but the answer never reaches the process.
        net.first_arrived.notify_one();
        net.release.notified().await;
    }
    if new {
        (
            StatusCode::CREATED,
            axum::Json(json!({"status": "accepted"})),
        )
    } else {
        (
            StatusCode::OK,
            axum::Json(json!({"status": "accepted", "replayed": true})),
        )
    }
}

async fn stand_in() -> (Arc<StandIn>, String) {
    let net = Arc::new(StandIn::default());
    let app = Router::new()
        .route("/disputes/{id}/submissions", post(submission))
        .with_state(net.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (net, base)
}

async fn serve(db: &TestDb, network: &str, admin: &str) -> (Proc, String) {
    let mut cmd = command(db, &["serve"]);
    cmd.env("WAYMARK_DISPUTE_NETWORK_URL", network)
        .env("WAYMARK_MASTER_KEY", MASTER_KEY)
        .env("WAYMARK_BOOTSTRAP_KEY", admin);
    let proc = spawn_with(cmd).await;
    let base = format!("http://{}", proc.addr.as_ref().unwrap());
    (proc, base)
}

async fn a_serve_killed_during_submission_submits_exactly_once_after_restart(db: TestDb) {
    let (net, network) = stand_in().await;
    let admin = waymark_engine::keys::Secret::generate();
    let admin = admin.expose();
    let http = reqwest::Client::new();
    let (mut first, base) = serve(&db, &network, admin).await;

    let answer: Value = http
        .post(format!("{base}/v1/disputes/webhook-secret?tenant=acme"))
        .bearer_auth(admin)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = answer["secret"].as_str().unwrap().to_owned();
    let now = chrono::Utc::now();
    let created = event(
        "evt_k_created",
        "dispute.created",
        "dp_k",
        now,
        now + chrono::Duration::days(20),
    );
    let body = created.to_string().into_bytes();
    let response = http
        .post(format!("{base}/v1/webhooks/acme/disputes"))
        .header("content-type", "application/json")
        .header(
            signature::HEADER,
            signature::sign(&[&secret], now.timestamp(), &body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let answer: Value = response.json().await.unwrap();
    let run: uuid::Uuid = answer["result"]["run_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    wait_for_run(&db.store, run, "awaiting_evidence", |r| {
        r.state == "awaiting_evidence" && r.status == RunStatus::Waiting
    })
    .await;
    let response = http
        .post(format!("{base}/v1/disputes/dp_k/evidence?tenant=acme"))
        .bearer_auth(admin)
        .json(&json!({"product_description": "A red bicycle"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    // The submission is in flight: kill the process before the network answers.
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        net.first_arrived.notified(),
    )
    .await
    .expect("the submission reached the network");
    first.child.start_kill().unwrap();
    first.child.wait().await.unwrap();
    net.release.notify_one();
    let held = db
        .store
        .run_get(&waymark_engine::TenantScope::All, run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (held.state.as_str(), held.status),
        ("submitting", RunStatus::Running),
        "killed mid-submission"
    );

    let (second, _) = serve(&db, &network, admin).await;
    let done = wait_for_run(&db.store, run, "awaiting_decision", |r| {
        r.state == "awaiting_decision" && r.status == RunStatus::Waiting
    })
    .await;
    drop(second);
    assert!(done.lease_token > held.lease_token, "claimed again");
    let requests = net.requests.lock().unwrap().clone();
    assert!(requests.len() >= 2, "{requests:?}");
    assert!(
        requests.iter().all(|k| k == "dispute:dp_k:cycle:1"),
        "{requests:?}"
    );
    let accepted: Vec<String> = net.accepted.lock().unwrap().iter().cloned().collect();
    assert_eq!(accepted, ["dispute:dp_k:cycle:1"]);
}

on_both_backends!(a_serve_killed_during_submission_submits_exactly_once_after_restart);
