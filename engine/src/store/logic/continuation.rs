//! Continue-as-new: a run ends `completed` with `{"continued_as": <id>}` and, in the
//! same transaction, a fresh run of the same workflow starts from the state it
//! carried. The signals still queued on the old run move to the new one, so none is
//! lost at the moment of continuation, and a signal sent later to any run of the chain
//! follows it to the live run.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::StoreError;
use crate::status::RunStatus;
use crate::store::model::*;
use crate::store::StoreResult;

use super::operator::apply_cancel;
use super::Ops;

impl Run {
    /// The run this one continued as, if it ended by continuing as new.
    pub fn continued_as(&self) -> Option<Uuid> {
        if self.status != RunStatus::Completed {
            return None;
        }
        let object = self.output.as_ref()?.as_object()?;
        if object.len() != 1 {
            return None;
        }
        object.get("continued_as")?.as_str()?.parse().ok()
    }
}

/// Starts `next` in place of `run` and marks `run` completed as continued. The caller
/// writes `run`'s history row and finishes it.
pub(super) async fn continue_as_new<O: Ops>(
    ops: &mut O,
    run: &mut Run,
    next: &NewRun,
    now: DateTime<Utc>,
) -> StoreResult<()> {
    ops.run_insert(next).await?.ok_or_else(|| {
        StoreError::Conflict(format!(
            "run {} continues as {}, which exists",
            run.id, next.id
        ))
    })?;
    ops.signals_move(run.id, next.id).await?;
    run.status = RunStatus::Completed;
    run.output = Some(serde_json::json!({ "continued_as": next.id }));
    run.error = None;
    // An operator's cancellation asked for while the step ran is meant for the
    // process, which now lives on in the new run.
    if let Some(request) = run.cancel_request.take() {
        if let Some(mut new_run) = ops.run_lock(next.id).await? {
            apply_cancel(ops, &mut new_run, &request, now, false).await?;
            ops.run_write(&new_run).await?;
        }
    }
    Ok(())
}

/// Where a signal for `run_id` goes: along the chain of continuations to the live
/// run, or (`Err`) the id of a signal with the same key found on the way.
pub(super) async fn signal_target<O: Ops>(
    ops: &mut O,
    scope: &TenantScope,
    mut run_id: Uuid,
    key: Option<&str>,
) -> StoreResult<Result<Uuid, Uuid>> {
    loop {
        let run = match ops.run_lock(run_id).await? {
            Some(run) if scope.allows(&run.tenant) => run,
            _ => return Err(StoreError::RunNotFound(run_id)),
        };
        if let Some(key) = key {
            if let Some(id) = ops.signal_by_key(run.id, key).await? {
                return Ok(Err(id));
            }
        }
        match run.continued_as() {
            Some(next) => run_id = next,
            None => return Ok(Ok(run.id)),
        }
    }
}
