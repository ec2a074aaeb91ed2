//! The rules of every transition the store makes outside the hot path, written once
//! over [`Ops`], the primitive row operations each backend provides inside one
//! transaction (PostgreSQL locks the rows it reads with `FOR UPDATE`; SQLite serialises
//! everything through its single connection). Each backend implements it in
//! `store/<backend>/ops.rs`.
//!
//! A function here loads the rows it needs, changes the [`Run`] in memory, appends
//! history, and writes the run back — all in the caller's transaction, so a transition
//! is applied whole or not at all.
//!
//! # Layout
//! - `mod.rs`: the [`Ops`] trait, and the small steps every rule shares (entering a
//!   state, a history row, making a run pending, an operator's audit record).
//! - `commit.rs`: a worker's transition, fenced by its lease.
//! - `ending.rs`: how a run ends: compensation first when it has visits to undo, then
//!   its final status, its unconsumed signals, and what its waiting parent does next.
//! - `signals.rs`: delivering signals, a waiting run taking one, and wait timeouts.
//! - `operator.rs`: an operator's cancel, terminate, retry and compensation skip.

mod commit;
mod continuation;
mod ending;
mod operator;
mod schedules;
mod signals;

pub(crate) use commit::commit;
pub(crate) use operator::{cancel, retry, skip_compensation, terminate};
pub(crate) use schedules::schedule_advance;
pub(crate) use signals::{fire_timeout, signal};

use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::StoreError;
use crate::status::RunStatus;
use crate::store::model::*;
use crate::store::StoreResult;

