//! The rules of every transition the store makes outside the hot path, written once
//! over [`Ops`], the primitive row operations each backend provides inside one
//! transaction (PostgreSQL locks the rows it reads with `FOR UPDATE`; SQLite serialises
//! everything through its single connection).
//!
//! A function here loads the rows it needs, changes the [`Run`] in memory, appends
//! history, and writes the run back — all in the caller's transaction, so a transition
//! is applied whole or not at all.

use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::model::*;
use super::StoreResult;
use crate::error::{StepError, StoreError};
use crate::status::RunStatus;
use crate::workflow::{EdgeKind, FanOutPolicy, ReceivedSignal};

/// Primitive operations inside one open transaction.
pub(crate) trait Ops: Send {
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

/// Commits a worker's transition. The fence: same token, same worker, same visit, a
/// leased status, and a lease unexpired by database time.
pub(crate) async fn commit<O: Ops>(ops: &mut O, lease: &Lease, c: &Commit) -> StoreResult<Run> {
    let mut run = ops
        .run_lock(lease.run_id)
        .await?
        .ok_or_else(|| lease_lost(lease))?;
    let db_now = ops.db_now().await?;
    let fenced = run.lease_token == lease.token
        && run.locked_by == Some(lease.worker_id)
        && run.visit == c.from_position.0
        && matches!(run.status, RunStatus::Running | RunStatus::Compensating)
        && run.lease_expires_at.is_some_and(|t| t > db_now);
    if !fenced {
        return Err(lease_lost(lease));
    }
    let now = c.now;
    let from_state = run.state.clone();
    let from = (from_state.as_str(), run.status);
    let worker = Some(lease.worker_id);
    let step_history = |run: &Run, cause: &str| {
        let mut h = history(run, from, cause, &c.actor, worker, c.step_started_at, now);
        h.visit = c.from_position.0;
        h.attempt = c.from_position.1;
        h.error = run.error.clone();
        h
    };
    if let Some(upgrade) = &c.upgrade {
        run.workflow_version = upgrade.version;
        run.input = upgrade.input.clone();
        run.state_data = upgrade.state_data.clone();
    }
    run.updated_at = now;
    match &c.outcome {
        Outcome::Enter { target, next } => {
            enter(ops, &mut run, target).await?;
            match next {
                Next::Hold => {
                    run.status = RunStatus::Running;
                    run.attempt = 1;
                    run.due_at = Some(now);
                    run.lease_expires_at = Some(db_now + chrono_lease(c));
                }
                Next::Release => make_pending(&mut run, now),
                Next::Sleep(at) => {
                    run.status = RunStatus::Sleeping;
                    run.due_at = Some(*at);
                    run.unlock();
                }
            }
            ops.history_insert(&step_history(&run, "step")).await?;
        }
        Outcome::Wait {
            waiting,
            timeout_at,
        } => {
            run.status = RunStatus::Waiting;
            run.waiting_for = Some(waiting.clone());
            run.due_at = *timeout_at;
            run.attempt = 0;
            run.unlock();
            ops.history_insert(&step_history(&run, "wait")).await?;
            // A signal that arrived before the state waited is taken now.
            consume_signal(ops, &mut run, now).await?;
        }
        Outcome::FanOut { children, waiting } => {
            for (index, child) in children.iter().enumerate() {
                ops.child_insert(child, (run.id, run.visit, index as i32))
                    .await?;
            }
            run.status = RunStatus::Waiting;
            run.waiting_for = Some(waiting.clone());
            run.due_at = None;
            run.attempt = 0;
            run.unlock();
            ops.history_insert(&step_history(&run, "fan_out")).await?;
            gather_children(ops, &mut run, now).await?;
        }
        Outcome::Retry { error, due_at } => {
            run.status = RunStatus::Retrying;
            run.error = Some(error.clone());
            run.due_at = Some(*due_at);
            run.unlock();
            ops.history_insert(&step_history(&run, "retry")).await?;
        }
        Outcome::Complete { output } => {
            run.status = RunStatus::Completed;
            run.output = Some(output.clone());
            run.error = None;
            ops.history_insert(&step_history(&run, "step")).await?;
            finish(ops, &mut run, now, true).await?;
        }
        Outcome::Fail { error, hold } => {
            run.error = Some(error.clone());
            if *hold {
                run.status = RunStatus::Failed;
                run.held = true;
                ops.history_insert(&step_history(&run, "failed")).await?;
                finish(ops, &mut run, now, true).await?;
            } else {
                let ending = Ending {
                    status: RunStatus::Failed,
                    reason: error.message.clone(),
                    actor: c.actor.clone(),
                    error: Some(error.clone()),
                };
                let mut h = step_history(&run, "failed");
                begin_compensation(ops, &mut run, ending, now, true, |run| {
                    h.to_status = run.status;
                    h
                })
                .await?;
            }
        }
        Outcome::Abort { reason } => {
            let ending = Ending {
                status: RunStatus::Cancelled,
                reason: reason.clone(),
                actor: c.actor.clone(),
                error: None,
            };
            let mut h = step_history(&run, "abort");
            begin_compensation(ops, &mut run, ending, now, true, |run| {
                h.to_status = run.status;
                h
            })
            .await?;
        }
        Outcome::Compensated { visit, state } => {
            ops.compensation_set(run.id, *visit, "done").await?;
            run.error = None;
            run.attempt = 1;
            run.due_at = Some(now);
            run.lease_expires_at = Some(db_now + chrono_lease(c));
            let mut h = step_history(&run, "compensated");
            h.from_state = Some(state.clone());
            h.to_state = state.clone();
            h.visit = *visit;
            ops.history_insert(&h).await?;
        }
        Outcome::CompensationRetry { error, due_at } => {
            run.error = Some(error.clone());
            run.due_at = Some(*due_at);
            run.unlock();
            ops.history_insert(&step_history(&run, "compensation_retry"))
                .await?;
        }
        Outcome::CompensationFailed { error } => {
            run.status = RunStatus::CompensationFailed;
            run.error = Some(error.clone());
            run.due_at = None;
            run.unlock();
            ops.history_insert(&step_history(&run, "compensation_failed"))
                .await?;
        }
        Outcome::CompensationDone => {
            let ending = run.ending.clone().ok_or_else(|| {
                StoreError::Corrupt(format!("run {} compensated without an ending", run.id))
            })?;
            run.status = ending.status;
            run.error = ending.error.clone();
            ops.history_insert(&step_history(&run, "compensation_done"))
                .await?;
            finish(ops, &mut run, now, true).await?;
        }
        Outcome::Abandon => {}
    }
    // A cancellation asked for while the step ran applies now, after its result (a
    // success included) was committed, so the state it reached is compensated too.
    if let Some(request) = run.cancel_request.take() {
        if matches!(
            run.status,
            RunStatus::Running
                | RunStatus::Pending
                | RunStatus::Sleeping
                | RunStatus::Waiting
                | RunStatus::Retrying
        ) {
            apply_cancel(ops, &mut run, &request, now, true).await?;
        }
    }
    ops.run_write(&run).await?;
    Ok(run)
}

fn chrono_lease(c: &Commit) -> chrono::Duration {
    chrono::Duration::from_std(c.lease).unwrap_or(chrono::Duration::MAX)
}

/// Starts undoing: cancels live children, then either enters `compensating` (visits to
/// undo exist) or ends the run as `ending` says. `record` builds the history row once
/// the new status is known.
async fn begin_compensation<O: Ops>(
    ops: &mut O,
    run: &mut Run,
    ending: Ending,
    now: DateTime<Utc>,
    notify_parent: bool,
    record: impl FnOnce(&Run) -> NewHistory + Send,
) -> StoreResult<()> {
    for child in ops.children_active(run.id).await? {
        cancel_tree(
            ops,
            child,
            format!("run:{}", run.id),
            format!("parent {}: {}", ending_word(ending.status), ending.reason),
            now,
            false,
        )
        .await?;
    }
    // Undoing the parent undoes what its completed children did too.
    for child in ops.children_to_compensate(run.id).await? {
        reopen_for_compensation(ops, child, run.id, now).await?;
    }
    run.waiting_for = None;
    run.unlock();
    run.attempt = 0;
    let pending = ops.compensation_next(run.id).await?.is_some();
    if pending {
        run.status = RunStatus::Compensating;
        run.due_at = Some(now);
        run.ending = Some(ending);
        ops.history_insert(&record(run)).await?;
    } else {
        run.status = ending.status;
        if ending.status == RunStatus::Failed {
            run.error = ending.error.clone();
        }
        run.ending = Some(ending);
        ops.history_insert(&record(run)).await?;
        finish(ops, run, now, notify_parent).await?;
    }
    Ok(())
}

/// A completed child whose parent compensates runs its own compensations, then ends
/// `cancelled`.
async fn reopen_for_compensation<O: Ops>(
    ops: &mut O,
    id: Uuid,
    parent: Uuid,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    let Some(mut child) = ops.run_lock(id).await? else {
        return Ok(());
    };
    if child.status != RunStatus::Completed {
        return Ok(());
    }
    let from = (child.state.clone(), child.status);
    let actor = format!("run:{parent}");
    child.status = RunStatus::Compensating;
    child.finished_at = None;
    child.due_at = Some(now);
    child.attempt = 0;
    child.updated_at = now;
    child.ending = Some(Ending {
        status: RunStatus::Cancelled,
        reason: format!("parent {parent} is compensating"),
        actor: actor.clone(),
        error: None,
    });
    ops.history_insert(&history(
        &child,
        (&from.0, from.1),
        "compensate",
        &actor,
        None,
        now,
        now,
    ))
    .await?;
    ops.run_write(&child).await
}

fn ending_word(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Failed => "failed",
        _ => "cancelled",
    }
}

