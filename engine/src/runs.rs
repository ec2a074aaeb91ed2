//! The engine's front door for starting runs: checks the workflow, the input, the
//! tenant and the size limits, then asks the store.

use std::sync::Arc;

use serde_json::Value;
use uuid::Uuid;

use crate::clock::SharedClock;
use crate::error::StoreError;
use crate::store::{NewRun, Started, Store};
use crate::workflow::{DecodeError, Registry};

/// Size limits on what runs carry.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of serialised input, state data or output.
    pub max_payload: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload: 256 * 1024,
        }
    }
}

/// A request to start a run.
#[derive(Debug, Clone)]
pub struct StartRun {
    pub tenant: String,
    pub workflow: String,
    pub input: Value,
    pub idempotency_key: Option<String>,
    /// Who started it (an API key id, a schedule, a parent run), for history.
    pub actor: String,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("unknown workflow {0:?}")]
    UnknownWorkflow(String),
    #[error("invalid tenant {0:?}: expected a slug matching ^[a-z][a-z0-9-]{{2,39}}$")]
    InvalidTenant(String),
    #[error(transparent)]
    InvalidInput(#[from] DecodeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("start_in needs the PostgreSQL store")]
    NotPostgres,
}

/// Whether `s` is a valid tenant slug: `^[a-z][a-z0-9-]{2,39}$`.
pub fn is_valid_tenant(s: &str) -> bool {
    let bytes = s.as_bytes();
    (3..=40).contains(&bytes.len())
        && bytes[0].is_ascii_lowercase()
        && bytes[1..]
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// Store, registry, clock and limits: what starting and advancing runs needs.
#[derive(Clone, Debug)]
pub struct Engine {
    pub store: Store,
    pub registry: Arc<Registry>,
    pub clock: SharedClock,
    pub limits: Limits,
}

impl Engine {
    pub fn new(store: Store, registry: Arc<Registry>, clock: SharedClock) -> Self {
        Self {
            store,
            registry,
            clock,
            limits: Limits::default(),
        }
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    fn prepare(&self, req: StartRun) -> Result<NewRun, EngineError> {
        if !is_valid_tenant(&req.tenant) {
            return Err(EngineError::InvalidTenant(req.tenant));
        }
        let workflow = self
            .registry
            .get(&req.workflow)
            .ok_or_else(|| EngineError::UnknownWorkflow(req.workflow.clone()))?;
        let size = req.input.to_string().len();
        if size > self.limits.max_payload {
            return Err(StoreError::PayloadTooLarge {
                what: "input",
                size,
                limit: self.limits.max_payload,
            }
            .into());
        }
        let (state, state_data) = workflow.initial_state(&req.input)?;
        let capability = workflow
            .definition()
            .state(&state)
            .and_then(|s| s.capability)
            .map(str::to_owned);
        Ok(NewRun {
            id: Uuid::now_v7(),
            tenant: req.tenant,
            workflow: workflow.name().to_owned(),
            workflow_version: workflow.version(),
            input: req.input,
            state,
            state_data,
            capability,
            idempotency_key: req.idempotency_key,
            actor: req.actor,
            now: self.clock.now(),
        })
    }

    /// Starts a run (idempotently when a key is given).
    pub async fn start(&self, req: StartRun) -> Result<Started, EngineError> {
        let new = self.prepare(req)?;
        Ok(self.store.run_start(new).await?)
    }

    /// Starts a run inside the caller's PostgreSQL transaction, so a business row and
    /// its run commit together: `engine.start_in(&mut tx, req)`.
    pub async fn start_in(
        &self,
        conn: &mut sqlx::PgConnection,
        req: StartRun,
    ) -> Result<Started, EngineError> {
        let crate::store::Store::Postgres(pg) = &self.store else {
            return Err(EngineError::NotPostgres);
        };
        let new = self.prepare(req)?;
        Ok(pg.run_start_in(conn, new).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::is_valid_tenant;

    #[test]
    fn tenant_slugs_follow_the_documented_pattern() {
        for ok in ["acme", "a-b", "abc", "x23", &format!("a{}", "b".repeat(39))] {
            assert!(is_valid_tenant(ok), "{ok}");
        }
        for bad in [
            "",
            "ab",
            "Acme",
            "1abc",
            "-abc",
            "ab_c",
            "ab c",
            &"a".repeat(41),
            "äbc",
        ] {
            assert!(!is_valid_tenant(bad), "{bad}");
        }
    }
}
