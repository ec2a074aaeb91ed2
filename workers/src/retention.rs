//! Deletes finished runs (and, by cascade, their history) once they are older than the
//! retention period. Runs in small batches so it never holds long locks.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use waymark_engine::Engine;

use crate::runner::error_chain;

const BATCH: u32 = 500;

/// Deletes, in batches, runs that finished more than `retention` ago. Returns how many.
pub async fn sweep(
    engine: &Engine,
    retention: Duration,
) -> Result<u64, waymark_engine::StoreError> {
    let cutoff =
        engine.clock.now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let mut total = 0;
    loop {
        let deleted = engine.store.runs_delete_finished(cutoff, BATCH).await?;
        total += deleted;
        if deleted < BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Sweeps every `every` until `shutdown` fires.
pub async fn run(
    engine: Engine,
    retention: Duration,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        match sweep(&engine, retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "retention: deleted finished runs"),
            Err(error) => tracing::warn!(error = %error_chain(&error), "retention sweep failed"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
