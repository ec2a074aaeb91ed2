use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;
use waymark_engine::advance::{self, PlanInput};
use waymark_engine::store::{ClaimRequest, Inbox, Lease, Upgrade, WorkerInfo};
use waymark_engine::workflow::{ChildResult, ErasedWorkflow, Received};
use waymark_engine::{Engine, Persisted, RunStatus, StepContext, StepError, StoreError};

/// How often a busy runner sweeps for waits whose timeout passed (an idle one sweeps
/// every time it wakes).
const TIMEOUT_SWEEP: Duration = Duration::from_millis(250);

/// How a runner behaves. `RunnerConfig::default()` is what `waymark serve` uses.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub worker_id: Uuid,
    /// Steps executing at once.
    pub concurrency: usize,
    /// Lease length; heartbeats extend it every third of it.
    pub lease: Duration,
    /// Fallback poll when no notification arrives (notifications wake workers at once).
    pub poll_interval: Duration,
    /// Capabilities advertised (e.g. `transcode`): states that need one run only here.
    pub capabilities: Vec<String>,
    /// On shutdown, how long running steps may take to finish before their runs are
    /// released to other workers.
    pub shutdown_grace: Duration,
    /// After a run is cancelled, how long its running step may take to return.
    pub cancel_grace: Duration,
    /// Workers stopped or silent this long are removed from the registry (by any
    /// runner, at start and hourly).
    pub worker_retention: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            worker_id: Uuid::now_v7(),
            concurrency: 16,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(5),
            capabilities: Vec::new(),
            shutdown_grace: Duration::from_secs(10),
            cancel_grace: Duration::from_secs(10),
            worker_retention: Duration::from_secs(86_400),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("cannot register the worker")]
    Register(#[source] StoreError),
}

/// A run this process is working on.
struct InHand {
    lease: Lease,
    /// Fires when the lease is lost: the step's result would be discarded anyway.
    lost: CancellationToken,
    /// Fires when an operator cancels the run: the step gets a grace to return.
    cancel: CancellationToken,
}

type InHandMap = Arc<Mutex<HashMap<Uuid, InHand>>>;

/// Claims and drives runs until its shutdown token fires.
#[derive(Debug, Clone)]
pub struct Runner {
    engine: Engine,
    config: RunnerConfig,
}

impl Runner {
    pub fn new(engine: Engine, config: RunnerConfig) -> Self {
        Self { engine, config }
    }

    pub fn worker_id(&self) -> Uuid {
        self.config.worker_id
    }

    /// Runs until `shutdown` fires, then stops claiming, gives running steps
    /// `shutdown_grace` to finish, releases the leases of those that did not, and
    /// marks the worker stopped.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RunnerError> {
        let store = &self.engine.store;
        let known = self.engine.registry.known();
        store
            .worker_register(&WorkerInfo {
                id: self.config.worker_id,
                host: hostname(),
                pid: std::process::id() as i32,
                version: env!("CARGO_PKG_VERSION").to_owned(),
                capabilities: self.config.capabilities.clone(),
                workflows: known.iter().map(|(n, v)| format!("{n}@{v}")).collect(),
                started_at: self.engine.clock.now(),
                last_heartbeat_at: self.engine.clock.now(),
                runs_in_hand: 0,
                stopped_at: None,
            })
            .await
            .map_err(RunnerError::Register)?;
        tracing::info!(worker = %self.config.worker_id, concurrency = self.config.concurrency,
            capabilities = ?self.config.capabilities, "worker started");
        prune_workers(&self.engine, &self.config).await;

