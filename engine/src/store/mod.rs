//! Storage: one [`Store`] with a PostgreSQL and an embedded SQLite implementation that
//! behave the same (one conformance suite runs against both).
//!
//! All the engine's SQL lives in `postgres/` and `sqlite/`. Methods are entity-first
//! (`run_claim`, `run_commit`, `worker_register`). Every write after a claim names the
//! run's [`Lease`]; when the fence does not match, the write is not applied and the
//! method returns [`StoreError::LeaseLost`].
//!
//! # Layout
//! - `mod.rs` (this file): [`StoreConfig`], the [`Store`] enum, and the `dispatch!`
//!   macro that hands each method to the configured backend, with its contract.
//! - `postgres/` and `sqlite/`: one backend each, cut into the same files so the same
//!   thing is in the same place: `mod.rs` (connecting, migrations, readiness, wake-ups),
//!   `runs.rs` (run rows, starts, reads, listings, retention), `claims.rs` (the runner's
//!   claims, commits, releases, heartbeats, wait timeouts), `ops.rs` (the `Ops`
//!   primitives, and signals and operator actions through the shared rules), `keys.rs`
//!   (keys and the audit log), `schedules.rs` (schedules and named leases),
//!   `workers.rs` (the worker registry); PostgreSQL adds `listen.rs` (LISTEN/NOTIFY).
//! - `logic/`: the transition rules outside the hot path, written once over the `Ops`
//!   trait (a commit, endings and compensation, signals and wait timeouts, operator
//!   actions).
//! - `model.rs`: the records the store reads and writes (the key records come from
//!   [`crate::keys`]).
//! - [`sql`]: the caller's transaction ([`Tx`]) and SQL written once for both backends;
//!   `tenant_rows.rs` uses it for what offboarding a tenant asks of the engine's tables.
//! - `endings.rs`: the watches that long polls wait on until a run ends.
//!
//! Reads that serve a caller take a [`TenantScope`], so tenant isolation is a property
//! of the signatures rather than a filter each handler must remember.
//!
//! [`Store::run_watch`] lets a caller wait for a run to end without reading it in a
//! loop (see `endings.rs`).

mod endings;
mod logic;
mod model;
mod postgres;
pub mod schemas;
pub mod sql;
mod sqlite;
mod tenant_rows;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::watch;
use uuid::Uuid;

pub use endings::{RunEndings, RunWatch, SWEEP};
pub use model::*;
pub use postgres::PgStore;
pub use schemas::{Migration, Schema};
pub use sql::{Arg, Row, Tx};
pub use sqlite::SqliteStore;

use crate::error::{StepError, StoreError};
use crate::status::RunStatus;

pub type StoreResult<T> = Result<T, StoreError>;

