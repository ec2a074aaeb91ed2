//! Provisioning a tenant: every resource made, its admin key confined to it, bad
//! requests refused before anything is made, a taken slug refused.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::Connection;
use waymark_engine::keys::{IssueKey, Scope};
use waymark_engine::{RunStatus, Store, TenantScope};
use waymark_workflows::tenants::names::{
    role_name, schema_name, sqlite_file, storage_manifest, storage_prefix,
};
use waymark_workflows::tenants::{record, TenantStatus};

use crate::support::app::test_s3;
use crate::support::{on_both_backends, wait_until, Backend, TestDb};

use super::*;

on_both_backends!(
    provisioning_creates_every_resource_and_activates_the_tenant,
    the_admin_key_works_only_inside_its_tenant,
    invalid_requests_are_refused_before_anything_is_made,
    a_taken_slug_is_refused_in_any_status_and_races_have_one_winner,
);

async fn provisioning_creates_every_resource_and_activates_the_tenant(db: TestDb) {
    let backend = db.backend;
    let app = Install::start(db).await;
    let email = unique_email("admin");
    let run = app.provision("acme-eu", &email).await;
    let done = app.wait_run(run, RunStatus::Completed).await;
    let tenant = app.wait_tenant("acme-eu", TenantStatus::Active).await;
    assert_eq!(tenant.run_id, Some(run));
    assert_eq!(
        done.tenant, "system",
        "the run is the system's, not the tenant's"
    );
    let key_id = tenant.admin_key_id.unwrap();
    assert_eq!(done.output.unwrap()["admin_key_id"], json!(key_id));

    // GET shows the status and every resource with the run that made it.
    let (status, body) = app
        .admin_call(Method::GET, "/v1/tenants/acme-eu", None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "active");
    assert_eq!(body["quota"]["storage_bytes"], json!(100u64 << 30));
    let mut kinds: Vec<&str> = body["resources"]
        .as_array()
        .unwrap()
        .iter()
        .inspect(|r| assert_eq!(r["run_id"], json!(run), "{r}"))
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    kinds.sort();
    let prefix = storage_prefix(&app.installation, "acme-eu");
    match backend {
        Backend::Postgres => {
            assert_eq!(
                kinds,
                [
                    "api_key",
                    "database_role",
                    "database_schema",
                    "storage_prefix"
                ]
            );
            let role = role_name(&app.installation, "acme-eu");
            assert_eq!(
                app.schema_owner("acme-eu").await.as_deref(),
                Some(role.as_str())
            );
            assert_eq!(schema_name("acme-eu"), "tenant_acme_eu");
            assert!(
                !app.pg_scalar_bool("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1", &role)
                    .await,
                "NOLOGIN"
            );
            let Store::Postgres(pg) = app.store() else {
                unreachable!()
            };
            let tables: Vec<(String, String)> = sqlx::query_as(
                "SELECT tablename::text, tableowner::text FROM pg_tables WHERE schemaname = $1 ORDER BY 1",
            )
            .bind("tenant_acme_eu")
            .fetch_all(pg.pool())
            .await
            .unwrap();
            let names: Vec<&str> = tables.iter().map(|(t, _)| t.as_str()).collect();
            assert_eq!(
                names,
                [
                    "members",
                    "plan",
                    "projects",
                    "usage",
                    "waymark_tenant_migrations"
                ]
            );
            assert!(tables.iter().all(|(_, owner)| *owner == role), "{tables:?}");
            let (plan, storage): (String, i64) =
                sqlx::query_as("SELECT name, storage_bytes FROM \"tenant_acme_eu\".plan")
                    .fetch_one(pg.pool())
                    .await
                    .unwrap();
            assert_eq!((plan.as_str(), storage), ("pro", 100i64 << 30));
            // Granted only its schema: nothing on Waymark's own tables, no memberships.
            assert!(
                !app.pg_scalar_bool(
                    "SELECT has_table_privilege($1, 'public.waymark_runs', 'SELECT')",
                    &role
                )
                .await
            );
            assert!(
                !app.pg_scalar_bool("SELECT EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = $1)", &role)
                    .await
            );
        }
        Backend::Sqlite => {
            assert_eq!(kinds, ["api_key", "database_file", "storage_prefix"]);
            let file = sqlite_file(&app.data_dir, "acme-eu");
            let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", file.display()))
                .await
                .unwrap();
            let (plan, storage): (String, i64) =
                sqlx::query_as("SELECT name, storage_bytes FROM plan")
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
            assert_eq!((plan.as_str(), storage), ("pro", 100i64 << 30));
            let admins: i64 = sqlx::query_scalar("SELECT count(*) FROM members WHERE email = ?1")
                .bind(&email)
                .fetch_one(&mut conn)
                .await
                .unwrap();
            assert_eq!(admins, 1);
        }
    }

    // The storage space holds its manifest with the quota.
    let manifest: Value = serde_json::from_slice(
        &test_s3()
            .await
            .get_bytes(&storage_manifest(&app.installation, "acme-eu"), None)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["quota"]["storage_bytes"], json!(100u64 << 30));
    assert_eq!(manifest["quota"]["runs"], json!(100000));
    assert_eq!(app.stored_objects(&prefix).await.len(), 1);

    // One key, of the tenant, operator only, sealed until revealed once.
    let keys = app
        .store()
        .key_list(&TenantScope::Tenant("acme-eu".into()))
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].id, key_id);
    assert_eq!(keys[0].scopes, vec![Scope::Operator]);
    assert!(keys[0].awaiting_reveal);

    // One welcome email, naming the key and how to reveal it, never its secret.
    wait_until(
        "the welcome email arrives",
        Duration::from_secs(10),
        || async { messages_to(&email).len() == 1 },
    )
    .await;
    let (status, revealed) = app
        .admin_call(Method::POST, &format!("/v1/keys/{key_id}/reveal"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{revealed}");
    let secret = revealed["secret"].as_str().unwrap();
    let mail = &messages_to(&email)[0];
    assert!(
        mail.contains(&key_id.to_string()) && mail.contains("/reveal"),
        "{mail}"
    );
    // The random part: everything after `wmk_<prefix>_` (it may itself contain `_`).
    let secret_part = secret.splitn(3, '_').nth(2).unwrap();
    assert!(secret_part.len() >= 32);
    assert!(!mail.contains(secret_part), "the secret is never emailed");
    let (status, _) = app
        .admin_call(Method::POST, &format!("/v1/keys/{key_id}/reveal"), None)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "revealed once only");
    app.stop().await;
}

