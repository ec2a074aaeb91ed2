//! Waymark's engine: the workflow model, the run lifecycle and its storage.
//!
//! # Layout
//! - [`workflow`]: the `Workflow` trait, `Transition`, the introspectable transition
//!   table (`Definition`), the step context and the type-erased registry.
//! - [`status`]: the run lifecycle (`RunStatus`), mirrored by database constraints.
//! - [`advance`]: the pure rules that turn a step's result into the commit.
//! - [`start`]: what starting a run checks and builds (limits, tenant, access, input,
//!   first state); a leaf that [`runs`] and [`advance`] build on.
//! - [`runs`]: the engine's front door (`Engine::start`, `Engine::start_in`, signals,
//!   operator actions), including who may start a workflow ([`Access`]).
//! - [`store`]: PostgreSQL and SQLite behind one `Store`; the engine's SQL lives there.
//!   [`store::sql`] is the seam for everyone else's: a caller's transaction (`Tx`, which
//!   `Engine::start_in` starts runs in) and statements written once for both backends.
//! - [`edge_log`]: transition coverage, the edges runs take, logged when
//!   `WAYMARK_EDGE_LOG` is set (the test suite checks every declared edge was taken).
//! - [`metrics`]: counters and histograms rendered as Prometheus text.
//! - [`keys`]: API key secrets (generation, prefix, hash) and scopes.
//! - [`cron`]: cron expressions (crontab(5) syntax) and their fire times in an IANA
//!   zone, with exact daylight-saving rules; the core of schedules.
//! - [`clock`], [`retry`], [`error`]: time as an input, backoff, one error enum per concern.
//!
//! No HTTP and no process loops here: `waymark-workers` runs steps, `waymark-api` serves.

pub mod advance;
pub mod clock;
pub mod cron;
pub mod edge_log;
pub mod error;
pub mod keys;
pub mod metrics;
pub mod retry;
pub mod runs;
pub mod start;
pub mod status;
pub mod store;
pub mod workflow;

pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use error::{ErrorKind, ResultExt, StepError, StoreError};
pub use retry::RetryPolicy;
pub use runs::{Engine, SendSignal};
pub use start::{is_valid_tenant, EngineError, Limits, StartRun};
pub use status::RunStatus;
pub use store::{Run, Store, StoreConfig, TenantScope};

/// The tenant Waymark's own work lives in: the bootstrap admin key, the housekeeping
/// schedule, and every run of an [`Access::System`] workflow.
pub const SYSTEM_TENANT: &str = "system";
pub use workflow::{
    Access, Definition, FanOut, NoSignal, OnFailure, Persisted, StateDef, StepContext, Transition,
    Wait, Wake, Workflow, WorkflowSignal, WorkflowState,
};