/// The run has ended: clear what only live runs carry, record queued signals as
/// unconsumed, write it, and let a waiting parent know.
async fn finish<O: Ops>(
    ops: &mut O,
    run: &mut Run,
    now: DateTime<Utc>,
    notify_parent: bool,
) -> StoreResult<()> {
    run.finished_at = Some(now);
    run.due_at = None;
    run.waiting_for = None;
    run.cancel_request = None;
    run.unlock();
    for signal in ops.signals_queued(run.id).await? {
        ops.signal_set_status(signal.id, "unconsumed", None).await?;
        let mut h = history(
            run,
            (&run.state, run.status),
            "signal_unconsumed",
            &signal.actor,
            None,
            signal.received_at,
            now,
        );
        h.error = Some(StepError::fatal(format!(
            "signal {:?} ({}) was never consumed",
            signal.name, signal.id
        )));
        ops.history_insert(&h).await?;
    }
    ops.run_write(run).await?;
    if notify_parent {
        if let (Some(parent), Some(visit)) = (run.parent_id, run.parent_visit) {
            if let Some(mut parent_run) = ops.run_lock(parent).await? {
                let waits_for_this = parent_run.status == RunStatus::Waiting
                    && parent_run
                        .waiting_for
                        .as_ref()
                        .and_then(|w| w.children.as_ref())
                        .is_some_and(|c| c.visit == visit);
                if waits_for_this {
                    gather_children(ops, &mut parent_run, now).await?;
                    ops.run_write(&parent_run).await?;
                }
            }
        }
    }
    Ok(())
}

