//! Embedded SQLite store: one process, one database file, nothing to install.
//!
//! The pool has a single connection. Embedded mode is one process by design, so
//! serialising every statement through one connection costs little and rules out
//! SQLITE_BUSY upgrade failures between concurrent transactions. Timestamps are
//! integer milliseconds (UTC); "database time" for leases is SQLite's own clock.

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

use super::{
    check_schema_not_newer, json_error, latest_version, parse_error, parse_status, ClaimRequest,
    Commit, HistoryEntry, Lease, NewRun, Outcome, Run, RunStatus, Started, StoreResult,
    TenantScope, WorkerInfo,
};
use crate::error::StoreError;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// SQLite's current time in Unix milliseconds.
const DB_NOW: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    wake: Arc<watch::Sender<u64>>,
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
        })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    fn bump(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(super) async fn migrate(&self) -> StoreResult<()> {
        check_schema_not_newer(&MIGRATOR, self.applied_version().await?)?;
        MIGRATOR.run(&self.pool).await?;
        Ok(())
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
        Ok(self.applied_version().await? == Some(latest_version(&MIGRATOR)))
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    pub(super) async fn run_start(&self, new: NewRun) -> StoreResult<Started> {
        let mut tx = self.pool.begin().await?;
        let inserted: Option<RunRow> = sqlx::query_as(
            r#"INSERT INTO waymark_runs (id, tenant, workflow, workflow_version, status, state,
                   state_data, input, idempotency_key, capability, visit, attempt, due_at,
                   created_at, updated_at)
               VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?6, ?7, ?8, ?9, 1, 0, ?10, ?10, ?10)
               ON CONFLICT (tenant, workflow, idempotency_key) WHERE idempotency_key IS NOT NULL
               DO NOTHING
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
        .fetch_optional(&mut *tx)
        .await?;
        let started = match inserted {
            Some(row) => {
                let run = Run::try_from(row)?;
                sqlx::query(
                    r#"INSERT INTO waymark_history (run_id, from_state, to_state, from_status,
                           to_status, cause, visit, attempt, actor, started_at, committed_at)
                       VALUES (?1, NULL, ?2, NULL, 'pending', 'started', 1, 0, ?3, ?4, ?4)"#,
                )
                .bind(run.id.to_string())
                .bind(&run.state)
                .bind(&new.actor)
                .bind(ms(new.now))
                .execute(&mut *tx)
                .await?;
                Started { run, created: true }
            }
            None => {
                let key = new.idempotency_key.clone().unwrap_or_default();
                let row: RunRow = sqlx::query_as(
                    "SELECT * FROM waymark_runs WHERE tenant = ?1 AND workflow = ?2 AND idempotency_key = ?3",
                )
                .bind(&new.tenant)
                .bind(&new.workflow)
                .bind(&key)
                .fetch_one(&mut *tx)
                .await?;
                let run = Run::try_from(row)?;
                if run.input != new.input {
                    return Err(StoreError::IdempotencyConflict {
                        key,
                        existing: run.id,
                    });
                }
                Started {
                    run,
                    created: false,
                }
            }
        };
        tx.commit().await?;
        if started.created {
            self.bump();
        }
        Ok(started)
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

    pub(super) async fn run_history(
        &self,
        scope: &TenantScope,
        id: Uuid,
    ) -> StoreResult<Option<Vec<HistoryEntry>>> {
        if self.run_get(scope, id).await?.is_none() {
            return Ok(None);
        }
        let rows: Vec<HistoryRow> =
            sqlx::query_as("SELECT * FROM waymark_history WHERE run_id = ?1 ORDER BY id")
                .bind(id.to_string())
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|h| {
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
            })
            .collect::<StoreResult<Vec<_>>>()
            .map(Some)
    }

    pub(super) async fn run_claim(&self, req: &ClaimRequest) -> StoreResult<Vec<Run>> {
        let workflows = serde_json::json!(req.workflows).to_string();
        let capabilities = serde_json::json!(req.capabilities).to_string();
        let rows: Vec<RunRow> = sqlx::query_as(&format!(
            r#"UPDATE waymark_runs SET
                   status = 'running',
                   lease_token = lease_token + 1,
                   locked_by = ?1,
                   lease_expires_at = {DB_NOW} + ?2,
                   attempt = attempt + 1,
                   updated_at = ?3
               WHERE id IN (
                   SELECT r.id FROM waymark_runs r
                   WHERE ((r.status IN ('pending', 'sleeping', 'retrying') AND r.due_at <= ?3)
                          OR (r.status = 'running' AND r.lease_expires_at < {DB_NOW}))
                     AND EXISTS (SELECT 1 FROM json_each(?4) k
                                 WHERE json_extract(k.value, '$[0]') = r.workflow
                                   AND r.workflow_version <= json_extract(k.value, '$[1]'))
                     AND (r.capability IS NULL
                          OR r.capability IN (SELECT value FROM json_each(?5)))
                   ORDER BY r.due_at
                   LIMIT ?6)
               RETURNING *"#
        ))
        .bind(req.worker_id.to_string())
        .bind(lease_ms(req.lease))
        .bind(ms(req.now))
        .bind(workflows)
        .bind(capabilities)
        .bind(req.limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Run::try_from).collect()
    }

    pub(super) async fn run_commit(&self, lease: &Lease, commit: &Commit) -> StoreResult<Run> {
        let (data, output, entering, capability) = match &commit.outcome {
            Outcome::Enter {
                data, capability, ..
            } => (Some(data.to_string()), None, true, capability.clone()),
            Outcome::Complete { output } => (None, Some(output.to_string()), false, None),
            Outcome::Retry { .. } | Outcome::Fail { .. } => (None, None, false, None),
        };
        let to_status = commit.to_status();
        let holding = to_status == RunStatus::Running;
        let finished_at = to_status.is_terminal().then_some(ms(commit.now));
        let error = json_error(&commit.error().cloned()).map(|v| v.to_string());
        let mut tx = self.pool.begin().await?;
        let row: Option<RunRow> = sqlx::query_as(&format!(
            r#"UPDATE waymark_runs SET
                   status           = ?3,
                   state            = ?4,
                   state_data       = COALESCE(?5, state_data),
                   output           = ?6,
                   error            = ?7,
                   capability       = CASE WHEN ?8 THEN ?9 ELSE capability END,
                   visit            = visit + CASE WHEN ?8 THEN 1 ELSE 0 END,
                   attempt          = CASE WHEN ?15 THEN 1 WHEN ?8 THEN 0 ELSE attempt END,
                   due_at           = ?10,
                   locked_by        = CASE WHEN ?15 THEN locked_by END,
                   lease_expires_at = CASE WHEN ?15 THEN {DB_NOW} + ?11 END,
                   progress_pct     = CASE WHEN ?8 THEN NULL ELSE progress_pct END,
                   progress_message = CASE WHEN ?8 THEN NULL ELSE progress_message END,
                   finished_at      = ?12,
                   updated_at       = ?13
               WHERE id = ?1 AND lease_token = ?2 AND locked_by = ?14 AND visit = ?16
                 AND status = 'running' AND lease_expires_at > {DB_NOW}
               RETURNING *"#
        ))
        .bind(lease.run_id.to_string())
        .bind(lease.token)
        .bind(to_status.as_str())
        .bind(commit.to_state())
        .bind(data)
        .bind(output)
        .bind(&error)
        .bind(entering)
        .bind(capability)
        .bind(commit.due_at().map(ms))
        .bind(lease_ms(commit.lease))
        .bind(finished_at)
        .bind(ms(commit.now))
        .bind(lease.worker_id.to_string())
        .bind(holding)
        .bind(commit.from_position.0)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Err(StoreError::LeaseLost {
                run_id: lease.run_id,
                token: lease.token,
            });
        };
        let run = Run::try_from(row)?;
        let (from_visit, from_attempt) = commit.from_position;
        sqlx::query(
            r#"INSERT INTO waymark_history (run_id, from_state, to_state, from_status, to_status,
                   cause, visit, attempt, actor, worker_id, started_at, committed_at, error)
               VALUES (?1, ?2, ?3, 'running', ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"#,
        )
        .bind(run.id.to_string())
        .bind(&commit.from_state)
        .bind(&run.state)
        .bind(run.status.as_str())
        .bind(commit.cause.as_str())
        .bind(from_visit)
        .bind(from_attempt as i64)
        .bind(&commit.actor)
        .bind(lease.worker_id.to_string())
        .bind(ms(commit.step_started_at))
        .bind(ms(commit.now))
        .bind(&error)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if run.status == RunStatus::Pending {
            self.bump();
        }
        Ok(run)
    }

    pub(super) async fn run_release(&self, lease: &Lease, now: DateTime<Utc>) -> StoreResult<()> {
        let done = sqlx::query(
            r#"UPDATE waymark_runs SET status = 'pending', locked_by = NULL, lease_expires_at = NULL,
                   attempt = max(attempt - 1, 0), due_at = ?4, updated_at = ?4
               WHERE id = ?1 AND lease_token = ?2 AND locked_by = ?3 AND status = 'running'"#,
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
                 AND status = 'running' AND lease_expires_at > {DB_NOW}"#
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
    ) -> StoreResult<Vec<Lease>> {
        let ids = serde_json::json!(runs).to_string();
        let rows: Vec<(String, i64)> = sqlx::query_as(&format!(
            r#"UPDATE waymark_runs SET lease_expires_at = {DB_NOW} + ?2
               WHERE locked_by = ?1 AND id IN (SELECT value FROM json_each(?3))
                 AND status = 'running' AND lease_expires_at > {DB_NOW}
               RETURNING id, lease_token"#
        ))
        .bind(worker_id.to_string())
        .bind(lease_ms(lease))
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(id, token)| {
                Ok(Lease {
                    run_id: uuid(&id)?,
                    token,
                    worker_id,
                })
            })
            .collect()
    }

    pub(super) async fn run_next_due(&self) -> StoreResult<Option<DateTime<Utc>>> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT min(due_at) FROM waymark_runs WHERE status IN ('pending', 'sleeping', 'retrying')",
        )
        .fetch_one(&self.pool)
        .await?;
        opt_from_ms(next)
    }

    pub(super) async fn runs_delete_finished(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<u64> {
        let done = sqlx::query(
            r#"DELETE FROM waymark_runs WHERE id IN (
                   SELECT id FROM waymark_runs WHERE finished_at < ?1 ORDER BY finished_at LIMIT ?2)"#,
        )
        .bind(ms(before))
        .bind(limit as i64)
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

    pub(super) async fn worker_list(&self) -> StoreResult<Vec<WorkerInfo>> {
        let rows: Vec<WorkerRow> =
            sqlx::query_as("SELECT * FROM waymark_workers ORDER BY started_at DESC")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|w| {
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
            })
            .collect()
    }
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
