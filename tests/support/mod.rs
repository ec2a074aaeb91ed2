//! Test infrastructure: throwaway databases on both backends, the one test application
//! ([`app::TestApp`]), runners with handles, waiting on conditions with deadlines, and
//! the workflows tests drive.

pub mod app;
pub mod services;
pub mod workflows;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use waymark_engine::store::{PgStore, StoreConfig};
use waymark_engine::workflow::Registry;
use waymark_engine::{Engine, ManualClock, SharedClock, Store};
use waymark_workers::{Runner, RunnerConfig};

/// The server the tests use; `./test.sh` starts one on this address if none runs.
pub fn pg_admin_url() -> String {
    std::env::var("WAYMARK_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A database that exists for one test and is dropped (PostgreSQL) or deleted
/// (SQLite) when the test ends, pass or fail.
pub struct TestDb {
    pub backend: Backend,
    pub store: Store,
    /// PostgreSQL: the database URL; SQLite: the file path.
    pub location: String,
    pg_name: Option<String>,
    dir: Option<PathBuf>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Postgres => Self::postgres().await,
            Backend::Sqlite => Self::sqlite().await,
        }
    }

    /// A database with no tables at all, for tests of migration itself.
    pub async fn unmigrated(backend: Backend) -> TestDb {
        match backend {
            Backend::Postgres => Self::create_postgres(false).await,
            Backend::Sqlite => Self::create_sqlite(false).await,
        }
    }

    pub async fn postgres() -> TestDb {
        Self::create_postgres(true).await
    }

    pub async fn sqlite() -> TestDb {
        Self::create_sqlite(true).await
    }

    async fn create_postgres(migrate: bool) -> TestDb {
        let admin_url = pg_admin_url();
        let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at {admin_url} ({e}). Run the suite with ./test.sh, \
                 which starts it, or set WAYMARK_TEST_PG_URL to a server where user may CREATE DATABASE."
            )
        });
        let name = format!("waymark_test_{}", Uuid::now_v7().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let url = replace_db(&admin_url, &name);
        let store = Store::connect(&StoreConfig::Postgres {
            url: url.clone(),
            max_connections: 8,
            worker_connections: 4,
        })
        .await
        .expect("connect to the test database")
        .with_schemas([waymark_workflows::schemas(), waymark_api::schemas()].concat());
        if migrate {
            store.migrate().await.expect("migrate");
        }
        TestDb {
            backend: Backend::Postgres,
            store,
            location: url,
            pg_name: Some(name),
            dir: None,
        }
    }

    async fn create_sqlite(migrate: bool) -> TestDb {
        let dir = std::env::temp_dir().join(format!("waymark-test-{}", Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("waymark.db");
        let store = Store::connect(&StoreConfig::Sqlite { path: path.clone() })
            .await
            .expect("open sqlite")
            .with_schemas([waymark_workflows::schemas(), waymark_api::schemas()].concat());
        if migrate {
            store.migrate().await.expect("migrate");
        }
        TestDb {
            backend: Backend::Sqlite,
            store,
            location: path.display().to_string(),
            pg_name: None,
            dir: Some(dir),
        }
    }

    /// A second, independent connection to the same database (as a restarted process
    /// or another machine would have).
    pub async fn reopen(&self) -> Store {
        let store = self.connect_unmigrated().await;
        store.migrate().await.expect("migrate");
        store
    }

    pub async fn connect_unmigrated(&self) -> Store {
        let config = match self.backend {
            Backend::Postgres => StoreConfig::Postgres {
                url: self.location.clone(),
                max_connections: 8,
                worker_connections: 4,
            },
            Backend::Sqlite => StoreConfig::Sqlite {
                path: PathBuf::from(&self.location),
            },
        };
        Store::connect(&config)
            .await
            .expect("reopen")
            .with_schemas([waymark_workflows::schemas(), waymark_api::schemas()].concat())
    }

    pub fn pg(&self) -> &PgStore {
        match &self.store {
            Store::Postgres(pg) => pg,
            Store::Sqlite(_) => panic!("not a PostgreSQL test"),
        }
    }

    /// The directory holding the SQLite file (or a fresh one for PostgreSQL tests that
    /// need a data directory).
    pub fn data_dir(&self) -> PathBuf {
        match &self.dir {
            Some(dir) => dir.clone(),
            None => {
                let dir =
                    std::env::temp_dir().join(format!("waymark-data-{}", Uuid::now_v7().simple()));
                std::fs::create_dir_all(&dir).expect("temp dir");
                dir
            }
        }
    }

    /// An engine over this database with `registry` and `clock`.
    pub fn engine(&self, registry: Registry, clock: SharedClock) -> Engine {
        Engine::new(self.store.clone(), Arc::new(registry), clock)
    }

    /// Raw SQL against the database, for assertions the store API does not offer.
    pub async fn scalar_i64(&self, sql: &str) -> i64 {
        match &self.store {
            Store::Postgres(pg) => sqlx::query_scalar(sql)
                .fetch_one(pg.pool())
                .await
                .expect(sql),
            Store::Sqlite(lite) => sqlx::query_scalar(sql)
                .fetch_one(lite.pool())
                .await
                .expect(sql),
        }
    }

    /// Every value of a one-text-column query, for searching rows.
    pub async fn texts(&self, sql: &str) -> Vec<String> {
        let rows: Vec<Option<String>> = match &self.store {
            Store::Postgres(pg) => sqlx::query_scalar(sql)
                .fetch_all(pg.pool())
                .await
                .expect(sql),
            Store::Sqlite(lite) => sqlx::query_scalar(sql)
                .fetch_all(lite.pool())
                .await
                .expect(sql),
        };
        rows.into_iter().flatten().collect()
    }

    pub async fn execute(&self, sql: &str) -> Result<u64, sqlx::Error> {
        match &self.store {
            Store::Postgres(pg) => sqlx::query(sql)
                .execute(pg.pool())
                .await
                .map(|r| r.rows_affected()),
            Store::Sqlite(lite) => sqlx::query(sql)
                .execute(lite.pool())
                .await
                .map(|r| r.rows_affected()),
        }
    }
}

fn replace_db(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = base.rsplit_once('/').map(|(b, _)| b).unwrap_or(base);
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = self.pg_name.take() {
            let admin_url = pg_admin_url();
            // Drop runs outside any runtime guarantee: use a thread with its own runtime.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
                        let _ =
                            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                                .execute(&mut admin)
                                .await;
                    }
                });
            })
            .join();
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Polls `probe` until it yields a value, failing the test with `what` after
/// `deadline`. This is how tests wait: on an observable condition, never on a fixed
/// sleep; the pause between looks is only the polling interval.
pub async fn poll_until<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = tokio::time::Instant::now();
    loop {
        let last = match probe().await {
            Ok(value) => return value,
            Err(last) => last,
        };
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for: {what}{last}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `condition` until it holds, failing the test with `what` after `deadline`.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    poll_until(what, deadline, || {
        let check = condition();
        async move {
            if check.await {
                Ok(())
            } else {
                Err(String::new())
            }
        }
    })
    .await
}