/// A waiting parent looks at its children: fail fast on a failed child, or move on
/// when all have ended.
fn gather_children<'a, O: Ops>(
    ops: &'a mut O,
    run: &'a mut Run,
    now: DateTime<Utc>,
) -> BoxFut<'a, StoreResult<()>> {
    Box::pin(async move {
        let Some(wait) = run.waiting_for.as_ref().and_then(|w| w.children.clone()) else {
            return Ok(());
        };
        let children = ops.children(run.id, wait.visit).await?;
        let failed = children
            .iter()
            .find(|c| matches!(c.status, RunStatus::Failed | RunStatus::Cancelled));
        if wait.policy == FanOutPolicy::FailFast {
            if let Some(bad) = failed {
                let error = StepError::fatal(format!(
                    "child #{} ({} {}) ended {}: {}",
                    bad.child_index.unwrap_or_default(),
                    bad.workflow,
                    bad.id,
                    bad.status,
                    bad.error
                        .as_ref()
                        .map(|e| e.message.clone())
                        .or_else(|| bad.ending.as_ref().map(|e| e.reason.clone()))
                        .unwrap_or_default()
                ));
                let from = (run.state.clone(), run.status);
                run.error = Some(error.clone());
                let actor = format!("run:{}", bad.id);
                if wait.hold_on_failure {
                    for child in ops.children_active(run.id).await? {
                        cancel_tree(
                            ops,
                            child,
                            actor.clone(),
                            "a sibling failed".into(),
                            now,
                            false,
                        )
                        .await?;
                    }
                    run.status = RunStatus::Failed;
                    run.held = true;
                    let mut h = history(
                        run,
                        (&from.0, from.1),
                        "child_failed",
                        &actor,
                        None,
                        now,
                        now,
                    );
                    h.error = Some(error);
                    ops.history_insert(&h).await?;
                    finish(ops, run, now, true).await?;
                } else {
                    let ending = Ending {
                        status: RunStatus::Failed,
                        reason: error.message.clone(),
                        actor: actor.clone(),
                        error: Some(error.clone()),
                    };
                    begin_compensation(ops, run, ending, now, true, |run| {
                        let mut h = history(
                            run,
                            (&from.0, from.1),
                            "child_failed",
                            &actor,
                            None,
                            now,
                            now,
                        );
                        h.error = Some(error);
                        h
                    })
                    .await?;
                }
                return Ok(());
            }
        }
        let all_ended =
            children.len() as u32 >= wait.count && children.iter().all(|c| c.status.is_terminal());
        if all_ended {
            let from = (run.state.clone(), run.status);
            crate::edge_log::taken(
                &run.workflow,
                &run.state,
                EdgeKind::Children,
                None,
                &wait.then.state,
            );
            enter(ops, run, &wait.then).await?;
            run.received = Some(Inbox::Children { visit: wait.visit });
            make_pending(run, now);
            ops.history_insert(&history(
                run,
                (&from.0, from.1),
                "children",
                "engine",
                None,
                now,
                now,
            ))
            .await?;
        }
        Ok(())
    })
}

