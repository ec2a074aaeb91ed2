//! The blob store: files that workflows keep (uploads, renditions, reports), in an S3
//! bucket or, in embedded mode, under `$WAYMARK_DATA_DIR/blobs`.
//!
//! Both stores offer the same operations with the same meaning: streaming `put`
//! (multipart on S3 above one part), a [`BlobWriter`] for content produced piece by
//! piece (an export) in bounded memory, `get` (whole or a byte range), `head`, `list` and
//! `delete_prefix`, and download URLs that expire (S3 presigned, or HMAC-signed and
//! served by Waymark's `/blobs/…` route). A put records the blob's SHA-256 and a full
//! `get` fails rather than return bytes that do not hash to it.
//!
//! Writing the same key again replaces the blob, so a retried step that puts the same
//! content under a key derived from its idempotency key is harmless.
//!
//! # Layout
//! - [`local`]: files on disk, one pointer file per key.
//! - [`s3`]: aws-sdk-s3, with rustls/ring as the only TLS stack.
//! - [`signing`]: HMAC-signed URLs for the local store.
//! - [`parts`]: part sizes, byte ranges, checksums verified while streaming.

pub mod local;
pub mod parts;
pub mod s3;
pub mod signing;

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::io::{AsyncRead, AsyncReadExt};
use waymark_engine::{ErrorKind, StepError};

pub use local::{LocalStore, LocalWriter};
pub use parts::{ByteRange, ChecksumMismatch};
pub use s3::multipart::UploadedPart;
pub use s3::{S3Config, S3Credentials, S3Store, S3Writer};
pub use signing::{SignatureError, UrlSigner};

/// S3's limit on key length, applied to both stores so that keys move between them.
const MAX_KEY_LEN: usize = 1024;

/// What went wrong with a blob. [`BlobError::kind`] says whether a retry can help.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("invalid blob key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },
    #[error("no blob with key {key:?}")]
    NotFound { key: String },
    #[error("range {range} is outside blob {key:?} of {size} bytes")]
    InvalidRange {
        key: String,
        range: ByteRange,
        size: u64,
    },
    #[error("blob {key:?} is corrupt or changed while read")]
    Checksum {
        key: String,
        #[source]
        source: ChecksumMismatch,
    },
    #[error("blob {key:?} is too large: {reason}")]
    TooLarge { key: String, reason: String },
    /// The server refused who we are or what we may do: wrong or missing credentials,
    /// a signature it does not accept, or a bucket policy.
    #[error(
        "S3 refused the credentials for {operation} in bucket {bucket:?} ({code}: {message}); \
         check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or the configured AWS credential \
         source) and the bucket's policy"
    )]
    Unauthorized {
        operation: &'static str,
        bucket: String,
        code: String,
        message: String,
    },
    #[error("S3 {operation} failed{}: {message}", status.map(|s| format!(" (HTTP {s})")).unwrap_or_default())]
    S3 {
        operation: &'static str,
        /// The HTTP status, when the server answered.
        status: Option<u16>,
        message: String,
    },
    #[error("blob store I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("blob store configuration: {0}")]
    Config(String),
}

impl BlobError {
    /// Retryable for what may pass (I/O, S3 5xx, throttling, connections, a checksum
    /// mismatch that a second download may not repeat); fatal otherwise.
    pub fn kind(&self) -> ErrorKind {
        match self {
            BlobError::Checksum { .. } | BlobError::Io { .. } => ErrorKind::Retryable,
            BlobError::S3 { status, .. } => match status {
                None | Some(408 | 429 | 500..=599) => ErrorKind::Retryable,
                Some(_) => ErrorKind::Fatal,
            },
            BlobError::InvalidKey { .. }
            | BlobError::NotFound { .. }
            | BlobError::InvalidRange { .. }
            | BlobError::TooLarge { .. }
            | BlobError::Unauthorized { .. }
            | BlobError::Config(_) => ErrorKind::Fatal,
        }
    }

    pub fn is_retryable(&self) -> bool {
        self.kind() == ErrorKind::Retryable
    }
}

impl From<BlobError> for StepError {
    fn from(error: BlobError) -> Self {
        StepError::from_error(error.kind(), &error)
    }
}

