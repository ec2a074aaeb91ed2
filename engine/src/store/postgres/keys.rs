//! API keys (only their hashes, and a sealed secret until its one reveal) and the
//! audit log, which every key change appends to in the same transaction.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::PgStore;
use crate::error::StoreError;
use crate::store::{
    from_json, AuditEntry, KeyRecord, NewAudit, NewKey, SealedSecret, SealedTake, StoreResult,
    TenantScope,
};

#[derive(sqlx::FromRow)]
struct KeyRow {
    id: Uuid,
    tenant: String,
    prefix: String,
    secret_hash: String,
    scopes: Value,
    name: Option<String>,
    owner_email: Option<String>,
    created_at: DateTime<Utc>,
    created_by: String,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    revoked_by: Option<String>,
    last_used_at: Option<DateTime<Utc>>,
    sealed_secret: Option<String>,
    revealed_at: Option<DateTime<Utc>>,
    suspended_at: Option<DateTime<Utc>>,
}

impl TryFrom<KeyRow> for KeyRecord {
    type Error = StoreError;

    fn try_from(k: KeyRow) -> StoreResult<Self> {
        Ok(KeyRecord {
            id: k.id,
            tenant: k.tenant,
            prefix: k.prefix,
            secret_hash: k.secret_hash,
            scopes: from_json(k.scopes, "scopes")?,
            name: k.name,
            owner_email: k.owner_email,
            created_at: k.created_at,
            created_by: k.created_by,
            expires_at: k.expires_at,
            revoked_at: k.revoked_at,
            revoked_by: k.revoked_by,
            last_used_at: k.last_used_at,
            awaiting_reveal: k.sealed_secret.is_some(),
            revealed_at: k.revealed_at,
            suspended_at: k.suspended_at,
        })
    }
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    id: i64,
    at: DateTime<Utc>,
    tenant: String,
    actor: String,
    action: String,
    target: Option<String>,
    detail: Value,
    address: Option<String>,
}

impl From<AuditRow> for AuditEntry {
    fn from(a: AuditRow) -> Self {
        AuditEntry {
            id: a.id,
            at: a.at,
            tenant: a.tenant,
            actor: a.actor,
            action: a.action,
            target: a.target,
            detail: a.detail,
            address: a.address,
        }
    }
}

impl PgStore {
    pub(in crate::store) async fn key_insert(
        &self,
        key: &NewKey,
        audit: &NewAudit,
    ) -> StoreResult<KeyRecord> {
        let mut tx = self.pool.begin().await?;
        let row: KeyRow = insert_key(&mut tx, key).await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        row.try_into()
    }

    pub(in crate::store) async fn key_by_prefix(
        &self,
        prefix: &str,
    ) -> StoreResult<Option<KeyRecord>> {
        let row: Option<KeyRow> = sqlx::query_as("SELECT * FROM waymark_keys WHERE prefix = $1")
            .bind(prefix)
            .fetch_optional(&self.pool)
            .await?;
        row.map(KeyRecord::try_from).transpose()
    }

    pub(in crate::store) async fn key_get(
        &self,
        scope: &TenantScope,
        id: Uuid,
    ) -> StoreResult<Option<KeyRecord>> {
        let row: Option<KeyRow> = sqlx::query_as(
            "SELECT * FROM waymark_keys WHERE id = $1 AND ($2::text IS NULL OR tenant = $2)",
        )
        .bind(id)
        .bind(scope.tenant())
        .fetch_optional(&self.pool)
        .await?;
        row.map(KeyRecord::try_from).transpose()
    }

    pub(in crate::store) async fn key_list(
        &self,
        scope: &TenantScope,
    ) -> StoreResult<Vec<KeyRecord>> {
        let rows: Vec<KeyRow> = sqlx::query_as(
            "SELECT * FROM waymark_keys WHERE ($1::text IS NULL OR tenant = $1) ORDER BY created_at, id",
        )
        .bind(scope.tenant())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(KeyRecord::try_from).collect()
    }

    pub(in crate::store) async fn keys_page(
        &self,
        scope: &TenantScope,
        after: Option<Uuid>,
        limit: u32,
    ) -> StoreResult<Vec<KeyRecord>> {
        let rows: Vec<KeyRow> = sqlx::query_as(
            "SELECT * FROM waymark_keys WHERE ($1::text IS NULL OR tenant = $1) AND id > $2 \
             ORDER BY id LIMIT $3",
        )
        .bind(scope.tenant())
        .bind(after.unwrap_or(Uuid::nil()))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(KeyRecord::try_from).collect()
    }

    pub(in crate::store) async fn key_revoke(
        &self,
        scope: &TenantScope,
        id: Uuid,
        actor: &str,
        now: DateTime<Utc>,
        audit: &NewAudit,
    ) -> StoreResult<Option<KeyRecord>> {
        let mut tx = self.pool.begin().await?;
        let row: Option<KeyRow> = sqlx::query_as(
            r#"UPDATE waymark_keys SET revoked_at = COALESCE(revoked_at, $3),
                   revoked_by = COALESCE(revoked_by, $4)
               WHERE id = $1 AND ($2::text IS NULL OR tenant = $2) RETURNING *"#,
        )
        .bind(id)
        .bind(scope.tenant())
        .bind(now)
        .bind(actor)
        .fetch_optional(&mut *tx)
        .await?;
        if row.is_some() {
            insert_audit(&mut tx, audit).await?;
        }
        tx.commit().await?;
        row.map(KeyRecord::try_from).transpose()
    }

