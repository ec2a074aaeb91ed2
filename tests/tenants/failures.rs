//! A failure at each step of provisioning, a cancellation and a crash mid-saga: nothing
//! of the tenant remains, nothing is made twice; and two installations on one server.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use waymark_engine::store::ClaimRequest;
use waymark_engine::{Engine, ManualClock, RunStatus, StepContext, Store, TenantScope, Workflow};
use waymark_workflows::tenant_provisioning::TenantProvisioning;
use waymark_workflows::tenants::names::{role_name, sqlite_file, storage_prefix};
use waymark_workflows::tenants::{record, space, TenantStatus};

use crate::support::{
    on_both_backends, spawn_runner, test_runner_config, wait_until, Backend, TestDb,
};

use super::*;

on_both_backends!(
    an_s3_outage_undoes_everything_once_s3_is_back,
    a_rejecting_smtp_server_undoes_everything,
    a_refused_database_space_undoes_everything,
    a_run_for_a_taken_slug_fails_without_touching_that_tenant,
    cancelling_provisioning_undoes_everything,
    a_crash_mid_saga_resumes_without_making_anything_twice,
);

// ---------------------------------------------------------------------------------
// A failure at each step, then nothing of the tenant remains

async fn an_s3_outage_undoes_everything_once_s3_is_back(db: TestDb) {
    let outage = S3Outage::start_down().await;
    let app = Install::with(
        db,
        Options {
            blobs: Some(outage.store.clone()),
            // Retries wait on the engine clock: advancing it runs them out now.
            clock: Some(ManualClock::starting_now()),
            ..Options::default()
        },
    )
    .await;
    let email = unique_email("outage");
    let run = app.provision("no-storage", &email).await;
    // The storage step fails on every attempt; then compensation begins, with the
    // storage space first, and cannot finish while S3 is down.
    let compensating = app.wait_run_advancing(run, RunStatus::Compensating).await;
    assert_eq!(compensating.state, "storage");
    let error = compensating.error.expect("the step's error");
    assert!(error.is_retryable(), "{error:?}");
    // S3 is back: the compensations finish and the run ends failed.
    outage.restore();
    app.wait_run_advancing(run, RunStatus::Failed).await;
    let tenant = app.wait_tenant("no-storage", TenantStatus::Failed).await;
    assert!(
        tenant.reason.as_deref().unwrap().contains("storage"),
        "{tenant:?}"
    );
    app.assert_nothing_remains("no-storage").await;
    assert!(
        messages_to(&email).is_empty(),
        "no welcome for a failed tenant"
    );
    app.stop().await;
}

async fn a_rejecting_smtp_server_undoes_everything(db: TestDb) {
    let app = Install::start(db).await;
    // The test SMTP server answers 550 to reject…@ recipients.
    let run = app.provision("rejected", &unique_email("reject")).await;
    let done = app.wait_run(run, RunStatus::Failed).await;
    assert_eq!(done.state, "welcome", "{done:?}");
    let tenant = app.wait_tenant("rejected", TenantStatus::Failed).await;
    assert!(
        tenant.reason.as_deref().unwrap().contains("550"),
        "{tenant:?}"
    );
    app.assert_nothing_remains("rejected").await;
    // The key existed and was revoked (the audit log says so) before its row went.
    let audit = app
        .store()
        .audit_list(&TenantScope::Tenant("rejected".into()), None, 50)
        .await
        .unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    assert!(
        actions.contains(&"key.created") && actions.contains(&"key.revoked"),
        "{actions:?}"
    );
    app.stop().await;
}

async fn a_refused_database_space_undoes_everything(db: TestDb) {
    // SQLite's "cannot open" is retryable: a manual clock lets the retries run out now.
    let app = Install::with(
        db,
        Options {
            clock: Some(ManualClock::starting_now()),
            ..Options::default()
        },
    )
    .await;
    let slug = "squatted";
    // Something of the tenant's name that is not Waymark's: refused, and left alone.
    match app.db().backend {
        Backend::Postgres => {
            for sql in [
                "CREATE SCHEMA tenant_squatted",
                "CREATE TABLE tenant_squatted.sentinel (x int)",
            ] {
                app.db().execute(sql).await.unwrap();
            }
        }
        Backend::Sqlite => {
            std::fs::create_dir_all(sqlite_file(&app.data_dir, slug)).unwrap();
        }
    }
    let run = app.provision(slug, &unique_email("squat")).await;
    let done = app.wait_run_advancing(run, RunStatus::Failed).await;
    assert_eq!(done.state, "database", "{done:?}");
    app.assert_nothing_remains(slug).await;
    match app.db().backend {
        Backend::Postgres => {
            assert_eq!(app.schema_owner(slug).await.as_deref(), Some("postgres"));
            assert_eq!(
                app.db()
                    .scalar_i64(
                        "SELECT count(*) FROM pg_tables WHERE schemaname = 'tenant_squatted'"
                    )
                    .await,
                1,
                "the foreign schema is untouched"
            );
        }
        Backend::Sqlite => assert!(sqlite_file(&app.data_dir, slug).is_dir()),
    }
    app.stop().await;
}

