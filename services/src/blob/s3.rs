//! The S3 blob store (aws-sdk-s3), for AWS and S3-compatible servers.
//!
//! Integrity: every upload request carries its body's SHA-256
//! (`x-amz-checksum-sha256`), which the server checks before accepting it. A single
//! put also stores the whole blob's SHA-256 as metadata (`waymark-sha256`), which a
//! full `get` verifies while streaming. A multipart put stores its part size
//! (`waymark-part-size`) instead, since metadata is fixed before the parts are known;
//! a full `get` then recomputes S3's composite checksum over the same part boundaries
//! and compares it with the one the server reports, and the put itself compares the
//! server's composite checksum with its own before returning. (A server that reports
//! no checksum leaves multipart reads unverified; AWS and SeaweedFS report one.)

use std::time::{Duration, SystemTime};

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, ChecksumMode, CompletedMultipartUpload, CompletedPart, Delete,
    ObjectIdentifier,
};
use aws_sdk_s3::Client;
use chrono::{DateTime, TimeZone, Utc};
use sha2::{Digest, Sha256};

pub mod multipart;

use super::parts::{self, composite_sha256, sha256_hex, Expected, Verifying};
use super::{validate_key, validate_prefix, BlobError, BlobMeta, ByteRange, Download, PutOptions};

const META_SHA256: &str = "waymark-sha256";
const META_PART_SIZE: &str = "waymark-part-size";
/// DeleteObjects takes at most this many keys per request.
const DELETE_BATCH: usize = 1000;

/// Static credentials, for when the standard AWS sources should not be consulted.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Where and how to reach the bucket.
#[derive(Debug, Clone)]
pub struct S3Config {
    pub bucket: String,
    /// For S3-compatible servers (`http://127.0.0.1:8333`); unset means AWS.
    pub endpoint: Option<String>,
    /// Unset: the AWS region sources (`AWS_REGION`, profile), then `us-east-1`.
    pub region: Option<String>,
    /// `bucket` in the path instead of the host name, as most S3-compatible servers need.
    pub path_style: bool,
    /// Blobs larger than one part are uploaded in parts of this size (at least 5 MiB).
    pub part_size: u64,
    /// Unset: the standard AWS credential sources (`AWS_ACCESS_KEY_ID`… in the
    /// environment, profiles, web identity, container and instance roles).
    pub credentials: Option<S3Credentials>,
}

impl S3Config {
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            endpoint: None,
            region: None,
            path_style: false,
            part_size: parts::DEFAULT_PART_SIZE,
            credentials: None,
        }
    }
}

/// Blobs in one S3 bucket. Cheap to clone (the client is shared).
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    part_size: u64,
}

