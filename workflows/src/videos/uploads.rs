//! Resumable uploads, the storage side of the tus 1.0 protocol the API speaks at
//! `/v1/uploads`: an upload row per upload (`video_uploads`) and its bytes.
//!
//! Where the bytes go depends on the blob store:
//! - **local**: a staging file `<blobs>/staging/<id>`, written at the request's offset
//!   and cut to it, so bytes a dead process wrote past the recorded offset are simply
//!   overwritten by the resumed request; the finished file is put at [`data_key`].
//! - **S3**: an S3 multipart upload started on creation. Parts are exactly the store's
//!   part size (at least 5 MiB) except the last; the bytes of a part not yet full are
//!   kept as a blob `uploads/<id>/buffer-<offset>` named after the offset they end at,
//!   so a buffer is never overwritten in place: the row names the offset, and with it
//!   the one buffer that belongs to it. Finishing uploads the last part and completes
//!   the multipart upload at [`data_key`].
//!
//! Each append is fenced on the offset it started from (`WHERE upload_offset = $n`): of
//! two requests racing from the same offset, one records its bytes and the other gets
//! [`UploadError::OffsetMismatch`]. Within one process appends to the same upload also
//! take turns, so their staging writes do not interleave.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use uuid::Uuid;
use waymark_engine::store::sql::{Arg, Row};
use waymark_engine::{Store, StoreError};
use waymark_services::{BlobError, BlobStore, PutOptions, UploadedPart};

/// Where a finished upload's bytes are.
pub fn data_key(id: Uuid) -> String {
    format!("uploads/{id}/data")
}

fn buffer_key(id: Uuid, offset: u64) -> String {
    format!("uploads/{id}/buffer-{offset}")
}

fn staging_path(blobs: &BlobStore, id: Uuid) -> Option<PathBuf> {
    match blobs {
        BlobStore::Local(local) => Some(local.root().join("staging").join(id.to_string())),
        BlobStore::S3(_) => None,
    }
}

/// Limits on uploads.
#[derive(Debug, Clone)]
pub struct UploadSettings {
    /// The largest `Upload-Length` accepted (`Tus-Max-Size`).
    pub max_size: u64,
    /// The largest body one request may carry; larger ones are refused with 413 and a
    /// client sends smaller chunks.
    pub max_chunk: u64,
    /// `filetype` values accepted in `Upload-Metadata`; `type/*` accepts a whole type.
    /// An upload that names no type is accepted (the probe decides what it is).
    pub allowed_types: Vec<String>,
    /// An unfinished upload expires this long after it was last written to.
    pub expires_after: Duration,
}

impl Default for UploadSettings {
    fn default() -> Self {
        Self {
            max_size: 20 << 30,
            max_chunk: 64 << 20,
            allowed_types: vec!["video/*".into(), "application/octet-stream".into()],
            expires_after: Duration::from_secs(24 * 3600),
        }
    }
}

impl UploadSettings {
    pub fn allows_type(&self, filetype: &str) -> bool {
        let filetype = filetype.trim().to_ascii_lowercase();
        self.allowed_types
            .iter()
            .any(|allowed| match allowed.strip_suffix("/*") {
                Some(major) => filetype
                    .split_once('/')
                    .is_some_and(|(m, sub)| m == major && !sub.is_empty()),
                None => *allowed == filetype,
            })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("upload {0} not found")]
    NotFound(Uuid),
    #[error("upload {0} has expired and its data was deleted")]
    Expired(Uuid),
    #[error("Upload-Offset is {got} but the upload is at offset {expected}: resume from the offset HEAD returns")]
    OffsetMismatch { expected: u64, got: u64 },
    #[error("the body's sha1 is {actual}, not the {expected} Upload-Checksum gave: nothing was stored, send the chunk again")]
    ChecksumMismatch { expected: String, actual: String },
    #[error("{0}")]
    TooLarge(String),
    #[error("file type {0:?} is not allowed (allowed: {1})")]
    TypeNotAllowed(String, String),
    #[error("upload {0} is already complete")]
    Complete(Uuid),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("staging file {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An upload as recorded.
#[derive(Debug, Clone)]
pub struct Upload {
    pub id: Uuid,
    pub tenant: String,
    pub length: u64,
    pub offset: u64,
    /// `Upload-Metadata`, decoded (`filename`, `filetype`, …).
    pub metadata: BTreeMap<String, String>,
    pub complete: bool,
    pub s3_upload_id: Option<String>,
    pub parts: Vec<UploadedPart>,
    /// Bytes in `parts`; the rest of `offset` is in the buffer blob.
    pub parts_bytes: u64,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

impl Upload {
    fn from_row(row: &Row) -> Result<Upload, StoreError> {
        let metadata = match row.json("metadata")? {
            Value::Object(map) => map
                .into_iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned())))
                .collect(),
            _ => BTreeMap::new(),
        };
        let parts = serde_json::from_value(row.json("parts")?).unwrap_or_default();
        Ok(Upload {
            id: row.id("id")?,
            tenant: row.text("tenant")?,
            length: row.int("length")? as u64,
            offset: row.int("upload_offset")? as u64,
            metadata,
            complete: row.text("status")? == "complete",
            s3_upload_id: row.opt_text("s3_upload_id")?,
            parts,
            parts_bytes: row.int("parts_bytes")? as u64,
            expires_at: row.time("expires_at")?,
            created_at: row.time("created_at")?,
            completed_at: row.opt_time("completed_at")?,
        })
    }

