//! Keys through the API: creation, reveal, revocation, expiry, scopes, tenant isolation
//! and rate limits.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use waymark_engine::keys::{IssueKey, Scope};

use crate::support::app::{problem_type, TestApp};
use crate::support::{on_both_backends, wait_until, TestDb};

on_both_backends!(
    keys_are_created_listed_revoked_and_authenticate,
    tenants_never_see_each_others_runs_keys_or_audit,
    scopes_limit_what_a_key_may_do,
    revoked_and_expired_keys_are_refused,
    requests_over_a_keys_rate_limit_answer_429,
    a_sealed_key_is_revealed_once_to_its_tenant,
    a_reveal_with_another_master_key_keeps_the_secret_for_the_right_one,
    a_suspended_tenants_keys_stop_working_until_restored,
);

async fn a_sealed_key_is_revealed_once_to_its_tenant(db: TestDb) {
    let api = TestApp::on(db).spawn().await;
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
    let (_, listed) = api.get(&format!("/v1/keys/{}", sealed.id), &op).await;
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
    let (status, who) = api.get("/v1/whoami", &secret).await;
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
    let (_, after) = api.get(&format!("/v1/keys/{}", sealed.id), &op).await;
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
    let (_, audit) = api.get("/v1/audit", &op).await;
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
    let api = TestApp::on(db)
        .with_api(waymark_api::ApiConfig {
            sealer: ours.clone(),
            ..waymark_api::ApiConfig::default()
        })
        .spawn()
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
    let (_, listed) = api.get(&format!("/v1/keys/{}", sealed.id), &op).await;
    assert_eq!(
        (
            listed["awaiting_reveal"].clone(),
            listed["revealed_at"].clone()
        ),
        (json!(true), Value::Null),
        "the refused reveals kept the secret"
    );

    let other = api
        .beside()
        .with_api(waymark_api::ApiConfig {
            sealer: theirs.clone(),
            ..waymark_api::ApiConfig::default()
        })
        .spawn()
        .await;
    let (status, body) = other.call(Method::POST, &path, Some(&op), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let secret = body["secret"].as_str().unwrap().to_owned();
    let (status, who) = api.get("/v1/whoami", &secret).await;
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
    let api = TestApp::on(db).spawn().await;
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
    let (status, _) = api.get("/v1/whoami", &op).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = api.get("/v1/whoami", &other).await;
    assert_eq!(status, StatusCode::OK, "other tenants are unaffected");
    api.engine.store.keys_suspend("acme", None).await.unwrap();
    let (status, _) = api.get("/v1/whoami", &op).await;
    assert_eq!(status, StatusCode::OK);
    api.stop().await;
}

async fn requests_over_a_keys_rate_limit_answer_429(db: TestDb) {
    let (clock, _) = crate::support::manual_clock();
    let api = TestApp::on(db)
        .with_api(waymark_api::ApiConfig {
            rate_limit: 3,
            ..Default::default()
        })
        .with_clock(&clock)
        .spawn()
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
    let (status, _) = api.get("/v1/whoami", &other).await;
    assert_eq!(status, StatusCode::OK);
    // The next second, the key may call again.
    clock.advance(Duration::from_secs(1));
    let (status, _) = api.get("/v1/whoami", &reader).await;
    assert_eq!(status, StatusCode::OK);
    api.stop().await;
}

async fn keys_are_created_listed_revoked_and_authenticate(db: TestDb) {
    let api = TestApp::on(db).spawn().await;
    let (op_id, op) = api.key("acme", &["operator"]).await;
    let (status, whoami) = api.get("/v1/whoami", &op).await;
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
    let (status, reader) = api
        .post(
            "/v1/keys",
            &op,
            json!({"scopes": ["reader"], "name": "dashboard", "owner_email": "ops@example.com"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{reader}");
    assert_eq!(reader["tenant"], "acme");
    let reader_secret = reader["secret"].as_str().unwrap().to_owned();
    let reader_id = reader["id"].as_str().unwrap().to_owned();
    let (status, _) = api.get("/v1/whoami", &reader_secret).await;
    assert_eq!(status, StatusCode::OK);
    let (_, list) = api.get("/v1/keys", &op).await;
    let listed = list["keys"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed
            .iter()
            .all(|k| k.get("secret").is_none() && k.get("secret_hash").is_none()),
        "{list}"
    );
    let (status, one) = api.get(&format!("/v1/keys/{reader_id}"), &op).await;
    assert_eq!(
        (status, one["name"].as_str()),
        (StatusCode::OK, Some("dashboard"))
    );
    let (status, revoked) = api.delete(&format!("/v1/keys/{reader_id}"), &op).await;
    assert_eq!(
        (status, revoked["active"].clone()),
        (StatusCode::OK, json!(false))
    );
    let (status, body) = api.get("/v1/whoami", &reader_secret).await;
    assert_eq!(
        (status, problem_type(&body).as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (_, audit) = api.get("/v1/audit", &op).await;
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

async fn tenants_never_see_each_others_runs_keys_or_audit(db: TestDb) {
    let api = TestApp::on(db).spawn().await;
    let (_, a) = api.key("acme", &["operator"]).await;
    let (b_key_id, b) = api.key("globex", &["operator"]).await;
    let b_run = api.start_run(&b, "doorbell", json!({})).await;
    let b_id = b_run["id"].as_str().unwrap();
    // Parked first, so that "untouched" below means A's attempts changed nothing.
    crate::support::wait_for_run(api.store(), b_id.parse().unwrap(), "waiting", |r| {
        r.status == waymark_engine::RunStatus::Waiting
    })
    .await;
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
    let (_, runs) = api.get("/v1/runs", &a).await;
    assert!(runs["runs"].as_array().unwrap().is_empty(), "{runs}");
    let (_, keys) = api.get("/v1/keys", &a).await;
    assert!(keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["tenant"] == "acme"));
    let (_, dry) = api
        .post(
            "/v1/runs/cancel",
            &a,
            json!({"filter": {}, "dry_run": true}),
        )
        .await;
    assert_eq!(dry["matched"], 0);
    let (_, audit) = api.get("/v1/audit", &a).await;
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["tenant"] == "acme"),
        "{audit}"
    );
    // B's run is untouched, and B still sees it.
    let (status, seen) = api.get(&format!("/v1/runs/{b_id}"), &b).await;
    assert_eq!(
        (status, seen["status"].as_str()),
        (StatusCode::OK, Some("waiting"))
    );
    let (_, signals) = api.get(&format!("/v1/runs/{b_id}/signals"), &b).await;
    assert!(signals["signals"].as_array().unwrap().is_empty());
    // The admin sees across tenants and acts for one with ?tenant=.
    let (status, _) = api.get(&format!("/v1/runs/{b_id}"), &api.admin).await;
    assert_eq!(status, StatusCode::OK);
    let (status, started) = api
        .post(
            "/v1/workflows/three_step/runs?tenant=globex",
            &api.admin,
            json!({"n": 1}),
        )
        .await;
    assert_eq!(
        (status, started["tenant"].as_str()),
        (StatusCode::CREATED, Some("globex"))
    );
    api.stop().await;
}

async fn scopes_limit_what_a_key_may_do(db: TestDb) {
    let api = TestApp::on(db).spawn().await;
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
        let (status, _) = api.get(&path, &reader).await;
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
        .post("/v1/keys", &op, json!({"scopes": ["admin"]}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    api.stop().await;
}

async fn revoked_and_expired_keys_are_refused(db: TestDb) {
    let api = TestApp::on(db).spawn().await;
    let expires = chrono::Utc::now() + chrono::Duration::seconds(1);
    let (status, short) = api
        .post(
            "/v1/keys",
            &api.admin,
            json!({"tenant": "acme", "scopes": ["reader"], "expires_at": expires.to_rfc3339()}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{short}");
    let secret = short["secret"].as_str().unwrap().to_owned();
    let (status, _) = api.get("/v1/whoami", &secret).await;
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
    api.delete(&format!("/v1/keys/{id}"), &api.admin).await;
    let (status, body) = api.get("/v1/runs", &revoked).await;
    assert_eq!(
        (status, problem_type(&body).as_str()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    // A right prefix with a wrong secret is refused the same way.
    let forged = format!("{}_{}", &revoked[..16], "A".repeat(43));
    let (status, _) = api.get("/v1/whoami", &forged).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    api.stop().await;
}
