//! The mailer: sends [`Email`]s over SMTP, or into an outbox folder of `.eml` files in
//! embedded mode, at most once per step idempotency key.
//!
//! A workflow keeps a [`Mailer`] (cheap to clone) and calls it from a step:
//!
//! ```text
//! let sent = self.mailer.send(&ctx.idempotency_key(0), email).await?;
//! ```
//!
//! The key is the same on every retry of one visit of a state and new on the next
//! visit, so a retried step sends one message and a revisited state sends another.
//!
//! # Layout
//! - [`message`]: [`Email`], [`Attachment`], address validation, the `Message-ID`.
//! - [`template`]: [`Templates`] (minijinja) rendering subject, text and HTML.
//! - [`ledger`]: the `waymark_mail_ledger` table, all of the mailer's SQL.
//! - `transport`: SMTP (pooled, rustls) or the outbox; SMTP reply classification.

pub mod ledger;
pub mod message;
pub mod template;
mod transport;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lettre::message::Mailbox;
use waymark_engine::{ErrorKind, StepError, Store};

pub use ledger::{LedgerEntry, LedgerStatus};
pub use message::{message_id, parse_mailbox, Attachment, Calendar, Email};
pub use template::{Rendered, Templates};
pub use transport::{reply_kind, SmtpOptions};

use ledger::{Claim, Ledger, NewEntry};
use transport::Transport;

