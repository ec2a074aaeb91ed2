//! SQL written once for both backends, for the code outside the engine that keeps its
//! own tables (a workflow's business records, the mail ledger), and the caller's
//! transaction that lets such rows commit together with the engine's (a run started
//! with [`Engine::start_in`](crate::Engine::start_in)).
//!
//! ```ignore
//! let mut tx = engine.store.begin().await?;
//! tx.execute("INSERT INTO shop_orders (id, placed_at) VALUES ($1, $2)", &[Arg::id(order), Arg::time(now)]).await?;
//! engine.start_in(&mut tx, start).await?;
//! tx.commit().await?;
//! ```
//!
//! The rules that keep one statement text valid on both:
//! - placeholders are PostgreSQL's `$1`, `$2`… (rewritten to SQLite's `?1`, `?2`…), and
//!   a `$` followed by a digit appears nowhere else;
//! - no casts (`::jsonb`) and no functions only one backend has: pass values (times as
//!   [`Arg::Time`], "now" included) instead of calling `now()`;
//! - values go through [`Arg`] and come back through [`Row`], which know how each backend
//!   stores them (SQLite: ids as text, times as Unix milliseconds, JSON as text).
//!
//! Where the work itself differs per backend (a PostgreSQL schema against a SQLite
//! file), match on [`Tx::backend`] or [`Store::backend`](super::Store::backend) in the
//! one module that does it.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::Row as _;
use uuid::Uuid;

use super::{SqliteStore, Store, StoreResult};
use crate::error::StoreError;

/// One statement argument, as both backends store it.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Text(Option<String>),
    Int(Option<i64>),
    Bool(Option<bool>),
    Time(Option<DateTime<Utc>>),
    Id(Option<Uuid>),
    Json(Option<Value>),
}

impl Arg {
    pub fn text(value: impl Into<String>) -> Arg {
        Arg::Text(Some(value.into()))
    }

    pub fn int(value: i64) -> Arg {
        Arg::Int(Some(value))
    }

    pub fn id(value: Uuid) -> Arg {
        Arg::Id(Some(value))
    }

    pub fn time(value: DateTime<Utc>) -> Arg {
        Arg::Time(Some(value))
    }

    pub fn json(value: Value) -> Arg {
        Arg::Json(Some(value))
    }
}

/// `$1, $2, …, $n`: the list for `IN (…)` over `n` arguments, one statement text for
/// both backends (which have no common way to bind an array).
pub fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `$n` → `?n`: SQLite's numbered placeholders take the same numbers.
fn for_sqlite(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(|n| n.is_ascii_digit()) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

fn pg_query<'q>(
    sql: &'q str,
    args: &[Arg],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let mut query = sqlx::query(sql);
    for arg in args {
        query = match arg.clone() {
            Arg::Text(v) => query.bind(v),
            Arg::Int(v) => query.bind(v),
            Arg::Bool(v) => query.bind(v),
            Arg::Time(v) => query.bind(v),
            Arg::Id(v) => query.bind(v),
            Arg::Json(v) => query.bind(v),
        };
    }
    query
}

fn lite_query<'q>(
    sql: &'q str,
    args: &[Arg],
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    let mut query = sqlx::query(sql);
    for arg in args {
        query = match arg.clone() {
            Arg::Text(v) => query.bind(v),
            Arg::Int(v) => query.bind(v),
            Arg::Bool(v) => query.bind(v),
            Arg::Time(v) => query.bind(v.map(|t| t.timestamp_millis())),
            Arg::Id(v) => query.bind(v.map(|u| u.to_string())),
            Arg::Json(v) => query.bind(v.map(|v| v.to_string())),
        };
    }
    query
}

/// A row read by [`Tx::fetch`] or [`Store::sql_fetch`], with typed getters that read
/// either backend's representation.
pub enum Row {
    Postgres(PgRow),
    Sqlite(SqliteRow),
}

impl std::fmt::Debug for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Row::Postgres(_) => "Row::Postgres",
            Row::Sqlite(_) => "Row::Sqlite",
        })
    }
}

fn decode(column: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("column {column}: {error}"))
}

impl Row {
    pub fn opt_text(&self, column: &str) -> StoreResult<Option<String>> {
        match self {
            Row::Postgres(r) => r.try_get(column),
            Row::Sqlite(r) => r.try_get(column),
        }
        .map_err(|e| decode(column, e))
    }

    pub fn text(&self, column: &str) -> StoreResult<String> {
        self.opt_text(column)?
            .ok_or_else(|| decode(column, "unexpected NULL"))
    }

