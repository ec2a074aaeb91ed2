//! The tenant record (`waymark_tenants`), its resources (`waymark_tenant_resources`),
//! the installation id, and the removal of a deleted tenant's rows from Waymark's own
//! tables. All of the tenant sagas' SQL on the engine's database lives here, in one
//! text per statement for both backends: parameters are written `$n` and become `?n`
//! on SQLite; timestamps are bound as `timestamptz` on PostgreSQL and integer
//! milliseconds on SQLite, ids as `uuid` and text.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;
use waymark_engine::store::{Arg, Row, Tx};
use waymark_engine::{Store, StoreError};

use super::plans::Quota;
use super::{names, TenantError};

/// Where a tenant is in its life. Mirrored by the CHECK constraints of
/// `migrations/*/0003_tenants.sql` and the diagram in README.md.
///
/// ```text
/// provisioning ──▶ active ──▶ suspended ──▶ deleted
///      │              ▲           │
///      ▼              └─restore───┘
///    failed
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantStatus {
    /// The slug is reserved and the provisioning saga is creating its resources.
    Provisioning,
    /// Every resource exists; its keys work.
    Active,
    /// Provisioning failed or was cancelled and everything it made was undone.
    Failed,
    /// Being deprovisioned: its keys do not authenticate, its runs were cancelled, and
    /// it waits out the retention period (a `restore` signal reactivates it).
    Suspended,
    /// Its database space, storage, keys and runs are gone; the record and the export
    /// remain.
    Deleted,
}

impl TenantStatus {
    pub const ALL: [TenantStatus; 5] = [
        TenantStatus::Provisioning,
        TenantStatus::Active,
        TenantStatus::Failed,
        TenantStatus::Suspended,
        TenantStatus::Deleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Provisioning => "provisioning",
            TenantStatus::Active => "active",
            TenantStatus::Failed => "failed",
            TenantStatus::Suspended => "suspended",
            TenantStatus::Deleted => "deleted",
        }
    }
}

impl fmt::Display for TenantStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TenantStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TenantStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown tenant status {s:?}"))
    }
}

/// What kind of thing a resource row names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResourceKind {
    /// PostgreSQL: the NOLOGIN role owning the tenant's schema (cluster-wide).
    DatabaseRole,
    /// PostgreSQL: the tenant's schema.
    DatabaseSchema,
    /// Embedded mode: the tenant's SQLite file.
    DatabaseFile,
    /// The tenant's prefix in the blob store (with its manifest).
    StoragePrefix,
    /// The tenant admin API key (its id).
    ApiKey,
    /// A deprovisioning export (its prefix); kept after deletion.
    Export,
}

impl ResourceKind {
    pub const ALL: [ResourceKind; 6] = [
        ResourceKind::DatabaseRole,
        ResourceKind::DatabaseSchema,
        ResourceKind::DatabaseFile,
        ResourceKind::StoragePrefix,
        ResourceKind::ApiKey,
        ResourceKind::Export,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::DatabaseRole => "database_role",
            ResourceKind::DatabaseSchema => "database_schema",
            ResourceKind::DatabaseFile => "database_file",
            ResourceKind::StoragePrefix => "storage_prefix",
            ResourceKind::ApiKey => "api_key",
            ResourceKind::Export => "export",
        }
    }
}

impl FromStr for ResourceKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ResourceKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| format!("unknown resource kind {s:?}"))
    }
}

/// One resource a tenant's saga created, and which run created it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resource {
    pub kind: ResourceKind,
    pub name: String,
    pub run_id: Uuid,
    pub created_at: DateTime<Utc>,
}

/// A tenant to reserve: what `POST /v1/tenants` was given, with its plan's quotas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    pub slug: String,
    pub name: String,
    pub plan: String,
    pub admin_email: String,
    pub quota: Quota,
}

/// A tenant as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tenant {
    pub slug: String,
    pub name: String,
    pub plan: String,
    pub admin_email: String,
    pub quota: Quota,
    pub status: TenantStatus,
    /// Why it failed.
    pub reason: Option<String>,
    /// The provisioning run.
    pub run_id: Option<Uuid>,
    pub admin_key_id: Option<Uuid>,
    pub deprovision_run_id: Option<Uuid>,
    #[serde(skip)]
    pub deprovisions: i64,
    pub export_prefix: Option<String>,
    /// Schedules the suspension paused, resumed by a restore.
    #[serde(skip)]
    pub paused_schedules: Vec<Uuid>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub activated_at: Option<DateTime<Utc>>,
    pub suspended_at: Option<DateTime<Utc>>,
    pub purge_started_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
}

