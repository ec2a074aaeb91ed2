//! How a run ends: undoing first (live children cancelled, completed ones reopened to
//! compensate, the run itself `compensating` while visits remain to undo), then its
//! final status, its queued signals recorded as unconsumed, and a waiting parent told.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::StepError;
use crate::status::RunStatus;
use crate::store::model::*;
use crate::store::StoreResult;
use crate::workflow::{EdgeKind, FanOutPolicy};

use super::operator::cancel_tree;
use super::{enter, history, make_pending, BoxFut, Ops};

/// Starts undoing: cancels live children, then either enters `compensating` (visits to
/// undo exist) or ends the run as `ending` says. `record` builds the history row once
/// the new status is known.
pub(super) async fn begin_compensation<O: Ops>(
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
pub(super) async fn finish<O: Ops>(
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
pub(super) fn gather_children<'a, O: Ops>(
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