    pub fn opt_int(&self, column: &str) -> StoreResult<Option<i64>> {
        match self {
            // PostgreSQL's integer types are distinct: take whichever the column is.
            Row::Postgres(r) => r
                .try_get::<Option<i64>, _>(column)
                .or_else(|_| {
                    r.try_get::<Option<i32>, _>(column)
                        .map(|v| v.map(i64::from))
                })
                .or_else(|_| {
                    r.try_get::<Option<i16>, _>(column)
                        .map(|v| v.map(i64::from))
                }),
            Row::Sqlite(r) => r.try_get(column),
        }
        .map_err(|e| decode(column, e))
    }

    pub fn int(&self, column: &str) -> StoreResult<i64> {
        self.opt_int(column)?
            .ok_or_else(|| decode(column, "unexpected NULL"))
    }

    pub fn opt_bool(&self, column: &str) -> StoreResult<Option<bool>> {
        match self {
            Row::Postgres(r) => r.try_get(column),
            Row::Sqlite(r) => r.try_get(column),
        }
        .map_err(|e| decode(column, e))
    }

    pub fn opt_time(&self, column: &str) -> StoreResult<Option<DateTime<Utc>>> {
        match self {
            Row::Postgres(r) => r.try_get(column).map_err(|e| decode(column, e)),
            Row::Sqlite(r) => r
                .try_get::<Option<i64>, _>(column)
                .map_err(|e| decode(column, e))?
                .map(|ms| {
                    Utc.timestamp_millis_opt(ms)
                        .single()
                        .ok_or_else(|| decode(column, format!("{ms} ms is out of range")))
                })
                .transpose(),
        }
    }

    pub fn time(&self, column: &str) -> StoreResult<DateTime<Utc>> {
        self.opt_time(column)?
            .ok_or_else(|| decode(column, "unexpected NULL"))
    }

    pub fn opt_id(&self, column: &str) -> StoreResult<Option<Uuid>> {
        match self {
            Row::Postgres(r) => r.try_get(column).map_err(|e| decode(column, e)),
            Row::Sqlite(r) => r
                .try_get::<Option<String>, _>(column)
                .map_err(|e| decode(column, e))?
                .map(|s| s.parse().map_err(|e| decode(column, e)))
                .transpose(),
        }
    }

    pub fn id(&self, column: &str) -> StoreResult<Uuid> {
        self.opt_id(column)?
            .ok_or_else(|| decode(column, "unexpected NULL"))
    }

    pub fn opt_json(&self, column: &str) -> StoreResult<Option<Value>> {
        match self {
            Row::Postgres(r) => r.try_get(column).map_err(|e| decode(column, e)),
            Row::Sqlite(r) => r
                .try_get::<Option<String>, _>(column)
                .map_err(|e| decode(column, e))?
                .map(|s| serde_json::from_str(&s).map_err(|e| decode(column, e)))
                .transpose(),
        }
    }

    pub fn json(&self, column: &str) -> StoreResult<Value> {
        self.opt_json(column)?
            .ok_or_else(|| decode(column, "unexpected NULL"))
    }
}

/// A transaction of the caller's, on whichever backend the store has: rows written
/// through it, and runs started in it with `Engine::start_in`, commit or roll back
/// together. Dropped without [`Tx::commit`], it rolls back.
///
/// On SQLite the store has a single connection, which the transaction holds until it
/// ends: use only the transaction meanwhile (a store call would wait for it).
#[derive(Debug)]
pub struct Tx {
    pub(crate) inner: TxInner,
    /// Runs started in it, counted in the metrics once it commits.
    pub(crate) started: Vec<(std::sync::Arc<crate::metrics::Metrics>, String)>,
}

#[derive(Debug)]
pub(crate) enum TxInner {
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    Sqlite {
        tx: sqlx::Transaction<'static, sqlx::Sqlite>,
        /// Told after the commit, so local workers look for the runs started in it.
        store: SqliteStore,
    },
}

impl Store {
    /// Begins a transaction for [`Tx`]'s statements and `Engine::start_in`.
    pub async fn begin(&self) -> StoreResult<Tx> {
        let inner = match self {
            Store::Postgres(pg) => TxInner::Postgres(pg.pool().begin().await?),
            Store::Sqlite(lite) => TxInner::Sqlite {
                tx: lite.pool().begin().await?,
                store: lite.clone(),
            },
        };
        Ok(Tx {
            inner,
            started: Vec::new(),
        })
    }

