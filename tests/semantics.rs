//! Engine semantics on both backends: signals, cancellation and termination, abort,
//! saga compensation, child runs, and versioned state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;
use waymark_engine::workflow::Registry;
use waymark_engine::{
    Definition, EngineError, FanOut, NoSignal, OnFailure, Persisted, RetryPolicy, RunStatus,
    SendSignal, StateDef, StepContext, StepError, TenantScope, Transition, Wait, Workflow,
    WorkflowSignal, WorkflowState,
};

use crate::support::{
    manual_clock, on_both_backends, spawn_runner, start_req, test_runner_config, wait_for_run,
    wait_for_status, wait_until, TestDb,
};

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
        .unwrap();
    registry
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

on_both_backends!(
    a_signal_sent_while_the_state_waits_leads_to_its_state,
    a_signal_sent_before_the_state_waits_is_queued_and_taken_when_it_waits,
    a_repeated_signal_with_the_same_key_returns_the_first_signals_id,
    unknown_signals_bad_payloads_finished_runs_and_unawaited_only_while_waiting_signals_are_refused,
    a_wait_that_times_out_goes_to_its_timeout_state,
    signals_still_queued_when_the_run_ends_are_recorded_as_unconsumed,
    signals_racing_a_runs_end_are_each_consumed_or_recorded_unconsumed,
    a_failure_compensates_completed_states_in_reverse_including_the_interrupted_one,
    cancelling_a_waiting_run_compensates_and_ends_cancelled,
    abort_compensates_and_ends_cancelled_with_its_reason,
    a_failing_compensation_stops_in_compensation_failed_then_retry_and_skip_finish_it,
    retrying_a_compensated_run_is_a_conflict,
    on_failure_hold_keeps_the_run_retryable_without_compensation,
    terminate_ends_at_once_without_compensation,
    cancel_works_in_every_non_terminal_status,
    a_running_steps_success_after_cancel_is_committed_and_compensated,
    fan_out_gathers_child_outputs_in_index_order,
    fan_out_fail_fast_cancels_siblings_and_fails_the_parent,
    fan_out_collect_hands_each_output_or_error_to_the_parent,
    a_crashed_parent_worker_does_not_duplicate_children,
    cancelling_a_parent_cascades_to_its_children,
    compensating_a_fan_out_compensates_its_completed_children,
    golden_fixtures_from_version_one_advance_to_completion,
    a_worker_leaves_runs_of_a_newer_version_alone_and_says_why,
);

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

async fn a_signal_sent_while_the_state_waits_leads_to_its_state(db: TestDb) {
    let (clock, engine, _) = setup(&db).await;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req("approval", json!({})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, run.id, RunStatus::Sleeping).await;
    clock.advance(Duration::from_secs(3600));
    let waiting = wait_for_status(&db.store, run.id, RunStatus::Waiting).await;
    assert_eq!(
        waiting.waiting_for.unwrap().signal_names(),
        vec!["approve", "reject", "ping"]
    );
    let receipt = engine
        .signal(&ALL, signal(run.id, "approve", json!({"by": "ana"}), None))
        .await
        .unwrap();
    assert!(receipt.created && receipt.consumed);
    let done = wait_for_status(&db.store, run.id, RunStatus::Completed).await;
    runner.stop().await;
    assert_eq!(done.output, Some(json!("approved by ana (user:ana)")));
    let h = history(&db, run.id).await;
    let consumed = h
        .iter()
        .find(|e| e.cause == "signal")
        .expect("signal in history");
    assert_eq!(
        (consumed.actor.as_str(), consumed.to_state.as_str()),
        ("user:ana", "approved")
    );
    let signals = db.store.run_signals(&ALL, run.id).await.unwrap().unwrap();
    assert_eq!(signals[0].status, "consumed");
}

async fn a_signal_sent_before_the_state_waits_is_queued_and_taken_when_it_waits(db: TestDb) {
    let (clock, engine, _) = setup(&db).await;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req("approval", json!({})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, run.id, RunStatus::Sleeping).await;
    let receipt = engine
        .signal(
            &ALL,
            signal(run.id, "reject", json!({"reason": "too late"}), None),
        )
        .await
        .unwrap();
    assert!(receipt.created && !receipt.consumed, "queued, not consumed");
    clock.advance(Duration::from_secs(3600));
    let done = wait_for_status(&db.store, run.id, RunStatus::Completed).await;
    runner.stop().await;
    assert_eq!(done.output, Some(json!("rejected: too late")));
    // The wait and the consumption are two history rows of the same commit.
    let c = causes(&history(&db, run.id).await).join(",");
    assert!(c.contains("wait,signal"), "{c}");
}

