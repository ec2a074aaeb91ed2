//! PostgreSQL store: many worker processes share one database.
//!
//! Claims are one `UPDATE … FROM (SELECT … FOR UPDATE SKIP LOCKED)` statement. The hot
//! transitions (enter a state, retry, complete, for runs without parents, pending
//! cancellations or queued signals) commit in one statement whose CTEs update the run
//! and append its history row. Everything else goes through the shared rules in
//! `logic.rs` inside one transaction, with the run locked `FOR UPDATE`.
//!
//! Two pools: the runner's loop (claims, commits, releases, heartbeats, wait timeouts,
//! the next due time) uses a small one of its own, so API reads (or anything else holding connections) cannot make a
//! heartbeat wait until its lease expires. A transaction that ends a run notifies
//! [`ENDED_CHANNEL`] with the run id; the process's one LISTEN connection hands both
//! channels on (workers' wake-ups, long polls' endings).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use tokio::sync::watch;
use uuid::Uuid;

use super::logic::{self, Ops};
use super::schemas::{self, Schema};
use super::RunEndings;
use super::{
    check_schema_not_newer, from_json, json_error, latest_version, opt_from_json, parse_error,
    parse_status, to_json, AuditEntry, CatchUp, ClaimRequest, Commit, CompensationRecord, Held,
    HistoryEntry, KeyRecord, Lease, NewAudit, NewHistory, NewKey, NewRun, NewSignal, Next, Outcome,
    Overlap, Run, RunCount, RunFilter, Schedule, ScheduleAdvance, SealedSecret, SealedTake,
    SignalReceipt, SignalRecord, Started, StoreResult, TenantScope, WorkerInfo,
};
use crate::error::StoreError;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// The advisory lock `Store::migrate` holds ("waymark" in ASCII): one migrating process at a time.
const MIGRATE_LOCK: i64 = 0x0077_6179_6d61_726b;

/// The channel the `waymark_runs_notify_due` trigger notifies.
const CHANNEL: &str = "waymark_runs";

/// The channel a run's ending is notified on, with the run id as payload, in the
/// transaction that ends it (so a waiter never hears of an ending that rolled back).
pub const ENDED_CHANNEL: &str = "waymark_run_ended";

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// The runner's claims, commits and heartbeats (see the module docs).
    worker_pool: PgPool,
    wake: Arc<watch::Sender<u64>>,
    endings: Arc<RunEndings>,
    listening: Arc<AtomicBool>,
    /// Workflows' own tables, migrated after the engine's (see `schemas.rs`).
    schemas: Arc<[Schema]>,
}

#[derive(sqlx::FromRow)]
struct RunRow {
    id: Uuid,
    tenant: String,
    workflow: String,
    workflow_version: i32,
    status: String,
    state: String,
    state_data: Value,
    input: Value,
    output: Option<Value>,
    error: Option<Value>,
    idempotency_key: Option<String>,
    capability: Option<String>,
    visit: i64,
    attempt: i32,
    due_at: Option<DateTime<Utc>>,
    lease_token: i64,
    locked_by: Option<Uuid>,
    lease_expires_at: Option<DateTime<Utc>>,
    progress_pct: Option<f32>,
    progress_message: Option<String>,
    parent_id: Option<Uuid>,
    parent_visit: Option<i64>,
    child_index: Option<i32>,
    waiting_for: Option<Value>,
    received: Option<Value>,
    cancel_request: Option<Value>,
    ending: Option<Value>,
    held: bool,
    tags: Value,
    /// Only in a claim's answer: the status the run was claimed from.
    #[sqlx(default)]
    claimed_from: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

impl TryFrom<RunRow> for Run {
    type Error = StoreError;