async fn a_run_for_a_taken_slug_fails_without_touching_that_tenant(db: TestDb) {
    let backend = db.backend;
    let app = Install::start(db).await;
    let (_, key_id, key) = app.active_tenant("owner", &unique_email("owner")).await;
    let resources = record::resources(app.store(), "owner").await.unwrap();
    // A second provisioning run for the slug, started behind the API's back: it fails
    // at its first step, and its compensation must not undo the owner's tenant.
    let impostor = app
        .engine
        .start(waymark_engine::StartRun {
            tenant: "system".into(),
            workflow: TenantProvisioning::NAME.into(),
            input: json!({"slug": "owner", "name": "Impostor", "plan": "free",
                "admin_email": unique_email("impostor"), "quota": {"storage_bytes": 1, "runs": 1}}),
            idempotency_key: None,
            tags: vec![],
            actor: "test".into(),
        })
        .await
        .unwrap()
        .run
        .id;
    let failed = app.wait_run(impostor, RunStatus::Failed).await;
    assert_eq!(failed.state, "record");
    assert!(failed.error.unwrap().message.contains("taken"));
    let owner = app.tenant("owner").await;
    assert_eq!(owner.status, TenantStatus::Active);
    assert_eq!(owner.admin_key_id, Some(key_id));
    assert_eq!(
        record::resources(app.store(), "owner").await.unwrap(),
        resources
    );
    assert_eq!(app.get("/v1/whoami", &key).await.0, StatusCode::OK);
    match backend {
        Backend::Postgres => assert!(app.role_exists("owner").await),
        Backend::Sqlite => assert!(sqlite_file(&app.data_dir, "owner").is_file()),
    }
    assert_eq!(
        app.stored_objects(&storage_prefix(&app.installation, "owner"))
            .await
            .len(),
        1
    );
    app.stop().await;
}

