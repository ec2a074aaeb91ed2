//! What starting a run checks and builds, before any store is asked: the request
//! ([`StartRun`]), the limits, the tenant slug, the workflow's access, the input against
//! its type, and the run's first state (through
//! [`Definition::target`](crate::Definition::target)). A leaf: `runs` (the engine's
//! front door) and `advance` (children of a fan-out) both build on it.

use serde_json::Value;
use uuid::Uuid;

use crate::error::StoreError;
use crate::store::NewRun;
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
    /// Searchable labels (e.g. a business id).
    pub tags: Vec<String>,
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
    #[error("run {0} not found")]
    RunNotFound(Uuid),
    #[error("workflow {workflow:?} has no signal {signal:?}")]
    UnknownSignal { workflow: String, signal: String },
    #[error("{0}")]
    Conflict(String),
    /// An [`Access::System`](crate::Access) workflow acts across tenants, so its runs
    /// live in the system tenant only.
    #[error(
        "workflow {workflow:?} runs only in the {:?} tenant, not {tenant:?}",
        crate::SYSTEM_TENANT
    )]
    SystemTenantOnly { workflow: String, tenant: String },
}

impl EngineError {
    pub(crate) fn from_store(error: StoreError) -> Self {
        match error {
            StoreError::RunNotFound(id) => EngineError::RunNotFound(id),
            StoreError::Conflict(message) => EngineError::Conflict(message),
            other => EngineError::Store(other),
        }
    }
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

/// Checks a start request against the registry and limits and builds the run to insert.
pub(crate) fn prepare(
    registry: &Registry,
    max_payload: usize,
    req: StartRun,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<NewRun, EngineError> {
    if !is_valid_tenant(&req.tenant) {
        return Err(EngineError::InvalidTenant(req.tenant));
    }
    let workflow = registry
        .get(&req.workflow)
        .ok_or_else(|| EngineError::UnknownWorkflow(req.workflow.clone()))?;
    if workflow.definition().access == crate::Access::System && req.tenant != crate::SYSTEM_TENANT {
        return Err(EngineError::SystemTenantOnly {
            workflow: req.workflow,
            tenant: req.tenant,
        });
    }
    let size = req.input.to_string().len();
    if size > max_payload {
        return Err(StoreError::PayloadTooLarge {
            what: "input",
            size,
            limit: max_payload,
        }
        .into());
    }
    let (state, state_data) = workflow.initial_state(&req.input)?;
    let initial = workflow.definition().target(&state, state_data);
    Ok(NewRun {
        id: Uuid::now_v7(),
        tenant: req.tenant,
        workflow: workflow.name().to_owned(),
        workflow_version: workflow.version(),
        input: req.input,
        state: initial.state,
        state_data: initial.data,
        capability: initial.capability,
        compensable: initial.compensable,
        idempotency_key: req.idempotency_key,
        tags: req.tags,
        actor: req.actor,
        now,
    })
}

/// The run that continues `run` as new in `state` (with `data`): the same tenant,
/// workflow, input and tags, the current version, no idempotency key (the key keeps
/// naming the first run of the chain), started by the run it continues.
pub(crate) fn prepare_continuation(
    registry: &Registry,
    max_payload: usize,
    run: &crate::store::Run,
    state: &str,
    data: Value,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<NewRun, crate::StepError> {
    let workflow = registry.get(&run.workflow).ok_or_else(|| {
        crate::StepError::fatal(format!("workflow {:?} is not registered", run.workflow))
    })?;
    let definition = workflow.definition();
    if definition.state(state).is_none() {
        return Err(crate::StepError::fatal(format!(
            "cannot continue as new in {state:?}: the workflow has no such state"
        )));
    }
    let size = data.to_string().len();
    if size > max_payload {
        return Err(crate::StepError::fatal(format!(
            "the state to continue with is {size} bytes, over the limit of {max_payload}"
        )));
    }
    let initial = definition.target(state, data);
    Ok(NewRun {
        id: Uuid::now_v7(),
        tenant: run.tenant.clone(),
        workflow: run.workflow.clone(),
        workflow_version: workflow.version(),
        input: run.input.clone(),
        state: initial.state,
        state_data: initial.data,
        capability: initial.capability,
        compensable: initial.compensable,
        idempotency_key: None,
        tags: run.tags.clone(),
        actor: format!("run:{}", run.id),
        now,
    })
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
