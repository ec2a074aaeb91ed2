//! Embedded SQLite store: one process, one database file, nothing to install.
//!
//! The pool has a single connection. Embedded mode is one process by design, so
//! serialising every statement through one connection costs little and rules out
//! SQLITE_BUSY upgrade failures between concurrent transactions; it also makes every
//! transaction here as isolated as PostgreSQL's row locks make them there. Every
//! transition goes through the shared rules in `logic.rs`. Timestamps are integer
//! milliseconds (UTC); "database time" for leases is SQLite's own clock.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};
use tokio::sync::watch;
use uuid::Uuid;

use super::logic::{self, Ops};
use super::schemas::{self, Schema};
use super::RunEndings;
use super::{
    check_schema_not_newer, json_error, latest_version, parse_error, parse_status, to_json,
    AuditEntry, CatchUp, ClaimRequest, Commit, CompensationRecord, Held, HistoryEntry, KeyRecord,
    Lease, NewAudit, NewHistory, NewKey, NewRun, NewSignal, Overlap, Run, RunCount, RunFilter,
    RunStatus, Schedule, ScheduleAdvance, SealedSecret, SealedTake, SignalReceipt, SignalRecord,
    Started, StoreResult, TenantScope, WorkerInfo,
};
use crate::error::StoreError;

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

#[derive(sqlx::FromRow)]
struct RunRow {
    id: String,
    tenant: String,
    workflow: String,
    workflow_version: i64,
    status: String,
    state: String,
    state_data: String,
    input: String,
    output: Option<String>,
    error: Option<String>,
    idempotency_key: Option<String>,
    capability: Option<String>,
    visit: i64,
    attempt: i64,
    due_at: Option<i64>,
    lease_token: i64,
    locked_by: Option<String>,
    lease_expires_at: Option<i64>,
    progress_pct: Option<f64>,
    progress_message: Option<String>,
    parent_id: Option<String>,
    parent_visit: Option<i64>,
    child_index: Option<i64>,
    waiting_for: Option<String>,
    received: Option<String>,
    cancel_request: Option<String>,
    ending: Option<String>,
    held: bool,
    tags: String,
    created_at: i64,
    updated_at: i64,
    finished_at: Option<i64>,
}

impl TryFrom<RunRow> for Run {
    type Error = StoreError;

