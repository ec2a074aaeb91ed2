//! Provisioning: the slug reserved (by the API's transaction or the saga's first
//! step), then the tenant marked active or failed.

use chrono::{DateTime, Utc};
use uuid::Uuid;
use waymark_engine::store::{Arg, Tx};
use waymark_engine::{Store, StoreError};

use super::{execute, get, id, text, time, NewTenant, Tenant, TenantError, TenantStatus};

/// Whose a slug is, after an attempt to reserve it for a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// The tenant row names this run (made now or by an earlier attempt).
    Ours(Tenant),
    /// Another run, or no run yet (another request's transaction), holds the slug.
    Taken(Tenant),
}

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