    pub fn filetype(&self) -> Option<&str> {
        self.metadata.get("filetype").map(String::as_str)
    }

    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        !self.complete && self.expires_at <= now
    }
}

const COLUMNS: &str = "id, tenant, length, upload_offset, metadata, status, s3_upload_id, \
                       parts, parts_bytes, expires_at, created_at, completed_at";

/// Appends to one upload take turns within a process (the offset fence covers
/// processes).
fn turn(id: Uuid) -> Arc<tokio::sync::Mutex<()>> {
    static TURNS: OnceLock<Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    let mut turns = TURNS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    // Forget uploads nobody is appending to, so the map stays small.
    turns.retain(|_, lock| Arc::strong_count(lock) > 1);
    turns.entry(id).or_default().clone()
}

/// Uploads, over the store's database and the blob store.
#[derive(Debug, Clone)]
pub struct Uploads {
    pub store: Store,
    pub blobs: BlobStore,
    pub settings: UploadSettings,
}

impl Uploads {
    /// Records a new upload of `length` bytes for `tenant` and prepares its staging.
    pub async fn create(
        &self,
        tenant: &str,
        length: u64,
        metadata: BTreeMap<String, String>,
        now: DateTime<Utc>,
    ) -> Result<Upload, UploadError> {
        if length > self.settings.max_size {
            return Err(UploadError::TooLarge(format!(
                "Upload-Length {length} is over the limit of {} bytes",
                self.settings.max_size
            )));
        }
        if let Some(filetype) = metadata.get("filetype") {
            if !self.settings.allows_type(filetype) {
                return Err(UploadError::TypeNotAllowed(
                    filetype.clone(),
                    self.settings.allowed_types.join(", "),
                ));
            }
        }
        let id = Uuid::now_v7();
        let s3_upload_id = match &self.blobs {
            BlobStore::S3(s3) => {
                let options = PutOptions {
                    content_type: metadata.get("filetype").cloned(),
                };
                Some(s3.multipart_create(&data_key(id), &options).await?)
            }
            BlobStore::Local(_) => None,
        };
        let expires_at =
            now + chrono::Duration::from_std(self.settings.expires_after).unwrap_or_default();
        let meta_json = Value::Object(
            metadata
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        );
        self.store
            .sql_execute(
                "INSERT INTO video_uploads (id, tenant, length, upload_offset, metadata, status, \
                 s3_upload_id, parts, parts_bytes, expires_at, created_at, updated_at) \
                 VALUES ($1, $2, $3, 0, $4, 'uploading', $5, $6, 0, $7, $8, $8)",
                &[
                    Arg::id(id),
                    Arg::text(tenant),
                    Arg::int(length as i64),
                    Arg::json(meta_json),
                    Arg::Text(s3_upload_id.clone()),
                    Arg::json(Value::Array(Vec::new())),
                    Arg::time(expires_at),
                    Arg::time(now),
                ],
            )
            .await?;
        let upload = self.get(None, id).await?.ok_or(UploadError::NotFound(id))?;
        if length == 0 {
            // Nothing will ever be appended: it is complete as created.
            return self.append(&upload, 0, &[], now).await;
        }
        Ok(upload)
    }

