//! Deprovisioning: one run claims the tenant, suspends it, may hand it back (a restore),
//! and once deletion begins marks it deleted and removes its rows in Waymark's own
//! tables.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;
use waymark_engine::store::{Arg, Tx};
use waymark_engine::{Store, StoreError};

use super::{
    execute, get, id, tenant_from_row, text, time, Tenant, TenantError, TenantStatus,
    TENANT_COLUMNS,
};

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

/// Deletes the tenant's rows from the workflows' own tables ([`crate::tenant_tables`]),
/// in one transaction; the number of rows deleted.
pub async fn forget_workflow_rows(store: &Store, slug: &str) -> Result<u64, sqlx::Error> {
    let mut tx = store.begin().await?;
    let mut deleted = 0;
    for table in crate::tenant_tables() {
        deleted += tx
            .execute(
                &format!("DELETE FROM {table} WHERE tenant = $1"),
                &[Arg::text(slug)],
            )
            .await?;
    }
    tx.commit().await?;
    Ok(deleted)
}
