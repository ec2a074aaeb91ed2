//! The tenant's database space: where its own tables (the tenant migration set in
//! `workflows/tenant_migrations/`) live.
//!
//! - **PostgreSQL**: a schema `tenant_<slug>` (in Waymark's database) owned by a NOLOGIN
//!   role `waymark_<installation>_<slug>`. The role is granted nothing but what owning
//!   its schema gives; the migrations run as that role (`SET LOCAL ROLE`) with the
//!   schema as `search_path`, so every table belongs to it. Creation is one transaction
//!   under an advisory lock on the role name: a crash leaves nothing half made, and two
//!   attempts of one step (a lost lease) cannot both create.
//! - **Embedded SQLite**: a database file `<data dir>/tenants/<slug>.sqlite3`.
//!
//! A schema of the tenant's name that this installation's role does not own is refused
//! rather than adopted (and never dropped): it is someone else's.

use std::path::Path;

use chrono::{DateTime, Utc};
use futures_util::{Stream, TryStreamExt};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::{Connection, PgPool, Row, SqliteConnection};
use uuid::Uuid;
use waymark_engine::Store;
use waymark_services::BlobStore;

use super::export::{ExportedFile, JsonlWriter};
use super::names::{quote_ident, role_name, schema_name, sqlite_file};
use super::plans::Quota;
use super::record::{self, ResourceKind};
use super::{TenantDeps, TenantError};

/// One migration of the tenant migration set.
#[derive(Debug, Clone, Copy)]
pub struct TenantMigration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// The tenant migration set on PostgreSQL, in order.
pub const PG_MIGRATIONS: &[TenantMigration] = &[TenantMigration {
    version: 1,
    name: "plan_tables",
    sql: include_str!("../../tenant_migrations/postgres/0001_plan_tables.sql"),
}];

/// The tenant migration set on SQLite, in order.
pub const SQLITE_MIGRATIONS: &[TenantMigration] = &[TenantMigration {
    version: 1,
    name: "plan_tables",
    sql: include_str!("../../tenant_migrations/sqlite/0001_plan_tables.sql"),
}];

/// What a new database space holds besides its tables.
#[derive(Debug, Clone)]
pub struct SpaceSpec<'a> {
    pub slug: &'a str,
    pub plan: &'a str,
    pub quota: Quota,
    pub admin_email: &'a str,
    pub run: Uuid,
    pub now: DateTime<Utc>,
}

/// Creates the tenant's database space, or finds the one an earlier attempt made, and
/// brings it to the latest tenant migration. Records it as the tenant's resources.
pub async fn create(deps: &TenantDeps, spec: &SpaceSpec<'_>) -> Result<(), TenantError> {
    match deps.store() {
        Store::Postgres(pg) => {
            let installation = deps.installation().await?;
            pg_create(pg.pool(), installation, spec).await
        }
        Store::Sqlite(_) => {
            let path = sqlite_file(deps.data_dir(), spec.slug);
            sqlite_create(&path, spec).await?;
            record::resource_add(
                deps.store(),
                spec.slug,
                ResourceKind::DatabaseFile,
                &path.display().to_string(),
                spec.run,
                spec.now,
            )
            .await?;
            Ok(())
        }
    }
}

/// Removes the tenant's database space and forgets it. Tolerates a space that was never
/// (or only partly) created, and leaves a schema it does not own alone.
pub async fn remove(deps: &TenantDeps, slug: &str) -> Result<(), TenantError> {
    match deps.store() {
        Store::Postgres(pg) => {
            let installation = deps.installation().await?;
            pg_remove(pg.pool(), installation, slug).await
        }
        Store::Sqlite(_) => {
            sqlite_remove(&sqlite_file(deps.data_dir(), slug)).await?;
            record::resource_remove(deps.store(), slug, ResourceKind::DatabaseFile, None).await?;
            Ok(())
        }
    }
}

/// Streams every table of the tenant's database space, in table name order, into the
/// blob store as `<key_prefix><table>.jsonl`: one JSON object per row, the lines in
/// byte order, so the same data exports to the same bytes (and checksum). Rows are
/// read with a cursor and written as they come: memory does not grow with the table.
pub async fn export(
    deps: &TenantDeps,
    slug: &str,
    key_prefix: &str,
) -> Result<Vec<ExportedFile>, TenantError> {
    match deps.store() {
        Store::Postgres(pg) => {
            let installation = deps.installation().await?;
            pg_export(pg.pool(), installation, slug, deps.blobs(), key_prefix).await
        }
        Store::Sqlite(_) => {
            sqlite_export(
                &sqlite_file(deps.data_dir(), slug),
                deps.blobs(),
                key_prefix,
            )
            .await
        }
    }
}

