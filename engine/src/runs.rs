//! The engine's front door for starting runs: checks the workflow, the input, the
//! tenant and the size limits, then asks the store (see [`crate::start`] for the
//! checks themselves).

use std::sync::Arc;

use serde_json::Value;
use uuid::Uuid;

use crate::clock::SharedClock;
use crate::error::StoreError;
use crate::start::{prepare, EngineError, Limits, StartRun};
use crate::store::sql::TxInner;
use crate::store::{NewRun, NewSignal, Run, SignalReceipt, Started, Store, TenantScope, Tx};
use crate::workflow::Registry;

/// A signal to deliver to a run.
#[derive(Debug, Clone)]
pub struct SendSignal {
    pub run_id: Uuid,
    pub name: String,
    pub payload: Value,
    pub idempotency_key: Option<String>,
    /// Who sent it, for history.
    pub actor: String,
}

/// Store, registry, clock and limits: what starting and advancing runs needs.
#[derive(Clone, Debug)]
pub struct Engine {
    pub store: Store,
    pub registry: Arc<Registry>,
    pub clock: SharedClock,
    pub limits: Limits,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Engine {
    pub fn new(store: Store, registry: Arc<Registry>, clock: SharedClock) -> Self {
        Self {
            store,
            registry,
            clock,
            limits: Limits::default(),
            metrics: Arc::default(),
        }
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Checks a start request and builds the run to insert, without inserting it (the
    /// scheduler inserts it in the same transaction that advances its schedule).
    pub fn prepare(&self, req: StartRun) -> Result<NewRun, EngineError> {
        prepare(
            &self.registry,
            self.limits.max_payload,
            req,
            self.clock.now(),
        )
    }

    /// Delivers a signal after checking its name and payload against the workflow.
    pub async fn signal(
        &self,
        scope: &TenantScope,
        req: SendSignal,
    ) -> Result<SignalReceipt, EngineError> {
        let run = self
            .store
            .run_get(scope, req.run_id)
            .await?
            .ok_or(EngineError::RunNotFound(req.run_id))?;
        let workflow = self
            .registry
            .get(&run.workflow)
            .ok_or_else(|| EngineError::UnknownWorkflow(run.workflow.clone()))?;
        let declared = workflow.definition().signal_def(&req.name).ok_or_else(|| {
            EngineError::UnknownSignal {
                workflow: run.workflow.clone(),
                signal: req.name.clone(),
            }
        })?;
        let size = req.payload.to_string().len();
        if size > self.limits.max_payload {
            return Err(StoreError::PayloadTooLarge {
                what: "signal payload",
                size,
                limit: self.limits.max_payload,
            }
            .into());
        }
        workflow.check_signal(&req.name, &req.payload)?;
        let signal = NewSignal {
            id: Uuid::now_v7(),
            name: req.name,
            payload: req.payload,
            idempotency_key: req.idempotency_key,
            actor: req.actor,
            now: self.clock.now(),
            only_while_waiting: declared.only_while_waiting,
            version: workflow.version(),
        };
        self.store
            .run_signal(scope, run.id, &signal)
            .await
            .map_err(EngineError::from_store)
    }

    /// Cancels a live run: its compensations run, then it ends `cancelled`.
    pub async fn cancel(
        &self,
        scope: &TenantScope,
        id: Uuid,
        actor: &str,
        reason: &str,
        address: Option<&str>,
    ) -> Result<Run, EngineError> {
        self.store
            .run_cancel(scope, id, actor, reason, address, self.clock.now())
            .await
            .map_err(EngineError::from_store)
    }

    /// Ends a live run at once without compensation (an operator's last resort).
    pub async fn terminate(
        &self,
        scope: &TenantScope,
        id: Uuid,
        actor: &str,
        reason: &str,
        address: Option<&str>,
    ) -> Result<Run, EngineError> {
        self.store
            .run_terminate(scope, id, actor, reason, address, self.clock.now())
            .await
            .map_err(EngineError::from_store)
    }

    /// Retries a run held after failing, or a failed compensation.
    pub async fn retry(
        &self,
        scope: &TenantScope,
        id: Uuid,
        actor: &str,
        address: Option<&str>,
    ) -> Result<Run, EngineError> {
        self.store
            .run_retry(scope, id, actor, address, self.clock.now())
            .await
            .map_err(EngineError::from_store)
    }

    /// Skips a failed compensation; the others go on.
    pub async fn skip_compensation(
        &self,
        scope: &TenantScope,
        id: Uuid,
        actor: &str,
        address: Option<&str>,
    ) -> Result<Run, EngineError> {
        self.store
            .run_skip_compensation(scope, id, actor, address, self.clock.now())
            .await
            .map_err(EngineError::from_store)
    }

    /// Why a claimable run is not being picked up, if the worker registry explains it:
    /// no live worker knows its workflow at its version, or offers its capability.
    /// `live_within` is how recent a heartbeat must be.
    pub async fn pending_reason(
        &self,
        run: &Run,
        live_within: std::time::Duration,
    ) -> Result<Option<String>, EngineError> {
        use crate::status::RunStatus;
        let claimable = matches!(
            run.status,
            RunStatus::Pending
                | RunStatus::Retrying
                | RunStatus::Sleeping
                | RunStatus::Compensating
        ) && run.locked_by.is_none();
        if !claimable {
            return Ok(None);
        }
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(live_within).unwrap_or(chrono::Duration::MAX);
        let live = self.store.workers_live(cutoff).await?;
        let knows = |w: &crate::store::WorkerInfo| {
            w.workflows.iter().any(|entry| {
                entry.rsplit_once('@').is_some_and(|(name, v)| {
                    name == run.workflow
                        && v.parse::<u32>().is_ok_and(|v| v >= run.workflow_version)
                })
            })
        };
        let knowing: Vec<_> = live.iter().filter(|w| knows(w)).collect();
        if knowing.is_empty() {
            let mut known: Vec<String> = live
                .iter()
                .flat_map(|w| w.workflows.clone())
                .filter(|e| e.starts_with(&format!("{}@", run.workflow)))
                .collect();
            known.sort();
            known.dedup();
            return Ok(Some(format!(
                "no live worker knows workflow {} at version {} (live workers know: {})",
                run.workflow,
                run.workflow_version,
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )));
        }
        if let Some(capability) = run
            .capability
            .as_ref()
            .filter(|_| run.status != RunStatus::Compensating)
        {
            if !knowing.iter().any(|w| w.capabilities.contains(capability)) {
                return Ok(Some(format!(
                    "no live worker offers capability {capability:?}"
                )));
            }
        }
        Ok(None)
    }

    /// Starts a run (idempotently when a key is given).
    pub async fn start(&self, req: StartRun) -> Result<Started, EngineError> {
        let new = self.prepare(req)?;
        let started = self.store.run_start(new).await?;
        if started.created {
            self.metrics.run_started(&started.run.workflow);
        }
        Ok(started)
    }

    /// Starts a run inside the caller's transaction ([`Store::begin`]), so a business
    /// row and its run commit (or roll back) together:
    /// `let mut tx = engine.store.begin().await?; …; engine.start_in(&mut tx, req).await?; tx.commit().await?`.
    /// Workers hear of the run when the transaction commits.
    pub async fn start_in(&self, tx: &mut Tx, req: StartRun) -> Result<Started, EngineError> {
        let new = self.prepare(req)?;
        let started = match (&self.store, &mut tx.inner) {
            (Store::Postgres(pg), TxInner::Postgres(tx)) => pg.run_start_in(tx, new).await?,
            (Store::Sqlite(lite), TxInner::Sqlite { tx, .. }) => lite.run_start_in(tx, new).await?,
            _ => {
                return Err(EngineError::Store(StoreError::Corrupt(
                    "a transaction of another store was passed to Engine::start_in".into(),
                )))
            }
        };
        if started.created {
            // Counted when the caller commits: a rolled-back run never started.
            tx.started
                .push((self.metrics.clone(), started.run.workflow.clone()));
        }
        Ok(started)
    }
}
