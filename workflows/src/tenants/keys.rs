//! The tenant's API keys as resources: revoked through the store (so the audit log
//! records each revocation), then deleted.

use chrono::{DateTime, Utc};
use uuid::Uuid;
use waymark_engine::store::NewAudit;
use waymark_engine::TenantScope;

use super::record::{self, ResourceKind};
use super::{TenantDeps, TenantError};

/// Revokes one key (with its audit record). Tolerates a key already revoked or gone.
pub async fn revoke(
    deps: &TenantDeps,
    slug: &str,
    key: Uuid,
    actor: &str,
    why: &str,
    now: DateTime<Utc>,
) -> Result<(), TenantError> {
    let audit = NewAudit {
        tenant: slug.to_owned(),
        actor: actor.to_owned(),
        action: "key.revoked".into(),
        target: Some(format!("key:{key}")),
        detail: serde_json::json!({ "reason": why }),
        address: None,
        at: now,
    };
    deps.store()
        .key_revoke(
            &TenantScope::Tenant(slug.to_owned()),
            key,
            actor,
            now,
            &audit,
        )
        .await?;
    Ok(())
}

/// Revokes and deletes the tenant's keys (those made by `created_by`, or all of them)
/// and forgets them as resources. Returns how many rows were deleted.
pub async fn remove(
    deps: &TenantDeps,
    slug: &str,
    created_by: Option<&str>,
    run: Uuid,
    why: &str,
    now: DateTime<Utc>,
) -> Result<u64, TenantError> {
    let actor = format!("run:{run}");
    let keys = deps
        .store()
        .key_list(&TenantScope::Tenant(slug.to_owned()))
        .await?;
    for key in keys
        .iter()
        .filter(|k| created_by.is_none_or(|c| k.created_by == c) && k.revoked_at.is_none())
    {
        revoke(deps, slug, key.id, &actor, why, now).await?;
    }
    let deleted = deps.store().keys_delete(slug, created_by).await?;
    record::resource_remove(deps.store(), slug, ResourceKind::ApiKey, None).await?;
    Ok(deleted)
}