/// Where the data lives.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// `max_connections` serves the API and everything else; the runner's claims,
    /// commits and heartbeats use their own `worker_connections`, so a burst of API
    /// reads cannot keep a heartbeat waiting until its lease expires.
    Postgres {
        url: String,
        max_connections: u32,
        worker_connections: u32,
    },
    Sqlite {
        path: PathBuf,
    },
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
                worker_connections,
            } => {
                Store::Postgres(PgStore::connect(url, *max_connections, *worker_connections).await?)
            }
            StoreConfig::Sqlite { path } => Store::Sqlite(SqliteStore::open(path).await?),
        })
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Postgres(_) => "postgres",
            Store::Sqlite(_) => "sqlite",
        }
    }

    /// The workflows' own tables this store migrates after the engine's (see
    /// [`schemas`]); give every schema the process's workflows use, so that `migrate`
    /// applies them and `ready` waits for them.
    pub fn with_schemas(mut self, schemas: impl IntoIterator<Item = Schema>) -> Store {
        let schemas: Arc<[Schema]> = schemas.into_iter().collect();
        match &mut self {
            Store::Postgres(pg) => pg.set_schemas(schemas),
            Store::Sqlite(lite) => lite.set_schemas(schemas),
        }
        self
    }

    /// Test support: see [`PgStore::migrate_engine_until`].
    #[doc(hidden)]
    pub async fn migrate_engine_until(&self, version: i64) -> StoreResult<()> {
        dispatch!(self, s => s.migrate_engine_until(version).await)
    }

    /// Applies pending migrations: the engine's, then those of the schemas given to
    /// [`Store::with_schemas`]. Safe to run from several processes at once on
    /// PostgreSQL (one advisory lock covers it all); refuses a database newer than
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

    /// Registers interest in run `id` ending: the watch wakes when it ends (completed,
    /// failed or cancelled) or may have, and the caller re-reads it. Register before
    /// reading the run, so an ending in between is not missed. Waking costs no query
    /// per watcher: endings are pushed (NOTIFY on PostgreSQL, in process on SQLite),
    /// and one sweep per process checks all watched runs every [`SWEEP`] in case a
    /// notification was lost.
    ///
    /// On PostgreSQL it also marks the run `watched`, which is what makes its ending
    /// send a NOTIFY at all (see migration 0010): one write per watch, so that endings
    /// nobody waits for cost no NOTIFY.
    pub async fn run_watch(&self, id: Uuid) -> StoreResult<RunWatch> {
        let endings = self.endings();
        let watch = endings.watch(id);
        if let Store::Postgres(pg) = self {
            pg.ensure_listening();
            pg.run_mark_watched(id).await?;
        }
        if !endings.sweeping.swap(true, Ordering::SeqCst) {
            tokio::spawn(sweep(self.clone(), endings.clone()));
        }
        Ok(watch)
    }

    /// Wakes when any run ends (or may have): every ending this process hears of (NOTIFY
    /// on PostgreSQL, in process on SQLite), watched or not. Coalesced. Only endings the
    /// listener delivers: nothing sweeps for them, so a lost notification stays lost.
    ///
    /// On PostgreSQL the process is recorded as a follower while any receiver lives, so
    /// that every ending sends a NOTIFY meanwhile (see migration 0010).
    pub fn runs_ended(&self) -> watch::Receiver<u64> {
        let rx = self.endings().any_ended();
        if let Store::Postgres(pg) = self {
            pg.ensure_listening();
            pg.ensure_following();
        }
        rx
    }

    fn endings(&self) -> &Arc<RunEndings> {
        dispatch!(self, s => s.endings())
    }

    /// Which of `ids` exist and have not ended.
    pub async fn runs_unfinished(&self, ids: &[Uuid]) -> StoreResult<Vec<Uuid>> {
        dispatch!(self, s => s.runs_unfinished(ids).await)
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
        dispatch!(self, s => s.run_history(scope, id, None, i64::MAX).await)
    }

    /// A page of a run's history, oldest first: at most `limit` rows, strictly after
    /// the row `after` (keyset pagination on the history's serial id). `None` if the
    /// run is not in `scope`.
    pub async fn run_history_page(
        &self,
        scope: &TenantScope,
        id: Uuid,
        after: Option<i64>,
        limit: u32,
    ) -> StoreResult<Option<Vec<HistoryEntry>>> {
        dispatch!(self, s => s.run_history(scope, id, after, i64::from(limit)).await)
    }

    /// The history of each of `ids` (those in `scope`) in one query: ordered by run
    /// id, then oldest first. For reading many runs' histories (an export) without a
    /// round trip per run; keep `ids` to a page (a few hundred).
    pub async fn runs_history(
        &self,
        scope: &TenantScope,
        ids: &[Uuid],
    ) -> StoreResult<Vec<HistoryEntry>> {
        dispatch!(self, s => s.runs_history(scope, ids).await)
    }

    /// Every signal delivered to a run, oldest first, with what became of it.
    pub async fn run_signals(
        &self,
        scope: &TenantScope,
        id: Uuid,
    ) -> StoreResult<Option<Vec<SignalRecord>>> {
        dispatch!(self, s => s.run_signals(scope, id, None, i64::MAX).await)
    }

    /// A page of the signals delivered to a run, oldest first: at most `limit`,
    /// strictly after the signal `after` (keyset pagination on the time-ordered id).
    /// `None` if the run is not in `scope`.
    pub async fn run_signals_page(
        &self,
        scope: &TenantScope,
        id: Uuid,
        after: Option<Uuid>,
        limit: u32,
    ) -> StoreResult<Option<Vec<SignalRecord>>> {
        dispatch!(self, s => s.run_signals(scope, id, after, i64::from(limit)).await)
    }

    /// The children `parent` started in its visit `visit`, by child index.
    pub async fn run_children(&self, parent: Uuid, visit: i64) -> StoreResult<Vec<Run>> {
        dispatch!(self, s => s.run_children(parent, visit).await)
    }

    /// The visits of compensable states a run made, oldest first, with their status.
    pub async fn run_compensations(&self, id: Uuid) -> StoreResult<Vec<CompensationRecord>> {
        dispatch!(self, s => s.run_compensations(id).await)
    }

    /// Claims up to `limit` due runs (and runs whose lease expired by database time),
    /// incrementing each one's fence token and attempt.
    pub async fn run_claim(&self, req: &ClaimRequest) -> StoreResult<Vec<Run>> {
        dispatch!(self, s => s.run_claim(req).await)
    }

    /// Commits one transition: the run's new checkpoint, its history, and what it
    /// starts, in one transaction, only if `lease` still holds. Returns the run as
    /// committed.
    pub async fn run_commit(&self, lease: &Lease, commit: &Commit) -> StoreResult<Run> {
        dispatch!(self, s => s.run_commit(lease, commit).await)
    }

    /// Delivers a signal: persisted, and taken by the run in the same transaction if it
    /// waits for it. Idempotent on the signal's key.
    pub async fn run_signal(
        &self,
        scope: &TenantScope,
        run_id: Uuid,
        signal: &NewSignal,
    ) -> StoreResult<SignalReceipt> {
        dispatch!(self, s => s.run_signal(scope, run_id, signal).await)
    }

    /// Cancels a live run (a conflict for ended or compensating ones): compensation,
    /// then `cancelled`, cascading to children. A run a worker holds is asked to stop
    /// and cancelled when its step returns. Like terminate, retry and skip, it appends
    /// its audit record (actor, `address`) in the same transaction.
    pub async fn run_cancel(
        &self,
        scope: &TenantScope,
        id: Uuid,
        actor: &str,
        reason: &str,
        address: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<Run> {
        dispatch!(self, s => s.run_cancel(scope, id, actor, reason, address, now).await)
    }

    /// Ends a live run at once as `cancelled`, without compensation, children too.
    pub async fn run_terminate(
        &self,
        scope: &TenantScope,
        id: Uuid,
        actor: &str,
        reason: &str,
        address: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<Run> {
        dispatch!(self, s => s.run_terminate(scope, id, actor, reason, address, now).await)
    }

    /// Retries a run failed under `on_failure: hold`, or a failed compensation.
    pub async fn run_retry(
        &self,
        scope: &TenantScope,
        id: Uuid,
        actor: &str,
        address: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<Run> {
        dispatch!(self, s => s.run_retry(scope, id, actor, address, now).await)
    }

    /// Skips the compensation that failed and goes on with the next.
    pub async fn run_skip_compensation(
        &self,
        scope: &TenantScope,
        id: Uuid,
        actor: &str,
        address: Option<&str>,
        now: DateTime<Utc>,
    ) -> StoreResult<Run> {
        dispatch!(self, s => s.run_skip_compensation(scope, id, actor, address, now).await)
    }

    /// Moves waits whose timeout passed (by the engine clock) to their timeout state.
    pub async fn runs_fire_timeouts(&self, now: DateTime<Utc>, limit: u32) -> StoreResult<u32> {
        dispatch!(self, s => s.runs_fire_timeouts(now, limit).await)
    }

    /// Gives a claimed run back (shutdown): it is claimable again at once, and the
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
    /// returns those still held, flagging cancellation requests: any of `runs` missing
    /// from the answer lost its lease.
    pub async fn runs_heartbeat(
        &self,
        worker_id: Uuid,
        runs: &[Uuid],
        lease: Duration,
    ) -> StoreResult<Vec<Held>> {
        dispatch!(self, s => s.runs_heartbeat(worker_id, runs, lease).await)
    }

    /// The earliest `due_at` among runs waiting for a time to come.
    pub async fn run_next_due(&self) -> StoreResult<Option<DateTime<Utc>>> {
        dispatch!(self, s => s.run_next_due().await)
    }

    /// Deletes up to `limit` runs of `scope` that finished before `before` (with their
    /// history, signals and tags). Some finished runs are still needed, and stay:
    /// - a failed run held for an operator (`on_failure: hold`): records such as a
    ///   tenant's `deprovision_run_id` point to it, and an operator may retry it;
    /// - a child whose parent has not ended or is held: a retried parent reads its
    ///   children's results;
    /// - a parent with a child that has not ended: the child reports to it.
    ///
    /// Anything else that names a run (a schedule's `last_run_id`, a tenant's
    /// provisioning run) treats a missing run as an ended one.
    pub async fn runs_delete_finished(
        &self,
        scope: &TenantScope,
        before: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<u64> {
        dispatch!(self, s => s.runs_delete_finished(scope, before, limit).await)
    }

    /// Runs matching `filter`, newest first, `limit` at most, strictly older than the
    /// run `before` (keyset pagination on the time-ordered id).
    pub async fn runs_list(
        &self,
        scope: &TenantScope,
        filter: &RunFilter,
        before: Option<Uuid>,
        limit: u32,
    ) -> StoreResult<Vec<Run>> {
        dispatch!(self, s => s.runs_list(scope, filter, before, limit).await)
    }

    /// How many runs each workflow has in each status, in `scope`.
    pub async fn runs_counts(&self, scope: &TenantScope) -> StoreResult<Vec<RunCount>> {
        dispatch!(self, s => s.runs_counts(scope).await)
    }

    /// Runs started (by `created_at`) and ended completed or failed (by `finished_at`)
    /// since `since`, per interval of `bucket` aligned on the Unix epoch, oldest first;
    /// intervals with nothing are left out.
    pub async fn runs_activity(
        &self,
        scope: &TenantScope,
        since: DateTime<Utc>,
        bucket: Duration,
    ) -> StoreResult<Vec<ActivityBucket>> {
        let seconds = i64::try_from(bucket.as_secs().max(1)).unwrap_or(i64::MAX);
        let rows = dispatch!(self, s => s.runs_activity(scope, since, seconds).await)?;
        rows.into_iter()
            .map(|(b, started, completed, failed)| {
                let start =
                    DateTime::from_timestamp(b.saturating_mul(seconds), 0).ok_or_else(|| {
                        StoreError::Corrupt(format!("activity bucket {b} is out of range"))
                    })?;
                Ok(ActivityBucket {
                    start,
                    started,
                    completed,
                    failed,
                })
            })
            .collect()
    }

    /// How many runs are due and unclaimed at `now`, and since when the oldest waits.
    pub async fn runs_due_stats(
        &self,
        now: DateTime<Utc>,
    ) -> StoreResult<(i64, Option<DateTime<Utc>>)> {
        dispatch!(self, s => s.runs_due_stats(now).await)
    }

    /// Stores a key (its hash only) and its audit record in one transaction.
    pub async fn key_insert(&self, key: &NewKey, audit: &NewAudit) -> StoreResult<KeyRecord> {
        dispatch!(self, s => s.key_insert(key, audit).await)
    }

    /// The key a presented secret names, any tenant: authentication itself.
    pub async fn key_by_prefix(&self, prefix: &str) -> StoreResult<Option<KeyRecord>> {
        dispatch!(self, s => s.key_by_prefix(prefix).await)
    }

    pub async fn key_get(&self, scope: &TenantScope, id: Uuid) -> StoreResult<Option<KeyRecord>> {
        dispatch!(self, s => s.key_get(scope, id).await)
    }

    pub async fn key_list(&self, scope: &TenantScope) -> StoreResult<Vec<KeyRecord>> {
        dispatch!(self, s => s.key_list(scope).await)
    }

    /// A page of the keys of `scope`, oldest first: at most `limit`, strictly after the
    /// key `after` (keyset pagination on the time-ordered id).
    pub async fn keys_page(
        &self,
        scope: &TenantScope,
        after: Option<Uuid>,
        limit: u32,
    ) -> StoreResult<Vec<KeyRecord>> {
        dispatch!(self, s => s.keys_page(scope, after, limit).await)
    }

    /// Revokes a key (idempotently: the first revocation's time and actor stay) and
    /// appends the audit record in the same transaction.
    pub async fn key_revoke(
        &self,
        scope: &TenantScope,
        id: Uuid,
        actor: &str,
        now: DateTime<Utc>,
        audit: &NewAudit,
    ) -> StoreResult<Option<KeyRecord>> {
        dispatch!(self, s => s.key_revoke(scope, id, actor, now, audit).await)
    }

    /// Takes a key's sealed secret for its one reveal. `open` runs inside the
    /// transaction that holds the key's row: only when it succeeds are the ciphertext
    /// deleted and the audit record appended, so a secret that does not open (another
    /// master key) is kept, and of two concurrent reveals only one gets the secret.
    pub async fn key_take_sealed<T, E>(
        &self,
        scope: &TenantScope,
        id: Uuid,
        now: DateTime<Utc>,
        audit: &NewAudit,
        open: impl FnOnce(&SealedSecret) -> Result<T, E> + Send,
    ) -> StoreResult<SealedTake<T, E>> {
        dispatch!(self, s => s.key_take_sealed(scope, id, now, audit, open).await)
    }

    /// How many sealed secrets wait to be revealed, per id of the master key that
    /// sealed them (`None`: sealed before ids were recorded).
    pub async fn keys_sealed_by(&self) -> StoreResult<Vec<(Option<String>, i64)>> {
        dispatch!(self, s => s.keys_sealed_by().await)
    }

    /// Suspends (`Some(when)`) or restores (`None`) every key of `tenant`.
    pub async fn keys_suspend(
        &self,
        tenant: &str,
        suspended: Option<DateTime<Utc>>,
    ) -> StoreResult<u64> {
        dispatch!(self, s => s.keys_suspend(tenant, suspended).await)
    }

    /// Issues a key, with its audit record, inside the caller's transaction: a
    /// workflow's route can issue a key and start the run that manages it so that a
    /// crash leaves neither without the other.
    pub async fn key_insert_in(
        &self,
        tx: &mut Tx,
        key: &NewKey,
        audit: &NewAudit,
    ) -> StoreResult<KeyRecord> {
        match &mut tx.inner {
            sql::TxInner::Postgres(tx) => postgres::key_insert_in(tx, key, audit).await,
            sql::TxInner::Sqlite { tx, .. } => sqlite::key_insert_in(tx, key, audit).await,
        }
    }

    /// Records use of a key, at most once a minute per key.
    pub async fn key_touch(&self, id: Uuid, now: DateTime<Utc>) -> StoreResult<()> {
        dispatch!(self, s => s.key_touch(id, now).await)
    }

    pub async fn keys_count(&self) -> StoreResult<i64> {
        dispatch!(self, s => s.keys_count().await)
    }

    pub async fn audit_append(&self, audit: &NewAudit) -> StoreResult<()> {
        dispatch!(self, s => s.audit_append(audit).await)
    }

    /// Audit records, newest first, older than `before` (an id) when given.
    pub async fn audit_list(
        &self,
        scope: &TenantScope,
        before: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<AuditEntry>> {
        dispatch!(self, s => s.audit_list(scope, before, limit).await)
    }

    /// Inserts a schedule; a conflict if its name is taken in its tenant. With
    /// `if_absent`, an existing one is kept and `None` returned instead.
    pub async fn schedule_insert(
        &self,
        schedule: &Schedule,
        if_absent: bool,
    ) -> StoreResult<Option<Schedule>> {
        dispatch!(self, s => s.schedule_insert(schedule, if_absent).await)
    }

    pub async fn schedule_get(
        &self,
        scope: &TenantScope,
        id: Uuid,
    ) -> StoreResult<Option<Schedule>> {
        dispatch!(self, s => s.schedule_get(scope, id).await)
    }

    pub async fn schedule_list(&self, scope: &TenantScope) -> StoreResult<Vec<Schedule>> {
        dispatch!(self, s => s.schedule_list(scope).await)
    }

    /// A page of the schedules of `scope`, oldest first: at most `limit`, strictly
    /// after the schedule `after` (keyset pagination on the time-ordered id).
    pub async fn schedules_page(
        &self,
        scope: &TenantScope,
        after: Option<Uuid>,
        limit: u32,
    ) -> StoreResult<Vec<Schedule>> {
        dispatch!(self, s => s.schedules_page(scope, after, limit).await)
    }

    /// Writes a schedule's editable fields (the caller checked its tenant).
    pub async fn schedule_update(&self, schedule: &Schedule) -> StoreResult<Schedule> {
        dispatch!(self, s => s.schedule_update(schedule).await)
    }

    pub async fn schedule_delete(&self, scope: &TenantScope, id: Uuid) -> StoreResult<bool> {
        dispatch!(self, s => s.schedule_delete(scope, id).await)
    }

    /// Unpaused schedules with a fire time at or before `now`, or a buffered one.
    pub async fn schedules_due(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> StoreResult<Vec<Schedule>> {
        dispatch!(self, s => s.schedules_due(now, limit).await)
    }

    /// Takes or renews the named lease for `holder`; its token if held, `None` if
    /// another holder's lease has not expired (by database time).
    pub async fn lease_acquire(
        &self,
        name: &str,
        holder: Uuid,
        lease: Duration,
    ) -> StoreResult<Option<i64>> {
        dispatch!(self, s => s.lease_acquire(name, holder, lease).await)
    }

    /// Gives the lease up (shutdown), so another process takes over at once.
    pub async fn lease_release(&self, name: &str, holder: Uuid) -> StoreResult<()> {
        dispatch!(self, s => s.lease_release(name, holder).await)
    }

    /// Applies one scheduler step: starts its run (if any) and moves `last_fired_at`
    /// on, in one transaction, only under the scheduler lease and only if nobody moved
    /// the schedule meanwhile (a conflict otherwise).
    pub async fn schedule_advance(&self, advance: &ScheduleAdvance) -> StoreResult<Option<Run>> {
        dispatch!(self, s => s.schedule_advance(advance).await)
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

    /// Every registered worker, newest first.
    pub async fn worker_list(&self) -> StoreResult<Vec<WorkerInfo>> {
        dispatch!(self, s => s.worker_list(None).await)
    }

    /// A page of the worker registry, newest first: at most `limit`, strictly older
    /// than the worker `before` (keyset pagination on the time-ordered id).
    pub async fn workers_page(
        &self,
        before: Option<Uuid>,
        limit: u32,
    ) -> StoreResult<Vec<WorkerInfo>> {
        dispatch!(self, s => s.workers_page(before, limit).await)
    }

    /// Workers not stopped that have heartbeated since `since` (an index serves it, so
    /// a run's why-waiting line does not read the whole registry).
    pub async fn workers_live(&self, since: DateTime<Utc>) -> StoreResult<Vec<WorkerInfo>> {
        dispatch!(self, s => s.worker_list(Some(since)).await)
    }

    /// Forgets workers stopped, or silent, since before `before`.
    pub async fn workers_prune(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        dispatch!(self, s => s.workers_prune(before).await)
    }
}

/// The safety net under the notifications: every [`SWEEP`], one query finds which
/// watched runs ended (or vanished) and wakes their waiters. Stops when nobody watches.
async fn sweep(store: Store, endings: Arc<RunEndings>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(SWEEP) => {}
            _ = endings.unwatched() => {}
        }
        if endings.is_empty() {
            endings.stop_sweeping();
            // A watch made between the check and the store above saw the flag still
            // set and started no sweep: carry on for it.
            if endings.is_empty() || endings.sweeping.swap(true, Ordering::SeqCst) {
                return;
            }
        }
        let watched = endings.watched();
        for chunk in watched.chunks(500) {
            match store.runs_unfinished(chunk).await {
                Ok(live) => {
                    let live: std::collections::HashSet<Uuid> = live.into_iter().collect();
                    for id in chunk.iter().filter(|id| !live.contains(id)) {
                        endings.ended(*id);
                    }
                }
                Err(error) => tracing::warn!(error = %error, "cannot sweep watched runs"),
            }
        }
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

pub(crate) fn to_json<T: serde::Serialize>(value: &Option<T>) -> Option<Value> {
    value
        .as_ref()
        .map(|v| serde_json::to_value(v).expect("store records serialise"))
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(
    value: Value,
    column: &str,
) -> StoreResult<T> {
    serde_json::from_value(value).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
}

pub(crate) fn opt_from_json<T: serde::de::DeserializeOwned>(
    value: Option<Value>,
    column: &str,
) -> StoreResult<Option<T>> {
    value.map(|v| from_json(v, column)).transpose()
}