async fn a_repeated_signal_with_the_same_key_returns_the_first_signals_id(db: TestDb) {
    let (_, engine, _) = setup(&db).await;
    let run = engine
        .start(start_req("approval", json!({})))
        .await
        .unwrap()
        .run;
    let first = engine
        .signal(
            &ALL,
            signal(run.id, "approve", json!({"by": "a"}), Some("k1")),
        )
        .await
        .unwrap();
    let again = engine
        .signal(
            &ALL,
            signal(run.id, "approve", json!({"by": "a"}), Some("k1")),
        )
        .await
        .unwrap();
    assert_eq!(first.id, again.id);
    assert!(first.created && !again.created);
    let other = engine
        .signal(
            &ALL,
            signal(run.id, "approve", json!({"by": "a"}), Some("k2")),
        )
        .await
        .unwrap();
    assert_ne!(other.id, first.id);
    assert_eq!(
        db.store
            .run_signals(&ALL, run.id)
            .await
            .unwrap()
            .unwrap()
            .len(),
        2
    );
}

async fn unknown_signals_bad_payloads_finished_runs_and_unawaited_only_while_waiting_signals_are_refused(
    db: TestDb,
) {
    let (clock, engine, _) = setup(&db).await;
    let run = engine
        .start(start_req("approval", json!({})))
        .await
        .unwrap()
        .run;
    match engine
        .signal(&ALL, signal(run.id, "escalate", json!({}), None))
        .await
    {
        Err(EngineError::UnknownSignal { signal, .. }) => assert_eq!(signal, "escalate"),
        other => panic!("expected UnknownSignal, got {other:?}"),
    }
    for bad in [
        json!({"by": 5}),
        json!({}),
        json!("ana"),
        json!({"reason": "x"}),
    ] {
        match engine
            .signal(&ALL, signal(run.id, "approve", bad.clone(), None))
            .await
        {
            Err(EngineError::InvalidInput(e)) => assert_eq!(e.what, "signal payload", "{bad}"),
            other => panic!("{bad}: expected InvalidInput, got {other:?}"),
        }
    }
    // `ping` is only accepted while the run waits for it; it is pending now.
    assert!(matches!(
        engine.signal(&ALL, signal(run.id, "ping", json!(null), None)).await,
        Err(EngineError::Conflict(m)) if m.contains("only while the run waits")
    ));
    // Another tenant cannot see the run at all.
    let other = TenantScope::Tenant("globex".into());
    assert!(matches!(
        engine
            .signal(&other, signal(run.id, "approve", json!({"by": "x"}), None))
            .await,
        Err(EngineError::RunNotFound(_))
    ));
    let runner = spawn_runner(engine.clone(), test_runner_config());
    wait_for_status(&db.store, run.id, RunStatus::Sleeping).await;
    clock.advance(Duration::from_secs(3600));
    wait_for_status(&db.store, run.id, RunStatus::Waiting).await;
    engine
        .signal(&ALL, signal(run.id, "ping", json!(null), None))
        .await
        .unwrap();
    wait_for_status(&db.store, run.id, RunStatus::Completed).await;
    runner.stop().await;
    assert!(matches!(
        engine.signal(&ALL, signal(run.id, "approve", json!({"by": "x"}), None)).await,
        Err(EngineError::Conflict(m)) if m.contains("finished")
    ));
    assert_eq!(
        db.store
            .run_signals(&ALL, run.id)
            .await
            .unwrap()
            .unwrap()
            .len(),
        1,
        "refused signals were not stored"
    );
}

