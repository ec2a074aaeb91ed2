//! Export files: JSON Lines streamed into the blob store one line at a time, so an
//! export of any size needs only a blob store part (or a small buffer) of memory, with
//! its size, line count and SHA-256 counted as it goes for the export's manifest.

use serde_json::json;
use waymark_services::{BlobStore, BlobWriter, PutOptions};

use super::TenantError;

/// One finished export file, as the manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedFile {
    pub key: String,
    pub bytes: u64,
    pub lines: u64,
    /// SHA-256 of the content, hex.
    pub sha256: String,
}

impl ExportedFile {
    /// The manifest's entry: `{"key", "bytes", "lines", "sha256"}`.
    pub fn manifest_entry(&self) -> serde_json::Value {
        json!({ "key": self.key, "bytes": self.bytes, "lines": self.lines, "sha256": self.sha256 })
    }
}

/// A JSON Lines file being written.
#[derive(Debug)]
pub struct JsonlWriter {
    key: String,
    writer: BlobWriter,
    lines: u64,
}

impl JsonlWriter {
    pub async fn create(blobs: &BlobStore, key: &str) -> Result<JsonlWriter, TenantError> {
        let writer = blobs
            .writer(key, PutOptions::content_type("application/x-ndjson"))
            .await?;
        Ok(JsonlWriter {
            key: key.to_owned(),
            writer,
            lines: 0,
        })
    }

    /// Appends `line` (one JSON value, without its newline) and a newline.
    pub async fn line(&mut self, line: &str) -> Result<(), TenantError> {
        self.writer.write(line.as_bytes()).await?;
        self.writer.write(b"\n").await?;
        self.lines += 1;
        Ok(())
    }

    pub async fn finish(self) -> Result<ExportedFile, TenantError> {
        let meta = self.writer.finish().await?;
        let sha256 = meta.sha256.ok_or_else(|| {
            TenantError::Refused(format!("the blob store gave no SHA-256 for {}", self.key))
        })?;
        Ok(ExportedFile {
            key: self.key,
            bytes: meta.size,
            lines: self.lines,
            sha256,
        })
    }

    pub async fn abort(self) {
        self.writer.abort().await;
    }

    /// Finishes the file if `filled` (what writing its lines came to) is `Ok`;
    /// otherwise aborts it, leaving nothing of this attempt at its key, and returns the
    /// error.
    pub async fn finish_if(
        self,
        filled: Result<(), TenantError>,
    ) -> Result<ExportedFile, TenantError> {
        match filled {
            Ok(()) => self.finish().await,
            Err(error) => {
                self.abort().await;
                Err(error)
            }
        }
    }
}