impl S3Store {
    /// Builds the client. Nothing is sent yet: wrong credentials show on first use.
    pub async fn connect(config: S3Config) -> Result<S3Store, BlobError> {
        if config.bucket.is_empty() {
            return Err(BlobError::Config("the S3 bucket name is empty".into()));
        }
        // One TLS stack for the whole binary: rustls with ring (lettre uses the same).
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader =
            aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http);
        if let Some(region) = config.region.clone().filter(|r| !r.is_empty()) {
            loader = loader.region(Region::new(region));
        }
        if let Some(credentials) = &config.credentials {
            loader = loader.credentials_provider(Credentials::new(
                credentials.access_key_id.clone(),
                credentials.secret_access_key.clone(),
                None,
                None,
                "waymark-config",
            ));
        }
        let shared = loader.load().await;
        let mut s3 = aws_sdk_s3::config::Builder::from(&shared).force_path_style(config.path_style);
        if shared.region().is_none() {
            // S3-compatible servers rarely care, but SigV4 needs some region.
            s3 = s3.region(Region::from_static("us-east-1"));
        }
        if let Some(endpoint) = config.endpoint.filter(|e| !e.is_empty()) {
            s3 = s3.endpoint_url(endpoint);
        }
        Ok(S3Store {
            client: Client::from_conf(s3.build()),
            bucket: config.bucket,
            part_size: parts::part_size(config.part_size, None),
        })
    }

    pub fn describe(&self) -> String {
        format!("s3://{}", self.bucket)
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }
    /// A writer for `key` that uploads one part at a time: parts of the configured
    /// size (grown so that `size_hint` bytes fit in S3's 10 000 parts), or a single
    /// PutObject if everything fits in one part.
    pub fn writer(
        &self,
        key: &str,
        size_hint: Option<u64>,
        options: &PutOptions,
    ) -> Result<S3Writer, BlobError> {
        validate_key(key)?;
        Ok(S3Writer {
            store: self.clone(),
            key: key.to_owned(),
            options: options.clone(),
            part_size: parts::part_size(self.part_size, size_hint),
            buf: Vec::new(),
            whole: Sha256::new(),
            size: 0,
            upload: None,
        })
    }

    async fn put_single(
        &self,
        key: &str,
        bytes: Vec<u8>,
        options: &PutOptions,
    ) -> Result<BlobMeta, BlobError> {
        let sha256 = sha256_hex(&bytes);
        let size = bytes.len() as u64;
        let out = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type(options))
            .checksum_sha256(parts::sha256_base64(&bytes))
            .metadata(META_SHA256, &sha256)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| self.error("PutObject", key, e))?;
        Ok(BlobMeta {
            key: key.to_owned(),
            size,
            content_type: options.content_type.clone(),
            sha256: Some(sha256),
            etag: out.e_tag().map(str::to_owned),
            last_modified: None,
        })
    }

    async fn abort_upload(&self, key: &str, upload_id: &str) {
        // Parts of an upload that is never completed are billed until aborted.
        if let Err(abort) = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
        {
            tracing::warn!(key, error = %DisplayErrorContext(&abort), "cannot abort multipart upload");
        }
    }

    pub async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Download, BlobError> {
        validate_key(key)?;
        let mut request = self.client.get_object().bucket(&self.bucket).key(key);
        request = match range {
            Some(range) => request.range(range.to_http()),
            // Asks the server for the stored checksum, which a multipart blob needs.
            None => request.checksum_mode(ChecksumMode::Enabled),
        };
        let out = match request.send().await {
            Ok(out) => out,
            Err(e) => {
                if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                    return Err(BlobError::NotFound {
                        key: key.to_owned(),
                    });
                }
                if e.raw_response().map(|r| r.status().as_u16()) == Some(416) {
                    if let (Some(range), Some(meta)) = (range, self.head(key).await?) {
                        return Err(BlobError::InvalidRange {
                            key: key.to_owned(),
                            range,
                            size: meta.size,
                        });
                    }
                }
                return Err(self.error("GetObject", key, e));
            }
        };
        let metadata = out.metadata().cloned().unwrap_or_default();
        let (range_got, size) = match out.content_range().and_then(parse_content_range) {
            Some((first, last, size)) => (Some((first, last)), size),
            None => (None, out.content_length().unwrap_or(0).max(0) as u64),
        };
        let stored_sha256 = metadata.get(META_SHA256).cloned();
        let expected = match (&stored_sha256, metadata.get(META_PART_SIZE)) {
            (Some(hex), _) => Some(Expected::Sha256Hex(hex.clone())),
            (None, Some(part_size)) => match (part_size.parse(), out.checksum_sha256()) {
                (Ok(part_size), Some(checksum)) if checksum.contains('-') => {
                    Some(Expected::Composite {
                        part_size,
                        checksum: checksum.to_owned(),
                    })
                }
                _ => None,
            },
            _ => None,
        };
        let meta = BlobMeta {
            key: key.to_owned(),
            size,
            content_type: out.content_type().map(str::to_owned),
            sha256: stored_sha256,
            etag: out.e_tag().map(str::to_owned),
            last_modified: out.last_modified().and_then(to_chrono),
        };
        let reader = out.body.into_async_read();
        let body: super::BlobReader = match (range, expected) {
            (None, Some(expected)) => Box::pin(Verifying::new(reader, expected)),
            _ => Box::pin(reader),
        };
        Ok(Download {
            meta,
            range: range_got.filter(|_| range.is_some()),
            body,
        })
    }

    pub async fn head(&self, key: &str) -> Result<Option<BlobMeta>, BlobError> {
        validate_key(key)?;
        let out = match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => return Ok(None),
            Err(e) => return Err(self.error("HeadObject", key, e)),
        };
        Ok(Some(BlobMeta {
            key: key.to_owned(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            content_type: out.content_type().map(str::to_owned),
            sha256: out.metadata().and_then(|m| m.get(META_SHA256)).cloned(),
            etag: out.e_tag().map(str::to_owned),
            last_modified: out.last_modified().and_then(to_chrono),
        }))
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<BlobMeta>, BlobError> {
        validate_prefix(prefix)?;
        let mut found = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| self.error("ListObjectsV2", prefix, e))?;
            for object in page.contents() {
                found.push(BlobMeta {
                    key: object.key().unwrap_or_default().to_owned(),
                    size: object.size().unwrap_or(0).max(0) as u64,
                    content_type: None,
                    sha256: None,
                    etag: object.e_tag().map(str::to_owned),
                    last_modified: object.last_modified().and_then(to_chrono),
                });
            }
        }
        found.sort_by(|a, b| a.key.as_bytes().cmp(b.key.as_bytes()));
        Ok(found)
    }

    pub async fn delete(&self, key: &str) -> Result<bool, BlobError> {
        // S3's DeleteObject succeeds whether or not the key existed; ask first so the
        // answer means something.
        if self.head(key).await?.is_none() {
            return Ok(false);
        }
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.error("DeleteObject", key, e))?;
        Ok(true)
    }

    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64, BlobError> {
        let keys: Vec<String> = self
            .list(prefix)
            .await?
            .into_iter()
            .map(|b| b.key)
            .collect();
        let mut deleted = 0u64;
        for batch in keys.chunks(DELETE_BATCH) {
            let objects = batch
                .iter()
                .map(|key| ObjectIdentifier::builder().key(key).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| BlobError::Config(e.to_string()))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| BlobError::Config(e.to_string()))?;
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| self.error("DeleteObjects", prefix, e))?;
            if let Some(failed) = out.errors().first() {
                return Err(BlobError::S3 {
                    operation: "DeleteObjects",
                    status: None,
                    message: format!(
                        "{} of {} keys were not deleted; first {:?}: {} {}",
                        out.errors().len(),
                        batch.len(),
                        failed.key().unwrap_or_default(),
                        failed.code().unwrap_or_default(),
                        failed.message().unwrap_or_default()
                    ),
                });
            }
            deleted += batch.len() as u64;
        }
        Ok(deleted)
    }

    /// A presigned GET URL valid from `now` for `expires_in` (at most 7 days, S3's
    /// limit).
    pub async fn download_url_at(
        &self,
        key: &str,
        now: DateTime<Utc>,
        expires_in: Duration,
    ) -> Result<String, BlobError> {
        validate_key(key)?;
        let start =
            SystemTime::UNIX_EPOCH + Duration::from_millis(now.timestamp_millis().max(0) as u64);
        let presigning = PresigningConfig::builder()
            .start_time(start)
            .expires_in(expires_in)
            .build()
            .map_err(|e| BlobError::Config(format!("presigned URL expiry: {e}")))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(presigning)
            .await
            .map_err(|e| self.error("GetObject (presign)", key, e))?;
        Ok(request.uri().to_owned())
    }

    /// Maps an SDK error, singling out refused credentials.
    fn error<E>(
        &self,
        operation: &'static str,
        key: &str,
        error: SdkError<E, HttpResponse>,
    ) -> BlobError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let status = error.raw_response().map(|r| r.status().as_u16());
        let code = error.code().map(str::to_owned);
        let refused = matches!(
            code.as_deref(),
            Some(
                "InvalidAccessKeyId"
                    | "SignatureDoesNotMatch"
                    | "AccessDenied"
                    | "ExpiredToken"
                    | "InvalidToken"
                    | "InvalidSecurity"
            )
        ) || status == Some(403);
        if refused {
            return BlobError::Unauthorized {
                operation,
                bucket: self.bucket.clone(),
                code: code.unwrap_or_else(|| "HTTP 403".into()),
                message: error
                    .message()
                    .unwrap_or("the server gave no reason")
                    .to_owned(),
            };
        }
        if matches!(
            code.as_deref(),
            Some("BadDigest" | "InvalidDigest" | "XAmzContentSHA256Mismatch")
        ) {
            // The server received other bytes than we hashed: damaged in transit, so
            // worth another try (a retryable error, unlike other 400s).
            return BlobError::Checksum {
                key: key.to_owned(),
                source: parts::ChecksumMismatch {
                    expected: "the checksum sent with the request".into(),
                    actual: format!(
                        "what {operation} received ({})",
                        error.message().unwrap_or("no detail")
                    ),
                },
            };
        }
        let message = match (&code, error.message()) {
            (Some(code), Some(message)) => format!("{code}: {message} (key {key:?})"),
            (Some(code), None) => format!("{code} (key {key:?})"),
            _ => format!("{} (key {key:?})", DisplayErrorContext(&error)),
        };
        BlobError::S3 {
            operation,
            status,
            message,
        }
    }
}

