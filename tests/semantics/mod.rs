//! Engine semantics on both backends: signals, cancellation and termination, abort,
//! saga compensation, child runs, and versioned state.
//!
//! # Layout
//! - this module: the workflows these tests drive (approval, saga, fan-out, versioned,
//!   chatter) and the helpers that read their runs.
//! - [`signals`]: waits, signals and timeouts.
//! - [`compensation`]: failure, cancellation, abort, hold and terminate.
//! - [`fan_out`]: children, their policies, crashes and cascades.
//! - [`versions`]: golden fixtures of old checkpoints and newer versions left alone.
//! - [`continuation`]: continue-as-new: the chain of runs, moved and followed signals.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;
use waymark_engine::workflow::Registry;
use waymark_engine::{
    Definition, FanOut, NoSignal, OnFailure, Persisted, RetryPolicy, SendSignal, StateDef,
    StepContext, StepError, TenantScope, Transition, Wait, Workflow, WorkflowSignal, WorkflowState,
};

use crate::support::{manual_clock, TestDb};

mod compensation;
mod continuation;
mod fan_out;
mod signals;
mod versions;

// ---------------------------------------------------------------------------------
// An approval: waits for `approve` or `reject`, with a one-day timeout; `ping` is
// accepted only while it waits. It first sleeps an hour, so signals can arrive early.

struct Approval;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum ApprovalState {
    Prepare,
    Request,
    Approved,
    Rejected,
    Expired,
    Pinged,
}

impl WorkflowState for ApprovalState {
    fn name(&self) -> &'static str {
        match self {
            ApprovalState::Prepare => "prepare",
            ApprovalState::Request => "request",
            ApprovalState::Approved => "approved",
            ApprovalState::Rejected => "rejected",
            ApprovalState::Expired => "expired",
            ApprovalState::Pinged => "pinged",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "signal", content = "payload", rename_all = "snake_case")]
enum ApprovalSignal {
    Approve { by: String },
    Reject { reason: String },
    Ping,
}

impl WorkflowSignal for ApprovalSignal {}

impl Workflow for Approval {
    const NAME: &'static str = "approval";
    type Input = Value;
    type State = ApprovalState;
    type Output = String;
    type Signal = ApprovalSignal;

    fn definition() -> Definition {
        Definition::new([
            StateDef::new("prepare").timer("request"),
            StateDef::new("request")
                .on_signal("approve", "approved")
                .on_signal("reject", "rejected")
                .on_signal("ping", "pinged")
                .timer("expired"),
            StateDef::new("approved").completes(),
            StateDef::new("rejected").completes(),
            StateDef::new("expired").completes(),
            StateDef::new("pinged").completes(),
        ])
        .signal("approve")
        .signal("reject")
        .signal_only_while_waiting("ping")
    }

    fn initial_state(_: &Value) -> ApprovalState {
        ApprovalState::Prepare
    }

    async fn step(
        &self,
        ctx: &StepContext,
        _: &Value,
        state: ApprovalState,
    ) -> Result<Transition<ApprovalState, String>, StepError> {
        Ok(match state {
            ApprovalState::Prepare => {
                Transition::sleep_for(ApprovalState::Request, Duration::from_secs(3600))
            }
            ApprovalState::Request => Wait::on("approve", ApprovalState::Approved)
                .or("reject", ApprovalState::Rejected)
                .or("ping", ApprovalState::Pinged)
                .timeout_after(Duration::from_secs(86_400), ApprovalState::Expired)
                .into(),
            ApprovalState::Approved | ApprovalState::Rejected | ApprovalState::Pinged => {
                let who = ctx
                    .received_signal()
                    .map(|s| s.actor.clone())
                    .unwrap_or_default();
                Transition::complete(match ctx.signal::<ApprovalSignal>()? {
                    Some(ApprovalSignal::Approve { by }) => format!("approved by {by} ({who})"),
                    Some(ApprovalSignal::Reject { reason }) => format!("rejected: {reason}"),
                    Some(ApprovalSignal::Ping) => "pinged".to_owned(),
                    None => return Err(StepError::fatal("no signal received")),
                })
            }
            ApprovalState::Expired => Transition::complete("expired".to_owned()),
        })
    }
}

// ---------------------------------------------------------------------------------
// A saga: `one` → `two` (waits for `go`) → `three` → done, each compensable. Input
// decides where it fails or aborts; the test controls whether the compensation of
// `two` fails. Compensations are recorded in order.

