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
use crate::store::TenantScope;

/// A workflow's state enum. `name` is what the run's `state` column, history and
/// diagrams show; it must match a state declared in [`Workflow::definition`].
pub trait WorkflowState: Serialize + DeserializeOwned + Send + Sync + 'static {
    fn name(&self) -> &'static str;
}

/// A workflow's signals: an enum, serialised adjacently tagged
/// (`#[serde(tag = "signal", content = "payload")]`), so a delivered signal's name picks
/// the variant and its payload is checked against the variant's type.
pub trait WorkflowSignal: Serialize + DeserializeOwned + Send + Sync + 'static {}

/// The signal type of a workflow that takes none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "signal", content = "payload")]
pub enum NoSignal {}

impl WorkflowSignal for NoSignal {}

/// What persisted JSON an upcaster is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Persisted {
    Input,
    /// The state enum with its data.
    State,
    /// A signal as `{"signal": name, "payload": …}`.
    Signal,
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
    /// The signals it accepts ([`NoSignal`] for none).
    type Signal: WorkflowSignal;

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

    /// Undoes what a visit of `state` did. Called, newest visit first, for each visit of a
    /// state that declares [`StateDef::compensates`] when the run fails, is cancelled or
    /// aborts — the interrupted visit included, so it must tolerate resources that were
    /// never created. At least once, like a step: use `ctx.idempotency_key`.
    fn compensate(
        &self,
        ctx: &StepContext,
        input: &Self::Input,
        state: Self::State,
    ) -> impl Future<Output = Result<(), StepError>> + Send {
        let _ = (ctx, input, state);
        async { Ok(()) }
    }

    /// Rewrites JSON persisted under version `from` into the shape of version `from + 1`.
    /// Runs persisted under older versions are upcast step by step when a worker loads
    /// them, so they advance to completion under new code.
    fn upcast(kind: Persisted, from: u32, value: Value) -> Result<Value, String> {
        let _ = value;
        Err(format!("no upcaster for {kind:?} from version {from}"))
    }
}

/// What a step decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition<S, O> {
    /// Enter `S` now. The worker keeps the lease and runs its step at once.
    Next(S),
    /// Enter `S` once the durable timer fires.
    Sleep { next: S, wake: Wake },
    /// Wait for one of some signals (each leading to its own state), optionally with a
    /// timeout leading to another. The run is `waiting` meanwhile.
    Wait(Wait<S>),
    /// Start child runs and wait for them; then enter the given state.
    FanOut(FanOut<S>),
    /// Finish the run with an output.
    Complete(O),
    /// The business decided to stop: compensate, then end `cancelled` with this reason.
    Abort(String),
}

/// Which signals a waiting state takes, and where each leads.
#[derive(Debug, Clone, PartialEq)]
pub struct Wait<S> {
    pub on: Vec<(&'static str, S)>,
    pub timeout: Option<(Wake, S)>,
}

impl<S> Wait<S> {
    /// Waits for `signal`, then enters `state`.
    pub fn on(signal: &'static str, state: S) -> Self {
        Self {
            on: vec![(signal, state)],
            timeout: None,
        }
    }

    /// Also waits for `signal`, leading to `state`.
    pub fn or(mut self, signal: &'static str, state: S) -> Self {
        self.on.push((signal, state));
        self
    }

    /// Gives up after `delay`, entering `state`.
    pub fn timeout_after(mut self, delay: Duration, state: S) -> Self {
        self.timeout = Some((Wake::After(delay), state));
        self
    }

    pub fn timeout_at(mut self, at: DateTime<Utc>, state: S) -> Self {
        self.timeout = Some((Wake::At(at), state));
        self
    }
}

impl<S, O> From<Wait<S>> for Transition<S, O> {
    fn from(wait: Wait<S>) -> Self {
        Transition::Wait(wait)
    }
}

/// What a fan-out does when a child fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FanOutPolicy {
    /// The first failed child cancels its siblings and fails the parent's step.
    #[default]
    FailFast,
    /// Every child runs to its end; the next state gets each output or error.
    Collect,
}

/// A child run to start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildSpec {
    pub workflow: String,
    pub input: Value,
}

/// Child runs started together, and the state the parent enters when they are done.
#[derive(Debug, Clone, PartialEq)]
pub struct FanOut<S> {
    pub children: Vec<ChildSpec>,
    pub then: S,
    pub policy: FanOutPolicy,
}

