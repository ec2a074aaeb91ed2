//! The runner's side, on the runner's own pool: claiming due runs, committing their
//! transitions (one statement for the hot ones, the shared rules for the rest),
//! releasing, progress, heartbeats, the next due time and wait timeouts.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::ops::{in_tx, PgOps};
use super::runs::{rows_to_runs, RunRow};
use super::{lease_applied, notify_ended_if_wanted, secs, PgStore};
use crate::store::logic;
use crate::store::{
    json_error, ClaimRequest, Commit, Held, Lease, Next, Outcome, Run, StoreResult,
};

/// The one-statement commit for hot transitions: entering a plain state, a retry, and a
/// completion. Its extra conditions (no parent, no pending cancellation, and for an
/// ending no queued signal) send every other case to the transactional path, which
/// re-checks the fence and applies the full rules.
///
/// An ending must record the run's queued signals as unconsumed, which this statement
/// cannot, so it ends a run only when `signals_queued` is 0. That count is a column of
/// the row (kept by a trigger on waymark_signals, migration 0009), not a `NOT EXISTS`
/// over the signals: a subquery reads this statement's snapshot and would miss a signal
/// committed while the statement waited for the row lock, whereas READ COMMITTED
/// re-checks the WHERE clause against the newest version of the row itself, and
/// delivering a signal writes the count under that lock.
const COMMIT_FAST: &str = concat!(
    r#"
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
        waiting_for      = CASE WHEN $12 IS NULL THEN waiting_for END,
        finished_at      = $12,
        updated_at       = $13
    WHERE id = $1 AND lease_token = $2 AND locked_by = $14 AND visit = $17
      AND status = 'running' AND lease_expires_at > now()
      AND parent_id IS NULL AND cancel_request IS NULL
      AND ($12::timestamptz IS NULL OR signals_queued = 0)
    RETURNING *
), hist AS (
    INSERT INTO waymark_history (run_id, from_state, to_state, from_status, to_status, cause,
                                 visit, attempt, actor, worker_id, started_at, committed_at, error)
    SELECT id, $15, state, 'running', status, $16, $17, $18, $19, $14, $20, $13, $7 FROM upd
), ended AS (
    -- Wakes the run's waiters at commit, as the transactional path's run_write does,
    -- when someone may wait (`watched` is read from the newest row version, as the
    -- WHERE clause is).
    SELECT pg_notify('waymark_run_ended', id::text) FROM upd
    WHERE finished_at IS NOT NULL AND "#,
    notify_ended_if_wanted!(),
    r#"
)
-- A CTE that only reads is evaluated only if the query reads it: the join with its
-- count makes the NOTIFY happen.
SELECT upd.* FROM upd, (SELECT count(*) FROM ended) AS notified
"#
);

impl PgStore {
    pub(in crate::store) async fn run_claim(&self, req: &ClaimRequest) -> StoreResult<Vec<Run>> {
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

    pub(in crate::store) async fn run_commit(
        &self,
        lease: &Lease,
        commit: &Commit,
    ) -> StoreResult<Run> {
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
                Outcome::Complete { output } => (
                    "completed",
                    commit.from_state.as_str(),
                    None,
                    Some(output),
                    None,
                    false,
                    None,
                    None,
                ),
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
        let finished_at = (to_status == "completed").then_some(commit.now);
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

    pub(in crate::store) async fn run_release(
        &self,
        lease: &Lease,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
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

    pub(in crate::store) async fn run_progress(
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

    pub(in crate::store) async fn runs_heartbeat(
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

    pub(in crate::store) async fn run_next_due(&self) -> StoreResult<Option<DateTime<Utc>>> {
        Ok(sqlx::query_scalar(
            r#"SELECT min(due_at) FROM waymark_runs
               WHERE status IN ('pending', 'sleeping', 'retrying', 'waiting')
                  OR (status = 'compensating' AND locked_by IS NULL)"#,
        )
        .fetch_one(&self.worker_pool)
        .await?)
    }

    pub(in crate::store) async fn runs_fire_timeouts(
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
}
