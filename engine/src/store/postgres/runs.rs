//! Runs: their rows, starting them (alone or inside a caller's transaction), and the
//! reads, listings and retention deletes that serve the API.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, Postgres};
use uuid::Uuid;

use super::PgStore;
use crate::error::StoreError;
use crate::store::{
    from_json, json_error, opt_from_json, parse_error, parse_status, CompensationRecord,
    HistoryEntry, NewHistory, NewRun, Run, RunCount, RunFilter, SignalRecord, Started, StoreResult,
    TenantScope,
};

#[derive(sqlx::FromRow)]
pub(super) struct RunRow {
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
pub(super) struct SignalRow {
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

impl PgStore {
    pub(in crate::store) async fn runs_unfinished(&self, ids: &[Uuid]) -> StoreResult<Vec<Uuid>> {
        Ok(sqlx::query_scalar(
            r#"SELECT id FROM waymark_runs
               WHERE id = ANY($1) AND status NOT IN ('completed', 'failed', 'cancelled')"#,
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?)
    }

    pub(in crate::store) async fn run_start(&self, new: NewRun) -> StoreResult<Started> {
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

    pub(in crate::store) async fn run_get(
        &self,
        scope: &TenantScope,
        id: Uuid,
    ) -> StoreResult<Option<Run>> {
        let row: Option<RunRow> = sqlx::query_as(
            "SELECT * FROM waymark_runs WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)",
        )
        .bind(id)
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
            "SELECT * FROM waymark_runs WHERE parent_id = $1 AND parent_visit = $2 ORDER BY child_index",
        )
        .bind(parent)
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

    pub(in crate::store) async fn runs_history(
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

    pub(in crate::store) async fn run_compensations(
        &self,
        id: Uuid,
    ) -> StoreResult<Vec<CompensationRecord>> {
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

    pub(in crate::store) async fn runs_list(
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

    pub(in crate::store) async fn runs_counts(
        &self,
        scope: &TenantScope,
    ) -> StoreResult<Vec<RunCount>> {
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
    pub(in crate::store) async fn runs_activity(
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

    pub(in crate::store) async fn runs_due_stats(
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
}

pub(super) async fn insert_run(
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

pub(super) async fn insert_history(conn: &mut PgConnection, h: &NewHistory) -> StoreResult<()> {
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

pub(super) fn rows_to_runs(rows: Vec<RunRow>) -> StoreResult<Vec<Run>> {
    rows.into_iter().map(Run::try_from).collect()
}
