//! Committing a planned transition under the lease: retried through transient
//! database errors, fenced so that a retry never applies twice; and giving a lease back.

use std::time::Duration;

use waymark_engine::store::Lease;
use waymark_engine::{Engine, RunStatus, StepError, StoreError};

use super::error_chain;

/// Commits and returns the run if this worker kept its lease for the next step.
pub(super) async fn commit_and_continue(
    engine: &Engine,
    lease: &Lease,
    commit: &waymark_engine::store::Commit,
) -> Option<waymark_engine::Run> {
    let committed = commit_with_retry(engine, lease, commit).await;
    match &committed {
        Ok(next) => {
            engine.metrics.transition();
            if next.status.is_terminal() {
                engine.metrics.run_ended(&next.workflow, next.status);
            }
        }
        Err(error) if error.is_lease_lost() => engine.metrics.lease_lost(),
        Err(_) => {}
    }
    match committed {
        Ok(next)
            if next.locked_by == Some(lease.worker_id)
                && matches!(next.status, RunStatus::Running | RunStatus::Compensating) =>
        {
            Some(next)
        }
        Ok(next) => {
            tracing::debug!(status = %next.status, state = %next.state, "committed");
            None
        }
        Err(error) => {
            tracing::error!(error = %error_chain(&error), "transition not committed");
            None
        }
    }
}

pub(super) fn commit_error(commit: &waymark_engine::store::Commit) -> Option<&StepError> {
    match &commit.outcome {
        waymark_engine::store::Outcome::Retry { error, .. }
        | waymark_engine::store::Outcome::Fail { error, .. }
        | waymark_engine::store::Outcome::CompensationRetry { error, .. }
        | waymark_engine::store::Outcome::CompensationFailed { error } => Some(error),
        _ => None,
    }
}

/// Commits, retrying transient database errors. A retry after an unknown outcome is
/// safe: commits are fenced on the visit too, so one that already applied cannot
/// apply twice and reports a lost lease instead.
async fn commit_with_retry(
    engine: &Engine,
    lease: &Lease,
    commit: &waymark_engine::store::Commit,
) -> Result<waymark_engine::Run, StoreError> {
    let mut delay = Duration::from_millis(50);
    let mut ambiguous = false;
    for _ in 0..8 {
        match engine.store.run_commit(lease, commit).await {
            Ok(run) => return Ok(run),
            Err(error) if error.is_lease_lost() => {
                if ambiguous {
                    // An earlier try may have applied with the lease kept: give the run
                    // back rather than leave it leased to nobody.
                    let _ = engine.store.run_release(lease, engine.clock.now()).await;
                }
                return Err(error);
            }
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "commit failed; retrying");
                ambiguous = true;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
    engine.store.run_commit(lease, commit).await
}

pub(super) async fn release(engine: &Engine, lease: &Lease) {
    match engine.store.run_release(lease, engine.clock.now()).await {
        Ok(()) => tracing::info!(run = %lease.run_id, "released on shutdown"),
        Err(error) => {
            tracing::warn!(run = %lease.run_id, error = %error_chain(&error), "cannot release")
        }
    }
}
