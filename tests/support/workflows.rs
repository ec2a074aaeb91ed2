//! Workflows made for tests: each exercises one engine behaviour and lets the test
//! control its steps.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use waymark_engine::{
    Definition, NoSignal, RetryPolicy, StateDef, StepContext, StepError, Transition, Workflow,
    WorkflowState,
};

/// `a → b → c → completed`, each step trivial. Its output echoes the input.
pub struct ThreeStep;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Abc {
    A,
    B { from_a: u32 },
    C { from_b: u32 },
}

impl WorkflowState for Abc {
    fn name(&self) -> &'static str {
        match self {
            Abc::A => "a",
            Abc::B { .. } => "b",
            Abc::C { .. } => "c",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Number {
    pub n: u32,
}

impl Workflow for ThreeStep {
    const NAME: &'static str = "three_step";
    type Input = Number;
    type State = Abc;
    type Output = Number;
    type Signal = NoSignal;

    fn definition() -> Definition {
        Definition::new([
            StateDef::new("a").next("b"),
            StateDef::new("b").next("c"),
            StateDef::new("c").completes(),
        ])
    }

    fn initial_state(_: &Number) -> Abc {
        Abc::A
    }

    async fn step(
        &self,
        _: &StepContext,
        input: &Number,
        state: Abc,
    ) -> Result<Transition<Abc, Number>, StepError> {
        Ok(match state {
            Abc::A => Transition::next(Abc::B {
                from_a: input.n + 1,
            }),
            Abc::B { from_a } => Transition::next(Abc::C { from_b: from_a + 1 }),
            Abc::C { from_b } => Transition::complete(Number { n: from_b }),
        })
    }
}

/// One state that fails `fail_times` times (retryably, or fatally if `fatal`) before
/// completing; counts its calls.
pub struct Flaky {
    pub calls: Arc<AtomicU32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlakyInput {
    pub fail_times: u32,
    #[serde(default)]
    pub fatal: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Only {
    Only,
}

impl WorkflowState for Only {
    fn name(&self) -> &'static str {
        "only"
    }
}

pub fn flaky_policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        initial_delay: Duration::from_secs(60),
        max_delay: Duration::from_secs(3600),
        jitter: 0.0,
        step_timeout: Duration::from_secs(10),
    }
}

impl Workflow for Flaky {
    const NAME: &'static str = "flaky";
    type Input = FlakyInput;
    type State = Only;
    type Output = u32;
    type Signal = NoSignal;

    fn definition() -> Definition {
        Definition::new([StateDef::new("only").completes()]).with_retry(flaky_policy())
    }

    fn initial_state(_: &FlakyInput) -> Only {
        Only::Only
    }

    async fn step(
        &self,
        _: &StepContext,
        input: &FlakyInput,
        _: Only,
    ) -> Result<Transition<Only, u32>, StepError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if call <= input.fail_times {
            #[derive(Debug, thiserror::Error)]
            #[error("upstream unavailable (call {0})")]
            struct Upstream(u32, #[source] std::io::Error);
            let error = Upstream(call, std::io::Error::other("connection refused"));
            return Err(if input.fatal {
                StepError::fatal_from(&error)
            } else {
                StepError::retryable_from(&error)
            });
        }
        Ok(Transition::complete(call))
    }
}

/// `nap → (timer) → wake → completed`: a durable timer of `days` days.
pub struct Sleeper;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Days {
    pub days: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Nap {
    Nap,
    Wake,
}

impl WorkflowState for Nap {
    fn name(&self) -> &'static str {
        match self {
            Nap::Nap => "nap",
            Nap::Wake => "wake",
        }
    }
}

impl Workflow for Sleeper {
    const NAME: &'static str = "sleeper";
    type Input = Days;
    type State = Nap;
    type Output = String;
    type Signal = NoSignal;

    fn definition() -> Definition {
        Definition::new([
            StateDef::new("nap").timer("wake"),
            StateDef::new("wake").completes(),
        ])
    }

    fn initial_state(_: &Days) -> Nap {
        Nap::Nap
    }

    async fn step(
        &self,
        ctx: &StepContext,
        input: &Days,
        state: Nap,
    ) -> Result<Transition<Nap, String>, StepError> {
        Ok(match state {
            Nap::Nap => Transition::sleep_for(Nap::Wake, Duration::from_secs(input.days * 86_400)),
            Nap::Wake => Transition::complete(format!("woke at {}", ctx.clock.now().to_rfc3339())),
        })
    }
}

/// A step that blocks until the test adds a permit to its gate, then completes. Lets
/// a test hold a run in `running` for as long as it likes.
pub struct Gated {
    pub gate: Arc<Semaphore>,
    pub entered: Arc<AtomicU32>,
    pub cancelled: Arc<AtomicU32>,
}

impl Gated {
    pub fn new() -> Self {
        Self {
            gate: Arc::new(Semaphore::new(0)),
            entered: Arc::new(AtomicU32::new(0)),
            cancelled: Arc::new(AtomicU32::new(0)),
        }
    }
}

impl Workflow for Gated {
    const NAME: &'static str = "gated";
    type Input = serde_json::Value;
    type State = Only;
    type Output = String;
    type Signal = NoSignal;

    fn definition() -> Definition {
        Definition::new([StateDef::new("only").completes()])
    }

    fn initial_state(_: &serde_json::Value) -> Only {
        Only::Only
    }

