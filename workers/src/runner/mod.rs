//! The runner: one process loop that claims due runs and drives their steps.
//!
//! # Layout
//! - [`claim`]: the loop itself: register, sweep wait timeouts, claim as many runs as
//!   there are free permits (never one this worker still holds), spawn a task each, and
//!   wait for a notification, a free permit or the next timer.
//! - [`step`]: one claimed run's task: run its step under its timeout and tokens,
//!   plan the commit, and go on at once while the lease is kept; step progress written
//!   through the lease.
//! - [`compensate`]: the same for a compensating run, newest compensation first.
//! - [`commit`]: committing a planned transition under the lease, retrying transient
//!   errors, and giving a lease back.
//! - [`heartbeat`]: one task extending every lease in hand in one statement, cancelling
//!   steps whose lease was lost or whose run was cancelled; pruning the worker registry.
//! - [`shutdown`]: what happens once the shutdown token fires: the grace, then release.

mod claim;
mod commit;
mod compensate;
mod heartbeat;
mod shutdown;
mod step;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use waymark_engine::store::Lease;
use waymark_engine::{Engine, StoreError};

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
}

/// What may stop a run's task, from the gentlest to the most abrupt.
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
