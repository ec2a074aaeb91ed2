//! A compensating run's task: the newest pending compensation, or the end of the run
//! when none is left.

use std::sync::Arc;

use serde_json::Value;
use waymark_engine::advance::{self, PlanInput};
use waymark_engine::workflow::ErasedWorkflow;
use waymark_engine::{Engine, Persisted, StepContext, StepError};

use super::commit::{commit_and_continue, release};
use super::step::{run_cancellable, Finished, LeaseProgress};
use super::{error_chain, humanize, RunnerConfig, Tokens};

/// Runs the newest pending compensation, or ends the run when none is left.
pub(super) async fn compensate_once(
    engine: &Engine,
    config: &RunnerConfig,
    run: &waymark_engine::Run,
    workflow: &dyn ErasedWorkflow,
    input: &Value,
    tokens: &Tokens,
    plan_input: PlanInput<'_>,
) -> Option<waymark_engine::Run> {
    let lease = run.lease()?;
    let compensations = match engine.store.run_compensations(run.id).await {
        Ok(list) => list,
        Err(error) => {
            tracing::warn!(error = %error_chain(&error), "cannot read compensations; releasing");
            release(engine, &lease).await;
            return None;
        }
    };
    let Some(next) = compensations
        .into_iter()
        .rev()
        .find(|c| c.status == "pending")
    else {
        let commit = advance::plan_compensation_done(run, &plan_input);
        return commit_and_continue(engine, &lease, &commit).await;
    };
    let definition = workflow.definition();
    let policy = definition.retry_for(&next.state);
    let state_data = match workflow.upcast(
        Persisted::State,
        run.workflow_version,
        next.state_data.clone(),
    ) {
        Ok(data) => data,
        Err(error) => {
            let commit = advance::plan_compensation(
                definition,
                run,
                &next,
                Err(StepError::fatal(error.to_string())),
                &plan_input,
            );
            return commit_and_continue(engine, &lease, &commit).await;
        }
    };
    let ctx = StepContext::new(
        run.id,
        run.tenant.clone(),
        workflow.name(),
        next.state.clone(),
        next.visit,
        run.attempt,
        tokens.cancel.clone(),
        engine.clock.clone(),
    )
    .for_compensation()
    .with_access(definition)
    .with_progress(Arc::new(LeaseProgress {
        store: engine.store.clone(),
        lease,
    }));
    let step = tokio::time::timeout(
        policy.step_timeout,
        workflow.compensate(&ctx, input, &state_data),
    );
    // A compensating run cannot be cancelled, so only a lost lease or shutdown stops it.
    let result = match run_cancellable(step, tokens, config.cancel_grace).await {
        Finished::Done(Ok(result)) => result,
        Finished::Done(Err(_)) => Err(StepError::retryable(format!(
            "compensation timed out after {}",
            humanize(policy.step_timeout)
        ))),
        Finished::Lost => return None,
        Finished::Abandoned | Finished::CancelGraceOver => {
            release(engine, &lease).await;
            return None;
        }
    };
    if let Err(error) = &result {
        tracing::warn!(error = %error, state = %next.state, "compensation failed");
    }
    let commit = advance::plan_compensation(
        definition,
        run,
        &next,
        result,
        &PlanInput {
            now: engine.clock.now(),
            ..plan_input
        },
    );
    commit_and_continue(engine, &lease, &commit).await
}
