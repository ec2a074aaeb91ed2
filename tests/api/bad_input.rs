//! Every route refuses bad input with the documented status and problem type, and
//! every `/v1` route refuses a request without a valid key.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::app::{problem_type, TestApp};
use crate::support::{on_both_backends, TestDb};

on_both_backends!(
    bad_run_starts_reads_and_listings_are_refused_with_the_documented_status_and_type,
    bad_signals_operator_and_bulk_actions_are_refused_with_the_documented_status_and_type,
    bad_workflow_key_and_audit_requests_are_refused_with_the_documented_status_and_type,
    every_v1_route_refuses_a_request_without_a_valid_key,
);

/// (method, path, body, content type, expected status, expected problem type)
type Case = (
    Method,
    String,
    Option<Vec<u8>>,
    Option<&'static str>,
    u16,
    &'static str,
);

/// An API with a small body limit, an operator key of `acme` and a waiting run of
/// it (and a reader key beside it), for the tables of bad requests below: (app,
/// operator key, run id).
async fn bad_input_app(db: TestDb) -> (TestApp, String, String) {
    let api = TestApp::on(db)
        .with_api(waymark_api::ApiConfig {
            max_body: 4096,
            ..Default::default()
        })
        .spawn()
        .await;
    let (_, op) = api.key("acme", &["operator"]).await;
    let run = api.start_run(&op, "doorbell", json!({})).await;
    let id = run["id"].as_str().unwrap().to_owned();
    api.key("acme", &["reader"]).await;
    (api, op, id)
}

/// Sends each case with `key` and checks its status, problem type and detail.
async fn assert_refused(api: &TestApp, key: &str, cases: Vec<Case>) {
    for (method, path, body, content_type, status, kind) in cases {
        let (got, answer) = api
            .raw(
                method.clone(),
                &path,
                key,
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
}

async fn bad_run_starts_reads_and_listings_are_refused_with_the_documented_status_and_type(
    db: TestDb,
) {
    let (api, op, id) = bad_input_app(db).await;
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
    ];
    assert_refused(&api, &op, cases).await;
    api.stop().await;
}

async fn bad_signals_operator_and_bulk_actions_are_refused_with_the_documented_status_and_type(
    db: TestDb,
) {
    let (api, op, id) = bad_input_app(db).await;
    let json_ct = Some("application/json");
    let big = Some(format!("{{\"pad\": \"{}\"}}", "x".repeat(5000)).into_bytes());
    let j = |s: &str| Some(s.as_bytes().to_vec());
    let cases: Vec<Case> = vec![
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
    ];
    assert_refused(&api, &op, cases).await;
    api.stop().await;
}

async fn bad_workflow_key_and_audit_requests_are_refused_with_the_documented_status_and_type(
    db: TestDb,
) {
    let (api, op, _) = bad_input_app(db).await;
    let json_ct = Some("application/json");
    let big = Some(format!("{{\"pad\": \"{}\"}}", "x".repeat(5000)).into_bytes());
    let j = |s: &str| Some(s.as_bytes().to_vec());
    let cases: Vec<Case> = vec![
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
    assert_refused(&api, &op, cases).await;
    api.stop().await;
}

async fn every_v1_route_refuses_a_request_without_a_valid_key(db: TestDb) {
    let (api, _, id) = bad_input_app(db).await;
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
