//! Evidence files: what a merchant uploads (`POST /v1/disputes/{id}/evidence/files`)
//! before submitting evidence that names them. A file is kept in the blob store under
//! the tenant's prefix (`tenants/<installation>/<tenant>/disputes/<dispute>/<file id>`)
//! with its SHA-256, and its row here ties it to one dispute and cycle. The submission
//! packet carries a signed download link per file, which the network can open without
//! a key.
//!
//! The type is read from the content, not only from the `Content-Type` the uploader
//! claims: a PDF, PNG or JPEG by its magic bytes, plain text as valid UTF-8 without NUL.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;
use waymark_engine::store::{Arg, Row, Tx};
use waymark_engine::{Store, StoreError};
use waymark_services::{BlobError, BlobStore};

type Result<T> = std::result::Result<T, StoreError>;

/// At most this many bytes per file.
pub const MAX_FILE: usize = 5 * 1024 * 1024;
/// At most this many bytes of files per dispute and cycle.
pub const MAX_PER_CYCLE: i64 = 10 * 1024 * 1024;
/// How long the network may download a submitted file: S3's longest presigned link.
pub const LINK_LIFETIME: Duration = Duration::from_secs(7 * 86_400);

/// The content types evidence may have.
pub const TYPES: [&str; 4] = ["application/pdf", "image/png", "image/jpeg", "text/plain"];

/// The type `bytes` are, read from their content: PDF, PNG and JPEG by their
/// signatures, anything else as text when it is UTF-8 without NUL; `None` otherwise.
pub fn sniff(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"%PDF-") {
        Some("application/pdf")
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(b"\xff\xd8\xff") {
        Some("image/jpeg")
    } else if !bytes.is_empty() && !bytes.contains(&0) && std::str::from_utf8(bytes).is_ok() {
        Some("text/plain")
    } else {
        None
    }
}

/// The blob key of a file: under the tenant's prefix (see `tenants::names`), so the
/// tenant's deletion removes it with the rest of its storage.
pub fn blob_key(installation: &str, tenant: &str, dispute_id: &str, file: Uuid) -> String {
    let prefix = crate::tenants::names::storage_prefix(installation, tenant);
    // Dispute ids come from the processor; one that is not a plain key segment is
    // left out rather than trusted into a path.
    let plain = !dispute_id.is_empty()
        && dispute_id.len() <= 100
        && dispute_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        format!("{prefix}disputes/{dispute_id}/{file}")
    } else {
        format!("{prefix}disputes/{file}")
    }
}

/// An uploaded evidence file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvidenceFile {
    pub id: Uuid,
    pub dispute_id: String,
    pub cycle: i64,
    pub content_type: String,
    pub size: i64,
    pub sha256: String,
    #[serde(skip)]
    pub blob_key: String,
    pub created_at: DateTime<Utc>,
}

impl EvidenceFile {
    fn from_row(r: &Row) -> Result<EvidenceFile> {
        Ok(EvidenceFile {
            id: r.id("id")?,
            dispute_id: r.text("dispute_id")?,
            cycle: r.int("cycle")?,
            content_type: r.text("content_type")?,
            size: r.int("size")?,
            sha256: r.text("sha256")?,
            blob_key: r.text("blob_key")?,
            created_at: r.time("created_at")?,
        })
    }
}

const COLUMNS: &str = "id, dispute_id, cycle, content_type, size, sha256, blob_key, created_at";

/// Bytes of files the dispute already has in `cycle` (inside the transaction that
/// holds the dispute's lock, so two uploads cannot both pass the limit).
pub async fn cycle_total(tx: &mut Tx, tenant: &str, dispute_id: &str, cycle: i64) -> Result<i64> {
    let rows = tx
        .fetch(
            "SELECT size FROM disputes_evidence_files \
             WHERE tenant = $1 AND dispute_id = $2 AND cycle = $3",
            &[Arg::text(tenant), Arg::text(dispute_id), Arg::int(cycle)],
        )
        .await?;
    rows.iter().map(|r| r.int("size")).sum()
}

