//! The HTTP API through real HTTP, against a server on port 0, on both backends:
//! happy paths, a table of bad inputs per route, tenant isolation, scopes, revoked and
//! expired keys, OpenAPI coverage, long-poll and bulk actions.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use waymark_engine::keys::{IssueKey, Scope};
use waymark_engine::{Engine, SystemClock};

use crate::support::workflows::{registry, TestWorkflows};
use crate::support::{
    on_both_backends, spawn_runner, test_runner_config, wait_until, RunnerHandle, TestDb,
};

/// A Waymark API on a free port with a runner, an admin key and the test workflows.
pub(crate) struct Api {
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
    pub(crate) admin: String,
    pub(crate) engine: Engine,
    pub(crate) handles: TestWorkflows,
    runner: Option<RunnerHandle>,
    sealer: waymark_engine::keys::Sealer,
    stop: CancellationToken,
    /// Shared with the processes started beside this one by [`Api::start_beside`].
    _db: Arc<TestDb>,
}

impl Api {
    pub(crate) async fn start(db: TestDb) -> Api {
        Self::start_with(db, waymark_api::ApiConfig::default()).await
    }

    pub(crate) async fn start_with(db: TestDb, api: waymark_api::ApiConfig) -> Api {
        Self::start_with_clock(db, api, Arc::new(SystemClock)).await
    }

    pub(crate) async fn start_with_clock(
        db: TestDb,
        api: waymark_api::ApiConfig,
        clock: waymark_engine::SharedClock,
    ) -> Api {
        Self::start_with_registry(db, api, clock, |_, _, _| {}).await
    }

    /// With `extra` registering more workflows (given the store and the API's sealer).
    pub(crate) async fn start_with_registry(
        db: TestDb,
        api: waymark_api::ApiConfig,
        clock: waymark_engine::SharedClock,
        extra: impl FnOnce(
            &mut waymark_engine::workflow::Registry,
            &waymark_engine::Store,
            &waymark_engine::keys::Sealer,
        ),
    ) -> Api {
        Self::start_on(Arc::new(db), api, clock, extra).await
    }

    /// Another Waymark process on this one's database, with its own API settings (its
    /// own master key, say), engine, runner and port.
    pub(crate) async fn start_beside(&self, api: waymark_api::ApiConfig) -> Api {
        Self::start_on(self._db.clone(), api, Arc::new(SystemClock), |_, _, _| {}).await
    }

