//! The tenant record (`waymark_tenants`), its resources (`waymark_tenant_resources`),
//! the installation id, and the removal of a deleted tenant's rows from Waymark's own
//! tables. All of the tenant sagas' SQL on the engine's database lives here, in one
//! text per statement for both backends: parameters are written `$n` and become `?n`
//! on SQLite; timestamps are bound as `timestamptz` on PostgreSQL and integer
//! milliseconds on SQLite, ids as `uuid` and text.
//!
//! # Layout
//! - this file: the [`Tenant`] row and its decoding, the statement helpers every part
//!   shares, the installation id, and reading tenants.
//! - `status`: [`TenantStatus`], the tenant's lifecycle.
//! - `provisioning`: reserving a slug and the provisioning saga's status changes.
//! - `deprovisioning`: the deprovisioning claim, suspension, restore, deletion, and
//!   the removal of a deleted tenant's runs.
//! - `resources`: [`ResourceKind`] and the resource rows the sagas keep.

mod deprovisioning;
mod provisioning;
mod resources;
mod status;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;
use waymark_engine::store::{Arg, Row, Tx};
use waymark_engine::{Store, StoreError};

use super::plans::Quota;
use super::{names, TenantError};

pub use deprovisioning::{
    begin_purge, claim_deprovision, claim_deprovision_in, deprovision_key, forget_runs,
    forget_workflow_rows, mark_deleted, reactivate, remember_paused, set_export, suspend,
    DeprovisionClaim,
};
pub use provisioning::{activate, attach_run, fail, reserve, reserve_for_run, Reservation};
pub use resources::{
    resource_add, resource_add_pg, resource_remove, resource_remove_pg, resources, Resource,
    ResourceKind,
};
pub use status::TenantStatus;

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