/// What a store knows about a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    pub key: String,
    pub size: u64,
    pub content_type: Option<String>,
    /// SHA-256 of the content, hex: always on the local store; on S3 returned by
    /// `put`, and by `head` and `get` for blobs written in one part (a multipart blob
    /// is verified by S3's composite checksum instead). `list` on S3 does not return it.
    pub sha256: Option<String>,
    /// The store's entity tag, quoted as in HTTP: changes whenever the content does.
    pub etag: Option<String>,
    pub last_modified: Option<DateTime<Utc>>,
}

/// Options of a put.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Served as `Content-Type`; `application/octet-stream` when unset.
    pub content_type: Option<String>,
}

impl PutOptions {
    pub fn content_type(content_type: impl Into<String>) -> Self {
        Self {
            content_type: Some(content_type.into()),
        }
    }
}

/// A body being downloaded.
pub type BlobReader = Pin<Box<dyn AsyncRead + Send>>;

/// A blob being read: its metadata and a streaming body.
pub struct Download {
    pub meta: BlobMeta,
    /// First and last byte (included) of the body when a range was asked for.
    pub range: Option<(u64, u64)>,
    pub body: BlobReader,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("meta", &self.meta)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

impl Download {
    /// How many bytes the body holds.
    pub fn len(&self) -> u64 {
        match self.range {
            Some((first, last)) => last - first + 1,
            None => self.meta.size,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the whole body into memory (checking the checksum of a full read).
    pub async fn bytes(mut self) -> Result<Vec<u8>, BlobError> {
        let mut out = Vec::with_capacity(self.len().min(64 << 20) as usize);
        match self.body.read_to_end(&mut out).await {
            Ok(_) => Ok(out),
            Err(e) => Err(read_error(&self.meta.key, e)),
        }
    }
}

/// Turns a read error of a download body into a [`BlobError`], recognising a checksum
/// mismatch.
pub fn read_error(key: &str, error: std::io::Error) -> BlobError {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<ChecksumMismatch>())
    {
        Some(mismatch) => BlobError::Checksum {
            key: key.to_owned(),
            source: mismatch.clone(),
        },
        None => BlobError::Io {
            path: PathBuf::from(key),
            source: error,
        },
    }
}

/// Blob settings, as `waymark` reads them from its environment.
#[derive(Debug, Clone)]
pub struct BlobConfig {
    /// `$WAYMARK_DATA_DIR/blobs`: the local store's root.
    pub local_dir: PathBuf,
    /// Where clients reach Waymark, for the local store's signed URLs.
    pub public_url: String,
    /// `WAYMARK_BLOB_SIGNING_KEY`; unset: a random key kept in `signing_key_file`.
    pub signing_key: Option<String>,
    /// `$WAYMARK_DATA_DIR/blob-signing.key`.
    pub signing_key_file: PathBuf,
    /// Set (by `WAYMARK_S3_BUCKET`): use S3 instead of local files.
    pub s3: Option<S3Config>,
}

/// The blob store, local or S3. Cheap to clone.
#[derive(Debug, Clone)]
pub enum BlobStore {
    Local(LocalStore),
    S3(S3Store),
}

macro_rules! dispatch {
    ($self:ident, $store:ident => $body:expr) => {
        match $self {
            Self::Local($store) => $body,
            Self::S3($store) => $body,
        }
    };
}

impl BlobStore {
    pub async fn from_config(config: BlobConfig) -> Result<BlobStore, BlobError> {
        Ok(match config.s3 {
            Some(s3) => BlobStore::S3(S3Store::connect(s3).await?),
            None => {
                let signer = UrlSigner::load_or_create(
                    config.signing_key.as_deref(),
                    &config.signing_key_file,
                )?;
                BlobStore::Local(LocalStore::new(
                    config.local_dir,
                    signer,
                    config.public_url,
                )?)
            }
        })
    }

    /// `s3://bucket` or `file:/path`, for logs.
    pub fn describe(&self) -> String {
        dispatch!(self, s => s.describe())
    }

    /// Stores everything `body` yields under `key`, replacing any blob there.
    pub async fn put(
        &self,
        key: &str,
        body: impl AsyncRead + Send + Unpin,
        options: PutOptions,
    ) -> Result<BlobMeta, BlobError> {
        let mut body = body;
        self.put_from(key, &mut body, None, options).await
    }

