//! The worker registry: who runs, with which capabilities and workflows, and since
//! when it was last heard from.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::PgStore;
use crate::error::StoreError;
use crate::store::{from_json, StoreResult, WorkerInfo};

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

impl PgStore {
    pub(in crate::store) async fn worker_register(&self, w: &WorkerInfo) -> StoreResult<()> {
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

    pub(in crate::store) async fn worker_heartbeat(
        &self,
        id: Uuid,
        runs_in_hand: i32,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE waymark_workers SET last_heartbeat_at = now(), runs_in_hand = $2 WHERE id = $1",
        )
        .bind(id)
        .bind(runs_in_hand)
        .execute(&self.worker_pool)
        .await?;
        Ok(())
    }

    pub(in crate::store) async fn worker_stop(&self, id: Uuid) -> StoreResult<()> {
        sqlx::query(
            "UPDATE waymark_workers SET stopped_at = now(), runs_in_hand = 0 WHERE id = $1",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(in crate::store) async fn workers_prune(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        let done = sqlx::query(
            "DELETE FROM waymark_workers WHERE COALESCE(stopped_at, last_heartbeat_at) < $1",
        )
        .bind(before)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    pub(in crate::store) async fn worker_list(
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
    pub(in crate::store) async fn workers_page(
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
