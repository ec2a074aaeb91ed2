//! Tenant provisioning and deprovisioning as sagas, through the HTTP API and a real
//! runner, on both backends, against the SMTP and S3 test servers that `./test.sh`
//! starts (`scripts/test-services.sh`).
//!
//! Every failure test injects one fault (a schema that is someone else's, a bucket that
//! does not exist, an SMTP server rejecting the admin's address) and then looks at the
//! database catalog, the object store, the key rows and the resource rows to see that
//! nothing of the tenant remains. PostgreSQL roles are cluster-wide, so each test drops
//! the roles its installation made when it ends, pass or fail.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Digest;
use sqlx::Connection;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use waymark_engine::keys::{IssueKey, Scope, Sealer};
use waymark_engine::store::ClaimRequest;
use waymark_engine::{
    Engine, ManualClock, RunStatus, SharedClock, StepContext, Store, SystemClock, TenantScope,
    Workflow,
};
use waymark_services::{
    BlobStore, MailConfig, Mailer, S3Config, S3Credentials, S3Store, SmtpOptions,
};
use waymark_workflows::tenant_provisioning::TenantProvisioning;
use waymark_workflows::tenants::names::{
    role_name, schema_name, sqlite_file, storage_manifest, storage_prefix,
};
use waymark_workflows::tenants::{record, space, TenantDeps, TenantStatus};

use crate::support::services::service_env;
use crate::support::{
    on_both_backends, spawn_runner, test_runner_config, wait_for_status, wait_until, Backend,
    RunnerHandle, TestDb,
};

// ---------------------------------------------------------------------------------
// The services test.sh starts

fn s3_config(bucket: String) -> S3Config {
    S3Config {
        endpoint: Some(service_env("WAYMARK_TEST_S3_ENDPOINT")),
        region: Some("us-east-1".into()),
        path_style: true,
        credentials: Some(S3Credentials {
            access_key_id: service_env("WAYMARK_TEST_S3_ACCESS_KEY"),
            secret_access_key: service_env("WAYMARK_TEST_S3_SECRET_KEY"),
        }),
        ..S3Config::new(bucket)
    }
}

async fn s3_store() -> BlobStore {
    BlobStore::S3(
        S3Store::connect(s3_config(service_env("WAYMARK_TEST_S3_BUCKET")))
            .await
            .expect("s3 client"),
    )
}

/// An S3 server that can be "stopped" and "started" again: a TCP proxy in front of
/// the shared test server (which other tests use meanwhile, so it is never really
/// stopped). While down it accepts connections and closes them at once.
struct S3Outage {
    up: Arc<std::sync::atomic::AtomicBool>,
    /// Connections passed through, cut by [`S3Outage::fail`] (a client's pool would
    /// otherwise keep using them).
    links: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    store: BlobStore,
    task: tokio::task::JoinHandle<()>,
}

impl S3Outage {
    async fn start_down() -> S3Outage {
        let target = service_env("WAYMARK_TEST_S3_ENDPOINT")
            .trim_start_matches("http://")
            .to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = up.clone();
        let links = Arc::new(std::sync::Mutex::new(Vec::new()));
        let open = links.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !flag.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                open.lock().unwrap().push(link.abort_handle());
            }
        });
        let config = S3Config {
            endpoint: Some(format!("http://{addr}")),
            ..s3_config(service_env("WAYMARK_TEST_S3_BUCKET"))
        };
        let store = BlobStore::S3(S3Store::connect(config).await.expect("s3 client"));
        S3Outage {
            up,
            links,
            store,
            task,
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn fail(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }
}