/// Whose a slug is, after an attempt to reserve it for a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// The tenant row names this run (made now or by an earlier attempt).
    Ours(Tenant),
    /// Another run, or no run yet (another request's transaction), holds the slug.
    Taken(Tenant),
}

/// Whether a deprovisioning run holds a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeprovisionClaim {
    Claimed(Box<Tenant>),
    /// Another deprovisioning run is in flight (or deleted the tenant).
    HeldBy(Uuid),
    /// The tenant is not `active` (and no deprovisioning holds it).
    NotActive(TenantStatus),
    NotFound,
}

// ---------------------------------------------------------------------------------
// One statement text for both backends: the engine's `store::sql` seam.

fn text(s: impl Into<String>) -> Arg {
    Arg::text(s)
}

fn id(u: Uuid) -> Arg {
    Arg::id(u)
}

fn time(t: DateTime<Utc>) -> Arg {
    Arg::time(t)
}

async fn execute(store: &Store, sql: &str, args: &[Arg]) -> Result<u64, sqlx::Error> {
    store
        .sql_execute(sql, args)
        .await
        .map_err(sqlx::Error::from)
}

const TENANT_COLUMNS: &str = "slug, name, plan, admin_email, storage_quota_bytes, runs_quota, \
    status, reason, run_id, admin_key_id, deprovision_run_id, deprovisions, export_prefix, \
    paused_schedules, created_at, updated_at, activated_at, suspended_at, purge_started_at, deleted_at";

fn status_of(s: &str) -> Result<TenantStatus, sqlx::Error> {
    s.parse().map_err(|e: String| sqlx::Error::Decode(e.into()))
}

fn quota(storage: i64, runs: Option<i64>) -> Result<Quota, sqlx::Error> {
    let unsigned = |v: i64| {
        u64::try_from(v).map_err(|_| sqlx::Error::Decode(format!("negative quota {v}").into()))
    };
    Ok(Quota {
        storage_bytes: unsigned(storage)?,
        runs: runs.map(unsigned).transpose()?,
    })
}

fn tenant_from_row(r: &Row) -> Result<Tenant, StoreError> {
    let decode = |e: sqlx::Error| StoreError::Corrupt(e.to_string());
    Ok(Tenant {
        slug: r.text("slug")?,
        name: r.text("name")?,
        plan: r.text("plan")?,
        admin_email: r.text("admin_email")?,
        quota: quota(r.int("storage_quota_bytes")?, r.opt_int("runs_quota")?).map_err(decode)?,
        status: status_of(&r.text("status")?).map_err(decode)?,
        reason: r.opt_text("reason")?,
        run_id: r.opt_id("run_id")?,
        admin_key_id: r.opt_id("admin_key_id")?,
        deprovision_run_id: r.opt_id("deprovision_run_id")?,
        deprovisions: r.int("deprovisions")?,
        export_prefix: r.opt_text("export_prefix")?,
        paused_schedules: serde_json::from_value(r.json("paused_schedules")?)
            .map_err(|e| StoreError::Corrupt(format!("paused_schedules: {e}")))?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
        activated_at: r.opt_time("activated_at")?,
        suspended_at: r.opt_time("suspended_at")?,
        purge_started_at: r.opt_time("purge_started_at")?,
        deleted_at: r.opt_time("deleted_at")?,
    })
}

async fn fetch_tenants(store: &Store, sql: &str, args: &[Arg]) -> Result<Vec<Tenant>, sqlx::Error> {
    let rows = store
        .sql_fetch(sql, args)
        .await
        .map_err(sqlx::Error::from)?;
    rows.iter()
        .map(|r| tenant_from_row(r).map_err(sqlx::Error::from))
        .collect()
}

// ---------------------------------------------------------------------------------
// Installation

/// This database's installation id (12 hex digits, made by the migration).
pub async fn installation_id(store: &Store) -> Result<String, TenantError> {
    let sql = "SELECT id FROM waymark_installation";
    let rows = store.sql_fetch(sql, &[]).await?;
    let id = match rows.first() {
        Some(row) => row.text("id")?,
        None => {
            return Err(TenantError::Refused(
                "the installation id is missing: migrations were not applied".into(),
            ))
        }
    };
    if !names::is_installation_id(&id) {
        return Err(TenantError::Refused(format!(
            "the installation id {id:?} is not 12 hex digits"
        )));
    }
    Ok(id)
}

