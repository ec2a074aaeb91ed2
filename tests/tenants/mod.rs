//! Tenant provisioning and deprovisioning as sagas, through the HTTP API and a real
//! runner, on both backends, against the SMTP and S3 test servers that `./test.sh`
//! starts (`scripts/test-services.sh`).
//!
//! Every failure test injects one fault (a schema that is someone else's, a bucket that
//! does not exist, an SMTP server rejecting the admin's address) and then looks at the
//! database catalog, the object store, the key rows and the resource rows to see that
//! nothing of the tenant remains. PostgreSQL roles are cluster-wide, so each test drops
//! the roles its installation made when it ends, pass or fail.
//!
//! # Layout
//! - this module: the installation under test ([`Install`], a [`TestApp`] with every
//!   shipped workflow) and what the tests look at (roles, schemas, stored objects, mail).
//! - [`provisioning`]: the happy path, the admin key, refused requests, taken slugs.
//! - [`failures`]: a failure at each step, cancellation, a crash mid-saga, two
//!   installations on one server; nothing of the tenant remains.
//! - [`deprovisioning`]: export, restore, cancellation, deletion after the retention,
//!   and the status enum against the database.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::Connection;
use uuid::Uuid;
use waymark_engine::{ManualClock, RunStatus, Store};
use waymark_services::{BlobStore, S3Config, S3Store};
use waymark_workflows::tenants::names::{role_name, schema_name, sqlite_file, storage_prefix};
use waymark_workflows::tenants::{record, TenantDeps, TenantStatus};

use crate::support::app::{test_s3, test_s3_config, Services, TestApp};
use crate::support::services::service_env;
use crate::support::{wait_for_status, wait_until, Backend, TestDb};

mod dashboard;
mod deprovisioning;
mod failures;
mod provisioning;

// ---------------------------------------------------------------------------------
// The services test.sh starts

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
            ..test_s3_config(service_env("WAYMARK_TEST_S3_BUCKET"))
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

/// A [`TestApp`] with every shipped workflow, the test servers (or the faults
/// [`Options`] injects) and what tests of tenants look at.
struct Install {
    // Dropped before the app and its database (fields drop in order): the roles go first.
    _roles: RoleSweeper,
    app: TestApp,
    deps: TenantDeps,
    installation: String,
}

impl std::ops::Deref for Install {
    type Target = TestApp;

    fn deref(&self) -> &TestApp {
        &self.app
    }
}

impl Install {
    async fn start(db: TestDb) -> Install {
        Self::with(db, Options::default()).await
    }

    async fn with(db: TestDb, options: Options) -> Install {
        let mut services = Services::test_servers()
            .smtp(options.smtp_addr, options.smtp_timeout)
            .tenant_retention(options.retention);
        if let Some(blobs) = options.blobs {
            services = services.blobs(blobs);
        }
        let mut app = TestApp::on(db)
            .with_api(waymark_api::ApiConfig {
                // A manual clock would put every request in one rate-limit second.
                rate_limit: 0,
                ..waymark_api::ApiConfig::default()
            })
            .with_services(services);
        if let Some(clock) = &options.clock {
            app = app.with_clock(clock);
        }
        if !options.runner {
            app = app.without_workers();
        }
        let app = app.spawn().await;
        let deps = app.deps.clone().expect("the shipped workflows' deps");
        let deps = TenantDeps::new(
            deps.store,
            deps.mailer,
            deps.blobs,
            deps.sealer,
            deps.data_dir,
            deps.tenant_retention,
        );
        let installation = deps.installation().await.unwrap().to_owned();
        Install {
            // The app deletes a PostgreSQL test's data directory itself.
            _roles: RoleSweeper::new(app.db(), &installation, None),
            app,
            deps,
            installation,
        }
    }

    async fn stop(self) {
        self.app.stop().await
    }

    /// `POST /v1/tenants`; asserts 202 and returns the provisioning run.
    async fn provision(&self, slug: &str, admin_email: &str) -> Uuid {
        let (status, body) = self
            .admin_call(Method::POST,
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
            .admin_call(Method::POST, &format!("/v1/keys/{key}/reveal"), None)
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
        test_s3()
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
        match self.db().backend {
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
                        .run_get(&waymark_engine::TenantScope::All, run)
                        .await
                        .unwrap()
                        .is_some_and(|r| r.status == status)
                }
            },
        )
        .await;
        self.store()
            .run_get(&waymark_engine::TenantScope::All, run)
            .await
            .unwrap()
            .unwrap()
    }
}
