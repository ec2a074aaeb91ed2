//! Long polls (`GET /v1/runs/{id}?wait=`) through real HTTP on both backends: woken by
//! the run's ending rather than by re-reading it, capped per key and per process, and
//! never in the way of the runner's heartbeats and commits.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};
use waymark_engine::SystemClock;

use crate::support::app::{problem_type, TestApp};
use crate::support::workflows::registry;
use crate::support::{
    on_both_backends, poll_until, spawn_runner, test_runner_config, wait_until, Backend, TestDb,
};

on_both_backends!(
    a_long_poll_answers_when_its_run_completes,
    a_long_poll_answers_when_its_run_is_cancelled,
    long_polls_past_the_caps_answer_429_with_retry_after,
);

/// `waymark_api_waiting_requests` from `/metrics`.
async fn waiting(api: &TestApp) -> u64 {
    let text = api
        .http
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("waymark_api_waiting_requests "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no waiting gauge in /metrics:\n{text}"))
}

async fn wait_for_waiting(api: &TestApp, n: u64) {
    wait_until(
        &format!("{n} long polls waiting"),
        Duration::from_secs(10),
        || async { waiting(api).await == n },
    )
    .await;
}

/// Sends `GET path` with `key` in the background; its answer is the join value.
fn long_poll(
    api: &TestApp,
    key: &str,
    path: String,
) -> tokio::task::JoinHandle<(StatusCode, Value)> {
    let request = api.http.get(format!("{}{path}", api.base)).bearer_auth(key);
    tokio::spawn(async move {
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    })
}

async fn ring(api: &TestApp, key: &str, id: &str, by: &str) {
    let (status, body) = api
        .post(
            &format!("/v1/runs/{id}/signals/ring"),
            key,
            json!({ "by": by }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

async fn a_long_poll_answers_when_its_run_completes(db: TestDb) {
    let api = TestApp::on(db).spawn().await;
    let (_, op) = api.key("acme", &["operator"]).await;
    let run = api.start_run(&op, "doorbell", json!({})).await;
    let id = run["id"].as_str().unwrap().to_owned();
    // Longer than the test may take: only the run's ending can answer it.
    let poll = long_poll(&api, &op, format!("/v1/runs/{id}?wait=60s"));
    wait_for_waiting(&api, 1).await;
    assert!(
        !poll.is_finished(),
        "the long poll holds while the run waits"
    );
    ring(&api, &op, &id, "ana").await;
    let (status, body) = poll.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["status"].as_str(), body["output"].as_str()),
        (Some("completed"), Some("opened for ana"))
    );
    wait_for_waiting(&api, 0).await;
    api.stop().await;
}

async fn a_long_poll_answers_when_its_run_is_cancelled(db: TestDb) {
    let api = TestApp::on(db).spawn().await;
    let (_, op) = api.key("acme", &["operator"]).await;
    let run = api.start_run(&op, "doorbell", json!({})).await;
    let id = run["id"].as_str().unwrap().to_owned();
    let poll = long_poll(&api, &op, format!("/v1/runs/{id}?wait=60s"));
    wait_for_waiting(&api, 1).await;
    let (status, body) = api
        .post(
            &format!("/v1/runs/{id}/cancel"),
            &op,
            json!({"reason": "nobody home"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = poll.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "cancelled");
    api.stop().await;
}

async fn long_polls_past_the_caps_answer_429_with_retry_after(db: TestDb) {
    let api = TestApp::on(db)
        .with_api(waymark_api::ApiConfig {
            max_waiting: 3,
            max_waiting_per_key: 2,
            ..Default::default()
        })
        .spawn()
        .await;
    let (_, first) = api.key("acme", &["operator"]).await;
    let (_, second) = api.key("acme", &["operator"]).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let run = api.start_run(&first, "doorbell", json!({})).await;
        ids.push(run["id"].as_str().unwrap().to_owned());
    }
    // Every run parked at its door first: what the reads below see is then settled,
    // not a worker's progress racing them.
    for id in &ids {
        crate::support::wait_for_status(
            &api.engine.store,
            id.parse().unwrap(),
            waymark_engine::RunStatus::Waiting,
        )
        .await;
    }
    let wait = |id: &str| format!("/v1/runs/{id}?wait=60s");
    let a = long_poll(&api, &first, wait(&ids[0]));
    let b = long_poll(&api, &first, wait(&ids[1]));
    wait_for_waiting(&api, 2).await;

    // The key's third wait is refused at once; a read without wait is not.
    let refused = api
        .http
        .get(format!("{}{}", api.base, wait(&ids[2])))
        .bearer_auth(&first)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "5");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(problem_type(&body), "too-many-waits", "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("per key"),
        "{body}"
    );
    let (status, body) = api.get(&format!("/v1/runs/{}", ids[2]), &first).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("waiting"))
    );

    // Another key may wait until the process holds its cap.
    let c = long_poll(&api, &second, wait(&ids[2]));
    wait_for_waiting(&api, 3).await;
    let (status, body) = api.get(&wait(&ids[3]), &second).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("this server"),
        "{body}"
    );

    // A wait that ends frees its slot.
    ring(&api, &first, &ids[0], "ana").await;
    assert_eq!(a.await.unwrap().1["status"], "completed");
    wait_for_waiting(&api, 2).await;
    let d = long_poll(&api, &first, wait(&ids[3]));
    wait_for_waiting(&api, 3).await;
    for id in &ids[1..] {
        ring(&api, &first, id, "bo").await;
    }
    for poll in [b, c, d] {
        let (status, body) = poll.await.unwrap();
        assert_eq!(
            (status, body["status"].as_str()),
            (StatusCode::OK, Some("completed"))
        );
    }
    wait_for_waiting(&api, 0).await;
    api.stop().await;
}

