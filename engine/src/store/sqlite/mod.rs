//! Embedded SQLite store: one process, one database file, nothing to install.
//!
//! The pool has a single connection. Embedded mode is one process by design, so
//! serialising every statement through one connection costs little and rules out
//! SQLITE_BUSY upgrade failures between concurrent transactions; it also makes every
//! transaction here as isolated as PostgreSQL's row locks make them there. Every
//! transition goes through the shared rules in `store/logic/`. Timestamps are integer
//! milliseconds (UTC); "database time" for leases is SQLite's own clock.
//!
//! # Layout
//! Cut like `store/postgres/`, so a reader finds the same thing in the same file:
//! - `mod.rs`: the store, its one connection, migrations and readiness, in-process
//!   wake-ups, and the conversions between SQLite's columns and Rust values.
//! - `runs.rs`: run, history, signal and compensation rows; starting runs (alone or in
//!   a caller's transaction); reading, listing and deleting them.
//! - `claims.rs`: the runner's side: claims, commits, releases, progress, heartbeats,
//!   wait timeouts.
//! - `ops.rs`: the `Ops` primitives the shared rules run over, and the entry points that
//!   are one shared rule in one transaction (signals, operator actions).
//! - `keys.rs`: API keys and the audit log.
//! - `schedules.rs`: schedules, and the named leases that fence the scheduler.
//! - `workers.rs`: the worker registry.
//!
//! There is no `listen.rs`: with one process, wake-ups and endings are announced in
//! process after the commits that cause them.

mod claims;
mod keys;
mod ops;
mod runs;
mod schedules;
mod workers;

pub(super) use keys::key_insert_in;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::error::StoreError;
use crate::store::schemas::{self, Schema};
use crate::store::{
    check_schema_not_newer, latest_version, to_json, Lease, Run, RunEndings, RunStatus, StoreResult,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// SQLite's current time in Unix milliseconds.
const DB_NOW: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    wake: Arc<watch::Sender<u64>>,
    /// Long polls waiting for runs to end, woken after the commits that end them.
    endings: Arc<RunEndings>,
    /// Workflows' own tables, migrated after the engine's (see `schemas.rs`).
    schemas: Arc<[Schema]>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and its folder.
    pub async fn open(path: &Path) -> StoreResult<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Database(sqlx::Error::Configuration(
                    format!("cannot create data directory {}: {e}", dir.display()).into(),
                ))
            })?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a transition reported committed survives power loss, not only a crash.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        let (wake, _) = watch::channel(0);
        Ok(SqliteStore {
            pool,
            wake: Arc::new(wake),
            endings: Arc::default(),
            schemas: Arc::new([]),
        })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    fn bump(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Wakes local workers if `run` became claimable.
    fn bump_if_claimable(&self, run: &Run) {
        if matches!(run.status, RunStatus::Pending | RunStatus::Compensating)
            && run.locked_by.is_none()
        {
            self.bump();
        }
    }

    pub(super) fn set_schemas(&mut self, schemas: Arc<[Schema]>) {
        self.schemas = schemas;
    }

    /// The engine's migrations, then the schemas'. SQLite has one writer at a time, and
    /// each migration commits with its record.
    pub(super) async fn migrate(&self) -> StoreResult<()> {
        check_schema_not_newer(&MIGRATOR, self.applied_version().await?)?;
        MIGRATOR.run(&self.pool).await?;
        let mut conn = schemas::Conn::Sqlite(self.pool.acquire().await?);
        schemas::migrate(&mut conn, &self.schemas).await
    }

    async fn applied_version(&self) -> StoreResult<Option<i64>> {
        let exists: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_one(&self.pool)
        .await?;
        if exists == 0 {
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
        let mut conn = schemas::Conn::Sqlite(self.pool.acquire().await?);
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
        self.wake.subscribe()
    }

    pub(super) fn endings(&self) -> &Arc<RunEndings> {
        &self.endings
    }

    /// Wakes this process's workers (after a caller's transaction started runs).
    pub fn wake(&self) {
        self.bump();
    }
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(v: i64) -> StoreResult<DateTime<Utc>> {
    Utc.timestamp_millis_opt(v)
        .single()
        .ok_or_else(|| StoreError::Corrupt(format!("timestamp {v} out of range")))
}

fn opt_from_ms(v: Option<i64>) -> StoreResult<Option<DateTime<Utc>>> {
    v.map(from_ms).transpose()
}

fn uuid(s: &str) -> StoreResult<Uuid> {
    Uuid::from_str(s).map_err(|e| StoreError::Corrupt(format!("uuid {s:?}: {e}")))
}

fn json(s: &str) -> StoreResult<Value> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("json: {e}")))
}

fn opt_json(s: Option<String>) -> StoreResult<Option<Value>> {
    s.as_deref().map(json).transpose()
}

fn typed<T: serde::de::DeserializeOwned>(
    s: Option<String>,
    column: &str,
) -> StoreResult<Option<T>> {
    super::opt_from_json(opt_json(s)?, column)
}

fn text<T: serde::Serialize>(value: &Option<T>) -> Option<String> {
    to_json(value).map(|v| v.to_string())
}

fn lease_ms(d: Duration) -> i64 {
    d.as_millis() as i64
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
