//! The tenant's storage space: the prefix `tenants/<installation>/<slug>/` of the blob
//! store (one shared bucket, or the local blob directory), which exists once its
//! manifest object does. The manifest holds the tenant's quota.

use chrono::{DateTime, Utc};
use serde_json::json;
use uuid::Uuid;
use waymark_services::{BlobError, BlobMeta, BlobStore, PutOptions};

use super::names::{storage_manifest, storage_prefix};
use super::plans::Quota;
use super::record::{self, ResourceKind};
use super::{TenantDeps, TenantError};

/// Creates the storage space (its manifest), or finds the one an earlier attempt made,
/// and records it. Returns the prefix.
pub async fn create(
    deps: &TenantDeps,
    slug: &str,
    plan: &str,
    quota: Quota,
    run: Uuid,
    now: DateTime<Utc>,
) -> Result<String, TenantError> {
    let installation = deps.installation().await?;
    let prefix = storage_prefix(installation, slug);
    let manifest = storage_manifest(installation, slug);
    if deps.blobs().head(&manifest).await?.is_none() {
        let body = json!({
            "tenant": slug,
            "installation": installation,
            "plan": plan,
            "quota": quota,
            "prefix": prefix,
            "created_by_run": run,
            "created_at": now,
        });
        deps.blobs()
            .put_bytes(
                &manifest,
                serde_json::to_vec_pretty(&body).expect("manifest serialises"),
                PutOptions::content_type("application/json"),
            )
            .await?;
    }
    record::resource_add(
        deps.store(),
        slug,
        ResourceKind::StoragePrefix,
        &prefix,
        run,
        now,
    )
    .await?;
    Ok(prefix)
}

/// Empties and removes the storage space and forgets it. Tolerates a space that was
/// never created, and a bucket that does not exist (nothing of the tenant is in it).
pub async fn remove(deps: &TenantDeps, slug: &str) -> Result<u64, TenantError> {
    let installation = deps.installation().await?;
    let deleted = delete_prefix(deps.blobs(), &storage_prefix(installation, slug)).await?;
    record::resource_remove(deps.store(), slug, ResourceKind::StoragePrefix, None).await?;
    Ok(deleted)
}

/// Every object of the tenant's storage space, in key order.
pub async fn objects(deps: &TenantDeps, slug: &str) -> Result<Vec<BlobMeta>, TenantError> {
    let installation = deps.installation().await?;
    Ok(deps
        .blobs()
        .list(&storage_prefix(installation, slug))
        .await?)
}

/// `delete_prefix`, where a missing bucket (S3's 404 on the listing) means there is
/// nothing to delete rather than a failure.
pub async fn delete_prefix(blobs: &BlobStore, prefix: &str) -> Result<u64, TenantError> {
    match blobs.delete_prefix(prefix).await {
        Ok(n) => Ok(n),
        Err(BlobError::S3 {
            status: Some(404), ..
        }) => Ok(0),
        Err(e) => Err(e.into()),
    }
}