    async fn start_on(
        db: Arc<TestDb>,
        api: waymark_api::ApiConfig,
        clock: waymark_engine::SharedClock,
        extra: impl FnOnce(
            &mut waymark_engine::workflow::Registry,
            &waymark_engine::Store,
            &waymark_engine::keys::Sealer,
        ),
    ) -> Api {
        let (registry, handles) = registry();
        let mut registry = registry;
        registry.register(waymark_workflows::demo::Demo).unwrap();
        extra(&mut registry, &db.store, &api.sealer);
        let engine = db.engine(registry, clock);
        let (_, secret) = waymark_engine::keys::issue(
            &engine.store,
            IssueKey {
                tenant: "system".into(),
                scopes: vec![Scope::Admin],
                name: Some("test admin".into()),
                owner_email: None,
                expires_at: None,
                actor: "test".into(),
                address: None,
            },
            None,
            chrono::Utc::now(),
        )
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let sealer = api.sealer.clone();
        let app = waymark_api::app(waymark_api::AppState {
            engine: engine.clone(),
            blobs: None,
            api,
        });
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await
            .unwrap()
        });
        let runner = spawn_runner(engine.clone(), test_runner_config());
        Api {
            base,
            http: reqwest::Client::new(),
            admin: secret.expose().to_owned(),
            engine,
            handles,
            runner: Some(runner),
            sealer,
            stop,
            _db: db,
        }
    }

    pub(crate) fn db(&self) -> &TestDb {
        &self._db
    }

    pub(crate) async fn stop(mut self) {
        if let Some(runner) = self.runner.take() {
            runner.stop().await;
        }
        self.stop.cancel();
    }

    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub(crate) async fn raw(
        &self,
        method: Method,
        path: &str,
        key: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key)
            .body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let value = response.json().await.unwrap_or(Value::Null);
        (status, value)
    }

    /// A key of `tenant` with `scopes`, made by the admin.
    pub(crate) async fn key(&self, tenant: &str, scopes: &[&str]) -> (String, String) {
        let (status, body) = self
            .call(
                Method::POST,
                "/v1/keys",
                Some(&self.admin),
                Some(json!({"tenant": tenant, "scopes": scopes, "name": "test"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (
            body["id"].as_str().unwrap().to_owned(),
            body["secret"].as_str().unwrap().to_owned(),
        )
    }

    pub(crate) async fn start_run(&self, key: &str, workflow: &str, input: Value) -> Value {
        let (status, body) = self
            .call(
                Method::POST,
                &format!("/v1/workflows/{workflow}/runs"),
                Some(key),
                Some(input),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }
}

pub(crate) fn problem_type(body: &Value) -> String {
    body["type"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("https://waymark.dev/problems/")
        .to_owned()
}

on_both_backends!(
    runs_start_idempotently_and_report_status_history_and_long_poll,
    signals_are_delivered_idempotently_through_http,
    operator_actions_and_bulk_actions_with_dry_run,
    keys_are_created_listed_revoked_and_authenticate,
    every_route_refuses_bad_input_with_the_documented_status_and_type,
    tenants_never_see_each_others_runs_keys_or_audit,
    scopes_limit_what_a_key_may_do,
    revoked_and_expired_keys_are_refused,
    openapi_documents_every_route_and_every_documented_route_exists,
    listing_filters_and_pages_with_a_cursor,
    metrics_count_runs_and_transitions_without_tenant_labels,
    a_workflow_diagram_is_served_as_svg,
    an_unreachable_database_answers_503,
    requests_over_a_keys_rate_limit_answer_429,
    a_sealed_key_is_revealed_once_to_its_tenant,
    a_reveal_with_another_master_key_keeps_the_secret_for_the_right_one,
    a_suspended_tenants_keys_stop_working_until_restored,
    workflows_and_workers_are_listed_with_their_machines,
);

async fn workflows_and_workers_are_listed_with_their_machines(db: TestDb) {
    let api = Api::start(db).await;
    let (_, op) = api.key("acme", &["operator"]).await;
    let (status, list) = api
        .call(Method::GET, "/v1/workflows", Some(&op), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = list["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"doorbell") && names.contains(&"three_step"),
        "{names:?}"
    );
    let (status, one) = api
        .call(Method::GET, "/v1/workflows/doorbell", Some(&op), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let states: Vec<&str> = one["definition"]["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(states, vec!["door", "open"]);
    assert_eq!(
        one["definition"]["states"][0]["edges"][0],
        json!({"to": "open", "kind": "signal", "signal": "ring"})
    );
    assert_eq!(one["definition"]["signals"][0]["name"], "ring");
    let (status, workers) = api.call(Method::GET, "/v1/workers", Some(&op), None).await;
    assert_eq!(status, StatusCode::OK);
    let live: Vec<&Value> = workers["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["stopped_at"].is_null())
        .collect();
    assert_eq!(live.len(), 1, "{workers}");
    assert!(live[0]["workflows"]
        .as_array()
        .unwrap()
        .contains(&json!("doorbell@1")));
    // Hosts and process ids are for admins only.
    assert!(
        live[0].get("pid").is_none() && live[0].get("host").is_none(),
        "{live:?}"
    );
    let (_, workers) = api
        .call(Method::GET, "/v1/workers", Some(&api.admin), None)
        .await;
    let worker = &workers["workers"][0];
    assert!(worker["pid"].as_i64().unwrap() > 0, "{worker}");
    assert!(worker["host"].is_string(), "{worker}");
    api.stop().await;
}

async fn a_sealed_key_is_revealed_once_to_its_tenant(db: TestDb) {
    let api = Api::start(db).await;
    let (_, op) = api.key("acme", &["operator"]).await;
    let (_, other) = api.key("globex", &["operator"]).await;
    let sealed = waymark_engine::keys::issue_sealed(
        &api.engine.store,
        &api.sealer,
        IssueKey {
            tenant: "acme".into(),
            scopes: vec![Scope::Reader],
            name: Some("rotated".into()),
            owner_email: None,
            expires_at: None,
            actor: "run:test".into(),
            address: None,
        },
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    let path = format!("/v1/keys/{}/reveal", sealed.id);
    let (_, listed) = api
        .call(
            Method::GET,
            &format!("/v1/keys/{}", sealed.id),
            Some(&op),
            None,
        )
        .await;
    assert_eq!(listed["awaiting_reveal"], true);
    let (status, body) = api.call(Method::POST, &path, Some(&other), None).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another tenant cannot reveal it: {body}"
    );
    let (status, body) = api.call(Method::POST, &path, Some(&op), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let secret = body["secret"].as_str().unwrap().to_owned();
    let (status, who) = api
        .call(Method::GET, "/v1/whoami", Some(&secret), None)
        .await;
    assert_eq!(
        (status, who["key_id"].as_str()),
        (StatusCode::OK, Some(sealed.id.to_string().as_str()))
    );
    let (status, body) = api.call(Method::POST, &path, Some(&op), None).await;
    assert_eq!(
        (status, problem_type(&body).as_str()),
        (StatusCode::CONFLICT, "conflict"),
        "only once"
    );
    let (_, after) = api
        .call(
            Method::GET,
            &format!("/v1/keys/{}", sealed.id),
            Some(&op),
            None,
        )
        .await;
    assert_eq!(
        (
            after["awaiting_reveal"].clone(),
            after["revealed_at"].is_string()
        ),
        (json!(false), true)
    );
    // A key shown at creation has nothing to reveal.
    let (op_id, _) = api.key("acme", &["reader"]).await;
    let (status, _) = api
        .call(
            Method::POST,
            &format!("/v1/keys/{op_id}/reveal"),
            Some(&op),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, audit) = api.call(Method::GET, "/v1/audit", Some(&op), None).await;
    assert!(audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "key.revealed"));
    api.stop().await;
}

/// Two processes on one database with different master keys (two hosts, each with
/// its own generated `master.key`): the one that did not seal a secret refuses to
/// reveal it, names both master keys and keeps it; the one that sealed it reveals it,
/// once.
async fn a_reveal_with_another_master_key_keeps_the_secret_for_the_right_one(db: TestDb) {
    use waymark_engine::keys::Sealer;
    let (ours, theirs) = (Sealer::from_bytes([1; 32]), Sealer::from_bytes([2; 32]));
    let api = Api::start_with(
        db,
        waymark_api::ApiConfig {
            sealer: ours.clone(),
            ..waymark_api::ApiConfig::default()
        },
    )
    .await;
    let (_, op) = api.key("acme", &["operator"]).await;
    // Sealed by the other process (a scheduled rotation its worker ran).
    let sealed = waymark_engine::keys::issue_sealed(
        &api.engine.store,
        &theirs,
        IssueKey {
            tenant: "acme".into(),
            scopes: vec![Scope::Reader],
            name: Some("rotated".into()),
            owner_email: None,
            expires_at: None,
            actor: "run:test".into(),
            address: None,
        },
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    let path = format!("/v1/keys/{}/reveal", sealed.id);
    for _ in 0..2 {
        let (status, body) = api.call(Method::POST, &path, Some(&op), None).await;
        assert_eq!(
            (status, problem_type(&body).as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            "{body}"
        );
        let detail = body["detail"].as_str().unwrap();
        for needle in [theirs.key_id(), ours.key_id(), "WAYMARK_MASTER_KEY", "kept"] {
            assert!(detail.contains(needle), "{needle:?} not in {detail:?}");
        }
    }
    let (_, listed) = api
        .call(
            Method::GET,
            &format!("/v1/keys/{}", sealed.id),
            Some(&op),
            None,
        )
        .await;
    assert_eq!(
        (
            listed["awaiting_reveal"].clone(),
            listed["revealed_at"].clone()
        ),
        (json!(true), Value::Null),
        "the refused reveals kept the secret"
    );

    let other = api
        .start_beside(waymark_api::ApiConfig {
            sealer: theirs.clone(),
            ..waymark_api::ApiConfig::default()
        })
        .await;
    let (status, body) = other.call(Method::POST, &path, Some(&op), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let secret = body["secret"].as_str().unwrap().to_owned();
    let (status, who) = api
        .call(Method::GET, "/v1/whoami", Some(&secret), None)
        .await;
    assert_eq!(
        (status, who["key_id"].as_str()),
        (StatusCode::OK, Some(sealed.id.to_string().as_str()))
    );
    for process in [&other, &api] {
        let (status, body) = process.call(Method::POST, &path, Some(&op), None).await;
        assert_eq!(status, StatusCode::CONFLICT, "only once: {body}");
    }
    let revealed = api
        .db()
        .scalar_i64("SELECT count(*) FROM waymark_audit WHERE action = 'key.revealed'")
        .await;
    assert_eq!(
        revealed, 1,
        "only the reveal that opened the secret is audited"
    );
    other.stop().await;
    api.stop().await;
}

async fn a_suspended_tenants_keys_stop_working_until_restored(db: TestDb) {
    let api = Api::start(db).await;
    let (_, op) = api.key("acme", &["operator"]).await;
    let (_, other) = api.key("globex", &["operator"]).await;
    assert_eq!(
        api.engine
            .store
            .keys_suspend("acme", Some(chrono::Utc::now()))
            .await
            .unwrap(),
        1
    );
    let (status, _) = api.call(Method::GET, "/v1/whoami", Some(&op), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = api
        .call(Method::GET, "/v1/whoami", Some(&other), None)
        .await;
    assert_eq!(status, StatusCode::OK, "other tenants are unaffected");
    api.engine.store.keys_suspend("acme", None).await.unwrap();
    let (status, _) = api.call(Method::GET, "/v1/whoami", Some(&op), None).await;
    assert_eq!(status, StatusCode::OK);
    api.stop().await;
}

async fn metrics_count_runs_and_transitions_without_tenant_labels(db: TestDb) {
    let api = Api::start_with(
        db,
        waymark_api::ApiConfig {
            metrics_token: Some("scrape-me".into()),
            ..Default::default()
        },
    )
    .await;
    let (_, op) = api.key("acme", &["operator"]).await;
    let run = api.start_run(&op, "three_step", json!({"n": 1})).await;
    api.call(
        Method::GET,
        &format!("/v1/runs/{}?wait=20s", run["id"].as_str().unwrap()),
        Some(&op),
        None,
    )
    .await;
    let url = format!("{}/metrics", api.base);
    assert_eq!(
        api.http.get(&url).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api.http
            .get(&url)
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let text = api
        .http
        .get(&url)
        .bearer_auth("scrape-me")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("waymark_runs_started_total{workflow=\"three_step\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("waymark_runs_ended_total{workflow=\"three_step\",status=\"completed\"} 1"),
        "{text}"
    );
    assert!(text.contains("waymark_transitions_total 3"), "{text}");
    assert!(
        text.contains("waymark_step_duration_seconds_count 3"),
        "{text}"
    );
    assert!(
        text.contains("waymark_schedule_to_start_seconds_count 1"),
        "{text}"
    );
    assert!(text.contains("waymark_due_runs 0"), "{text}");
    assert!(
        !text.contains("acme") && !text.contains("tenant"),
        "no tenant labels"
    );
    api.stop().await;
}

async fn a_workflow_diagram_is_served_as_svg(db: TestDb) {
    let api = Api::start(db).await;
    let (_, reader) = api.key("acme", &["reader"]).await;
    let response = api
        .http
        .get(format!("{}/v1/workflows/doorbell/diagram.svg", api.base))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "image/svg+xml");
    let svg = response.text().await.unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains(">door</text>") && svg.contains("signal ring"),
        "{svg}"
    );
    let (status, _) = api
        .call(
            Method::GET,
            "/v1/workflows/nope/diagram.svg",
            Some(&reader),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    api.stop().await;
}

async fn an_unreachable_database_answers_503(db: TestDb) {
    let api = Api::start(db).await;
    let (_, op) = api.key("acme", &["operator"]).await;
    match &api.engine.store {
        waymark_engine::Store::Postgres(pg) => pg.pool().close().await,
        waymark_engine::Store::Sqlite(lite) => lite.pool().close().await,
    }
    let (status, body) = api.call(Method::GET, "/v1/runs", Some(&op), None).await;
    assert_eq!(
        (status, problem_type(&body).as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        "{body}"
    );
    let response = api
        .http
        .get(format!("{}/readyz", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    api.stop().await;
}

async fn requests_over_a_keys_rate_limit_answer_429(db: TestDb) {
    let (clock, shared) = crate::support::manual_clock();
    let api = Api::start_with_clock(
        db,
        waymark_api::ApiConfig {
            rate_limit: 3,
            ..Default::default()
        },
        shared,
    )
    .await;
    let (_, reader) = api.key("acme", &["reader"]).await;
    let (_, other) = api.key("acme", &["reader"]).await;
    // The clock stands still: within this second 3 requests pass, the rest are 429.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let response = api
            .http
            .get(format!("{}/v1/whoami", api.base))
            .bearer_auth(&reader)
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(response.headers()["retry-after"], "1");
            let body: Value = response.json().await.unwrap();
            assert_eq!(problem_type(&body), "rate-limited");
            statuses.push(429);
        } else {
            statuses.push(response.status().as_u16());
        }
    }
    assert_eq!(statuses, vec![200, 200, 200, 429, 429, 429]);
    // The limit is per key.
    let (status, _) = api
        .call(Method::GET, "/v1/whoami", Some(&other), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    // The next second, the key may call again.
    clock.advance(Duration::from_secs(1));
    let (status, _) = api
        .call(Method::GET, "/v1/whoami", Some(&reader), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    api.stop().await;
}

async fn runs_start_idempotently_and_report_status_history_and_long_poll(db: TestDb) {
    let api = Api::start(db).await;
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

    let (status, run) = api
        .call(
            Method::GET,
            &format!("/v1/runs/{id}?wait=20s"),
            Some(&op),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (run["status"].as_str(), run["output"].clone()),
        (Some("completed"), json!({"n": 3}))
    );
    let (status, history) = api
        .call(
            Method::GET,
            &format!("/v1/runs/{id}/history"),
            Some(&op),
            None,
        )
        .await;
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
    let api = Api::start(db).await;
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
    let (_, done) = api
        .call(
            Method::GET,
            &format!("/v1/runs/{id}?wait=20s"),
            Some(&op),
            None,
        )
        .await;
    assert_eq!(done["output"], "opened for ana");
    let (_, signals) = api
        .call(
            Method::GET,
            &format!("/v1/runs/{id}/signals"),
            Some(&op),
            None,
        )
        .await;
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
    let api = Api::start(db).await;
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
        .call(
            Method::POST,
            &format!("/v1/runs/{}/cancel", ids[0]),
            Some(&op),
            Some(json!({"reason": "duplicate order"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    let (_, cancelled) = api
        .call(
            Method::GET,
            &format!("/v1/runs/{}?wait=20s", ids[0]),
            Some(&op),
            None,
        )
        .await;
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
        .call(
            Method::POST,
            "/v1/runs/cancel",
            Some(&op),
            Some(json!({"filter": {"workflow": "doorbell", "status": "waiting"}, "dry_run": true})),
        )
        .await;
    assert_eq!((status, dry["matched"].as_u64()), (StatusCode::OK, Some(1)));
    let (_, still) = api
        .call(
            Method::GET,
            &format!("/v1/runs/{}", ids[2]),
            Some(&op),
            None,
        )
        .await;
    assert_eq!(still["status"], "waiting", "a dry run changes nothing");
    let (status, applied) = api.call(Method::POST, "/v1/runs/cancel", Some(&op), Some(json!({"filter": {"workflow": "doorbell", "status": "waiting"}, "reason": "closing"}))).await;
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
        .call(
            Method::POST,
            "/v1/runs/retry",
            Some(&op),
            Some(json!({"filter": {}, "dry_run": true})),
        )
        .await;
    assert_eq!(dry["matched"], 0);
    // Every action is in the audit log with its actor and address.
    let (_, audit) = api.call(Method::GET, "/v1/audit", Some(&op), None).await;
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

async fn keys_are_created_listed_revoked_and_authenticate(db: TestDb) {
    let api = Api::start(db).await;
    let (op_id, op) = api.key("acme", &["operator"]).await;
    let (status, whoami) = api.call(Method::GET, "/v1/whoami", Some(&op), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            whoami["key_id"].as_str(),
            whoami["tenant"].as_str(),
            whoami["scopes"].clone()
        ),
        (Some(op_id.as_str()), Some("acme"), json!(["operator"]))
    );
    // The operator makes a reader for its own tenant (tenant defaults to its own).
    let (status, reader) = api.call(Method::POST, "/v1/keys", Some(&op), Some(json!({"scopes": ["reader"], "name": "dashboard", "owner_email": "ops@example.com"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{reader}");
    assert_eq!(reader["tenant"], "acme");
    let reader_secret = reader["secret"].as_str().unwrap().to_owned();
    let reader_id = reader["id"].as_str().unwrap().to_owned();
    let (status, _) = api
        .call(Method::GET, "/v1/whoami", Some(&reader_secret), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, list) = api.call(Method::GET, "/v1/keys", Some(&op), None).await;
    let listed = list["keys"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed
            .iter()
            .all(|k| k.get("secret").is_none() && k.get("secret_hash").is_none()),
        "{list}"
    );
    let (status, one) = api
        .call(
            Method::GET,
            &format!("/v1/keys/{reader_id}"),
            Some(&op),
            None,
        )
        .await;
    assert_eq!(
        (status, one["name"].as_str()),
        (StatusCode::OK, Some("dashboard"))
    );
    let (status, revoked) = api
        .call(
            Method::DELETE,
            &format!("/v1/keys/{reader_id}"),
            Some(&op),
            None,
        )
        .await;
    assert_eq!(
        (status, revoked["active"].clone()),
        (StatusCode::OK, json!(false))
    );
    let (status, body) = api
        .call(Method::GET, "/v1/whoami", Some(&reader_secret), None)
        .await;
    assert_eq!(
        (status, problem_type(&body).as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (_, audit) = api.call(Method::GET, "/v1/audit", Some(&op), None).await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"key.created") && actions.contains(&"key.revoked"),
        "{actions:?}"
    );
    api.stop().await;
}

/// (method, path, body, content type, expected status, expected problem type)
type Case = (
    Method,
    String,
    Option<Vec<u8>>,
    Option<&'static str>,
    u16,
    &'static str,
);

async fn every_route_refuses_bad_input_with_the_documented_status_and_type(db: TestDb) {
    let api = Api::start_with(
        db,
        waymark_api::ApiConfig {
            max_body: 4096,
            ..Default::default()
        },
    )
    .await;
    let (_, op) = api.key("acme", &["operator"]).await;
    let run = api.start_run(&op, "doorbell", json!({})).await;
    let id = run["id"].as_str().unwrap().to_owned();
    let (key_id, _) = api.key("acme", &["reader"]).await;
    let json_ct = Some("application/json");
    let big = Some(format!("{{\"pad\": \"{}\"}}", "x".repeat(5000)).into_bytes());
    let j = |s: &str| Some(s.as_bytes().to_vec());
    let cases: Vec<Case> = vec![
        // Start a run.
        (
            Method::POST,
            "/v1/workflows/nope/runs".into(),
            j("{}"),
            json_ct,
            404,
            "not-found",
        ),
        (
            Method::POST,
            "/v1/workflows/three_step/runs".into(),
            j("{\"n\": "),
            json_ct,
            400,
            "bad-request",
        ),
        (
            Method::POST,
            "/v1/workflows/three_step/runs".into(),
            j("{\"n\": 1}"),
            Some("text/plain"),
            400,
            "bad-request",
        ),
        (
            Method::POST,
            "/v1/workflows/three_step/runs".into(),
            j("{\"n\": 1}"),
            None,
            400,
            "bad-request",
        ),
        (
            Method::POST,
            "/v1/workflows/three_step/runs".into(),
            big.clone(),
            json_ct,
            413,
            "payload-too-large",
        ),
        (
            Method::POST,
            "/v1/workflows/three_step/runs".into(),
            j("{}"),
            json_ct,
            422,
            "validation",
        ),
        (
            Method::POST,
            "/v1/workflows/three_step/runs".into(),
            j("{\"n\": \"one\"}"),
            json_ct,
            422,
            "validation",
        ),
        (
            Method::POST,
            "/v1/workflows/three_step/runs".into(),
            j("[]"),
            json_ct,
            422,
            "validation",
        ),
        (
            Method::POST,
            "/v1/workflows/three_step/runs?tenant=globex".into(),
            j("{\"n\": 1}"),
            json_ct,
            403,
            "forbidden",
        ),
        (
            Method::POST,
            "/v1/workflows/three_step/runs?color=red".into(),
            j("{\"n\": 1}"),
            json_ct,
            422,
            "validation",
        ),
        // Read a run.
        (
            Method::GET,
            "/v1/runs/not-a-uuid".into(),
            None,
            None,
            404,
            "not-found",
        ),
        (
            Method::GET,
            format!("/v1/runs/{}", uuid::Uuid::now_v7()),
            None,
            None,
            404,
            "not-found",
        ),
        (
            Method::GET,
            format!("/v1/runs/{id}?wait=forever"),
            None,
            None,
            422,
            "validation",
        ),
        (
            Method::GET,
            "/v1/runs/not-a-uuid/history".into(),
            None,
            None,
            404,
            "not-found",
        ),
        (
            Method::GET,
            format!("/v1/runs/{}/history", uuid::Uuid::now_v7()),
            None,
            None,
            404,
            "not-found",
        ),
        (
            Method::GET,
            "/v1/runs/nope/signals".into(),
            None,
            None,
            404,
            "not-found",
        ),
        // List runs.
        (
            Method::GET,
            "/v1/runs?status=done".into(),
            None,
            None,
            422,
            "validation",
        ),
        (
            Method::GET,
            "/v1/runs?limit=0".into(),
            None,
            None,
            422,
            "validation",
        ),
        (
            Method::GET,
            "/v1/runs?limit=lots".into(),
            None,
            None,
            422,
            "validation",
        ),
        (
            Method::GET,
            "/v1/runs?cursor=abc".into(),
            None,
            None,
            422,
            "validation",
        ),
        (
            Method::GET,
            "/v1/runs?created_after=yesterday".into(),
            None,
            None,
            422,
            "validation",
        ),
        (
            Method::GET,
            "/v1/runs?colour=red".into(),
            None,
            None,
            422,
            "validation",
        ),
        (
            Method::GET,
            "/v1/runs?tenant=globex".into(),
            None,
            None,
            403,
            "forbidden",
        ),
        // Signals.
        (
            Method::POST,
            format!("/v1/runs/{}/signals/ring", uuid::Uuid::now_v7()),
            j("{}"),
            json_ct,
            404,
            "not-found",
        ),
        (
            Method::POST,
            format!("/v1/runs/{id}/signals/knock"),
            j("{}"),
            json_ct,
            404,
            "not-found",
        ),
        (
            Method::POST,
            format!("/v1/runs/{id}/signals/ring"),
            j("{by"),
            json_ct,
            400,
            "bad-request",
        ),
        (
            Method::POST,
            format!("/v1/runs/{id}/signals/ring"),
            big.clone(),
            json_ct,
            413,
            "payload-too-large",
        ),
        (
            Method::POST,
            format!("/v1/runs/{id}/signals/ring"),
            j("{\"by\": 7}"),
            json_ct,
            422,
            "validation",
        ),
        (
            Method::POST,
            format!("/v1/runs/{id}/signals/ring"),
            j("{}"),
            json_ct,
            422,
            "validation",
        ),
        // Operator actions.
        (
            Method::POST,
            "/v1/runs/nope/cancel".into(),
            None,
            None,
            404,
            "not-found",
        ),
        (
            Method::POST,
            format!("/v1/runs/{id}/cancel"),
            j("{\"reason\": 5}"),
            json_ct,
            422,
            "validation",
        ),
        (
            Method::POST,
            format!("/v1/runs/{id}/cancel"),
            j("{\"why\": \"x\"}"),
            json_ct,
            422,
            "validation",
        ),
        (
            Method::POST,
            format!("/v1/runs/{id}/cancel"),
            j("not json"),
            json_ct,
            400,
            "bad-request",
        ),
        (
            Method::POST,
            format!("/v1/runs/{id}/terminate"),
            big.clone(),
            json_ct,
            413,
            "payload-too-large",
        ),
        (
            Method::POST,
            format!("/v1/runs/{id}/retry"),
            None,
            None,
            409,
            "conflict",
        ),
        (
            Method::POST,
            format!("/v1/runs/{id}/skip-compensation"),
            None,
            None,
            409,
            "conflict",
        ),
        (
            Method::POST,
            "/v1/runs/nope/retry".into(),
            None,
            None,
            404,
            "not-found",
        ),
        (
            Method::POST,
            "/v1/runs/nope/skip-compensation".into(),
            None,
            None,
            404,
            "not-found",
        ),
        // Bulk.
        (
            Method::POST,
            "/v1/runs/cancel".into(),
            j("{\"dry_run\": true}"),
            json_ct,
            422,
            "validation",
        ),
        (
            Method::POST,
            "/v1/runs/cancel".into(),
            j("{\"filter\": {\"status\": \"done\"}}"),
            json_ct,
            422,
            "validation",
        ),
        (
            Method::POST,
            "/v1/runs/cancel".into(),
            j("{\"filter\": {\"created_after\": \"soon\"}}"),
            json_ct,
            422,
            "validation",
        ),
        (
            Method::POST,
            "/v1/runs/retry".into(),
            j("[1"),
            json_ct,
            400,
            "bad-request",
        ),
        (
            Method::POST,
            "/v1/runs/retry".into(),
            big.clone(),
            json_ct,
            413,
            "payload-too-large",
        ),
        // Workflows.
        (
            Method::GET,
            "/v1/workflows/nope".into(),
            None,
            None,
            404,
            "not-found",
        ),
        // Keys.
        (
            Method::POST,
            "/v1/keys".into(),
            j("{\"scopes\": []}"),
            json_ct,
            422,
            "validation",
        ),
        (
            Method::POST,
            "/v1/keys".into(),
            j("{\"scopes\": [\"root\"]}"),
            json_ct,
            422,
            "validation",
        ),
        (
            Method::POST,
            "/v1/keys".into(),
            j("{}"),
            json_ct,
            422,
            "validation",
        ),
        (
            Method::POST,
            "/v1/keys".into(),
            j("{\"scopes\": [\"reader\"], \"owner_email\": \"not-an-email\"}"),
            json_ct,
            422,
            "validation",
        ),
        (
            Method::POST,
            "/v1/keys".into(),
            j("{\"scopes\": [\"reader\"], \"expires_at\": \"2001-01-01T00:00:00Z\"}"),
            json_ct,
            422,
            "validation",
        ),
        (
            Method::POST,
            "/v1/keys".into(),
            j("{\"scopes\": [\"reader\"], \"expires_at\": \"next week\"}"),
            json_ct,
            422,
            "validation",
        ),
        (
            Method::POST,
            "/v1/keys".into(),
            j("{\"scopes\": [\"admin\"]}"),
            json_ct,
            403,
            "forbidden",
        ),
        (
            Method::POST,
            "/v1/keys".into(),
            j("{\"scopes\": [\"reader\"], \"tenant\": \"globex\"}"),
            json_ct,
            403,
            "forbidden",
        ),
        (
            Method::POST,
            "/v1/keys".into(),
            j("{\"scopes\": [\"reader\"], \"name\": \"\"}"),
            json_ct,
            422,
            "validation",
        ),
        (
            Method::POST,
            "/v1/keys".into(),
            j("{\"scopes\""),
            json_ct,
            400,
            "bad-request",
        ),
        (
            Method::POST,
            "/v1/keys".into(),
            big.clone(),
            json_ct,
            413,
            "payload-too-large",
        ),
        (
            Method::GET,
            "/v1/keys/nope".into(),
            None,
            None,
            404,
            "not-found",
        ),
        (
            Method::GET,
            format!("/v1/keys/{}", uuid::Uuid::now_v7()),
            None,
            None,
            404,
            "not-found",
        ),
        (
            Method::DELETE,
            "/v1/keys/nope".into(),
            None,
            None,
            404,
            "not-found",
        ),
        // Audit.
        (
            Method::GET,
            "/v1/audit?limit=0".into(),
            None,
            None,
            422,
            "validation",
        ),
        (
            Method::GET,
            "/v1/audit?before=x".into(),
            None,
            None,
            422,
            "validation",
        ),
        // No such route.
        (
            Method::GET,
            "/v1/nothing".into(),
            None,
            None,
            404,
            "not-found",
        ),
    ];
    let _ = key_id;
    for (method, path, body, content_type, status, kind) in cases {
        let (got, answer) = api
            .raw(
                method.clone(),
                &path,
                &op,
                content_type,
                body.unwrap_or_default(),
                &[],
            )
            .await;
        assert_eq!(got.as_u16(), status, "{method} {path}: {answer}");
        assert_eq!(problem_type(&answer), kind, "{method} {path}: {answer}");
        assert!(
            answer["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{method} {path}: {answer}"
        );
    }
    // Without a key, or with a malformed one, everything under /v1 is 401.
    for route in waymark_api::routes::table() {
        let path = route
            .path
            .replace("{workflow}", "three_step")
            .replace("{id}", &id)
            .replace("{signal}", "ring");
        let response = api
            .http
            .request(route.method.clone(), format!("{}{path}", api.base))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{} {path}",
            route.method
        );
        let response = api
            .http
            .request(route.method.clone(), format!("{}{path}", api.base))
            .header("authorization", "Bearer wmk_nothing")
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{} {path}",
            route.method
        );
    }
    api.stop().await;
}

async fn tenants_never_see_each_others_runs_keys_or_audit(db: TestDb) {
    let api = Api::start(db).await;
    let (_, a) = api.key("acme", &["operator"]).await;
    let (b_key_id, b) = api.key("globex", &["operator"]).await;
    let b_run = api.start_run(&b, "doorbell", json!({})).await;
    let b_id = b_run["id"].as_str().unwrap();
    for (method, path, body) in [
        (Method::GET, format!("/v1/runs/{b_id}"), None),
        (Method::GET, format!("/v1/runs/{b_id}/history"), None),
        (Method::GET, format!("/v1/runs/{b_id}/signals"), None),
        (
            Method::POST,
            format!("/v1/runs/{b_id}/signals/ring"),
            Some(json!({"by": "intruder"})),
        ),
        (Method::POST, format!("/v1/runs/{b_id}/cancel"), None),
        (Method::POST, format!("/v1/runs/{b_id}/terminate"), None),
        (Method::POST, format!("/v1/runs/{b_id}/retry"), None),
        (
            Method::POST,
            format!("/v1/runs/{b_id}/skip-compensation"),
            None,
        ),
        (Method::GET, format!("/v1/keys/{b_key_id}"), None),
        (Method::DELETE, format!("/v1/keys/{b_key_id}"), None),
    ] {
        let (status, body) = api.call(method.clone(), &path, Some(&a), body).await;
        assert_eq!(
            (status, problem_type(&body).as_str()),
            (StatusCode::NOT_FOUND, "not-found"),
            "{method} {path}"
        );
    }
    // Lists and bulk actions only ever cover the caller's tenant.
    let (_, runs) = api.call(Method::GET, "/v1/runs", Some(&a), None).await;
    assert!(runs["runs"].as_array().unwrap().is_empty(), "{runs}");
    let (_, keys) = api.call(Method::GET, "/v1/keys", Some(&a), None).await;
    assert!(keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["tenant"] == "acme"));
    let (_, dry) = api
        .call(
            Method::POST,
            "/v1/runs/cancel",
            Some(&a),
            Some(json!({"filter": {}, "dry_run": true})),
        )
        .await;
    assert_eq!(dry["matched"], 0);
    let (_, audit) = api.call(Method::GET, "/v1/audit", Some(&a), None).await;
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["tenant"] == "acme"),
        "{audit}"
    );
    // B's run is untouched, and B still sees it.
    let (status, seen) = api
        .call(Method::GET, &format!("/v1/runs/{b_id}"), Some(&b), None)
        .await;
    assert_eq!(
        (status, seen["status"].as_str()),
        (StatusCode::OK, Some("waiting"))
    );
    let (_, signals) = api
        .call(
            Method::GET,
            &format!("/v1/runs/{b_id}/signals"),
            Some(&b),
            None,
        )
        .await;
    assert!(signals["signals"].as_array().unwrap().is_empty());
    // The admin sees across tenants and acts for one with ?tenant=.
    let (status, _) = api
        .call(
            Method::GET,
            &format!("/v1/runs/{b_id}"),
            Some(&api.admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, started) = api
        .call(
            Method::POST,
            "/v1/workflows/three_step/runs?tenant=globex",
            Some(&api.admin),
            Some(json!({"n": 1})),
        )
        .await;
    assert_eq!(
        (status, started["tenant"].as_str()),
        (StatusCode::CREATED, Some("globex"))
    );
    api.stop().await;
}

async fn scopes_limit_what_a_key_may_do(db: TestDb) {
    let api = Api::start(db).await;
    let (_, op) = api.key("acme", &["operator"]).await;
    let (_, reader) = api.key("acme", &["reader"]).await;
    let run = api.start_run(&op, "doorbell", json!({})).await;
    let id = run["id"].as_str().unwrap();
    // A reader reads…
    for path in [
        format!("/v1/runs/{id}"),
        "/v1/runs".into(),
        format!("/v1/runs/{id}/history"),
        "/v1/workflows".into(),
        "/v1/whoami".into(),
    ] {
        let (status, _) = api.call(Method::GET, &path, Some(&reader), None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    // …and may change nothing, even things that do not exist (403 comes before 404).
    for (method, path) in [
        (Method::POST, "/v1/workflows/three_step/runs".to_owned()),
        (Method::POST, "/v1/workflows/nope/runs".to_owned()),
        (Method::POST, format!("/v1/runs/{id}/signals/ring")),
        (Method::POST, format!("/v1/runs/{id}/cancel")),
        (
            Method::POST,
            format!("/v1/runs/{}/cancel", uuid::Uuid::now_v7()),
        ),
        (Method::POST, format!("/v1/runs/{id}/terminate")),
        (Method::POST, format!("/v1/runs/{id}/retry")),
        (Method::POST, format!("/v1/runs/{id}/skip-compensation")),
        (Method::POST, "/v1/runs/cancel".to_owned()),
        (Method::POST, "/v1/runs/retry".to_owned()),
        (Method::POST, "/v1/keys".to_owned()),
        (Method::GET, "/v1/keys".to_owned()),
        (Method::DELETE, format!("/v1/keys/{}", uuid::Uuid::now_v7())),
        (Method::GET, "/v1/audit".to_owned()),
        (Method::GET, "/v1/workers".to_owned()),
    ] {
        let (status, body) = api
            .call(method.clone(), &path, Some(&reader), Some(json!({})))
            .await;
        assert_eq!(
            (status, problem_type(&body).as_str()),
            (StatusCode::FORBIDDEN, "forbidden"),
            "{method} {path}"
        );
    }
    // An operator cannot mint an admin key or revoke one.
    let (status, _) = api
        .call(
            Method::POST,
            "/v1/keys",
            Some(&op),
            Some(json!({"scopes": ["admin"]})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    api.stop().await;
}

async fn revoked_and_expired_keys_are_refused(db: TestDb) {
    let api = Api::start(db).await;
    let expires = chrono::Utc::now() + chrono::Duration::seconds(1);
    let (status, short) = api
        .call(
            Method::POST,
            "/v1/keys",
            Some(&api.admin),
            Some(
                json!({"tenant": "acme", "scopes": ["reader"], "expires_at": expires.to_rfc3339()}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{short}");
    let secret = short["secret"].as_str().unwrap().to_owned();
    let (status, _) = api
        .call(Method::GET, "/v1/whoami", Some(&secret), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let http = api.http.clone();
    let url = format!("{}/v1/whoami", api.base);
    wait_until("the key expires", Duration::from_secs(10), || {
        let (http, url, secret) = (http.clone(), url.clone(), secret.clone());
        async move {
            http.get(url)
                .bearer_auth(secret)
                .send()
                .await
                .unwrap()
                .status()
                == StatusCode::UNAUTHORIZED
        }
    })
    .await;
    let (id, revoked) = api.key("acme", &["operator"]).await;
    api.call(
        Method::DELETE,
        &format!("/v1/keys/{id}"),
        Some(&api.admin),
        None,
    )
    .await;
    let (status, body) = api
        .call(Method::GET, "/v1/runs", Some(&revoked), None)
        .await;
    assert_eq!(
        (status, problem_type(&body).as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    // A right prefix with a wrong secret is refused the same way.
    let forged = format!("{}_{}", &revoked[..16], "A".repeat(43));
    let (status, _) = api
        .call(Method::GET, "/v1/whoami", Some(&forged), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    api.stop().await;
}

async fn openapi_documents_every_route_and_every_documented_route_exists(db: TestDb) {
    let api = Api::start(db).await;
    let response = api
        .http
        .get(format!("{}/openapi.json", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let doc: Value = response.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for route in waymark_api::routes::table() {
        let operation = &doc["paths"][route.path][route.method.as_str().to_ascii_lowercase()];
        assert!(
            operation.is_object(),
            "{} {} is not documented",
            route.method,
            route.path
        );
        assert!(operation["responses"]["401"].is_object());
        // And it is routed: with an admin key it never answers the no-such-route 404.
        let path = route
            .path
            .replace("{workflow}", "three_step")
            .replace("{id}", &uuid::Uuid::now_v7().to_string())
            .replace("{signal}", "ring");
        let (_, body) = api
            .call(
                route.method.clone(),
                &path,
                Some(&api.admin),
                Some(json!({})),
            )
            .await;
        assert_ne!(body["detail"], "no such route", "{} {path}", route.method);
    }
    for path in ["/healthz", "/readyz", "/openapi.json"] {
        assert!(doc["paths"][path]["get"].is_object(), "{path}");
    }
    api.stop().await;
}

async fn listing_filters_and_pages_with_a_cursor(db: TestDb) {
    let api = Api::start(db).await;
    let (_, op) = api.key("acme", &["operator"]).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let run = api.start_run(&op, "three_step", json!({"n": n})).await;
        ids.push(run["id"].as_str().unwrap().to_owned());
    }
    let tagged = api
        .call(
            Method::POST,
            "/v1/workflows/doorbell/runs?tag=vip",
            Some(&op),
            Some(json!({})),
        )
        .await
        .1;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/runs?workflow=three_step&limit=2&cursor={c}"),
            None => "/v1/runs?workflow=three_step&limit=2".to_owned(),
        };
        let (status, page) = api.call(Method::GET, &path, Some(&op), None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for run in page["runs"].as_array().unwrap() {
            seen.push(run["id"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids, "newest first, every run once");
    let (_, by_tag) = api
        .call(Method::GET, "/v1/runs?tag=vip", Some(&op), None)
        .await;
    let found: Vec<&str> = by_tag["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(found, vec![tagged["id"].as_str().unwrap()]);
    let (_, waiting) = api
        .call(
            Method::GET,
            "/v1/runs?status=waiting&workflow=doorbell",
            Some(&op),
            None,
        )
        .await;
    let store = api.engine.store.clone();
    let tagged_id: uuid::Uuid = tagged["id"].as_str().unwrap().parse().unwrap();
    let _ = waiting;
    wait_until("the doorbell run waits", Duration::from_secs(20), || {
        let store = store.clone();
        async move {
            store
                .run_get(&waymark_engine::TenantScope::All, tagged_id)
                .await
                .unwrap()
                .unwrap()
                .status
                == waymark_engine::RunStatus::Waiting
        }
    })
    .await;
    let (_, waiting) = api
        .call(Method::GET, "/v1/runs?status=waiting", Some(&op), None)
        .await;
    assert_eq!(waiting["runs"].as_array().unwrap().len(), 1);
    assert_eq!(waiting["runs"][0]["waiting"]["signals"], json!(["ring"]));
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (_, none) = api
        .call(
            Method::GET,
            &format!("/v1/runs?created_after={}", urlencode(&future)),
            Some(&op),
            None,
        )
        .await;
    assert!(none["runs"].as_array().unwrap().is_empty());
    api.stop().await;
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