impl Drop for S3Outage {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn mailer(store: &Store, outbox: PathBuf, smtp_addr: &str, timeout: Duration) -> Mailer {
    Mailer::from_config(
        &MailConfig {
            smtp_url: Some(format!("smtp://{smtp_addr}")),
            smtp: SmtpOptions {
                timeout,
                pool_size: 2,
                ca_file: None,
            },
            outbox_dir: outbox,
            default_from: "Waymark Tests <tests@waymark.example>".into(),
        },
        store.clone(),
    )
    .expect("mailer")
}

/// Raw messages in the test server's Maildir addressed to `address`.
fn messages_to(address: &str) -> Vec<String> {
    let dir = PathBuf::from(service_env("WAYMARK_TEST_MAILDIR")).join("new");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter(|raw| {
            raw.lines()
                .any(|l| l.to_ascii_lowercase().starts_with("to:") && l.contains(address))
        })
        .collect()
}

fn unique_email(local: &str) -> String {
    format!("{local}-{}@tenants.example", Uuid::now_v7().simple())
}

// ---------------------------------------------------------------------------------
// A Waymark installation: API on port 0, a runner, the tenant workflows

struct Options {
    blobs: Option<BlobStore>,
    clock: Option<ManualClock>,
    retention: Duration,
    /// Start no runner (a test drives the run itself first).
    runner: bool,
    smtp_addr: Option<String>,
    smtp_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            blobs: None,
            clock: None,
            retention: Duration::from_secs(30 * 86_400),
            runner: true,
            smtp_addr: None,
            smtp_timeout: Duration::from_secs(10),
        }
    }
}

struct Install {
    base: String,
    http: reqwest::Client,
    admin: String,
    engine: Engine,
    deps: TenantDeps,
    installation: String,
    runner: Option<RunnerHandle>,
    clock: Option<ManualClock>,
    data_dir: PathBuf,
    stop: CancellationToken,
    // Dropped before the database (fields drop in order): the roles go first.
    _roles: RoleSweeper,
    db: TestDb,
}

impl Install {
    async fn start(db: TestDb) -> Install {
        Self::with(db, Options::default()).await
    }