impl<S> FanOut<S> {
    pub fn new(then: S) -> Self {
        Self {
            children: Vec::new(),
            then,
            policy: FanOutPolicy::FailFast,
        }
    }

    /// Adds a child of workflow `W`; children are numbered in the order added.
    pub fn child<W: Workflow>(mut self, input: &W::Input) -> Result<Self, StepError> {
        self.children.push(ChildSpec {
            workflow: W::NAME.to_owned(),
            input: encode(input, "child input")?,
        });
        Ok(self)
    }

    /// Adds a child by workflow name with JSON input.
    pub fn child_json(mut self, workflow: &str, input: Value) -> Self {
        self.children.push(ChildSpec {
            workflow: workflow.to_owned(),
            input,
        });
        self
    }

    /// Lets every child finish and hands each output or error to the next state.
    pub fn collect(mut self) -> Self {
        self.policy = FanOutPolicy::Collect;
        self
    }
}

impl<S, O> From<FanOut<S>> for Transition<S, O> {
    fn from(fan_out: FanOut<S>) -> Self {
        Transition::FanOut(fan_out)
    }
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

/// The longest duration Waymark takes from input: timers, grace periods, retention.
/// Input over it is refused with a message naming the field; arithmetic past it is
/// an error, never a panic.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// How [`MAX_DURATION`] reads in messages.
pub const MAX_DURATION_TEXT: &str = "36500d (100 years)";

/// Checks a duration taken from input against [`MAX_DURATION`].
pub fn check_duration(duration: Duration) -> Result<Duration, String> {
    if duration > MAX_DURATION {
        Err(format!("must be at most {MAX_DURATION_TEXT}"))
    } else {
        Ok(duration)
    }
}

/// `now + duration`, or `None` when that is not a representable instant.
pub fn checked_after(now: DateTime<Utc>, duration: Duration) -> Option<DateTime<Utc>> {
    chrono::Duration::from_std(duration)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
}

/// When a durable timer fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    After(Duration),
    At(DateTime<Utc>),
}

impl Wake {
    /// The instant the timer fires; `None` for a delay too long to be a date.
    pub fn instant(self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Wake::After(delay) => checked_after(now, delay),
            Wake::At(at) => Some(at),
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
    /// Through a durable timer (a sleep, or a wait's timeout).
    Timer,
    /// When the named signal arrives.
    Signal,
    /// When the children started here are done.
    Children,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Edge {
    pub to: &'static str,
    pub kind: EdgeKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StateDef {
    pub name: &'static str,
    pub edges: Vec<Edge>,
    /// Whether this state's step may complete the run.
    pub completes: bool,
    /// The capability a worker must advertise to run this state's step.
    pub capability: Option<&'static str>,
    /// Overrides the workflow's retry policy for this state (its compensation too).
    pub retry: Option<RetryPolicy>,
    /// Whether visits of this state are undone by [`Workflow::compensate`].
    pub compensates: bool,
}

impl StateDef {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            edges: Vec::new(),
            completes: false,
            capability: None,
            retry: None,
            compensates: false,
        }
    }

    fn edge(mut self, to: &'static str, kind: EdgeKind, signal: Option<&'static str>) -> Self {
        self.edges.push(Edge { to, kind, signal });
        self
    }

    /// May go to `to` immediately.
    pub fn next(self, to: &'static str) -> Self {
        self.edge(to, EdgeKind::Next, None)
    }

    /// May go to `to` through a durable timer (a sleep or a wait's timeout).
    pub fn timer(self, to: &'static str) -> Self {
        self.edge(to, EdgeKind::Timer, None)
    }

    /// May wait for `signal` and then go to `to`.
    pub fn on_signal(self, signal: &'static str, to: &'static str) -> Self {
        self.edge(to, EdgeKind::Signal, Some(signal))
    }

    /// May start child runs and go to `to` when they are done.
    pub fn children(self, to: &'static str) -> Self {
        self.edge(to, EdgeKind::Children, None)
    }

    /// Visits of this state are undone by the workflow's `compensate` on failure,
    /// cancellation or abort.
    pub fn compensates(mut self) -> Self {
        self.compensates = true;
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

/// A signal a workflow accepts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SignalDef {
    pub name: &'static str,
    /// Refused (a conflict) unless the run is waiting for it right now, instead of
    /// being queued for a later wait.
    pub only_while_waiting: bool,
}

/// What happens when a run fails after its retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Run the compensations of the visited states, newest first; the run ends
    /// `failed` for good.
    #[default]
    Compensate,
    /// No compensation: the run stays `failed` and an operator may retry it from there.
    Hold,
}

/// Who may start a workflow's runs, and how far its steps reach.
///
/// The API's generic start route, schedules and fan-outs accept only [`Access::Tenant`]
/// workflows from tenants' keys; the others are started by Waymark's own code paths,
/// which check what the generic route cannot (a slug reservation, a key's scope).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Any operator may start it in its own tenant; its steps act within that tenant.
    #[default]
    Tenant,
    /// Started only by Waymark itself (its own route, a key's rotation policy), in a
    /// tenant; its steps still act within that tenant only.
    Internal,
    /// Acts across tenants: started only by Waymark itself, always in the
    /// [`SYSTEM_TENANT`](crate::SYSTEM_TENANT), and the only kind whose steps get
    /// [`TenantScope::All`].
    System,
}