/// `lease_expires_at` and status of a run, read over a pool of the test's own.
async fn lease_and_status(own: &sqlx::PgPool, id: uuid::Uuid) -> (DateTime<Utc>, String) {
    sqlx::query_as("SELECT lease_expires_at, status FROM waymark_runs WHERE id = $1")
        .bind(id)
        .fetch_one(own)
        .await
        .map(|(lease, status): (Option<DateTime<Utc>>, String)| (lease.unwrap_or_default(), status))
        .unwrap()
}

/// The main pool may be full of API reads; the runner's heartbeats and commits use
/// their own connections. (SQLite has one connection for everything: each statement
/// waits at most for the one before it, and a long poll holds none while it waits.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_and_commits_go_on_while_api_reads_hold_every_connection() {
    let db = TestDb::new(Backend::Postgres).await;
    let (registry, handles) = registry();
    let engine = db.engine(registry, Arc::new(SystemClock));
    let run = engine
        .start(crate::support::start_req("gated", json!({})))
        .await
        .unwrap()
        .run;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let entered = handles.gate_entered.clone();
    wait_until("the gated step runs", Duration::from_secs(10), || {
        let entered = entered.clone();
        async move { entered.load(Ordering::SeqCst) == 1 }
    })
    .await;

    // API reads hold every connection of the main pool and more queue for them, so
    // a connection given back goes to the next reader, as under a burst of requests.
    let pool = db.pg().pool().clone();
    let max = pool.options().get_max_connections();
    let hogs: Vec<_> = (0..4 * max)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                loop {
                    if let Ok(connection) = pool.acquire().await {
                        std::future::pending::<()>().await;
                        drop(connection);
                    }
                }
            })
        })
        .collect();
    wait_until(
        "the main pool is exhausted",
        Duration::from_secs(10),
        || {
            let pool = pool.clone();
            async move { pool.size() == max && pool.num_idle() == 0 }
        },
    )
    .await;

    let own = sqlx::PgPool::connect(&db.location).await.unwrap();
    // Two extensions: a heartbeat already under way when the pool filled may account
    // for one.
    let mut lease = lease_and_status(&own, run.id).await.0;
    for _ in 0..2 {
        let what = "a heartbeat extends the lease while the main pool is exhausted";
        lease = poll_until(what, Duration::from_secs(20), || async {
            let now = lease_and_status(&own, run.id).await.0;
            if now > lease {
                Ok(now)
            } else {
                Err(format!("; lease still expires at {now}"))
            }
        })
        .await;
    }
    handles.gate.add_permits(1);
    let what = "the step's commit completes the run while the main pool is exhausted";
    wait_until(what, Duration::from_secs(20), || async {
        lease_and_status(&own, run.id).await.1 == "completed"
    })
    .await;
    for hog in hogs {
        hog.abort();
    }
    runner.stop().await;
}
