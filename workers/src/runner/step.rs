//! One claimed run's task: its step under its timeout and tokens, the commit of what
//! came of it, and on to the next step at once while the lease is kept.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;
use waymark_engine::advance::{self, PlanInput};
use waymark_engine::store::{Inbox, Lease, Upgrade};
use waymark_engine::workflow::{ChildResult, ErasedWorkflow, Received};
use waymark_engine::{Engine, Persisted, RunStatus, StepContext, StepError};

use super::commit::{commit_and_continue, commit_error, release};
use super::compensate::compensate_once;
use super::{humanize, InHandMap, RunnerConfig, Tokens};

/// Removes a run from the in-hand map however its task ends (a panic included), so
/// the heartbeat stops extending a lease nobody works under. Only its own entry: an
/// entry under another lease is not this attempt's to remove.
struct InHandGuard {
    in_hand: InHandMap,
    lease: Lease,
}

impl Drop for InHandGuard {
    fn drop(&mut self) {
        if let Ok(mut map) = self.in_hand.lock() {
            if map
                .get(&self.lease.run_id)
                .is_some_and(|h| h.lease == self.lease)
            {
                map.remove(&self.lease.run_id);
            }
        }
    }
}

/// Drives one claimed run: step, commit, and on at once while the lease is kept.
#[allow(clippy::too_many_arguments)]
pub(super) async fn drive(
    engine: Engine,
    config: RunnerConfig,
    mut run: waymark_engine::Run,
    tokens: Tokens,
    in_hand: InHandMap,
    _permit: OwnedSemaphorePermit,
) {
    let Some(lease) = run.lease() else { return };
    let _guard = InHandGuard { in_hand, lease };
    loop {
        let span = tracing::info_span!("step", run = %run.id, workflow = %run.workflow,
            state = %run.state, visit = run.visit, attempt = run.attempt);
        match advance_once(&engine, &config, &run, &tokens)
            .instrument(span)
            .await
        {
            Some(next) => run = next,
            None => return,
        }
    }
}

/// Runs the current state's step (or the next compensation) and commits what came
/// of it. Returns the run when the lease was kept for its next step.
async fn advance_once(
    engine: &Engine,
    config: &RunnerConfig,
    run: &waymark_engine::Run,
    tokens: &Tokens,
) -> Option<waymark_engine::Run> {
    let lease = run.lease()?;
    let Some(workflow) = engine.registry.get(&run.workflow).cloned() else {
        // Claims filter by known workflows, so this is a registry/claim mismatch.
        tracing::error!("claimed a run of an unknown workflow; releasing");
        release(engine, &lease).await;
        return None;
    };
    let definition = workflow.definition();
    let started = engine.clock.now();
    let actor = format!("worker:{}", config.worker_id);
    let mut plan_input = PlanInput {
        now: started,
        step_started_at: started,
        lease: config.lease,
        max_payload: engine.limits.max_payload,
        actor: &actor,
        capabilities: &config.capabilities,
        may_hold: !tokens.shutdown.is_cancelled(),
        registry: &engine.registry,
        upgrade: None,
    };

    // Runs persisted by an older version of the workflow are brought up to date first.
    let (input, state_data, received) = match load(engine, workflow.as_ref(), run).await {
        Ok(loaded) => loaded,
        Err(error) => {
            let commit = advance::plan(definition, run, Err(error), &plan_input);
            return commit_and_continue(engine, &lease, &commit).await;
        }
    };
    if run.workflow_version < workflow.version() {
        plan_input.upgrade = Some(Upgrade {
            version: workflow.version(),
            input: input.clone(),
            state_data: state_data.clone(),
        });
    }

    if run.status == RunStatus::Compensating {
        return compensate_once(
            engine,
            config,
            run,
            workflow.as_ref(),
            &input,
            tokens,
            plan_input,
        )
        .await;
    }
    if run.cancel_request.is_some() {
        // Cancelled while no worker held it (its previous worker died): do not start
        // the step, apply the cancellation.
        let commit = advance::plan_abandon(run, &plan_input);
        return commit_and_continue(engine, &lease, &commit).await;
    }

    let policy = definition.retry_for(&run.state);
    let result = if run.attempt as u32 > policy.max_attempts {
        // Earlier attempts' workers died mid-step (their leases expired): a step that
        // keeps killing its worker must not be retried forever.
        Err(StepError::fatal(format!(
            "attempt {} exceeds the {} allowed; earlier attempts lost their workers",
            run.attempt, policy.max_attempts
        )))
    } else {
        let ctx = StepContext::new(
            run.id,
            run.tenant.clone(),
            workflow.name(),
            run.state.clone(),
            run.visit,
            run.attempt,
            tokens.cancel.clone(),
            engine.clock.clone(),
        )
        .with_access(definition)
        .with_received(received)
        .with_progress(Arc::new(LeaseProgress {
            store: engine.store.clone(),
            lease,
        }));
        let step = tokio::time::timeout(
            policy.step_timeout,
            workflow.step(&ctx, &input, &state_data),
        );
        let timed_out = || {
            Err(StepError::retryable(format!(
                "step timed out after {}",
                humanize(policy.step_timeout)
            )))
        };
        let began = std::time::Instant::now();
        let finished = run_cancellable(step, tokens, config.cancel_grace).await;
        engine.metrics.step_took(began.elapsed());
        match finished {
            Finished::Done(Ok(result)) => result,
            Finished::Done(Err(_)) => timed_out(),
            Finished::Lost => {
                tracing::error!("lease lost while the step ran; its result is discarded");
                engine.metrics.lease_lost();
                return None;
            }
            Finished::Abandoned => {
                release(engine, &lease).await;
                return None;
            }
            Finished::CancelGraceOver => {
                tracing::warn!("cancelled step did not return within its grace; abandoning it");
                let commit = advance::plan_abandon(
                    run,
                    &PlanInput {
                        now: engine.clock.now(),
                        ..plan_input
                    },
                );
                return commit_and_continue(engine, &lease, &commit).await;
            }
        }
    };
    let commit = advance::plan(
        definition,
        run,
        result,
        &PlanInput {
            now: engine.clock.now(),
            ..plan_input
        },
    );
    if let Some(error) = commit_error(&commit) {
        tracing::warn!(error = %error, causes = ?error.causes, "step failed");
    }
    commit_and_continue(engine, &lease, &commit).await
}