        let in_hand: InHandMap = Arc::default();
        // Fires after the grace period: steps still running are abandoned and released.
        let abandon = CancellationToken::new();
        let heartbeat_stop = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat_loop(
            self.engine.clone(),
            self.config.clone(),
            in_hand.clone(),
            heartbeat_stop.clone(),
        ));

        let permits = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        let mut wake = store.subscribe();
        let mut claim_backoff = Duration::from_millis(100);

        // Waits whose timeout passed are moved on by a sweep, at most every
        // TIMEOUT_SWEEP: once per claim would cost every hot transition a round trip.
        let mut last_sweep: Option<tokio::time::Instant> = None;
        while !shutdown.is_cancelled() {
            if last_sweep.is_none_or(|at| at.elapsed() >= TIMEOUT_SWEEP) {
                last_sweep = Some(tokio::time::Instant::now());
                if let Err(error) = store.runs_fire_timeouts(self.engine.clock.now(), 100).await {
                    tracing::warn!(error = %error_chain(&error), "cannot fire wait timeouts");
                }
            }
            let free = permits.available_permits();
            let mut claimed = 0;
            if free > 0 {
                let request = ClaimRequest {
                    worker_id: self.config.worker_id,
                    workflows: known.clone(),
                    capabilities: self.config.capabilities.clone(),
                    limit: free as u32,
                    lease: self.config.lease,
                    now: self.engine.clock.now(),
                    // Why exclude rather than re-claim and cancel: heartbeats that fail
                    // for longer than the lease (a database restart) leave runs whose
                    // step still runs here with an expired lease. Claiming one again
                    // would start a second attempt before the first has stopped (a
                    // cancelled step only stops at its next await, and its task must
                    // still unwind). Excluded, the run waits for its attempt here to
                    // end: the heartbeat then finds the lease gone and cancels it, or
                    // its commit is refused; either way the task leaves `in_hand` and
                    // the next claim may take the run. Only this loop adds to
                    // `in_hand`, so this list is exact for the claim below.
                    exclude: in_hand
                        .lock()
                        .expect("in-hand lock")
                        .keys()
                        .copied()
                        .collect(),
                };
                match store.run_claim(&request).await {
                    Ok(runs) => {
                        claim_backoff = Duration::from_millis(100);
                        claimed = runs.len();
                        let now = self.engine.clock.now();
                        for run in &runs {
                            if let Some(due) = run.due_at.filter(|_| run.claimed_from.is_some()) {
                                let late = (now - due).to_std().unwrap_or_default();
                                let after_timer = run.claimed_from == Some(RunStatus::Sleeping);
                                self.engine.metrics.claimed_late(late, after_timer);
                            }
                        }
                        for run in runs {
                            let permit = permits
                                .clone()
                                .try_acquire_owned()
                                .expect("claimed no more runs than free permits");
                            let Some(lease) = run.lease() else { continue };
                            let lost = CancellationToken::new();
                            let cancel = lost.child_token();
                            let previous = in_hand.lock().expect("in-hand lock").insert(
                                run.id,
                                InHand {
                                    lease,
                                    lost: lost.clone(),
                                    cancel: cancel.clone(),
                                },
                            );
                            debug_assert!(
                                previous.is_none(),
                                "claimed run {} this worker still holds",
                                run.id
                            );
                            tasks.spawn(drive(
                                self.engine.clone(),
                                self.config.clone(),
                                run,
                                Tokens {
                                    lost,
                                    cancel,
                                    shutdown: shutdown.clone(),
                                    abandon: abandon.clone(),
                                },
                                in_hand.clone(),
                                permit,
                            ));
                        }
                    }
                    Err(error) => {
                        tracing::warn!(error = %error_chain(&error), "claim failed; backing off");
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(claim_backoff) => {}
                        }
                        claim_backoff = (claim_backoff * 2).min(self.config.poll_interval);
                        continue;
                    }
                }
            }
            while let Some(done) = tasks.try_join_next() {
                if let Err(error) = done {
                    tracing::error!(error = %error, "a run task panicked; its lease will expire and the run be retried");
                }
            }
            if claimed > 0 && claimed == free {
                // A full batch: there may be more due work.
                continue;
            }
            let wait = if claimed == 0 {
                // Idle: the next pass sweeps timeouts whatever the time since the last.
                last_sweep = None;
                self.idle_wait().await
            } else {
                Duration::ZERO
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wake.changed() => {}
                _ = tokio::time::sleep(wait) => {}
                permit = permits.clone().acquire_owned(), if free == 0 => drop(permit),
            }
        }

        // Shutdown: no more claims. Running steps get the grace period; a step that
        // finishes commits and hands its next state to other workers.
        tracing::info!(in_flight = tasks.len(), "worker stopping");
        let grace = tokio::time::sleep(self.config.shutdown_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                next = tasks.join_next() => if next.is_none() { break },
                _ = &mut grace, if !abandon.is_cancelled() => abandon.cancel(),
            }
        }
        heartbeat_stop.cancel();
        let _ = heartbeat.await;
        if let Err(error) = store.worker_stop(self.config.worker_id).await {
            tracing::warn!(error = %error_chain(&error), "cannot mark the worker stopped");
        }
        tracing::info!("worker stopped");
        Ok(())
    }

    /// How long to wait when nothing was claimable: until the next timer, at most the
    /// poll interval.
    async fn idle_wait(&self) -> Duration {
        let poll = self.config.poll_interval;
        match self.engine.store.run_next_due().await {
            Ok(Some(due)) => {
                let until = (due - self.engine.clock.now())
                    .to_std()
                    .unwrap_or(Duration::ZERO);
                // A due run that was not claimable (an unknown version, a capability
                // this worker lacks) must not make the loop spin.
                if until.is_zero() {
                    poll
                } else {
                    until.min(poll)
                }
            }
            Ok(None) => poll,
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "cannot read the next due time");
                poll
            }
        }
    }
}

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
async fn drive(
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

struct Tokens {
    /// The lease was lost: stop at once, commit nothing.
    lost: CancellationToken,
    /// An operator cancelled the run: the step is told and gets the cancel grace.
    cancel: CancellationToken,
    /// The runner is stopping: finish this step, then hand the run on.
    shutdown: CancellationToken,
    /// The shutdown grace is over: stop at once and release the run.
    abandon: CancellationToken,
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
async fn load(
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

/// Runs the newest pending compensation, or ends the run when none is left.
async fn compensate_once(
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

enum Finished<T> {
    Done(T),
    /// The lease was lost.
    Lost,
    /// The shutdown grace ran out.
    Abandoned,
    /// The run was cancelled and the step did not return within the cancel grace.
    CancelGraceOver,
}

/// Awaits a step, watching the lease, shutdown and cancellation.
async fn run_cancellable<F: std::future::Future>(
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

/// Commits and returns the run if this worker kept its lease for the next step.
async fn commit_and_continue(
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

fn commit_error(commit: &waymark_engine::store::Commit) -> Option<&StepError> {
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

async fn release(engine: &Engine, lease: &Lease) {
    match engine.store.run_release(lease, engine.clock.now()).await {
        Ok(()) => tracing::info!(run = %lease.run_id, "released on shutdown"),
        Err(error) => {
            tracing::warn!(run = %lease.run_id, error = %error_chain(&error), "cannot release")
        }
    }
}

/// Extends all leases this runner holds every third of the lease, in one statement,
/// and cancels the steps whose lease turned out lost.
async fn heartbeat_loop(
    engine: Engine,
    config: RunnerConfig,
    in_hand: InHandMap,
    stop: CancellationToken,
) {
    let period = config.lease / 3;
    let mut pruned_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        if pruned_at.elapsed() >= Duration::from_secs(3600) {
            pruned_at = tokio::time::Instant::now();
            prune_workers(&engine, &config).await;
        }
        // Snapshot first: runs claimed after it are not judged by this beat.
        let snapshot: Vec<Lease> = in_hand
            .lock()
            .expect("in-hand lock")
            .values()
            .map(|h| h.lease)
            .collect();
        let ids: Vec<Uuid> = snapshot.iter().map(|l| l.run_id).collect();
        match engine
            .store
            .runs_heartbeat(config.worker_id, &ids, config.lease)
            .await
        {
            Ok(held) => {
                let map = in_hand.lock().expect("in-hand lock");
                for lease in &snapshot {
                    let Some(h) = map.get(&lease.run_id).filter(|h| h.lease == *lease) else {
                        continue;
                    };
                    match held.iter().find(|held| held.lease == *lease) {
                        None => {
                            tracing::error!(run = %lease.run_id, token = lease.token, "lease lost; cancelling the step");
                            h.lost.cancel();
                        }
                        Some(held) if held.cancel_requested && !h.cancel.is_cancelled() => {
                            tracing::info!(run = %lease.run_id, "run cancelled; telling its step");
                            h.cancel.cancel();
                        }
                        Some(_) => {}
                    }
                }
            }
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "heartbeat failed");
            }
        }
        let count = in_hand.lock().map(|m| m.len()).unwrap_or(0) as i32;
        if let Err(error) = engine.store.worker_heartbeat(config.worker_id, count).await {
            tracing::warn!(error = %error_chain(&error), "worker heartbeat failed");
        }
    }
}

/// A step's progress, written on its run through the lease the runner holds.
#[derive(Debug)]
struct LeaseProgress {
    store: waymark_engine::Store,
    lease: Lease,
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

/// Removes workers long gone from the registry, so it stays as small as the fleet.
async fn prune_workers(engine: &Engine, config: &RunnerConfig) {
    let Some(before) = engine.clock.now().checked_sub_signed(
        chrono::Duration::from_std(config.worker_retention).unwrap_or_default(),
    ) else {
        return;
    };
    match engine.store.workers_prune(before).await {
        Ok(0) => {}
        Ok(pruned) => tracing::info!(pruned, "removed workers gone since before {before}"),
        Err(error) => {
            tracing::warn!(error = %error_chain(&error), "cannot prune the worker registry")
        }
    }
}

/// An error and its causes on one line, for logs.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

fn humanize(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".to_owned())
}
