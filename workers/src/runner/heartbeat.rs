//! The heartbeat: one task per runner that extends every lease in hand in one
//! statement, tells steps their lease was lost or their run cancelled, and keeps the
//! worker registry small.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use waymark_engine::store::Lease;
use waymark_engine::Engine;

use super::{error_chain, InHandMap, RunnerConfig};

/// The running heartbeat task, stopped only once every run task has ended (their
/// leases must be kept alive through the shutdown grace).
pub(super) struct Heartbeat {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Heartbeat {
    pub(super) fn spawn(engine: &Engine, config: &RunnerConfig, in_hand: &InHandMap) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(heartbeat_loop(
            engine.clone(),
            config.clone(),
            in_hand.clone(),
            stop.clone(),
        ));
        Self { stop, task }
    }

    pub(super) async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
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

/// Removes workers long gone from the registry, so it stays as small as the fleet.
pub(super) async fn prune_workers(engine: &Engine, config: &RunnerConfig) {
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