    /// The upload `id`, if it exists and belongs to `tenant` (any tenant's for `None`).
    pub async fn get(&self, tenant: Option<&str>, id: Uuid) -> Result<Option<Upload>, UploadError> {
        let rows = self
            .store
            .sql_fetch(
                &format!("SELECT {COLUMNS} FROM video_uploads WHERE id = $1"),
                &[Arg::id(id)],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let upload = Upload::from_row(row)?;
        Ok(tenant.is_none_or(|t| t == upload.tenant).then_some(upload))
    }

    /// Appends `bytes` at `offset`, which must be the upload's offset. With `sha1`
    /// (base64, from `Upload-Checksum`) the bytes must hash to it, or nothing is stored.
    /// The last byte makes the upload complete and its data readable at [`data_key`].
    pub async fn append_checked(
        &self,
        upload: &Upload,
        offset: u64,
        bytes: &[u8],
        sha1: Option<&[u8]>,
        now: DateTime<Utc>,
    ) -> Result<Upload, UploadError> {
        if let Some(expected) = sha1 {
            let actual = Sha1::digest(bytes);
            if actual.as_slice() != expected {
                use base64::Engine as _;
                let b64 = base64::engine::general_purpose::STANDARD;
                return Err(UploadError::ChecksumMismatch {
                    expected: b64.encode(expected),
                    actual: b64.encode(actual),
                });
            }
        }
        self.append(upload, offset, bytes, now).await
    }

    async fn append(
        &self,
        upload: &Upload,
        offset: u64,
        bytes: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Upload, UploadError> {
        let turn = turn(upload.id);
        let _turn = turn.lock().await;
        // Read again under the turn: another request may have moved it.
        let upload = self
            .get(None, upload.id)
            .await?
            .ok_or(UploadError::NotFound(upload.id))?;
        if upload.complete {
            return Err(UploadError::Complete(upload.id));
        }
        if upload.expired(now) {
            return Err(UploadError::Expired(upload.id));
        }
        if offset != upload.offset {
            return Err(UploadError::OffsetMismatch {
                expected: upload.offset,
                got: offset,
            });
        }
        let end = offset + bytes.len() as u64;
        if end > upload.length {
            return Err(UploadError::TooLarge(format!(
                "the body ends at byte {end}, past the Upload-Length of {}",
                upload.length
            )));
        }
        let finished = end == upload.length;
        let mut parts = upload.parts.clone();
        let mut parts_bytes = upload.parts_bytes;
        match &self.blobs {
            BlobStore::Local(_) => {
                let path = staging_path(&self.blobs, upload.id).expect("a local store");
                self.write_staging(&path, offset, bytes).await?;
                if finished {
                    let options = PutOptions {
                        content_type: upload.filetype().map(str::to_owned),
                    };
                    self.blobs
                        .put_file(&data_key(upload.id), &path, options)
                        .await?;
                }
            }
            BlobStore::S3(s3) => {
                let upload_id = upload.s3_upload_id.clone().unwrap_or_default();
                let key = data_key(upload.id);
                let mut pending = if offset > parts_bytes {
                    self.blobs
                        .get_bytes(&buffer_key(upload.id, offset), None)
                        .await?
                } else {
                    Vec::new()
                };
                pending.extend_from_slice(bytes);
                let part_size = s3.part_size() as usize;
                let mut rest = &pending[..];
                // A full part goes up once more bytes follow it or the upload ends.
                while rest.len() >= part_size && (rest.len() > part_size || finished) {
                    let (part, after) = rest.split_at(part_size);
                    let number = parts.len() as i32 + 1;
                    parts.push(
                        s3.multipart_part(&key, &upload_id, number, part.to_vec())
                            .await?,
                    );
                    parts_bytes += part_size as u64;
                    rest = after;
                }
                if finished {
                    if !rest.is_empty() || parts.is_empty() {
                        let number = parts.len() as i32 + 1;
                        parts.push(
                            s3.multipart_part(&key, &upload_id, number, rest.to_vec())
                                .await?,
                        );
                        parts_bytes += rest.len() as u64;
                    }
                    s3.multipart_complete(&key, &upload_id, &parts).await?;
                } else if !rest.is_empty() {
                    self.blobs
                        .put_bytes(&buffer_key(upload.id, end), rest, PutOptions::default())
                        .await?;
                }
            }
        }
        let expires_at =
            now + chrono::Duration::from_std(self.settings.expires_after).unwrap_or_default();
        let changed = self
            .store
            .sql_execute(
                "UPDATE video_uploads SET upload_offset = $1, parts = $2, parts_bytes = $3, \
                 status = $4, completed_at = $5, expires_at = $6, updated_at = $7 \
                 WHERE id = $8 AND upload_offset = $9 AND status = 'uploading'",
                &[
                    Arg::int(end as i64),
                    Arg::json(serde_json::to_value(&parts).unwrap_or_default()),
                    Arg::int(parts_bytes as i64),
                    Arg::text(if finished { "complete" } else { "uploading" }),
                    Arg::Time(finished.then_some(now)),
                    Arg::time(expires_at),
                    Arg::time(now),
                    Arg::id(upload.id),
                    Arg::int(offset as i64),
                ],
            )
            .await?;
        if changed == 0 {
            // Another process recorded bytes from this offset first.
            let current = self.get(None, upload.id).await?;
            return Err(UploadError::OffsetMismatch {
                expected: current.map_or(offset, |u| u.offset),
                got: offset,
            });
        }
        // The recorded state no longer needs what the previous one named.
        if offset > upload.parts_bytes && offset != end {
            let _ = self.blobs.delete(&buffer_key(upload.id, offset)).await;
        }
        if finished {
            if let Err(error) = self.discard_staging(&upload, false).await {
                tracing::warn!(upload = %upload.id, error = %error, "cannot delete staging data");
            }
        }
        self.get(None, upload.id)
            .await?
            .ok_or(UploadError::NotFound(upload.id))
    }

    async fn write_staging(
        &self,
        path: &PathBuf,
        offset: u64,
        bytes: &[u8],
    ) -> Result<(), UploadError> {
        let io = |source| UploadError::Io {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(io)?;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .await
            .map_err(io)?;
        // Bytes past the recorded offset are a dead request's: cut them off.
        file.set_len(offset).await.map_err(io)?;
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(io)?;
        file.write_all(bytes).await.map_err(io)?;
        file.sync_data().await.map_err(io)?;
        Ok(())
    }

    /// Deletes staging data: the local staging file, S3 buffers, and with `abort` the
    /// unfinished S3 multipart upload. Failures are logged; the sweep tries again.
    async fn discard_staging(&self, upload: &Upload, abort: bool) -> Result<(), UploadError> {
        if let Some(path) = staging_path(&self.blobs, upload.id) {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(UploadError::Io { path, source }),
            }
        }
        if let BlobStore::S3(s3) = &self.blobs {
            if abort {
                if let Some(upload_id) = &upload.s3_upload_id {
                    s3.multipart_abort(&data_key(upload.id), upload_id).await?;
                }
            }
            for blob in self
                .blobs
                .list(&format!("uploads/{}/buffer-", upload.id))
                .await?
            {
                self.blobs.delete(&blob.key).await?;
            }
        }
        Ok(())
    }

    /// Deletes an upload and everything it stored (tus termination, or an operator
    /// deleting a rejected upload).
    pub async fn delete(&self, upload: &Upload) -> Result<(), UploadError> {
        self.discard_staging(upload, !upload.complete).await?;
        self.blobs
            .delete_prefix(&format!("uploads/{}/", upload.id))
            .await?;
        self.store
            .sql_execute(
                "DELETE FROM video_uploads WHERE id = $1",
                &[Arg::id(upload.id)],
            )
            .await?;
        Ok(())
    }

    /// Deletes every unfinished upload that expired by `now`: aborts its S3 multipart
    /// upload and deletes its staging data. Returns how many.
    pub async fn expire_due(&self, now: DateTime<Utc>) -> Result<u64, UploadError> {
        let rows = self
            .store
            .sql_fetch(
                &format!(
                    "SELECT {COLUMNS} FROM video_uploads \
                     WHERE status = 'uploading' AND expires_at <= $1 ORDER BY expires_at LIMIT 500"
                ),
                &[Arg::time(now)],
            )
            .await?;
        let mut expired = 0;
        for row in &rows {
            let upload = Upload::from_row(row)?;
            self.delete(&upload).await?;
            tracing::info!(upload = %upload.id, tenant = %upload.tenant, "expired an abandoned upload");
            expired += 1;
        }
        Ok(expired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_types_match_whole_types_and_exact_names() {
        let settings = UploadSettings::default();
        assert!(settings.allows_type("video/mp4"));
        assert!(settings.allows_type("Video/QuickTime"));
        assert!(settings.allows_type("application/octet-stream"));
        assert!(!settings.allows_type("video/"));
        assert!(!settings.allows_type("text/plain"));
        assert!(!settings.allows_type("videox/mp4"));
    }
}
