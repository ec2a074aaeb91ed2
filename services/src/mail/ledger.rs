//! The mail ledger (`waymark_mail_ledger`, migrations `0002_mail_ledger.sql`): what
//! the mailer sent under which idempotency key, on the engine's own database so it
//! survives restarts and is shared by every worker.
//!
//! All of the mailer's SQL lives here, in a PostgreSQL and a SQLite variant that behave
//! the same. Every statement takes "now" as a parameter.

use chrono::{DateTime, TimeZone, Utc};
use sqlx::Row;
use waymark_engine::Store;

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
        let claimed: Option<String> = match &self.store {
            Store::Postgres(pg) => {
                sqlx::query(
                    "INSERT INTO waymark_mail_ledger (idempotency_key, message_id, status, transport, \
                     recipients, subject, created_at, updated_at) \
                     VALUES ($1, $2, 'sending', $3, $4, $5, $6, $6) \
                     ON CONFLICT (idempotency_key) DO NOTHING",
                )
                .bind(entry.key)
                .bind(entry.message_id)
                .bind(entry.transport)
                .bind(entry.recipients)
                .bind(entry.subject)
                .bind(now)
                .execute(pg.pool())
                .await?;
                sqlx::query_scalar(
                    "UPDATE waymark_mail_ledger \
                     SET attempts = attempts + 1, claimed_until = $2, updated_at = $3 \
                     WHERE idempotency_key = $1 AND status = 'sending' \
                       AND (claimed_until IS NULL OR claimed_until <= $3) \
                     RETURNING message_id",
                )
                .bind(entry.key)
                .bind(until)
                .bind(now)
                .fetch_optional(pg.pool())
                .await?
            }
            Store::Sqlite(lite) => {
                sqlx::query(
                    "INSERT INTO waymark_mail_ledger (idempotency_key, message_id, status, transport, \
                     recipients, subject, created_at, updated_at) \
                     VALUES (?1, ?2, 'sending', ?3, ?4, ?5, ?6, ?6) \
                     ON CONFLICT (idempotency_key) DO NOTHING",
                )
                .bind(entry.key)
                .bind(entry.message_id)
                .bind(entry.transport)
                .bind(entry.recipients)
                .bind(entry.subject)
                .bind(now.timestamp_millis())
                .execute(lite.pool())
                .await?;
                sqlx::query_scalar(
                    "UPDATE waymark_mail_ledger \
                     SET attempts = attempts + 1, claimed_until = ?2, updated_at = ?3 \
                     WHERE idempotency_key = ?1 AND status = 'sending' \
                       AND (claimed_until IS NULL OR claimed_until <= ?3) \
                     RETURNING message_id",
                )
                .bind(entry.key)
                .bind(until.timestamp_millis())
                .bind(now.timestamp_millis())
                .fetch_optional(lite.pool())
                .await?
            }
        };
        if let Some(message_id) = claimed {
            return Ok(Claim::Send { message_id });
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
        let done = match &self.store {
            Store::Postgres(pg) => sqlx::query(
                "UPDATE waymark_mail_ledger \
                 SET status = 'sent', sent_at = $2, updated_at = $2, claimed_until = NULL, last_error = NULL \
                 WHERE idempotency_key = $1 AND status = 'sending'",
            )
            .bind(key)
            .bind(now)
            .execute(pg.pool())
            .await?
            .rows_affected(),
            Store::Sqlite(lite) => sqlx::query(
                "UPDATE waymark_mail_ledger \
                 SET status = 'sent', sent_at = ?2, updated_at = ?2, claimed_until = NULL, last_error = NULL \
                 WHERE idempotency_key = ?1 AND status = 'sending'",
            )
            .bind(key)
            .bind(now.timestamp_millis())
            .execute(lite.pool())
            .await?
            .rows_affected(),
        };
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
        Ok(match &self.store {
            Store::Postgres(pg) => sqlx::query(
                "DELETE FROM waymark_mail_ledger WHERE idempotency_key IN ( \
                   SELECT idempotency_key FROM waymark_mail_ledger \
                   WHERE status = 'sent' AND sent_at < $1 LIMIT $2)",
            )
            .bind(before)
            .bind(limit as i64)
            .execute(pg.pool())
            .await?
            .rows_affected(),
            Store::Sqlite(lite) => sqlx::query(
                "DELETE FROM waymark_mail_ledger WHERE idempotency_key IN ( \
                   SELECT idempotency_key FROM waymark_mail_ledger \
                   WHERE status = 'sent' AND sent_at < ?1 LIMIT ?2)",
            )
            .bind(before.timestamp_millis())
            .bind(limit as i64)
            .execute(lite.pool())
            .await?
            .rows_affected(),
        })
    }

    /// Gives the key back after an attempt that did not send, so the next attempt need
    /// not wait for the claim to expire; keeps the error for operators.
    pub async fn release(
        &self,
        key: &str,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        match &self.store {
            Store::Postgres(pg) => {
                sqlx::query(
                    "UPDATE waymark_mail_ledger \
                     SET claimed_until = NULL, last_error = $2, updated_at = $3 \
                     WHERE idempotency_key = $1 AND status = 'sending'",
                )
                .bind(key)
                .bind(error)
                .bind(now)
                .execute(pg.pool())
                .await?;
            }
            Store::Sqlite(lite) => {
                sqlx::query(
                    "UPDATE waymark_mail_ledger \
                     SET claimed_until = NULL, last_error = ?2, updated_at = ?3 \
                     WHERE idempotency_key = ?1 AND status = 'sending'",
                )
                .bind(key)
                .bind(error)
                .bind(now.timestamp_millis())
                .execute(lite.pool())
                .await?;
            }
        }
        Ok(())
    }

    pub async fn entry(&self, key: &str) -> Result<Option<LedgerEntry>, sqlx::Error> {
        match &self.store {
            Store::Postgres(pg) => {
                let row = sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM waymark_mail_ledger WHERE idempotency_key = $1"
                ))
                .bind(key)
                .fetch_optional(pg.pool())
                .await?;
                row.map(|r| {
                    Ok(LedgerEntry {
                        idempotency_key: r.try_get("idempotency_key")?,
                        message_id: r.try_get("message_id")?,
                        status: LedgerStatus::parse(r.try_get("status")?)?,
                        transport: r.try_get("transport")?,
                        recipients: r.try_get("recipients")?,
                        subject: r.try_get("subject")?,
                        attempts: r.try_get("attempts")?,
                        claimed_until: r.try_get("claimed_until")?,
                        last_error: r.try_get("last_error")?,
                        created_at: r.try_get("created_at")?,
                        updated_at: r.try_get("updated_at")?,
                        sent_at: r.try_get("sent_at")?,
                    })
                })
                .transpose()
            }
            Store::Sqlite(lite) => {
                let row = sqlx::query(&format!(
                    "SELECT {COLUMNS} FROM waymark_mail_ledger WHERE idempotency_key = ?1"
                ))
                .bind(key)
                .fetch_optional(lite.pool())
                .await?;
                row.map(|r| {
                    Ok(LedgerEntry {
                        idempotency_key: r.try_get("idempotency_key")?,
                        message_id: r.try_get("message_id")?,
                        status: LedgerStatus::parse(r.try_get("status")?)?,
                        transport: r.try_get("transport")?,
                        recipients: r.try_get("recipients")?,
                        subject: r.try_get("subject")?,
                        attempts: r.try_get("attempts")?,
                        claimed_until: opt_from_ms(r.try_get("claimed_until")?)?,
                        last_error: r.try_get("last_error")?,
                        created_at: from_ms(r.try_get("created_at")?)?,
                        updated_at: from_ms(r.try_get("updated_at")?)?,
                        sent_at: opt_from_ms(r.try_get("sent_at")?)?,
                    })
                })
                .transpose()
            }
        }
    }
}

fn from_ms(ms: i64) -> Result<DateTime<Utc>, sqlx::Error> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .ok_or_else(|| sqlx::Error::Decode(format!("timestamp {ms} out of range").into()))
}

fn opt_from_ms(ms: Option<i64>) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    ms.map(from_ms).transpose()
}