    async fn with(db: TestDb, options: Options) -> Install {
        let data_dir = db.data_dir();
        let clock: SharedClock = match &options.clock {
            Some(manual) => Arc::new(manual.clone()),
            None => Arc::new(SystemClock),
        };
        let blobs = match options.blobs {
            Some(blobs) => blobs,
            None => s3_store().await,
        };
        let smtp = options
            .smtp_addr
            .unwrap_or_else(|| service_env("WAYMARK_TEST_SMTP_ADDR"));
        let sealer = Sealer::random();
        let deps = waymark_workflows::Deps {
            store: db.store.clone(),
            mailer: mailer(
                &db.store,
                data_dir.join("outbox"),
                &smtp,
                options.smtp_timeout,
            ),
            blobs: blobs.clone(),
            sealer: sealer.clone(),
            data_dir: data_dir.clone(),
            tenant_retention: options.retention,
            rotation: Default::default(),
            meetings: Default::default(),
        };
        let tenant_deps = TenantDeps::new(
            deps.store.clone(),
            deps.mailer.clone(),
            blobs,
            sealer.clone(),
            data_dir.clone(),
            options.retention,
        );
        let mut registry = waymark_workflows::registry(deps).expect("registry");
        registry
            .register(crate::support::workflows::ThreeStep)
            .expect("three_step");
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
        let app = waymark_api::app(waymark_api::AppState {
            engine: engine.clone(),
            blobs: None,
            api: waymark_api::ApiConfig {
                // A manual clock would put every request in one rate-limit second.
                rate_limit: 0,
                sealer,
                ..waymark_api::ApiConfig::default()
            },
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
        let installation = tenant_deps.installation().await.unwrap().to_owned();
        let pg_data_dir = (db.backend == Backend::Postgres).then(|| data_dir.clone());
        let runner = options
            .runner
            .then(|| spawn_runner(engine.clone(), test_runner_config()));
        Install {
            base,
            http: reqwest::Client::new(),
            admin: secret.expose().to_owned(),
            engine,
            deps: tenant_deps,
            runner,
            clock: options.clock,
            data_dir,
            stop,
            _roles: RoleSweeper::new(&db, &installation, pg_data_dir),
            installation,
            db,
        }
    }

    fn store(&self) -> &Store {
        &self.engine.store
    }

    async fn stop(mut self) {
        if let Some(runner) = self.runner.take() {
            runner.stop().await;
        }
        self.stop.cancel();
    }

    async fn call(
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
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.call(method, path, Some(&self.admin), body).await
    }

    /// `POST /v1/tenants`; asserts 202 and returns the provisioning run.
    async fn provision(&self, slug: &str, admin_email: &str) -> Uuid {
        let (status, body) = self
            .admin(
                Method::POST,
                "/v1/tenants",
                Some(json!({"slug": slug, "name": format!("{slug} Ltd"), "plan": "pro", "admin_email": admin_email})),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert_eq!(body["status"], "provisioning", "{body}");
        body["run_id"].as_str().unwrap().parse().unwrap()
    }

    async fn tenant(&self, slug: &str) -> record::Tenant {
        record::get(self.store(), slug)
            .await
            .unwrap()
            .expect("tenant row")
    }

    /// Waits (advancing a manual clock, so retries and timers come due) until the
    /// tenant has `status`.
    async fn wait_tenant(&self, slug: &str, status: TenantStatus) -> record::Tenant {
        let store = self.store().clone();
        let clock = self.clock.clone();
        wait_until(
            &format!("tenant {slug} {status}"),
            Duration::from_secs(60),
            || {
                let store = store.clone();
                let clock = clock.clone();
                async move {
                    if let Some(clock) = clock {
                        clock.advance(Duration::from_secs(1));
                    }
                    record::get(&store, slug)
                        .await
                        .unwrap()
                        .is_some_and(|t| t.status == status)
                }
            },
        )
        .await;
        self.tenant(slug).await
    }

    async fn wait_run(&self, run: Uuid, status: RunStatus) -> waymark_engine::Run {
        wait_for_status(self.store(), run, status).await
    }

    /// Provisions `slug` to `active` and reveals its admin key: (run, key id, secret).
    async fn active_tenant(&self, slug: &str, admin_email: &str) -> (Uuid, Uuid, String) {
        let run = self.provision(slug, admin_email).await;
        let tenant = self.wait_tenant(slug, TenantStatus::Active).await;
        let key = tenant.admin_key_id.expect("admin key");
        let (status, body) = self
            .admin(Method::POST, &format!("/v1/keys/{key}/reveal"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        (run, key, body["secret"].as_str().unwrap().to_owned())
    }

    async fn pg_scalar_bool(&self, sql: &str, bind: &str) -> bool {
        match self.store() {
            Store::Postgres(pg) => sqlx::query_scalar(sql)
                .bind(bind)
                .fetch_one(pg.pool())
                .await
                .expect(sql),
            Store::Sqlite(_) => panic!("not a PostgreSQL test"),
        }
    }

    async fn role_exists(&self, slug: &str) -> bool {
        self.pg_scalar_bool(
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)",
            &role_name(&self.installation, slug),
        )
        .await
    }

    async fn schema_owner(&self, slug: &str) -> Option<String> {
        let Store::Postgres(pg) = self.store() else {
            panic!("not a PostgreSQL test")
        };
        sqlx::query_scalar(
            "SELECT pg_get_userbyid(nspowner)::text FROM pg_namespace WHERE nspname = $1",
        )
        .bind(schema_name(slug))
        .fetch_optional(pg.pool())
        .await
        .unwrap()
    }

    /// Objects under the tenant's storage prefix, read through a working S3 store.
    async fn stored_objects(&self, prefix: &str) -> Vec<String> {
        s3_store()
            .await
            .list(prefix)
            .await
            .unwrap()
            .into_iter()
            .map(|b| b.key)
            .collect()
    }

    async fn count(&self, sql: &str, bind: &str) -> i64 {
        match self.store() {
            Store::Postgres(pg) => sqlx::query_scalar(sql)
                .bind(bind)
                .fetch_one(pg.pool())
                .await
                .expect(sql),
            Store::Sqlite(lite) => sqlx::query_scalar(&sql.replace('$', "?"))
                .bind(bind)
                .fetch_one(lite.pool())
                .await
                .expect(sql),
        }
    }

    /// Nothing of `slug` remains: no database space, no stored object, no key, no
    /// resource row; the record says `failed`.
    async fn assert_nothing_remains(&self, slug: &str) {
        match self.db.backend {
            Backend::Postgres => {
                assert!(!self.role_exists(slug).await, "role of {slug} dropped");
                let owner = self.schema_owner(slug).await;
                assert_ne!(
                    owner.as_deref(),
                    Some(role_name(&self.installation, slug).as_str()),
                    "no schema of {slug}'s role"
                );
            }
            Backend::Sqlite => {
                let file = sqlite_file(&self.data_dir, slug);
                assert!(!file.is_file(), "database file {} removed", file.display());
            }
        }
        assert_eq!(
            self.stored_objects(&storage_prefix(&self.installation, slug))
                .await,
            Vec::<String>::new(),
            "storage emptied"
        );
        assert_eq!(
            self.count("SELECT count(*) FROM waymark_keys WHERE tenant = $1", slug)
                .await,
            0,
            "no key rows"
        );
        assert_eq!(
            record::resources(self.store(), slug).await.unwrap(),
            vec![],
            "no resources"
        );
        let tenant = self.tenant(slug).await;
        assert_eq!(tenant.status, TenantStatus::Failed);
        assert!(tenant.reason.is_some());
        assert_eq!(tenant.admin_key_id, None);
    }
}

/// Drops, when a test ends, the cluster-wide roles its installation created.
pub(crate) struct RoleSweeper {
    url: Option<String>,
    prefix: String,
    /// A PostgreSQL test's data directory (SQLite's goes with its database).
    data_dir: Option<PathBuf>,
}

impl RoleSweeper {
    /// Sweeps the roles of `installation` (PostgreSQL) and `data_dir` (if given).
    pub(crate) fn new(db: &TestDb, installation: &str, data_dir: Option<PathBuf>) -> Self {
        RoleSweeper {
            url: (db.backend == Backend::Postgres).then(|| db.location.clone()),
            prefix: format!("waymark_{installation}_"),
            data_dir,
        }
    }
}

impl Drop for RoleSweeper {
    fn drop(&mut self) {
        if let Some(dir) = self.data_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        let Some(url) = self.url.take() else { return };
        let prefix = self.prefix.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let Ok(mut conn) = sqlx::PgConnection::connect(&url).await else {
                    return;
                };
                let roles: Vec<String> = sqlx::query_scalar(
                    "SELECT rolname::text FROM pg_roles WHERE starts_with(rolname, $1)",
                )
                .bind(&prefix)
                .fetch_all(&mut conn)
                .await
                .unwrap_or_default();
                for role in roles {
                    let quoted = waymark_workflows::tenants::names::quote_ident(&role);
                    let _ = sqlx::Executor::execute(
                        &mut conn,
                        format!("DROP OWNED BY {quoted} CASCADE; DROP ROLE {quoted}").as_str(),
                    )
                    .await;
                }
            });
        })
        .join();
    }
}