/// Writes one table's rows (`lines`, already in order) into `<key_prefix><table>.jsonl`.
async fn export_table<S>(
    blobs: &BlobStore,
    key_prefix: &str,
    table: &str,
    lines: S,
) -> Result<ExportedFile, TenantError>
where
    S: Stream<Item = Result<String, sqlx::Error>> + Unpin,
{
    let mut file = JsonlWriter::create(blobs, &format!("{key_prefix}{table}.jsonl")).await?;
    let filled = copy_lines(lines, &mut file).await;
    file.finish_if(filled).await
}

async fn copy_lines<S>(mut lines: S, file: &mut JsonlWriter) -> Result<(), TenantError>
where
    S: Stream<Item = Result<String, sqlx::Error>> + Unpin,
{
    while let Some(line) = lines.try_next().await? {
        file.line(&line).await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// PostgreSQL

/// Runs `sql` (statements without parameters) with the simple query protocol.
async fn pg_simple(conn: &mut sqlx::PgConnection, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::Executor::execute(conn, sql).await?;
    Ok(())
}

async fn lock_role(conn: &mut sqlx::PgConnection, role: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(role)
        .execute(conn)
        .await?;
    Ok(())
}

async fn role_exists(conn: &mut sqlx::PgConnection, role: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
        .bind(role)
        .fetch_one(conn)
        .await
}

async fn schema_owner(
    conn: &mut sqlx::PgConnection,
    schema: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT pg_get_userbyid(nspowner)::text FROM pg_namespace WHERE nspname = $1",
    )
    .bind(schema)
    .fetch_optional(conn)
    .await
}

async fn pg_create(
    pool: &PgPool,
    installation: &str,
    spec: &SpaceSpec<'_>,
) -> Result<(), TenantError> {
    let role = role_name(installation, spec.slug);
    let schema = schema_name(spec.slug);
    let (q_role, q_schema) = (quote_ident(&role), quote_ident(&schema));
    let mut tx = pool.begin().await?;
    lock_role(&mut tx, &role).await?;
    match schema_owner(&mut tx, &schema).await? {
        Some(owner) if owner != role => {
            return Err(TenantError::Refused(format!(
                "schema {schema} already exists and belongs to {owner}, not to {role}: \
                 refusing to use or change it"
            )));
        }
        _ => {}
    }
    if !role_exists(&mut tx, &role).await? {
        pg_simple(&mut tx, &format!("CREATE ROLE {q_role} NOLOGIN")).await?;
    }
    // Creating a schema for a role, and acting as it, needs membership: a superuser has
    // it implicitly; a CREATEROLE user grants it to itself.
    let member: bool = sqlx::query_scalar("SELECT pg_has_role(current_user, $1, 'MEMBER')")
        .bind(&role)
        .fetch_one(&mut *tx)
        .await?;
    if !member {
        pg_simple(&mut tx, &format!("GRANT {q_role} TO CURRENT_USER")).await?;
    }
    if schema_owner(&mut tx, &schema).await?.is_none() {
        pg_simple(&mut tx, &format!(
            "CREATE SCHEMA {q_schema} AUTHORIZATION {q_role}; REVOKE ALL ON SCHEMA {q_schema} FROM PUBLIC"
        ))
        .await?;
    }
    record::resource_add_pg(
        &mut tx,
        spec.slug,
        ResourceKind::DatabaseRole,
        &role,
        spec.run,
        spec.now,
    )
    .await?;
    record::resource_add_pg(
        &mut tx,
        spec.slug,
        ResourceKind::DatabaseSchema,
        &schema,
        spec.run,
        spec.now,
    )
    .await?;

    // From here on, as the tenant's role inside its schema: what is created is its own.
    pg_simple(
        &mut tx,
        &format!(
            "SET LOCAL ROLE {q_role}; SET LOCAL search_path TO {q_schema}; \
         CREATE TABLE IF NOT EXISTS {q_schema}.waymark_tenant_migrations ( \
             version bigint PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL)"
        ),
    )
    .await?;
    // Statements naming a tenant's schema are not kept prepared: each tenant's text differs.
    let applied: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT version FROM {q_schema}.waymark_tenant_migrations"
    ))
    .persistent(false)
    .fetch_all(&mut *tx)
    .await?;
    for migration in PG_MIGRATIONS {
        if applied.contains(&migration.version) {
            continue;
        }
        pg_simple(&mut tx, migration.sql).await?;
        sqlx::query(&format!(
            "INSERT INTO {q_schema}.waymark_tenant_migrations (version, name, applied_at) \
             VALUES ($1, $2, $3)"
        ))
        .persistent(false)
        .bind(migration.version)
        .bind(migration.name)
        .bind(spec.now)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(&format!(
        "INSERT INTO {q_schema}.plan (singleton, name, storage_bytes, runs, updated_at) \
         VALUES (true, $1, $2, $3, $4) \
         ON CONFLICT (singleton) DO UPDATE SET name = EXCLUDED.name, \
           storage_bytes = EXCLUDED.storage_bytes, runs = EXCLUDED.runs, updated_at = EXCLUDED.updated_at"
    ))
    .persistent(false)
    .bind(spec.plan)
    .bind(spec.quota.storage_bytes as i64)
    .bind(spec.quota.runs.map(|r| r as i64))
    .bind(spec.now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!(
        "INSERT INTO {q_schema}.members (email, role, created_at) VALUES ($1, 'admin', $2) \
         ON CONFLICT (email) DO NOTHING"
    ))
    .persistent(false)
    .bind(spec.admin_email)
    .bind(spec.now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn pg_remove(pool: &PgPool, installation: &str, slug: &str) -> Result<(), TenantError> {
    let role = role_name(installation, slug);
    let schema = schema_name(slug);
    let (q_role, q_schema) = (quote_ident(&role), quote_ident(&schema));
    let mut tx = pool.begin().await?;
    lock_role(&mut tx, &role).await?;
    if schema_owner(&mut tx, &schema).await?.as_deref() == Some(role.as_str()) {
        pg_simple(&mut tx, &format!("DROP SCHEMA {q_schema} CASCADE")).await?;
    }
    if role_exists(&mut tx, &role).await? {
        // Whatever else the role still owns or was granted in this database goes with
        // it; a role cannot be dropped while it does.
        pg_simple(
            &mut tx,
            &format!("DROP OWNED BY {q_role}; DROP ROLE {q_role}"),
        )
        .await?;
    }
    record::resource_remove_pg(&mut tx, slug, ResourceKind::DatabaseSchema).await?;
    record::resource_remove_pg(&mut tx, slug, ResourceKind::DatabaseRole).await?;
    tx.commit().await?;
    Ok(())
}

async fn pg_export(
    pool: &PgPool,
    installation: &str,
    slug: &str,
    blobs: &BlobStore,
    key_prefix: &str,
) -> Result<Vec<ExportedFile>, TenantError> {
    let role = role_name(installation, slug);
    let schema = schema_name(slug);
    let mut conn = pool.acquire().await?;
    if schema_owner(&mut conn, &schema).await?.as_deref() != Some(role.as_str()) {
        return Err(TenantError::Refused(format!(
            "the tenant's schema {schema} (owned by {role}) does not exist"
        )));
    }
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') ORDER BY c.relname",
    )
    .bind(&schema)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::new();
    for table in tables {
        // COLLATE "C" compares bytes, as the export has always been sorted.
        let sql = format!(
            "SELECT line FROM (SELECT row_to_json(t)::text AS line FROM {}.{} t) AS rows \
             ORDER BY line COLLATE \"C\"",
            quote_ident(&schema),
            quote_ident(&table)
        );
        let lines = sqlx::query_scalar(&sql).persistent(false).fetch(&mut *conn);
        out.push(export_table(blobs, key_prefix, &table, lines).await?);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------
// SQLite

async fn lite_simple(conn: &mut SqliteConnection, sql: &str) -> Result<(), sqlx::Error> {
    sqlx::Executor::execute(conn, sql).await?;
    Ok(())
}

async fn open_sqlite(path: &Path, create: bool) -> Result<SqliteConnection, TenantError> {
    if create {
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|source| TenantError::Io {
                    action: "create the directory",
                    path: dir.to_owned(),
                    source,
                })?;
        }
    }
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(create)
        // No -wal/-shm companions: removing the space is removing one file.
        .journal_mode(SqliteJournalMode::Delete);
    Ok(SqliteConnection::connect_with(&options).await?)
}

async fn sqlite_create(path: &Path, spec: &SpaceSpec<'_>) -> Result<(), TenantError> {
    let mut conn = open_sqlite(path, true).await?;
    let mut tx = conn.begin().await?;
    lite_simple(&mut tx, "CREATE TABLE IF NOT EXISTS waymark_tenant_migrations ( \
             version INTEGER PRIMARY KEY NOT NULL, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",)
    .await?;
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM waymark_tenant_migrations")
        .fetch_all(&mut *tx)
        .await?;
    let now = spec.now.timestamp_millis();
    for migration in SQLITE_MIGRATIONS {
        if applied.contains(&migration.version) {
            continue;
        }
        lite_simple(&mut tx, migration.sql).await?;
        sqlx::query(
            "INSERT INTO waymark_tenant_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
        )
        .bind(migration.version)
        .bind(migration.name)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO plan (singleton, name, storage_bytes, runs, updated_at) VALUES (1, ?1, ?2, ?3, ?4) \
         ON CONFLICT (singleton) DO UPDATE SET name = excluded.name, \
           storage_bytes = excluded.storage_bytes, runs = excluded.runs, updated_at = excluded.updated_at",
    )
    .bind(spec.plan)
    .bind(spec.quota.storage_bytes as i64)
    .bind(spec.quota.runs.map(|r| r as i64))
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO members (email, role, created_at) VALUES (?1, 'admin', ?2) \
         ON CONFLICT (email) DO NOTHING",
    )
    .bind(spec.admin_email)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    conn.close().await?;
    Ok(())
}