/// A workflow's whole transition table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Definition {
    pub states: Vec<StateDef>,
    pub signals: Vec<SignalDef>,
    pub retry: RetryPolicy,
    pub on_failure: OnFailure,
    pub access: Access,
    /// Whether an admin key may also start this non-[`Access::Tenant`] workflow through
    /// the generic route and schedules (in its declared tenant).
    pub admin_may_start: bool,
}

impl Definition {
    pub fn new(states: impl IntoIterator<Item = StateDef>) -> Self {
        Self {
            states: states.into_iter().collect(),
            signals: Vec::new(),
            retry: RetryPolicy::default(),
            on_failure: OnFailure::Compensate,
            access: Access::Tenant,
            admin_may_start: false,
        }
    }

    /// Declares who may start the workflow and how far its steps reach.
    pub fn access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }

    /// Lets an admin key start this internal or system workflow by hand.
    pub fn admin_may_start(mut self) -> Self {
        self.admin_may_start = true;
        self
    }

    /// Whether a caller may start (or schedule) this workflow through the generic
    /// routes: tenants' keys only [`Access::Tenant`] ones, admins also those that
    /// allow it.
    pub fn startable_by(&self, admin: bool) -> bool {
        self.access == Access::Tenant || (admin && self.admin_may_start)
    }

    /// The data a step of a run in `tenant` may reach.
    pub fn step_scope(&self, tenant: &str) -> TenantScope {
        match self.access {
            Access::System => TenantScope::All,
            Access::Tenant | Access::Internal => TenantScope::Tenant(tenant.to_owned()),
        }
    }

    /// Declares a signal, queued until a state waits for it.
    pub fn signal(mut self, name: &'static str) -> Self {
        self.signals.push(SignalDef {
            name,
            only_while_waiting: false,
        });
        self
    }

    /// Declares a signal accepted only while the run waits for it.
    pub fn signal_only_while_waiting(mut self, name: &'static str) -> Self {
        self.signals.push(SignalDef {
            name,
            only_while_waiting: true,
        });
        self
    }

    pub fn on_failure(mut self, on_failure: OnFailure) -> Self {
        self.on_failure = on_failure;
        self
    }

    pub fn signal_def(&self, name: &str) -> Option<&SignalDef> {
        self.signals.iter().find(|s| s.name == name)
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
                if let Some(signal) = edge.signal {
                    if self.signal_def(signal).is_none() {
                        return Err(format!(
                            "state {:?} waits for undeclared signal {signal:?}",
                            state.name
                        ));
                    }
                }
            }
        }
        if self.states.is_empty() {
            return Err("a workflow needs at least one state".into());
        }
        Ok(())
    }

    /// Whether `from` may go to `to` by `kind` (for signals, by that signal).
    pub fn allows(&self, from: &str, to: &str, kind: EdgeKind, signal: Option<&str>) -> bool {
        self.state(from).is_some_and(|s| {
            s.edges
                .iter()
                .any(|e| e.to == to && e.kind == kind && e.signal == signal)
        })
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
    /// What this visit received: the signal that led here, or the children's results.
    pub received: Option<Received>,
    /// True while running a compensation; keys then differ from the forward step's.
    pub compensating: bool,
    /// What data the step may reach: its run's tenant, unless its workflow is declared
    /// [`Access::System`]. Private so a step cannot widen it.
    scope: TenantScope,
    progress: Option<Arc<dyn ProgressSink>>,
}

