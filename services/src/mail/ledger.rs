//! The mail ledger (`waymark_mail_ledger`, migrations `0002_mail_ledger.sql`): what
//! the mailer sent under which idempotency key, on the engine's own database so it
//! survives restarts and is shared by every worker.
//!
//! All of the mailer's SQL lives here, in a PostgreSQL and a SQLite variant that behave
//! the same. Every statement takes "now" as a parameter.

use chrono::{DateTime, Utc};
use uuid::Uuid;
use waymark_engine::store::{Arg, Tx};
use waymark_engine::{Store, StoreError};

/// Where a key's message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerStatus {
    /// An attempt is sending it or was when it stopped; not known to be delivered.
    Sending,
    /// The transport accepted it.
    Sent,
}

impl LedgerStatus {
    fn parse(s: &str) -> Result<Self, sqlx::Error> {
        match s {
            "sending" => Ok(Self::Sending),
            "sent" => Ok(Self::Sent),
            other => Err(sqlx::Error::Decode(
                format!("unknown mail ledger status {other:?}").into(),
            )),
        }
    }
}

/// One row of the ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerEntry {
    pub idempotency_key: String,
    pub message_id: String,
    pub status: LedgerStatus,
    pub transport: String,
    pub recipients: String,
    pub subject: String,
    /// Attempts that handed (or were about to hand) the message to the transport.
    pub attempts: i32,
    pub claimed_until: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

/// What an attempt may do with a key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Claim {
    /// Send, with this `Message-ID` (the one first recorded for the key).
    Send { message_id: String },
    /// Already sent: do nothing.
    Sent { message_id: String },
    /// Another attempt holds the key until then.
    Busy { until: DateTime<Utc> },
}

/// A message about to be sent, as the ledger records it.
pub(crate) struct NewEntry<'a> {
    pub key: &'a str,
    pub message_id: &'a str,
    pub transport: &'a str,
    pub recipients: &'a str,
    pub subject: &'a str,
}

/// Deletes up to `limit` ledger entries of messages sent before `before` (the
/// retention sweep calls this with its cutoff); entries still `sending` are kept.
pub async fn prune_sent_before(
    store: &Store,
    before: DateTime<Utc>,
    limit: u32,
) -> Result<u64, sqlx::Error> {
    Ledger::new(store.clone())
        .prune_sent_before(before, limit)
        .await
}

/// Deletes the ledger rows of `runs`' steps in the caller's transaction (where their
/// runs are deleted); the `Message-ID`s deleted, to find their outbox files.
pub async fn delete_for_runs_in(tx: &mut Tx, runs: &[Uuid]) -> Result<Vec<String>, sqlx::Error> {
    if runs.is_empty() {
        return Ok(Vec::new());
    }
    // Ledger keys are a step's idempotency key, `<run id>:<visit>:<call>`.
    let list = waymark_engine::store::sql::placeholders(runs.len());
    let ids: Vec<Arg> = runs.iter().map(|id| Arg::text(id.to_string())).collect();
    let rows = tx
        .fetch(
            &format!(
                "DELETE FROM waymark_mail_ledger WHERE substr(idempotency_key, 1, 36) IN ({list}) \
                 RETURNING message_id"
            ),
            &ids,
        )
        .await?;
    rows.iter()
        .map(|row| row.text("message_id").map_err(sqlx::Error::from))
        .collect()
}

#[derive(Debug, Clone)]
pub(crate) struct Ledger {
    store: Store,
}

const COLUMNS: &str = "idempotency_key, message_id, status, transport, recipients, subject, \
                       attempts, claimed_until, last_error, created_at, updated_at, sent_at";

