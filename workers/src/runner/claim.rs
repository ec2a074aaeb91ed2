//! The claim loop: what a runner does between its start and its shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use waymark_engine::store::{ClaimRequest, WorkerInfo};
use waymark_engine::RunStatus;

use super::heartbeat::{prune_workers, Heartbeat};
use super::step::drive;
use super::{error_chain, InHand, InHandMap, Runner, RunnerError, Tokens};

/// How often a busy runner sweeps for waits whose timeout passed (an idle one sweeps
/// every time it wakes).
const TIMEOUT_SWEEP: Duration = Duration::from_millis(250);

impl Runner {
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
        let heartbeat = Heartbeat::spawn(&self.engine, &self.config, &in_hand);

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

        self.stop(tasks, &abandon, heartbeat).await;
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

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".to_owned())
}
