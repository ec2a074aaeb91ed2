//! The workflow model: a workflow type is a state enum, a typed input, and one step
//! per state that returns a [`Transition`]. Steps never touch run rows; the engine
//! checkpoints what they return.
//!
//! Every workflow also declares its transition table ([`Definition`]), which the
//! engine enforces (a step that returns an undeclared edge fails the run) so the
//! table the API and dashboard draw cannot drift from what the code does.
//!
//! # Layout
//! - this file: the `Workflow` trait, `Transition` and what it names (waits, fan-outs,
//!   timers), and the bound on durations taken from input;
//! - [`definition`]: the transition table; [`context`]: what a step sees;
//! - [`registry`]: workflows as JSON (type erasure) and the registry of a process.

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

mod context;
mod definition;
mod registry;
pub mod sensitive;

pub use context::*;
pub use definition::*;
pub use registry::*;

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
    /// End this run `completed` (its output `{"continued_as": <new run id>}`) and, in
    /// the same transaction, start a fresh run of the same workflow and input in `S`,
    /// with the signals still queued moved to it. A long-lived process keeps its
    /// history bounded this way; signals sent to the old run follow to the new one.
    /// Only a state that declares [`StateDef::continues_as_new`] may return it, and
    /// only in a top-level run.
    ContinueAsNew(S),
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

    pub fn continue_as_new(state: S) -> Self {
        Transition::ContinueAsNew(state)
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