#[derive(Default)]
struct SagaProbe {
    undone: Mutex<Vec<String>>,
    fail_compensation_of_two: AtomicBool,
    hold_step_fails: AtomicBool,
    /// How many times a looper holding its rest step has entered it.
    rest_entered: std::sync::atomic::AtomicUsize,
}

struct Saga(Arc<SagaProbe>);

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct SagaInput {
    #[serde(default)]
    fail_at_three: bool,
    #[serde(default)]
    abort_at_two: bool,
    #[serde(default)]
    wait_at_two: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum SagaState {
    One,
    Two,
    Three,
    Done,
}

impl WorkflowState for SagaState {
    fn name(&self) -> &'static str {
        match self {
            SagaState::One => "one",
            SagaState::Two => "two",
            SagaState::Three => "three",
            SagaState::Done => "done",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "signal", content = "payload", rename_all = "snake_case")]
enum SagaSignal {
    Go,
}

impl WorkflowSignal for SagaSignal {}

fn one_try() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::default()
    }
}

impl Workflow for Saga {
    const NAME: &'static str = "saga";
    type Input = SagaInput;
    type State = SagaState;
    type Output = String;
    type Signal = SagaSignal;

    fn definition() -> Definition {
        Definition::new([
            StateDef::new("one").next("two").compensates(),
            StateDef::new("two")
                .on_signal("go", "three")
                .next("three")
                .compensates(),
            StateDef::new("three").next("done").compensates(),
            StateDef::new("done").completes(),
        ])
        .signal("go")
        .with_retry(one_try())
    }

    fn initial_state(_: &SagaInput) -> SagaState {
        SagaState::One
    }

    async fn step(
        &self,
        _: &StepContext,
        input: &SagaInput,
        state: SagaState,
    ) -> Result<Transition<SagaState, String>, StepError> {
        Ok(match state {
            SagaState::One => Transition::next(SagaState::Two),
            SagaState::Two if input.abort_at_two => {
                Transition::Abort("the owner changed their mind".into())
            }
            SagaState::Two if input.wait_at_two => Wait::on("go", SagaState::Three).into(),
            SagaState::Two => Transition::next(SagaState::Three),
            SagaState::Three if input.fail_at_three => {
                return Err(StepError::fatal("the bank said no"));
            }
            SagaState::Three => Transition::next(SagaState::Done),
            SagaState::Done => Transition::complete("done".into()),
        })
    }

    async fn compensate(
        &self,
        _: &StepContext,
        _: &SagaInput,
        state: SagaState,
    ) -> Result<(), StepError> {
        if matches!(state, SagaState::Two) && self.0.fail_compensation_of_two.load(Ordering::SeqCst)
        {
            return Err(StepError::fatal("cannot release the reservation"));
        }
        self.0.undone.lock().unwrap().push(state.name().to_owned());
        Ok(())
    }
}

/// Fails fatally while the probe says so; holds failed runs for an operator.
struct Held(Arc<SagaProbe>);

impl Workflow for Held {
    const NAME: &'static str = "held";
    type Input = Value;
    type State = SagaState;
    type Output = String;
    type Signal = NoSignal;

    fn definition() -> Definition {
        Definition::new([StateDef::new("one").completes().compensates()])
            .on_failure(OnFailure::Hold)
            .with_retry(one_try())
    }

    fn initial_state(_: &Value) -> SagaState {
        SagaState::One
    }

    async fn step(
        &self,
        _: &StepContext,
        _: &Value,
        _: SagaState,
    ) -> Result<Transition<SagaState, String>, StepError> {
        if self.0.hold_step_fails.load(Ordering::SeqCst) {
            return Err(StepError::fatal("the ledger is locked"));
        }
        Ok(Transition::complete("posted".into()))
    }