async fn sqlite_remove(path: &Path) -> Result<(), TenantError> {
    // Something at the path that is not a file was not made by us: leave it.
    if let Ok(meta) = tokio::fs::symlink_metadata(path).await {
        if !meta.is_file() {
            return Ok(());
        }
    }
    let mut companions = vec![path.to_owned()];
    for suffix in ["-journal", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        companions.push(name.into());
    }
    for file in companions {
        match tokio::fs::remove_file(&file).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(TenantError::Io {
                    action: "remove",
                    path: file,
                    source,
                })
            }
        }
    }
    Ok(())
}

async fn sqlite_export(
    path: &Path,
    blobs: &BlobStore,
    key_prefix: &str,
) -> Result<Vec<ExportedFile>, TenantError> {
    if !tokio::fs::try_exists(path).await.unwrap_or(false) {
        return Err(TenantError::Refused(format!(
            "the tenant's database file {} does not exist",
            path.display()
        )));
    }
    let mut conn = open_sqlite(path, false).await?;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
         ORDER BY name",
    )
    .fetch_all(&mut conn)
    .await?;
    let mut out = Vec::new();
    for table in tables {
        let columns: Vec<String> = sqlx::query("SELECT name FROM pragma_table_info(?1)")
            .bind(&table)
            .fetch_all(&mut conn)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<_, _>>()?;
        let pairs: Vec<String> = columns
            .iter()
            .map(|c| format!("{}, {}", sql_string(c), quote_ident(c)))
            .collect();
        // BINARY (SQLite's default collation) compares bytes.
        let sql = format!(
            "SELECT line FROM (SELECT json_object({}) AS line FROM {}) ORDER BY line COLLATE BINARY",
            pairs.join(", "),
            quote_ident(&table)
        );
        let lines = sqlx::query_scalar(&sql).fetch(&mut conn);
        out.push(export_table(blobs, key_prefix, &table, lines).await?);
    }
    conn.close().await?;
    Ok(out)
}

/// `'text'` with `'` doubled: an SQL string literal.
fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_backends_ship_the_same_tenant_migration_versions() {
        let pg: Vec<_> = PG_MIGRATIONS.iter().map(|m| (m.version, m.name)).collect();
        let lite: Vec<_> = SQLITE_MIGRATIONS
            .iter()
            .map(|m| (m.version, m.name))
            .collect();
        assert_eq!(pg, lite);
        assert!(pg.windows(2).all(|w| w[0].0 < w[1].0), "in order");
    }

    #[test]
    fn string_literals_double_their_quotes() {
        assert_eq!(sql_string("it's"), "'it''s'");
    }
}
