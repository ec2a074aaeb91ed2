//! The records the store reads and writes.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::error::StepError;
use crate::status::RunStatus;
use crate::workflow::{FanOutPolicy, ReceivedSignal};

// The key records belong to the key model, which must not depend on the store; they
// are re-exported here because the store's key methods take and return them.
pub use crate::keys::{KeyRecord, NewKey, SealedSecret};

/// Which tenants' rows a read may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantScope {
    /// Every tenant (admin, or the engine itself).
    All,
    /// One tenant only; everything else looks like it does not exist.
    Tenant(String),
}

impl TenantScope {
    pub(crate) fn tenant(&self) -> Option<&str> {
        match self {
            TenantScope::All => None,
            TenantScope::Tenant(t) => Some(t),
        }
    }

    pub fn allows(&self, tenant: &str) -> bool {
        self.tenant().is_none_or(|t| t == tenant)
    }
}

/// A run to insert.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    pub id: Uuid,
    pub tenant: String,
    pub workflow: String,
    pub workflow_version: u32,
    pub input: Value,
    pub state: String,
    pub state_data: Value,
    pub capability: Option<String>,
    /// Whether the initial state declares a compensation.
    pub compensable: bool,
    pub idempotency_key: Option<String>,
    /// Searchable labels (e.g. a business id).
    pub tags: Vec<String>,
    pub actor: String,
    pub now: DateTime<Utc>,
}

/// A state to enter, with everything the store needs to enter it without the
/// workflow's code (a signal or a child may trigger the entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub state: String,
    pub data: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<String>,
    #[serde(default)]
    pub compensable: bool,
}

/// A signal a waiting run takes, and where it leads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalTarget {
    pub signal: String,
    pub target: Target,
}

/// Children a waiting run gathers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildrenWait {
    /// The parent's visit that started them.
    pub visit: i64,
    pub count: u32,
    pub policy: FanOutPolicy,
    pub then: Target,
    /// The parent's `on_failure: hold`, applied when a child fails its fan-out.
    #[serde(default)]
    pub hold_on_failure: bool,
}

/// What a `waiting` run waits for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct WaitingFor {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signals: Vec<SignalTarget>,
    /// Entered when `due_at` passes first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Target>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub children: Option<ChildrenWait>,
}

impl WaitingFor {
    pub fn signal_names(&self) -> Vec<String> {
        self.signals.iter().map(|s| s.signal.clone()).collect()
    }
}

/// What the current visit received, kept on the run so retries of the visit see it too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Inbox {
    Signal(ReceivedSignal),
    /// The results are the children started in this parent visit.
    Children {
        visit: i64,
    },
}

/// An operator's cancellation that waits for a running step to return.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelRequest {
    pub actor: String,
    pub reason: String,
    pub at: DateTime<Utc>,
}

/// How a compensating run will end, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ending {
    /// `failed` or `cancelled`.
    pub status: RunStatus,
    pub reason: String,
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StepError>,
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    pub id: Uuid,
    pub tenant: String,
    pub workflow: String,
    pub workflow_version: u32,
    pub status: RunStatus,
    pub state: String,
    pub state_data: Value,
    pub input: Value,
    pub output: Option<Value>,
    pub error: Option<StepError>,
    pub idempotency_key: Option<String>,
    pub capability: Option<String>,
    pub visit: i64,
    pub attempt: i32,
    pub due_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub lease_token: i64,
    pub locked_by: Option<Uuid>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub progress_pct: Option<f32>,
    pub progress_message: Option<String>,
    pub parent_id: Option<Uuid>,
    pub parent_visit: Option<i64>,
    pub child_index: Option<i32>,
    pub waiting_for: Option<WaitingFor>,
    pub received: Option<Inbox>,
    pub cancel_request: Option<CancelRequest>,
    pub ending: Option<Ending>,
    pub held: bool,
    pub tags: Vec<String>,
    /// Set only on runs a claim returns: the status the run was claimed from (a
    /// `sleeping` one was woken by its timer). Not stored.
    #[serde(skip)]
    pub claimed_from: Option<RunStatus>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl Run {
    /// The lease a worker holds on this run after claiming it.
    pub fn lease(&self) -> Option<Lease> {
        Some(Lease {
            run_id: self.id,
            token: self.lease_token,
            worker_id: self.locked_by?,
        })
    }

    pub(crate) fn unlock(&mut self) {
        self.locked_by = None;
        self.lease_expires_at = None;
    }
}

/// Proof of a claim: every write after it names the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub run_id: Uuid,
    pub token: i64,
    pub worker_id: Uuid,
}

/// A lease still held, as a heartbeat reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub lease: Lease,
    /// An operator asked to cancel the run: its step should stop.
    pub cancel_requested: bool,
}

/// The result of an idempotent start.
#[derive(Debug, Clone)]
pub struct Started {
    pub run: Run,
    /// False when the idempotency key matched an existing run with the same input.
    pub created: bool,
}

