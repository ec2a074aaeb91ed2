//! The transactional side: [`SqliteOps`] gives the shared rules (`store/logic/`) their
//! primitive row operations inside one transaction, and the entry points below are
//! one shared rule each, in a transaction of their own.

use chrono::{DateTime, Utc};
use sqlx::{Sqlite, Transaction};
use uuid::Uuid;

use super::keys::insert_audit;
use super::runs::{insert_run, rows_to_runs, CompensationRow, RunRow, SignalRow};
use super::{from_ms, ms, text, uuid, SqliteStore, DB_NOW};
use crate::store::logic::{self, Ops};
use crate::store::{
    json_error, CompensationRecord, NewAudit, NewHistory, NewRun, NewSignal, Run, ScheduleAdvance,
    SignalReceipt, SignalRecord, StoreResult, TenantScope,
};

/// Runs one of the shared rules in its own transaction, then wakes the waiters of the
/// runs it ended.
/// It names [`SqliteOps`], so a caller imports both.
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

pub(super) use in_tx;

pub(super) struct SqliteOps {
    pub(super) tx: Transaction<'static, Sqlite>,
    /// Runs this transaction ended, announced once it commits.
    pub(super) ended: Vec<Uuid>,
}

impl Ops for SqliteOps {
    async fn lease_held(&mut self, name: &str, holder: Uuid, token: i64) -> StoreResult<bool> {
        let held: Option<i64> = sqlx::query_scalar(&format!(
            r#"SELECT token FROM waymark_leases
               WHERE name = ?1 AND holder = ?2 AND token = ?3 AND expires_at > {DB_NOW}"#
        ))
        .bind(name)
        .bind(holder.to_string())
        .bind(token)
        .fetch_optional(&mut *self.tx)
        .await?;
        Ok(held.is_some())
    }

    async fn run_insert(&mut self, new: &NewRun) -> StoreResult<Option<Run>> {
        insert_run(&mut self.tx, new, None).await
    }

    async fn run_by_key(
        &mut self,
        tenant: &str,
        workflow: &str,
        key: &str,
    ) -> StoreResult<Option<Uuid>> {
        let id: Option<String> = sqlx::query_scalar(
            "SELECT id FROM waymark_runs WHERE tenant = ?1 AND workflow = ?2 AND idempotency_key = ?3",
        )
        .bind(tenant)
        .bind(workflow)
        .bind(key)
        .fetch_optional(&mut *self.tx)
        .await?;
        id.as_deref().map(uuid).transpose()
    }

    async fn schedule_move(&mut self, a: &ScheduleAdvance, run: Option<Uuid>) -> StoreResult<bool> {
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
        .bind(run.map(|id| id.to_string()))
        .execute(&mut *self.tx)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

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

    async fn signals_move(&mut self, from: Uuid, to: Uuid) -> StoreResult<()> {
        sqlx::query(
            "UPDATE waymark_signals SET run_id = ?2 WHERE run_id = ?1 AND status = 'queued'",
        )
        .bind(from.to_string())
        .bind(to.to_string())
        .execute(&mut *self.tx)
        .await?;
        Ok(())
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

impl SqliteStore {
    pub(in crate::store) async fn run_signal(
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

    pub(in crate::store) async fn run_cancel(
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

    pub(in crate::store) async fn run_terminate(
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

    pub(in crate::store) async fn run_retry(
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

    pub(in crate::store) async fn run_skip_compensation(
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
}
