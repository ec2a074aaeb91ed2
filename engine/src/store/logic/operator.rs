//! An operator's actions on a run: cancel (compensation, then `cancelled`, children
//! too), terminate (at once, no compensation), retry and skip a compensation. Each
//! appends its audit record in the same transaction.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::StoreError;
use crate::status::RunStatus;
use crate::store::model::*;
use crate::store::StoreResult;

use super::ending::{begin_compensation, finish};
use super::{audit_action, conflict, history, make_pending, BoxFut, Ops};

/// Cancellation of a run not held by a worker: compensate, then end `cancelled`.
pub(super) async fn apply_cancel<O: Ops>(
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
pub(super) fn cancel_tree<'a, O: Ops>(
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
