//! PostgreSQL store: many worker processes share one database.
//!
//! Claims are one `UPDATE … FROM (SELECT … FOR UPDATE SKIP LOCKED)` statement. The hot
//! transitions (enter a state, retry, complete, for runs without parents, pending
//! cancellations or queued signals) commit in one statement whose CTEs update the run
//! and append its history row. Everything else goes through the shared rules in
//! `store/logic/` inside one transaction, with the run locked `FOR UPDATE`.
//!
//! Two pools: the runner's loop (claims, commits, releases, heartbeats, wait timeouts,
//! the next due time) uses a small one of its own, so API reads (or anything else holding connections) cannot make a
//! heartbeat wait until its lease expires. A transaction that ends a run notifies
//! [`ENDED_CHANNEL`] with the run id when someone may listen (a long poll watches the
//! run, or a dashboard follows every ending); the process's one LISTEN connection hands
//! both channels on (workers' wake-ups, long polls' endings).
//!
//! # Layout
//! Cut like `store/sqlite/`, so a reader finds the same thing in the same file:
//! - `mod.rs`: the store, its pools, migrations and readiness, wake-up subscriptions.
//! - `runs.rs`: run, history and signal rows; starting runs (alone or in a caller's
//!   transaction); reading, listing and deleting them.
//! - `claims.rs`: the runner's side, on its own pool: claims, commits (the
//!   one-statement fast path, else the shared rules), releases, progress, heartbeats,
//!   wait timeouts.
//! - `ops.rs`: the `Ops` primitives the shared rules run over, and the entry points that
//!   are one shared rule in one transaction (signals, operator actions).
//! - `keys.rs`: API keys and the audit log.
//! - `schedules.rs`: schedules, and the named leases that fence the scheduler.
//! - `workers.rs`: the worker registry.
//! - `listen.rs`: the LISTEN connection, and the marks that ask for endings to be
//!   announced (PostgreSQL only: SQLite wakes in process).

mod claims;
mod keys;
mod listen;
mod ops;
mod runs;
mod schedules;
mod workers;

pub(super) use keys::key_insert_in;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::error::StoreError;
use crate::store::schemas::{self, Schema};
use crate::store::{check_schema_not_newer, latest_version, Lease, RunEndings, StoreResult};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// The advisory lock `Store::migrate` holds ("waymark" in ASCII): one migrating process at a time.
const MIGRATE_LOCK: i64 = 0x0077_6179_6d61_726b;

/// The channel the `waymark_runs_notify_due` trigger notifies.
const CHANNEL: &str = "waymark_runs";

/// The channel a run's ending is notified on, with the run id as payload, in the
/// transaction that ends it (so a waiter never hears of an ending that rolled back).
/// Only when someone may listen: see [`NOTIFY_ENDED_IF_WANTED`].
pub const ENDED_CHANNEL: &str = "waymark_run_ended";

/// The condition, over a `waymark_runs` row, under which its ending is announced: a
/// long poll marked it `watched`, or some process follows every ending (migration
/// 0010). PostgreSQL serialises the commits of all transactions that notify, so a
/// NOTIFY nobody hears costs throughput for nothing. A macro so statements can
/// `concat!` it.
macro_rules! notify_ended_if_wanted {
    () => {
        "(watched OR EXISTS (SELECT 1 FROM waymark_followers f WHERE f.expires_at > now()))"
    };
}
use notify_ended_if_wanted;

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// The runner's claims, commits and heartbeats (see the module docs).
    worker_pool: PgPool,
    wake: Arc<watch::Sender<u64>>,
    endings: Arc<RunEndings>,
    listening: Arc<AtomicBool>,
    /// This process's row in `waymark_followers` while its pages follow every ending.
    process: Uuid,
    following: Arc<AtomicBool>,
    /// Workflows' own tables, migrated after the engine's (see `schemas.rs`).
    schemas: Arc<[Schema]>,
}