/// Primitive operations inside one open transaction.
pub(crate) trait Ops: Send {
    /// True while `holder` holds the named lease under `token` by the database's clock;
    /// the lease cannot change hands until the transaction ends.
    fn lease_held(
        &mut self,
        name: &str,
        holder: Uuid,
        token: i64,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
    /// Inserts a top-level run; `None` when its idempotency key already names one.
    fn run_insert(&mut self, new: &NewRun)
        -> impl Future<Output = StoreResult<Option<Run>>> + Send;
    /// The run a (tenant, workflow, idempotency key) names.
    fn run_by_key(
        &mut self,
        tenant: &str,
        workflow: &str,
        key: &str,
    ) -> impl Future<Output = StoreResult<Option<Uuid>>> + Send;
    /// Moves a schedule on to `a`'s fire times if it is still at `a.expected_last`
    /// (naming `run` as its last run when given); false when another process did first.
    fn schedule_move(
        &mut self,
        a: &ScheduleAdvance,
        run: Option<Uuid>,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
    /// The database's own clock, which judges leases.
    fn db_now(&mut self) -> impl Future<Output = StoreResult<DateTime<Utc>>> + Send;
    /// Reads a run and locks it until the transaction ends.
    fn run_lock(&mut self, id: Uuid) -> impl Future<Output = StoreResult<Option<Run>>> + Send;
    /// Writes every mutable column of `run`.
    fn run_write(&mut self, run: &Run) -> impl Future<Output = StoreResult<()>> + Send;
    /// Inserts a child run; false if (parent, visit, index) already exists.
    fn child_insert(
        &mut self,
        new: &NewRun,
        parent: (Uuid, i64, i32),
    ) -> impl Future<Output = StoreResult<bool>> + Send;
    /// Children of `parent` started in `visit`, by index.
    fn children(
        &mut self,
        parent: Uuid,
        visit: i64,
    ) -> impl Future<Output = StoreResult<Vec<Run>>> + Send;
    /// Ids of `parent`'s children that have not ended, any visit.
    fn children_active(
        &mut self,
        parent: Uuid,
    ) -> impl Future<Output = StoreResult<Vec<Uuid>>> + Send;
    /// Ids of `parent`'s completed children that have visits left to compensate.
    fn children_to_compensate(
        &mut self,
        parent: Uuid,
    ) -> impl Future<Output = StoreResult<Vec<Uuid>>> + Send;
    /// Appends an audit record in this transaction.
    fn audit_insert(&mut self, entry: &NewAudit) -> impl Future<Output = StoreResult<()>> + Send;
    fn history_insert(
        &mut self,
        entry: &NewHistory,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    fn signal_by_key(
        &mut self,
        run: Uuid,
        key: &str,
    ) -> impl Future<Output = StoreResult<Option<Uuid>>> + Send;
    fn signal_insert(
        &mut self,
        run: Uuid,
        signal: &NewSignal,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// The oldest queued signal of `run` among `names`.
    fn signal_oldest_queued(
        &mut self,
        run: Uuid,
        names: &[String],
    ) -> impl Future<Output = StoreResult<Option<SignalRecord>>> + Send;
    fn signals_queued(
        &mut self,
        run: Uuid,
    ) -> impl Future<Output = StoreResult<Vec<SignalRecord>>> + Send;
    /// Moves `from`'s queued signals to `to` (a run continuing as new).
    fn signals_move(
        &mut self,
        from: Uuid,
        to: Uuid,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    fn signal_set_status(
        &mut self,
        id: Uuid,
        status: &str,
        visit: Option<i64>,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    fn compensation_insert(
        &mut self,
        record: &CompensationRecord,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// The newest pending compensation of `run`.
    fn compensation_next(
        &mut self,
        run: Uuid,
    ) -> impl Future<Output = StoreResult<Option<CompensationRecord>>> + Send;
    fn compensation_set(
        &mut self,
        run: Uuid,
        visit: i64,
        status: &str,
    ) -> impl Future<Output = StoreResult<()>> + Send;
}

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

fn lease_lost(lease: &Lease) -> StoreError {
    StoreError::LeaseLost {
        run_id: lease.run_id,
        token: lease.token,
    }
}

fn conflict(message: impl Into<String>) -> StoreError {
    StoreError::Conflict(message.into())
}

/// A history row for `run` as it is now, coming from `from`.
fn history(
    run: &Run,
    from: (&str, RunStatus),
    cause: &str,
    actor: &str,
    worker: Option<Uuid>,
    started: DateTime<Utc>,
    now: DateTime<Utc>,
) -> NewHistory {
    NewHistory {
        run_id: run.id,
        from_state: Some(from.0.to_owned()),
        to_state: run.state.clone(),
        from_status: Some(from.1),
        to_status: run.status,
        cause: cause.to_owned(),
        visit: run.visit,
        attempt: run.attempt,
        actor: actor.to_owned(),
        worker_id: worker,
        started_at: started,
        committed_at: now,
        error: None,
    }
}

/// Enters `target` as a new visit: state and data replaced, what the last visit
/// received forgotten, and a compensation row written if the state declares one.
async fn enter<O: Ops>(ops: &mut O, run: &mut Run, target: &Target) -> StoreResult<()> {
    run.visit += 1;
    run.state = target.state.clone();
    run.state_data = target.data.clone();
    run.capability = target.capability.clone();
    run.waiting_for = None;
    run.received = None;
    run.error = None;
    run.progress_pct = None;
    run.progress_message = None;
    run.attempt = 0;
    if target.compensable {
        ops.compensation_insert(&CompensationRecord {
            run_id: run.id,
            visit: run.visit,
            state: target.state.clone(),
            state_data: target.data.clone(),
            status: "pending".into(),
        })
        .await?;
    }
    Ok(())
}

fn make_pending(run: &mut Run, now: DateTime<Utc>) {
    run.status = RunStatus::Pending;
    run.due_at = Some(now);
    run.attempt = 0;
    run.unlock();
}

/// The audit record of an operator's action on `run`, written in the same
/// transaction as the action so neither exists without the other.
async fn audit_action<O: Ops>(
    ops: &mut O,
    run: &Run,
    action: &str,
    actor: &str,
    address: Option<&str>,
    detail: serde_json::Value,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    ops.audit_insert(&NewAudit {
        tenant: run.tenant.clone(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        target: Some(format!("run:{}", run.id)),
        detail,
        address: address.map(str::to_owned),
        at: now,
    })
    .await
}