/// What went wrong sending mail. [`MailError::kind`] says whether a retry can help;
/// `StepError::from` keeps that for the engine.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("invalid {field} address {value:?}: {reason}")]
    InvalidAddress {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    #[error("mail template {name:?} failed")]
    Template {
        name: String,
        #[source]
        source: minijinja::Error,
    },
    /// A 5xx reply: this message will never be accepted as it is (e.g. 550, no such
    /// mailbox).
    #[error("the SMTP server rejected the message ({code}): {message}")]
    Rejected { code: u16, message: String },
    /// A 4xx reply: the server asks to try again later.
    #[error("the SMTP server deferred the message ({code}): {message}")]
    Deferred { code: u16, message: String },
    #[error("SMTP connection failed")]
    Connection(#[source] lettre::transport::smtp::Error),
    #[error("SMTP send did not finish within {0:?}; it may or may not have been accepted")]
    Timeout(Duration),
    #[error("mail configuration: {0}")]
    Config(String),
    #[error("cannot write {path} to the outbox")]
    Outbox {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the mail ledger is unavailable")]
    Ledger(#[from] sqlx::Error),
}

impl MailError {
    /// Retryable for what may pass (4xx replies, connections, timeouts, the database);
    /// fatal for what the same message would hit again (5xx replies, invalid addresses,
    /// templates, configuration).
    pub fn kind(&self) -> ErrorKind {
        match self {
            MailError::InvalidAddress { .. }
            | MailError::InvalidMessage(_)
            | MailError::Template { .. }
            | MailError::Rejected { .. }
            | MailError::Config(_) => ErrorKind::Fatal,
            MailError::Deferred { .. }
            | MailError::Connection(_)
            | MailError::Timeout(_)
            | MailError::Outbox { .. }
            | MailError::Ledger(_) => ErrorKind::Retryable,
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.kind() == ErrorKind::Retryable
    }
}

impl From<MailError> for StepError {
    fn from(error: MailError) -> Self {
        StepError::from_error(error.kind(), &error)
    }
}

/// Mail settings, as `waymark` reads them from its environment.
#[derive(Debug, Clone)]
pub struct MailConfig {
    /// `WAYMARK_SMTP_URL`; unset means the outbox.
    pub smtp_url: Option<String>,
    pub smtp: SmtpOptions,
    /// Where `.eml` files go without SMTP (`$WAYMARK_DATA_DIR/outbox`).
    pub outbox_dir: PathBuf,
    /// The sender of messages that name none.
    pub default_from: String,
}

/// What [`Mailer::send`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The message's `Message-ID`, angle brackets included.
    pub message_id: String,
    /// False when an earlier attempt with the same key had sent it: nothing was sent now.
    pub delivered_now: bool,
}

/// Sends mail at most once per idempotency key. Clones share the SMTP connection pool.
#[derive(Clone, Debug)]
pub struct Mailer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    transport: Transport,
    ledger: Ledger,
    default_from: Mailbox,
    /// How long an attempt holds a key: one bounded send plus a margin.
    claim: Duration,
}

/// Margin on top of the SMTP timeout before another attempt may take over a key.
const CLAIM_MARGIN: Duration = Duration::from_secs(5);

impl Mailer {
    /// SMTP if `config.smtp_url` is set, the outbox otherwise. `store` holds the ledger.
    /// Call it inside the Tokio runtime: the SMTP pool starts a task.
    pub fn from_config(config: &MailConfig, store: Store) -> Result<Mailer, MailError> {
        let transport = match config.smtp_url.as_deref().filter(|u| !u.is_empty()) {
            Some(url) => Transport::smtp(url, &config.smtp)?,
            None => Transport::outbox(config.outbox_dir.clone()),
        };
        let default_from = parse_mailbox("default from (WAYMARK_MAIL_FROM)", &config.default_from)
            .map_err(|e| MailError::Config(e.to_string()))?;
        Ok(Mailer {
            inner: Arc::new(Inner {
                transport,
                ledger: Ledger::new(store),
                default_from,
                claim: config.smtp.timeout + CLAIM_MARGIN,
            }),
        })
    }

    /// Where messages go (`smtp://host:port`, `outbox:/path`), without credentials.
    pub fn describe(&self) -> String {
        self.inner.transport.describe()
    }

    /// Sends `email` unless a message was already sent under `key`.
    ///
    /// `key` is a step's [`StepContext::idempotency_key`](waymark_engine::StepContext::idempotency_key):
    /// every attempt of one visit passes the same key and at most one message goes out;
    /// the next visit passes a new key and sends again. The `Message-ID` is derived
    /// from the key. Errors say whether a retry can help ([`MailError::kind`]).
    pub async fn send(&self, key: &str, email: Email) -> Result<Sent, MailError> {
        let inner = &self.inner;
        let message_id = |from: &Mailbox| message_id(key, from.email.domain());
        // Validation comes first: an invalid message is fatal and leaves no trace.
        let mut prepared = message::prepare(&email, &inner.default_from, message_id)?;
        let derived_id = prepared.message_id.clone();
        let recipients = prepared.recipients.join(", ");
        let entry = NewEntry {
            key,
            message_id: &derived_id,
            transport: inner.transport.kind(),
            recipients: &recipients,
            subject: &prepared.subject,
        };

        let mut wait = Duration::from_millis(50);
        let message_id = loop {
            // Wall time, not the engine's clock: claims coordinate processes.
            let now = Utc::now();
            let until =
                now + chrono::Duration::from_std(inner.claim).unwrap_or(chrono::Duration::MAX);
            match inner.ledger.claim(&entry, now, until).await? {
                Claim::Send { message_id } => break message_id,
                Claim::Sent { message_id } => {
                    tracing::debug!(key, %message_id, "mail already sent under this key");
                    return Ok(Sent {
                        message_id,
                        delivered_now: false,
                    });
                }
                // Another worker runs the same visit (ours lost its lease, or theirs
                // did). Waiting for its outcome beats sending in parallel; its claim
                // is bounded by the SMTP timeout, so this wait is too.
                Claim::Busy { until } => {
                    let left = (until - now).to_std().unwrap_or_default();
                    tokio::time::sleep(wait.min(left.max(Duration::from_millis(10)))).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
            }
        };
        if message_id != derived_id {
            // The first attempt recorded another id (its sender differed): keep the
            // recorded one, so every copy a receiver sees carries the same id.
            prepared = message::prepare(&email, &inner.default_from, |_| message_id.clone())?;
        }

        let file_stem = message_id
            .trim_start_matches('<')
            .split('@')
            .next()
            .unwrap_or("message")
            .to_owned();
        match inner.transport.send(&prepared.message, &file_stem).await {
            Ok(()) => {
                // The crash window: the transport has the message but the ledger does
                // not know yet. If we stop here (crash, lost lease, database error),
                // the key stays 'sending' and the next attempt sends again, with the
                // same Message-ID, so receivers that deduplicate on it show one
                // message; the outbox even overwrites the same file. Marking it sent
                // before sending would instead lose the message in that window.
                if !inner.ledger.mark_sent(key, Utc::now()).await? {
                    tracing::warn!(key, %message_id, "mail ledger row was no longer 'sending' when marked sent");
                }
                tracing::info!(key, %message_id, to = %recipients, via = inner.transport.kind(), "mail sent");
                Ok(Sent {
                    message_id,
                    delivered_now: true,
                })
            }
            Err(error) => {
                // Nothing was accepted (or we cannot know, for a timeout, which the
                // next attempt resolves by sending again with the same id).
                if let Err(ledger_error) = inner
                    .ledger
                    .release(key, &error.to_string(), Utc::now())
                    .await
                {
                    tracing::warn!(key, error = %ledger_error, "cannot release the mail ledger claim; it expires on its own");
                }
                tracing::warn!(key, %message_id, error = %error, retryable = error.is_retryable(), "mail not sent");
                Err(error)
            }
        }
    }

    /// The ledger's record for `key`, if a send was ever attempted with it.
    pub async fn ledger_entry(&self, key: &str) -> Result<Option<LedgerEntry>, MailError> {
        Ok(self.inner.ledger.entry(key).await?)
    }
}