async fn a_wait_that_times_out_goes_to_its_timeout_state(db: TestDb) {
    let (clock, engine, _) = setup(&db).await;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req("approval", json!({})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, run.id, RunStatus::Sleeping).await;
    clock.advance(Duration::from_secs(3600));
    let waiting = wait_for_status(&db.store, run.id, RunStatus::Waiting).await;
    assert_eq!(
        (waiting.due_at.unwrap() - clock_now(&clock)).num_hours(),
        24
    );
    clock.advance(Duration::from_secs(86_400));
    let done = wait_for_status(&db.store, run.id, RunStatus::Completed).await;
    runner.stop().await;
    assert_eq!(done.output, Some(json!("expired")));
    assert!(causes(&history(&db, run.id).await).contains(&"timeout"));
}

fn clock_now(clock: &waymark_engine::ManualClock) -> chrono::DateTime<chrono::Utc> {
    use waymark_engine::Clock;
    clock.now()
}

async fn signals_still_queued_when_the_run_ends_are_recorded_as_unconsumed(db: TestDb) {
    let (clock, engine, _) = setup(&db).await;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req("approval", json!({})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, run.id, RunStatus::Sleeping).await;
    let first = engine
        .signal(
            &ALL,
            signal(run.id, "approve", json!({"by": "first"}), None),
        )
        .await
        .unwrap();
    let second = engine
        .signal(
            &ALL,
            signal(run.id, "reject", json!({"reason": "second"}), None),
        )
        .await
        .unwrap();
    clock.advance(Duration::from_secs(3600));
    let done = wait_for_status(&db.store, run.id, RunStatus::Completed).await;
    runner.stop().await;
    assert_eq!(
        done.output,
        Some(json!("approved by first (user:ana)")),
        "the oldest queued signal wins"
    );
    let signals = db.store.run_signals(&ALL, run.id).await.unwrap().unwrap();
    let status = |id| signals.iter().find(|s| s.id == id).unwrap().status.clone();
    assert_eq!(
        (status(first.id), status(second.id)),
        ("consumed".into(), "unconsumed".into())
    );
    let h = history(&db, run.id).await;
    let unconsumed: Vec<_> = h
        .iter()
        .filter(|e| e.cause == "signal_unconsumed")
        .collect();
    assert_eq!(unconsumed.len(), 1);
    assert_eq!(unconsumed[0].actor, "user:ana");
    assert!(unconsumed[0]
        .error
        .as_ref()
        .unwrap()
        .message
        .contains("reject"));
}

async fn a_failure_compensates_completed_states_in_reverse_including_the_interrupted_one(
    db: TestDb,
) {
    let (_, engine, probe) = setup(&db).await;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req("saga", json!({"fail_at_three": true})))
        .await
        .unwrap()
        .run;
    let failed = wait_for_status(&db.store, run.id, RunStatus::Failed).await;
    runner.stop().await;
    assert_eq!(*probe.undone.lock().unwrap(), vec!["three", "two", "one"]);
    assert_eq!(failed.error.unwrap().message, "the bank said no");
    let ending = failed.ending.unwrap();
    assert_eq!(
        (ending.status, ending.reason.as_str()),
        (RunStatus::Failed, "the bank said no")
    );
    let h = history(&db, run.id).await;
    let path: Vec<(&str, &str)> = h
        .iter()
        .map(|e| (e.cause.as_str(), e.to_state.as_str()))
        .collect();
    assert_eq!(
        path,
        vec![
            ("started", "one"),
            ("step", "two"),
            ("step", "three"),
            ("failed", "three"),
            ("compensated", "three"),
            ("compensated", "two"),
            ("compensated", "one"),
            ("compensation_done", "three"),
        ]
    );
    assert_eq!(h[3].to_status, RunStatus::Compensating);
}

async fn cancelling_a_waiting_run_compensates_and_ends_cancelled(db: TestDb) {
    let (_, engine, probe) = setup(&db).await;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req("saga", json!({"wait_at_two": true})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, run.id, RunStatus::Waiting).await;
    engine
        .cancel(&ALL, run.id, "key:ops", "customer left", None)
        .await
        .unwrap();
    let cancelled = wait_for_status(&db.store, run.id, RunStatus::Cancelled).await;
    runner.stop().await;
    assert_eq!(*probe.undone.lock().unwrap(), vec!["two", "one"]);
    let ending = cancelled.ending.unwrap();
    assert_eq!(
        (ending.actor.as_str(), ending.reason.as_str()),
        ("key:ops", "customer left")
    );
    let h = history(&db, run.id).await;
    let cancel = h.iter().find(|e| e.cause == "cancel").unwrap();
    assert_eq!(
        (cancel.actor.as_str(), cancel.to_status),
        ("key:ops", RunStatus::Compensating)
    );
    // Cancelling again: it has ended.
    assert!(matches!(
        engine.cancel(&ALL, run.id, "key:ops", "again", None).await,
        Err(EngineError::Conflict(_))
    ));
}

