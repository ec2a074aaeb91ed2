//! The workflow model: a workflow type is a state enum, a typed input, and one step
//! per state that returns a [`Transition`]. Steps never touch run rows; the engine
//! checkpoints what they return.
//!
//! Every workflow also declares its transition table ([`Definition`]), which the
//! engine enforces (a step that returns an undeclared edge fails the run) so the
//! table the API and dashboard draw cannot drift from what the code does.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::clock::SharedClock;
use crate::error::StepError;
use crate::retry::RetryPolicy;
use crate::store::{Lease, Store};

/// A workflow's state enum. `name` is what the run's `state` column, history and
/// diagrams show; it must match a state declared in [`Workflow::definition`].
pub trait WorkflowState: Serialize + DeserializeOwned + Send + Sync + 'static {
    fn name(&self) -> &'static str;
}

/// A business process as an explicit state machine.
pub trait Workflow: Send + Sync + 'static {
    /// Stable name, used in URLs and rows. Never rename a workflow with runs in flight.
    const NAME: &'static str;
    /// Version of the persisted shapes (state, input, signals). Workers claim only runs
    /// whose version they know.
    const VERSION: u32 = 1;

    type Input: Serialize + DeserializeOwned + Send + Sync + 'static;
    type State: WorkflowState;
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// The transition table: states, their edges, timers, retry policies, capabilities.
    fn definition() -> Definition;

    /// The state a new run starts in.
    fn initial_state(input: &Self::Input) -> Self::State;

    /// Runs the step of `state`. Called at least once per visit: side effects must be
    /// idempotent on [`StepContext::idempotency_key`].
    fn step(
        &self,
        ctx: &StepContext,
        input: &Self::Input,
        state: Self::State,
    ) -> impl Future<Output = Result<Transition<Self::State, Self::Output>, StepError>> + Send;
}

/// What a step decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition<S, O> {
    /// Enter `S` now. The worker keeps the lease and runs its step at once.
    Next(S),
    /// Enter `S` once the durable timer fires.
    Sleep { next: S, wake: Wake },
    /// Finish the run with an output.
    Complete(O),
}

impl<S, O> Transition<S, O> {
    pub fn next(state: S) -> Self {
        Transition::Next(state)
    }

    pub fn sleep_for(state: S, delay: Duration) -> Self {
        Transition::Sleep {
            next: state,
            wake: Wake::After(delay),
        }
    }

    pub fn sleep_until(state: S, at: DateTime<Utc>) -> Self {
        Transition::Sleep {
            next: state,
            wake: Wake::At(at),
        }
    }

    pub fn complete(output: O) -> Self {
        Transition::Complete(output)
    }
}

/// When a durable timer fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    After(Duration),
    At(DateTime<Utc>),
}

impl Wake {
    pub fn instant(self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Wake::After(delay) => {
                now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX)
            }
            Wake::At(at) => at,
        }
    }
}

// ---------------------------------------------------------------------------------
// The transition table.

/// How a state may be left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeKind {
    /// Straight to the next state.
    Next,
    /// Through a durable timer.
    Timer,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Edge {
    pub to: &'static str,
    pub kind: EdgeKind,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StateDef {
    pub name: &'static str,
    pub edges: Vec<Edge>,
    /// Whether this state's step may complete the run.
    pub completes: bool,
    /// The capability a worker must advertise to run this state's step.
    pub capability: Option<&'static str>,
    /// Overrides the workflow's retry policy for this state.
    pub retry: Option<RetryPolicy>,
}

impl StateDef {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            edges: Vec::new(),
            completes: false,
            capability: None,
            retry: None,
        }
    }

    /// May go to `to` immediately.
    pub fn next(mut self, to: &'static str) -> Self {
        self.edges.push(Edge {
            to,
            kind: EdgeKind::Next,
        });
        self
    }

    /// May go to `to` through a durable timer.
    pub fn timer(mut self, to: &'static str) -> Self {
        self.edges.push(Edge {
            to,
            kind: EdgeKind::Timer,
        });
        self
    }

    pub fn completes(mut self) -> Self {
        self.completes = true;
        self
    }

    pub fn capability(mut self, capability: &'static str) -> Self {
        self.capability = Some(capability);
        self
    }

    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }
}

