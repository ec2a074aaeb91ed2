//! Deprovisioning a tenant: its export, restore and cancellation, deletion once the
//! retention is over, a held run an operator retries; and the status enum against the
//! database.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Digest;
use uuid::Uuid;
use waymark_engine::store::Arg;
use waymark_engine::{ManualClock, RunStatus, TenantScope};
use waymark_workflows::tenants::names::{sqlite_file, storage_prefix};
use waymark_workflows::tenants::{record, TenantStatus};

use crate::support::app::test_s3;
use crate::support::{on_both_backends, wait_for_status, Backend, TestDb};

use super::*;

on_both_backends!(
    deprovisioning_then_restore_reactivates_the_tenant,
    cancelling_deprovisioning_before_deletion_reactivates_the_tenant,
    deprovisioning_deletes_everything_once_the_retention_is_over,
    retention_keeps_a_held_deprovisioning_so_an_operator_can_retry_it,
    the_database_accepts_exactly_the_rust_tenant_statuses,
);

// ---------------------------------------------------------------------------------
// Deprovisioning

/// A schedule of the tenant, created with its own key; returns its id.
async fn tenant_schedule(app: &Install, key: &str) -> String {
    let (status, body) = app
        .post("/v1/schedules", key, json!({"name": "nightly", "cron": "0 3 * * *", "workflow": "three_step", "input": {"n": 1}}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

async fn schedule_paused(app: &Install, slug: &str, id: &str) -> bool {
    app.store()
        .schedule_get(&TenantScope::Tenant(slug.into()), id.parse().unwrap())
        .await
        .unwrap()
        .expect("schedule")
        .paused
}

async fn deprovision(app: &Install, slug: &str) -> Uuid {
    let (status, body) = app
        .admin_call(
            Method::POST,
            &format!("/v1/tenants/{slug}/deprovision"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    body["run_id"].as_str().unwrap().parse().unwrap()
}

/// Reads the export's manifest and checks every file against its SHA-256 and the
/// overall checksum; returns the manifest and each file's text by key.
async fn verified_export(prefix: &str) -> (Value, Vec<(String, String)>) {
    let s3 = test_s3().await;
    let manifest: Value = serde_json::from_slice(
        &s3.get_bytes(&format!("{prefix}manifest.json"), None)
            .await
            .unwrap(),
    )
    .unwrap();
    let mut summary = String::new();
    let mut files = Vec::new();
    for file in manifest["files"].as_array().unwrap() {
        let key = file["key"].as_str().unwrap();
        let bytes = s3.get_bytes(key, None).await.unwrap();
        let sha = hex::encode(sha2::Sha256::digest(&bytes));
        assert_eq!(file["sha256"], json!(sha), "{key}");
        summary.push_str(&format!("{sha}  {key}\n"));
        files.push((key.to_owned(), String::from_utf8(bytes).unwrap()));
    }
    assert_eq!(
        manifest["checksum"],
        json!(hex::encode(sha2::Sha256::digest(summary.as_bytes())))
    );
    (manifest, files)
}

async fn deprovisioning_then_restore_reactivates_the_tenant(db: TestDb) {
    let app = Install::start(db).await;
    let email = unique_email("restore");
    let (_, key_id, key) = app.active_tenant("keeper", &email).await;
    let schedule = tenant_schedule(&app, &key).await;
    // A run of the tenant that will still be waiting when it is suspended.
    let (status, live) = app
        .post(
            "/v1/workflows/demo/runs",
            &key,
            json!({"name": "x", "wait": "1h"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{live}");
    let live: Uuid = live["id"].as_str().unwrap().parse().unwrap();
    wait_for_status(app.store(), live, RunStatus::Sleeping).await;

    let run = deprovision(&app, "keeper").await;
    assert_eq!(
        app.admin_call(Method::POST, "/v1/tenants/keeper/deprovision", None)
            .await
            .0,
        StatusCode::CONFLICT,
        "one deprovisioning at a time"
    );
    let waiting = crate::support::wait_for_run(app.store(), run, "waiting in retain", |r| {
        r.status == RunStatus::Waiting && r.state == "retain"
    })
    .await;
    assert_eq!(waiting.tenant, "system");
    let tenant = app.tenant("keeper").await;
    assert_eq!(tenant.status, TenantStatus::Suspended);
    // Suspended: its key answers 401, its runs were cancelled, its schedule paused.
    assert_eq!(
        app.get("/v1/whoami", &key).await.0,
        StatusCode::UNAUTHORIZED
    );
    app.wait_run(live, RunStatus::Cancelled).await;
    assert!(schedule_paused(&app, "keeper", &schedule).await);
    // The export: JSON Lines per table, the object manifest, runs with history.
    let prefix = tenant.export_prefix.clone().expect("export");
    let (manifest, files) = verified_export(&prefix).await;
    assert_eq!(manifest["tenant"], "keeper");
    let file = |name: &str| {
        files
            .iter()
            .find(|(k, _)| k.ends_with(name))
            .unwrap_or_else(|| panic!("{name} in {files:?}"))
            .1
            .clone()
    };
    assert!(file("tables/members.jsonl").contains(&email));
    assert!(file("tables/plan.jsonl").contains("\"pro\""));
    assert!(file("objects.jsonl").contains("manifest.json"));
    let runs = file("runs.jsonl");
    assert!(
        runs.contains(&live.to_string()) && runs.contains("\"history\""),
        "{runs}"
    );

    // Restore: the signal is accepted only while the run waits for it.
    let (status, body) = app
        .admin_call(
            Method::POST,
            &format!("/v1/runs/{run}/signals/restore"),
            Some(json!({})),
        )
        .await;
    assert!(status.is_success(), "{status}: {body}");
    let done = app.wait_run(run, RunStatus::Completed).await;
    assert_eq!(done.output.unwrap()["outcome"], "restored");
    let tenant = app.tenant("keeper").await;
    assert_eq!(tenant.status, TenantStatus::Active);
    assert_eq!(tenant.deprovision_run_id, None);
    assert_eq!(tenant.export_prefix, None);
    assert_eq!(tenant.admin_key_id, Some(key_id));
    assert_eq!(app.get("/v1/whoami", &key).await.0, StatusCode::OK);
    assert!(!schedule_paused(&app, "keeper", &schedule).await);
    assert_eq!(
        app.stored_objects(&prefix).await,
        Vec::<String>::new(),
        "export removed"
    );
    // And it can be deprovisioned again later.
    let again = deprovision(&app, "keeper").await;
    assert_ne!(again, run);
    app.stop().await;
}

async fn cancelling_deprovisioning_before_deletion_reactivates_the_tenant(db: TestDb) {
    let app = Install::start(db).await;
    let (_, _, key) = app.active_tenant("stayer", &unique_email("stayer")).await;
    let run = deprovision(&app, "stayer").await;
    crate::support::wait_for_run(app.store(), run, "waiting in retain", |r| {
        r.status == RunStatus::Waiting && r.state == "retain"
    })
    .await;
    let prefix = app.tenant("stayer").await.export_prefix.expect("export");
    assert!(!app.stored_objects(&prefix).await.is_empty());
    let (status, body) = app
        .admin_call(
            Method::POST,
            &format!("/v1/runs/{run}/cancel"),
            Some(json!({"reason": "kept after all"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.wait_run(run, RunStatus::Cancelled).await;
    let tenant = app.tenant("stayer").await;
    assert_eq!(tenant.status, TenantStatus::Active);
    assert_eq!(
        (tenant.deprovision_run_id, tenant.export_prefix),
        (None, None)
    );
    assert_eq!(app.get("/v1/whoami", &key).await.0, StatusCode::OK);
    assert!(
        app.stored_objects(&prefix).await.is_empty(),
        "export removed"
    );
    app.stop().await;
}

async fn deprovisioning_deletes_everything_once_the_retention_is_over(db: TestDb) {
    let backend = db.backend;
    let clock = ManualClock::starting_now();
    let app = Install::with(
        db,
        Options {
            clock: Some(clock.clone()),
            retention: Duration::from_secs(30 * 86_400),
            ..Options::default()
        },
    )
    .await;
    let (provisioning, _, key) = app.active_tenant("leaver", &unique_email("leaver")).await;
    tenant_schedule(&app, &key).await;
    let (status, started) = app
        .post("/v1/workflows/three_step/runs", &key, json!({"n": 1}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let finished: Uuid = started["id"].as_str().unwrap().parse().unwrap();
    app.wait_run(finished, RunStatus::Completed).await;
    // A mail ledger row of one of its steps, as a mailing step would leave.
    app.db()
        .execute(&format!(
            "INSERT INTO waymark_mail_ledger (idempotency_key, message_id, status, transport, recipients, subject, created_at, updated_at) \
             VALUES ('{finished}:1:0', '<leaver-message@x.example>', 'sending', 'smtp', 'x@example.com', 's', {now}, {now})",
            now = if backend == Backend::Postgres { "now()".to_owned() } else { "0".to_owned() }
        ))
        .await
        .unwrap();

    // …and its file in the embedded outbox.
    let outbox = app.data_dir.join("outbox").join("leaver-message.eml");
    std::fs::create_dir_all(outbox.parent().unwrap()).unwrap();
    std::fs::write(&outbox, "From: x\r\n\r\nhello").unwrap();

    // …and rows of its own in the workflows' tables.
    let now = waymark_engine::Clock::now(&clock);
    app.store()
        .sql_execute(
            "INSERT INTO disputes_settings (tenant, updated_at) VALUES ($1, $2)",
            &[Arg::text("leaver"), Arg::time(now)],
        )
        .await
        .unwrap();
    app.store()
        .sql_execute(
            "INSERT INTO meeting_feeds (id, tenant, email, token_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
            &[
                Arg::id(Uuid::now_v7()),
                Arg::text("leaver"),
                Arg::text("a@leaver.example"),
                Arg::text("not-a-real-hash"),
                Arg::time(now),
            ],
        )
        .await
        .unwrap();

    let run = deprovision(&app, "leaver").await;
    crate::support::wait_for_run(app.store(), run, "waiting in retain", |r| {
        r.status == RunStatus::Waiting && r.state == "retain"
    })
    .await;
    // Not due a day before the retention is over.
    clock.advance(Duration::from_secs(29 * 86_400));
    assert_eq!(
        app.store()
            .runs_fire_timeouts(waymark_engine::Clock::now(&clock), 10)
            .await
            .unwrap(),
        0
    );
    assert_eq!(app.tenant("leaver").await.status, TenantStatus::Suspended);
    clock.advance(Duration::from_secs(86_400 + 1));
    let done = app.wait_run(run, RunStatus::Completed).await;
    assert_eq!(done.output.as_ref().unwrap()["outcome"], "deleted");
    let tenant = app.tenant("leaver").await;
    assert_eq!(tenant.status, TenantStatus::Deleted);

    // Nothing of it remains in the catalog, the object store or Waymark's tables…
    match backend {
        Backend::Postgres => {
            assert!(!app.role_exists("leaver").await);
            assert_eq!(app.schema_owner("leaver").await, None);
        }
        Backend::Sqlite => assert!(!sqlite_file(&app.data_dir, "leaver").exists()),
    }
    assert!(app
        .stored_objects(&storage_prefix(&app.installation, "leaver"))
        .await
        .is_empty());
    for (table, column) in [
        ("waymark_keys", "tenant"),
        ("waymark_runs", "tenant"),
        ("waymark_schedules", "tenant"),
        ("disputes_settings", "tenant"),
        ("meeting_feeds", "tenant"),
    ] {
        assert_eq!(
            app.count(
                &format!("SELECT count(*) FROM {table} WHERE {column} = $1"),
                "leaver"
            )
            .await,
            0,
            "{table}"
        );
    }
    assert_eq!(
        app.count(
            "SELECT count(*) FROM waymark_mail_ledger WHERE idempotency_key = $1",
            &format!("{finished}:1:0")
        )
        .await,
        0,
        "its steps' mail ledger rows"
    );
    assert!(!outbox.exists(), "its outbox file");
    // …but the export, its record, the system's runs and the audit trail stay.
    let resources = record::resources(app.store(), "leaver").await.unwrap();
    assert_eq!(resources.len(), 1, "{resources:?}");
    assert_eq!(resources[0].kind, record::ResourceKind::Export);
    verified_export(tenant.export_prefix.as_deref().unwrap()).await;
    assert!(app
        .store()
        .run_get(&TenantScope::All, provisioning)
        .await
        .unwrap()
        .is_some());
    let audit = app
        .store()
        .audit_list(&TenantScope::Tenant("leaver".into()), None, 100)
        .await
        .unwrap();
    let deleted: Vec<_> = audit
        .iter()
        .filter(|a| a.action == "tenant.deleted")
        .collect();
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0].actor, format!("run:{run}"));
    let (_, body) = app
        .admin_call(Method::GET, "/v1/tenants/leaver", None)
        .await;
    assert_eq!(body["status"], "deleted");
    app.stop().await;
}

// ---------------------------------------------------------------------------------
// The status enum and the database agree

async fn the_database_accepts_exactly_the_rust_tenant_statuses(db: TestDb) {
    let store = db.store.clone();
    let (ts, now) = match db.backend {
        Backend::Postgres => ("now()", "now()".to_owned()),
        Backend::Sqlite => ("1", "1".to_owned()),
    };
    let insert = |slug: &str, status: &str| {
        let (reason, activated, suspended, deleted) = match status {
            "failed" => ("'why'", "NULL", "NULL", "NULL"),
            "active" => ("NULL", ts, "NULL", "NULL"),
            "suspended" => ("NULL", ts, ts, "NULL"),
            "deleted" => ("NULL", ts, "NULL", ts),
            _ => ("NULL", "NULL", "NULL", "NULL"),
        };
        format!(
            "INSERT INTO waymark_tenants (slug, name, plan, admin_email, storage_quota_bytes, status, reason, \
             created_at, updated_at, activated_at, suspended_at, deleted_at) VALUES \
             ('{slug}', 'n', 'free', 'a@b.example', 1, '{status}', {reason}, {now}, {now}, {activated}, {suspended}, {deleted})"
        )
    };
    for status in TenantStatus::ALL {
        db.execute(&insert(&format!("t-{status}"), status.as_str()))
            .await
            .unwrap_or_else(|e| panic!("{status}: {e}"));
        assert_eq!(
            record::get(&store, &format!("t-{status}"))
                .await
                .unwrap()
                .unwrap()
                .status,
            status
        );
    }
    assert!(db.execute(&insert("t-archived", "archived")).await.is_err());
    // The constraints tie status to its timestamps.
    assert!(db
        .execute(&insert("t-bad", "failed").replace("'why'", "NULL"))
        .await
        .is_err());
}

async fn retention_keeps_a_held_deprovisioning_so_an_operator_can_retry_it(db: TestDb) {
    let outage = S3Outage::start_down().await;
    outage.restore();
    let app = Install::with(
        db,
        Options {
            blobs: Some(outage.store.clone()),
            clock: Some(ManualClock::starting_now()),
            ..Options::default()
        },
    )
    .await;
    app.active_tenant("holdout", &unique_email("holdout")).await;
    // The export cannot reach S3: the run fails after its retries and is held for an
    // operator (`on_failure: hold`), the tenant suspended meanwhile.
    outage.fail();
    let run = deprovision(&app, "holdout").await;
    let clock = app.clock.clone().unwrap();
    let store = app.store().clone();
    let held =
        crate::support::poll_until("the deprovisioning held", Duration::from_secs(90), || {
            clock.advance(Duration::from_secs(5));
            let store = store.clone();
            async move {
                let r = store
                    .run_get(&TenantScope::All, run)
                    .await
                    .unwrap()
                    .unwrap();
                if r.status == RunStatus::Failed {
                    Ok(r)
                } else {
                    Err(format!("; last seen {r:?}"))
                }
            }
        })
        .await;
    assert!(held.held, "{held:?}");
    // An admin sweeps everything finished before now, through the API.
    let (status, sweep) = app
        .admin_call(
            Method::POST,
            "/v1/workflows/waymark.retention/runs",
            Some(json!({"older_than": "0s"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sweep}");
    let sweep: Uuid = sweep["id"].as_str().unwrap().parse().unwrap();
    app.wait_run_advancing(sweep, RunStatus::Completed).await;
    let (status, body) = app
        .admin_call(Method::GET, &format!("/v1/runs/{run}"), None)
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the held run survives retention: {body}"
    );
    // So the tenant's record still leads somewhere: the operator retries, and with S3
    // back the deprovisioning goes on to its retention wait.
    outage.restore();
    let (status, body) = app
        .admin_call(Method::POST, &format!("/v1/runs/{run}/retry"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    crate::support::wait_for_run(app.store(), run, "waiting in retain", |r| {
        r.status == RunStatus::Waiting && r.state == "retain"
    })
    .await;
    app.stop().await;
}
