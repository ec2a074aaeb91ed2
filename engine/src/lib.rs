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
//!   `store/postgres/` and `store/sqlite/` are cut into the same files (`runs`,
//!   `claims`, `ops`, `keys`, `schedules`, `workers`), and `store/logic/` writes the
//!   transition rules once over the `Ops` trait both implement. [`store::sql`] is the
//!   seam for everyone else's SQL: a caller's transaction (`Tx`, which
//!   `Engine::start_in` starts runs in) and statements written once for both backends.
//! - [`edge_log`]: transition coverage, the edges runs take, logged when
//!   `WAYMARK_EDGE_LOG` is set (the test suite checks every declared edge was taken).
//! - [`metrics`]: counters and histograms rendered as Prometheus text.
//! - [`keys`]: API keys: the key model (scopes, secrets and their hashes, the sealer,
//!   the records the store keeps), which the store builds on and which does not use it;
//!   issuing and revealing a key ([`keys::issue`], [`keys::reveal`]) are the part that
//!   uses the store.
//! - [`cron`]: cron expressions (crontab(5) syntax) and their fire times in an IANA
//!   zone, with exact daylight-saving rules; the core of schedules.
//! - [`clock`], [`retry`], [`error`]: time as an input, backoff, one error enum per concern.
//!
//! No HTTP and no process loops here: `waymark-workers` runs steps, `waymark-api` serves.
//!
//! # Adding a backend
//! A third backend takes these places (once its `Store` variant exists, the compiler
//! finds the matches to extend):
//! - `store/<backend>/`: its store type, in the same files as the other two: `mod.rs`
//!   (connecting, `migrate`, `ready`, `subscribe`, `endings`), `runs.rs`, `claims.rs`,
//!   `ops.rs` (an `Ops` implementation, which brings every rule in `store/logic/`),
//!   `keys.rs` (with `key_insert_in` for a caller's transaction), `schedules.rs`,
//!   `workers.rs`, and whatever wakes workers and long polls when runs become due or
//!   end (`listen.rs` on PostgreSQL; in process on SQLite).
//! - `store/mod.rs`: a [`StoreConfig`] and a [`Store`] variant, `Store::connect`,
//!   `Store::backend`, an arm in the `dispatch!` macro, and the methods that match by
//!   hand: `Store::key_insert_in` (on the caller's `Tx`) and `Store::run_watch` (which
//!   starts PostgreSQL's listener).
//! - `store/sql.rs`: a `TxInner` and a [`store::Row`] variant; `Store::begin`,
//!   `Store::sql_execute` and `Store::sql_fetch`; the executor functions that bind each
//!   [`store::Arg`] in the backend's representation (and rewrite the `$n` placeholders
//!   if it has others); `Tx::backend`, `Tx::for_update`, `Tx::execute`, `Tx::fetch`,
//!   `Tx::commit`.
//! - `runs.rs`: the match of store and transaction in `Engine::start_in`.
//! - `store/schemas.rs`: a `Conn` variant and its arms (reading the records, applying
//!   one migration with its record in a transaction), and a field in each
//!   `Schema` for the backend's migrations — every workflow with tables of its own
//!   then ships that backend's version of them (the compiler lists each `Schema`).
//! - `migrations/<backend>/`: the same numbered migrations, CHECK constraints tying
//!   status to timestamps included; the backend's `mod.rs` embeds them (`MIGRATOR`)
//!   and, in `migrate`, applies them and then the schemas' under one lock.
//! - `tests/`: a `Backend`, a `TestDb` constructor and a module in `on_both_backends!`
//!   (`tests/support/mod.rs`), so the conformance suite (`tests/conformance/`) and
//!   every suite declared with that macro run on it; the tests that write raw SQL
//!   match on `Backend` and need an arm.
//!
//! Outside the engine, `src/config.rs` chooses the [`StoreConfig`] and
//! `workflows/src/tenants/space.rs` makes each tenant's database space per backend.

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