async fn abort_compensates_and_ends_cancelled_with_its_reason(db: TestDb) {
    let (_, engine, probe) = setup(&db).await;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req("saga", json!({"abort_at_two": true})))
        .await
        .unwrap()
        .run;
    let cancelled = wait_for_status(&db.store, run.id, RunStatus::Cancelled).await;
    runner.stop().await;
    assert_eq!(*probe.undone.lock().unwrap(), vec!["two", "one"]);
    assert_eq!(
        cancelled.ending.unwrap().reason,
        "the owner changed their mind"
    );
    assert!(causes(&history(&db, run.id).await).contains(&"abort"));
}

async fn a_failing_compensation_stops_in_compensation_failed_then_retry_and_skip_finish_it(
    db: TestDb,
) {
    let (_, engine, probe) = setup(&db).await;
    probe.fail_compensation_of_two.store(true, Ordering::SeqCst);
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req("saga", json!({"fail_at_three": true})))
        .await
        .unwrap()
        .run;
    let stuck = wait_for_status(&db.store, run.id, RunStatus::CompensationFailed).await;
    assert_eq!(
        stuck.error.unwrap().message,
        "cannot release the reservation"
    );
    assert_eq!(*probe.undone.lock().unwrap(), vec!["three"]);
    // Cancelling it is a conflict; it is not silently failed.
    assert!(matches!(
        engine.cancel(&ALL, run.id, "key:ops", "x", None).await,
        Err(EngineError::Conflict(_))
    ));
    // Retried while the reservation still cannot be released: stuck again.
    engine.retry(&ALL, run.id, "key:ops", None).await.unwrap();
    let store = db.store.clone();
    wait_until(
        "the retried compensation fails again",
        Duration::from_secs(30),
        || {
            let store = store.clone();
            async move {
                let h = store.run_history(&ALL, run.id).await.unwrap().unwrap();
                h.iter()
                    .filter(|e| e.cause == "compensation_failed")
                    .count()
                    == 2
            }
        },
    )
    .await;
    wait_for_status(&db.store, run.id, RunStatus::CompensationFailed).await;
    // The operator skips it: compensation goes on with `one`, and the run fails.
    engine
        .skip_compensation(&ALL, run.id, "key:ops", None)
        .await
        .unwrap();
    let failed = wait_for_status(&db.store, run.id, RunStatus::Failed).await;
    runner.stop().await;
    assert_eq!(*probe.undone.lock().unwrap(), vec!["three", "one"]);
    assert_eq!(failed.error.unwrap().message, "the bank said no");
    let h = history(&db, run.id).await;
    let skip = h.iter().find(|e| e.cause == "skip_compensation").unwrap();
    assert_eq!(
        (skip.actor.as_str(), skip.to_state.as_str()),
        ("key:ops", "two")
    );
    let retried = h.iter().find(|e| e.cause == "retry_compensation").unwrap();
    assert_eq!(retried.actor, "key:ops");
    let records = db.store.run_compensations(run.id).await.unwrap();
    let statuses: Vec<_> = records
        .iter()
        .map(|c| (c.state.as_str(), c.status.as_str()))
        .collect();
    assert_eq!(
        statuses,
        vec![("one", "done"), ("two", "skipped"), ("three", "done")]
    );
}

async fn retrying_a_compensated_run_is_a_conflict(db: TestDb) {
    let (_, engine, _) = setup(&db).await;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req("saga", json!({"fail_at_three": true})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, run.id, RunStatus::Failed).await;
    runner.stop().await;
    match engine.retry(&ALL, run.id, "key:ops", None).await {
        Err(EngineError::Conflict(m)) => assert!(m.contains("for good"), "{m}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(matches!(
        engine
            .skip_compensation(&ALL, run.id, "key:ops", None)
            .await,
        Err(EngineError::Conflict(_))
    ));
}

