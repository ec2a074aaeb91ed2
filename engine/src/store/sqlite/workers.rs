//! The worker registry: who runs, with which capabilities and workflows, and since
//! when it was last heard from.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{from_ms, ms, opt_from_ms, uuid, SqliteStore, DB_NOW};
use crate::error::StoreError;
use crate::store::{StoreResult, WorkerInfo};

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

impl SqliteStore {
    pub(in crate::store) async fn worker_register(&self, w: &WorkerInfo) -> StoreResult<()> {
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

    pub(in crate::store) async fn worker_heartbeat(
        &self,
        id: Uuid,
        runs_in_hand: i32,
    ) -> StoreResult<()> {
        sqlx::query(&format!(
            "UPDATE waymark_workers SET last_heartbeat_at = {DB_NOW}, runs_in_hand = ?2 WHERE id = ?1"
        ))
        .bind(id.to_string())
        .bind(runs_in_hand as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(in crate::store) async fn worker_stop(&self, id: Uuid) -> StoreResult<()> {
        sqlx::query(&format!(
            "UPDATE waymark_workers SET stopped_at = {DB_NOW}, runs_in_hand = 0 WHERE id = ?1"
        ))
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(in crate::store) async fn workers_prune(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        let done = sqlx::query(
            "DELETE FROM waymark_workers WHERE COALESCE(stopped_at, last_heartbeat_at) < ?1",
        )
        .bind(ms(before))
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
                WHERE ?1 IS NULL OR (stopped_at IS NULL AND last_heartbeat_at >= ?1)
                ORDER BY started_at DESC"#,
        )
        .bind(live_since.map(ms))
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
            sqlx::query_as("SELECT * FROM waymark_workers WHERE id < ?1 ORDER BY id DESC LIMIT ?2")
                .bind(before.unwrap_or(Uuid::max()).to_string())
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter().map(WorkerInfo::try_from).collect()
    }
}
