//! `waymark_tenant_resources`: what each saga created for a tenant, so that a retry
//! finds it and a removal knows what to remove.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;
use waymark_engine::store::Arg;
use waymark_engine::Store;

use super::{execute, id, text, time};

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