/// Waits until run `id` has `status`, and returns it.
pub async fn wait_for_status(
    store: &Store,
    id: Uuid,
    status: waymark_engine::RunStatus,
) -> waymark_engine::Run {
    wait_for_run(store, id, &format!("status {status}"), |run| {
        run.status == status
    })
    .await
}

/// Waits until run `id` satisfies `condition` (30 s deadline), and returns it.
pub async fn wait_for_run(
    store: &Store,
    id: Uuid,
    what: &str,
    condition: impl Fn(&waymark_engine::Run) -> bool,
) -> waymark_engine::Run {
    let what = format!("run {id} to reach {what}");
    poll_until(&what, Duration::from_secs(30), || async {
        let run = store
            .run_get(&waymark_engine::TenantScope::All, id)
            .await
            .expect("run_get")
            .expect("run exists");
        if condition(&run) {
            Ok(run)
        } else {
            Err(format!("; last seen {run:?}"))
        }
    })
    .await
}

/// Runner settings for tests: quick polls and short leases.
pub fn test_runner_config() -> RunnerConfig {
    RunnerConfig {
        concurrency: 4,
        lease: Duration::from_secs(5),
        poll_interval: Duration::from_millis(25),
        shutdown_grace: Duration::from_secs(5),
        ..RunnerConfig::default()
    }
}

/// A runner started in the background, stopped (gracefully) by [`RunnerHandle::stop`].
pub struct RunnerHandle {
    pub worker_id: Uuid,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

pub fn spawn_runner(engine: Engine, config: RunnerConfig) -> RunnerHandle {
    let runner = Runner::new(engine, config);
    let worker_id = runner.worker_id();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        runner.run(token).await.expect("runner");
    });
    RunnerHandle {
        worker_id,
        shutdown,
        task,
    }
}

impl RunnerHandle {
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.expect("runner task");
    }
}

/// The transition coverage log (`WAYMARK_EDGE_LOG`) for a `waymark` process started
/// with a cleared environment, so the edges it takes count too.
pub fn edge_log_env() -> Option<(&'static str, std::ffi::OsString)> {
    let env = waymark_engine::edge_log::ENV;
    std::env::var_os(env).map(|dir| (env, dir))
}

/// A manual clock at a whole second near now (SQLite keeps milliseconds, so whole
/// seconds keep exact arithmetic exact on both backends).
pub fn manual_clock() -> (ManualClock, SharedClock) {
    use chrono::SubsecRound;
    let clock = ManualClock::new(chrono::Utc::now().trunc_subsecs(0));
    (clock.clone(), Arc::new(clock))
}

pub fn start_req(workflow: &str, input: serde_json::Value) -> waymark_engine::StartRun {
    waymark_engine::StartRun {
        tenant: "acme".into(),
        workflow: workflow.into(),
        input,
        idempotency_key: None,
        tags: vec![],
        actor: "test".into(),
    }
}

/// Declares each listed `async fn name(db: TestDb)` as a test on PostgreSQL and on
/// SQLite: `postgres::name` and `sqlite::name`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::TestDb::postgres().await).await
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::TestDb::sqlite().await).await
                }
            )*
        }
    };
}
pub(crate) use on_both_backends;