async fn on_failure_hold_keeps_the_run_retryable_without_compensation(db: TestDb) {
    let (_, engine, probe) = setup(&db).await;
    probe.hold_step_fails.store(true, Ordering::SeqCst);
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req("held", json!({})))
        .await
        .unwrap()
        .run;
    let failed = wait_for_status(&db.store, run.id, RunStatus::Failed).await;
    assert!(failed.held);
    assert!(
        probe.undone.lock().unwrap().is_empty(),
        "no compensation under hold"
    );
    probe.hold_step_fails.store(false, Ordering::SeqCst);
    engine.retry(&ALL, run.id, "key:ops", None).await.unwrap();
    let done = wait_for_status(&db.store, run.id, RunStatus::Completed).await;
    runner.stop().await;
    assert_eq!(done.output, Some(json!("posted")));
    assert!(causes(&history(&db, run.id).await).contains(&"operator_retry"));
}

async fn terminate_ends_at_once_without_compensation(db: TestDb) {
    let (_, engine, probe) = setup(&db).await;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req("saga", json!({"wait_at_two": true})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, run.id, RunStatus::Waiting).await;
    let ended = engine
        .terminate(&ALL, run.id, "key:admin", "runaway", None)
        .await
        .unwrap();
    runner.stop().await;
    assert_eq!(ended.status, RunStatus::Cancelled);
    assert!(probe.undone.lock().unwrap().is_empty());
    let ending = ended.ending.unwrap();
    assert_eq!(
        (ending.actor.as_str(), ending.reason.as_str()),
        ("key:admin", "terminated: runaway")
    );
    let h = history(&db, run.id).await;
    assert_eq!(h.last().unwrap().cause, "terminate");
    assert!(matches!(
        engine
            .terminate(&ALL, run.id, "key:admin", "again", None)
            .await,
        Err(EngineError::Conflict(_))
    ));
}