    async fn compensate(&self, _: &StepContext, _: &Value, _: SagaState) -> Result<(), StepError> {
        self.0.undone.lock().unwrap().push("held".into());
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// A step that runs until cancelled and then returns a success anyway.

struct Stubborn;

impl Workflow for Stubborn {
    const NAME: &'static str = "stubborn";
    type Input = Value;
    type State = SagaState;
    type Output = String;
    type Signal = NoSignal;

    fn definition() -> Definition {
        Definition::new([
            StateDef::new("one").next("two").compensates(),
            StateDef::new("two").completes().compensates(),
        ])
    }

    fn initial_state(_: &Value) -> SagaState {
        SagaState::One
    }

    async fn step(
        &self,
        ctx: &StepContext,
        _: &Value,
        state: SagaState,
    ) -> Result<Transition<SagaState, String>, StepError> {
        match state {
            SagaState::One => {
                ctx.cancel.cancelled().await;
                Ok(Transition::next(SagaState::Two))
            }
            _ => Ok(Transition::complete("finished".into())),
        }
    }
}

// ---------------------------------------------------------------------------------
// Fan-out: `spread` starts `count` children of `kid`, then `gather` sums their
// outputs (or, with `collect`, reports each one).

struct Parent;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ParentInput {
    count: u32,
    #[serde(default)]
    failing_child: Option<u32>,
    #[serde(default)]
    waiting_children: bool,
    #[serde(default)]
    collect: bool,
    #[serde(default)]
    fail_after_gather: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum ParentState {
    Spread,
    Gather,
}

impl WorkflowState for ParentState {
    fn name(&self) -> &'static str {
        match self {
            ParentState::Spread => "spread",
            ParentState::Gather => "gather",
        }
    }
}

impl Workflow for Parent {
    const NAME: &'static str = "parent";
    type Input = ParentInput;
    type State = ParentState;
    type Output = Value;
    type Signal = NoSignal;

    fn definition() -> Definition {
        Definition::new([
            StateDef::new("spread").children("gather").compensates(),
            StateDef::new("gather").completes(),
        ])
    }

    fn initial_state(_: &ParentInput) -> ParentState {
        ParentState::Spread
    }

    async fn step(
        &self,
        ctx: &StepContext,
        input: &ParentInput,
        state: ParentState,
    ) -> Result<Transition<ParentState, Value>, StepError> {
        match state {
            ParentState::Spread => {
                let mut fan = FanOut::new(ParentState::Gather);
                for n in 0..input.count {
                    fan = fan.child::<Kid>(&KidInput {
                        n,
                        fail: input.failing_child == Some(n),
                        wait: input.waiting_children && input.failing_child != Some(n),
                    })?;
                }
                if input.collect {
                    fan = fan.collect();
                }
                Ok(fan.into())
            }
            ParentState::Gather => {
                if input.fail_after_gather {
                    return Err(StepError::fatal("gathering failed"));
                }
                let results: Vec<Value> = ctx
                    .children()
                    .iter()
                    .map(|c| {
                        json!({
                            "index": c.index,
                            "status": c.status,
                            "output": c.output,
                            "error": c.error.as_ref().map(|e| e.message.clone()),
                        })
                    })
                    .collect();
                Ok(Transition::complete(json!(results)))
            }
        }
    }
}

struct Kid(Arc<SagaProbe>);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct KidInput {
    n: u32,
    fail: bool,
    wait: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum KidState {
    Work,
    Finish,
}

impl WorkflowState for KidState {
    fn name(&self) -> &'static str {
        match self {
            KidState::Work => "work",
            KidState::Finish => "finish",
        }
    }
}

impl Workflow for Kid {
    const NAME: &'static str = "kid";
    type Input = KidInput;
    type State = KidState;
    type Output = u32;
    type Signal = SagaSignal;

    fn definition() -> Definition {
        Definition::new([
            StateDef::new("work")
                .next("finish")
                .on_signal("go", "finish")
                .compensates(),
            StateDef::new("finish").completes(),
        ])
        .signal("go")
        .with_retry(one_try())
    }

    fn initial_state(_: &KidInput) -> KidState {
        KidState::Work
    }

    async fn step(
        &self,
        _: &StepContext,
        input: &KidInput,
        state: KidState,
    ) -> Result<Transition<KidState, u32>, StepError> {
        match state {
            KidState::Work if input.fail => Err(StepError::fatal(format!("kid {} broke", input.n))),
            KidState::Work if input.wait => Ok(Wait::on("go", KidState::Finish).into()),
            KidState::Work => Ok(Transition::next(KidState::Finish)),
            KidState::Finish => Ok(Transition::complete(input.n * 10)),
        }
    }

    async fn compensate(
        &self,
        _: &StepContext,
        input: &KidInput,
        _: KidState,
    ) -> Result<(), StepError> {
        self.0
            .undone
            .lock()
            .unwrap()
            .push(format!("kid {}", input.n));
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// Versioned: version 2 renamed fields of its input (`name` → `full_name`), its state
// (`count` → `times`) and its signal (`msg` → `message`). Runs persisted by version 1
// (the golden fixtures under tests/fixtures/versioned) must still finish.

struct Versioned;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionedInput {
    full_name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum VersionedState {
    Greet { times: u32 },
    WaitPoke { times: u32 },
    Poked { times: u32 },
}

impl WorkflowState for VersionedState {
    fn name(&self) -> &'static str {
        match self {
            VersionedState::Greet { .. } => "greet",
            VersionedState::WaitPoke { .. } => "wait_poke",
            VersionedState::Poked { .. } => "poked",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "signal", content = "payload", rename_all = "snake_case")]
enum VersionedSignal {
    Poke { message: String },
}

impl WorkflowSignal for VersionedSignal {}

fn rename(mut value: Value, from: &str, to: &str) -> Value {
    if let Some(object) = value.as_object_mut() {
        if let Some(v) = object.remove(from) {
            object.insert(to.to_owned(), v);
        }
    }
    value
}

impl Workflow for Versioned {
    const NAME: &'static str = "versioned";
    const VERSION: u32 = 2;
    type Input = VersionedInput;
    type State = VersionedState;
    type Output = String;
    type Signal = VersionedSignal;

    fn definition() -> Definition {
        Definition::new([
            StateDef::new("greet").next("wait_poke"),
            StateDef::new("wait_poke").on_signal("poke", "poked"),
            StateDef::new("poked").completes(),
        ])
        .signal("poke")
    }

    fn initial_state(_: &VersionedInput) -> VersionedState {
        VersionedState::Greet { times: 0 }
    }

    fn upcast(kind: Persisted, from: u32, value: Value) -> Result<Value, String> {
        match (kind, from) {
            (Persisted::Input, 1) => Ok(rename(value, "name", "full_name")),
            (Persisted::State, 1) => Ok(rename(value, "count", "times")),
            (Persisted::Signal, 1) => {
                let mut value = value;
                let payload = value.get("payload").cloned().unwrap_or(Value::Null);
                value["payload"] = rename(payload, "msg", "message");
                Ok(value)
            }
            _ => Err(format!("unknown version {from}")),
        }
    }

    async fn step(
        &self,
        ctx: &StepContext,
        input: &VersionedInput,
        state: VersionedState,
    ) -> Result<Transition<VersionedState, String>, StepError> {
        Ok(match state {
            VersionedState::Greet { times } => {
                Transition::next(VersionedState::WaitPoke { times: times + 1 })
            }
            VersionedState::WaitPoke { times } => {
                Wait::on("poke", VersionedState::Poked { times }).into()
            }
            VersionedState::Poked { times } => {
                let Some(VersionedSignal::Poke { message }) = ctx.signal::<VersionedSignal>()?
                else {
                    return Err(StepError::fatal("no poke"));
                };
                Transition::complete(format!(
                    "{} greeted {times} time(s), poked: {message}",
                    input.full_name
                ))
            }
        })
    }
}

fn registry(probe: &Arc<SagaProbe>) -> Registry {
    let mut registry = Registry::new();
    registry
        .register(Approval)
        .unwrap()
        .register(Saga(probe.clone()))
        .unwrap()
        .register(Held(probe.clone()))
        .unwrap()
        .register(Stubborn)
        .unwrap()
        .register(Parent)
        .unwrap()
        .register(Kid(probe.clone()))
        .unwrap()
        .register(Versioned)
        .unwrap()
        .register(Chatter)
        .unwrap()
        .register(Looper(probe.clone()))
        .unwrap();
    registry
}

/// Counts `bump` signals to `until`. After `every` bumps in one run it rests an hour
/// (a durable timer, so signals sent meanwhile are queued) and then continues as new
/// with its count, so each run of the chain sees at most `every` bumps. With
/// `hold_rest` its resting step waits for its cancellation token before continuing, so
/// a test can ask for a cancellation while the continuing step runs.
struct Looper(Arc<SagaProbe>);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LooperInput {
    every: u32,
    until: u32,
    #[serde(default)]
    hold_rest: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum LooperState {
    /// `n` bumps in all, `here` of them in this run.
    Count {
        n: u32,
        here: u32,
    },
    Rest {
        n: u32,
    },
}

impl WorkflowState for LooperState {
    fn name(&self) -> &'static str {
        match self {
            LooperState::Count { .. } => "count",
            LooperState::Rest { .. } => "rest",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "signal", content = "payload", rename_all = "snake_case")]
enum LooperSignal {
    Bump,
}

impl waymark_engine::WorkflowSignal for LooperSignal {}

impl Workflow for Looper {
    const NAME: &'static str = "looper";
    type Input = LooperInput;
    type State = LooperState;
    type Output = u32;
    type Signal = LooperSignal;

    fn definition() -> Definition {
        Definition::new([
            StateDef::new("count")
                .on_signal("bump", "count")
                .timer("rest")
                .completes(),
            StateDef::new("rest").continues_as_new(),
        ])
        .signal("bump")
    }

    fn initial_state(_: &LooperInput) -> LooperState {
        LooperState::Count { n: 0, here: 0 }
    }

    async fn step(
        &self,
        ctx: &StepContext,
        input: &LooperInput,
        state: LooperState,
    ) -> Result<Transition<LooperState, u32>, StepError> {
        Ok(match state {
            LooperState::Count { n, .. } if n >= input.until => Transition::complete(n),
            LooperState::Count { n, here } if here >= input.every => {
                Transition::sleep_for(LooperState::Rest { n }, Duration::from_secs(3600))
            }
            LooperState::Count { n, here } => Wait::on(
                "bump",
                LooperState::Count {
                    n: n + 1,
                    here: here + 1,
                },
            )
            .into(),
            LooperState::Rest { n } => {
                if input.hold_rest {
                    self.0.rest_entered.fetch_add(1, Ordering::SeqCst);
                    ctx.cancel.cancelled().await;
                }
                Transition::continue_as_new(LooperState::Count { n, here: 0 })
            }
        })
    }
}

/// `a → b → completed` at once, accepting `note` signals it never waits for: every
/// note ends queued, then unconsumed when the run ends.
struct Chatter;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum ChatterState {
    A,
    B,
}

impl WorkflowState for ChatterState {
    fn name(&self) -> &'static str {
        match self {
            ChatterState::A => "a",
            ChatterState::B => "b",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "signal", content = "payload", rename_all = "snake_case")]
enum ChatterSignal {
    Note,
}

impl waymark_engine::WorkflowSignal for ChatterSignal {}

impl Workflow for Chatter {
    const NAME: &'static str = "chatter";
    type Input = Value;
    type State = ChatterState;
    type Output = ();
    type Signal = ChatterSignal;

    fn definition() -> Definition {
        Definition::new([StateDef::new("a").next("b"), StateDef::new("b").completes()])
            .signal("note")
    }

    fn initial_state(_: &Value) -> ChatterState {
        ChatterState::A
    }

    async fn step(
        &self,
        _: &StepContext,
        _: &Value,
        state: ChatterState,
    ) -> Result<Transition<ChatterState, ()>, StepError> {
        Ok(match state {
            ChatterState::A => Transition::next(ChatterState::B),
            ChatterState::B => Transition::complete(()),
        })
    }
}

fn signal(run_id: Uuid, name: &str, payload: Value, key: Option<&str>) -> SendSignal {
    SendSignal {
        run_id,
        name: name.into(),
        payload,
        idempotency_key: key.map(str::to_owned),
        actor: "user:ana".into(),
    }
}

fn causes(history: &[waymark_engine::store::HistoryEntry]) -> Vec<&str> {
    history.iter().map(|h| h.cause.as_str()).collect()
}

async fn history(db: &TestDb, id: Uuid) -> Vec<waymark_engine::store::HistoryEntry> {
    db.store
        .run_history(&TenantScope::All, id)
        .await
        .unwrap()
        .unwrap()
}

const ALL: TenantScope = TenantScope::All;

async fn setup(
    db: &TestDb,
) -> (
    waymark_engine::ManualClock,
    waymark_engine::Engine,
    Arc<SagaProbe>,
) {
    let probe = Arc::new(SagaProbe::default());
    let (clock, shared) = manual_clock();
    let engine = db.engine(registry(&probe), shared);
    (clock, engine, probe)
}

fn clock_now(clock: &waymark_engine::ManualClock) -> chrono::DateTime<chrono::Utc> {
    use waymark_engine::Clock;
    clock.now()
}