async fn the_admin_key_works_only_inside_its_tenant(db: TestDb) {
    let app = Install::start(db).await;
    let (run_a, _, key_a) = app.active_tenant("tenant-a", &unique_email("a")).await;
    let run_b = app.provision("tenant-b", &unique_email("b")).await;
    app.wait_tenant("tenant-b", TenantStatus::Active).await;
    let key = Some(key_a.as_str());

    let (status, me) = app.call(Method::GET, "/v1/whoami", key, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["tenant"], "tenant-a");
    assert_eq!(me["scopes"], json!(["operator"]));
    // Its own record only; others look absent.
    let (_, list) = app.call(Method::GET, "/v1/tenants", key, None).await;
    let slugs: Vec<_> = list["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["slug"].clone())
        .collect();
    assert_eq!(slugs, vec![json!("tenant-a")]);
    assert_eq!(
        app.call(Method::GET, "/v1/tenants/tenant-a", key, None)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        app.call(Method::GET, "/v1/tenants/tenant-b", key, None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    // The provisioning runs are the system's.
    for run in [run_a, run_b] {
        assert_eq!(
            app.call(Method::GET, &format!("/v1/runs/{run}"), key, None)
                .await
                .0,
            StatusCode::NOT_FOUND
        );
    }
    // No admin powers.
    let body =
        json!({"slug": "tenant-c", "name": "C", "plan": "free", "admin_email": "c@example.com"});
    assert_eq!(
        app.call(Method::POST, "/v1/tenants", key, Some(body))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.call(Method::POST, "/v1/tenants/tenant-b/deprovision", key, None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.call(
            Method::POST,
            "/v1/workflows/three_step/runs?tenant=tenant-b",
            key,
            Some(json!({"n": 1}))
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    // Runs it starts are its own, and it sees only those.
    let (status, started) = app
        .call(
            Method::POST,
            "/v1/workflows/three_step/runs",
            key,
            Some(json!({"n": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    assert_eq!(started["tenant"], "tenant-a");
    let (_, runs) = app.call(Method::GET, "/v1/runs", key, None).await;
    assert!(
        runs["runs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["tenant"] == "tenant-a"),
        "{runs}"
    );
    let (_, keys) = app.call(Method::GET, "/v1/keys", key, None).await;
    assert!(
        keys["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["tenant"] == "tenant-a"),
        "{keys}"
    );
    app.stop().await;
}

async fn invalid_requests_are_refused_before_anything_is_made(db: TestDb) {
    let app = Install::start(db).await;
    let good = json!({"slug": "valid-slug", "name": "Valid", "plan": "free", "admin_email": "ok@example.com"});
    let with = |field: &str, value: Value| {
        let mut body = good.clone();
        body[field] = value;
        body
    };
    let mut without = good.clone();
    without.as_object_mut().unwrap().remove("plan");
    for (body, why) in [
        (with("slug", json!("ab")), "too short"),
        (with("slug", json!("Acme")), "upper case"),
        (with("slug", json!("1acme")), "starts with a digit"),
        (with("slug", json!("acme_eu")), "underscore"),
        (with("slug", json!("a".repeat(41))), "too long"),
        (with("slug", json!(7)), "not a string"),
        (with("admin_email", json!("not-an-email")), "bad email"),
        (
            with("admin_email", json!("a@b.example\r\nBcc: x@y.example")),
            "header injection",
        ),
        (with("plan", json!("platinum")), "unknown plan"),
        (with("name", json!("")), "empty name"),
        (with("extra", json!(1)), "unknown field"),
        (without, "missing plan"),
    ] {
        let (status, problem) = app
            .admin_call(Method::POST, "/v1/tenants", Some(body))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{why}: {problem}");
    }
    // Not JSON is 400; no key 401; a reader or operator key 403 — all before the body.
    let response = app
        .http
        .post(format!("{}/v1/tenants", app.base))
        .bearer_auth(&app.admin)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        app.call(Method::POST, "/v1/tenants", None, Some(good.clone()))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let (_, operator) = waymark_engine::keys::issue(
        app.store(),
        IssueKey {
            tenant: "ops".into(),
            scopes: vec![Scope::Operator],
            name: None,
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
    assert_eq!(
        app.call(
            Method::POST,
            "/v1/tenants",
            Some(operator.expose()),
            Some(json!({"nonsense": true}))
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.call(
            Method::GET,
            "/v1/tenants/nobody",
            Some(operator.expose()),
            None
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    // Nothing was reserved or started.
    assert_eq!(record::list(app.store()).await.unwrap(), vec![]);
    let runs = app
        .store()
        .runs_list(&TenantScope::All, &Default::default(), None, 10)
        .await
        .unwrap();
    assert!(runs.is_empty(), "{runs:?}");

    // Plans are configurable: after a sync, only the configured ones are accepted.
    let plans = waymark_workflows::tenants::plans::parse_plans("team:10GiB:50").unwrap();
    waymark_workflows::tenants::plans::sync(app.store(), &plans, chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(
        app.admin_call(Method::POST, "/v1/tenants", Some(good.clone()))
            .await
            .0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let (status, body) = app
        .admin_call(
            Method::POST,
            "/v1/tenants",
            Some(with("plan", json!("team"))),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(
        body["quota"],
        json!({"storage_bytes": 10u64 << 30, "runs": 50})
    );
    app.wait_tenant("valid-slug", TenantStatus::Active).await;
    app.stop().await;
}

async fn a_taken_slug_is_refused_in_any_status_and_races_have_one_winner(db: TestDb) {
    let app = Install::start(db).await;
    let body = |slug: &str, email: &str| json!({"slug": slug, "name": "Dup", "plan": "free", "admin_email": email});
    app.provision("dup", &unique_email("dup")).await;
    let (status, problem) = app
        .admin_call(
            Method::POST,
            "/v1/tenants",
            Some(body("dup", "other@example.com")),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(
        app.admin_call(
            Method::POST,
            "/v1/tenants",
            Some(body("system", "x@example.com"))
        )
        .await
        .0,
        StatusCode::CONFLICT
    );
    app.wait_tenant("dup", TenantStatus::Active).await;
    assert_eq!(
        app.admin_call(
            Method::POST,
            "/v1/tenants",
            Some(body("dup", "x@example.com"))
        )
        .await
        .0,
        StatusCode::CONFLICT
    );

    // A failed tenant keeps its slug too.
    app.provision("failed-one", &unique_email("reject")).await;
    app.wait_tenant("failed-one", TenantStatus::Failed).await;
    assert_eq!(
        app.admin_call(
            Method::POST,
            "/v1/tenants",
            Some(body("failed-one", "x@example.com"))
        )
        .await
        .0,
        StatusCode::CONFLICT
    );

    // Eight requests for one new slug at once: one is accepted, one run exists.
    let email = unique_email("race");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let request = app
                .http
                .post(format!("{}/v1/tenants", app.base))
                .bearer_auth(&app.admin)
                .json(&body("raced", &email));
            tokio::spawn(async move { request.send().await.expect("request").status() })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::ACCEPTED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::ACCEPTED || *s == StatusCode::CONFLICT),
        "{statuses:?}"
    );
    let runs = app
        .store()
        .runs_list(
            &TenantScope::All,
            &waymark_engine::store::RunFilter {
                tag: Some("tenant:raced".into()),
                ..Default::default()
            },
            None,
            10,
        )
        .await
        .unwrap();
    assert_eq!(runs.len(), 1);
    app.wait_tenant("raced", TenantStatus::Active).await;
    app.stop().await;
}
