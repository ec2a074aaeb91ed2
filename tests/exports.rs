//! Deprovisioning exports stream to the blob store: the real `waymark` process exports
//! a tenant with 100 000 runs (about 150 MB of JSON Lines) while its resident memory
//! grows by less than [`RSS_GROWTH_BOUND`].
//!
//! Memory is measured on a separate process, not on this test binary, whose other
//! tests run in parallel threads and would blur any reading. Just before the export
//! the test resets the process's peak (`5` into `/proc/<pid>/clear_refs` sets VmHWM to
//! the current RSS); once the run waits in `retain` (the export is written), VmHWM is
//! the peak the export reached. PostgreSQL exports to S3 (SeaweedFS, in 8 MiB parts);
//! SQLite to the local blob store.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;
use waymark_engine::RunStatus;
use waymark_workflows::tenants::names::storage_prefix;
use waymark_workflows::tenants::{record, TenantStatus};

use crate::binary::{command, spawn_with};
use crate::support::services::service_env;
use crate::support::{on_both_backends, poll_until, Backend, TestDb};
use crate::tenants::RoleSweeper;

const RUNS: i64 = 100_000;
/// Bytes of padding in each run's input, so the export is several times the bound.
const PADDING: i64 = 600;
/// How much the export may grow the process's resident memory: an 8 MiB S3 part
/// (and the SDK's handling of it), a page of runs, allocator slack.
const RSS_GROWTH_BOUND: u64 = 48 << 20;

on_both_backends!(a_tenant_with_100000_runs_exports_in_bounded_memory);

/// A value of `/proc/<pid>/status` in bytes (`VmRSS`, `VmHWM`).
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kib: u64 = line.trim().trim_end_matches("kB").trim().parse().unwrap();
    kib * 1024
}

/// Inserts `RUNS` completed runs of `slug`, each with one history row, in one
/// statement each: far faster than starting them through the engine.
async fn insert_runs(db: &TestDb, slug: &str) {
    let (runs, history) = match db.backend {
        Backend::Postgres => (
            format!(
                "INSERT INTO waymark_runs (id, tenant, workflow, workflow_version, status, state, \
                   state_data, input, output, created_at, updated_at, finished_at) \
                 SELECT ('00000000-0000-7000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, '{slug}', \
                   'demo', 1, 'completed', 'greet', '{{\"state\":\"greet\"}}', \
                   jsonb_build_object('name', 'run ' || i, 'pad', repeat('x', {PADDING})), \
                   '{{\"greeting\":\"hi\"}}', now(), now(), now() \
                 FROM generate_series(1, {RUNS}) AS i"
            ),
            format!(
                "INSERT INTO waymark_history (run_id, to_state, to_status, cause, visit, attempt, \
                   actor, started_at, committed_at) \
                 SELECT id, 'greet', 'completed', 'step', 1, 1, 'test', now(), now() \
                 FROM waymark_runs WHERE tenant = '{slug}'"
            ),
        ),
        Backend::Sqlite => (
            format!(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {RUNS}) \
                 INSERT INTO waymark_runs (id, tenant, workflow, workflow_version, status, state, \
                   state_data, input, output, created_at, updated_at, finished_at) \
                 SELECT printf('00000000-0000-7000-8000-%012x', i), '{slug}', 'demo', 1, \
                   'completed', 'greet', '{{\"state\":\"greet\"}}', \
                   json_object('name', 'run ' || i, 'pad', hex(zeroblob({PADDING} / 2))), \
                   '{{\"greeting\":\"hi\"}}', {now}, {now}, {now} FROM n",
                now = chrono::Utc::now().timestamp_millis()
            ),
            format!(
                "INSERT INTO waymark_history (run_id, to_state, to_status, cause, visit, attempt, \
                   actor, started_at, committed_at) \
                 SELECT id, 'greet', 'completed', 'step', 1, 1, 'test', created_at, created_at \
                 FROM waymark_runs WHERE tenant = '{slug}'"
            ),
        ),
    };
    assert_eq!(db.execute(&runs).await.expect("insert runs"), RUNS as u64);
    assert_eq!(
        db.execute(&history).await.expect("insert history"),
        RUNS as u64
    );
}