    pub async fn put_bytes(
        &self,
        key: &str,
        bytes: impl AsRef<[u8]>,
        options: PutOptions,
    ) -> Result<BlobMeta, BlobError> {
        let bytes = bytes.as_ref();
        let mut body = bytes;
        self.put_from(key, &mut body, Some(bytes.len() as u64), options)
            .await
    }

    /// Streams the file at `path` into `key`; its size picks the part size.
    pub async fn put_file(
        &self,
        key: &str,
        path: &Path,
        options: PutOptions,
    ) -> Result<BlobMeta, BlobError> {
        let io = |source| BlobError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = tokio::fs::File::open(path).await.map_err(io)?;
        let size = file.metadata().await.map_err(io)?.len();
        self.put_from(key, &mut file, Some(size), options).await
    }

    /// A writer that streams a blob of unknown size into `key` in bounded memory
    /// (one part on S3, a small buffer locally), hashing it as it goes. The blob
    /// appears, replacing any at `key`, only when [`BlobWriter::finish`] succeeds.
    pub async fn writer(&self, key: &str, options: PutOptions) -> Result<BlobWriter, BlobError> {
        self.writer_sized(key, None, &options).await
    }

    /// A writer whose S3 part size may follow `size_hint`, the blob's size if known.
    async fn writer_sized(
        &self,
        key: &str,
        size_hint: Option<u64>,
        options: &PutOptions,
    ) -> Result<BlobWriter, BlobError> {
        Ok(match self {
            BlobStore::Local(s) => BlobWriter::Local(s.writer(key, options).await?),
            BlobStore::S3(s) => BlobWriter::S3(s.writer(key, size_hint, options)?),
        })
    }

    /// Every `put` is a writer fed from `body`: one upload path for both stores, which
    /// stores nothing unless the whole body was read.
    async fn put_from(
        &self,
        key: &str,
        body: &mut (dyn AsyncRead + Send + Unpin),
        size_hint: Option<u64>,
        options: PutOptions,
    ) -> Result<BlobMeta, BlobError> {
        use tokio::io::AsyncReadExt;
        let mut writer = self.writer_sized(key, size_hint, &options).await?;
        let mut chunk = vec![0u8; parts::COPY_CHUNK];
        loop {
            match body.read(&mut chunk).await {
                Ok(0) => return writer.finish().await,
                Ok(n) => writer.write(&chunk[..n]).await?,
                Err(source) => {
                    writer.abort().await;
                    return Err(BlobError::Io {
                        path: key.into(),
                        source,
                    });
                }
            }
        }
    }

    /// The blob at `key`, whole or `range`. A whole read verifies the checksum as it
    /// streams; a range cannot be verified.
    pub async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Download, BlobError> {
        dispatch!(self, s => s.get(key, range).await)
    }

    pub async fn get_bytes(
        &self,
        key: &str,
        range: Option<ByteRange>,
    ) -> Result<Vec<u8>, BlobError> {
        self.get(key, range).await?.bytes().await
    }

    /// The blob's metadata, or `None` if there is no blob at `key`.
    pub async fn head(&self, key: &str) -> Result<Option<BlobMeta>, BlobError> {
        dispatch!(self, s => s.head(key).await)
    }

    /// Every blob whose key starts with `prefix`, in key order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<BlobMeta>, BlobError> {
        dispatch!(self, s => s.list(prefix).await)
    }

    /// Deletes the blob at `key`; false if there was none.
    pub async fn delete(&self, key: &str) -> Result<bool, BlobError> {
        dispatch!(self, s => s.delete(key).await)
    }

    /// Deletes every blob whose key starts with `prefix`; returns how many.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64, BlobError> {
        dispatch!(self, s => s.delete_prefix(prefix).await)
    }

    /// A URL anyone holding it may download `key` from until `expires_in` has passed.
    pub async fn download_url(&self, key: &str, expires_in: Duration) -> Result<String, BlobError> {
        self.download_url_at(key, Utc::now(), expires_in).await
    }

    /// [`BlobStore::download_url`] as if signed at `now`: tests make links that are
    /// already expired without waiting.
    pub async fn download_url_at(
        &self,
        key: &str,
        now: DateTime<Utc>,
        expires_in: Duration,
    ) -> Result<String, BlobError> {
        dispatch!(self, s => s.download_url_at(key, now, expires_in).await)
    }
}

