//! Runs: their rows, starting them (alone or inside a caller's transaction), and the
//! reads, listings and retention deletes that serve the API.

use chrono::{DateTime, Utc};
use sqlx::Sqlite;
use uuid::Uuid;

use super::{from_ms, json, ms, opt_from_ms, opt_json, typed, uuid, SqliteStore};
use crate::error::StoreError;
use crate::store::{
    parse_error, parse_status, CompensationRecord, HistoryEntry, NewRun, Run, RunCount, RunFilter,
    SignalRecord, Started, StoreResult, TenantScope,
};

#[derive(sqlx::FromRow)]
pub(super) struct RunRow {
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
pub(super) struct SignalRow {
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
pub(super) struct CompensationRow {
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

impl SqliteStore {
    pub(in crate::store) async fn runs_unfinished(&self, ids: &[Uuid]) -> StoreResult<Vec<Uuid>> {
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

    pub(in crate::store) async fn run_start(&self, new: NewRun) -> StoreResult<Started> {
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

    pub(in crate::store) async fn run_get(
        &self,
        scope: &TenantScope,
        id: Uuid,
    ) -> StoreResult<Option<Run>> {
        let row: Option<RunRow> = sqlx::query_as(
            "SELECT * FROM waymark_runs WHERE id = ?1 AND (?2 IS NULL OR tenant = ?2)",
        )
        .bind(id.to_string())
        .bind(scope.tenant())
        .fetch_optional(&self.pool)
        .await?;
        row.map(Run::try_from).transpose()
    }

    pub(in crate::store) async fn run_children(
        &self,
        parent: Uuid,
        visit: i64,
    ) -> StoreResult<Vec<Run>> {
        let rows: Vec<RunRow> = sqlx::query_as(
            "SELECT * FROM waymark_runs WHERE parent_id = ?1 AND parent_visit = ?2 ORDER BY child_index",
        )
        .bind(parent.to_string())
        .bind(visit)
        .fetch_all(&self.pool)
        .await?;
        rows_to_runs(rows)
    }

    pub(in crate::store) async fn run_history(
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

    pub(in crate::store) async fn runs_history(
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

    pub(in crate::store) async fn run_signals(
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

    pub(in crate::store) async fn run_compensations(
        &self,
        id: Uuid,
    ) -> StoreResult<Vec<CompensationRecord>> {
        let rows: Vec<CompensationRow> =
            sqlx::query_as("SELECT * FROM waymark_compensations WHERE run_id = ?1 ORDER BY visit")
                .bind(id.to_string())
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter().map(CompensationRecord::try_from).collect()
    }

    pub(in crate::store) async fn runs_list(
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

    pub(in crate::store) async fn runs_counts(
        &self,
        scope: &TenantScope,
    ) -> StoreResult<Vec<RunCount>> {
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
    pub(in crate::store) async fn runs_activity(
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

    pub(in crate::store) async fn runs_due_stats(
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

    pub(in crate::store) async fn runs_delete_finished(
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
}

pub(super) async fn insert_run(
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

pub(super) fn rows_to_runs(rows: Vec<RunRow>) -> StoreResult<Vec<Run>> {
    rows.into_iter().map(Run::try_from).collect()
}