// ---------------------------------------------------------------------------------
// Happy path

on_both_backends!(
    provisioning_creates_every_resource_and_activates_the_tenant,
    the_admin_key_works_only_inside_its_tenant,
    invalid_requests_are_refused_before_anything_is_made,
    a_taken_slug_is_refused_in_any_status_and_races_have_one_winner,
    an_s3_outage_undoes_everything_once_s3_is_back,
    a_rejecting_smtp_server_undoes_everything,
    a_refused_database_space_undoes_everything,
    a_run_for_a_taken_slug_fails_without_touching_that_tenant,
    cancelling_provisioning_undoes_everything,
    a_crash_mid_saga_resumes_without_making_anything_twice,
    deprovisioning_then_restore_reactivates_the_tenant,
    cancelling_deprovisioning_before_deletion_reactivates_the_tenant,
    deprovisioning_deletes_everything_once_the_retention_is_over,
    retention_keeps_a_held_deprovisioning_so_an_operator_can_retry_it,
    the_database_accepts_exactly_the_rust_tenant_statuses,
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
    let (status, body) = app.admin(Method::GET, "/v1/tenants/acme-eu", None).await;
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
        &s3_store()
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
        .admin(Method::POST, &format!("/v1/keys/{key_id}/reveal"), None)
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
        .admin(Method::POST, &format!("/v1/keys/{key_id}/reveal"), None)
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
        let (status, problem) = app.admin(Method::POST, "/v1/tenants", Some(body)).await;
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
        app.admin(Method::POST, "/v1/tenants", Some(good.clone()))
            .await
            .0,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let (status, body) = app
        .admin(
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
        .admin(
            Method::POST,
            "/v1/tenants",
            Some(body("dup", "other@example.com")),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(
        app.admin(
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
        app.admin(
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
        app.admin(
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
    match app.db.backend {
        Backend::Postgres => {
            for sql in [
                "CREATE SCHEMA tenant_squatted",
                "CREATE TABLE tenant_squatted.sentinel (x int)",
            ] {
                app.db.execute(sql).await.unwrap();
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
    match app.db.backend {
        Backend::Postgres => {
            assert_eq!(app.schema_owner(slug).await.as_deref(), Some("postgres"));
            assert_eq!(
                app.db
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
    assert_eq!(
        app.call(Method::GET, "/v1/whoami", Some(&key), None)
            .await
            .0,
        StatusCode::OK
    );
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

impl Install {
    /// [`wait_for_status`], advancing the engine clock when it is manual. With the
    /// system clock, retries take their real backoff.
    async fn wait_run_advancing(&self, run: Uuid, status: RunStatus) -> waymark_engine::Run {
        let store = self.store().clone();
        let clock = self.clock.clone();
        wait_until(
            &format!("run {run} {status}"),
            Duration::from_secs(90),
            || {
                let store = store.clone();
                let clock = clock.clone();
                async move {
                    if let Some(clock) = clock {
                        clock.advance(Duration::from_secs(5));
                    }
                    store
                        .run_get(&TenantScope::All, run)
                        .await
                        .unwrap()
                        .is_some_and(|r| r.status == status)
                }
            },
        )
        .await;
        self.store()
            .run_get(&TenantScope::All, run)
            .await
            .unwrap()
            .unwrap()
    }
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
        .admin(
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

// ---------------------------------------------------------------------------------
// Deprovisioning

/// A schedule of the tenant, created with its own key; returns its id.
async fn tenant_schedule(app: &Install, key: &str) -> String {
    let (status, body) = app
        .call(
            Method::POST,
            "/v1/schedules",
            Some(key),
            Some(json!({"name": "nightly", "cron": "0 3 * * *", "workflow": "three_step", "input": {"n": 1}})),
        )
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
        .admin(
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
    let s3 = s3_store().await;
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
        .call(
            Method::POST,
            "/v1/workflows/demo/runs",
            Some(&key),
            Some(json!({"name": "x", "wait": "1h"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{live}");
    let live: Uuid = live["id"].as_str().unwrap().parse().unwrap();
    wait_for_status(app.store(), live, RunStatus::Sleeping).await;

    let run = deprovision(&app, "keeper").await;
    assert_eq!(
        app.admin(Method::POST, "/v1/tenants/keeper/deprovision", None)
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
        app.call(Method::GET, "/v1/whoami", Some(&key), None)
            .await
            .0,
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
        .admin(
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
    assert_eq!(
        app.call(Method::GET, "/v1/whoami", Some(&key), None)
            .await
            .0,
        StatusCode::OK
    );
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
        .admin(
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
    assert_eq!(
        app.call(Method::GET, "/v1/whoami", Some(&key), None)
            .await
            .0,
        StatusCode::OK
    );
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
        .call(
            Method::POST,
            "/v1/workflows/three_step/runs",
            Some(&key),
            Some(json!({"n": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let finished: Uuid = started["id"].as_str().unwrap().parse().unwrap();
    app.wait_run(finished, RunStatus::Completed).await;
    // A mail ledger row of one of its steps, as a mailing step would leave.
    app.db
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
    let (_, body) = app.admin(Method::GET, "/v1/tenants/leaver", None).await;
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
        .admin(
            Method::POST,
            "/v1/workflows/waymark.retention/runs",
            Some(json!({"older_than": "0s"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sweep}");
    let sweep: Uuid = sweep["id"].as_str().unwrap().parse().unwrap();
    app.wait_run_advancing(sweep, RunStatus::Completed).await;
    let (status, body) = app
        .admin(Method::GET, &format!("/v1/runs/{run}"), None)
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
        .admin(Method::POST, &format!("/v1/runs/{run}/retry"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    crate::support::wait_for_run(app.store(), run, "waiting in retain", |r| {
        r.status == RunStatus::Waiting && r.state == "retain"
    })
    .await;
    app.stop().await;
}
