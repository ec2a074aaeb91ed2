//! A workflow's own tables: its [`Schema`], migrations per backend that
//! [`Store::migrate`](super::Store::migrate) applies after the engine's own.
//!
//! The engine's migrations live in `migrations/<backend>/` and sqlx records them in
//! `_sqlx_migrations`. A workflow's live with the workflow (for example
//! `workflows/src/disputes/migrations/<backend>/`), numbered from 1 within its schema,
//! and are recorded in `waymark_schema_migrations` by schema name, so two workflows
//! never compete for a version number. The same rules hold for both:
//! - one process migrates at a time (on PostgreSQL the whole migration, engine and
//!   schemas, runs under one advisory lock; SQLite has a single writer);
//! - each migration commits with its record, so a crash leaves it applied or not;
//! - a database that holds more than this binary knows (a newer version of a known
//!   schema, or a schema it does not know) is refused, like a newer engine schema;
//! - a migration edited after it was applied is refused (its SHA-256 is recorded).
//!
//! ```ignore
//! pub const SCHEMA: Schema = Schema {
//!     name: "shop",
//!     postgres: &[Migration::new(1, "orders", include_str!("migrations/postgres/0001_orders.sql"))],
//!     sqlite: &[Migration::new(1, "orders", include_str!("migrations/sqlite/0001_orders.sql"))],
//! };
//! let store = Store::connect(&config).await?.with_schemas(vec![SCHEMA]);
//! store.migrate().await?;
//! ```

use std::collections::HashMap;

use chrono::Utc;
use sha2::{Digest, Sha256};
use sqlx::pool::PoolConnection;
use sqlx::{Connection, Executor, Postgres, Sqlite};

use super::sql::{self, Arg};
use super::StoreResult;
use crate::error::StoreError;
use crate::workflow::BoxFuture;

/// The named set of migrations a workflow (or any module with its own tables) ships.
#[derive(Debug, Clone, Copy)]
pub struct Schema {
    /// Lowercase letters, digits and `_`; unique among a process's schemas.
    pub name: &'static str,
    pub postgres: &'static [Migration],
    pub sqlite: &'static [Migration],
}

/// One migration: `version` counts 1, 2, 3… within its schema, the same on both backends.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub description: &'static str,
    pub sql: &'static str,
}

impl Migration {
    pub const fn new(version: i64, description: &'static str, sql: &'static str) -> Migration {
        Migration {
            version,
            description,
            sql,
        }
    }

    fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.sql.as_bytes()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Backend {
    Postgres,
    Sqlite,
}

impl Schema {
    fn migrations(&self, backend: Backend) -> &'static [Migration] {
        match backend {
            Backend::Postgres => self.postgres,
            Backend::Sqlite => self.sqlite,
        }
    }

    fn latest(&self, backend: Backend) -> i64 {
        self.migrations(backend).last().map_or(0, |m| m.version)
    }

    /// A schema that breaks the numbering rules is a programming error, reported before
    /// anything is applied.
    fn check(&self) -> StoreResult<()> {
        let valid_name = !self.name.is_empty()
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !valid_name {
            return Err(malformed(
                self.name,
                "the name must be lowercase letters, digits and _",
            ));
        }
        for backend in [Backend::Postgres, Backend::Sqlite] {
            for (i, m) in self.migrations(backend).iter().enumerate() {
                if m.version != i as i64 + 1 {
                    return Err(malformed(
                        self.name,
                        &format!("{backend:?} migrations must be numbered 1, 2, 3… (found {} at position {})", m.version, i + 1),
                    ));
                }
            }
        }
        if self.latest(Backend::Postgres) != self.latest(Backend::Sqlite) {
            return Err(malformed(
                self.name,
                "PostgreSQL and SQLite must ship the same migration versions",
            ));
        }
        Ok(())
    }
}

fn malformed(schema: &str, why: &str) -> StoreError {
    StoreError::Schema(format!("schema {schema:?} is malformed: {why}"))
}

/// The connection the migration runs on (on PostgreSQL, the one holding the lock).
/// Owned rather than borrowed: with a borrowed connection the compiler cannot prove
/// the migration's future `Send` for every caller's lifetime.
pub(super) enum Conn {
    Postgres(PoolConnection<Postgres>),
    Sqlite(PoolConnection<Sqlite>),
}