async fn cancel_works_in_every_non_terminal_status(db: TestDb) {
    let (clock, engine, _) = setup(&db).await;
    let (registry, handles) = crate::support::workflows::registry();
    let shared_engine =
        waymark_engine::Engine::new(db.store.clone(), Arc::new(registry), engine.clock.clone());
    // pending: no runner yet.
    let pending = engine
        .start(start_req("saga", json!({})))
        .await
        .unwrap()
        .run;
    assert_eq!(
        engine
            .cancel(&ALL, pending.id, "key:ops", "x", None)
            .await
            .unwrap()
            .status,
        RunStatus::Compensating
    );
    let runner = spawn_runner(engine.clone(), test_runner_config());
    wait_for_status(&db.store, pending.id, RunStatus::Cancelled).await;
    // sleeping
    let sleeping = engine
        .start(start_req("approval", json!({})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, sleeping.id, RunStatus::Sleeping).await;
    engine
        .cancel(&ALL, sleeping.id, "key:ops", "x", None)
        .await
        .unwrap();
    wait_for_status(&db.store, sleeping.id, RunStatus::Cancelled).await;
    // waiting
    let waiting = engine
        .start(start_req("saga", json!({"wait_at_two": true})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, waiting.id, RunStatus::Waiting).await;
    engine
        .cancel(&ALL, waiting.id, "key:ops", "x", None)
        .await
        .unwrap();
    wait_for_status(&db.store, waiting.id, RunStatus::Cancelled).await;
    runner.stop().await;
    // retrying and running use the shared test workflows.
    let other_runner = spawn_runner(shared_engine.clone(), test_runner_config());
    let retrying = shared_engine
        .start(start_req("flaky", json!({"fail_times": 5})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, retrying.id, RunStatus::Retrying).await;
    shared_engine
        .cancel(&ALL, retrying.id, "key:ops", "x", None)
        .await
        .unwrap();
    wait_for_status(&db.store, retrying.id, RunStatus::Cancelled).await;
    let running = shared_engine
        .start(start_req("gated", json!({})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, running.id, RunStatus::Running).await;
    let entered = handles.gate_entered.clone();
    wait_until("the gated step runs", Duration::from_secs(10), || {
        let entered = entered.clone();
        async move { entered.load(Ordering::SeqCst) == 1 }
    })
    .await;
    let requested = shared_engine
        .cancel(&ALL, running.id, "key:ops", "x", None)
        .await
        .unwrap();
    assert_eq!(
        requested.status,
        RunStatus::Running,
        "a held run is asked to stop"
    );
    assert!(requested.cancel_request.is_some());
    let cancelled = wait_for_status(&db.store, running.id, RunStatus::Cancelled).await;
    other_runner.stop().await;
    assert_eq!(
        handles.gate_cancelled.load(Ordering::SeqCst),
        1,
        "the step's token fired"
    );
    assert_eq!(cancelled.ending.unwrap().actor, "key:ops");
    let _ = clock;
}

async fn a_running_steps_success_after_cancel_is_committed_and_compensated(db: TestDb) {
    let (_, engine, _) = setup(&db).await;
    let mut config = test_runner_config();
    config.lease = Duration::from_millis(900);
    let runner = spawn_runner(engine.clone(), config);
    let run = engine
        .start(start_req("stubborn", json!({})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, run.id, RunStatus::Running).await;
    engine
        .cancel(&ALL, run.id, "key:ops", "stop", None)
        .await
        .unwrap();
    let cancelled = wait_for_status(&db.store, run.id, RunStatus::Cancelled).await;
    runner.stop().await;
    let h = history(&db, run.id).await;
    let path: Vec<(&str, &str)> = h
        .iter()
        .map(|e| (e.cause.as_str(), e.to_state.as_str()))
        .collect();
    assert_eq!(
        path,
        vec![
            ("started", "one"),
            ("cancel_requested", "one"),
            ("step", "two"),
            ("cancel", "two"),
            ("compensated", "two"),
            ("compensated", "one"),
            ("compensation_done", "two"),
        ]
    );
    assert_eq!(cancelled.state, "two");
}

async fn fan_out_gathers_child_outputs_in_index_order(db: TestDb) {
    let (_, engine, _) = setup(&db).await;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let mut req = start_req("parent", json!({"count": 4}));
    req.tenant = "initech".into();
    let run = engine.start(req).await.unwrap().run;
    let done = wait_for_status(&db.store, run.id, RunStatus::Completed).await;
    runner.stop().await;
    let outputs: Vec<Value> = done
        .output
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["output"].clone())
        .collect();
    assert_eq!(outputs, vec![json!(0), json!(10), json!(20), json!(30)]);
    let children = db.store.run_children(run.id, 1).await.unwrap();
    assert_eq!(children.len(), 4);
    assert!(
        children.iter().all(|c| c.tenant == "initech"),
        "children inherit the tenant"
    );
    assert!(children
        .iter()
        .enumerate()
        .all(|(i, c)| c.child_index == Some(i as i32) && c.parent_id == Some(run.id)));
}

async fn fan_out_fail_fast_cancels_siblings_and_fails_the_parent(db: TestDb) {
    let (_, engine, _) = setup(&db).await;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req(
            "parent",
            json!({"count": 3, "failing_child": 1, "waiting_children": true}),
        ))
        .await
        .unwrap()
        .run;
    let failed = wait_for_status(&db.store, run.id, RunStatus::Failed).await;
    let children = db.store.run_children(run.id, 1).await.unwrap();
    for child in &children {
        wait_for_status(
            &db.store,
            child.id,
            if child.child_index == Some(1) {
                RunStatus::Failed
            } else {
                RunStatus::Cancelled
            },
        )
        .await;
    }
    runner.stop().await;
    let message = failed.error.unwrap().message;
    assert!(message.starts_with("child #1 (kid"), "{message}");
    assert!(message.contains("kid 1 broke"), "{message}");
}

async fn fan_out_collect_hands_each_output_or_error_to_the_parent(db: TestDb) {
    let (_, engine, _) = setup(&db).await;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req(
            "parent",
            json!({"count": 3, "failing_child": 2, "collect": true}),
        ))
        .await
        .unwrap()
        .run;
    let done = wait_for_status(&db.store, run.id, RunStatus::Completed).await;
    runner.stop().await;
    assert_eq!(
        done.output.unwrap(),
        json!([
            {"index": 0, "status": "completed", "output": 0, "error": null},
            {"index": 1, "status": "completed", "output": 10, "error": null},
            {"index": 2, "status": "failed", "output": null, "error": "kid 2 broke"},
        ])
    );
}

async fn a_crashed_parent_worker_does_not_duplicate_children(db: TestDb) {
    let (_, engine, _) = setup(&db).await;
    let run = engine
        .start(start_req("parent", json!({"count": 3})))
        .await
        .unwrap()
        .run;
    // A worker claims the parent and dies before committing its fan-out.
    let crashed = db
        .store
        .run_claim(&waymark_engine::store::ClaimRequest {
            worker_id: Uuid::now_v7(),
            workflows: vec![("parent".into(), 1)],
            capabilities: vec![],
            limit: 1,
            lease: Duration::from_millis(300),
            now: chrono::Utc::now(),
            exclude: vec![],
        })
        .await
        .unwrap();
    assert_eq!(crashed.len(), 1);
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let done = wait_for_status(&db.store, run.id, RunStatus::Completed).await;
    runner.stop().await;
    assert_eq!(done.output.unwrap().as_array().unwrap().len(), 3);
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM waymark_runs WHERE parent_id IS NOT NULL")
            .await,
        3
    );
    let fan_outs = causes(&history(&db, run.id).await)
        .iter()
        .filter(|c| **c == "fan_out")
        .count();
    assert_eq!(fan_outs, 1);
}

async fn cancelling_a_parent_cascades_to_its_children(db: TestDb) {
    let (_, engine, _) = setup(&db).await;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req(
            "parent",
            json!({"count": 2, "waiting_children": true}),
        ))
        .await
        .unwrap()
        .run;
    let store = db.store.clone();
    wait_until("both children wait", Duration::from_secs(30), || {
        let store = store.clone();
        async move {
            let kids = store.run_children(run.id, 1).await.unwrap();
            kids.len() == 2 && kids.iter().all(|k| k.status == RunStatus::Waiting)
        }
    })
    .await;
    engine
        .cancel(&ALL, run.id, "key:ops", "not needed", None)
        .await
        .unwrap();
    wait_for_status(&db.store, run.id, RunStatus::Cancelled).await;
    for kid in db.store.run_children(run.id, 1).await.unwrap() {
        let kid = wait_for_status(&db.store, kid.id, RunStatus::Cancelled).await;
        assert_eq!(kid.ending.unwrap().actor, format!("run:{}", run.id));
    }
    runner.stop().await;
}