// ---------------------------------------------------------------------------------
// Reading

pub async fn get(store: &Store, slug: &str) -> Result<Option<Tenant>, sqlx::Error> {
    let sql = format!("SELECT {TENANT_COLUMNS} FROM waymark_tenants WHERE slug = $1");
    Ok(fetch_tenants(store, &sql, &[text(slug)]).await?.pop())
}

/// Every tenant, by slug.
pub async fn list(store: &Store) -> Result<Vec<Tenant>, sqlx::Error> {
    let sql = format!("SELECT {TENANT_COLUMNS} FROM waymark_tenants ORDER BY slug");
    fetch_tenants(store, &sql, &[]).await
}

/// A page of tenants by slug: at most `limit`, strictly after the slug `after`, only
/// the tenant `only` when given (an operator sees its own record alone).
pub async fn list_page(
    store: &Store,
    only: Option<&str>,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<Tenant>, sqlx::Error> {
    // Every slug sorts after the empty string, so "from the start" stays a range on
    // the primary key.
    let sql = format!(
        "SELECT {TENANT_COLUMNS} FROM waymark_tenants \
         WHERE ($1 IS NULL OR slug = $1) AND slug > $2 ORDER BY slug LIMIT $3"
    );
    let args = [
        Arg::Text(only.map(str::to_owned)),
        text(after.unwrap_or_default()),
        Arg::Int(Some(i64::from(limit))),
    ];
    fetch_tenants(store, &sql, &args).await
}

/// The tenant, locked until the caller's transaction ends (on SQLite the transaction
/// holds the only connection, which excludes every other writer already).
pub async fn get_locked(tx: &mut Tx, slug: &str) -> Result<Option<Tenant>, StoreError> {
    let sql = format!(
        "SELECT {TENANT_COLUMNS} FROM waymark_tenants WHERE slug = $1 {}",
        tx.for_update()
    );
    tx.fetch(&sql, &[text(slug)])
        .await?
        .first()
        .map(tenant_from_row)
        .transpose()
}

// ---------------------------------------------------------------------------------
// Provisioning

const RESERVE: &str = "INSERT INTO waymark_tenants (slug, name, plan, admin_email, \
    storage_quota_bytes, runs_quota, status, run_id, created_at, updated_at) \
    VALUES ($1, $2, $3, $4, $5, $6, 'provisioning', $7, $8, $8) \
    ON CONFLICT (slug) DO NOTHING";

fn reserve_args(new: &NewTenant, run: Option<Uuid>, now: DateTime<Utc>) -> Vec<Arg> {
    vec![
        text(&new.slug),
        text(&new.name),
        text(&new.plan),
        text(&new.admin_email),
        Arg::Int(Some(new.quota.storage_bytes as i64)),
        Arg::Int(new.quota.runs.map(|r| r as i64)),
        Arg::Id(run),
        time(now),
    ]
}

/// Reserves the slug inside the caller's transaction, before its run exists (the API
/// then starts the run and [`attach_run`]s it in the same transaction). False if the
/// slug is taken, in any status; a concurrent reservation of the same slug waits for
/// this transaction and then finds it taken.
pub async fn reserve(tx: &mut Tx, new: &NewTenant, now: DateTime<Utc>) -> Result<bool, StoreError> {
    Ok(tx.execute(RESERVE, &reserve_args(new, None, now)).await? == 1)
}

/// Names the provisioning run of a tenant reserved in the same transaction.
pub async fn attach_run(tx: &mut Tx, slug: &str, run: Uuid) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE waymark_tenants SET run_id = $2 WHERE slug = $1 AND run_id IS NULL",
        &[text(slug), id(run)],
    )
    .await?;
    Ok(())
}

/// Reserves the slug for `run`, or finds that an earlier attempt did: idempotent on
/// (slug, run). The provisioning saga's first step, and the API's second statement
/// on SQLite.
pub async fn reserve_for_run(
    store: &Store,
    new: &NewTenant,
    run: Uuid,
    now: DateTime<Utc>,
) -> Result<Reservation, TenantError> {
    execute(store, RESERVE, &reserve_args(new, Some(run), now)).await?;
    let tenant = get(store, &new.slug)
        .await?
        .ok_or_else(|| TenantError::NotYet(format!("tenant {:?} vanished", new.slug)))?;
    Ok(if tenant.run_id == Some(run) {
        Reservation::Ours(tenant)
    } else {
        Reservation::Taken(tenant)
    })
}