async fn cancelling_provisioning_undoes_everything(db: TestDb) {
    // An SMTP server that accepts connections and never answers: the welcome step
    // times out and retries until the run is cancelled.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let held = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    let acceptor = tokio::spawn(async move {
        while let Ok((socket, _)) = silent.accept().await {
            keep.lock().await.push(socket);
        }
    });
    let app = Install::with(
        db,
        Options {
            smtp_addr: Some(addr),
            smtp_timeout: Duration::from_millis(300),
            ..Options::default()
        },
    )
    .await;
    let run = app.provision("cancelled", &unique_email("cancel")).await;
    wait_for_run_state(app.store(), run, "welcome").await;
    let (status, body) = app
        .admin_call(
            Method::POST,
            &format!("/v1/runs/{run}/cancel"),
            Some(json!({"reason": "customer changed their mind"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    app.wait_run(run, RunStatus::Cancelled).await;
    app.assert_nothing_remains("cancelled").await;
    let tenant = app.tenant("cancelled").await;
    assert!(tenant
        .reason
        .unwrap()
        .contains("customer changed their mind"));
    app.stop().await;
    acceptor.abort();
}

async fn wait_for_run_state(store: &Store, run: Uuid, state: &str) {
    crate::support::wait_for_run(store, run, &format!("state {state}"), |r| r.state == state).await;
}

// ---------------------------------------------------------------------------------
// Crash and resume

/// The dead worker's lease: long enough for one step, short enough to wait out.
const CRASH_LEASE: Duration = Duration::from_secs(3);

/// Drives `run` as a worker would, committing each step, until `crash_at`: that step's
/// effects are made and then the "process dies" before committing, leaving its lease
/// to expire.
async fn drive_until_crash(engine: &Engine, run: Uuid, crash_at: &str) {
    let claimed = engine
        .store
        .run_claim(&ClaimRequest {
            worker_id: Uuid::now_v7(),
            workflows: vec![(TenantProvisioning::NAME.into(), TenantProvisioning::VERSION)],
            capabilities: vec![],
            limit: 1,
            lease: CRASH_LEASE,
            now: engine.clock.now(),
            exclude: vec![],
        })
        .await
        .unwrap();
    let mut current = claimed
        .into_iter()
        .find(|r| r.id == run)
        .expect("claimed the run");
    let workflow = engine
        .registry
        .get(TenantProvisioning::NAME)
        .unwrap()
        .clone();
    loop {
        let ctx = StepContext::new(
            current.id,
            current.tenant.clone(),
            TenantProvisioning::NAME,
            current.state.clone(),
            current.visit,
            current.attempt,
            CancellationToken::new(),
            engine.clock.clone(),
        );
        let result = workflow
            .step(&ctx, &current.input, &current.state_data)
            .await;
        assert!(result.is_ok(), "{}: {result:?}", current.state);
        if current.state == crash_at {
            return;
        }
        let now = engine.clock.now();
        let commit = waymark_engine::advance::plan(
            workflow.definition(),
            &current,
            result,
            &waymark_engine::advance::PlanInput {
                now,
                step_started_at: now,
                lease: CRASH_LEASE,
                max_payload: 256 * 1024,
                actor: "worker:doomed",
                capabilities: &[],
                may_hold: true,
                registry: &engine.registry,
                upgrade: None,
            },
        );
        current = engine
            .store
            .run_commit(&current.lease().unwrap(), &commit)
            .await
            .unwrap();
    }
}

async fn a_crash_mid_saga_resumes_without_making_anything_twice(db: TestDb) {
    let backend = db.backend;
    let app = Install::with(
        db,
        Options {
            runner: false,
            ..Options::default()
        },
    )
    .await;
    for (slug, crash_at) in [
        ("crash-record", "record"),
        ("crash-database", "database"),
        ("crash-storage", "storage"),
        ("crash-key", "admin_key"),
        ("crash-welcome", "welcome"),
    ] {
        let email = unique_email(slug);
        let run = app.provision(slug, &email).await;
        drive_until_crash(&app.engine, run, crash_at).await;
        // Another worker takes over once the dead one's lease expires.
        let runner = spawn_runner(app.engine.clone(), test_runner_config());
        let done = app.wait_run(run, RunStatus::Completed).await;
        runner.stop().await;
        assert!(done.lease_token > 1, "claimed again after the crash");
        let tenant = app.tenant(slug).await;
        assert_eq!(tenant.status, TenantStatus::Active, "{crash_at}");

        let keys = app
            .store()
            .key_list(&TenantScope::Tenant(slug.into()))
            .await
            .unwrap();
        assert_eq!(keys.len(), 1, "{crash_at}: one admin key, {keys:?}");
        assert_eq!(Some(keys[0].id), tenant.admin_key_id);
        let resources = record::resources(app.store(), slug).await.unwrap();
        let expected = if backend == Backend::Postgres { 4 } else { 3 };
        assert_eq!(resources.len(), expected, "{crash_at}: {resources:?}");
        assert_eq!(
            app.stored_objects(&storage_prefix(&app.installation, slug))
                .await
                .len(),
            1,
            "{crash_at}: one manifest"
        );
        wait_until(
            "the welcome email arrives",
            Duration::from_secs(10),
            || async { !messages_to(&email).is_empty() },
        )
        .await;
        assert_eq!(
            messages_to(&email).len(),
            1,
            "{crash_at}: one welcome email"
        );
        if backend == Backend::Postgres {
            assert!(app.role_exists(slug).await);
        }
    }
    app.stop().await;
}

// ---------------------------------------------------------------------------------
// Two installations on one PostgreSQL server

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_installations_on_one_postgres_server_provision_the_same_slug() {
    let first = Install::start(TestDb::postgres().await).await;
    let second = Install::start(TestDb::postgres().await).await;
    assert_ne!(first.installation, second.installation);
    first.provision("shared", &unique_email("one")).await;
    second.provision("shared", &unique_email("two")).await;
    first.wait_tenant("shared", TenantStatus::Active).await;
    second.wait_tenant("shared", TenantStatus::Active).await;
    let (role_one, role_two) = (
        role_name(&first.installation, "shared"),
        role_name(&second.installation, "shared"),
    );
    assert_ne!(role_one, role_two);
    assert_eq!(first.schema_owner("shared").await, Some(role_one.clone()));
    assert_eq!(second.schema_owner("shared").await, Some(role_two.clone()));
    assert_ne!(
        storage_prefix(&first.installation, "shared"),
        storage_prefix(&second.installation, "shared")
    );
    // Removing one installation's space leaves the other's alone.
    space::remove(&first.deps, "shared").await.unwrap();
    assert!(!first.role_exists("shared").await);
    assert_eq!(first.schema_owner("shared").await, None);
    assert!(second.role_exists("shared").await);
    assert_eq!(second.schema_owner("shared").await, Some(role_two));
    first.stop().await;
    second.stop().await;
}
