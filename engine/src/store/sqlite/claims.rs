//! The runner's side: claiming due runs, committing their transitions through the
//! shared rules, releasing, progress, heartbeats, the next due time and wait timeouts.
//! Each wakes this process's workers when it leaves a run claimable.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::ops::{in_tx, SqliteOps};
use super::runs::{rows_to_runs, RunRow};
use super::{lease_applied, lease_ms, ms, opt_from_ms, uuid, SqliteStore, DB_NOW};
use crate::store::logic;
use crate::store::{parse_status, ClaimRequest, Commit, Held, Lease, Run, StoreResult};

impl SqliteStore {
    pub(in crate::store) async fn run_claim(&self, req: &ClaimRequest) -> StoreResult<Vec<Run>> {
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

    pub(in crate::store) async fn run_commit(
        &self,
        lease: &Lease,
        commit: &Commit,
    ) -> StoreResult<Run> {
        let run: StoreResult<Run> = in_tx!(self, ops => logic::commit(ops, lease, commit));
        let run = run?;
        self.bump_if_claimable(&run);
        // A finished child may have moved its parent on.
        if run.parent_id.is_some() && run.status.is_terminal() {
            self.bump();
        }
        Ok(run)
    }

    pub(in crate::store) async fn run_release(
        &self,
        lease: &Lease,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
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

    pub(in crate::store) async fn run_progress(
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

    pub(in crate::store) async fn runs_heartbeat(
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

    pub(in crate::store) async fn run_next_due(&self) -> StoreResult<Option<DateTime<Utc>>> {
        let next: Option<i64> = sqlx::query_scalar(
            r#"SELECT min(due_at) FROM waymark_runs
               WHERE status IN ('pending', 'sleeping', 'retrying', 'waiting')
                  OR (status = 'compensating' AND locked_by IS NULL)"#,
        )
        .fetch_one(&self.pool)
        .await?;
        opt_from_ms(next)
    }

    pub(in crate::store) async fn runs_fire_timeouts(
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
}
