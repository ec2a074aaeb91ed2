//! Once the shutdown token fires: no more claims, a grace for the steps running, then
//! their runs released to other workers and the worker marked stopped.

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::heartbeat::Heartbeat;
use super::{error_chain, Runner};

impl Runner {
    /// Waits for every run task to end, firing `abandon` when the shutdown grace runs
    /// out (those tasks then release their runs), and only then stops the heartbeat.
    pub(super) async fn stop(
        &self,
        mut tasks: JoinSet<()>,
        abandon: &CancellationToken,
        heartbeat: Heartbeat,
    ) {
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
        heartbeat.stop().await;
        if let Err(error) = self.engine.store.worker_stop(self.config.worker_id).await {
            tracing::warn!(error = %error_chain(&error), "cannot mark the worker stopped");
        }
        tracing::info!("worker stopped");
    }
}