    fn try_from(r: RunRow) -> StoreResult<Run> {
        Ok(Run {
            id: uuid(&r.id)?,
            tenant: r.tenant,
            workflow: r.workflow,
            workflow_version: r.workflow_version as u32,
            status: parse_status(&r.status)?,
            state: r.state,
            state_data: json(&r.state_data)?,
            input: json(&r.input)?,
            output: opt_json(r.output)?,
            error: parse_error(opt_json(r.error)?)?,
            idempotency_key: r.idempotency_key,
            capability: r.capability,
            visit: r.visit,
            attempt: r.attempt as i32,
            due_at: opt_from_ms(r.due_at)?,
            lease_token: r.lease_token,
            locked_by: r.locked_by.as_deref().map(uuid).transpose()?,
            lease_expires_at: opt_from_ms(r.lease_expires_at)?,
            progress_pct: r.progress_pct.map(|p| p as f32),
            progress_message: r.progress_message,
            parent_id: r.parent_id.as_deref().map(uuid).transpose()?,
            parent_visit: r.parent_visit,
            child_index: r.child_index.map(|i| i as i32),
            waiting_for: typed(r.waiting_for, "waiting_for")?,
            received: typed(r.received, "received")?,
            cancel_request: typed(r.cancel_request, "cancel_request")?,
            ending: typed(r.ending, "ending")?,
            held: r.held,
            claimed_from: None,
            tags: serde_json::from_str(&r.tags)
                .map_err(|e| StoreError::Corrupt(format!("tags: {e}")))?,
            created_at: from_ms(r.created_at)?,
            updated_at: from_ms(r.updated_at)?,
            finished_at: opt_from_ms(r.finished_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct HistoryRow {
    id: i64,
    run_id: String,
    from_state: Option<String>,
    to_state: String,
    from_status: Option<String>,
    to_status: String,
    cause: String,
    visit: i64,
    attempt: i64,
    actor: String,
    worker_id: Option<String>,
    started_at: i64,
    committed_at: i64,
    error: Option<String>,
}

#[derive(sqlx::FromRow)]
struct SignalRow {
    id: String,
    run_id: String,
    name: String,
    payload: String,
    idempotency_key: Option<String>,
    actor: String,
    received_at: i64,
    status: String,
    workflow_version: i64,
    consumed_visit: Option<i64>,
}

impl TryFrom<SignalRow> for SignalRecord {
    type Error = StoreError;

    fn try_from(s: SignalRow) -> StoreResult<Self> {
        Ok(SignalRecord {
            id: uuid(&s.id)?,
            run_id: uuid(&s.run_id)?,
            name: s.name,
            payload: json(&s.payload)?,
            idempotency_key: s.idempotency_key,
            actor: s.actor,
            received_at: from_ms(s.received_at)?,
            status: s.status,
            version: s.workflow_version as u32,
            consumed_visit: s.consumed_visit,
        })
    }
}

#[derive(sqlx::FromRow)]
struct CompensationRow {
    run_id: String,
    visit: i64,
    state: String,
    state_data: String,
    status: String,
}

impl TryFrom<CompensationRow> for CompensationRecord {
    type Error = StoreError;

    fn try_from(c: CompensationRow) -> StoreResult<Self> {
        Ok(CompensationRecord {
            run_id: uuid(&c.run_id)?,
            visit: c.visit,
            state: c.state,
            state_data: json(&c.state_data)?,
            status: c.status,
        })
    }
}

#[derive(sqlx::FromRow)]
struct WorkerRow {
    id: String,
    host: String,
    pid: i64,
    version: String,
    capabilities: String,
    workflows: String,
    started_at: i64,
    last_heartbeat_at: i64,
    runs_in_hand: i64,
    stopped_at: Option<i64>,
}

impl TryFrom<WorkerRow> for WorkerInfo {
    type Error = StoreError;

    fn try_from(w: WorkerRow) -> StoreResult<WorkerInfo> {
        Ok(WorkerInfo {
            id: uuid(&w.id)?,
            host: w.host,
            pid: w.pid as i32,
            version: w.version,
            capabilities: serde_json::from_str(&w.capabilities)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            workflows: serde_json::from_str(&w.workflows)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?,
            started_at: from_ms(w.started_at)?,
            last_heartbeat_at: from_ms(w.last_heartbeat_at)?,
            runs_in_hand: w.runs_in_hand as i32,
            stopped_at: opt_from_ms(w.stopped_at)?,
        })
    }
}

fn rows_to_runs(rows: Vec<RunRow>) -> StoreResult<Vec<Run>> {
    rows.into_iter().map(Run::try_from).collect()
}

/// Runs one of the shared rules in its own transaction, then wakes the waiters of the
/// runs it ended.
macro_rules! in_tx {
    ($store:ident, $ops:ident => $body:expr) => {{
        let mut tx_ops = SqliteOps {
            tx: $store.pool.begin().await?,
            ended: Vec::new(),
        };
        let value = {
            let $ops = &mut tx_ops;
            $body.await?
        };
        tx_ops.tx.commit().await?;
        for id in tx_ops.ended {
            $store.endings.ended(id);
        }
        Ok(value)
    }};
}

struct SqliteOps {
    tx: Transaction<'static, Sqlite>,
    /// Runs this transaction ended, announced once it commits.
    ended: Vec<Uuid>,
}

impl Ops for SqliteOps {
    async fn db_now(&mut self) -> StoreResult<DateTime<Utc>> {
        let now: i64 = sqlx::query_scalar(&format!("SELECT {DB_NOW}"))
            .fetch_one(&mut *self.tx)
            .await?;
        from_ms(now)
    }

    async fn run_lock(&mut self, id: Uuid) -> StoreResult<Option<Run>> {
        let row: Option<RunRow> = sqlx::query_as("SELECT * FROM waymark_runs WHERE id = ?1")
            .bind(id.to_string())
            .fetch_optional(&mut *self.tx)
            .await?;
        row.map(Run::try_from).transpose()
    }

    async fn run_write(&mut self, r: &Run) -> StoreResult<()> {
        sqlx::query(
            r#"UPDATE waymark_runs SET
                   workflow_version = ?2, status = ?3, state = ?4, state_data = ?5, input = ?6,
                   output = ?7, error = ?8, capability = ?9, visit = ?10, attempt = ?11,
                   due_at = ?12, lease_token = ?13, locked_by = ?14, lease_expires_at = ?15,
                   progress_pct = ?16, progress_message = ?17, waiting_for = ?18, received = ?19,
                   cancel_request = ?20, ending = ?21, held = ?22, updated_at = ?23,
                   finished_at = ?24
               WHERE id = ?1"#,
        )
        .bind(r.id.to_string())
        .bind(r.workflow_version as i64)
        .bind(r.status.as_str())
        .bind(&r.state)
        .bind(r.state_data.to_string())
        .bind(r.input.to_string())
        .bind(r.output.as_ref().map(|o| o.to_string()))
        .bind(json_error(&r.error).map(|v| v.to_string()))
        .bind(&r.capability)
        .bind(r.visit)
        .bind(r.attempt as i64)
        .bind(r.due_at.map(ms))
        .bind(r.lease_token)
        .bind(r.locked_by.map(|u| u.to_string()))
        .bind(r.lease_expires_at.map(ms))
        .bind(r.progress_pct.map(|p| p as f64))
        .bind(&r.progress_message)
        .bind(text(&r.waiting_for))
        .bind(text(&r.received))
        .bind(text(&r.cancel_request))
        .bind(text(&r.ending))
        .bind(r.held)
        .bind(ms(r.updated_at))
        .bind(r.finished_at.map(ms))
        .execute(&mut *self.tx)
        .await?;
        if r.status.is_terminal() {
            self.ended.push(r.id);
        }
        Ok(())
    }

    async fn child_insert(&mut self, new: &NewRun, parent: (Uuid, i64, i32)) -> StoreResult<bool> {
        Ok(insert_run(&mut self.tx, new, Some(parent)).await?.is_some())
    }

    async fn children(&mut self, parent: Uuid, visit: i64) -> StoreResult<Vec<Run>> {
        let rows: Vec<RunRow> = sqlx::query_as(
            "SELECT * FROM waymark_runs WHERE parent_id = ?1 AND parent_visit = ?2 ORDER BY child_index",
        )
        .bind(parent.to_string())
        .bind(visit)
        .fetch_all(&mut *self.tx)
        .await?;
        rows_to_runs(rows)
    }

    async fn children_active(&mut self, parent: Uuid) -> StoreResult<Vec<Uuid>> {
        let ids: Vec<String> = sqlx::query_scalar(
            r#"SELECT id FROM waymark_runs WHERE parent_id = ?1
                 AND status NOT IN ('completed', 'failed', 'cancelled') ORDER BY child_index"#,
        )
        .bind(parent.to_string())
        .fetch_all(&mut *self.tx)
        .await?;
        ids.iter().map(|s| uuid(s)).collect()
    }

    async fn children_to_compensate(&mut self, parent: Uuid) -> StoreResult<Vec<Uuid>> {
        let ids: Vec<String> = sqlx::query_scalar(
            r#"SELECT r.id FROM waymark_runs r WHERE r.parent_id = ?1 AND r.status = 'completed'
                 AND EXISTS (SELECT 1 FROM waymark_compensations c
                             WHERE c.run_id = r.id AND c.status = 'pending')
               ORDER BY r.parent_visit DESC, r.child_index DESC"#,
        )
        .bind(parent.to_string())
        .fetch_all(&mut *self.tx)
        .await?;
        ids.iter().map(|s| uuid(s)).collect()
    }

    async fn audit_insert(&mut self, entry: &NewAudit) -> StoreResult<()> {
        insert_audit(&mut self.tx, entry).await
    }

    async fn history_insert(&mut self, h: &NewHistory) -> StoreResult<()> {
        sqlx::query(
            r#"INSERT INTO waymark_history (run_id, from_state, to_state, from_status, to_status,
                   cause, visit, attempt, actor, worker_id, started_at, committed_at, error)
               VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"#,
        )
        .bind(h.run_id.to_string())
        .bind(&h.from_state)
        .bind(&h.to_state)
        .bind(h.from_status.map(|s| s.as_str()))
        .bind(h.to_status.as_str())
        .bind(&h.cause)
        .bind(h.visit)
        .bind(h.attempt as i64)
        .bind(&h.actor)
        .bind(h.worker_id.map(|u| u.to_string()))
        .bind(ms(h.started_at))
        .bind(ms(h.committed_at))
        .bind(json_error(&h.error).map(|v| v.to_string()))
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn signal_by_key(&mut self, run: Uuid, key: &str) -> StoreResult<Option<Uuid>> {
        let id: Option<String> = sqlx::query_scalar(
            "SELECT id FROM waymark_signals WHERE run_id = ?1 AND idempotency_key = ?2",
        )
        .bind(run.to_string())
        .bind(key)
        .fetch_optional(&mut *self.tx)
        .await?;
        id.as_deref().map(uuid).transpose()
    }

    async fn signal_insert(&mut self, run: Uuid, s: &NewSignal) -> StoreResult<()> {
        sqlx::query(
            r#"INSERT INTO waymark_signals (id, run_id, name, payload, idempotency_key, actor,
                   received_at, workflow_version)
               VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"#,
        )
        .bind(s.id.to_string())
        .bind(run.to_string())
        .bind(&s.name)
        .bind(s.payload.to_string())
        .bind(&s.idempotency_key)
        .bind(&s.actor)
        .bind(ms(s.now))
        .bind(s.version as i64)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn signal_oldest_queued(
        &mut self,
        run: Uuid,
        names: &[String],
    ) -> StoreResult<Option<SignalRecord>> {
        let row: Option<SignalRow> = sqlx::query_as(
            r#"SELECT * FROM waymark_signals WHERE run_id = ?1 AND status = 'queued'
                 AND name IN (SELECT value FROM json_each(?2))
               ORDER BY received_at, rowid LIMIT 1"#,
        )
        .bind(run.to_string())
        .bind(serde_json::json!(names).to_string())
        .fetch_optional(&mut *self.tx)
        .await?;
        row.map(SignalRecord::try_from).transpose()
    }

    async fn signals_queued(&mut self, run: Uuid) -> StoreResult<Vec<SignalRecord>> {
        let rows: Vec<SignalRow> = sqlx::query_as(
            "SELECT * FROM waymark_signals WHERE run_id = ?1 AND status = 'queued' ORDER BY received_at, rowid",
        )
        .bind(run.to_string())
        .fetch_all(&mut *self.tx)
        .await?;
        rows.into_iter().map(SignalRecord::try_from).collect()
    }

    async fn signal_set_status(
        &mut self,
        id: Uuid,
        status: &str,
        visit: Option<i64>,
    ) -> StoreResult<()> {
        sqlx::query("UPDATE waymark_signals SET status = ?2, consumed_visit = ?3 WHERE id = ?1")
            .bind(id.to_string())
            .bind(status)
            .bind(visit)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn compensation_insert(&mut self, c: &CompensationRecord) -> StoreResult<()> {
        sqlx::query(
            r#"INSERT INTO waymark_compensations (run_id, visit, state, state_data)
               VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING"#,
        )
        .bind(c.run_id.to_string())
        .bind(c.visit)
        .bind(&c.state)
        .bind(c.state_data.to_string())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn compensation_next(&mut self, run: Uuid) -> StoreResult<Option<CompensationRecord>> {
        let row: Option<CompensationRow> = sqlx::query_as(
            r#"SELECT * FROM waymark_compensations WHERE run_id = ?1 AND status = 'pending'
               ORDER BY visit DESC LIMIT 1"#,
        )
        .bind(run.to_string())
        .fetch_optional(&mut *self.tx)
        .await?;
        row.map(CompensationRecord::try_from).transpose()
    }

    async fn compensation_set(&mut self, run: Uuid, visit: i64, status: &str) -> StoreResult<()> {
        sqlx::query(
            "UPDATE waymark_compensations SET status = ?3 WHERE run_id = ?1 AND visit = ?2",
        )
        .bind(run.to_string())
        .bind(visit)
        .bind(status)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }
}

async fn insert_run(
    conn: &mut sqlx::SqliteConnection,
    new: &NewRun,
    parent: Option<(Uuid, i64, i32)>,
) -> StoreResult<Option<Run>> {
    let inserted: Option<RunRow> = sqlx::query_as(
        r#"INSERT INTO waymark_runs (id, tenant, workflow, workflow_version, status, state,
               state_data, input, idempotency_key, capability, visit, attempt, due_at,
               created_at, updated_at, parent_id, parent_visit, child_index, tags)
           VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?6, ?7, ?8, ?9, 1, 0, ?10, ?10, ?10, ?11, ?12, ?13, ?14)
           ON CONFLICT DO NOTHING
           RETURNING *"#,
    )
    .bind(new.id.to_string())
    .bind(&new.tenant)
    .bind(&new.workflow)
    .bind(new.workflow_version as i64)
    .bind(&new.state)
    .bind(new.state_data.to_string())
    .bind(new.input.to_string())
    .bind(&new.idempotency_key)
    .bind(&new.capability)
    .bind(ms(new.now))
    .bind(parent.map(|p| p.0.to_string()))
    .bind(parent.map(|p| p.1))
    .bind(parent.map(|p| p.2 as i64))
    .bind(serde_json::json!(new.tags).to_string())
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = inserted else {
        return Ok(None);
    };
    let run = Run::try_from(row)?;
    for tag in &new.tags {
        sqlx::query("INSERT OR IGNORE INTO waymark_run_tags (run_id, tag) VALUES (?1, ?2)")
            .bind(run.id.to_string())
            .bind(tag)
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query(
        r#"INSERT INTO waymark_history (run_id, from_state, to_state, from_status,
               to_status, cause, visit, attempt, actor, started_at, committed_at)
           VALUES (?1, NULL, ?2, NULL, 'pending', 'started', 1, 0, ?3, ?4, ?4)"#,
    )
    .bind(run.id.to_string())
    .bind(&run.state)
    .bind(&new.actor)
    .bind(ms(new.now))
    .execute(&mut *conn)
    .await?;
    if new.compensable {
        sqlx::query(
            "INSERT INTO waymark_compensations (run_id, visit, state, state_data) VALUES (?1, 1, ?2, ?3)",
        )
        .bind(run.id.to_string())
        .bind(&run.state)
        .bind(run.state_data.to_string())
        .execute(&mut *conn)
        .await?;
    }
    Ok(Some(run))
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

    pub(super) async fn runs_unfinished(&self, ids: &[Uuid]) -> StoreResult<Vec<Uuid>> {
        let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
        let found: Vec<String> = sqlx::query_scalar(
            r#"SELECT id FROM waymark_runs
               WHERE id IN (SELECT value FROM json_each(?1))
                 AND status NOT IN ('completed', 'failed', 'cancelled')"#,
        )
        .bind(serde_json::to_string(&ids).map_err(|e| StoreError::Corrupt(e.to_string()))?)
        .fetch_all(&self.pool)
        .await?;
        found.iter().map(|id| uuid(id)).collect()
    }

    pub(super) async fn run_start(&self, new: NewRun) -> StoreResult<Started> {
        let mut tx = self.pool.begin().await?;
        let started = self.run_start_in(&mut tx, new).await?;
        tx.commit().await?;
        if started.created {
            self.bump();
        }
        Ok(started)
    }

    /// Starts a run inside the caller's transaction (`&mut *tx` from this store's
    /// pool), so a business row and its run commit together. The pool has one
    /// connection: use only the transaction until it ends, and call [`Self::wake`] after
    /// the commit so local workers look at once.
    pub async fn run_start_in(
        &self,
        conn: &mut sqlx::SqliteConnection,
        new: NewRun,
    ) -> StoreResult<Started> {
        if let Some(run) = insert_run(conn, &new, None).await? {
            return Ok(Started { run, created: true });
        }
        let key = new.idempotency_key.clone().unwrap_or_default();
        let row: Option<RunRow> = sqlx::query_as(
            "SELECT * FROM waymark_runs WHERE tenant = ?1 AND workflow = ?2 AND idempotency_key = ?3",
        )
        .bind(&new.tenant)
        .bind(&new.workflow)
        .bind(&key)
        .fetch_optional(&mut *conn)
        .await?;
        let run = Run::try_from(row.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "run {} was not inserted and no run holds its key",
                new.id
            ))
        })?)?;
        if run.input != new.input {
            return Err(StoreError::IdempotencyConflict {
                key,
                existing: run.id,
            });
        }
        Ok(Started {
            run,
            created: false,
        })
    }

    /// Wakes this process's workers (after a caller's transaction started runs).
    pub fn wake(&self) {
        self.bump();
    }

    pub(super) async fn run_get(&self, scope: &TenantScope, id: Uuid) -> StoreResult<Option<Run>> {
        let row: Option<RunRow> = sqlx::query_as(
            "SELECT * FROM waymark_runs WHERE id = ?1 AND (?2 IS NULL OR tenant = ?2)",
        )
        .bind(id.to_string())
        .bind(scope.tenant())
        .fetch_optional(&self.pool)
        .await?;
        row.map(Run::try_from).transpose()
    }

    pub(super) async fn run_children(&self, parent: Uuid, visit: i64) -> StoreResult<Vec<Run>> {
        let rows: Vec<RunRow> = sqlx::query_as(
            "SELECT * FROM waymark_runs WHERE parent_id = ?1 AND parent_visit = ?2 ORDER BY child_index",
        )
        .bind(parent.to_string())
        .bind(visit)
        .fetch_all(&self.pool)
        .await?;
        rows_to_runs(rows)
    }

    pub(super) async fn run_history(
        &self,
        scope: &TenantScope,
        id: Uuid,
        after: Option<i64>,
        limit: i64,
    ) -> StoreResult<Option<Vec<HistoryEntry>>> {
        if self.run_get(scope, id).await?.is_none() {
            return Ok(None);
        }
        // History ids start at 1, so 0 is "from the start" and the range stays one the
        // (run_id, id) index answers.
        let rows: Vec<HistoryRow> = sqlx::query_as(
            "SELECT * FROM waymark_history WHERE run_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        )
        .bind(id.to_string())
        .bind(after.unwrap_or(0))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(history_entry)
            .collect::<StoreResult<Vec<_>>>()
            .map(Some)
    }

    pub(super) async fn runs_history(
        &self,
        scope: &TenantScope,
        ids: &[Uuid],
    ) -> StoreResult<Vec<HistoryEntry>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = sqlx::QueryBuilder::<Sqlite>::new(
            "SELECT h.* FROM waymark_history h JOIN waymark_runs r ON r.id = h.run_id WHERE h.run_id IN (",
        );
        let mut list = q.separated(", ");
        for id in ids {
            list.push_bind(id.to_string());
        }
        q.push(")");
        if let Some(tenant) = scope.tenant() {
            q.push(" AND r.tenant = ").push_bind(tenant.to_owned());
        }
        q.push(" ORDER BY h.run_id, h.id");
        let rows: Vec<HistoryRow> = q.build_query_as().fetch_all(&self.pool).await?;
        rows.into_iter().map(history_entry).collect()
    }

    pub(super) async fn run_signals(
        &self,
        scope: &TenantScope,
        id: Uuid,
        after: Option<Uuid>,
        limit: i64,
    ) -> StoreResult<Option<Vec<SignalRecord>>> {
        if self.run_get(scope, id).await?.is_none() {
            return Ok(None);
        }
        // Signal ids are UUIDv7s made on receipt: their order is the order of arrival
        // (as text too: lowercase hex sorts like the bytes).
        let rows: Vec<SignalRow> = sqlx::query_as(
            "SELECT * FROM waymark_signals WHERE run_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        )
        .bind(id.to_string())
        .bind(after.unwrap_or(Uuid::nil()).to_string())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(SignalRecord::try_from)
            .collect::<StoreResult<Vec<_>>>()
            .map(Some)
    }

    pub(super) async fn run_compensations(&self, id: Uuid) -> StoreResult<Vec<CompensationRecord>> {
        let rows: Vec<CompensationRow> =
            sqlx::query_as("SELECT * FROM waymark_compensations WHERE run_id = ?1 ORDER BY visit")
                .bind(id.to_string())
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter().map(CompensationRecord::try_from).collect()
    }

    pub(super) async fn run_claim(&self, req: &ClaimRequest) -> StoreResult<Vec<Run>> {
        let workflows = serde_json::json!(req.workflows).to_string();
        let capabilities = serde_json::json!(req.capabilities).to_string();
        // Select, then update: SQLite's RETURNING shows only new values, and the status
        // a run is claimed from feeds the timer-lateness metric. One connection makes
        // the two statements as good as one.
        let mut tx = self.pool.begin().await?;
        let due: Vec<(String, String)> = sqlx::query_as(&format!(
            r#"SELECT r.id, r.status FROM waymark_runs r
               WHERE ((r.status IN ('pending', 'sleeping', 'retrying') AND r.due_at <= ?1)
                      OR (r.status = 'compensating' AND r.locked_by IS NULL AND r.due_at <= ?1)
                      OR (r.status IN ('running', 'compensating') AND r.lease_expires_at < {DB_NOW}))
                 AND EXISTS (SELECT 1 FROM json_each(?2) k
                             WHERE json_extract(k.value, '$[0]') = r.workflow
                               AND r.workflow_version <= json_extract(k.value, '$[1]'))
                 AND (r.capability IS NULL
                      OR r.capability IN (SELECT value FROM json_each(?3))
                      OR r.status = 'compensating')
                 AND r.id NOT IN (SELECT value FROM json_each(?5))
               ORDER BY r.due_at
               LIMIT ?4"#
        ))
        .bind(ms(req.now))
        .bind(workflows)
        .bind(capabilities)
        .bind(req.limit as i64)
        .bind(serde_json::json!(req.exclude).to_string())
        .fetch_all(&mut *tx)
        .await?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = due.iter().map(|(id, _)| id.as_str()).collect();
        let rows: Vec<RunRow> = sqlx::query_as(&format!(
            r#"UPDATE waymark_runs SET
                   status = CASE WHEN status = 'compensating' THEN 'compensating' ELSE 'running' END,
                   lease_token = lease_token + 1,
                   locked_by = ?1,
                   lease_expires_at = {DB_NOW} + ?2,
                   attempt = attempt + 1,
                   updated_at = ?3
               WHERE id IN (SELECT value FROM json_each(?4))
               RETURNING *"#
        ))
        .bind(req.worker_id.to_string())
        .bind(lease_ms(req.lease))
        .bind(ms(req.now))
        .bind(serde_json::json!(ids).to_string())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut runs = rows_to_runs(rows)?;
        for run in &mut runs {
            let id = run.id.to_string();
            run.claimed_from = due
                .iter()
                .find(|(due_id, _)| *due_id == id)
                .map(|(_, status)| parse_status(status))
                .transpose()?;
        }
        Ok(runs)
    }

    pub(super) async fn run_commit(&self, lease: &Lease, commit: &Commit) -> StoreResult<Run> {
        let run: StoreResult<Run> = in_tx!(self, ops => logic::commit(ops, lease, commit));
        let run = run?;
        self.bump_if_claimable(&run);
        // A finished child may have moved its parent on.
        if run.parent_id.is_some() && run.status.is_terminal() {
            self.bump();
        }
        Ok(run)
    }

    pub(super) async fn run_signal(
        &self,
        scope: &TenantScope,
        run_id: Uuid,
        signal: &NewSignal,
    ) -> StoreResult<SignalReceipt> {
        let receipt: StoreResult<SignalReceipt> =
            in_tx!(self, ops => logic::signal(ops, scope, run_id, signal));
        let receipt = receipt?;
        if receipt.consumed {
            self.bump();
        }
        Ok(receipt)
    }

    pub(super) async fn run_cancel(
        &self,
        scope: &TenantScope,
        id: Uuid,
        actor: &str,
        reason: &str,
        address: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<Run> {
        let run: StoreResult<Run> =
            in_tx!(self, ops => logic::cancel(ops, scope, id, actor, reason, address, now));
        self.bump();
        run
    }

    pub(super) async fn run_terminate(
        &self,
        scope: &TenantScope,
        id: Uuid,
        actor: &str,
        reason: &str,
        address: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<Run> {
        let run: StoreResult<Run> =
            in_tx!(self, ops => logic::terminate(ops, scope, id, actor, reason, address, now));
        self.bump();
        run
    }

    pub(super) async fn run_retry(
        &self,
        scope: &TenantScope,
        id: Uuid,
        actor: &str,
        address: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<Run> {
        let run: StoreResult<Run> =
            in_tx!(self, ops => logic::retry(ops, scope, id, actor, address, now));
        self.bump();
        run
    }

    pub(super) async fn run_skip_compensation(
        &self,
        scope: &TenantScope,
        id: Uuid,
        actor: &str,
        address: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<Run> {
        let run: StoreResult<Run> =
            in_tx!(self, ops => logic::skip_compensation(ops, scope, id, actor, address, now));
        self.bump();
        run
    }

    pub(super) async fn runs_fire_timeouts(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<u32> {
        let due: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM waymark_runs WHERE status = 'waiting' AND due_at <= ?1 ORDER BY due_at LIMIT ?2",
        )
        .bind(ms(now))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut fired = 0;
        for id in due {
            let id = uuid(&id)?;
            let fired_one: StoreResult<bool> =
                in_tx!(self, ops => logic::fire_timeout(ops, id, now));
            if fired_one? {
                fired += 1;
            }
        }
        if fired > 0 {
            self.bump();
        }
        Ok(fired)
    }

    pub(super) async fn run_release(&self, lease: &Lease, now: DateTime<Utc>) -> StoreResult<()> {
        let done = sqlx::query(
            r#"UPDATE waymark_runs SET
                   status = CASE WHEN status = 'compensating' THEN 'compensating' ELSE 'pending' END,
                   locked_by = NULL, lease_expires_at = NULL,
                   attempt = max(attempt - 1, 0), due_at = ?4, updated_at = ?4
               WHERE id = ?1 AND lease_token = ?2 AND locked_by = ?3
                 AND status IN ('running', 'compensating')"#,
        )
        .bind(lease.run_id.to_string())
        .bind(lease.token)
        .bind(lease.worker_id.to_string())
        .bind(ms(now))
        .execute(&self.pool)
        .await?;
        lease_applied(lease, done.rows_affected())?;
        self.bump();
        Ok(())
    }

    pub(super) async fn run_progress(
        &self,
        lease: &Lease,
        fraction: f32,
        message: &str,
    ) -> StoreResult<()> {
        let done = sqlx::query(&format!(
            r#"UPDATE waymark_runs SET progress_pct = ?4, progress_message = ?5
               WHERE id = ?1 AND lease_token = ?2 AND locked_by = ?3
                 AND status IN ('running', 'compensating') AND lease_expires_at > {DB_NOW}"#
        ))
        .bind(lease.run_id.to_string())
        .bind(lease.token)
        .bind(lease.worker_id.to_string())
        .bind(fraction as f64)
        .bind(message)
        .execute(&self.pool)
        .await?;
        lease_applied(lease, done.rows_affected())
    }

    pub(super) async fn runs_heartbeat(
        &self,
        worker_id: Uuid,
        runs: &[Uuid],
        lease: Duration,
    ) -> StoreResult<Vec<Held>> {
        let ids = serde_json::json!(runs).to_string();
        let rows: Vec<(String, i64, bool)> = sqlx::query_as(&format!(
            r#"UPDATE waymark_runs SET lease_expires_at = {DB_NOW} + ?2
               WHERE locked_by = ?1 AND id IN (SELECT value FROM json_each(?3))
                 AND status IN ('running', 'compensating') AND lease_expires_at > {DB_NOW}
               RETURNING id, lease_token, cancel_request IS NOT NULL"#
        ))
        .bind(worker_id.to_string())
        .bind(lease_ms(lease))
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(id, token, cancel_requested)| {
                Ok(Held {
                    lease: Lease {
                        run_id: uuid(&id)?,
                        token,
                        worker_id,
                    },
                    cancel_requested,
                })
            })
            .collect()
    }

    pub(super) async fn run_next_due(&self) -> StoreResult<Option<DateTime<Utc>>> {
        let next: Option<i64> = sqlx::query_scalar(
            r#"SELECT min(due_at) FROM waymark_runs
               WHERE status IN ('pending', 'sleeping', 'retrying', 'waiting')
                  OR (status = 'compensating' AND locked_by IS NULL)"#,
        )
        .fetch_one(&self.pool)
        .await?;
        opt_from_ms(next)
    }

    pub(super) async fn runs_delete_finished(
        &self,
        scope: &TenantScope,
        before: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<u64> {
        // What stays is explained once, in `Store::runs_delete_finished`.
        let done = sqlx::query(
            r#"DELETE FROM waymark_runs WHERE id IN (
                   SELECT r.id FROM waymark_runs r
                    WHERE r.finished_at < ?1 AND NOT r.held
                      AND (?3 IS NULL OR r.tenant = ?3)
                      AND NOT EXISTS (SELECT 1 FROM waymark_runs p WHERE p.id = r.parent_id
                                         AND (p.finished_at IS NULL OR p.held))
                      AND NOT EXISTS (SELECT 1 FROM waymark_runs c WHERE c.parent_id = r.id
                                         AND c.finished_at IS NULL)
                    ORDER BY r.finished_at LIMIT ?2)"#,
        )
        .bind(ms(before))
        .bind(limit as i64)
        .bind(scope.tenant())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    pub(super) async fn worker_register(&self, w: &WorkerInfo) -> StoreResult<()> {
        sqlx::query(&format!(
            r#"INSERT INTO waymark_workers (id, host, pid, version, capabilities, workflows,
                   started_at, last_heartbeat_at, runs_in_hand)
               VALUES (?1, ?2, ?3, ?4, ?5, ?6, {DB_NOW}, {DB_NOW}, 0)"#
        ))
        .bind(w.id.to_string())
        .bind(&w.host)
        .bind(w.pid as i64)
        .bind(&w.version)
        .bind(serde_json::json!(w.capabilities).to_string())
        .bind(serde_json::json!(w.workflows).to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn worker_heartbeat(&self, id: Uuid, runs_in_hand: i32) -> StoreResult<()> {
        sqlx::query(&format!(
            "UPDATE waymark_workers SET last_heartbeat_at = {DB_NOW}, runs_in_hand = ?2 WHERE id = ?1"
        ))
        .bind(id.to_string())
        .bind(runs_in_hand as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn worker_stop(&self, id: Uuid) -> StoreResult<()> {
        sqlx::query(&format!(
            "UPDATE waymark_workers SET stopped_at = {DB_NOW}, runs_in_hand = 0 WHERE id = ?1"
        ))
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn workers_prune(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        let done = sqlx::query(
            "DELETE FROM waymark_workers WHERE COALESCE(stopped_at, last_heartbeat_at) < ?1",
        )
        .bind(ms(before))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    pub(super) async fn worker_list(
        &self,
        live_since: Option<DateTime<Utc>>,
    ) -> StoreResult<Vec<WorkerInfo>> {
        let rows: Vec<WorkerRow> = sqlx::query_as(
            r#"SELECT * FROM waymark_workers
                WHERE ?1 IS NULL OR (stopped_at IS NULL AND last_heartbeat_at >= ?1)
                ORDER BY started_at DESC"#,
        )
        .bind(live_since.map(ms))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(WorkerInfo::try_from).collect()
    }

    /// Newest first by the time-ordered id (made when the worker starts).
    pub(super) async fn workers_page(
        &self,
        before: Option<Uuid>,
        limit: u32,
    ) -> StoreResult<Vec<WorkerInfo>> {
        let rows: Vec<WorkerRow> =
            sqlx::query_as("SELECT * FROM waymark_workers WHERE id < ?1 ORDER BY id DESC LIMIT ?2")
                .bind(before.unwrap_or(Uuid::max()).to_string())
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter().map(WorkerInfo::try_from).collect()
    }
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: String,
    tenant: String,
    prefix: String,
    secret_hash: String,
    scopes: String,
    name: Option<String>,
    owner_email: Option<String>,
    created_at: i64,
    created_by: String,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    revoked_by: Option<String>,
    last_used_at: Option<i64>,
    sealed_secret: Option<String>,
    revealed_at: Option<i64>,
    suspended_at: Option<i64>,
}

impl TryFrom<KeyRow> for KeyRecord {
    type Error = StoreError;

    fn try_from(k: KeyRow) -> StoreResult<Self> {
        Ok(KeyRecord {
            id: uuid(&k.id)?,
            tenant: k.tenant,
            prefix: k.prefix,
            secret_hash: k.secret_hash,
            scopes: serde_json::from_str(&k.scopes)
                .map_err(|e| StoreError::Corrupt(format!("scopes: {e}")))?,
            name: k.name,
            owner_email: k.owner_email,
            created_at: from_ms(k.created_at)?,
            created_by: k.created_by,
            expires_at: opt_from_ms(k.expires_at)?,
            revoked_at: opt_from_ms(k.revoked_at)?,
            revoked_by: k.revoked_by,
            last_used_at: opt_from_ms(k.last_used_at)?,
            awaiting_reveal: k.sealed_secret.is_some(),
            revealed_at: opt_from_ms(k.revealed_at)?,
            suspended_at: opt_from_ms(k.suspended_at)?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    id: i64,
    at: i64,
    tenant: String,
    actor: String,
    action: String,
    target: Option<String>,
    detail: String,
    address: Option<String>,
}

impl TryFrom<AuditRow> for AuditEntry {
    type Error = StoreError;

    fn try_from(a: AuditRow) -> StoreResult<Self> {
        Ok(AuditEntry {
            id: a.id,
            at: from_ms(a.at)?,
            tenant: a.tenant,
            actor: a.actor,
            action: a.action,
            target: a.target,
            detail: json(&a.detail)?,
            address: a.address,
        })
    }
}

async fn insert_audit(conn: &mut sqlx::SqliteConnection, a: &NewAudit) -> StoreResult<()> {
    sqlx::query(
        r#"INSERT INTO waymark_audit (at, tenant, actor, action, target, detail, address)
           VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"#,
    )
    .bind(ms(a.at))
    .bind(&a.tenant)
    .bind(&a.actor)
    .bind(&a.action)
    .bind(&a.target)
    .bind(a.detail.to_string())
    .bind(&a.address)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn history_entry(h: HistoryRow) -> StoreResult<HistoryEntry> {
    Ok(HistoryEntry {
        id: h.id,
        run_id: uuid(&h.run_id)?,
        from_state: h.from_state,
        to_state: h.to_state,
        from_status: h.from_status.as_deref().map(parse_status).transpose()?,
        to_status: parse_status(&h.to_status)?,
        cause: h.cause,
        visit: h.visit,
        attempt: h.attempt as i32,
        actor: h.actor,
        worker_id: h.worker_id.as_deref().map(uuid).transpose()?,
        started_at: from_ms(h.started_at)?,
        committed_at: from_ms(h.committed_at)?,
        error: parse_error(opt_json(h.error)?)?,
    })
}

impl SqliteStore {
    pub(super) async fn runs_list(
        &self,
        scope: &TenantScope,
        filter: &RunFilter,
        before: Option<Uuid>,
        limit: u32,
    ) -> StoreResult<Vec<Run>> {
        let mut q = sqlx::QueryBuilder::<Sqlite>::new("SELECT * FROM waymark_runs r WHERE 1");
        if let Some(tenant) = scope.tenant() {
            q.push(" AND r.tenant = ").push_bind(tenant.to_owned());
        }
        if let Some(workflow) = &filter.workflow {
            q.push(" AND r.workflow = ").push_bind(workflow.clone());
        }
        if let Some(status) = filter.status {
            q.push(" AND r.status = ").push_bind(status.as_str());
        }
        if let Some(state) = &filter.state {
            q.push(" AND r.state = ").push_bind(state.clone());
        }
        if let Some(after) = filter.created_after {
            q.push(" AND r.created_at >= ").push_bind(ms(after));
        }
        if let Some(before) = filter.created_before {
            q.push(" AND r.created_at < ").push_bind(ms(before));
        }
        if let Some(tag) = &filter.tag {
            q.push(
                " AND EXISTS (SELECT 1 FROM waymark_run_tags t WHERE t.run_id = r.id AND t.tag = ",
            )
            .push_bind(tag.clone())
            .push(")");
        }
        if let Some(cursor) = before {
            q.push(" AND r.id < ").push_bind(cursor.to_string());
        }
        q.push(" ORDER BY r.id DESC LIMIT ").push_bind(limit as i64);
        let rows: Vec<RunRow> = q.build_query_as().fetch_all(&self.pool).await?;
        rows_to_runs(rows)
    }

    pub(super) async fn runs_counts(&self, scope: &TenantScope) -> StoreResult<Vec<RunCount>> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            r#"SELECT workflow, status, count(*) FROM waymark_runs
               WHERE (?1 IS NULL OR tenant = ?1)
               GROUP BY workflow, status ORDER BY workflow, status"#,
        )
        .bind(scope.tenant())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(workflow, status, count)| {
                Ok(RunCount {
                    workflow,
                    status: status
                        .parse()
                        .map_err(|_| StoreError::Corrupt(format!("run status {status:?}")))?,
                    count,
                })
            })
            .collect()
    }

    /// (bucket index, started, completed, failed) per bucket of `seconds`; times are
    /// Unix milliseconds here, so integer division by the bucket's milliseconds.
    pub(super) async fn runs_activity(
        &self,
        scope: &TenantScope,
        since: DateTime<Utc>,
        seconds: i64,
    ) -> StoreResult<Vec<(i64, i64, i64, i64)>> {
        Ok(sqlx::query_as(
            r#"SELECT b, sum(started), sum(completed), sum(failed) FROM (
                   SELECT created_at / ?3 AS b, 1 AS started, 0 AS completed, 0 AS failed
                   FROM waymark_runs
                   WHERE (?1 IS NULL OR tenant = ?1) AND created_at >= ?2
                   UNION ALL
                   SELECT finished_at / ?3, 0, status = 'completed', status = 'failed'
                   FROM waymark_runs
                   WHERE (?1 IS NULL OR tenant = ?1) AND finished_at >= ?2
               ) GROUP BY b ORDER BY b"#,
        )
        .bind(scope.tenant())
        .bind(ms(since))
        .bind(seconds.saturating_mul(1000))
        .fetch_all(&self.pool)
        .await?)
    }

    pub(super) async fn runs_due_stats(
        &self,
        now: DateTime<Utc>,
    ) -> StoreResult<(i64, Option<DateTime<Utc>>)> {
        let (count, oldest): (i64, Option<i64>) = sqlx::query_as(
            r#"SELECT count(*), min(due_at) FROM waymark_runs
               WHERE ((status IN ('pending', 'sleeping', 'retrying'))
                      OR (status = 'compensating' AND locked_by IS NULL))
                 AND due_at <= ?1"#,
        )
        .bind(ms(now))
        .fetch_one(&self.pool)
        .await?;
        Ok((count, opt_from_ms(oldest)?))
    }

    pub(super) async fn key_insert(
        &self,
        key: &NewKey,
        audit: &NewAudit,
    ) -> StoreResult<KeyRecord> {
        let mut tx = self.pool.begin().await?;
        let row: KeyRow = insert_key(&mut tx, key).await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        row.try_into()
    }

    pub(super) async fn key_by_prefix(&self, prefix: &str) -> StoreResult<Option<KeyRecord>> {
        let row: Option<KeyRow> = sqlx::query_as("SELECT * FROM waymark_keys WHERE prefix = ?1")
            .bind(prefix)
            .fetch_optional(&self.pool)
            .await?;
        row.map(KeyRecord::try_from).transpose()
    }

    pub(super) async fn key_get(
        &self,
        scope: &TenantScope,
        id: Uuid,
    ) -> StoreResult<Option<KeyRecord>> {
        let row: Option<KeyRow> = sqlx::query_as(
            "SELECT * FROM waymark_keys WHERE id = ?1 AND (?2 IS NULL OR tenant = ?2)",
        )
        .bind(id.to_string())
        .bind(scope.tenant())
        .fetch_optional(&self.pool)
        .await?;
        row.map(KeyRecord::try_from).transpose()
    }

    pub(super) async fn key_list(&self, scope: &TenantScope) -> StoreResult<Vec<KeyRecord>> {
        let rows: Vec<KeyRow> = sqlx::query_as(
            "SELECT * FROM waymark_keys WHERE (?1 IS NULL OR tenant = ?1) ORDER BY created_at, id",
        )
        .bind(scope.tenant())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(KeyRecord::try_from).collect()
    }

    pub(super) async fn keys_page(
        &self,
        scope: &TenantScope,
        after: Option<Uuid>,
        limit: u32,
    ) -> StoreResult<Vec<KeyRecord>> {
        let rows: Vec<KeyRow> = sqlx::query_as(
            "SELECT * FROM waymark_keys WHERE (?1 IS NULL OR tenant = ?1) AND id > ?2 \
             ORDER BY id LIMIT ?3",
        )
        .bind(scope.tenant())
        .bind(after.unwrap_or(Uuid::nil()).to_string())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(KeyRecord::try_from).collect()
    }

    pub(super) async fn key_revoke(
        &self,
        scope: &TenantScope,
        id: Uuid,
        actor: &str,
        now: DateTime<Utc>,
        audit: &NewAudit,
    ) -> StoreResult<Option<KeyRecord>> {
        let mut tx = self.pool.begin().await?;
        let row: Option<KeyRow> = sqlx::query_as(
            r#"UPDATE waymark_keys SET revoked_at = COALESCE(revoked_at, ?3),
                   revoked_by = COALESCE(revoked_by, ?4)
               WHERE id = ?1 AND (?2 IS NULL OR tenant = ?2) RETURNING *"#,
        )
        .bind(id.to_string())
        .bind(scope.tenant())
        .bind(ms(now))
        .bind(actor)
        .fetch_optional(&mut *tx)
        .await?;
        if row.is_some() {
            insert_audit(&mut tx, audit).await?;
        }
        tx.commit().await?;
        row.map(KeyRecord::try_from).transpose()
    }

    pub(super) async fn key_take_sealed<T, E>(
        &self,
        scope: &TenantScope,
        id: Uuid,
        now: DateTime<Utc>,
        audit: &NewAudit,
        open: impl FnOnce(&SealedSecret) -> Result<T, E> + Send,
    ) -> StoreResult<SealedTake<T, E>> {
        let mut tx = self.pool.begin().await?;
        let found: Option<(Option<String>, Option<String>)> = sqlx::query_as(
            r#"SELECT sealed_secret, sealed_master_key_id FROM waymark_keys
               WHERE id = ?1 AND (?2 IS NULL OR tenant = ?2)"#,
        )
        .bind(id.to_string())
        .bind(scope.tenant())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((sealed, master_key_id)) = found else {
            return Ok(SealedTake::NotFound);
        };
        let Some(ciphertext) = sealed else {
            return Ok(SealedTake::NothingSealed);
        };
        let opened = match open(&SealedSecret {
            ciphertext,
            master_key_id,
        }) {
            Ok(opened) => opened,
            // Dropping the transaction rolls it back: the ciphertext stays.
            Err(refused) => return Ok(SealedTake::Kept(refused)),
        };
        sqlx::query(
            r#"UPDATE waymark_keys SET sealed_secret = NULL, sealed_master_key_id = NULL, revealed_at = ?2
               WHERE id = ?1"#,
        )
        .bind(id.to_string())
        .bind(ms(now))
        .execute(&mut *tx)
        .await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(SealedTake::Taken(opened))
    }

    pub(super) async fn keys_sealed_by(&self) -> StoreResult<Vec<(Option<String>, i64)>> {
        Ok(sqlx::query_as(
            r#"SELECT sealed_master_key_id, count(*) FROM waymark_keys
               WHERE sealed_secret IS NOT NULL GROUP BY sealed_master_key_id
               ORDER BY sealed_master_key_id"#,
        )
        .fetch_all(&self.pool)
        .await?)
    }

    pub(super) async fn keys_suspend(
        &self,
        tenant: &str,
        suspended: Option<DateTime<Utc>>,
    ) -> StoreResult<u64> {
        let done = sqlx::query("UPDATE waymark_keys SET suspended_at = ?2 WHERE tenant = ?1")
            .bind(tenant)
            .bind(suspended.map(ms))
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    pub(super) async fn key_touch(&self, id: Uuid, now: DateTime<Utc>) -> StoreResult<()> {
        sqlx::query(
            r#"UPDATE waymark_keys SET last_used_at = ?2
               WHERE id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2 - 60000)"#,
        )
        .bind(id.to_string())
        .bind(ms(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn keys_count(&self) -> StoreResult<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM waymark_keys")
            .fetch_one(&self.pool)
            .await?)
    }

    pub(super) async fn audit_append(&self, audit: &NewAudit) -> StoreResult<()> {
        let mut conn = self.pool.acquire().await?;
        insert_audit(&mut conn, audit).await
    }

    pub(super) async fn audit_list(
        &self,
        scope: &TenantScope,
        before: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<AuditEntry>> {
        let rows: Vec<AuditRow> = sqlx::query_as(
            r#"SELECT * FROM waymark_audit WHERE (?1 IS NULL OR tenant = ?1)
                 AND (?2 IS NULL OR id < ?2) ORDER BY id DESC LIMIT ?3"#,
        )
        .bind(scope.tenant())
        .bind(before)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(AuditEntry::try_from).collect()
    }
}

#[derive(sqlx::FromRow)]
struct ScheduleRow {
    id: String,
    tenant: String,
    name: String,
    cron: String,
    timezone: String,
    workflow: String,
    input: String,
    overlap: String,
    catch_up: String,
    paused: bool,
    last_fired_at: i64,
    next_fire_at: Option<i64>,
    last_run_id: Option<String>,
    buffered_fire_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
    created_by: String,
}

impl TryFrom<ScheduleRow> for Schedule {
    type Error = StoreError;

    fn try_from(r: ScheduleRow) -> StoreResult<Self> {
        Ok(Schedule {
            id: uuid(&r.id)?,
            tenant: r.tenant,
            name: r.name,
            cron: r.cron,
            timezone: r.timezone,
            workflow: r.workflow,
            input: json(&r.input)?,
            overlap: Overlap::parse(&r.overlap)
                .ok_or_else(|| StoreError::Corrupt(format!("overlap {:?}", r.overlap)))?,
            catch_up: CatchUp::parse(&r.catch_up)
                .ok_or_else(|| StoreError::Corrupt(format!("catch_up {:?}", r.catch_up)))?,
            paused: r.paused,
            last_fired_at: from_ms(r.last_fired_at)?,
            next_fire_at: opt_from_ms(r.next_fire_at)?,
            last_run_id: r.last_run_id.as_deref().map(uuid).transpose()?,
            buffered_fire_at: opt_from_ms(r.buffered_fire_at)?,
            created_at: from_ms(r.created_at)?,
            updated_at: from_ms(r.updated_at)?,
            created_by: r.created_by,
        })
    }
}

fn name_taken(error: sqlx::Error, name: &str) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(format!("a schedule named {name:?} already exists"))
        }
        _ => StoreError::Database(error),
    }
}

impl SqliteStore {
    pub(super) async fn schedule_insert(
        &self,
        s: &Schedule,
        if_absent: bool,
    ) -> StoreResult<Option<Schedule>> {
        let sql = format!(
            r#"INSERT INTO waymark_schedules (id, tenant, name, cron, timezone, workflow, input, overlap,
                   catch_up, paused, last_fired_at, next_fire_at, created_at, updated_at, created_by)
               VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?13, ?14)
               {} RETURNING *"#,
            if if_absent {
                "ON CONFLICT (tenant, name) DO NOTHING"
            } else {
                ""
            }
        );
        let row: Option<ScheduleRow> = sqlx::query_as(&sql)
            .bind(s.id.to_string())
            .bind(&s.tenant)
            .bind(&s.name)
            .bind(&s.cron)
            .bind(&s.timezone)
            .bind(&s.workflow)
            .bind(s.input.to_string())
            .bind(s.overlap.as_str())
            .bind(s.catch_up.as_str())
            .bind(s.paused)
            .bind(ms(s.last_fired_at))
            .bind(s.next_fire_at.map(ms))
            .bind(ms(s.created_at))
            .bind(&s.created_by)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| name_taken(e, &s.name))?;
        row.map(Schedule::try_from).transpose()
    }

    pub(super) async fn schedule_get(
        &self,
        scope: &TenantScope,
        id: Uuid,
    ) -> StoreResult<Option<Schedule>> {
        let row: Option<ScheduleRow> = sqlx::query_as(
            "SELECT * FROM waymark_schedules WHERE id = ?1 AND (?2 IS NULL OR tenant = ?2)",
        )
        .bind(id.to_string())
        .bind(scope.tenant())
        .fetch_optional(&self.pool)
        .await?;
        row.map(Schedule::try_from).transpose()
    }

    pub(super) async fn schedule_list(&self, scope: &TenantScope) -> StoreResult<Vec<Schedule>> {
        let rows: Vec<ScheduleRow> = sqlx::query_as(
            "SELECT * FROM waymark_schedules WHERE (?1 IS NULL OR tenant = ?1) ORDER BY tenant, name",
        )
        .bind(scope.tenant())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Schedule::try_from).collect()
    }

    pub(super) async fn schedules_page(
        &self,
        scope: &TenantScope,
        after: Option<Uuid>,
        limit: u32,
    ) -> StoreResult<Vec<Schedule>> {
        let rows: Vec<ScheduleRow> = sqlx::query_as(
            "SELECT * FROM waymark_schedules WHERE (?1 IS NULL OR tenant = ?1) AND id > ?2 \
             ORDER BY id LIMIT ?3",
        )
        .bind(scope.tenant())
        .bind(after.unwrap_or(Uuid::nil()).to_string())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Schedule::try_from).collect()
    }

    pub(super) async fn schedule_update(&self, s: &Schedule) -> StoreResult<Schedule> {
        let row: ScheduleRow = sqlx::query_as(
            r#"UPDATE waymark_schedules SET name = ?2, cron = ?3, timezone = ?4, workflow = ?5, input = ?6,
                   overlap = ?7, catch_up = ?8, paused = ?9, last_fired_at = ?10, next_fire_at = ?11,
                   buffered_fire_at = ?12, updated_at = ?13
               WHERE id = ?1 RETURNING *"#,
        )
        .bind(s.id.to_string())
        .bind(&s.name)
        .bind(&s.cron)
        .bind(&s.timezone)
        .bind(&s.workflow)
        .bind(s.input.to_string())
        .bind(s.overlap.as_str())
        .bind(s.catch_up.as_str())
        .bind(s.paused)
        .bind(ms(s.last_fired_at))
        .bind(s.next_fire_at.map(ms))
        .bind(s.buffered_fire_at.map(ms))
        .bind(ms(s.updated_at))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| name_taken(e, &s.name))?;
        row.try_into()
    }

    pub(super) async fn schedule_delete(&self, scope: &TenantScope, id: Uuid) -> StoreResult<bool> {
        let done = sqlx::query(
            "DELETE FROM waymark_schedules WHERE id = ?1 AND (?2 IS NULL OR tenant = ?2)",
        )
        .bind(id.to_string())
        .bind(scope.tenant())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub(super) async fn schedules_due(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<Schedule>> {
        let rows: Vec<ScheduleRow> = sqlx::query_as(
            r#"SELECT * FROM waymark_schedules
               WHERE NOT paused AND (next_fire_at <= ?1 OR buffered_fire_at IS NOT NULL)
               ORDER BY next_fire_at LIMIT ?2"#,
        )
        .bind(ms(now))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Schedule::try_from).collect()
    }

    pub(super) async fn lease_acquire(
        &self,
        name: &str,
        holder: Uuid,
        lease: Duration,
    ) -> StoreResult<Option<i64>> {
        Ok(sqlx::query_scalar(&format!(
            r#"INSERT INTO waymark_leases (name, holder, token, expires_at)
               VALUES (?1, ?2, 1, {DB_NOW} + ?3)
               ON CONFLICT (name) DO UPDATE SET
                   token = CASE WHEN waymark_leases.holder = ?2 THEN waymark_leases.token
                                ELSE waymark_leases.token + 1 END,
                   holder = ?2,
                   expires_at = {DB_NOW} + ?3
               WHERE waymark_leases.holder = ?2 OR waymark_leases.expires_at < {DB_NOW}
               RETURNING token"#
        ))
        .bind(name)
        .bind(holder.to_string())
        .bind(lease_ms(lease))
        .fetch_optional(&self.pool)
        .await?)
    }

    pub(super) async fn lease_release(&self, name: &str, holder: Uuid) -> StoreResult<()> {
        sqlx::query(&format!(
            "UPDATE waymark_leases SET expires_at = {DB_NOW} - 1 WHERE name = ?1 AND holder = ?2"
        ))
        .bind(name)
        .bind(holder.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn schedule_advance(&self, a: &ScheduleAdvance) -> StoreResult<Option<Run>> {
        let mut tx = self.pool.begin().await?;
        let held: Option<i64> = sqlx::query_scalar(&format!(
            r#"SELECT token FROM waymark_leases
               WHERE name = 'scheduler' AND holder = ?1 AND token = ?2 AND expires_at > {DB_NOW}"#
        ))
        .bind(a.lease.0.to_string())
        .bind(a.lease.1)
        .fetch_optional(&mut *tx)
        .await?;
        if held.is_none() {
            return Err(StoreError::LeaseLost {
                run_id: a.schedule_id,
                token: a.lease.1,
            });
        }
        let mut run = None;
        let mut run_id: Option<String> = None;
        if let Some(new) = &a.start {
            match insert_run(&mut tx, new, None).await? {
                Some(started) => {
                    run_id = Some(started.id.to_string());
                    run = Some(started);
                }
                None => {
                    run_id = sqlx::query_scalar(
                        "SELECT id FROM waymark_runs WHERE tenant = ?1 AND workflow = ?2 AND idempotency_key = ?3",
                    )
                    .bind(&new.tenant)
                    .bind(&new.workflow)
                    .bind(&new.idempotency_key)
                    .fetch_optional(&mut *tx)
                    .await?;
                }
            }
        }
        let updated = sqlx::query(&format!(
            r#"UPDATE waymark_schedules SET last_fired_at = ?3, next_fire_at = ?4, buffered_fire_at = ?5,
                   last_run_id = COALESCE(?6, last_run_id), updated_at = {DB_NOW}
               WHERE id = ?1 AND last_fired_at = ?2"#
        ))
        .bind(a.schedule_id.to_string())
        .bind(ms(a.expected_last))
        .bind(ms(a.last_fired_at))
        .bind(a.next_fire_at.map(ms))
        .bind(a.buffered_fire_at.map(ms))
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            return Err(StoreError::Conflict(format!(
                "schedule {} moved on concurrently",
                a.schedule_id
            )));
        }
        tx.commit().await?;
        if run.is_some() {
            self.bump();
        }
        Ok(run)
    }
}

/// A key and its audit record inside the caller's transaction (see `Store::key_insert_in`).
pub(super) async fn key_insert_in(
    conn: &mut sqlx::SqliteConnection,
    key: &NewKey,
    audit: &NewAudit,
) -> StoreResult<KeyRecord> {
    let row = insert_key(conn, key).await?;
    insert_audit(conn, audit).await?;
    row.try_into()
}

/// Inserts a key row (its hash, perhaps its sealed secret; never the secret).
async fn insert_key(conn: &mut sqlx::SqliteConnection, key: &NewKey) -> StoreResult<KeyRow> {
    Ok(sqlx::query_as(
        r#"INSERT INTO waymark_keys (id, tenant, prefix, secret_hash, scopes, name, owner_email,
                   created_at, created_by, expires_at, sealed_secret,
                   sealed_master_key_id)
               VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) RETURNING *"#,
    )
    .bind(key.id.to_string())
    .bind(&key.tenant)
    .bind(&key.prefix)
    .bind(&key.secret_hash)
    .bind(serde_json::json!(key.scopes).to_string())
    .bind(&key.name)
    .bind(&key.owner_email)
    .bind(ms(key.now))
    .bind(&key.created_by)
    .bind(key.expires_at.map(ms))
    .bind(key.sealed_secret.as_ref().map(|s| &s.ciphertext))
    .bind(
        key.sealed_secret
            .as_ref()
            .and_then(|s| s.master_key_id.as_ref()),
    )
    .fetch_one(&mut *conn)
    .await?)
}

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