/// A blob being written to S3 (see [`S3Store::writer`]). Holds at most one part in
/// memory. Until [`S3Writer::finish`] returns, nothing is visible at the key; a failed
/// write or finish aborts the multipart upload, and so do [`S3Writer::abort`] and
/// dropping the writer unfinished.
pub struct S3Writer {
    store: S3Store,
    key: String,
    options: PutOptions,
    part_size: u64,
    /// The part being filled: uploaded once full and more bytes arrive, so a blob
    /// that fits in one part is a single PutObject.
    buf: Vec<u8>,
    whole: Sha256,
    size: u64,
    upload: Option<Upload>,
}

/// A multipart upload in progress.
struct Upload {
    id: String,
    completed: Vec<CompletedPart>,
    digests: Vec<[u8; 32]>,
}

impl std::fmt::Debug for S3Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Writer")
            .field("key", &self.key)
            .field("size", &self.size)
            .field(
                "parts",
                &self.upload.as_ref().map_or(0, |u| u.completed.len()),
            )
            .finish_non_exhaustive()
    }
}

impl S3Writer {
    /// Appends `bytes`, uploading a part whenever one is full.
    pub async fn write(&mut self, mut bytes: &[u8]) -> Result<(), BlobError> {
        self.whole.update(bytes);
        self.size += bytes.len() as u64;
        while !bytes.is_empty() {
            if self.buf.len() as u64 == self.part_size {
                if let Err(error) = self.upload_part().await {
                    self.abort_upload().await;
                    return Err(error);
                }
            }
            if self.buf.capacity() == 0 {
                self.buf.reserve_exact(self.part_size as usize);
            }
            let room = self.part_size as usize - self.buf.len();
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.buf.extend_from_slice(now);
            bytes = rest;
        }
        Ok(())
    }