    fn try_from(r: RunRow) -> StoreResult<Run> {
        Ok(Run {
            id: r.id,
            tenant: r.tenant,
            workflow: r.workflow,
            workflow_version: r.workflow_version as u32,
            status: parse_status(&r.status)?,
            state: r.state,
            state_data: r.state_data,
            input: r.input,
            output: r.output,
            error: parse_error(r.error)?,
            idempotency_key: r.idempotency_key,
            capability: r.capability,
            visit: r.visit,
            attempt: r.attempt,
            due_at: r.due_at,
            lease_token: r.lease_token,
            locked_by: r.locked_by,
            lease_expires_at: r.lease_expires_at,
            progress_pct: r.progress_pct,
            progress_message: r.progress_message,
            parent_id: r.parent_id,
            parent_visit: r.parent_visit,
            child_index: r.child_index,
            waiting_for: opt_from_json(r.waiting_for, "waiting_for")?,
            received: opt_from_json(r.received, "received")?,
            cancel_request: opt_from_json(r.cancel_request, "cancel_request")?,
            ending: opt_from_json(r.ending, "ending")?,
            held: r.held,
            tags: from_json(r.tags, "tags")?,
            claimed_from: r.claimed_from.as_deref().map(parse_status).transpose()?,
            created_at: r.created_at,
            updated_at: r.updated_at,
            finished_at: r.finished_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct HistoryRow {
    id: i64,
    run_id: Uuid,
    from_state: Option<String>,
    to_state: String,
    from_status: Option<String>,
    to_status: String,
    cause: String,
    visit: i64,
    attempt: i32,
    actor: String,
    worker_id: Option<Uuid>,
    started_at: DateTime<Utc>,
    committed_at: DateTime<Utc>,
    error: Option<Value>,
}

#[derive(sqlx::FromRow)]
struct SignalRow {
    id: Uuid,
    run_id: Uuid,
    name: String,
    payload: Value,
    idempotency_key: Option<String>,
    actor: String,
    received_at: DateTime<Utc>,
    status: String,
    workflow_version: i32,
    consumed_visit: Option<i64>,
}

impl From<SignalRow> for SignalRecord {
    fn from(s: SignalRow) -> Self {
        SignalRecord {
            id: s.id,
            run_id: s.run_id,
            name: s.name,
            payload: s.payload,
            idempotency_key: s.idempotency_key,
            actor: s.actor,
            received_at: s.received_at,
            status: s.status,
            version: s.workflow_version as u32,
            consumed_visit: s.consumed_visit,
        }
    }
}

#[derive(sqlx::FromRow)]
struct WorkerRow {
    id: Uuid,
    host: String,
    pid: i32,
    version: String,
    capabilities: Value,
    workflows: Value,
    started_at: DateTime<Utc>,
    last_heartbeat_at: DateTime<Utc>,
    runs_in_hand: i32,
    stopped_at: Option<DateTime<Utc>>,
}

impl TryFrom<WorkerRow> for WorkerInfo {
    type Error = StoreError;

    fn try_from(w: WorkerRow) -> StoreResult<WorkerInfo> {
        Ok(WorkerInfo {
            id: w.id,
            host: w.host,
            pid: w.pid,
            version: w.version,
            capabilities: from_json(w.capabilities, "capabilities")?,
            workflows: from_json(w.workflows, "workflows")?,
            started_at: w.started_at,
            last_heartbeat_at: w.last_heartbeat_at,
            runs_in_hand: w.runs_in_hand,
            stopped_at: w.stopped_at,
        })
    }
}

fn rows_to_runs(rows: Vec<RunRow>) -> StoreResult<Vec<Run>> {
    rows.into_iter().map(Run::try_from).collect()
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

const INSERT_RUN: &str = r#"
WITH ins AS (
    INSERT INTO waymark_runs (id, tenant, workflow, workflow_version, status, state, state_data,
                              input, idempotency_key, capability, visit, attempt, due_at,
                              created_at, updated_at, parent_id, parent_visit, child_index, tags)
    VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7, $8, $9, 1, 0, $10, $10, $10, $13, $14, $15, $16)
    ON CONFLICT DO NOTHING
    RETURNING *
), tag AS (
    INSERT INTO waymark_run_tags (run_id, tag)
    SELECT DISTINCT ins.id, t.tag FROM ins, jsonb_array_elements_text($16) AS t(tag)
), comp AS (
    INSERT INTO waymark_compensations (run_id, visit, state, state_data)
    SELECT id, 1, state, state_data FROM ins WHERE $12
), hist AS (
    INSERT INTO waymark_history (run_id, from_state, to_state, from_status, to_status, cause,
                                 visit, attempt, actor, started_at, committed_at)
    SELECT id, NULL, state, NULL, status, 'started', visit, attempt, $11, $10, $10 FROM ins
)
SELECT * FROM ins
"#;

/// The one-statement commit for hot transitions that do not end the run. Its extra
/// conditions (no parent, no pending cancellation) send every other case to the
/// transactional path, which re-checks the fence and applies the full rules.
///
/// Ending a run is never done here: it must record the run's queued signals as
/// unconsumed, and a `NOT EXISTS (queued signal)` check in this statement would read
/// the statement's snapshot, missing a signal whose transaction held the run's row
/// lock while this statement waited for it. The transactional path takes the row lock
/// first and reads the signals after, so it sees every signal committed before it.
const COMMIT_FAST: &str = r#"
WITH upd AS (
    UPDATE waymark_runs SET
        status           = $3,
        state            = $4,
        state_data       = COALESCE($5, state_data),
        output           = $6,
        error            = $7,
        capability       = CASE WHEN $8 THEN $9 ELSE capability END,
        visit            = visit + CASE WHEN $8 THEN 1 ELSE 0 END,
        attempt          = CASE WHEN $3 = 'running' THEN 1 WHEN $8 THEN 0 ELSE attempt END,
        due_at           = $10,
        locked_by        = CASE WHEN $3 = 'running' THEN locked_by END,
        lease_expires_at = CASE WHEN $3 = 'running' THEN now() + make_interval(secs => $11) END,
        progress_pct     = CASE WHEN $8 THEN NULL ELSE progress_pct END,
        progress_message = CASE WHEN $8 THEN NULL ELSE progress_message END,
        received         = CASE WHEN $8 THEN NULL ELSE received END,
        finished_at      = $12,
        updated_at       = $13
    WHERE id = $1 AND lease_token = $2 AND locked_by = $14 AND visit = $17
      AND status = 'running' AND lease_expires_at > now()
      AND parent_id IS NULL AND cancel_request IS NULL
    RETURNING *
), hist AS (
    INSERT INTO waymark_history (run_id, from_state, to_state, from_status, to_status, cause,
                                 visit, attempt, actor, worker_id, started_at, committed_at, error)
    SELECT id, $15, state, 'running', status, $16, $17, $18, $19, $14, $20, $13, $7 FROM upd
)
SELECT * FROM upd
"#;

/// Runs one of the shared rules in its own transaction (on the main pool, or on
/// `pool` when given).
macro_rules! in_tx {
    ($store:ident, $ops:ident => $body:expr) => {
        in_tx!($store.pool, $ops => $body)
    };
    ($pool:expr, $ops:ident => $body:expr) => {{
        let mut tx_ops = PgOps {
            tx: $pool.begin().await?,
        };
        let value = {
            let $ops = &mut tx_ops;
            $body.await?
        };
        tx_ops.tx.commit().await?;
        Ok(value)
    }};
}

/// The transactional side: the shared rules run over these primitives.
struct PgOps {
    tx: Transaction<'static, Postgres>,
}

impl Ops for PgOps {
    async fn db_now(&mut self) -> StoreResult<DateTime<Utc>> {
        Ok(sqlx::query_scalar("SELECT now()")
            .fetch_one(&mut *self.tx)
            .await?)
    }

    async fn run_lock(&mut self, id: Uuid) -> StoreResult<Option<Run>> {
        let row: Option<RunRow> =
            sqlx::query_as("SELECT * FROM waymark_runs WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *self.tx)
                .await?;
        row.map(Run::try_from).transpose()
    }

    async fn run_write(&mut self, r: &Run) -> StoreResult<()> {
        sqlx::query(
            r#"UPDATE waymark_runs SET
                   workflow_version = $2, status = $3, state = $4, state_data = $5, input = $6,
                   output = $7, error = $8, capability = $9, visit = $10, attempt = $11,
                   due_at = $12, lease_token = $13, locked_by = $14, lease_expires_at = $15,
                   progress_pct = $16, progress_message = $17, waiting_for = $18, received = $19,
                   cancel_request = $20, ending = $21, held = $22, updated_at = $23,
                   finished_at = $24
               WHERE id = $1"#,
        )
        .bind(r.id)
        .bind(r.workflow_version as i32)
        .bind(r.status.as_str())
        .bind(&r.state)
        .bind(&r.state_data)
        .bind(&r.input)
        .bind(&r.output)
        .bind(json_error(&r.error))
        .bind(&r.capability)
        .bind(r.visit)
        .bind(r.attempt)
        .bind(r.due_at)
        .bind(r.lease_token)
        .bind(r.locked_by)
        .bind(r.lease_expires_at)
        .bind(r.progress_pct)
        .bind(&r.progress_message)
        .bind(to_json(&r.waiting_for))
        .bind(to_json(&r.received))
        .bind(to_json(&r.cancel_request))
        .bind(to_json(&r.ending))
        .bind(r.held)
        .bind(r.updated_at)
        .bind(r.finished_at)
        .execute(&mut *self.tx)
        .await?;
        if r.status.is_terminal() {
            // Delivered at commit, and only if the transaction commits.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(ENDED_CHANNEL)
                .bind(r.id.to_string())
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }

    async fn child_insert(&mut self, new: &NewRun, parent: (Uuid, i64, i32)) -> StoreResult<bool> {
        let row = insert_run(&mut self.tx, new, Some(parent)).await?;
        Ok(row.is_some())
    }

    async fn children(&mut self, parent: Uuid, visit: i64) -> StoreResult<Vec<Run>> {
        let rows: Vec<RunRow> = sqlx::query_as(
            "SELECT * FROM waymark_runs WHERE parent_id = $1 AND parent_visit = $2 ORDER BY child_index",
        )
        .bind(parent)
        .bind(visit)
        .fetch_all(&mut *self.tx)
        .await?;
        rows_to_runs(rows)
    }

    async fn children_active(&mut self, parent: Uuid) -> StoreResult<Vec<Uuid>> {
        Ok(sqlx::query_scalar(
            r#"SELECT id FROM waymark_runs WHERE parent_id = $1
                 AND status NOT IN ('completed', 'failed', 'cancelled') ORDER BY child_index"#,
        )
        .bind(parent)
        .fetch_all(&mut *self.tx)
        .await?)
    }

    async fn children_to_compensate(&mut self, parent: Uuid) -> StoreResult<Vec<Uuid>> {
        Ok(sqlx::query_scalar(
            r#"SELECT r.id FROM waymark_runs r WHERE r.parent_id = $1 AND r.status = 'completed'
                 AND EXISTS (SELECT 1 FROM waymark_compensations c
                             WHERE c.run_id = r.id AND c.status = 'pending')
               ORDER BY r.parent_visit DESC, r.child_index DESC"#,
        )
        .bind(parent)
        .fetch_all(&mut *self.tx)
        .await?)
    }

    async fn audit_insert(&mut self, entry: &NewAudit) -> StoreResult<()> {
        insert_audit(&mut self.tx, entry).await
    }

    async fn history_insert(&mut self, h: &NewHistory) -> StoreResult<()> {
        insert_history(&mut self.tx, h).await
    }

    async fn signal_by_key(&mut self, run: Uuid, key: &str) -> StoreResult<Option<Uuid>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM waymark_signals WHERE run_id = $1 AND idempotency_key = $2",
        )
        .bind(run)
        .bind(key)
        .fetch_optional(&mut *self.tx)
        .await?)
    }

    async fn signal_insert(&mut self, run: Uuid, s: &NewSignal) -> StoreResult<()> {
        sqlx::query(
            r#"INSERT INTO waymark_signals (id, run_id, name, payload, idempotency_key, actor,
                   received_at, workflow_version)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"#,
        )
        .bind(s.id)
        .bind(run)
        .bind(&s.name)
        .bind(&s.payload)
        .bind(&s.idempotency_key)
        .bind(&s.actor)
        .bind(s.now)
        .bind(s.version as i32)
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
            r#"SELECT * FROM waymark_signals WHERE run_id = $1 AND status = 'queued' AND name = ANY($2)
               ORDER BY received_at, id LIMIT 1 FOR UPDATE"#,
        )
        .bind(run)
        .bind(names)
        .fetch_optional(&mut *self.tx)
        .await?;
        Ok(row.map(Into::into))
    }

    async fn signals_queued(&mut self, run: Uuid) -> StoreResult<Vec<SignalRecord>> {
        let rows: Vec<SignalRow> = sqlx::query_as(
            "SELECT * FROM waymark_signals WHERE run_id = $1 AND status = 'queued' ORDER BY received_at, id",
        )
        .bind(run)
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    async fn signal_set_status(
        &mut self,
        id: Uuid,
        status: &str,
        visit: Option<i64>,
    ) -> StoreResult<()> {
        sqlx::query("UPDATE waymark_signals SET status = $2, consumed_visit = $3 WHERE id = $1")
            .bind(id)
            .bind(status)
            .bind(visit)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn compensation_insert(&mut self, c: &CompensationRecord) -> StoreResult<()> {
        sqlx::query(
            r#"INSERT INTO waymark_compensations (run_id, visit, state, state_data)
               VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING"#,
        )
        .bind(c.run_id)
        .bind(c.visit)
        .bind(&c.state)
        .bind(&c.state_data)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn compensation_next(&mut self, run: Uuid) -> StoreResult<Option<CompensationRecord>> {
        let row: Option<(Uuid, i64, String, Value, String)> = sqlx::query_as(
            r#"SELECT run_id, visit, state, state_data, status FROM waymark_compensations
               WHERE run_id = $1 AND status = 'pending' ORDER BY visit DESC LIMIT 1"#,
        )
        .bind(run)
        .fetch_optional(&mut *self.tx)
        .await?;
        Ok(row.map(
            |(run_id, visit, state, state_data, status)| CompensationRecord {
                run_id,
                visit,
                state,
                state_data,
                status,
            },
        ))
    }

    async fn compensation_set(&mut self, run: Uuid, visit: i64, status: &str) -> StoreResult<()> {
        sqlx::query(
            "UPDATE waymark_compensations SET status = $3 WHERE run_id = $1 AND visit = $2",
        )
        .bind(run)
        .bind(visit)
        .bind(status)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }
}

async fn insert_run(
    conn: &mut PgConnection,
    new: &NewRun,
    parent: Option<(Uuid, i64, i32)>,
) -> StoreResult<Option<RunRow>> {
    Ok(sqlx::query_as(INSERT_RUN)
        .bind(new.id)
        .bind(&new.tenant)
        .bind(&new.workflow)
        .bind(new.workflow_version as i32)
        .bind(&new.state)
        .bind(&new.state_data)
        .bind(&new.input)
        .bind(&new.idempotency_key)
        .bind(&new.capability)
        .bind(new.now)
        .bind(&new.actor)
        .bind(new.compensable)
        .bind(parent.map(|p| p.0))
        .bind(parent.map(|p| p.1))
        .bind(parent.map(|p| p.2))
        .bind(serde_json::json!(new.tags))
        .fetch_optional(&mut *conn)
        .await?)
}

async fn insert_history(conn: &mut PgConnection, h: &NewHistory) -> StoreResult<()> {
    sqlx::query(
        r#"INSERT INTO waymark_history (run_id, from_state, to_state, from_status, to_status, cause,
               visit, attempt, actor, worker_id, started_at, committed_at, error)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"#,
    )
    .bind(h.run_id)
    .bind(&h.from_state)
    .bind(&h.to_state)
    .bind(h.from_status.map(|s| s.as_str()))
    .bind(h.to_status.as_str())
    .bind(&h.cause)
    .bind(h.visit)
    .bind(h.attempt)
    .bind(&h.actor)
    .bind(h.worker_id)
    .bind(h.started_at)
    .bind(h.committed_at)
    .bind(json_error(&h.error))
    .execute(&mut *conn)
    .await?;
    Ok(())
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

    /// Starts this process's LISTEN connection unless it runs; it stops when neither
    /// workers nor waiters want it.
    pub(super) fn ensure_listening(&self) {
        if !self.listening.swap(true, Ordering::SeqCst) {
            tokio::spawn(listen(
                self.pool.clone(),
                self.wake.clone(),
                self.endings.clone(),
                self.listening.clone(),
            ));
        }
    }

    pub(super) async fn runs_unfinished(&self, ids: &[Uuid]) -> StoreResult<Vec<Uuid>> {
        Ok(sqlx::query_scalar(
            r#"SELECT id FROM waymark_runs
               WHERE id = ANY($1) AND status NOT IN ('completed', 'failed', 'cancelled')"#,
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?)
    }

    pub(super) async fn run_start(&self, new: NewRun) -> StoreResult<Started> {
        let mut conn = self.pool.acquire().await?;
        self.run_start_in(&mut conn, new).await
    }

    /// Starts a run inside the caller's own transaction (`&mut *tx`), so a business row
    /// and its run commit (or roll back) together. Workers are woken at commit.
    pub async fn run_start_in(&self, conn: &mut PgConnection, new: NewRun) -> StoreResult<Started> {
        if let Some(row) = insert_run(conn, &new, None).await? {
            return Ok(Started {
                run: row.try_into()?,
                created: true,
            });
        }
        // The key named an existing run: the same input is a replay, another is a conflict.
        let key = new.idempotency_key.clone().unwrap_or_default();
        let existing: Option<RunRow> = sqlx::query_as(
            "SELECT * FROM waymark_runs WHERE tenant = $1 AND workflow = $2 AND idempotency_key = $3",
        )
        .bind(&new.tenant)
        .bind(&new.workflow)
        .bind(&key)
        .fetch_optional(&mut *conn)
        .await?;
        let run = Run::try_from(existing.ok_or_else(|| {
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

    pub(super) async fn run_get(&self, scope: &TenantScope, id: Uuid) -> StoreResult<Option<Run>> {
        let row: Option<RunRow> = sqlx::query_as(
            "SELECT * FROM waymark_runs WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)",
        )
        .bind(id)
        .bind(scope.tenant())
        .fetch_optional(&self.pool)
        .await?;
        row.map(Run::try_from).transpose()
    }

    pub(super) async fn run_children(&self, parent: Uuid, visit: i64) -> StoreResult<Vec<Run>> {
        let rows: Vec<RunRow> = sqlx::query_as(
            "SELECT * FROM waymark_runs WHERE parent_id = $1 AND parent_visit = $2 ORDER BY child_index",
        )
        .bind(parent)
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
            "SELECT * FROM waymark_history WHERE run_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(id)
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
        let rows: Vec<HistoryRow> = sqlx::query_as(
            "SELECT h.* FROM waymark_history h JOIN waymark_runs r ON r.id = h.run_id \
             WHERE h.run_id = ANY($1) AND ($2::text IS NULL OR r.tenant = $2) \
             ORDER BY h.run_id, h.id",
        )
        .bind(ids)
        .bind(scope.tenant())
        .fetch_all(&self.pool)
        .await?;
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
        // Signal ids are UUIDv7s made on receipt: their order is the order of arrival.
        let rows: Vec<SignalRow> = sqlx::query_as(
            "SELECT * FROM waymark_signals WHERE run_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(id)
        .bind(after.unwrap_or(Uuid::nil()))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(Some(rows.into_iter().map(Into::into).collect()))
    }

    pub(super) async fn run_compensations(&self, id: Uuid) -> StoreResult<Vec<CompensationRecord>> {
        let rows: Vec<(Uuid, i64, String, Value, String)> = sqlx::query_as(
            "SELECT run_id, visit, state, state_data, status FROM waymark_compensations WHERE run_id = $1 ORDER BY visit",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(run_id, visit, state, state_data, status)| CompensationRecord {
                    run_id,
                    visit,
                    state,
                    state_data,
                    status,
                },
            )
            .collect())
    }

    pub(super) async fn run_claim(&self, req: &ClaimRequest) -> StoreResult<Vec<Run>> {
        let (names, versions): (Vec<String>, Vec<i32>) = req
            .workflows
            .iter()
            .map(|(n, v)| (n.clone(), *v as i32))
            .unzip();
        let rows: Vec<RunRow> = sqlx::query_as(
            r#"
            WITH due AS (
                SELECT r.id, r.status AS claimed_from FROM waymark_runs r
                WHERE ((r.status IN ('pending', 'sleeping', 'retrying') AND r.due_at <= $1)
                       OR (r.status = 'compensating' AND r.locked_by IS NULL AND r.due_at <= $1)
                       OR (r.status IN ('running', 'compensating') AND r.lease_expires_at < now()))
                  AND EXISTS (SELECT 1 FROM unnest($2::text[], $3::int4[]) AS k(name, version)
                              WHERE k.name = r.workflow AND r.workflow_version <= k.version)
                  AND (r.capability IS NULL OR r.capability = ANY($4::text[])
                       OR r.status = 'compensating')
                  AND NOT (r.id = ANY($8::uuid[]))
                ORDER BY r.due_at
                LIMIT $5
                FOR UPDATE SKIP LOCKED
            )
            UPDATE waymark_runs r SET
                status = CASE WHEN r.status = 'compensating' THEN 'compensating' ELSE 'running' END,
                lease_token = r.lease_token + 1,
                locked_by = $6,
                lease_expires_at = now() + make_interval(secs => $7),
                attempt = r.attempt + 1,
                updated_at = $1
            FROM due WHERE r.id = due.id
            RETURNING r.*, due.claimed_from
            "#,
        )
        .bind(req.now)
        .bind(&names)
        .bind(&versions)
        .bind(&req.capabilities)
        .bind(req.limit as i64)
        .bind(req.worker_id)
        .bind(secs(req.lease))
        .bind(&req.exclude)
        .fetch_all(&self.worker_pool)
        .await?;
        rows_to_runs(rows)
    }

    pub(super) async fn run_commit(&self, lease: &Lease, commit: &Commit) -> StoreResult<Run> {
        if let Some(run) = self.commit_fast(lease, commit).await? {
            return Ok(run);
        }
        in_tx!(self.worker_pool, ops => logic::commit(ops, lease, commit))
    }

    /// The one-statement path; `None` when the commit is not a hot one or its extra
    /// conditions did not hold (the transactional path then decides).
    async fn commit_fast(&self, lease: &Lease, commit: &Commit) -> StoreResult<Option<Run>> {
        if commit.upgrade.is_some() {
            return Ok(None);
        }
        let (to_status, state, data, output, error, entering, capability, due_at) =
            match &commit.outcome {
                Outcome::Enter { target, next } if !target.compensable => {
                    let (status, due) = match next {
                        Next::Hold => ("running", commit.now),
                        Next::Release => ("pending", commit.now),
                        Next::Sleep(at) => ("sleeping", *at),
                    };
                    (
                        status,
                        target.state.as_str(),
                        Some(&target.data),
                        None::<&Value>,
                        None,
                        true,
                        target.capability.clone(),
                        Some(due),
                    )
                }
                Outcome::Retry { error, due_at } => (
                    "retrying",
                    commit.from_state.as_str(),
                    None,
                    None,
                    Some(error.clone()),
                    false,
                    None,
                    Some(*due_at),
                ),
                _ => return Ok(None),
            };
        // Kept as a parameter so the statement's shape stays that of every commit.
        let finished_at: Option<DateTime<Utc>> = None;
        let (from_visit, from_attempt) = commit.from_position;
        let row: Option<RunRow> = sqlx::query_as(COMMIT_FAST)
            .bind(lease.run_id)
            .bind(lease.token)
            .bind(to_status)
            .bind(state)
            .bind(data)
            .bind(output)
            .bind(json_error(&error))
            .bind(entering)
            .bind(capability)
            .bind(due_at)
            .bind(secs(commit.lease))
            .bind(finished_at)
            .bind(commit.now)
            .bind(lease.worker_id)
            .bind(&commit.from_state)
            .bind(commit.cause.as_str())
            .bind(from_visit)
            .bind(from_attempt)
            .bind(&commit.actor)
            .bind(commit.step_started_at)
            .fetch_optional(&self.worker_pool)
            .await?;
        row.map(Run::try_from).transpose()
    }

    pub(super) async fn run_signal(
        &self,
        scope: &TenantScope,
        run_id: Uuid,
        signal: &NewSignal,
    ) -> StoreResult<SignalReceipt> {
        in_tx!(self, ops => logic::signal(ops, scope, run_id, signal))
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
        in_tx!(self, ops => logic::cancel(ops, scope, id, actor, reason, address, now))
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
        in_tx!(self, ops => logic::terminate(ops, scope, id, actor, reason, address, now))
    }

    pub(super) async fn run_retry(
        &self,
        scope: &TenantScope,
        id: Uuid,
        actor: &str,
        address: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<Run> {
        in_tx!(self, ops => logic::retry(ops, scope, id, actor, address, now))
    }

    pub(super) async fn run_skip_compensation(
        &self,
        scope: &TenantScope,
        id: Uuid,
        actor: &str,
        address: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<Run> {
        in_tx!(self, ops => logic::skip_compensation(ops, scope, id, actor, address, now))
    }

    pub(super) async fn runs_fire_timeouts(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<u32> {
        let due: Vec<Uuid> = sqlx::query_scalar(
            r#"SELECT id FROM waymark_runs WHERE status = 'waiting' AND due_at <= $1
               ORDER BY due_at LIMIT $2"#,
        )
        .bind(now)
        .bind(limit as i64)
        .fetch_all(&self.worker_pool)
        .await?;
        let mut fired = 0;
        for id in due {
            let fired_one: StoreResult<bool> =
                in_tx!(self.worker_pool, ops => logic::fire_timeout(ops, id, now));
            if fired_one? {
                fired += 1;
            }
        }
        Ok(fired)
    }

    pub(super) async fn run_release(&self, lease: &Lease, now: DateTime<Utc>) -> StoreResult<()> {
        let done = sqlx::query(
            r#"UPDATE waymark_runs SET
                   status = CASE WHEN status = 'compensating' THEN 'compensating' ELSE 'pending' END,
                   locked_by = NULL, lease_expires_at = NULL,
                   attempt = GREATEST(attempt - 1, 0), due_at = $4, updated_at = $4
               WHERE id = $1 AND lease_token = $2 AND locked_by = $3
                 AND status IN ('running', 'compensating')"#,
        )
        .bind(lease.run_id)
        .bind(lease.token)
        .bind(lease.worker_id)
        .bind(now)
        .execute(&self.worker_pool)
        .await?;
        lease_applied(lease, done.rows_affected())
    }

    pub(super) async fn run_progress(
        &self,
        lease: &Lease,
        fraction: f32,
        message: &str,
    ) -> StoreResult<()> {
        let done = sqlx::query(
            r#"UPDATE waymark_runs SET progress_pct = $4, progress_message = $5
               WHERE id = $1 AND lease_token = $2 AND locked_by = $3
                 AND status IN ('running', 'compensating') AND lease_expires_at > now()"#,
        )
        .bind(lease.run_id)
        .bind(lease.token)
        .bind(lease.worker_id)
        .bind(fraction)
        .bind(message)
        .execute(&self.worker_pool)
        .await?;
        lease_applied(lease, done.rows_affected())
    }

    pub(super) async fn runs_heartbeat(
        &self,
        worker_id: Uuid,
        runs: &[Uuid],
        lease: Duration,
    ) -> StoreResult<Vec<Held>> {
        let rows: Vec<(Uuid, i64, bool)> = sqlx::query_as(
            r#"UPDATE waymark_runs SET lease_expires_at = now() + make_interval(secs => $2)
               WHERE locked_by = $1 AND id = ANY($3) AND status IN ('running', 'compensating')
                 AND lease_expires_at > now()
               RETURNING id, lease_token, cancel_request IS NOT NULL"#,
        )
        .bind(worker_id)
        .bind(secs(lease))
        .bind(runs)
        .fetch_all(&self.worker_pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(run_id, token, cancel_requested)| Held {
                lease: Lease {
                    run_id,
                    token,
                    worker_id,
                },
                cancel_requested,
            })
            .collect())
    }

    pub(super) async fn run_next_due(&self) -> StoreResult<Option<DateTime<Utc>>> {
        Ok(sqlx::query_scalar(
            r#"SELECT min(due_at) FROM waymark_runs
               WHERE status IN ('pending', 'sleeping', 'retrying', 'waiting')
                  OR (status = 'compensating' AND locked_by IS NULL)"#,
        )
        .fetch_one(&self.worker_pool)
        .await?)
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
                    WHERE r.finished_at < $1 AND NOT r.held
                      AND ($3::text IS NULL OR r.tenant = $3)
                      AND NOT EXISTS (SELECT 1 FROM waymark_runs p WHERE p.id = r.parent_id
                                         AND (p.finished_at IS NULL OR p.held))
                      AND NOT EXISTS (SELECT 1 FROM waymark_runs c WHERE c.parent_id = r.id
                                         AND c.finished_at IS NULL)
                    ORDER BY r.finished_at LIMIT $2)"#,
        )
        .bind(before)
        .bind(limit as i64)
        .bind(scope.tenant())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    pub(super) async fn worker_register(&self, w: &WorkerInfo) -> StoreResult<()> {
        sqlx::query(
            r#"INSERT INTO waymark_workers (id, host, pid, version, capabilities, workflows,
                   started_at, last_heartbeat_at, runs_in_hand)
               VALUES ($1, $2, $3, $4, $5, $6, now(), now(), 0)"#,
        )
        .bind(w.id)
        .bind(&w.host)
        .bind(w.pid)
        .bind(&w.version)
        .bind(serde_json::json!(w.capabilities))
        .bind(serde_json::json!(w.workflows))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn worker_heartbeat(&self, id: Uuid, runs_in_hand: i32) -> StoreResult<()> {
        sqlx::query(
            "UPDATE waymark_workers SET last_heartbeat_at = now(), runs_in_hand = $2 WHERE id = $1",
        )
        .bind(id)
        .bind(runs_in_hand)
        .execute(&self.worker_pool)
        .await?;
        Ok(())
    }

    pub(super) async fn worker_stop(&self, id: Uuid) -> StoreResult<()> {
        sqlx::query(
            "UPDATE waymark_workers SET stopped_at = now(), runs_in_hand = 0 WHERE id = $1",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn workers_prune(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        let done = sqlx::query(
            "DELETE FROM waymark_workers WHERE COALESCE(stopped_at, last_heartbeat_at) < $1",
        )
        .bind(before)
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
                WHERE $1::timestamptz IS NULL OR (stopped_at IS NULL AND last_heartbeat_at >= $1)
                ORDER BY started_at DESC"#,
        )
        .bind(live_since)
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
            sqlx::query_as("SELECT * FROM waymark_workers WHERE id < $1 ORDER BY id DESC LIMIT $2")
                .bind(before.unwrap_or(Uuid::max()))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter().map(WorkerInfo::try_from).collect()
    }
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: Uuid,
    tenant: String,
    prefix: String,
    secret_hash: String,
    scopes: Value,
    name: Option<String>,
    owner_email: Option<String>,
    created_at: DateTime<Utc>,
    created_by: String,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    revoked_by: Option<String>,
    last_used_at: Option<DateTime<Utc>>,
    sealed_secret: Option<String>,
    revealed_at: Option<DateTime<Utc>>,
    suspended_at: Option<DateTime<Utc>>,
}

impl TryFrom<KeyRow> for KeyRecord {
    type Error = StoreError;

    fn try_from(k: KeyRow) -> StoreResult<Self> {
        Ok(KeyRecord {
            id: k.id,
            tenant: k.tenant,
            prefix: k.prefix,
            secret_hash: k.secret_hash,
            scopes: from_json(k.scopes, "scopes")?,
            name: k.name,
            owner_email: k.owner_email,
            created_at: k.created_at,
            created_by: k.created_by,
            expires_at: k.expires_at,
            revoked_at: k.revoked_at,
            revoked_by: k.revoked_by,
            last_used_at: k.last_used_at,
            awaiting_reveal: k.sealed_secret.is_some(),
            revealed_at: k.revealed_at,
            suspended_at: k.suspended_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    id: i64,
    at: DateTime<Utc>,
    tenant: String,
    actor: String,
    action: String,
    target: Option<String>,
    detail: Value,
    address: Option<String>,
}

impl From<AuditRow> for AuditEntry {
    fn from(a: AuditRow) -> Self {
        AuditEntry {
            id: a.id,
            at: a.at,
            tenant: a.tenant,
            actor: a.actor,
            action: a.action,
            target: a.target,
            detail: a.detail,
            address: a.address,
        }
    }
}

async fn insert_audit(conn: &mut PgConnection, a: &NewAudit) -> StoreResult<()> {
    sqlx::query(
        r#"INSERT INTO waymark_audit (at, tenant, actor, action, target, detail, address)
           VALUES ($1, $2, $3, $4, $5, $6, $7)"#,
    )
    .bind(a.at)
    .bind(&a.tenant)
    .bind(&a.actor)
    .bind(&a.action)
    .bind(&a.target)
    .bind(&a.detail)
    .bind(&a.address)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn history_entry(h: HistoryRow) -> StoreResult<HistoryEntry> {
    Ok(HistoryEntry {
        id: h.id,
        run_id: h.run_id,
        from_state: h.from_state,
        to_state: h.to_state,
        from_status: h.from_status.as_deref().map(parse_status).transpose()?,
        to_status: parse_status(&h.to_status)?,
        cause: h.cause,
        visit: h.visit,
        attempt: h.attempt,
        actor: h.actor,
        worker_id: h.worker_id,
        started_at: h.started_at,
        committed_at: h.committed_at,
        error: parse_error(h.error)?,
    })
}

impl PgStore {
    pub(super) async fn runs_list(
        &self,
        scope: &TenantScope,
        filter: &RunFilter,
        before: Option<Uuid>,
        limit: u32,
    ) -> StoreResult<Vec<Run>> {
        let mut q = sqlx::QueryBuilder::<Postgres>::new("SELECT * FROM waymark_runs r WHERE true");
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
            q.push(" AND r.created_at >= ").push_bind(after);
        }
        if let Some(before) = filter.created_before {
            q.push(" AND r.created_at < ").push_bind(before);
        }
        if let Some(tag) = &filter.tag {
            q.push(
                " AND EXISTS (SELECT 1 FROM waymark_run_tags t WHERE t.run_id = r.id AND t.tag = ",
            )
            .push_bind(tag.clone())
            .push(")");
        }
        if let Some(cursor) = before {
            q.push(" AND r.id < ").push_bind(cursor);
        }
        q.push(" ORDER BY r.id DESC LIMIT ").push_bind(limit as i64);
        let rows: Vec<RunRow> = q.build_query_as().fetch_all(&self.pool).await?;
        rows_to_runs(rows)
    }

    pub(super) async fn runs_counts(&self, scope: &TenantScope) -> StoreResult<Vec<RunCount>> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            r#"SELECT workflow, status, count(*) FROM waymark_runs
               WHERE ($1::text IS NULL OR tenant = $1)
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

    /// (bucket index, started, completed, failed) per bucket of `seconds`.
    pub(super) async fn runs_activity(
        &self,
        scope: &TenantScope,
        since: DateTime<Utc>,
        seconds: i64,
    ) -> StoreResult<Vec<(i64, i64, i64, i64)>> {
        Ok(sqlx::query_as(
            r#"SELECT b, sum(started)::bigint, sum(completed)::bigint, sum(failed)::bigint FROM (
                   SELECT floor(extract(epoch FROM created_at) / $3)::bigint AS b,
                          1 AS started, 0 AS completed, 0 AS failed
                   FROM waymark_runs
                   WHERE ($1::text IS NULL OR tenant = $1) AND created_at >= $2
                   UNION ALL
                   SELECT floor(extract(epoch FROM finished_at) / $3)::bigint,
                          0, (status = 'completed')::int, (status = 'failed')::int
                   FROM waymark_runs
                   WHERE ($1::text IS NULL OR tenant = $1) AND finished_at >= $2
               ) events GROUP BY b ORDER BY b"#,
        )
        .bind(scope.tenant())
        .bind(since)
        .bind(seconds as f64)
        .fetch_all(&self.pool)
        .await?)
    }

    pub(super) async fn runs_due_stats(
        &self,
        now: DateTime<Utc>,
    ) -> StoreResult<(i64, Option<DateTime<Utc>>)> {
        Ok(sqlx::query_as(
            r#"SELECT count(*), min(due_at) FROM waymark_runs
               WHERE ((status IN ('pending', 'sleeping', 'retrying'))
                      OR (status = 'compensating' AND locked_by IS NULL))
                 AND due_at <= $1"#,
        )
        .bind(now)
        .fetch_one(&self.pool)
        .await?)
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
        let row: Option<KeyRow> = sqlx::query_as("SELECT * FROM waymark_keys WHERE prefix = $1")
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
            "SELECT * FROM waymark_keys WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)",
        )
        .bind(id)
        .bind(scope.tenant())
        .fetch_optional(&self.pool)
        .await?;
        row.map(KeyRecord::try_from).transpose()
    }

    pub(super) async fn key_list(&self, scope: &TenantScope) -> StoreResult<Vec<KeyRecord>> {
        let rows: Vec<KeyRow> = sqlx::query_as(
            "SELECT * FROM waymark_keys WHERE ($1::text IS NULL OR tenant = $1) ORDER BY created_at, id",
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
            "SELECT * FROM waymark_keys WHERE ($1::text IS NULL OR tenant = $1) AND id > $2 \
             ORDER BY id LIMIT $3",
        )
        .bind(scope.tenant())
        .bind(after.unwrap_or(Uuid::nil()))
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
            r#"UPDATE waymark_keys SET revoked_at = COALESCE(revoked_at, $3),
                   revoked_by = COALESCE(revoked_by, $4)
               WHERE id = $1 AND ($2::text IS NULL OR tenant = $2) RETURNING *"#,
        )
        .bind(id)
        .bind(scope.tenant())
        .bind(now)
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
               WHERE id = $1 AND ($2::text IS NULL OR tenant = $2) FOR UPDATE"#,
        )
        .bind(id)
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
            r#"UPDATE waymark_keys SET sealed_secret = NULL, sealed_master_key_id = NULL, revealed_at = $2
               WHERE id = $1"#,
        )
        .bind(id)
        .bind(now)
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
        let done = sqlx::query("UPDATE waymark_keys SET suspended_at = $2 WHERE tenant = $1")
            .bind(tenant)
            .bind(suspended)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    pub(super) async fn key_touch(&self, id: Uuid, now: DateTime<Utc>) -> StoreResult<()> {
        sqlx::query(
            r#"UPDATE waymark_keys SET last_used_at = $2
               WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2 - interval '60 seconds')"#,
        )
        .bind(id)
        .bind(now)
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
            r#"SELECT * FROM waymark_audit WHERE ($1::text IS NULL OR tenant = $1)
                 AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"#,
        )
        .bind(scope.tenant())
        .bind(before)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }
}

#[derive(sqlx::FromRow)]
struct ScheduleRow {
    id: Uuid,
    tenant: String,
    name: String,
    cron: String,
    timezone: String,
    workflow: String,
    input: Value,
    overlap: String,
    catch_up: String,
    paused: bool,
    last_fired_at: DateTime<Utc>,
    next_fire_at: Option<DateTime<Utc>>,
    last_run_id: Option<Uuid>,
    buffered_fire_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    created_by: String,
}

impl TryFrom<ScheduleRow> for Schedule {
    type Error = StoreError;

    fn try_from(r: ScheduleRow) -> StoreResult<Self> {
        Ok(Schedule {
            id: r.id,
            tenant: r.tenant,
            name: r.name,
            cron: r.cron,
            timezone: r.timezone,
            workflow: r.workflow,
            input: r.input,
            overlap: Overlap::parse(&r.overlap)
                .ok_or_else(|| StoreError::Corrupt(format!("overlap {:?}", r.overlap)))?,
            catch_up: CatchUp::parse(&r.catch_up)
                .ok_or_else(|| StoreError::Corrupt(format!("catch_up {:?}", r.catch_up)))?,
            paused: r.paused,
            last_fired_at: r.last_fired_at,
            next_fire_at: r.next_fire_at,
            last_run_id: r.last_run_id,
            buffered_fire_at: r.buffered_fire_at,
            created_at: r.created_at,
            updated_at: r.updated_at,
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

impl PgStore {
    pub(super) async fn schedule_insert(
        &self,
        s: &Schedule,
        if_absent: bool,
    ) -> StoreResult<Option<Schedule>> {
        let sql = format!(
            r#"INSERT INTO waymark_schedules (id, tenant, name, cron, timezone, workflow, input, overlap,
                   catch_up, paused, last_fired_at, next_fire_at, created_at, updated_at, created_by)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, $14)
               {} RETURNING *"#,
            if if_absent {
                "ON CONFLICT (tenant, name) DO NOTHING"
            } else {
                ""
            }
        );
        let row: Option<ScheduleRow> = sqlx::query_as(&sql)
            .bind(s.id)
            .bind(&s.tenant)
            .bind(&s.name)
            .bind(&s.cron)
            .bind(&s.timezone)
            .bind(&s.workflow)
            .bind(&s.input)
            .bind(s.overlap.as_str())
            .bind(s.catch_up.as_str())
            .bind(s.paused)
            .bind(s.last_fired_at)
            .bind(s.next_fire_at)
            .bind(s.created_at)
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
            "SELECT * FROM waymark_schedules WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)",
        )
        .bind(id)
        .bind(scope.tenant())
        .fetch_optional(&self.pool)
        .await?;
        row.map(Schedule::try_from).transpose()
    }

    pub(super) async fn schedule_list(&self, scope: &TenantScope) -> StoreResult<Vec<Schedule>> {
        let rows: Vec<ScheduleRow> = sqlx::query_as(
            "SELECT * FROM waymark_schedules WHERE ($1::text IS NULL OR tenant = $1) ORDER BY tenant, name",
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
            "SELECT * FROM waymark_schedules WHERE ($1::text IS NULL OR tenant = $1) AND id > $2 \
             ORDER BY id LIMIT $3",
        )
        .bind(scope.tenant())
        .bind(after.unwrap_or(Uuid::nil()))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Schedule::try_from).collect()
    }

    pub(super) async fn schedule_update(&self, s: &Schedule) -> StoreResult<Schedule> {
        let row: ScheduleRow = sqlx::query_as(
            r#"UPDATE waymark_schedules SET name = $2, cron = $3, timezone = $4, workflow = $5, input = $6,
                   overlap = $7, catch_up = $8, paused = $9, last_fired_at = $10, next_fire_at = $11,
                   buffered_fire_at = $12, updated_at = $13
               WHERE id = $1 RETURNING *"#,
        )
        .bind(s.id)
        .bind(&s.name)
        .bind(&s.cron)
        .bind(&s.timezone)
        .bind(&s.workflow)
        .bind(&s.input)
        .bind(s.overlap.as_str())
        .bind(s.catch_up.as_str())
        .bind(s.paused)
        .bind(s.last_fired_at)
        .bind(s.next_fire_at)
        .bind(s.buffered_fire_at)
        .bind(s.updated_at)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| name_taken(e, &s.name))?;
        row.try_into()
    }

    pub(super) async fn schedule_delete(&self, scope: &TenantScope, id: Uuid) -> StoreResult<bool> {
        let done = sqlx::query(
            "DELETE FROM waymark_schedules WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)",
        )
        .bind(id)
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
               WHERE NOT paused AND (next_fire_at <= $1 OR buffered_fire_at IS NOT NULL)
               ORDER BY next_fire_at LIMIT $2"#,
        )
        .bind(now)
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
        Ok(sqlx::query_scalar(
            r#"INSERT INTO waymark_leases (name, holder, token, expires_at)
               VALUES ($1, $2, 1, now() + make_interval(secs => $3))
               ON CONFLICT (name) DO UPDATE SET
                   token = CASE WHEN waymark_leases.holder = $2 THEN waymark_leases.token
                                ELSE waymark_leases.token + 1 END,
                   holder = $2,
                   expires_at = now() + make_interval(secs => $3)
               WHERE waymark_leases.holder = $2 OR waymark_leases.expires_at < now()
               RETURNING token"#,
        )
        .bind(name)
        .bind(holder)
        .bind(secs(lease))
        .fetch_optional(&self.pool)
        .await?)
    }

    pub(super) async fn lease_release(&self, name: &str, holder: Uuid) -> StoreResult<()> {
        sqlx::query(
            "UPDATE waymark_leases SET expires_at = now() - interval '1 millisecond' WHERE name = $1 AND holder = $2",
        )
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(super) async fn schedule_advance(&self, a: &ScheduleAdvance) -> StoreResult<Option<Run>> {
        let mut tx = self.pool.begin().await?;
        // The fence: still the scheduler, under the same token, by database time.
        let held: Option<i64> = sqlx::query_scalar(
            r#"SELECT token FROM waymark_leases
               WHERE name = 'scheduler' AND holder = $1 AND token = $2 AND expires_at > now() FOR SHARE"#,
        )
        .bind(a.lease.0)
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
        let mut run_id: Option<Uuid> = None;
        if let Some(new) = &a.start {
            match insert_run(&mut tx, new, None).await? {
                Some(row) => {
                    let started = Run::try_from(row)?;
                    run_id = Some(started.id);
                    run = Some(started);
                }
                None => {
                    // The idempotency key (schedule + fire time) already named a run.
                    run_id = sqlx::query_scalar(
                        "SELECT id FROM waymark_runs WHERE tenant = $1 AND workflow = $2 AND idempotency_key = $3",
                    )
                    .bind(&new.tenant)
                    .bind(&new.workflow)
                    .bind(&new.idempotency_key)
                    .fetch_optional(&mut *tx)
                    .await?;
                }
            }
        }
        let updated = sqlx::query(
            r#"UPDATE waymark_schedules SET last_fired_at = $3, next_fire_at = $4, buffered_fire_at = $5,
                   last_run_id = COALESCE($6, last_run_id), updated_at = now()
               WHERE id = $1 AND last_fired_at = $2"#,
        )
        .bind(a.schedule_id)
        .bind(a.expected_last)
        .bind(a.last_fired_at)
        .bind(a.next_fire_at)
        .bind(a.buffered_fire_at)
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
        Ok(run)
    }
}

/// A key and its audit record inside the caller's transaction (see `Store::key_insert_in`).
pub(super) async fn key_insert_in(
    conn: &mut PgConnection,
    key: &NewKey,
    audit: &NewAudit,
) -> StoreResult<KeyRecord> {
    let row = insert_key(conn, key).await?;
    insert_audit(conn, audit).await?;
    row.try_into()
}

/// Inserts a key row (its hash, perhaps its sealed secret; never the secret).
async fn insert_key(conn: &mut PgConnection, key: &NewKey) -> StoreResult<KeyRow> {
    Ok(sqlx::query_as(
        r#"INSERT INTO waymark_keys (id, tenant, prefix, secret_hash, scopes, name, owner_email,
                   created_at, created_by, expires_at, sealed_secret,
                   sealed_master_key_id)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING *"#,
    )
    .bind(key.id)
    .bind(&key.tenant)
    .bind(&key.prefix)
    .bind(&key.secret_hash)
    .bind(serde_json::json!(key.scopes))
    .bind(&key.name)
    .bind(&key.owner_email)
    .bind(key.now)
    .bind(&key.created_by)
    .bind(key.expires_at)
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

/// Whether anyone in this process wants notifications: workers or long-poll waiters.
fn wanted(wake: &watch::Sender<u64>, endings: &RunEndings) -> bool {
    wake.receiver_count() > 0 || !endings.is_empty()
}

/// Resolves once neither workers nor waiters want notifications.
async fn unwanted(wake: &watch::Sender<u64>, endings: &RunEndings) {
    loop {
        wake.closed().await;
        endings.unwatched().await;
        if !wanted(wake, endings) {
            return;
        }
    }
}

/// The process's one LISTEN connection: due runs wake the workers, endings wake the
/// long polls waiting on them. Runs while anyone wants it.
async fn listen(
    pool: PgPool,
    wake: Arc<watch::Sender<u64>>,
    endings: Arc<RunEndings>,
    listening: Arc<AtomicBool>,
) {
    loop {
        listen_while_wanted(&pool, &wake, &endings).await;
        listening.store(false, Ordering::SeqCst);
        // A subscriber or watch that came between the last check and the store above
        // saw the flag still set and started no listener: carry on for it.
        if pool.is_closed() || !wanted(&wake, &endings) || listening.swap(true, Ordering::SeqCst) {
            return;
        }
    }
}

/// After any connection loss it reconnects and wakes everyone once, so workers sweep
/// for runs that became due and waiters re-read runs that may have ended while nobody
/// was listening.
async fn listen_while_wanted(pool: &PgPool, wake: &watch::Sender<u64>, endings: &RunEndings) {
    let bump = || wake.send_modify(|n| *n = n.wrapping_add(1));
    let lost = || {
        bump();
        endings.wake_all();
    };
    let mut backoff = Duration::from_millis(100);
    while !pool.is_closed() && wanted(wake, endings) {
        let mut listener = match PgListener::connect_with(pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(error = %error, "cannot open the LISTEN connection; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(error) = listener.listen_all([CHANNEL, ENDED_CHANNEL]).await {
            tracing::warn!(error = %error, "LISTEN failed; retrying");
            tokio::time::sleep(backoff).await;
            continue;
        }
        backoff = Duration::from_millis(100);
        lost();
        loop {
            tokio::select! {
                received = listener.try_recv() => match received {
                    Ok(Some(note)) if note.channel() == ENDED_CHANNEL => {
                        match note.payload().parse::<Uuid>() {
                            Ok(id) => endings.ended(id),
                            Err(_) => endings.wake_all(),
                        }
                    }
                    Ok(Some(_)) => bump(),
                    Ok(None) => {
                        // The connection dropped and was re-established (LISTEN
                        // included), but notifications in between are gone.
                        tracing::warn!("LISTEN connection lost; reconnected, sweeping");
                        lost();
                    }
                    Err(error) => {
                        tracing::warn!(error = %error, "LISTEN connection failed; reconnecting");
                        lost();
                        break;
                    }
                },
                _ = unwanted(wake, endings) => return,
            }
        }
    }
}