/// Marks the tenant `active` once every resource exists. Idempotent.
pub async fn activate(
    store: &Store,
    slug: &str,
    run: Uuid,
    admin_key: Uuid,
    now: DateTime<Utc>,
) -> Result<(), TenantError> {
    execute(
        store,
        "UPDATE waymark_tenants SET status = 'active', activated_at = $4, admin_key_id = $3, \
           updated_at = $4 \
         WHERE slug = $1 AND run_id = $2 AND status = 'provisioning'",
        &[text(slug), id(run), id(admin_key), time(now)],
    )
    .await?;
    match get(store, slug).await? {
        Some(t) if t.run_id == Some(run) && t.status == TenantStatus::Active => Ok(()),
        Some(t) => Err(TenantError::Refused(format!(
            "tenant {slug:?} is {} (run {:?}), not provisioning by run {run}",
            t.status, t.run_id
        ))),
        None => Err(TenantError::Refused(format!("tenant {slug:?} not found"))),
    }
}

/// Marks the tenant `failed` with `reason` if `run` provisions it. Tolerates a tenant
/// that is not this run's (nothing to do) and a repeat.
pub async fn fail(
    store: &Store,
    slug: &str,
    run: Uuid,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    Ok(execute(
        store,
        "UPDATE waymark_tenants SET status = 'failed', reason = $3, admin_key_id = NULL, \
           updated_at = $4 \
         WHERE slug = $1 AND run_id = $2 AND status IN ('provisioning', 'failed')",
        &[text(slug), id(run), text(reason), time(now)],
    )
    .await?
        == 1)
}

// ---------------------------------------------------------------------------------
// Deprovisioning

const CLAIM_DEPROVISION: &str = "UPDATE waymark_tenants \
    SET deprovision_run_id = $2, deprovisions = deprovisions + 1, updated_at = $3 \
    WHERE slug = $1 AND deprovision_run_id IS NULL AND status = 'active'";

fn claim_result(tenant: Option<Tenant>, run: Uuid) -> DeprovisionClaim {
    match tenant {
        None => DeprovisionClaim::NotFound,
        Some(t) if t.deprovision_run_id == Some(run) => DeprovisionClaim::Claimed(Box::new(t)),
        Some(t) => match t.deprovision_run_id {
            Some(other) => DeprovisionClaim::HeldBy(other),
            None => DeprovisionClaim::NotActive(t.status),
        },
    }
}

/// Makes `run` the tenant's deprovisioning run, or finds that it is: idempotent. Only
/// an `active` tenant that no other deprovisioning holds can be claimed.
pub async fn claim_deprovision(
    store: &Store,
    slug: &str,
    run: Uuid,
    now: DateTime<Utc>,
) -> Result<DeprovisionClaim, sqlx::Error> {
    execute(store, CLAIM_DEPROVISION, &[text(slug), id(run), time(now)]).await?;
    Ok(claim_result(get(store, slug).await?, run))
}

/// [`claim_deprovision`] inside the caller's transaction (the API's).
pub async fn claim_deprovision_in(
    tx: &mut Tx,
    slug: &str,
    run: Uuid,
    now: DateTime<Utc>,
) -> Result<DeprovisionClaim, StoreError> {
    tx.execute(CLAIM_DEPROVISION, &[text(slug), id(run), time(now)])
        .await?;
    let sql = format!("SELECT {TENANT_COLUMNS} FROM waymark_tenants WHERE slug = $1");
    let tenant = tx
        .fetch(&sql, &[text(slug)])
        .await?
        .first()
        .map(tenant_from_row)
        .transpose()?;
    Ok(claim_result(tenant, run))
}

/// The idempotency key of the tenant's next deprovisioning run: the same for every
/// retry of one request, new after a restore.
pub fn deprovision_key(tenant: &Tenant) -> String {
    format!("deprovision:{}:{}", tenant.slug, tenant.deprovisions)
}

/// `active` → `suspended` for the run holding the tenant; keeps the first suspension time.
pub async fn suspend(
    store: &Store,
    slug: &str,
    run: Uuid,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    execute(
        store,
        "UPDATE waymark_tenants SET status = 'suspended', \
           suspended_at = COALESCE(suspended_at, $3), updated_at = $3 \
         WHERE slug = $1 AND deprovision_run_id = $2 AND status IN ('active', 'suspended')",
        &[text(slug), id(run), time(now)],
    )
    .await?;
    Ok(())
}

