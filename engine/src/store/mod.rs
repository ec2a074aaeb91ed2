//! Storage: one [`Store`] with a PostgreSQL and an embedded SQLite implementation that
//! behave the same (one conformance suite runs against both).
//!
//! All SQL lives in `postgres.rs` and `sqlite.rs`. Methods are entity-first
//! (`run_claim`, `run_commit`, `worker_register`). Every write after a claim names the
//! run's [`Lease`]; when the fence does not match, the write is not applied and the
//! method returns [`StoreError::LeaseLost`].
//!
//! Reads that serve a caller take a [`TenantScope`], so tenant isolation is a property
//! of the signatures rather than a filter each handler must remember.

mod postgres;
mod sqlite;

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;
use uuid::Uuid;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use crate::error::{StepError, StoreError};
use crate::status::RunStatus;

pub type StoreResult<T> = Result<T, StoreError>;

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
}

/// A run to insert.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub id: Uuid,
    pub tenant: String,
    pub workflow: String,
    pub workflow_version: u32,
    pub input: Value,
    pub state: String,
    pub state_data: Value,
    pub capability: Option<String>,
    pub idempotency_key: Option<String>,
    pub actor: String,
    pub now: DateTime<Utc>,
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
}

/// Proof of a claim: every write after it names the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub run_id: Uuid,
    pub token: i64,
    pub worker_id: Uuid,
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
}

/// Where a committed transition leaves the run.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Enter `state` (a new visit).
    Enter {
        state: String,
        data: Value,
        capability: Option<String>,
        next: Next,
    },
    /// Stay in the current visit and try again at `due_at`.
    Retry {
        error: StepError,
        due_at: DateTime<Utc>,
    },
    Complete {
        output: Value,
    },
    Fail {
        error: StepError,
    },
}

/// How the entered state's step gets run.
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

/// One transition to commit, in one transaction, fenced by the lease.
#[derive(Debug, Clone)]
pub struct Commit {
    pub from_state: String,
    /// (visit, attempt) of the step that produced this transition, for history.
    pub from_position: (i64, i32),
    pub outcome: Outcome,
    pub cause: Cause,
    pub actor: String,
    pub step_started_at: DateTime<Utc>,
    pub now: DateTime<Utc>,
    /// How far a held lease is extended.
    pub lease: Duration,
}

impl Commit {
    pub(crate) fn to_status(&self) -> RunStatus {
        match &self.outcome {
            Outcome::Enter { next, .. } => match next {
                Next::Hold => RunStatus::Running,
                Next::Release => RunStatus::Pending,
                Next::Sleep(_) => RunStatus::Sleeping,
            },
            Outcome::Retry { .. } => RunStatus::Retrying,
            Outcome::Complete { .. } => RunStatus::Completed,
            Outcome::Fail { .. } => RunStatus::Failed,
        }
    }

    pub(crate) fn to_state(&self) -> &str {
        match &self.outcome {
            Outcome::Enter { state, .. } => state,
            _ => &self.from_state,
        }
    }

    pub(crate) fn error(&self) -> Option<&StepError> {
        match &self.outcome {
            Outcome::Retry { error, .. } | Outcome::Fail { error } => Some(error),
            _ => None,
        }
    }

    pub(crate) fn due_at(&self) -> Option<DateTime<Utc>> {
        match &self.outcome {
            Outcome::Enter { next, .. } => Some(match next {
                Next::Hold | Next::Release => self.now,
                Next::Sleep(at) => *at,
            }),
            Outcome::Retry { due_at, .. } => Some(*due_at),
            Outcome::Complete { .. } | Outcome::Fail { .. } => None,
        }
    }
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

/// Where the data lives.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    Postgres { url: String, max_connections: u32 },
    Sqlite { path: PathBuf },
}

/// The store, on whichever backend was configured.
#[derive(Debug, Clone)]
pub enum Store {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

macro_rules! dispatch {
    ($self:ident, $store:ident => $body:expr) => {
        match $self {
            Store::Postgres($store) => $body,
            Store::Sqlite($store) => $body,
        }
    };
}

impl Store {
    /// Connects; does not migrate (see [`Store::migrate`]).
    pub async fn connect(config: &StoreConfig) -> StoreResult<Store> {
        Ok(match config {
            StoreConfig::Postgres {
                url,
                max_connections,
            } => Store::Postgres(PgStore::connect(url, *max_connections).await?),
            StoreConfig::Sqlite { path } => Store::Sqlite(SqliteStore::open(path).await?),
        })
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Postgres(_) => "postgres",
            Store::Sqlite(_) => "sqlite",
        }
    }

    /// Applies pending migrations. Safe to run from several processes at once on
    /// PostgreSQL (the migrator holds an advisory lock); refuses a schema newer than
    /// this binary knows.
    pub async fn migrate(&self) -> StoreResult<()> {
        dispatch!(self, s => s.migrate().await)
    }