/// Takes the oldest queued signal the waiting run waits for, if any, and enters its
/// target. Returns whether one was taken.
async fn consume_signal<O: Ops>(
    ops: &mut O,
    run: &mut Run,
    now: DateTime<Utc>,
) -> StoreResult<bool> {
    if run.status != RunStatus::Waiting {
        return Ok(false);
    }
    let Some(waiting) = run.waiting_for.clone() else {
        return Ok(false);
    };
    if waiting.signals.is_empty() {
        return Ok(false);
    }
    let Some(signal) = ops
        .signal_oldest_queued(run.id, &waiting.signal_names())
        .await?
    else {
        return Ok(false);
    };
    let Some(target) = waiting.signals.iter().find(|s| s.signal == signal.name) else {
        return Ok(false);
    };
    let from = (run.state.clone(), run.status);
    crate::edge_log::taken(
        &run.workflow,
        &run.state,
        EdgeKind::Signal,
        Some(&signal.name),
        &target.target.state,
    );
    enter(ops, run, &target.target).await?;
    ops.signal_set_status(signal.id, "consumed", Some(run.visit))
        .await?;
    run.received = Some(Inbox::Signal(ReceivedSignal {
        id: signal.id,
        name: signal.name.clone(),
        payload: signal.payload.clone(),
        actor: signal.actor.clone(),
        version: signal.version,
    }));
    make_pending(run, now);
    ops.history_insert(&history(
        run,
        (&from.0, from.1),
        "signal",
        &signal.actor,
        None,
        signal.received_at,
        now,
    ))
    .await?;
    Ok(true)
}