/// A workflow's whole transition table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Definition {
    pub states: Vec<StateDef>,
    pub retry: RetryPolicy,
}

impl Definition {
    pub fn new(states: impl IntoIterator<Item = StateDef>) -> Self {
        Self {
            states: states.into_iter().collect(),
            retry: RetryPolicy::default(),
        }
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn state(&self, name: &str) -> Option<&StateDef> {
        self.states.iter().find(|s| s.name == name)
    }

    /// The retry policy in force for `state`.
    pub fn retry_for(&self, state: &str) -> RetryPolicy {
        self.state(state)
            .and_then(|s| s.retry)
            .unwrap_or(self.retry)
    }

    /// Checks the table is self-consistent: names unique, every edge lands on a
    /// declared state. Registration refuses a workflow whose table is not.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for state in &self.states {
            if !seen.insert(state.name) {
                return Err(format!("state {:?} is declared twice", state.name));
            }
        }
        for state in &self.states {
            for edge in &state.edges {
                if !seen.contains(edge.to) {
                    return Err(format!(
                        "state {:?} has an edge to undeclared state {:?}",
                        state.name, edge.to
                    ));
                }
            }
        }
        if self.states.is_empty() {
            return Err("a workflow needs at least one state".into());
        }
        Ok(())
    }

    /// Whether `from` may go to `to` by `kind`.
    pub fn allows(&self, from: &str, to: &str, kind: EdgeKind) -> bool {
        self.state(from)
            .is_some_and(|s| s.edges.iter().any(|e| e.to == to && e.kind == kind))
    }
}

// ---------------------------------------------------------------------------------
// What a step sees.

/// Everything a step may know about the run it serves.
#[derive(Debug, Clone)]
pub struct StepContext {
    pub run_id: Uuid,
    pub tenant: String,
    pub workflow: &'static str,
    pub state: String,
    /// Which visit of a state this is; part of the idempotency key.
    pub visit: i64,
    /// Which attempt of this visit (1 = first). For logs only: never build keys on it.
    pub attempt: i32,
    /// Fires when the run is cancelled or its lease is lost; a step should stop soon.
    pub cancel: CancellationToken,
    pub clock: SharedClock,
    progress: Option<ProgressSink>,
}

#[derive(Clone)]
struct ProgressSink {
    store: Store,
    lease: Lease,
}

impl std::fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgressSink")
            .field("lease", &self.lease)
            .finish()
    }
}