/// `suspended` → `active` and the claim released, unless deletion has begun. True if it
/// changed the row.
pub async fn reactivate(
    store: &Store,
    slug: &str,
    run: Uuid,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    Ok(execute(
        store,
        "UPDATE waymark_tenants SET status = 'active', suspended_at = NULL, \
           deprovision_run_id = NULL, paused_schedules = $4, updated_at = $3 \
         WHERE slug = $1 AND deprovision_run_id = $2 AND status IN ('active', 'suspended') \
           AND purge_started_at IS NULL",
        &[
            text(slug),
            id(run),
            time(now),
            Arg::json(Value::Array(vec![])),
        ],
    )
    .await?
        == 1)
}

/// Adds `schedules` to those the run's suspension paused (before it pauses them, so a
/// crash in between cannot lose one).
pub async fn remember_paused(
    store: &Store,
    slug: &str,
    run: Uuid,
    schedules: &[Uuid],
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let Some(tenant) = get(store, slug).await? else {
        return Ok(());
    };
    let mut all = tenant.paused_schedules;
    all.extend_from_slice(schedules);
    all.sort();
    all.dedup();
    execute(
        store,
        "UPDATE waymark_tenants SET paused_schedules = $3, updated_at = $4 \
         WHERE slug = $1 AND deprovision_run_id = $2",
        &[
            text(slug),
            id(run),
            Arg::json(serde_json::to_value(&all).expect("ids serialise")),
            time(now),
        ],
    )
    .await?;
    Ok(())
}

/// Records (or clears) where the run's export lives.
pub async fn set_export(
    store: &Store,
    slug: &str,
    run: Uuid,
    prefix: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    execute(
        store,
        "UPDATE waymark_tenants SET export_prefix = $3, updated_at = $4 \
         WHERE slug = $1 AND deprovision_run_id = $2",
        &[
            text(slug),
            id(run),
            Arg::Text(prefix.map(str::to_owned)),
            time(now),
        ],
    )
    .await?;
    Ok(())
}

/// Deletion begins: from now on a cancelled deprovisioning leaves the tenant suspended.
pub async fn begin_purge(
    store: &Store,
    slug: &str,
    run: Uuid,
    now: DateTime<Utc>,
) -> Result<(), TenantError> {
    execute(
        store,
        "UPDATE waymark_tenants SET purge_started_at = COALESCE(purge_started_at, $3), \
           updated_at = $3 \
         WHERE slug = $1 AND deprovision_run_id = $2 AND status = 'suspended'",
        &[text(slug), id(run), time(now)],
    )
    .await?;
    match get(store, slug).await? {
        Some(t) if t.deprovision_run_id == Some(run) && t.purge_started_at.is_some() => Ok(()),
        Some(t) => Err(TenantError::Refused(format!(
            "tenant {slug:?} is {} and held by {:?}, not suspended by run {run}",
            t.status, t.deprovision_run_id
        ))),
        None => Err(TenantError::Refused(format!("tenant {slug:?} not found"))),
    }
}

/// `suspended` → `deleted`, dropping every resource row but the export and appending
/// the audit record, in one transaction: a retry after a crash neither repeats the
/// audit record nor loses it. True if this call made the change.
pub async fn mark_deleted(
    store: &Store,
    slug: &str,
    run: Uuid,
    detail: Value,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let update = "UPDATE waymark_tenants SET status = 'deleted', deleted_at = $3, \
          suspended_at = NULL, admin_key_id = NULL, updated_at = $3 \
        WHERE slug = $1 AND deprovision_run_id = $2 AND status = 'suspended'";
    let drop_resources =
        "DELETE FROM waymark_tenant_resources WHERE tenant = $1 AND kind <> 'export'";
    let audit = "INSERT INTO waymark_audit (at, tenant, actor, action, target, detail) \
        VALUES ($1, $2, $3, 'tenant.deleted', $4, $5)";
    let audit_args = [
        time(now),
        text(slug),
        text(format!("run:{run}")),
        text(format!("tenant:{slug}")),
        Arg::json(detail),
    ];
    let mut tx = store.begin().await.map_err(sqlx::Error::from)?;
    let changed = tx
        .execute(update, &[text(slug), id(run), time(now)])
        .await
        .map_err(sqlx::Error::from)?
        == 1;
    if changed {
        tx.execute(drop_resources, &[text(slug)])
            .await
            .map_err(sqlx::Error::from)?;
        tx.execute(audit, &audit_args)
            .await
            .map_err(sqlx::Error::from)?;
    }
    tx.commit().await.map_err(sqlx::Error::from)?;
    Ok(changed)
}