    pub(in crate::store) async fn key_take_sealed<T, E>(
        &self,
        scope: &TenantScope,
        id: Uuid,
        now: DateTime<Utc>,
        audit: &NewAudit,
        open: impl FnOnce(&SealedSecret) -> Result<T, E> + Send,
    ) -> StoreResult<SealedTake<T, E>> {
        let mut tx = self.pool.begin().await?;
        let found: Option<(Option<String>, Option<String>)> = sqlx::query_as(
            r#"SELECT sealed_secret, sealed_master_key_id FROM waymark_keys
               WHERE id = $1 AND ($2::text IS NULL OR tenant = $2) FOR UPDATE"#,
        )
        .bind(id)
        .bind(scope.tenant())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((sealed, master_key_id)) = found else {
            return Ok(SealedTake::NotFound);
        };
        let Some(ciphertext) = sealed else {
            return Ok(SealedTake::NothingSealed);
        };
        let opened = match open(&SealedSecret {
            ciphertext,
            master_key_id,
        }) {
            Ok(opened) => opened,
            // Dropping the transaction rolls it back: the ciphertext stays.
            Err(refused) => return Ok(SealedTake::Kept(refused)),
        };
        sqlx::query(
            r#"UPDATE waymark_keys SET sealed_secret = NULL, sealed_master_key_id = NULL, revealed_at = $2
               WHERE id = $1"#,
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(SealedTake::Taken(opened))
    }

    pub(in crate::store) async fn keys_sealed_by(&self) -> StoreResult<Vec<(Option<String>, i64)>> {
        Ok(sqlx::query_as(
            r#"SELECT sealed_master_key_id, count(*) FROM waymark_keys
               WHERE sealed_secret IS NOT NULL GROUP BY sealed_master_key_id
               ORDER BY sealed_master_key_id"#,
        )
        .fetch_all(&self.pool)
        .await?)
    }

    pub(in crate::store) async fn keys_suspend(
        &self,
        tenant: &str,
        suspended: Option<DateTime<Utc>>,
    ) -> StoreResult<u64> {
        let done = sqlx::query("UPDATE waymark_keys SET suspended_at = $2 WHERE tenant = $1")
            .bind(tenant)
            .bind(suspended)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    pub(in crate::store) async fn key_touch(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> StoreResult<()> {
        sqlx::query(
            r#"UPDATE waymark_keys SET last_used_at = $2
               WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2 - interval '60 seconds')"#,
        )
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(in crate::store) async fn keys_count(&self) -> StoreResult<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM waymark_keys")
            .fetch_one(&self.pool)
            .await?)
    }

    pub(in crate::store) async fn audit_append(&self, audit: &NewAudit) -> StoreResult<()> {
        let mut conn = self.pool.acquire().await?;
        insert_audit(&mut conn, audit).await
    }

    pub(in crate::store) async fn audit_list(
        &self,
        scope: &TenantScope,
        before: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<AuditEntry>> {
        let rows: Vec<AuditRow> = sqlx::query_as(
            r#"SELECT * FROM waymark_audit WHERE ($1::text IS NULL OR tenant = $1)
                 AND ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"#,
        )
        .bind(scope.tenant())
        .bind(before)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }
}

/// A key and its audit record inside the caller's transaction (see `Store::key_insert_in`).
pub(in crate::store) async fn key_insert_in(
    conn: &mut PgConnection,
    key: &NewKey,
    audit: &NewAudit,
) -> StoreResult<KeyRecord> {
    let row = insert_key(conn, key).await?;
    insert_audit(conn, audit).await?;
    row.try_into()
}

/// Inserts a key row (its hash, perhaps its sealed secret; never the secret).
async fn insert_key(conn: &mut PgConnection, key: &NewKey) -> StoreResult<KeyRow> {
    Ok(sqlx::query_as(
        r#"INSERT INTO waymark_keys (id, tenant, prefix, secret_hash, scopes, name, owner_email,
                   created_at, created_by, expires_at, sealed_secret,
                   sealed_master_key_id)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING *"#,
    )
    .bind(key.id)
    .bind(&key.tenant)
    .bind(&key.prefix)
    .bind(&key.secret_hash)
    .bind(serde_json::json!(key.scopes))
    .bind(&key.name)
    .bind(&key.owner_email)
    .bind(key.now)
    .bind(&key.created_by)
    .bind(key.expires_at)
    .bind(key.sealed_secret.as_ref().map(|s| &s.ciphertext))
    .bind(
        key.sealed_secret
            .as_ref()
            .and_then(|s| s.master_key_id.as_ref()),
    )
    .fetch_one(&mut *conn)
    .await?)
}

pub(super) async fn insert_audit(conn: &mut PgConnection, a: &NewAudit) -> StoreResult<()> {
    sqlx::query(
        r#"INSERT INTO waymark_audit (at, tenant, actor, action, target, detail, address)
           VALUES ($1, $2, $3, $4, $5, $6, $7)"#,
    )
    .bind(a.at)
    .bind(&a.tenant)
    .bind(&a.actor)
    .bind(&a.action)
    .bind(&a.target)
    .bind(&a.detail)
    .bind(&a.address)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
