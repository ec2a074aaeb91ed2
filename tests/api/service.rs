//! What the service says about itself: workflows and workers, metrics, diagrams,
//! readiness, OpenAPI and filtered listings.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::app::{problem_type, TestApp};
use crate::support::{on_both_backends, wait_until, TestDb};

on_both_backends!(
    openapi_documents_every_route_and_every_documented_route_exists,
    listing_filters_and_pages_with_a_cursor,
    metrics_count_runs_and_transitions_without_tenant_labels,
    a_workflow_diagram_is_served_as_svg,
    an_unreachable_database_answers_503,
    workflows_and_workers_are_listed_with_their_machines,
);

async fn workflows_and_workers_are_listed_with_their_machines(db: TestDb) {
    let api = TestApp::on(db).spawn().await;
    let (_, op) = api.key("acme", &["operator"]).await;
    let (status, list) = api.get("/v1/workflows", &op).await;
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
    let (status, one) = api.get("/v1/workflows/doorbell", &op).await;
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
    let (status, workers) = api.get("/v1/workers", &op).await;
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
    let (_, workers) = api.get("/v1/workers", &api.admin).await;
    let worker = &workers["workers"][0];
    assert!(worker["pid"].as_i64().unwrap() > 0, "{worker}");
    assert!(worker["host"].is_string(), "{worker}");
    api.stop().await;
}

async fn metrics_count_runs_and_transitions_without_tenant_labels(db: TestDb) {
    let api = TestApp::on(db)
        .with_api(waymark_api::ApiConfig {
            metrics_token: Some("scrape-me".into()),
            ..Default::default()
        })
        .spawn()
        .await;
    let (_, op) = api.key("acme", &["operator"]).await;
    let run = api.start_run(&op, "three_step", json!({"n": 1})).await;
    api.get(
        &format!("/v1/runs/{}?wait=20s", run["id"].as_str().unwrap()),
        &op,
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
    let api = TestApp::on(db).spawn().await;
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
    let (status, _) = api.get("/v1/workflows/nope/diagram.svg", &reader).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    api.stop().await;
}

async fn an_unreachable_database_answers_503(db: TestDb) {
    let api = TestApp::on(db).spawn().await;
    let (_, op) = api.key("acme", &["operator"]).await;
    match &api.engine.store {
        waymark_engine::Store::Postgres(pg) => pg.pool().close().await,
        waymark_engine::Store::Sqlite(lite) => lite.pool().close().await,
    }
    let (status, body) = api.get("/v1/runs", &op).await;
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

async fn openapi_documents_every_route_and_every_documented_route_exists(db: TestDb) {
    let api = TestApp::on(db).spawn().await;
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
    let api = TestApp::on(db).spawn().await;
    let (_, op) = api.key("acme", &["operator"]).await;
    let mut ids = Vec::new();
    for n in 0..5 {
        let run = api.start_run(&op, "three_step", json!({"n": n})).await;
        ids.push(run["id"].as_str().unwrap().to_owned());
    }
    let tagged = api
        .post("/v1/workflows/doorbell/runs?tag=vip", &op, json!({}))
        .await
        .1;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/runs?workflow=three_step&limit=2&cursor={c}"),
            None => "/v1/runs?workflow=three_step&limit=2".to_owned(),
        };
        let (status, page) = api.get(&path, &op).await;
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
    let (_, by_tag) = api.get("/v1/runs?tag=vip", &op).await;
    let found: Vec<&str> = by_tag["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(found, vec![tagged["id"].as_str().unwrap()]);
    let (_, waiting) = api
        .get("/v1/runs?status=waiting&workflow=doorbell", &op)
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
    let (_, waiting) = api.get("/v1/runs?status=waiting", &op).await;
    assert_eq!(waiting["runs"].as_array().unwrap().len(), 1);
    assert_eq!(waiting["runs"][0]["waiting"]["signals"], json!(["ring"]));
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (_, none) = api
        .get(
            &format!("/v1/runs?created_after={}", urlencode(&future)),
            &op,
        )
        .await;
    assert!(none["runs"].as_array().unwrap().is_empty());
    api.stop().await;
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