/// What a worker asks for.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub worker_id: Uuid,
    /// (workflow, highest version known): runs of newer versions are left alone.
    pub workflows: Vec<(String, u32)>,
    pub capabilities: Vec<String>,
    pub limit: u32,
    pub lease: Duration,
    /// The engine clock's now: what is due is judged by it.
    pub now: DateTime<Utc>,
    /// Runs whose attempt this worker is still running: never claimed, even with an
    /// expired lease, so one process never runs two attempts of one run.
    pub exclude: Vec<Uuid>,
}

/// Where a committed transition leaves the run.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Enter a state (a new visit).
    Enter {
        target: Target,
        next: Next,
    },
    /// Wait for signals (each leading to its target) or a timeout.
    Wait {
        waiting: WaitingFor,
        timeout_at: Option<DateTime<Utc>>,
    },
    /// Start children and wait for them.
    FanOut {
        children: Vec<NewRun>,
        waiting: WaitingFor,
    },
    /// Stay in the current visit and try again at `due_at`.
    Retry {
        error: StepError,
        due_at: DateTime<Utc>,
    },
    Complete {
        output: Value,
    },
    /// The step failed for good: compensate (or, with `hold`, stop and keep retryable).
    Fail {
        error: StepError,
        hold: bool,
    },
    /// The workflow decided to stop: compensate, then end cancelled.
    Abort {
        reason: String,
    },
    /// A compensation succeeded; the worker keeps the lease for the next one.
    Compensated {
        visit: i64,
        state: String,
    },
    CompensationRetry {
        error: StepError,
        due_at: DateTime<Utc>,
    },
    CompensationFailed {
        error: StepError,
    },
    /// No compensation is left: end as the run's `ending` says.
    CompensationDone,
    /// A cancelled step did not return within its grace: apply the cancellation.
    Abandon,
    /// End `completed` with `{"continued_as": next.id}` and start `next` (same
    /// workflow, input and tags), moving the queued signals to it.
    ContinueAsNew {
        next: NewRun,
    },
}

/// How an entered state's step gets run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The committing worker keeps the lease and runs the step at once.
    Hold,
    /// Any worker may claim it now.
    Release,
    /// A durable timer: claimable at this instant.
    Sleep(DateTime<Utc>),
}

/// Why a transition happened, as history shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    Started,
    Step,
    Retry,
    Failed,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Started => "started",
            Cause::Step => "step",
            Cause::Retry => "retry",
            Cause::Failed => "failed",
        }
    }
}

/// A run brought to the current workflow version when it was loaded: written with the
/// commit so the stored shapes match the stored version.
#[derive(Debug, Clone, PartialEq)]
pub struct Upgrade {
    pub version: u32,
    pub input: Value,
    pub state_data: Value,
}

/// One transition to commit, in one transaction, fenced by the lease.
#[derive(Debug, Clone)]
pub struct Commit {
    pub from_state: String,
    /// (visit, attempt) of the step that produced this transition, for the fence and
    /// history.
    pub from_position: (i64, i32),
    pub outcome: Outcome,
    pub cause: Cause,
    pub actor: String,
    pub step_started_at: DateTime<Utc>,
    pub now: DateTime<Utc>,
    /// How far a held lease is extended.
    pub lease: Duration,
    pub upgrade: Option<Upgrade>,
}

/// One row of a run's history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryEntry {
    pub id: i64,
    pub run_id: Uuid,
    pub from_state: Option<String>,
    pub to_state: String,
    pub from_status: Option<RunStatus>,
    pub to_status: RunStatus,
    pub cause: String,
    pub visit: i64,
    pub attempt: i32,
    pub actor: String,
    pub worker_id: Option<Uuid>,
    pub started_at: DateTime<Utc>,
    pub committed_at: DateTime<Utc>,
    pub error: Option<StepError>,
}

/// A history row to append.
#[derive(Debug, Clone)]
pub(crate) struct NewHistory {
    pub run_id: Uuid,
    pub from_state: Option<String>,
    pub to_state: String,
    pub from_status: Option<RunStatus>,
    pub to_status: RunStatus,
    pub cause: String,
    pub visit: i64,
    pub attempt: i32,
    pub actor: String,
    pub worker_id: Option<Uuid>,
    pub started_at: DateTime<Utc>,
    pub committed_at: DateTime<Utc>,
    pub error: Option<StepError>,
}

/// A signal to deliver.
#[derive(Debug, Clone)]
pub struct NewSignal {
    pub id: Uuid,
    pub name: String,
    pub payload: Value,
    pub idempotency_key: Option<String>,
    pub actor: String,
    pub now: DateTime<Utc>,
    /// Refuse unless the run waits for this signal right now.
    pub only_while_waiting: bool,
    /// The workflow version whose signal type the payload was checked against.
    pub version: u32,
}

