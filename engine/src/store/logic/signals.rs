//! Waits: a signal is persisted and taken at once when its run waits for it (or later,
//! when the run reaches a state that waits for it); a wait whose timeout passes enters
//! its timeout state.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::error::StoreError;
use crate::status::RunStatus;
use crate::store::model::*;
use crate::store::StoreResult;
use crate::workflow::{EdgeKind, ReceivedSignal};

use super::{conflict, enter, history, make_pending, Ops};

/// Takes the oldest queued signal the waiting run waits for, if any, and enters its
/// target. Returns whether one was taken.
pub(super) async fn consume_signal<O: Ops>(
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
    // A run that continued as new hands its signals on to the run it continued as.
    let key = signal.idempotency_key.as_deref();
    let run_id = match super::continuation::signal_target(ops, scope, run_id, key).await? {
        Ok(live) => live,
        Err(id) => {
            return Ok(SignalReceipt {
                id,
                created: false,
                consumed: false,
            })
        }
    };
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