impl Ledger {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Records `entry` if the key is new, then claims the key for one attempt until
    /// `until` unless it was sent or another attempt holds it.
    pub async fn claim(
        &self,
        entry: &NewEntry<'_>,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Claim, sqlx::Error> {
        self.store
            .sql_execute(
                "INSERT INTO waymark_mail_ledger (idempotency_key, message_id, status, transport, \
                 recipients, subject, created_at, updated_at) \
                 VALUES ($1, $2, 'sending', $3, $4, $5, $6, $6) \
                 ON CONFLICT (idempotency_key) DO NOTHING",
                &[
                    Arg::text(entry.key),
                    Arg::text(entry.message_id),
                    Arg::text(entry.transport),
                    Arg::text(entry.recipients),
                    Arg::text(entry.subject),
                    Arg::time(now),
                ],
            )
            .await
            .map_err(sqlx::Error::from)?;
        let claimed = self
            .store
            .sql_fetch(
                "UPDATE waymark_mail_ledger \
                 SET attempts = attempts + 1, claimed_until = $2, updated_at = $3 \
                 WHERE idempotency_key = $1 AND status = 'sending' \
                   AND (claimed_until IS NULL OR claimed_until <= $3) \
                 RETURNING message_id",
                &[Arg::text(entry.key), Arg::time(until), Arg::time(now)],
            )
            .await
            .map_err(sqlx::Error::from)?;
        if let Some(row) = claimed.first() {
            return Ok(Claim::Send {
                message_id: row.text("message_id").map_err(sqlx::Error::from)?,
            });
        }
        // Not claimable: sent already, or held by another attempt. Between the two
        // statements the holder may have finished; the caller just asks again.
        let row = self.entry(entry.key).await?.ok_or_else(|| {
            sqlx::Error::Protocol(format!("mail ledger row {:?} vanished", entry.key))
        })?;
        Ok(match row.status {
            LedgerStatus::Sent => Claim::Sent {
                message_id: row.message_id,
            },
            LedgerStatus::Sending => Claim::Busy {
                until: row.claimed_until.unwrap_or(now),
            },
        })
    }

    /// Marks the key sent. False if it was not claimed for sending (nothing changed).
    pub async fn mark_sent(&self, key: &str, now: DateTime<Utc>) -> Result<bool, sqlx::Error> {
        let done = self
            .store
            .sql_execute(
                "UPDATE waymark_mail_ledger \
                 SET status = 'sent', sent_at = $2, updated_at = $2, claimed_until = NULL, last_error = NULL \
                 WHERE idempotency_key = $1 AND status = 'sending'",
                &[Arg::text(key), Arg::time(now)],
            )
            .await
            .map_err(sqlx::Error::from)?;
        Ok(done == 1)
    }

    /// Deletes up to `limit` entries of messages sent before `before`. Their steps
    /// belong to runs that finished long ago (the retention sweep calls this with its
    /// own cutoff), so no retry can need them; entries still `sending` are kept.
    pub async fn prune_sent_before(
        &self,
        before: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, sqlx::Error> {
        self.store
            .sql_execute(
                "DELETE FROM waymark_mail_ledger WHERE idempotency_key IN ( \
                   SELECT idempotency_key FROM waymark_mail_ledger \
                   WHERE status = 'sent' AND sent_at < $1 LIMIT $2)",
                &[Arg::time(before), Arg::int(limit.into())],
            )
            .await
            .map_err(sqlx::Error::from)
    }

    /// Gives the key back after an attempt that did not send, so the next attempt need
    /// not wait for the claim to expire; keeps the error for operators.
    pub async fn release(
        &self,
        key: &str,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        self.store
            .sql_execute(
                "UPDATE waymark_mail_ledger \
                 SET claimed_until = NULL, last_error = $2, updated_at = $3 \
                 WHERE idempotency_key = $1 AND status = 'sending'",
                &[Arg::text(key), Arg::text(error), Arg::time(now)],
            )
            .await
            .map_err(sqlx::Error::from)?;
        Ok(())
    }

    pub async fn entry(&self, key: &str) -> Result<Option<LedgerEntry>, sqlx::Error> {
        let rows = self
            .store
            .sql_fetch(
                &format!("SELECT {COLUMNS} FROM waymark_mail_ledger WHERE idempotency_key = $1"),
                &[Arg::text(key)],
            )
            .await
            .map_err(sqlx::Error::from)?;
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        let entry = || -> Result<LedgerEntry, StoreError> {
            Ok(LedgerEntry {
                idempotency_key: r.text("idempotency_key")?,
                message_id: r.text("message_id")?,
                status: LedgerStatus::parse(&r.text("status")?)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                transport: r.text("transport")?,
                recipients: r.text("recipients")?,
                subject: r.text("subject")?,
                attempts: i32::try_from(r.int("attempts")?)
                    .map_err(|e| StoreError::Corrupt(format!("attempts: {e}")))?,
                claimed_until: r.opt_time("claimed_until")?,
                last_error: r.opt_text("last_error")?,
                created_at: r.time("created_at")?,
                updated_at: r.time("updated_at")?,
                sent_at: r.opt_time("sent_at")?,
            })
        };
        entry().map(Some).map_err(sqlx::Error::from)
    }
}