/// Delivers a signal: persisted (idempotently on its key), then taken at once if the
/// run waits for it.
pub(crate) async fn signal<O: Ops>(
    ops: &mut O,
    scope: &TenantScope,
    run_id: Uuid,
    signal: &NewSignal,
) -> StoreResult<SignalReceipt> {
    let mut run = match ops.run_lock(run_id).await? {
        Some(run) if scope.allows(&run.tenant) => run,
        _ => return Err(StoreError::RunNotFound(run_id)),
    };
    if let Some(key) = &signal.idempotency_key {
        if let Some(id) = ops.signal_by_key(run_id, key).await? {
            return Ok(SignalReceipt {
                id,
                created: false,
                consumed: false,
            });
        }
    }
    if run.status.is_terminal() {
        return Err(conflict(format!("the run has finished ({})", run.status)));
    }
    if matches!(
        run.status,
        RunStatus::Compensating | RunStatus::CompensationFailed
    ) {
        return Err(conflict(format!(
            "the run is {} and takes no signals",
            run.status
        )));
    }
    let waits_now = run.status == RunStatus::Waiting
        && run
            .waiting_for
            .as_ref()
            .is_some_and(|w| w.signals.iter().any(|s| s.signal == signal.name));
    if signal.only_while_waiting && !waits_now {
        return Err(conflict(format!(
            "signal {:?} is accepted only while the run waits for it; it is {} in state {:?}",
            signal.name, run.status, run.state
        )));
    }
    ops.signal_insert(run_id, signal).await?;
    let consumed = consume_signal(ops, &mut run, signal.now).await?;
    if consumed {
        run.updated_at = signal.now;
        ops.run_write(&run).await?;
    }
    Ok(SignalReceipt {
        id: signal.id,
        created: true,
        consumed,
    })
}

/// Cancellation of a run not held by a worker: compensate, then end `cancelled`.
async fn apply_cancel<O: Ops>(
    ops: &mut O,
    run: &mut Run,
    request: &CancelRequest,
    now: DateTime<Utc>,
    notify_parent: bool,
) -> StoreResult<()> {
    let from = (run.state.clone(), run.status);
    let ending = Ending {
        status: RunStatus::Cancelled,
        reason: request.reason.clone(),
        actor: request.actor.clone(),
        error: None,
    };
    run.cancel_request = None;
    let actor = request.actor.clone();
    begin_compensation(ops, run, ending, now, notify_parent, |run| {
        history(run, (&from.0, from.1), "cancel", &actor, None, now, now)
    })
    .await
}

/// Cancels a run and, through compensation, its children. A run held by a worker gets
/// a cancellation request its worker applies when the step returns.
fn cancel_tree<'a, O: Ops>(
    ops: &'a mut O,
    id: Uuid,
    actor: String,
    reason: String,
    now: DateTime<Utc>,
    notify_parent: bool,
) -> BoxFut<'a, StoreResult<Run>> {
    Box::pin(async move {
        let mut run = ops.run_lock(id).await?.ok_or(StoreError::RunNotFound(id))?;
        let db_now = ops.db_now().await?;
        let request = CancelRequest {
            actor,
            reason,
            at: now,
        };
        match run.status {
            s if s.is_terminal() => {}
            RunStatus::Compensating | RunStatus::CompensationFailed => {}
            RunStatus::Running if run.lease_expires_at.is_some_and(|t| t > db_now) => {
                if run.cancel_request.is_none() {
                    run.cancel_request = Some(request.clone());
                    run.updated_at = now;
                    let h = history(
                        &run,
                        (&run.state, run.status),
                        "cancel_requested",
                        &request.actor,
                        None,
                        now,
                        now,
                    );
                    ops.history_insert(&h).await?;
                    ops.run_write(&run).await?;
                }
            }
            _ => {
                run.updated_at = now;
                apply_cancel(ops, &mut run, &request, now, notify_parent).await?;
                ops.run_write(&run).await?;
            }
        }
        Ok(run)
    })
}