async fn compensating_a_fan_out_compensates_its_completed_children(db: TestDb) {
    let (_, engine, probe) = setup(&db).await;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req(
            "parent",
            json!({"count": 2, "fail_after_gather": true}),
        ))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, run.id, RunStatus::Failed).await;
    for kid in db.store.run_children(run.id, 1).await.unwrap() {
        let kid = wait_for_status(&db.store, kid.id, RunStatus::Cancelled).await;
        assert!(kid.ending.unwrap().reason.contains("compensating"));
    }
    runner.stop().await;
    let mut undone = probe.undone.lock().unwrap().clone();
    undone.sort();
    assert_eq!(undone, vec!["kid 0", "kid 1"]);
}

#[derive(Deserialize)]
struct Fixture {
    workflow_version: u32,
    input: Value,
    state: String,
    state_data: Value,
    #[serde(default)]
    queued_signal: Option<(String, Value)>,
}

async fn golden_fixtures_from_version_one_advance_to_completion(db: TestDb) {
    let (clock, engine, _) = setup(&db).await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/versioned");
    let mut ids = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    assert!(names.len() >= 2, "fixtures missing in {}", dir.display());
    for path in names {
        let fixture: Fixture =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(fixture.workflow_version, 1);
        let started = db
            .store
            .run_start(waymark_engine::store::NewRun {
                id: Uuid::now_v7(),
                tenant: "acme".into(),
                workflow: "versioned".into(),
                workflow_version: fixture.workflow_version,
                input: fixture.input,
                state: fixture.state,
                state_data: fixture.state_data,
                capability: None,
                compensable: false,
                idempotency_key: None,
                tags: vec![],
                actor: "fixture".into(),
                now: clock_now(&clock),
            })
            .await
            .unwrap();
        if let Some((name, payload)) = fixture.queued_signal {
            // Stored as version 1 stored it, bypassing today's payload check.
            db.store
                .run_signal(
                    &ALL,
                    started.run.id,
                    &waymark_engine::store::NewSignal {
                        id: Uuid::now_v7(),
                        name,
                        payload,
                        idempotency_key: None,
                        actor: "fixture".into(),
                        now: clock_now(&clock),
                        only_while_waiting: false,
                        version: 1,
                    },
                )
                .await
                .unwrap();
        }
        ids.push((path, started.run.id));
    }
    let runner = spawn_runner(engine.clone(), test_runner_config());
    for (path, id) in &ids {
        let done = wait_for_run(&db.store, *id, "completed", |r| r.status.is_terminal()).await;
        assert_eq!(
            done.status,
            RunStatus::Completed,
            "{}: {:?}",
            path.display(),
            done.error
        );
        assert_eq!(
            done.workflow_version, 2,
            "rewritten under the current version"
        );
        assert_eq!(done.input, json!({"full_name": "Ada Lovelace"}));
        assert_eq!(
            done.output,
            Some(json!(
                "Ada Lovelace greeted 3 time(s), poked: hello from v1"
            ))
        );
    }
    runner.stop().await;
}