/// A stored signal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SignalRecord {
    pub id: Uuid,
    pub run_id: Uuid,
    pub name: String,
    pub payload: Value,
    pub idempotency_key: Option<String>,
    pub actor: String,
    pub received_at: DateTime<Utc>,
    /// `queued`, `consumed` or `unconsumed`.
    pub status: String,
    pub version: u32,
    pub consumed_visit: Option<i64>,
}

/// The answer to a signal delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalReceipt {
    pub id: Uuid,
    /// False when the idempotency key named an earlier delivery.
    pub created: bool,
    /// True when the run took it at once.
    pub consumed: bool,
}

/// A visit to undo.
#[derive(Debug, Clone, PartialEq)]
pub struct CompensationRecord {
    pub run_id: Uuid,
    pub visit: i64,
    pub state: String,
    pub state_data: Value,
    pub status: String,
}

/// A worker process as the registry shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerInfo {
    pub id: Uuid,
    pub host: String,
    pub pid: i32,
    pub version: String,
    pub capabilities: Vec<String>,
    pub workflows: Vec<String>,
    pub started_at: DateTime<Utc>,
    pub last_heartbeat_at: DateTime<Utc>,
    pub runs_in_hand: i32,
    pub stopped_at: Option<DateTime<Utc>>,
}

/// How many runs of a workflow are in a status (the dashboard's overview).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunCount {
    pub workflow: String,
    pub status: RunStatus,
    pub count: i64,
}

/// Runs started, completed and failed in one interval of [`Store::runs_activity`].
///
/// [`Store::runs_activity`]: super::Store::runs_activity
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActivityBucket {
    /// The interval's start (a multiple of its length since the Unix epoch).
    pub start: DateTime<Utc>,
    pub started: i64,
    pub completed: i64,
    pub failed: i64,
}

/// Which runs a listing (or a bulk action) covers. Every field narrows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunFilter {
    pub workflow: Option<String>,
    pub status: Option<RunStatus>,
    pub state: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    pub tag: Option<String>,
}

/// What [`crate::Store::key_take_sealed`] did with a key's sealed secret.
#[derive(Debug)]
pub enum SealedTake<T, E> {
    /// No such key in the caller's scope.
    NotFound,
    /// The key has no sealed secret (shown at creation, or revealed before).
    NothingSealed,
    /// The secret opened: its ciphertext is deleted and the reveal audited.
    Taken(T),
    /// The secret did not open: nothing changed, the ciphertext is kept.
    Kept(E),
}

/// An audit record to append.
#[derive(Debug, Clone)]
pub struct NewAudit {
    pub tenant: String,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub detail: Value,
    pub address: Option<String>,
    pub at: DateTime<Utc>,
}

/// An audit record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub tenant: String,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub detail: Value,
    pub address: Option<String>,
}

/// What a schedule does when a fire time comes while its previous run is still live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Do not start; the fire time is recorded as skipped.
    #[default]
    Skip,
    /// Keep one fire time waiting and start it when the previous run ends.
    BufferOne,
    /// Start anyway; runs overlap.
    Allow,
    /// Cancel the previous run, then start.
    CancelPrevious,
}

impl Overlap {
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Skip => "skip",
            Overlap::BufferOne => "buffer_one",
            Overlap::Allow => "allow",
            Overlap::CancelPrevious => "cancel_previous",
        }
    }

    pub fn parse(s: &str) -> Option<Overlap> {
        [
            Overlap::Skip,
            Overlap::BufferOne,
            Overlap::Allow,
            Overlap::CancelPrevious,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
    }
}

/// What happens to fire times missed by more than the grace (the process was down).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    #[default]
    Skip,
    /// Fire once, for the latest missed time.
    RunOnce,
}

impl CatchUp {
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::Skip => "skip",
            CatchUp::RunOnce => "run_once",
        }
    }

    pub fn parse(s: &str) -> Option<CatchUp> {
        [CatchUp::Skip, CatchUp::RunOnce]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

/// A stored schedule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Schedule {
    pub id: Uuid,
    pub tenant: String,
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub workflow: String,
    pub input: Value,
    pub overlap: Overlap,
    pub catch_up: CatchUp,
    pub paused: bool,
    pub last_fired_at: DateTime<Utc>,
    pub next_fire_at: Option<DateTime<Utc>>,
    pub last_run_id: Option<Uuid>,
    pub buffered_fire_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub created_by: String,
}

/// One step of the scheduler on one schedule, applied in one transaction under the
/// scheduler's lease and only if `last_fired_at` is still `expected_last`.
#[derive(Debug, Clone)]
pub struct ScheduleAdvance {
    pub schedule_id: Uuid,
    pub expected_last: DateTime<Utc>,
    pub last_fired_at: DateTime<Utc>,
    pub next_fire_at: Option<DateTime<Utc>>,
    pub buffered_fire_at: Option<DateTime<Utc>>,
    /// The run to start (its idempotency key names the schedule and fire time).
    pub start: Option<NewRun>,
    /// The scheduler lease that must still be held.
    pub lease: (Uuid, i64),
}