/// An operator's cancel: a conflict for runs that ended or are compensating.
pub(crate) async fn cancel<O: Ops>(
    ops: &mut O,
    scope: &TenantScope,
    id: Uuid,
    actor: &str,
    reason: &str,
    address: Option<&str>,
    now: DateTime<Utc>,
) -> StoreResult<Run> {
    let run = match ops.run_lock(id).await? {
        Some(run) if scope.allows(&run.tenant) => run,
        _ => return Err(StoreError::RunNotFound(id)),
    };
    if run.status.is_terminal() {
        return Err(conflict(format!(
            "the run has already ended ({})",
            run.status
        )));
    }
    if matches!(
        run.status,
        RunStatus::Compensating | RunStatus::CompensationFailed
    ) {
        return Err(conflict(format!(
            "the run is {}; retry or skip its compensation, or terminate it",
            run.status
        )));
    }
    let cancelled = cancel_tree(ops, id, actor.to_owned(), reason.to_owned(), now, true).await?;
    audit_action(
        ops,
        &cancelled,
        "run.cancel",
        actor,
        address,
        serde_json::json!({ "reason": reason }),
        now,
    )
    .await?;
    Ok(cancelled)
}

fn terminate_tree<'a, O: Ops>(
    ops: &'a mut O,
    id: Uuid,
    actor: String,
    reason: String,
    now: DateTime<Utc>,
    notify_parent: bool,
) -> BoxFut<'a, StoreResult<Run>> {
    Box::pin(async move {
        let mut run = ops.run_lock(id).await?.ok_or(StoreError::RunNotFound(id))?;
        if run.status.is_terminal() {
            return Ok(run);
        }
        for child in ops.children_active(id).await? {
            terminate_tree(
                ops,
                child,
                format!("run:{id}"),
                format!("parent terminated: {reason}"),
                now,
                false,
            )
            .await?;
        }
        let from = (run.state.clone(), run.status);
        // Bumping the fence makes a worker still running a step unable to commit.
        run.lease_token += 1;
        run.status = RunStatus::Cancelled;
        run.ending = Some(Ending {
            status: RunStatus::Cancelled,
            reason: format!("terminated: {reason}"),
            actor: actor.clone(),
            error: None,
        });
        run.updated_at = now;
        run.unlock();
        let h = history(&run, (&from.0, from.1), "terminate", &actor, None, now, now);
        ops.history_insert(&h).await?;
        finish(ops, &mut run, now, notify_parent).await?;
        Ok(run)
    })
}

/// An operator's terminate: ends any live run at once, without compensation.
pub(crate) async fn terminate<O: Ops>(
    ops: &mut O,
    scope: &TenantScope,
    id: Uuid,
    actor: &str,
    reason: &str,
    address: Option<&str>,
    now: DateTime<Utc>,
) -> StoreResult<Run> {
    match ops.run_lock(id).await? {
        Some(run) if scope.allows(&run.tenant) => {
            if run.status.is_terminal() {
                return Err(conflict(format!(
                    "the run has already ended ({})",
                    run.status
                )));
            }
        }
        _ => return Err(StoreError::RunNotFound(id)),
    }
    let ended = terminate_tree(ops, id, actor.to_owned(), reason.to_owned(), now, true).await?;
    audit_action(
        ops,
        &ended,
        "run.terminate",
        actor,
        address,
        serde_json::json!({ "reason": reason }),
        now,
    )
    .await?;
    Ok(ended)
}

