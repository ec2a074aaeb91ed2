//! Services Waymark's workflows call for their side effects: a mailer and a blob store.
//! Each has an embedded default, so `cargo run --release` needs nothing else, and a
//! production backend chosen by configuration.
//!
//! - [`Mailer`] sends [`Email`]s over SMTP (`WAYMARK_SMTP_URL`) or writes them as
//!   `.eml` files to `$WAYMARK_DATA_DIR/outbox`. A ledger table makes a retried step
//!   send one message per idempotency key.
//! - [`BlobStore`] keeps files in S3 (`WAYMARK_S3_BUCKET`) or under
//!   `$WAYMARK_DATA_DIR/blobs`, with checksums and expiring download URLs.
//!
//! Errors convert into [`waymark_engine::StepError`] with the right retry kind, so a
//! step can write `mailer.send(&ctx.idempotency_key(0), email).await?`.
//!
//! # Layout
//! - [`mail`]: the mailer, its messages and templates, the ledger (the only SQL here),
//!   the SMTP and outbox transports.
//! - [`blob`]: the blob store: local files, S3, URL signing, multipart and checksums.

pub mod blob;
pub mod mail;

pub use blob::{
    BlobConfig, BlobError, BlobMeta, BlobStore, BlobWriter, ByteRange, Download, LocalStore,
    PutOptions, S3Config, S3Credentials, S3Store, UploadedPart, UrlSigner,
};
pub use mail::{
    Attachment, Calendar, Email, MailConfig, MailError, Mailer, Rendered, Sent, SmtpOptions,
    Templates,
};
