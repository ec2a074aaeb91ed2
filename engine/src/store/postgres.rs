//! PostgreSQL store: many worker processes share one database.
//!
//! Claims are one `UPDATE … FROM (SELECT … FOR UPDATE SKIP LOCKED)` statement; each
//! commit is one statement whose CTEs update the run and append its history row, so a
//! transition is one round trip and one transaction, and a fence mismatch inserts no
//! history at all.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{PgConnection, PgPool};
use tokio::sync::watch;
use uuid::Uuid;

use super::{
    check_schema_not_newer, json_error, latest_version, parse_error, parse_status, ClaimRequest,
    Commit, HistoryEntry, Lease, NewRun, Outcome, Run, Started, StoreResult, TenantScope,
    WorkerInfo,
};
use crate::error::StoreError;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// The channel the `waymark_runs_notify_due` trigger notifies.
const CHANNEL: &str = "waymark_runs";

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    wake: Arc<watch::Sender<u64>>,
    listening: Arc<AtomicBool>,
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
                              created_at, updated_at)
    VALUES ($1, $2, $3, $4, 'pending', $5, $6, $7, $8, $9, 1, 0, $10, $10, $10)
    ON CONFLICT (tenant, workflow, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING *
), hist AS (
    INSERT INTO waymark_history (run_id, from_state, to_state, from_status, to_status, cause,
                                 visit, attempt, actor, started_at, committed_at)
    SELECT id, NULL, state, NULL, status, 'started', visit, attempt, $11, $10, $10 FROM ins
)
SELECT * FROM ins
"#;

const COMMIT: &str = r#"
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
        finished_at      = $12,
        updated_at       = $13
    WHERE id = $1 AND lease_token = $2 AND locked_by = $14 AND visit = $17
      AND status = 'running' AND lease_expires_at > now()
    RETURNING *
), hist AS (
    INSERT INTO waymark_history (run_id, from_state, to_state, from_status, to_status, cause,
                                 visit, attempt, actor, worker_id, started_at, committed_at, error)
    SELECT id, $15, state, 'running', status, $16, $17, $18, $19, $14, $20, $13, $7 FROM upd
)
SELECT * FROM upd
"#;