/// A signal as the step that follows it sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceivedSignal {
    pub id: Uuid,
    pub name: String,
    pub payload: Value,
    pub actor: String,
    /// The workflow version whose signal type the payload was written for.
    #[serde(default = "first_version")]
    pub version: u32,
}

fn first_version() -> u32 {
    1
}

/// One child's end, as the state after a fan-out sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildResult {
    pub index: u32,
    pub run_id: Uuid,
    pub workflow: String,
    pub status: crate::status::RunStatus,
    pub output: Option<Value>,
    pub error: Option<StepError>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    Signal(ReceivedSignal),
    Children(Vec<ChildResult>),
}

/// Where a step's progress goes. The runner's sink writes it on the run, fenced by the
/// lease (a lost lease is an error); a trait, so the workflow model does not depend on
/// the store that persists it.
pub trait ProgressSink: Send + Sync + std::fmt::Debug {
    /// Records `fraction` (0.0..=1.0) and `message` on the run's status.
    fn report<'a>(
        &'a self,
        fraction: f32,
        message: &'a str,
    ) -> BoxFuture<'a, Result<(), StepError>>;
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
            scope: TenantScope::Tenant(tenant.clone()),
            tenant,
            workflow,
            state,
            visit,
            attempt,
            cancel,
            clock,
            received: None,
            compensating: false,
            progress: None,
        }
    }

    /// Grants the step the scope its workflow's definition declares (the runner calls
    /// this; without it a step sees its own tenant only).
    pub fn with_access(mut self, definition: &Definition) -> Self {
        self.scope = definition.step_scope(&self.tenant);
        self
    }

    /// The tenants whose data this step may read and write: pass it to every store
    /// call that takes a [`TenantScope`].
    pub fn scope(&self) -> &TenantScope {
        &self.scope
    }

    pub fn with_received(mut self, received: Option<Received>) -> Self {
        self.received = received;
        self
    }

    pub fn for_compensation(mut self) -> Self {
        self.compensating = true;
        self
    }

    /// The signal that led to this state, decoded as the workflow's signal type.
    pub fn signal<T: DeserializeOwned>(&self) -> Result<Option<T>, StepError> {
        match &self.received {
            Some(Received::Signal(s)) => decode_signal::<T>(&s.name, &s.payload)
                .map(Some)
                .map_err(|e| StepError::fatal(e.to_string())),
            _ => Ok(None),
        }
    }

    /// The signal that led to this state, as delivered.
    pub fn received_signal(&self) -> Option<&ReceivedSignal> {
        match &self.received {
            Some(Received::Signal(s)) => Some(s),
            _ => None,
        }
    }

    /// The children's results (ordered by child index) after a fan-out.
    pub fn children(&self) -> &[ChildResult] {
        match &self.received {
            Some(Received::Children(c)) => c,
            _ => &[],
        }
    }

    /// Where [`StepContext::progress`] reports (the runner's sink writes through the
    /// run's lease).
    pub fn with_progress(mut self, sink: Arc<dyn ProgressSink>) -> Self {
        self.progress = Some(sink);
        self
    }

    /// The key for the `call`-th side effect of this visit: the same on every retry
    /// of the visit, different on the next visit of the same state.
    pub fn idempotency_key(&self, call: u32) -> String {
        if self.compensating {
            format!("{}:{}:c{}", self.run_id, self.visit, call)
        } else {
            format!("{}:{}:{}", self.run_id, self.visit, call)
        }
    }

    /// Reports progress (a fraction 0.0..=1.0 and a message) on the run's status.
    /// Fenced by the lease: a lost lease is an error.
    pub async fn progress(&self, fraction: f32, message: &str) -> Result<(), StepError> {
        match &self.progress {
            Some(sink) => sink.report(fraction.clamp(0.0, 1.0), message).await,
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
    Wait {
        /// (signal, state, data)
        on: Vec<(String, String, Value)>,
        timeout: Option<(Wake, String, Value)>,
    },
    FanOut {
        children: Vec<ChildSpec>,
        then: (String, Value),
        policy: FanOutPolicy,
    },
    Complete {
        output: Value,
    },
    Abort {
        reason: String,
    },
}

/// Decodes `value`, naming the path of the first field that does not fit
/// (`items[2].qty: invalid type…`), so an API answer can say which field is wrong.
pub fn decode_with_path<T: DeserializeOwned>(value: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })
}