/// An operator's retry: a held failure runs its state again; a failed compensation
/// runs again.
pub(crate) async fn retry<O: Ops>(
    ops: &mut O,
    scope: &TenantScope,
    id: Uuid,
    actor: &str,
    address: Option<&str>,
    now: DateTime<Utc>,
) -> StoreResult<Run> {
    let mut run = match ops.run_lock(id).await? {
        Some(run) if scope.allows(&run.tenant) => run,
        _ => return Err(StoreError::RunNotFound(id)),
    };
    let from = (run.state.clone(), run.status);
    let cause = match run.status {
        RunStatus::Failed if run.held => {
            run.held = false;
            run.finished_at = None;
            make_pending(&mut run, now);
            "operator_retry"
        }
        RunStatus::Failed => {
            return Err(conflict(
                "the run compensated and failed for good; it cannot be retried",
            ))
        }
        RunStatus::CompensationFailed => {
            run.status = RunStatus::Compensating;
            run.due_at = Some(now);
            run.attempt = 0;
            "retry_compensation"
        }
        other => {
            return Err(conflict(format!(
                "only a failed run held for retry or a failed compensation can be retried; this run is {other}"
            )))
        }
    };
    run.updated_at = now;
    ops.history_insert(&history(
        &run,
        (&from.0, from.1),
        cause,
        actor,
        None,
        now,
        now,
    ))
    .await?;
    ops.run_write(&run).await?;
    audit_action(
        ops,
        &run,
        "run.retry",
        actor,
        address,
        serde_json::json!({ "cause": cause }),
        now,
    )
    .await?;
    Ok(run)
}

/// An operator skips the compensation that failed; compensation goes on with the next.
pub(crate) async fn skip_compensation<O: Ops>(
    ops: &mut O,
    scope: &TenantScope,
    id: Uuid,
    actor: &str,
    address: Option<&str>,
    now: DateTime<Utc>,
) -> StoreResult<Run> {
    let mut run = match ops.run_lock(id).await? {
        Some(run) if scope.allows(&run.tenant) => run,
        _ => return Err(StoreError::RunNotFound(id)),
    };
    if run.status != RunStatus::CompensationFailed {
        return Err(conflict(format!(
            "only a failed compensation can be skipped; this run is {}",
            run.status
        )));
    }
    let from = (run.state.clone(), run.status);
    let skipped = ops
        .compensation_next(id)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("run {id} has no compensation to skip")))?;
    ops.compensation_set(id, skipped.visit, "skipped").await?;
    run.status = RunStatus::Compensating;
    run.due_at = Some(now);
    run.attempt = 0;
    run.updated_at = now;
    let mut h = history(
        &run,
        (&from.0, from.1),
        "skip_compensation",
        actor,
        None,
        now,
        now,
    );
    h.to_state = skipped.state.clone();
    h.visit = skipped.visit;
    ops.history_insert(&h).await?;
    ops.run_write(&run).await?;
    let detail = serde_json::json!({ "state": skipped.state, "visit": skipped.visit });
    audit_action(
        ops,
        &run,
        "run.skip_compensation",
        actor,
        address,
        detail,
        now,
    )
    .await?;
    Ok(run)
}

/// Fires a wait's timeout if it is still waiting and due.
pub(crate) async fn fire_timeout<O: Ops>(
    ops: &mut O,
    id: Uuid,
    now: DateTime<Utc>,
) -> StoreResult<bool> {
    let Some(mut run) = ops.run_lock(id).await? else {
        return Ok(false);
    };
    let due = run.status == RunStatus::Waiting && run.due_at.is_some_and(|d| d <= now);
    let Some(target) = run.waiting_for.as_ref().and_then(|w| w.timeout.clone()) else {
        return Ok(false);
    };
    if !due {
        return Ok(false);
    }
    let from = (run.state.clone(), run.status);
    crate::edge_log::taken(
        &run.workflow,
        &run.state,
        EdgeKind::Timer,
        None,
        &target.state,
    );
    enter(ops, &mut run, &target).await?;
    make_pending(&mut run, now);
    run.updated_at = now;
    ops.history_insert(&history(
        &run,
        (&from.0, from.1),
        "timeout",
        "engine",
        None,
        now,
        now,
    ))
    .await?;
    ops.run_write(&run).await?;
    Ok(true)
}
