//! The transactional side: [`PgOps`] gives the shared rules (`store/logic/`) their
//! primitive row operations inside one transaction, and the entry points below are
//! one shared rule each, in a transaction of their own.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::keys::insert_audit;
use super::runs::{insert_history, insert_run, rows_to_runs, RunRow, SignalRow};
use super::{notify_ended_if_wanted, PgStore, ENDED_CHANNEL};
use crate::store::logic::{self, Ops};
use crate::store::{
    json_error, to_json, CompensationRecord, NewAudit, NewHistory, NewRun, NewSignal, Run,
    ScheduleAdvance, SignalReceipt, SignalRecord, StoreResult, TenantScope,
};

/// Runs one of the shared rules in its own transaction (on the main pool, or on
/// `pool` when given).
/// It names [`PgOps`], so a caller imports both.
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

pub(super) use in_tx;

/// The transactional side: the shared rules run over these primitives.
pub(super) struct PgOps {
    pub(super) tx: Transaction<'static, Postgres>,
}

impl Ops for PgOps {
    async fn lease_held(&mut self, name: &str, holder: Uuid, token: i64) -> StoreResult<bool> {
        let held: Option<i64> = sqlx::query_scalar(
            r#"SELECT token FROM waymark_leases
               WHERE name = $1 AND holder = $2 AND token = $3 AND expires_at > now() FOR SHARE"#,
        )
        .bind(name)
        .bind(holder)
        .bind(token)
        .fetch_optional(&mut *self.tx)
        .await?;
        Ok(held.is_some())
    }

    async fn run_insert(&mut self, new: &NewRun) -> StoreResult<Option<Run>> {
        insert_run(&mut self.tx, new, None)
            .await?
            .map(Run::try_from)
            .transpose()
    }

    async fn run_by_key(
        &mut self,
        tenant: &str,
        workflow: &str,
        key: &str,
    ) -> StoreResult<Option<Uuid>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM waymark_runs WHERE tenant = $1 AND workflow = $2 AND idempotency_key = $3",
        )
        .bind(tenant)
        .bind(workflow)
        .bind(key)
        .fetch_optional(&mut *self.tx)
        .await?)
    }

    async fn schedule_move(&mut self, a: &ScheduleAdvance, run: Option<Uuid>) -> StoreResult<bool> {
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
        .bind(run)
        .execute(&mut *self.tx)
        .await?;
        Ok(updated.rows_affected() == 1)
    }

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
            // Delivered at commit, and only if the transaction commits; only when
            // someone may listen. This transaction holds the row's lock, so a long poll
            // marking the run `watched` either committed before (and is seen here) or
            // waits for this commit and then reads the ending.
            sqlx::query(concat!(
                "SELECT pg_notify($1, $2) FROM waymark_runs WHERE id = $3 AND ",
                notify_ended_if_wanted!()
            ))
            .bind(ENDED_CHANNEL)
            .bind(r.id.to_string())
            .bind(r.id)
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

    async fn signals_move(&mut self, from: Uuid, to: Uuid) -> StoreResult<()> {
        sqlx::query(
            "UPDATE waymark_signals SET run_id = $2 WHERE run_id = $1 AND status = 'queued'",
        )
        .bind(from)
        .bind(to)
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

impl PgStore {
    pub(in crate::store) async fn run_signal(
        &self,
        scope: &TenantScope,
        run_id: Uuid,
        signal: &NewSignal,
    ) -> StoreResult<SignalReceipt> {
        in_tx!(self, ops => logic::signal(ops, scope, run_id, signal))
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
        in_tx!(self, ops => logic::cancel(ops, scope, id, actor, reason, address, now))
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
        in_tx!(self, ops => logic::terminate(ops, scope, id, actor, reason, address, now))
    }

    pub(in crate::store) async fn run_retry(
        &self,
        scope: &TenantScope,
        id: Uuid,
        actor: &str,
        address: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<Run> {
        in_tx!(self, ops => logic::retry(ops, scope, id, actor, address, now))
    }

    pub(in crate::store) async fn run_skip_compensation(
        &self,
        scope: &TenantScope,
        id: Uuid,
        actor: &str,
        address: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<Run> {
        in_tx!(self, ops => logic::skip_compensation(ops, scope, id, actor, address, now))
    }
}
