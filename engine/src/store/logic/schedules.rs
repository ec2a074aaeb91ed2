//! A schedule firing: the scheduler's fence, the run it starts (or finds, when a
//! crash between start and record left it started), and the schedule moved on by
//! compare-and-set, all in one transaction.

use crate::error::StoreError;
use crate::store::logic::Ops;
use crate::store::model::{Run, ScheduleAdvance};
use crate::store::StoreResult;

/// Starts `a.start` (if any) and moves the schedule on, only while the caller still
/// holds the scheduler lease and the schedule is where it read it.
pub(crate) async fn schedule_advance<O: Ops>(
    ops: &mut O,
    a: &ScheduleAdvance,
) -> StoreResult<Option<Run>> {
    if !ops.lease_held("scheduler", a.lease.0, a.lease.1).await? {
        return Err(StoreError::LeaseLost {
            run_id: a.schedule_id,
            token: a.lease.1,
        });
    }
    let mut run = None;
    let mut run_id = None;
    if let Some(new) = &a.start {
        match ops.run_insert(new).await? {
            Some(started) => {
                run_id = Some(started.id);
                run = Some(started);
            }
            // The idempotency key (schedule + fire time) already named a run.
            None => {
                if let Some(key) = &new.idempotency_key {
                    run_id = ops.run_by_key(&new.tenant, &new.workflow, key).await?;
                }
            }
        }
    }
    if !ops.schedule_move(a, run_id).await? {
        return Err(StoreError::Conflict(format!(
            "schedule {} moved on concurrently",
            a.schedule_id
        )));
    }
    Ok(run)
}