// ---------------------------------------------------------------------------------
// Resources

/// Records a resource `run` created; a repeat keeps the first row.
pub async fn resource_add(
    store: &Store,
    slug: &str,
    kind: ResourceKind,
    name: &str,
    run: Uuid,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    execute(
        store,
        "INSERT INTO waymark_tenant_resources (tenant, kind, name, run_id, created_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant, kind, name) DO NOTHING",
        &[
            text(slug),
            text(kind.as_str()),
            text(name),
            id(run),
            time(now),
        ],
    )
    .await?;
    Ok(())
}

/// [`resource_add`] inside the database space's own PostgreSQL transaction, which
/// creates the role and schema it records (that work exists on PostgreSQL only).
pub async fn resource_add_pg(
    conn: &mut sqlx::PgConnection,
    slug: &str,
    kind: ResourceKind,
    name: &str,
    run: Uuid,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO waymark_tenant_resources (tenant, kind, name, run_id, created_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant, kind, name) DO NOTHING",
    )
    .bind(slug)
    .bind(kind.as_str())
    .bind(name)
    .bind(run)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// [`resource_remove`] inside the database space's own PostgreSQL transaction.
pub async fn resource_remove_pg(
    conn: &mut sqlx::PgConnection,
    slug: &str,
    kind: ResourceKind,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM waymark_tenant_resources WHERE tenant = $1 AND kind = $2")
        .bind(slug)
        .bind(kind.as_str())
        .execute(conn)
        .await?;
    Ok(())
}

/// Forgets resources of `kind` (all of them, or the one called `name`).
pub async fn resource_remove(
    store: &Store,
    slug: &str,
    kind: ResourceKind,
    name: Option<&str>,
) -> Result<(), sqlx::Error> {
    execute(
        store,
        "DELETE FROM waymark_tenant_resources \
         WHERE tenant = $1 AND kind = $2 AND ($3 IS NULL OR name = $3)",
        &[
            text(slug),
            text(kind.as_str()),
            Arg::Text(name.map(str::to_owned)),
        ],
    )
    .await?;
    Ok(())
}

/// The tenant's resources, oldest first.
pub async fn resources(store: &Store, slug: &str) -> Result<Vec<Resource>, sqlx::Error> {
    let sql = "SELECT kind, name, run_id, created_at FROM waymark_tenant_resources \
               WHERE tenant = $1 ORDER BY created_at, kind, name";
    let rows = store
        .sql_fetch(sql, &[text(slug)])
        .await
        .map_err(sqlx::Error::from)?;
    rows.iter()
        .map(|r| {
            Ok(Resource {
                kind: r
                    .text("kind")
                    .map_err(sqlx::Error::from)?
                    .parse()
                    .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
                name: r.text("name").map_err(sqlx::Error::from)?,
                run_id: r.id("run_id").map_err(sqlx::Error::from)?,
                created_at: r.time("created_at").map_err(sqlx::Error::from)?,
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// The tenant's rows in Waymark's own tables

/// Deletes the tenant's ended runs (their history, signals, compensations and tags go
/// with them) and the mail ledger rows of their steps, `batch` runs per transaction.
/// Returns how many runs were deleted and the `Message-ID`s of the ledger rows deleted
/// (to find their outbox files).
pub async fn forget_runs(
    store: &Store,
    slug: &str,
    batch: u32,
) -> Result<(u64, Vec<String>), sqlx::Error> {
    let mut deleted = 0;
    let mut messages = Vec::new();
    loop {
        let mut tx = store.begin().await?;
        let ids = store.runs_delete_ended_in(&mut tx, slug, batch).await?;
        messages.extend(waymark_services::mail::ledger::delete_for_runs_in(&mut tx, &ids).await?);
        tx.commit().await?;
        deleted += ids.len() as u64;
        if ids.len() < batch as usize {
            return Ok((deleted, messages));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_kinds_round_trip_through_their_names() {
        for status in TenantStatus::ALL {
            assert_eq!(status.as_str().parse::<TenantStatus>(), Ok(status));
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                serde_json::json!(status.as_str())
            );
        }
        for kind in ResourceKind::ALL {
            assert_eq!(kind.as_str().parse::<ResourceKind>(), Ok(kind));
        }
        assert!("archived".parse::<TenantStatus>().is_err());
    }
}