async fn a_worker_leaves_runs_of_a_newer_version_alone_and_says_why(db: TestDb) {
    let (clock, engine, _) = setup(&db).await;
    let newer = db
        .store
        .run_start(waymark_engine::store::NewRun {
            id: Uuid::now_v7(),
            tenant: "acme".into(),
            workflow: "versioned".into(),
            workflow_version: 3,
            input: json!({"whatever": "v3 shape"}),
            state: "greet".into(),
            state_data: json!({"state": "greet", "v3": true}),
            capability: None,
            compensable: false,
            idempotency_key: None,
            tags: vec![],
            actor: "new-deploy".into(),
            // Due by the engine's clock: only the version keeps workers away.
            now: clock_now(&clock),
        })
        .await
        .unwrap()
        .run;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    // The old worker is idle and has looked: a three-step run started after completes.
    let probe = engine
        .start(start_req("versioned", json!({"full_name": "x"})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, probe.id, RunStatus::Waiting).await;
    let still = db.store.run_get(&ALL, newer.id).await.unwrap().unwrap();
    assert_eq!(
        (still.status, still.attempt),
        (RunStatus::Pending, 0),
        "never claimed, never failed"
    );
    let reason = engine
        .pending_reason(&still, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    assert!(
        reason.contains("versioned at version 3") && reason.contains("versioned@2"),
        "{reason}"
    );
    runner.stop().await;
}

/// Signals sent in a tight loop while runs complete: whichever way each race goes, no
/// signal of an ended run stays `queued`, and each unconsumed one has its history row.
async fn signals_racing_a_runs_end_are_each_consumed_or_recorded_unconsumed(db: TestDb) {
    let (_, engine, _) = setup(&db).await;
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let mut senders = Vec::new();
    for _ in 0..40 {
        let run = engine
            .start(start_req("chatter", json!({})))
            .await
            .unwrap()
            .run;
        let engine = engine.clone();
        senders.push(tokio::spawn(async move {
            let mut accepted = 0;
            // Until the run's end refuses the next one (bounded, should it never end).
            for _ in 0..10_000 {
                match engine
                    .signal(&ALL, signal(run.id, "note", json!(null), None))
                    .await
                {
                    Ok(_) => accepted += 1,
                    Err(waymark_engine::EngineError::Conflict(_)) => break,
                    Err(other) => panic!("{other}"),
                }
            }
            (run.id, accepted)
        }));
    }
    let mut accepted_total = 0;
    for sender in senders {
        let (run, accepted) = sender.await.unwrap();
        accepted_total += accepted;
        wait_for_status(&db.store, run, RunStatus::Completed).await;
    }
    runner.stop().await;
    assert!(
        accepted_total > 0,
        "some signals arrived before the runs ended"
    );
    assert_eq!(
        db.scalar_i64(
            "SELECT count(*) FROM waymark_signals s JOIN waymark_runs r ON r.id = s.run_id \
             WHERE s.status = 'queued' AND r.finished_at IS NOT NULL"
        )
        .await,
        0,
        "no signal of an ended run is left queued"
    );
    assert_eq!(
        db.scalar_i64("SELECT count(*) FROM waymark_signals WHERE status = 'unconsumed'")
            .await,
        db.scalar_i64("SELECT count(*) FROM waymark_history WHERE cause = 'signal_unconsumed'")
            .await,
    );
}