    /// Uploads what is left and makes the blob visible; returns its metadata with its
    /// size and SHA-256.
    pub async fn finish(mut self) -> Result<BlobMeta, BlobError> {
        if self.upload.is_none() {
            let bytes = std::mem::take(&mut self.buf);
            return self.store.put_single(&self.key, bytes, &self.options).await;
        }
        match self.complete().await {
            Ok(meta) => Ok(meta),
            Err(error) => {
                self.abort_upload().await;
                Err(error)
            }
        }
    }

    /// Gives up: nothing is stored, and uploaded parts are discarded.
    pub async fn abort(mut self) {
        self.abort_upload().await;
    }

    async fn abort_upload(&mut self) {
        if let Some(upload) = self.upload.take() {
            self.store.abort_upload(&self.key, &upload.id).await;
        }
    }

    /// Uploads the buffer as the next part, starting the multipart upload first if
    /// this is the first part.
    async fn upload_part(&mut self) -> Result<(), BlobError> {
        let (store, key) = (&self.store, self.key.as_str());
        if self.upload.is_none() {
            let created = store
                .client
                .create_multipart_upload()
                .bucket(&store.bucket)
                .key(key)
                .content_type(content_type(&self.options))
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .metadata(META_PART_SIZE, self.part_size.to_string())
                .send()
                .await
                .map_err(|e| store.error("CreateMultipartUpload", key, e))?;
            self.upload = Some(Upload {
                id: created.upload_id().unwrap_or_default().to_owned(),
                completed: Vec::new(),
                digests: Vec::new(),
            });
        }
        let upload = self.upload.as_mut().expect("started above");
        let number = upload.completed.len() as i32 + 1;
        if number as u64 > parts::MAX_PARTS {
            return Err(BlobError::TooLarge {
                key: key.to_owned(),
                reason: format!(
                    "more than {} parts of {} bytes; pass its size (put_file) so the part size can grow",
                    parts::MAX_PARTS,
                    self.part_size
                ),
            });
        }
        let part = std::mem::take(&mut self.buf);
        let digest: [u8; 32] = Sha256::digest(&part).into();
        let checksum = base64_of(&digest);
        let out = store
            .client
            .upload_part()
            .bucket(&store.bucket)
            .key(key)
            .upload_id(&upload.id)
            .part_number(number)
            .checksum_sha256(&checksum)
            .body(ByteStream::from(part))
            .send()
            .await
            .map_err(|e| store.error("UploadPart", key, e))?;
        upload.digests.push(digest);
        upload.completed.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_owned))
                .checksum_sha256(checksum)
                .build(),
        );
        Ok(())
    }

    /// Uploads the last part and completes the upload, checking S3's composite
    /// checksum against ours.
    async fn complete(&mut self) -> Result<BlobMeta, BlobError> {
        // Never empty here: a part is only uploaded when more bytes follow it.
        self.upload_part().await?;
        let (store, key) = (&self.store, self.key.as_str());
        let upload = self.upload.take().expect("a multipart upload");
        let done = store
            .client
            .complete_multipart_upload()
            .bucket(&store.bucket)
            .key(key)
            .upload_id(&upload.id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(upload.completed))
                    .build(),
            )
            .send()
            .await;
        let done = match done {
            Ok(done) => done,
            Err(e) => {
                // Still open: put it back so that finish aborts it.
                let error = store.error("CompleteMultipartUpload", key, e);
                self.upload = Some(Upload {
                    id: upload.id,
                    completed: Vec::new(),
                    digests: Vec::new(),
                });
                return Err(error);
            }
        };
        let ours = composite_sha256(&upload.digests);
        if let Some(theirs) = done.checksum_sha256().filter(|c| c.contains('-')) {
            if theirs != ours {
                return Err(BlobError::Checksum {
                    key: key.to_owned(),
                    source: parts::ChecksumMismatch {
                        expected: ours,
                        actual: theirs.to_owned(),
                    },
                });
            }
        }
        Ok(BlobMeta {
            key: key.to_owned(),
            size: self.size,
            content_type: self.options.content_type.clone(),
            sha256: Some(hex::encode(std::mem::take(&mut self.whole).finalize())),
            etag: done.e_tag().map(str::to_owned),
            last_modified: None,
        })
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        // Dropped mid-upload (an error or a cancelled step elsewhere): abort it in the
        // background, if a runtime is still there to do it.
        if let Some(upload) = self.upload.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let (store, key) = (self.store.clone(), std::mem::take(&mut self.key));
                runtime.spawn(async move { store.abort_upload(&key, &upload.id).await });
            }
        }
    }
}

fn content_type(options: &PutOptions) -> String {
    options
        .content_type
        .clone()
        .unwrap_or_else(|| "application/octet-stream".into())
}

fn base64_of(digest: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(digest)
}

fn to_chrono(t: &aws_sdk_s3::primitives::DateTime) -> Option<DateTime<Utc>> {
    Utc.timestamp_opt(t.secs(), t.subsec_nanos()).single()
}

/// `bytes 0-99/1234` → (0, 99, 1234).
fn parse_content_range(header: &str) -> Option<(u64, u64, u64)> {
    let rest = header.trim().strip_prefix("bytes ")?;
    let (span, size) = rest.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?, size.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_headers_parse() {
        assert_eq!(parse_content_range("bytes 0-99/1234"), Some((0, 99, 1234)));
        assert_eq!(parse_content_range("bytes */1234"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }
}
