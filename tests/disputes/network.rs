//! The HTTP network adapter against a real HTTP server standing in for the card
//! network: a tiny axum app that answers submissions from a script and counts the ones
//! it accepted, so "exactly one submission" is what a network would have seen.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use waymark_workflows::disputes::network::Network;

use super::{start_with, Disputes, Setup};
use crate::support::{on_both_backends, wait_for_run, TestDb};

/// What the stand-in network saw and how it answers.
#[derive(Default)]
struct Seen {
    /// The answers to the next submissions, in order; once empty, 201.
    script: VecDeque<(StatusCode, Value)>,
    /// Every submission request: (dispute id, idempotency key, status answered).
    requests: Vec<(String, String, StatusCode)>,
}

type Shared = Arc<Mutex<Seen>>;

async fn submission(
    State(seen): State<Shared>,
    Path(dispute): Path<String>,
    headers: HeaderMap,
    Json(_packet): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut seen = seen.lock().unwrap();
    let (status, body) = seen
        .script
        .pop_front()
        .unwrap_or((StatusCode::CREATED, json!({"accepted": true})));
    seen.requests.push((dispute, key, status));
    (status, Json(body))
}

/// Starts the stand-in network answering with `script` first; its base URL and what
/// it sees.
async fn network(script: Vec<(StatusCode, Value)>) -> (url::Url, Shared) {
    let seen: Shared = Arc::new(Mutex::new(Seen {
        script: script.into(),
        requests: Vec::new(),
    }));
    let app = Router::new()
        .route("/disputes/{id}/submissions", post(submission))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url::Url::parse(&base).unwrap(), seen)
}

async fn start_against(db: TestDb, base: url::Url) -> Disputes {
    start_with(
        db,
        Setup {
            network: Network::http(base, Duration::from_secs(10)),
            ..Setup::default()
        },
    )
    .await
}

async fn the_network_failing_twice_then_accepting_sees_exactly_one_accepted_submission(db: TestDb) {
    let unavailable = (
        StatusCode::SERVICE_UNAVAILABLE,
        json!({"reason": "try later"}),
    );
    let (base, seen) = network(vec![unavailable.clone(), unavailable]).await;
    let d = start_against(db, base).await;
    let secret = d.secret("acme", None).await;
    let run = d.open(&secret, "dp_n").await;
    d.run_in(run, "awaiting_evidence").await;
    d.evidence("dp_n").await;
    // Each 503 schedules a retry on the manual clock: move it past the backoff once the
    // retry is scheduled, twice.
    for failures in 1..=2 {
        wait_for_run(
            &d.api.engine.store,
            run,
            &format!("retry {failures} scheduled"),
            |r| {
                r.state == "submitting"
                    && r.error.is_some()
                    && r.locked_by.is_none()
                    && seen.lock().unwrap().requests.len() == failures
            },
        )
        .await;
        d.clock.advance(Duration::from_secs(3600));
    }
    d.run_in(run, "awaiting_decision").await;
    let requests = seen.lock().unwrap().requests.clone();
    let statuses: Vec<u16> = requests.iter().map(|(_, _, s)| s.as_u16()).collect();
    assert_eq!(statuses, [503, 503, 201]);
    assert!(
        requests
            .iter()
            .all(|(id, key, _)| id == "dp_n" && key == "dispute:dp_n:cycle:1"),
        "{requests:?}"
    );
    d.api.stop().await;
}

async fn the_network_refusing_the_packet_holds_the_run_with_its_reason(db: TestDb) {
    let (base, seen) = network(vec![(
        StatusCode::UNPROCESSABLE_ENTITY,
        json!({"reason": "the packet has no receipt"}),
    )])
    .await;
    let d = start_against(db, base).await;
    let secret = d.secret("acme", None).await;
    let run = d.open(&secret, "dp_h").await;
    d.run_in(run, "awaiting_evidence").await;
    d.evidence("dp_h").await;
    let held = wait_for_run(&d.api.engine.store, run, "held", |r| r.held).await;
    assert_eq!(held.state, "submitting");
    let error = held.error.expect("the hold says why");
    assert!(
        error.message.contains("the packet has no receipt") && error.message.contains("422"),
        "{error:?}"
    );
    // A refusal is not retried: the network saw one request.
    assert_eq!(seen.lock().unwrap().requests.len(), 1);
    d.api.stop().await;
}

on_both_backends!(
    the_network_failing_twice_then_accepting_sees_exactly_one_accepted_submission,
    the_network_refusing_the_packet_holds_the_run_with_its_reason,
);