impl Conn {
    fn backend(&self) -> Backend {
        match self {
            Conn::Postgres(_) => Backend::Postgres,
            Conn::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// (schema, version) → checksum, for every recorded migration.
    async fn applied(&mut self) -> StoreResult<HashMap<(String, i64), String>> {
        let query = "SELECT schema_name, version, checksum FROM waymark_schema_migrations";
        let rows = match self {
            Conn::Postgres(c) => sql::pg_fetch(&mut **c, query, &[]).await?,
            Conn::Sqlite(c) => sql::lite_fetch(&mut **c, query, &[]).await?,
        };
        rows.iter()
            .map(|r| {
                Ok((
                    (r.text("schema_name")?, r.int("version")?),
                    r.text("checksum")?,
                ))
            })
            .collect()
    }

    /// The migration and its record, in one transaction.
    async fn apply(&mut self, schema: &Schema, m: &Migration) -> StoreResult<()> {
        let record = "INSERT INTO waymark_schema_migrations \
                      (schema_name, version, description, checksum, applied_at) \
                      VALUES ($1, $2, $3, $4, $5)";
        let args = [
            Arg::text(schema.name),
            Arg::int(m.version),
            Arg::text(m.description),
            Arg::text(m.checksum()),
            Arg::time(Utc::now()),
        ];
        match self {
            Conn::Postgres(c) => {
                let mut tx = c.begin().await?;
                tx.execute(m.sql).await?;
                sql::pg_execute(&mut *tx, record, &args).await?;
                tx.commit().await?;
            }
            Conn::Sqlite(c) => {
                let mut tx = c.begin().await?;
                tx.execute(m.sql).await?;
                sql::lite_execute(&mut *tx, record, &args).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }
}

/// Applies what `schemas` ship and the database lacks, refusing a database that holds
/// more than they know or a migration that changed after it was applied. Call after
/// the engine's own migrations (the table it records in is one of them).
///
/// Boxed (as is [`ready`]) so the compiler checks that the future is `Send` here, for
/// these lifetimes, rather than failing to prove it for every caller's.
pub(super) fn migrate<'a>(
    conn: &'a mut Conn,
    schemas: &'a [Schema],
) -> BoxFuture<'a, StoreResult<()>> {
    Box::pin(async move {
        let backend = conn.backend();
        check_names(schemas)?;
        let applied = conn.applied().await?;
        check_not_newer(&applied, schemas, backend)?;
        for schema in schemas {
            for m in schema.migrations(backend) {
                match applied.get(&(schema.name.to_owned(), m.version)) {
                    Some(checksum) if *checksum == m.checksum() => {}
                    Some(_) => {
                        return Err(StoreError::Schema(format!(
                            "migration {} of schema {:?} ({}) was changed after it was applied; \
                         ship a new migration instead of editing an applied one",
                            m.version, schema.name, m.description
                        )))
                    }
                    None => {
                        conn.apply(schema, m).await?;
                        tracing::info!(
                            schema = schema.name,
                            version = m.version,
                            description = m.description,
                            "migration applied"
                        );
                    }
                }
            }
        }
        Ok(())
    })
}

/// True when every migration of `schemas` is recorded (and nothing newer is).
pub(super) fn ready<'a>(
    conn: &'a mut Conn,
    schemas: &'a [Schema],
) -> BoxFuture<'a, StoreResult<bool>> {
    Box::pin(async move {
        let backend = conn.backend();
        let applied = conn.applied().await?;
        if check_not_newer(&applied, schemas, backend).is_err() {
            return Ok(false);
        }
        Ok(schemas.iter().all(|s| {
            s.migrations(backend)
                .iter()
                .all(|m| applied.contains_key(&(s.name.to_owned(), m.version)))
        }))
    })
}

fn check_names(schemas: &[Schema]) -> StoreResult<()> {
    for (i, schema) in schemas.iter().enumerate() {
        schema.check()?;
        if schemas[..i].iter().any(|s| s.name == schema.name) {
            return Err(malformed(schema.name, "two schemas have this name"));
        }
    }
    Ok(())
}

fn check_not_newer(
    applied: &HashMap<(String, i64), String>,
    schemas: &[Schema],
    backend: Backend,
) -> StoreResult<()> {
    for (name, version) in applied.keys() {
        match schemas.iter().find(|s| s.name == name) {
            None => {
                return Err(StoreError::Schema(format!(
                    "the database holds schema {name:?}, which this binary does not know \
                     (it was migrated by a newer Waymark); upgrade Waymark"
                )))
            }
            Some(s) if *version > s.latest(backend) => {
                return Err(StoreError::Schema(format!(
                    "schema {name:?} is at version {version}, newer than this binary knows \
                     (up to {}); upgrade Waymark",
                    s.latest(backend)
                )))
            }
            Some(_) => {}
        }
    }
    Ok(())
}