async fn a_tenant_with_100000_runs_exports_in_bounded_memory(db: TestDb) {
    let slug = "bulky";
    let data_dir = match db.backend {
        Backend::Postgres => db.data_dir(),
        Backend::Sqlite => PathBuf::from(&db.location).parent().unwrap().to_owned(),
    };
    let installation = record::installation_id(&db.store).await.unwrap();
    let _roles = RoleSweeper::new(
        &db,
        &installation,
        (db.backend == Backend::Postgres).then(|| data_dir.clone()),
    );
    let admin = waymark_engine::keys::Secret::generate();
    let mut cmd = command(&db, &["serve"]);
    cmd.env("WAYMARK_DATA_DIR", &data_dir)
        .env("WAYMARK_BOOTSTRAP_KEY", admin.expose())
        .env("WAYMARK_LOG", "warn")
        // The export is one long step; a lease of seconds would be lost to a busy CPU.
        .env("WAYMARK_LEASE", "60s");
    if db.backend == Backend::Postgres {
        cmd.env("WAYMARK_S3_BUCKET", service_env("WAYMARK_TEST_S3_BUCKET"))
            .env(
                "WAYMARK_S3_ENDPOINT",
                service_env("WAYMARK_TEST_S3_ENDPOINT"),
            )
            .env("WAYMARK_S3_REGION", "us-east-1")
            .env("WAYMARK_S3_PATH_STYLE", "true")
            .env(
                "AWS_ACCESS_KEY_ID",
                service_env("WAYMARK_TEST_S3_ACCESS_KEY"),
            )
            .env(
                "AWS_SECRET_ACCESS_KEY",
                service_env("WAYMARK_TEST_S3_SECRET_KEY"),
            )
            .env("AWS_EC2_METADATA_DISABLED", "true");
    }
    let proc = spawn_with(cmd).await;
    let pid = proc.child.id().expect("pid");
    let base = format!("http://{}", proc.addr.as_ref().unwrap());
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(admin.expose())
            .json(&body)
            .send()
    };

    let response = post(
        "/v1/tenants",
        json!({"slug": slug, "name": "Bulky Ltd", "plan": "pro", "admin_email": "ops@bulky.example"}),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    poll_until(
        "the tenant to be active",
        Duration::from_secs(60),
        || async {
            match record::get(&db.store, slug).await.unwrap() {
                Some(t) if t.status == TenantStatus::Active => Ok(()),
                other => Err(format!("; last seen {other:?}")),
            }
        },
    )
    .await;
    insert_runs(&db, slug).await;

    // From here on the peak is the export's (and the suspension's paging before it).
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset VmHWM");
    let before = proc_status_bytes(pid, "VmRSS");
    let response = post(&format!("/v1/tenants/{slug}/deprovision"), json!({}))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let run: Uuid = response.json::<Value>().await.unwrap()["run_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    poll_until(
        "the export to be written",
        Duration::from_secs(300),
        || async {
            let run = db
                .store
                .run_get(&waymark_engine::TenantScope::All, run)
                .await
                .unwrap()
                .unwrap();
            if run.status == RunStatus::Waiting && run.state == "retain" {
                Ok(())
            } else {
                Err(format!("; last seen {} in {}", run.status, run.state))
            }
        },
    )
    .await;
    let peak = proc_status_bytes(pid, "VmHWM");
    let growth = peak.saturating_sub(before);

    // The export is complete and large: several times the bound.
    let tenant = record::get(&db.store, slug).await.unwrap().unwrap();
    let prefix = tenant.export_prefix.expect("export prefix");
    let manifest = match db.backend {
        Backend::Postgres => {
            let store = waymark_services::BlobStore::S3(
                waymark_services::S3Store::connect(waymark_services::S3Config {
                    endpoint: Some(service_env("WAYMARK_TEST_S3_ENDPOINT")),
                    region: Some("us-east-1".into()),
                    path_style: true,
                    credentials: Some(waymark_services::S3Credentials {
                        access_key_id: service_env("WAYMARK_TEST_S3_ACCESS_KEY"),
                        secret_access_key: service_env("WAYMARK_TEST_S3_SECRET_KEY"),
                    }),
                    ..waymark_services::S3Config::new(service_env("WAYMARK_TEST_S3_BUCKET"))
                })
                .await
                .unwrap(),
            );
            let manifest = store
                .get_bytes(&format!("{prefix}manifest.json"), None)
                .await
                .unwrap();
            // The bucket is shared: leave nothing of this test in it.
            store.delete_prefix(&prefix).await.unwrap();
            store
                .delete_prefix(&storage_prefix(&installation, slug))
                .await
                .unwrap();
            manifest
        }
        Backend::Sqlite => {
            let signer = waymark_services::UrlSigner::new(vec![7u8; 32]).unwrap();
            let store = waymark_services::LocalStore::new(
                data_dir.join("blobs"),
                signer,
                "http://unused".into(),
            )
            .unwrap();
            waymark_services::BlobStore::Local(store)
                .get_bytes(&format!("{prefix}manifest.json"), None)
                .await
                .unwrap()
        }
    };
    drop(proc);
    let manifest: Value = serde_json::from_slice(&manifest).unwrap();
    let runs = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["key"].as_str().unwrap().ends_with("runs.jsonl"))
        .expect("runs.jsonl in the manifest")
        .clone();
    assert_eq!(runs["lines"], json!(RUNS), "{runs}");
    let bytes = runs["bytes"].as_u64().unwrap();
    eprintln!(
        "exporting {bytes} bytes grew RSS by {} KiB ({} MiB before, peak {} MiB)",
        growth >> 10,
        before >> 20,
        peak >> 20
    );
    assert!(
        bytes > 3 * RSS_GROWTH_BOUND,
        "the export ({bytes} bytes) must dwarf the bound for the test to mean anything"
    );
    assert!(
        growth < RSS_GROWTH_BOUND,
        "exporting {bytes} bytes grew the process's RSS by {} MiB (from {} MiB to a peak \
         of {} MiB); the bound is {} MiB",
        growth >> 20,
        before >> 20,
        peak >> 20,
        RSS_GROWTH_BOUND >> 20
    );
}