    /// Runs one statement (see the module's rules) outside any transaction.
    pub async fn sql_execute(&self, sql: &str, args: &[Arg]) -> StoreResult<u64> {
        match self {
            Store::Postgres(pg) => pg_execute(pg.pool(), sql, args).await,
            Store::Sqlite(lite) => lite_execute(lite.pool(), sql, args).await,
        }
    }

    /// Reads rows with one statement (see the module's rules).
    pub async fn sql_fetch(&self, sql: &str, args: &[Arg]) -> StoreResult<Vec<Row>> {
        match self {
            Store::Postgres(pg) => pg_fetch(pg.pool(), sql, args).await,
            Store::Sqlite(lite) => lite_fetch(lite.pool(), sql, args).await,
        }
    }
}

// One statement on a pool or a transaction, for the store's and the Tx's methods alike.

pub(super) async fn pg_execute<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    sql: &str,
    args: &[Arg],
) -> StoreResult<u64> {
    Ok(pg_query(sql, args).execute(executor).await?.rows_affected())
}

pub(super) async fn pg_fetch<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    sql: &str,
    args: &[Arg],
) -> StoreResult<Vec<Row>> {
    let rows = pg_query(sql, args).fetch_all(executor).await?;
    Ok(rows.into_iter().map(Row::Postgres).collect())
}

pub(super) async fn lite_execute<'c>(
    executor: impl sqlx::SqliteExecutor<'c>,
    sql: &str,
    args: &[Arg],
) -> StoreResult<u64> {
    let sql = for_sqlite(sql);
    Ok(lite_query(&sql, args)
        .execute(executor)
        .await?
        .rows_affected())
}

pub(super) async fn lite_fetch<'c>(
    executor: impl sqlx::SqliteExecutor<'c>,
    sql: &str,
    args: &[Arg],
) -> StoreResult<Vec<Row>> {
    let sql = for_sqlite(sql);
    let rows = lite_query(&sql, args).fetch_all(executor).await?;
    Ok(rows.into_iter().map(Row::Sqlite).collect())
}

impl Tx {
    pub fn backend(&self) -> &'static str {
        match self.inner {
            TxInner::Postgres(_) => "postgres",
            TxInner::Sqlite { .. } => "sqlite",
        }
    }

    /// `FOR UPDATE` on PostgreSQL, nothing on SQLite, whose transaction holds the
    /// store's only connection (and so excludes every other writer already): append it
    /// to a `SELECT` that reads a row the transaction will change.
    pub fn for_update(&self) -> &'static str {
        match self.inner {
            TxInner::Postgres(_) => "FOR UPDATE",
            TxInner::Sqlite { .. } => "",
        }
    }

    /// Runs one statement (see the module's rules); the number of rows it changed.
    pub async fn execute(&mut self, sql: &str, args: &[Arg]) -> StoreResult<u64> {
        match &mut self.inner {
            TxInner::Postgres(tx) => pg_execute(&mut **tx, sql, args).await,
            TxInner::Sqlite { tx, .. } => lite_execute(&mut **tx, sql, args).await,
        }
    }

    /// Reads rows with one statement (see the module's rules).
    pub async fn fetch(&mut self, sql: &str, args: &[Arg]) -> StoreResult<Vec<Row>> {
        match &mut self.inner {
            TxInner::Postgres(tx) => pg_fetch(&mut **tx, sql, args).await,
            TxInner::Sqlite { tx, .. } => lite_fetch(&mut **tx, sql, args).await,
        }
    }

    /// Commits; then counts the runs started in it and, on SQLite, wakes this process's
    /// workers for them (PostgreSQL's notifications are sent at commit by the database).
    pub async fn commit(self) -> StoreResult<()> {
        match self.inner {
            TxInner::Postgres(tx) => tx.commit().await?,
            TxInner::Sqlite { tx, store } => {
                tx.commit().await?;
                store.wake();
            }
        }
        for (metrics, workflow) in &self.started {
            metrics.run_started(workflow);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{for_sqlite, placeholders};

    #[test]
    fn placeholders_number_an_in_list() {
        assert_eq!(placeholders(3), "$1, $2, $3");
        assert_eq!(placeholders(0), "");
    }

    #[test]
    fn placeholders_are_renumbered_for_sqlite_and_nothing_else_changes() {
        assert_eq!(
            for_sqlite("UPDATE t SET a = $1, b = '$x' WHERE c = $12 AND d = '$'"),
            "UPDATE t SET a = ?1, b = '$x' WHERE c = ?12 AND d = '$'"
        );
    }
}