impl PgStore {
    pub async fn connect(url: &str, max_connections: u32) -> StoreResult<PgStore> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        Ok(Self::from_pool(pool))
    }

    pub fn from_pool(pool: PgPool) -> PgStore {
        let (wake, _) = watch::channel(0);
        PgStore {
            pool,
            wake: Arc::new(wake),
            listening: Arc::new(AtomicBool::new(false)),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub(super) async fn migrate(&self) -> StoreResult<()> {
        check_schema_not_newer(&MIGRATOR, self.applied_version().await?)?;
        MIGRATOR.run(&self.pool).await?;
        Ok(())
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
        Ok(self.applied_version().await? == Some(latest_version(&MIGRATOR)))
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<u64> {
        if !self.listening.swap(true, Ordering::SeqCst) {
            tokio::spawn(listen(
                self.pool.clone(),
                self.wake.clone(),
                self.listening.clone(),
            ));
        }
        self.wake.subscribe()
    }

    pub(super) async fn run_start(&self, new: NewRun) -> StoreResult<Started> {
        let mut conn = self.pool.acquire().await?;
        self.run_start_in(&mut conn, new).await
    }

    /// Starts a run inside the caller's own transaction (`&mut *tx`), so a business row
    /// and its run commit (or roll back) together. Workers are woken at commit.
    pub async fn run_start_in(&self, conn: &mut PgConnection, new: NewRun) -> StoreResult<Started> {
        let inserted: Option<RunRow> = sqlx::query_as(INSERT_RUN)
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
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(row) = inserted {
            return Ok(Started {
                run: row.try_into()?,
                created: true,
            });
        }
        // The key named an existing run: the same input is a replay, another is a conflict.
        let key = new.idempotency_key.clone().unwrap_or_default();
        let existing: RunRow = sqlx::query_as(
            "SELECT * FROM waymark_runs WHERE tenant = $1 AND workflow = $2 AND idempotency_key = $3",
        )
        .bind(&new.tenant)
        .bind(&new.workflow)
        .bind(&key)
        .fetch_one(&mut *conn)
        .await?;
        let run = Run::try_from(existing)?;
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

    pub(super) async fn run_history(
        &self,
        scope: &TenantScope,
        id: Uuid,
    ) -> StoreResult<Option<Vec<HistoryEntry>>> {
        if self.run_get(scope, id).await?.is_none() {
            return Ok(None);
        }
        let rows: Vec<HistoryRow> =
            sqlx::query_as("SELECT * FROM waymark_history WHERE run_id = $1 ORDER BY id")
                .bind(id)
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|h| {
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
            })
            .collect::<StoreResult<Vec<_>>>()
            .map(Some)
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
                SELECT r.id FROM waymark_runs r
                WHERE ((r.status IN ('pending', 'sleeping', 'retrying') AND r.due_at <= $1)
                       OR (r.status = 'running' AND r.lease_expires_at < now()))
                  AND EXISTS (SELECT 1 FROM unnest($2::text[], $3::int4[]) AS k(name, version)
                              WHERE k.name = r.workflow AND r.workflow_version <= k.version)
                  AND (r.capability IS NULL OR r.capability = ANY($4::text[]))
                ORDER BY r.due_at
                LIMIT $5
                FOR UPDATE SKIP LOCKED
            )
            UPDATE waymark_runs r SET
                status = 'running',
                lease_token = r.lease_token + 1,
                locked_by = $6,
                lease_expires_at = now() + make_interval(secs => $7),
                attempt = r.attempt + 1,
                updated_at = $1
            FROM due WHERE r.id = due.id
            RETURNING r.*
            "#,
        )
        .bind(req.now)
        .bind(&names)
        .bind(&versions)
        .bind(&req.capabilities)
        .bind(req.limit as i64)
        .bind(req.worker_id)
        .bind(secs(req.lease))
        .fetch_all(&self.pool)
        .await?;
        rows_to_runs(rows)
    }

    pub(super) async fn run_commit(&self, lease: &Lease, commit: &Commit) -> StoreResult<Run> {
        let (data, output, entering, capability) = match &commit.outcome {
            Outcome::Enter {
                data, capability, ..
            } => (Some(data), None, true, capability.clone()),
            Outcome::Complete { output } => (None, Some(output), false, None),
            Outcome::Retry { .. } | Outcome::Fail { .. } => (None, None, false, None),
        };
        let to_status = commit.to_status();
        let finished_at = to_status.is_terminal().then_some(commit.now);
        let (from_visit, from_attempt) = commit.from_position;
        let row: Option<RunRow> = sqlx::query_as(COMMIT)
            .bind(lease.run_id)
            .bind(lease.token)
            .bind(to_status.as_str())
            .bind(commit.to_state())
            .bind(data)
            .bind(output)
            .bind(json_error(&commit.error().cloned()))
            .bind(entering)
            .bind(capability)
            .bind(commit.due_at())
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
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => row.try_into(),
            None => Err(StoreError::LeaseLost {
                run_id: lease.run_id,
                token: lease.token,
            }),
        }
    }

    pub(super) async fn run_release(&self, lease: &Lease, now: DateTime<Utc>) -> StoreResult<()> {
        let done = sqlx::query(
            r#"UPDATE waymark_runs SET status = 'pending', locked_by = NULL, lease_expires_at = NULL,
                   attempt = GREATEST(attempt - 1, 0), due_at = $4, updated_at = $4
               WHERE id = $1 AND lease_token = $2 AND locked_by = $3 AND status = 'running'"#,
        )
        .bind(lease.run_id)
        .bind(lease.token)
        .bind(lease.worker_id)
        .bind(now)
        .execute(&self.pool)
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
                 AND status = 'running' AND lease_expires_at > now()"#,
        )
        .bind(lease.run_id)
        .bind(lease.token)
        .bind(lease.worker_id)
        .bind(fraction)
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
        let rows: Vec<(Uuid, i64)> = sqlx::query_as(
            r#"UPDATE waymark_runs SET lease_expires_at = now() + make_interval(secs => $2)
               WHERE locked_by = $1 AND id = ANY($3) AND status = 'running'
                 AND lease_expires_at > now()
               RETURNING id, lease_token"#,
        )
        .bind(worker_id)
        .bind(secs(lease))
        .bind(runs)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(run_id, token)| Lease {
                run_id,
                token,
                worker_id,
            })
            .collect())
    }

    pub(super) async fn run_next_due(&self) -> StoreResult<Option<DateTime<Utc>>> {
        Ok(sqlx::query_scalar(
            "SELECT min(due_at) FROM waymark_runs WHERE status IN ('pending', 'sleeping', 'retrying')",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    pub(super) async fn runs_delete_finished(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<u64> {
        let done = sqlx::query(
            r#"DELETE FROM waymark_runs WHERE id IN (
                   SELECT id FROM waymark_runs WHERE finished_at < $1 ORDER BY finished_at LIMIT $2)"#,
        )
        .bind(before)
        .bind(limit as i64)
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
        .execute(&self.pool)
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

    pub(super) async fn worker_list(&self) -> StoreResult<Vec<WorkerInfo>> {
        let rows: Vec<WorkerRow> =
            sqlx::query_as("SELECT * FROM waymark_workers ORDER BY started_at DESC")
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|w| {
                Ok(WorkerInfo {
                    id: w.id,
                    host: w.host,
                    pid: w.pid,
                    version: w.version,
                    capabilities: serde_json::from_value(w.capabilities)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    workflows: serde_json::from_value(w.workflows)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    started_at: w.started_at,
                    last_heartbeat_at: w.last_heartbeat_at,
                    runs_in_hand: w.runs_in_hand,
                    stopped_at: w.stopped_at,
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

/// Forwards NOTIFYs to the in-process wake channel. After any connection loss it
/// reconnects and bumps the channel once, so workers sweep for runs that became due
/// while nobody was listening.
async fn listen(pool: PgPool, wake: Arc<watch::Sender<u64>>, listening: Arc<AtomicBool>) {
    let bump = || wake.send_modify(|n| *n = n.wrapping_add(1));
    let mut backoff = Duration::from_millis(100);
    while !pool.is_closed() && wake.receiver_count() > 0 {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(error = %error, "cannot open the LISTEN connection; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(error) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %error, "LISTEN failed; retrying");
            tokio::time::sleep(backoff).await;
            continue;
        }
        backoff = Duration::from_millis(100);
        bump();
        loop {
            tokio::select! {
                received = listener.try_recv() => match received {
                    Ok(Some(_)) => bump(),
                    Ok(None) => {
                        // The connection dropped; try_recv reconnects on the next call
                        // and re-LISTENs, but notifications in between are gone.
                        tracing::warn!("LISTEN connection lost; reconnecting and sweeping");
                        bump();
                    }
                    Err(error) => {
                        tracing::warn!(error = %error, "LISTEN connection failed; reconnecting");
                        bump();
                        break;
                    }
                },
                _ = wake.closed() => break,
            }
        }
    }
    listening.store(false, Ordering::SeqCst);
}