/// Decodes a delivered signal into a signal enum: the name picks the variant.
pub fn decode_signal<T: DeserializeOwned>(name: &str, payload: &Value) -> Result<T, DecodeError> {
    let tagged = serde_json::json!({ "signal": name, "payload": payload });
    decode_with_path::<T>(tagged)
        .or_else(|first| {
            // A variant without data takes no payload: accept an absent, null or empty one.
            let empty = payload.is_null() || payload.as_object().is_some_and(|m| m.is_empty());
            if empty {
                decode_with_path::<T>(serde_json::json!({ "signal": name })).map_err(|_| first)
            } else {
                Err(first)
            }
        })
        .map_err(|message| DecodeError {
            what: "signal payload",
            message,
        })
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
    /// Checks a signal's payload against its variant.
    fn check_signal(&self, name: &str, payload: &Value) -> Result<(), DecodeError>;
    /// Brings `value`, persisted under version `from`, to the current version.
    fn upcast(&self, kind: Persisted, from: u32, value: Value) -> Result<Value, DecodeError>;
    fn step<'a>(
        &'a self,
        ctx: &'a StepContext,
        input: &'a Value,
        state: &'a Value,
    ) -> BoxFuture<'a, Result<RawTransition, StepError>>;
    fn compensate<'a>(
        &'a self,
        ctx: &'a StepContext,
        input: &'a Value,
        state: &'a Value,
    ) -> BoxFuture<'a, Result<(), StepError>>;
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
        let typed: W::Input = decode_with_path(input.clone()).map_err(|message| DecodeError {
            what: "input",
            message,
        })?;
        let state = W::initial_state(&typed);
        let data = serde_json::to_value(&state).map_err(|e| DecodeError {
            what: "initial state",
            message: e.to_string(),
        })?;
        Ok((state.name().to_owned(), data))
    }

    fn check_signal(&self, name: &str, payload: &Value) -> Result<(), DecodeError> {
        decode_signal::<W::Signal>(name, payload).map(|_| ())
    }

    fn upcast(&self, kind: Persisted, from: u32, mut value: Value) -> Result<Value, DecodeError> {
        let mut version = from;
        while version < W::VERSION {
            value = W::upcast(kind, version, value).map_err(|message| DecodeError {
                what: "persisted data",
                message: format!("upcasting {kind:?} from version {version}: {message}"),
            })?;
            version += 1;
        }
        Ok(value)
    }

    fn compensate<'a>(
        &'a self,
        ctx: &'a StepContext,
        input: &'a Value,
        state: &'a Value,
    ) -> BoxFuture<'a, Result<(), StepError>> {
        Box::pin(async move {
            let input: W::Input = serde_json::from_value(input.clone())
                .map_err(|e| StepError::fatal(format!("stored input does not decode: {e}")))?;
            let state: W::State = serde_json::from_value(state.clone())
                .map_err(|e| StepError::fatal(format!("stored state does not decode: {e}")))?;
            self.workflow.compensate(ctx, &input, state).await
        })
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
                Transition::Wait(wait) => RawTransition::Wait {
                    on: wait
                        .on
                        .into_iter()
                        .map(|(signal, state)| {
                            Ok((
                                signal.to_owned(),
                                state.name().to_owned(),
                                encode(&state, "state")?,
                            ))
                        })
                        .collect::<Result<_, StepError>>()?,
                    timeout: match wait.timeout {
                        Some((wake, state)) => {
                            Some((wake, state.name().to_owned(), encode(&state, "state")?))
                        }
                        None => None,
                    },
                },
                Transition::FanOut(fan_out) => RawTransition::FanOut {
                    children: fan_out.children,
                    then: (
                        fan_out.then.name().to_owned(),
                        encode(&fan_out.then, "state")?,
                    ),
                    policy: fan_out.policy,
                },
                Transition::Complete(output) => RawTransition::Complete {
                    output: encode(&output, "output")?,
                },
                Transition::Abort(reason) => RawTransition::Abort { reason },
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