/// A blob being written piece by piece (see [`BlobStore::writer`]).
///
/// A failed `write` or `finish` leaves nothing at the key (an S3 multipart upload is
/// aborted, a local temporary file removed); so do [`BlobWriter::abort`] and dropping
/// the writer unfinished. Writing the same key again later replaces the blob, as a put
/// does.
#[derive(Debug)]
pub enum BlobWriter {
    Local(LocalWriter),
    S3(S3Writer),
}

impl BlobWriter {
    /// Appends `bytes` to the blob.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), BlobError> {
        dispatch!(self, w => w.write(bytes).await)
    }

    /// Stores what was written; the metadata has its size and SHA-256 (hex).
    pub async fn finish(self) -> Result<BlobMeta, BlobError> {
        dispatch!(self, w => w.finish().await)
    }

    /// Stores nothing and discards what was written so far.
    pub async fn abort(self) {
        dispatch!(self, w => w.abort().await)
    }
}

/// Checks a key: 1 to 1024 bytes, `/`-separated segments that are neither empty nor
/// `.` or `..`, no control characters. Both stores apply the same rules, so a key that
/// works in embedded mode works on S3 and cannot climb out of the local root.
pub fn validate_key(key: &str) -> Result<(), BlobError> {
    let invalid = |reason: &str| BlobError::InvalidKey {
        key: key.to_owned(),
        reason: reason.to_owned(),
    };
    if key.is_empty() {
        return Err(invalid("it is empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(invalid("it is longer than 1024 bytes"));
    }
    validate_segments(key, key.split('/'))
}

/// Checks a prefix for `list` and `delete_prefix`: like a key, but it may be empty and
/// its last segment may be partial or empty (`invoices/`).
pub fn validate_prefix(prefix: &str) -> Result<(), BlobError> {
    if prefix.len() > MAX_KEY_LEN {
        return Err(BlobError::InvalidKey {
            key: prefix.to_owned(),
            reason: "it is longer than 1024 bytes".into(),
        });
    }
    match prefix.rsplit_once('/') {
        Some((dirs, last)) => {
            validate_segments(prefix, dirs.split('/'))?;
            validate_segments(prefix, std::iter::once(last).filter(|s| !s.is_empty()))
        }
        None => validate_segments(prefix, std::iter::once(prefix).filter(|s| !s.is_empty())),
    }
}

fn validate_segments<'a>(
    key: &str,
    segments: impl Iterator<Item = &'a str>,
) -> Result<(), BlobError> {
    let invalid = |reason: &str| BlobError::InvalidKey {
        key: key.to_owned(),
        reason: reason.to_owned(),
    };
    for segment in segments {
        match segment {
            "" => {
                return Err(invalid(
                    "it has an empty segment (leading, trailing or double /)",
                ))
            }
            "." | ".." => return Err(invalid("it has a . or .. segment")),
            s if s.chars().any(char::is_control) => {
                return Err(invalid("it contains a control character"))
            }
            s if s.len() > local::MAX_SEGMENT_LEN => {
                return Err(invalid("a segment is longer than 200 bytes"))
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_could_escape_or_confuse_are_refused() {
        for good in [
            "a",
            "invoices/2026/11/inv-1.pdf",
            "ü/ß e.txt",
            "a.b/.hidden",
        ] {
            validate_key(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "",
            "/abs",
            "trailing/",
            "a//b",
            "../up",
            "a/./b",
            "a/..",
            "tab\there",
        ] {
            assert!(
                matches!(validate_key(bad), Err(BlobError::InvalidKey { .. })),
                "{bad:?} accepted"
            );
        }
        assert!(validate_key(&"k".repeat(1025)).is_err());
    }

    #[test]
    fn prefixes_may_be_empty_or_end_in_a_slash() {
        for good in ["", "invoices/", "invoices/20", "inv"] {
            validate_prefix(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in ["/", "../", "a//", "a/../b"] {
            assert!(validate_prefix(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn errors_say_whether_a_retry_can_help() {
        let s3 = |status| BlobError::S3 {
            operation: "PutObject",
            status,
            message: "x".into(),
        };
        assert!(s3(None).is_retryable());
        assert!(s3(Some(503)).is_retryable());
        assert!(s3(Some(429)).is_retryable());
        assert!(!s3(Some(400)).is_retryable());
        assert!(!BlobError::NotFound { key: "k".into() }.is_retryable());
        let step: StepError = BlobError::NotFound { key: "k".into() }.into();
        assert!(!step.is_retryable());
    }
}
