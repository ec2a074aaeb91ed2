use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;
use waymark_engine::advance::{self, PlanInput};
use waymark_engine::store::{ClaimRequest, Lease, WorkerInfo};
use waymark_engine::{Engine, RunStatus, StepContext, StepError, StoreError};

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

        while !shutdown.is_cancelled() {
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
                };
                match store.run_claim(&request).await {
                    Ok(runs) => {
                        claim_backoff = Duration::from_millis(100);
                        claimed = runs.len();
                        for run in runs {
                            let permit = permits
                                .clone()
                                .try_acquire_owned()
                                .expect("claimed no more runs than free permits");
                            let Some(lease) = run.lease() else { continue };
                            let lost = CancellationToken::new();
                            in_hand.lock().expect("in-hand lock").insert(
                                run.id,
                                InHand {
                                    lease,
                                    lost: lost.clone(),
                                },
                            );
                            tasks.spawn(drive(
                                self.engine.clone(),
                                self.config.clone(),
                                run,
                                lost,
                                shutdown.clone(),
                                abandon.clone(),
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
/// the heartbeat stops extending a lease nobody works under.
struct InHandGuard {
    in_hand: InHandMap,
    run_id: Uuid,
}

impl Drop for InHandGuard {
    fn drop(&mut self) {
        if let Ok(mut map) = self.in_hand.lock() {
            map.remove(&self.run_id);
        }
    }
}

/// Drives one claimed run: step, commit, and on at once while the lease is kept.
#[allow(clippy::too_many_arguments)]
async fn drive(
    engine: Engine,
    config: RunnerConfig,
    mut run: waymark_engine::Run,
    lost: CancellationToken,
    shutdown: CancellationToken,
    abandon: CancellationToken,
    in_hand: InHandMap,
    _permit: OwnedSemaphorePermit,
) {
    let _guard = InHandGuard {
        in_hand,
        run_id: run.id,
    };
    let tokens = Tokens {
        lost,
        shutdown,
        abandon,
    };
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
    /// The runner is stopping: finish this step, then hand the run on.
    shutdown: CancellationToken,
    /// The shutdown grace is over: stop at once and release the run.
    abandon: CancellationToken,
}

/// Runs the current state's step and commits its transition. Returns the run when the
/// lease was kept for its next state.
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
    let policy = definition.retry_for(&run.state);
    let started = engine.clock.now();

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
            tokens.lost.child_token(),
            engine.clock.clone(),
        )
        .with_progress(engine.store.clone(), lease);
        let step = tokio::time::timeout(
            policy.step_timeout,
            workflow.step(&ctx, &run.input, &run.state_data),
        );
        tokio::select! {
            // Step first: when the lease is lost, a step that watches its token gets to
            // see it and return (its result is then refused by the fence); one that
            // does not is dropped.
            biased;
            outcome = step => match outcome {
                Ok(result) => result,
                Err(_) => Err(StepError::retryable(format!(
                    "step timed out after {}", humanize(policy.step_timeout)))),
            },
            _ = tokens.lost.cancelled() => {
                tracing::error!("lease lost while the step ran; its result is discarded");
                return None;
            }
            _ = tokens.abandon.cancelled() => {
                release(engine, &lease).await;
                return None;
            }
        }
    };

    let actor = format!("worker:{}", config.worker_id);
    let commit = advance::plan(
        definition,
        run,
        result,
        &PlanInput {
            now: engine.clock.now(),
            step_started_at: started,
            lease: config.lease,
            max_payload: engine.limits.max_payload,
            actor: &actor,
            capabilities: &config.capabilities,
            may_hold: !tokens.shutdown.is_cancelled(),
        },
    );
    if let Some(error) = commit_error(&commit) {
        tracing::warn!(error = %error, causes = ?error.causes, "step failed");
    }
    match commit_with_retry(engine, &lease, &commit).await {
        Ok(next) if next.status == RunStatus::Running => Some(next),
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
        | waymark_engine::store::Outcome::Fail { error } => Some(error),
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
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
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
                for lease in snapshot.iter().filter(|l| !held.contains(l)) {
                    if let Some(h) = map.get(&lease.run_id).filter(|h| h.lease == *lease) {
                        tracing::error!(run = %lease.run_id, token = lease.token, "lease lost; cancelling the step");
                        h.lost.cancel();
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