    async fn step(
        &self,
        ctx: &StepContext,
        _: &serde_json::Value,
        _: Only,
    ) -> Result<Transition<Only, String>, StepError> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        tokio::select! {
            permit = self.gate.acquire() => { permit.expect("gate").forget(); }
            _ = ctx.cancel.cancelled() => {
                self.cancelled.fetch_add(1, Ordering::SeqCst);
                return Err(StepError::retryable("cancelled"));
            }
        }
        Ok(Transition::complete(format!("done on visit {}", ctx.visit)))
    }
}

/// A state that needs the `gpu` capability.
pub struct NeedsGpu;

impl Workflow for NeedsGpu {
    const NAME: &'static str = "needs_gpu";
    type Input = serde_json::Value;
    type State = Only;
    type Output = String;
    type Signal = NoSignal;

    fn definition() -> Definition {
        Definition::new([StateDef::new("only").capability("gpu").completes()])
    }

    fn initial_state(_: &serde_json::Value) -> Only {
        Only::Only
    }

    async fn step(
        &self,
        _: &StepContext,
        _: &serde_json::Value,
        _: Only,
    ) -> Result<Transition<Only, String>, StepError> {
        Ok(Transition::complete("rendered".into()))
    }
}

/// Returns state data as large as its input asks for.
pub struct Bloat;

impl Workflow for Bloat {
    const NAME: &'static str = "bloat";
    type Input = Number;
    type State = Abc;
    type Output = String;
    type Signal = NoSignal;

    fn definition() -> Definition {
        Definition::new([StateDef::new("a").next("b"), StateDef::new("b").completes()])
    }

    fn initial_state(_: &Number) -> Abc {
        Abc::A
    }

    async fn step(
        &self,
        _: &StepContext,
        input: &Number,
        state: Abc,
    ) -> Result<Transition<Abc, String>, StepError> {
        Ok(match state {
            Abc::A => Transition::next(Abc::B { from_a: input.n }),
            _ => Transition::complete("x".repeat(input.n as usize)),
        })
    }
}

/// A step that never returns, under a 100 ms step timeout and a single attempt.
pub struct Hang;

impl Workflow for Hang {
    const NAME: &'static str = "hang";
    type Input = serde_json::Value;
    type State = Only;
    type Output = String;
    type Signal = NoSignal;

    fn definition() -> Definition {
        Definition::new([StateDef::new("only").completes().retry(RetryPolicy {
            max_attempts: 1,
            step_timeout: Duration::from_millis(100),
            ..RetryPolicy::default()
        })])
    }

    fn initial_state(_: &serde_json::Value) -> Only {
        Only::Only
    }

    async fn step(
        &self,
        _: &StepContext,
        _: &serde_json::Value,
        _: Only,
    ) -> Result<Transition<Only, String>, StepError> {
        std::future::pending::<()>().await;
        unreachable!()
    }
}

/// `door` waits for `ring` (payload `{"by": name}`) and completes with who rang.
pub struct Doorbell;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Door {
    Door,
    Open,
}

impl WorkflowState for Door {
    fn name(&self) -> &'static str {
        match self {
            Door::Door => "door",
            Door::Open => "open",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "signal", content = "payload", rename_all = "snake_case")]
pub enum Bell {
    Ring { by: String },
}

impl waymark_engine::WorkflowSignal for Bell {}

impl Workflow for Doorbell {
    const NAME: &'static str = "doorbell";
    type Input = serde_json::Value;
    type State = Door;
    type Output = String;
    type Signal = Bell;

    fn definition() -> Definition {
        Definition::new([
            StateDef::new("door").on_signal("ring", "open"),
            StateDef::new("open").completes(),
        ])
        .signal("ring")
    }

    fn initial_state(_: &serde_json::Value) -> Door {
        Door::Door
    }

    async fn step(
        &self,
        ctx: &StepContext,
        _: &serde_json::Value,
        state: Door,
    ) -> Result<Transition<Door, String>, StepError> {
        Ok(match state {
            Door::Door => waymark_engine::Wait::on("ring", Door::Open).into(),
            Door::Open => match ctx.signal::<Bell>()? {
                Some(Bell::Ring { by }) => Transition::complete(format!("opened for {by}")),
                None => return Err(StepError::fatal("nobody rang")),
            },
        })
    }
}

/// A registry with every test workflow; returns the handles tests poke.
pub struct TestWorkflows {
    pub flaky_calls: Arc<AtomicU32>,
    pub gate: Arc<Semaphore>,
    pub gate_entered: Arc<AtomicU32>,
    pub gate_cancelled: Arc<AtomicU32>,
}

pub fn registry() -> (waymark_engine::workflow::Registry, TestWorkflows) {
    let mut registry = waymark_engine::workflow::Registry::new();
    let handles = register(&mut registry);
    (registry, handles)
}

/// Registers every test workflow into `registry`; returns their handles.
pub fn register(registry: &mut waymark_engine::workflow::Registry) -> TestWorkflows {
    let flaky_calls = Arc::new(AtomicU32::new(0));
    let gated = Gated::new();
    let handles = TestWorkflows {
        flaky_calls: flaky_calls.clone(),
        gate: gated.gate.clone(),
        gate_entered: gated.entered.clone(),
        gate_cancelled: gated.cancelled.clone(),
    };
    registry
        .register(ThreeStep)
        .unwrap()
        .register(Flaky { calls: flaky_calls })
        .unwrap()
        .register(Sleeper)
        .unwrap()
        .register(gated)
        .unwrap()
        .register(NeedsGpu)
        .unwrap()
        .register(Bloat)
        .unwrap()
        .register(Hang)
        .unwrap()
        .register(Doorbell)
        .unwrap();
    handles
}