    /// True when the database answers and every migration this binary knows is applied.
    pub async fn ready(&self) -> StoreResult<bool> {
        dispatch!(self, s => s.ready().await)
    }

    /// Wakes when runs may have become due (a start, a release). Coalesced: many
    /// events between two looks are one change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        dispatch!(self, s => s.subscribe())
    }

    /// Inserts a run, or returns the run its idempotency key already names.
    pub async fn run_start(&self, new: NewRun) -> StoreResult<Started> {
        dispatch!(self, s => s.run_start(new).await)
    }

    pub async fn run_get(&self, scope: &TenantScope, id: Uuid) -> StoreResult<Option<Run>> {
        dispatch!(self, s => s.run_get(scope, id).await)
    }

    pub async fn run_history(
        &self,
        scope: &TenantScope,
        id: Uuid,
    ) -> StoreResult<Option<Vec<HistoryEntry>>> {
        dispatch!(self, s => s.run_history(scope, id).await)
    }

    /// Claims up to `limit` due runs (and runs whose lease expired by database time),
    /// incrementing each one's fence token and attempt.
    pub async fn run_claim(&self, req: &ClaimRequest) -> StoreResult<Vec<Run>> {
        dispatch!(self, s => s.run_claim(req).await)
    }

    /// Commits one transition: the run's new checkpoint and its history row, in one
    /// transaction, only if `lease` still holds. Returns the run as committed.
    pub async fn run_commit(&self, lease: &Lease, commit: &Commit) -> StoreResult<Run> {
        dispatch!(self, s => s.run_commit(lease, commit).await)
    }

    /// Gives a claimed run back (shutdown): it is pending again at once, and the
    /// interrupted attempt does not count against its retries.
    pub async fn run_release(&self, lease: &Lease, now: DateTime<Utc>) -> StoreResult<()> {
        dispatch!(self, s => s.run_release(lease, now).await)
    }

    pub async fn run_progress(
        &self,
        lease: &Lease,
        fraction: f32,
        message: &str,
    ) -> StoreResult<()> {
        dispatch!(self, s => s.run_progress(lease, fraction, message).await)
    }

    /// Extends, in one statement, the unexpired leases `worker_id` holds on `runs` (the
    /// runs it is actually working on, so a run it forgot cannot be kept alive) and
    /// returns those still held: any of `runs` missing from the answer lost its lease.
    pub async fn runs_heartbeat(
        &self,
        worker_id: Uuid,
        runs: &[Uuid],
        lease: Duration,
    ) -> StoreResult<Vec<Lease>> {
        dispatch!(self, s => s.runs_heartbeat(worker_id, runs, lease).await)
    }

    /// The earliest `due_at` among runs waiting for a time to come.
    pub async fn run_next_due(&self) -> StoreResult<Option<DateTime<Utc>>> {
        dispatch!(self, s => s.run_next_due().await)
    }

    /// Deletes up to `limit` runs that finished before `before` (with their history).
    pub async fn runs_delete_finished(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<u64> {
        dispatch!(self, s => s.runs_delete_finished(before, limit).await)
    }

    pub async fn worker_register(&self, worker: &WorkerInfo) -> StoreResult<()> {
        dispatch!(self, s => s.worker_register(worker).await)
    }

    pub async fn worker_heartbeat(&self, id: Uuid, runs_in_hand: i32) -> StoreResult<()> {
        dispatch!(self, s => s.worker_heartbeat(id, runs_in_hand).await)
    }

    pub async fn worker_stop(&self, id: Uuid) -> StoreResult<()> {
        dispatch!(self, s => s.worker_stop(id).await)
    }

    pub async fn worker_list(&self) -> StoreResult<Vec<WorkerInfo>> {
        dispatch!(self, s => s.worker_list().await)
    }
}

/// The highest migration version this binary ships for a backend.
pub(crate) fn latest_version(migrator: &sqlx::migrate::Migrator) -> i64 {
    migrator.iter().map(|m| m.version).max().unwrap_or(0)
}

pub(crate) fn check_schema_not_newer(
    migrator: &sqlx::migrate::Migrator,
    applied: Option<i64>,
) -> StoreResult<()> {
    let known = latest_version(migrator);
    match applied {
        Some(found) if found > known => Err(StoreError::SchemaTooNew { found, known }),
        _ => Ok(()),
    }
}

pub(crate) fn json_error(error: &Option<StepError>) -> Option<Value> {
    error
        .as_ref()
        .map(|e| serde_json::to_value(e).expect("StepError serialises"))
}

pub(crate) fn parse_error(value: Option<Value>) -> StoreResult<Option<StepError>> {
    value
        .map(|v| {
            serde_json::from_value(v).map_err(|e| StoreError::Corrupt(format!("error column: {e}")))
        })
        .transpose()
}

pub(crate) fn parse_status(s: &str) -> StoreResult<RunStatus> {
    s.parse().map_err(|e| StoreError::Corrupt(format!("{e}")))
}