impl StepContext {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        run_id: Uuid,
        tenant: String,
        workflow: &'static str,
        state: String,
        visit: i64,
        attempt: i32,
        cancel: CancellationToken,
        clock: SharedClock,
    ) -> Self {
        Self {
            run_id,
            tenant,
            workflow,
            state,
            visit,
            attempt,
            cancel,
            clock,
            progress: None,
        }
    }

    /// Lets [`StepContext::progress`] write through the run's lease.
    pub fn with_progress(mut self, store: Store, lease: Lease) -> Self {
        self.progress = Some(ProgressSink { store, lease });
        self
    }

    /// The key for the `call`-th side effect of this visit: the same on every retry
    /// of the visit, different on the next visit of the same state.
    pub fn idempotency_key(&self, call: u32) -> String {
        format!("{}:{}:{}", self.run_id, self.visit, call)
    }

    /// Reports progress (a fraction 0.0..=1.0 and a message) on the run's status.
    /// Fenced by the lease: a lost lease is an error.
    pub async fn progress(&self, fraction: f32, message: &str) -> Result<(), StepError> {
        match &self.progress {
            Some(sink) => sink
                .store
                .run_progress(&sink.lease, fraction.clamp(0.0, 1.0), message)
                .await
                .map_err(|e| StepError::retryable_from(&e)),
            None => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------------
// Type erasure: the runner and the API handle workflows as JSON.

/// A transition with its state serialised, as the engine persists it.
#[derive(Debug, Clone, PartialEq)]
pub enum RawTransition {
    Next {
        state: String,
        data: Value,
    },
    Sleep {
        state: String,
        data: Value,
        wake: Wake,
    },
    Complete {
        output: Value,
    },
}

/// Why a JSON document did not fit a workflow's types.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{what} does not match the workflow's type: {message}")]
pub struct DecodeError {
    pub what: &'static str,
    pub message: String,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A registered workflow, seen through JSON.
pub trait ErasedWorkflow: Send + Sync {
    fn name(&self) -> &'static str;
    fn version(&self) -> u32;
    fn definition(&self) -> &Definition;
    /// Checks `input` against the input type and returns the initial state.
    fn initial_state(&self, input: &Value) -> Result<(String, Value), DecodeError>;
    fn step<'a>(
        &'a self,
        ctx: &'a StepContext,
        input: &'a Value,
        state: &'a Value,
    ) -> BoxFuture<'a, Result<RawTransition, StepError>>;
}

struct Erased<W: Workflow> {
    workflow: W,
    definition: Definition,
}

fn encode<T: Serialize>(value: &T, what: &'static str) -> Result<Value, StepError> {
    serde_json::to_value(value).map_err(|e| StepError::fatal(format!("cannot encode {what}: {e}")))
}

impl<W: Workflow> ErasedWorkflow for Erased<W> {
    fn name(&self) -> &'static str {
        W::NAME
    }

    fn version(&self) -> u32 {
        W::VERSION
    }

    fn definition(&self) -> &Definition {
        &self.definition
    }

    fn initial_state(&self, input: &Value) -> Result<(String, Value), DecodeError> {
        let typed: W::Input = serde_json::from_value(input.clone()).map_err(|e| DecodeError {
            what: "input",
            message: e.to_string(),
        })?;
        let state = W::initial_state(&typed);
        let data = serde_json::to_value(&state).map_err(|e| DecodeError {
            what: "initial state",
            message: e.to_string(),
        })?;
        Ok((state.name().to_owned(), data))
    }

    fn step<'a>(
        &'a self,
        ctx: &'a StepContext,
        input: &'a Value,
        state: &'a Value,
    ) -> BoxFuture<'a, Result<RawTransition, StepError>> {
        Box::pin(async move {
            // A checkpoint that no longer decodes cannot be fixed by retrying.
            let input: W::Input = serde_json::from_value(input.clone())
                .map_err(|e| StepError::fatal(format!("stored input does not decode: {e}")))?;
            let state: W::State = serde_json::from_value(state.clone())
                .map_err(|e| StepError::fatal(format!("stored state does not decode: {e}")))?;
            let transition = self.workflow.step(ctx, &input, state).await?;
            Ok(match transition {
                Transition::Next(next) => RawTransition::Next {
                    state: next.name().to_owned(),
                    data: encode(&next, "state")?,
                },
                Transition::Sleep { next, wake } => RawTransition::Sleep {
                    state: next.name().to_owned(),
                    data: encode(&next, "state")?,
                    wake,
                },
                Transition::Complete(output) => RawTransition::Complete {
                    output: encode(&output, "output")?,
                },
            })
        })
    }
}

/// The workflow types a process knows.
#[derive(Clone, Default)]
pub struct Registry {
    workflows: BTreeMap<&'static str, Arc<dyn ErasedWorkflow>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.workflows.keys()).finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("workflow {0:?} is registered twice")]
    Duplicate(&'static str),
    #[error("workflow {name:?} has an invalid transition table: {reason}")]
    InvalidDefinition { name: &'static str, reason: String },
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register<W: Workflow>(&mut self, workflow: W) -> Result<&mut Self, RegistryError> {
        let definition = W::definition();
        definition
            .validate()
            .map_err(|reason| RegistryError::InvalidDefinition {
                name: W::NAME,
                reason,
            })?;
        if self.workflows.contains_key(W::NAME) {
            return Err(RegistryError::Duplicate(W::NAME));
        }
        self.workflows.insert(
            W::NAME,
            Arc::new(Erased {
                workflow,
                definition,
            }),
        );
        Ok(self)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn ErasedWorkflow>> {
        self.workflows.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn ErasedWorkflow>> {
        self.workflows.values()
    }

    /// (name, version) of every workflow, as workers advertise and claim them.
    pub fn known(&self) -> Vec<(String, u32)> {
        self.workflows
            .values()
            .map(|w| (w.name().to_owned(), w.version()))
            .collect()
    }
}