impl PgStore {
    /// Opens the main pool (`max_connections`) and the runner's (`worker_connections`,
    /// opened lazily, so a process that serves only the API never fills it).
    pub async fn connect(
        url: &str,
        max_connections: u32,
        worker_connections: u32,
    ) -> StoreResult<PgStore> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        let worker_pool = PgPoolOptions::new()
            .max_connections(worker_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with((*pool.connect_options()).clone());
        let mut store = Self::from_pool(pool);
        store.worker_pool = worker_pool;
        Ok(store)
    }

    /// A store on one pool for everything (no separate pool for the runner).
    pub fn from_pool(pool: PgPool) -> PgStore {
        let (wake, _) = watch::channel(0);
        PgStore {
            worker_pool: pool.clone(),
            pool,
            wake: Arc::new(wake),
            endings: Arc::default(),
            listening: Arc::new(AtomicBool::new(false)),
            process: Uuid::now_v7(),
            following: Arc::new(AtomicBool::new(false)),
            schemas: Arc::new([]),
        }
    }

    /// The runner's pool (the main pool for a store made by [`Self::from_pool`]).
    pub fn worker_pool(&self) -> &PgPool {
        &self.worker_pool
    }

    pub(super) fn endings(&self) -> &Arc<RunEndings> {
        &self.endings
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub(super) fn set_schemas(&mut self, schemas: Arc<[Schema]>) {
        self.schemas = schemas;
    }

    /// The engine's migrations, then the schemas', all under one advisory lock held by
    /// one connection, so processes migrating at once take turns (sqlx's own lock,
    /// taken again inside on the same session, is reentrant).
    pub(super) async fn migrate(&self) -> StoreResult<()> {
        let mut conn = self.pool.acquire().await?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATE_LOCK)
            .execute(&mut *conn)
            .await?;
        let mut migrated = check_schema_not_newer(&MIGRATOR, self.applied_version().await?);
        if migrated.is_ok() {
            migrated = MIGRATOR.run_direct(&mut *conn).await.map_err(Into::into);
        }
        let mut conn = schemas::Conn::Postgres(conn);
        if migrated.is_ok() {
            migrated = schemas::migrate(&mut conn, &self.schemas).await;
        }
        let schemas::Conn::Postgres(mut conn) = conn else {
            unreachable!("a PostgreSQL store's connection")
        };
        let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATE_LOCK)
            .execute(&mut *conn)
            .await;
        if unlocked.is_err() {
            // Closing the session is what releases a lock it still holds.
            drop(conn.detach());
        }
        migrated
    }

    async fn applied_version(&self) -> StoreResult<Option<i64>> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&self.pool)
            .await?;
        if !exists {
            return Ok(None);
        }
        Ok(
            sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    pub(super) async fn ready(&self) -> StoreResult<bool> {
        if self.applied_version().await? != Some(latest_version(&MIGRATOR)) {
            return Ok(false);
        }
        let mut conn = schemas::Conn::Postgres(self.pool.acquire().await?);
        schemas::ready(&mut conn, &self.schemas).await
    }

    /// Test support: the engine's migrations up to `version` only, as an older release
    /// left the database (to prove that such a database migrates forward).
    pub async fn migrate_engine_until(&self, version: i64) -> StoreResult<()> {
        let migrator = sqlx::migrate::Migrator {
            migrations: MIGRATOR
                .iter()
                .filter(|m| m.version <= version)
                .cloned()
                .collect::<Vec<_>>()
                .into(),
            ..sqlx::migrate::Migrator::DEFAULT
        };
        migrator.run(&self.pool).await?;
        Ok(())
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        let rx = self.wake.subscribe();
        self.ensure_listening();
        rx
    }
}

/// A duration as PostgreSQL's `make_interval(secs => …)` takes it.
fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A fenced write that changed no row found the lease gone: an error, never a success.
fn lease_applied(lease: &Lease, rows: u64) -> StoreResult<()> {
    if rows == 1 {
        Ok(())
    } else {
        Err(StoreError::LeaseLost {
            run_id: lease.run_id,
            token: lease.token,
        })
    }
}
