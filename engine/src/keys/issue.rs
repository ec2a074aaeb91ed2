//! The key use cases that need the store: issuing a key (its hash and audit record in
//! one transaction, or in a caller's), and revealing a sealed secret once. The key
//! model they use lives in [`super`], which does not depend on the store.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{IssueKey, KeyRecord, NewKey, RevealError, SealedSecret, Sealer, Secret};
use crate::error::StoreError;
use crate::store::{NewAudit, SealedTake, Store, TenantScope};

/// Issues a key: a fresh secret (or `secret`, e.g. a bootstrap key given by the
/// operator), stored as a hash with its audit record in one transaction. The secret is
/// returned once and never stored.
pub async fn issue(
    store: &Store,
    request: IssueKey,
    secret: Option<Secret>,
    now: DateTime<Utc>,
) -> Result<(KeyRecord, Secret), StoreError> {
    let secret = secret.unwrap_or_else(Secret::generate);
    let record = insert(store, request, &secret, None, now).await?;
    Ok((record, secret))
}

/// Issues a key whose secret nobody sees now (a scheduled rotation, a new tenant's
/// admin key): it is kept sealed until its owner reveals it once with [`reveal`].
pub async fn issue_sealed(
    store: &Store,
    sealer: &Sealer,
    request: IssueKey,
    now: DateTime<Utc>,
) -> Result<KeyRecord, StoreError> {
    let secret = Secret::generate();
    insert(store, request, &secret, Some(sealer), now).await
}

async fn insert(
    store: &Store,
    request: IssueKey,
    secret: &Secret,
    sealer: Option<&Sealer>,
    now: DateTime<Utc>,
) -> Result<KeyRecord, StoreError> {
    let (key, audit) = prepare_key(request, secret, sealer, now);
    store.key_insert(&key, &audit).await
}

/// The rows a new key is stored as (its hash, and its secret sealed when `sealer`
/// is given) and its audit record, for callers that insert them in a transaction of
/// their own (a rotation inserts its run too).
pub fn prepare_key(
    request: IssueKey,
    secret: &Secret,
    sealer: Option<&Sealer>,
    now: DateTime<Utc>,
) -> (NewKey, NewAudit) {
    let prefix = secret
        .prefix()
        .expect("secrets are made or parsed with a prefix")
        .to_owned();
    let id = Uuid::now_v7();
    let sealed_secret = sealer.map(|s| SealedSecret {
        ciphertext: s.seal(id, secret),
        master_key_id: Some(s.key_id().to_owned()),
    });
    let key = NewKey {
        id,
        tenant: request.tenant.clone(),
        prefix: prefix.clone(),
        secret_hash: secret.hash(),
        scopes: request.scopes.clone(),
        name: request.name.clone(),
        owner_email: request.owner_email.clone(),
        expires_at: request.expires_at,
        created_by: request.actor.clone(),
        sealed_secret,
        now,
    };
    let audit = NewAudit {
        tenant: request.tenant,
        actor: request.actor,
        action: "key.created".into(),
        target: Some(format!("key:{id}")),
        detail: serde_json::json!({
            "prefix": prefix,
            "scopes": request.scopes,
            "name": request.name,
            "expires_at": request.expires_at,
        }),
        address: request.address,
        at: now,
    };
    (key, audit)
}

/// Reveals a sealed secret once. It is opened first, inside the transaction that
/// holds the key's row; only if it opens is the ciphertext deleted, with the reveal's
/// audit record, so a second reveal finds nothing and a failed one loses nothing.
pub async fn reveal(
    store: &Store,
    sealer: &Sealer,
    scope: &TenantScope,
    id: Uuid,
    actor: &str,
    address: Option<String>,
    now: DateTime<Utc>,
) -> Result<Secret, RevealError> {
    let key = store
        .key_get(scope, id)
        .await?
        .ok_or(RevealError::NotFound)?;
    let audit = NewAudit {
        tenant: key.tenant.clone(),
        actor: actor.to_owned(),
        action: "key.revealed".into(),
        target: Some(format!("key:{id}")),
        detail: serde_json::json!({ "prefix": key.prefix }),
        address,
        at: now,
    };
    match store
        .key_take_sealed(scope, id, now, &audit, |sealed| {
            sealer.open_sealed(id, sealed)
        })
        .await?
    {
        SealedTake::Taken(secret) => Ok(secret),
        SealedTake::Kept(refused) => Err(refused),
        SealedTake::NotFound => Err(RevealError::NotFound),
        SealedTake::NothingSealed => Err(RevealError::NothingToReveal),
    }
}
