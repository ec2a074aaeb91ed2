//! A worker's transition: fenced by the run's lease (same token, worker and visit,
//! unexpired by database time), then applied whole, with a cancellation asked for
//! while the step ran applied after it.

use crate::error::StoreError;
use crate::status::RunStatus;
use crate::store::model::*;
use crate::store::StoreResult;

use super::ending::{begin_compensation, finish, gather_children};
use super::operator::apply_cancel;
use super::signals::consume_signal;
use super::{enter, history, lease_lost, make_pending, Ops};

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
        Outcome::ContinueAsNew { next } => {
            super::continuation::continue_as_new(ops, &mut run, next, now).await?;
            ops.history_insert(&step_history(&run, "continued_as_new"))
                .await?;
            finish(ops, &mut run, now, true).await?;
        }
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

pub(super) fn chrono_lease(c: &Commit) -> chrono::Duration {
    chrono::Duration::from_std(c.lease).unwrap_or(chrono::Duration::MAX)
}