/// Input, state data and received items of `run`, upcast to the workflow's version,
/// with a fan-out's child results loaded.
pub(super) async fn load(
    engine: &Engine,
    workflow: &dyn ErasedWorkflow,
    run: &waymark_engine::Run,
) -> Result<(Value, Value, Option<Received>), StepError> {
    let from = run.workflow_version;
    let upcast = |kind, value: &Value| {
        workflow
            .upcast(kind, from, value.clone())
            .map_err(|e| StepError::fatal(e.to_string()))
    };
    let input = upcast(Persisted::Input, &run.input)?;
    let state_data = upcast(Persisted::State, &run.state_data)?;
    let received = match &run.received {
        None => None,
        Some(Inbox::Signal(signal)) => {
            // Signals are upcast from the version they were written for, which may be
            // older than the run's own (queued before the run was upgraded).
            let tagged = serde_json::json!({ "signal": signal.name, "payload": signal.payload });
            let upcasted = workflow
                .upcast(Persisted::Signal, signal.version, tagged)
                .map_err(|e| StepError::fatal(e.to_string()))?;
            let mut signal = signal.clone();
            signal.payload = upcasted.get("payload").cloned().unwrap_or(Value::Null);
            Some(Received::Signal(signal))
        }
        Some(Inbox::Children { visit }) => {
            let children = engine
                .store
                .run_children(run.id, *visit)
                .await
                .map_err(|e| StepError::retryable_from(&e))?;
            Some(Received::Children(
                children
                    .into_iter()
                    .map(|c| ChildResult {
                        index: c.child_index.unwrap_or_default() as u32,
                        run_id: c.id,
                        workflow: c.workflow,
                        status: c.status,
                        output: c.output,
                        error: c.error.or_else(|| {
                            c.ending
                                .map(|e| StepError::fatal(format!("{}: {}", e.status, e.reason)))
                        }),
                    })
                    .collect(),
            ))
        }
    };
    Ok((input, state_data, received))
}

pub(super) enum Finished<T> {
    Done(T),
    /// The lease was lost.
    Lost,
    /// The shutdown grace ran out.
    Abandoned,
    /// The run was cancelled and the step did not return within the cancel grace.
    CancelGraceOver,
}

/// Awaits a step, watching the lease, shutdown and cancellation.
pub(super) async fn run_cancellable<F: std::future::Future>(
    step: F,
    tokens: &Tokens,
    cancel_grace: Duration,
) -> Finished<F::Output> {
    tokio::pin!(step);
    tokio::select! {
        // Step first: when the lease is lost, a step that watches its token gets to
        // see it and return (its result is then refused by the fence); one that
        // does not is dropped.
        biased;
        outcome = &mut step => return Finished::Done(outcome),
        _ = tokens.lost.cancelled() => return Finished::Lost,
        _ = tokens.abandon.cancelled() => return Finished::Abandoned,
        _ = tokens.cancel.cancelled() => {}
    }
    // Cancelled: the step saw its token fire and has the grace to return; a success it
    // returns is committed (and then compensated).
    tokio::select! {
        biased;
        outcome = &mut step => Finished::Done(outcome),
        _ = tokens.lost.cancelled() => Finished::Lost,
        _ = tokens.abandon.cancelled() => Finished::Abandoned,
        _ = tokio::time::sleep(cancel_grace) => Finished::CancelGraceOver,
    }
}

/// A step's progress, written on its run through the lease the runner holds.
#[derive(Debug)]
pub(super) struct LeaseProgress {
    pub(super) store: waymark_engine::Store,
    pub(super) lease: Lease,
}

impl waymark_engine::workflow::ProgressSink for LeaseProgress {
    fn report<'a>(
        &'a self,
        fraction: f32,
        message: &'a str,
    ) -> waymark_engine::workflow::BoxFuture<'a, Result<(), StepError>> {
        Box::pin(async move {
            self.store
                .run_progress(&self.lease, fraction, message)
                .await
                .map_err(|e| StepError::retryable_from(&e))
        })
    }
}