pub async fn insert(tx: &mut Tx, tenant: &str, file: &EvidenceFile) -> Result<()> {
    tx.execute(
        "INSERT INTO disputes_evidence_files (id, tenant, dispute_id, cycle, content_type, \
         size, sha256, blob_key, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            Arg::id(file.id),
            Arg::text(tenant),
            Arg::text(&file.dispute_id),
            Arg::int(file.cycle),
            Arg::text(&file.content_type),
            Arg::int(file.size),
            Arg::text(&file.sha256),
            Arg::text(&file.blob_key),
            Arg::time(file.created_at),
        ],
    )
    .await?;
    Ok(())
}

/// Forgets the evidence of a cycle (rejected: the merchant submits again).
pub async fn evidence_delete(store: &Store, tenant: &str, id: &str, cycle: i64) -> Result<()> {
    store
        .sql_execute(
            "DELETE FROM disputes_evidence WHERE tenant = $1 AND dispute_id = $2 AND cycle = $3",
            &[Arg::text(tenant), Arg::text(id), Arg::int(cycle)],
        )
        .await?;
    Ok(())
}

/// The dispute's files, oldest first, of every cycle.
pub async fn list(store: &Store, tenant: &str, dispute_id: &str) -> Result<Vec<EvidenceFile>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM disputes_evidence_files WHERE tenant = $1 AND dispute_id = $2 \
         ORDER BY id"
    );
    let rows = store
        .sql_fetch(&sql, &[Arg::text(tenant), Arg::text(dispute_id)])
        .await?;
    rows.iter().map(EvidenceFile::from_row).collect()
}

/// The files among `ids` that belong to the dispute's `cycle`, in the order of `ids`;
/// `Err` names the first id that does not.
pub async fn of_cycle(
    store: &Store,
    tenant: &str,
    dispute_id: &str,
    cycle: i64,
    ids: &[Uuid],
) -> Result<std::result::Result<Vec<EvidenceFile>, Uuid>> {
    let files = list(store, tenant, dispute_id).await?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        match files.iter().find(|f| f.id == *id && f.cycle == cycle) {
            Some(f) => out.push(f.clone()),
            None => return Ok(Err(*id)),
        }
    }
    Ok(Ok(out))
}

/// The packet's `files`: each file's facts and a link the network can download it
/// from for [`LINK_LIFETIME`].
pub async fn packet_links(
    blobs: &BlobStore,
    files: &[EvidenceFile],
) -> std::result::Result<Vec<Value>, BlobError> {
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let url = blobs.download_url(&f.blob_key, LINK_LIFETIME).await?;
        out.push(
            json!({"id": f.id, "content_type": f.content_type, "size": f.size,
                        "sha256": f.sha256, "url": url}),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_read_from_the_content() {
        assert_eq!(sniff(b"%PDF-1.7\n..."), Some("application/pdf"));
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0"), Some("image/png"));
        assert_eq!(sniff(b"\xff\xd8\xff\xe0\0\x10JFIF"), Some("image/jpeg"));
        assert_eq!(sniff("Dear customer, ü".as_bytes()), Some("text/plain"));
        assert_eq!(sniff(b"text with a \0 inside"), None);
        assert_eq!(sniff(b"\xc3\x28 not utf-8"), None);
        assert_eq!(sniff(b""), None);
        assert_eq!(sniff(b"GIF89a\x01\0"), None);
    }

    #[test]
    fn keys_stay_under_the_tenant_prefix() {
        let id = Uuid::nil();
        assert_eq!(
            blob_key("0123456789ab", "acme", "dp_1", id),
            format!("tenants/0123456789ab/acme/disputes/dp_1/{id}")
        );
        assert_eq!(
            blob_key("0123456789ab", "acme", "../x", id),
            format!("tenants/0123456789ab/acme/disputes/{id}")
        );
    }
}
