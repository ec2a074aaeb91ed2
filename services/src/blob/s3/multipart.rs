//! An S3 multipart upload driven one request at a time, for uploads that outlive a
//! process (tus): the caller persists the upload id and each part's entity tag and
//! checksum between requests, and completes or aborts it later, from any process.
//!
//! Parts must be the store's part size except the last, as for a put, so that a full
//! `get` of the result verifies S3's composite checksum over the same boundaries.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{base64_of, S3Store, META_PART_SIZE};
use crate::blob::{validate_key, BlobError, PutOptions};

/// One uploaded part, as the caller keeps it until the upload completes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadedPart {
    pub number: i32,
    pub etag: Option<String>,
    /// SHA-256 of the part, base64, as S3 checked it.
    pub sha256: String,
    pub size: u64,
}

impl S3Store {
    /// The size every part but the last of a resumable upload must have.
    pub fn part_size(&self) -> u64 {
        self.part_size
    }

    /// Starts a multipart upload to `key`; returns its id.
    pub async fn multipart_create(
        &self,
        key: &str,
        options: &PutOptions,
    ) -> Result<String, BlobError> {
        validate_key(key)?;
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(super::content_type(options))
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .metadata(META_PART_SIZE, self.part_size.to_string())
            .send()
            .await
            .map_err(|e| self.error("CreateMultipartUpload", key, e))?;
        Ok(created.upload_id().unwrap_or_default().to_owned())
    }

    /// Uploads part `number` (from 1); uploading the same number again replaces it.
    pub async fn multipart_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        bytes: Vec<u8>,
    ) -> Result<UploadedPart, BlobError> {
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        let checksum = base64_of(&digest);
        let size = bytes.len() as u64;
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .checksum_sha256(&checksum)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| self.error("UploadPart", key, e))?;
        Ok(UploadedPart {
            number,
            etag: out.e_tag().map(str::to_owned),
            sha256: checksum,
            size,
        })
    }

    /// Completes the upload from `parts` (in order): the blob appears at `key`.
    pub async fn multipart_complete(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[UploadedPart],
    ) -> Result<(), BlobError> {
        let completed = parts
            .iter()
            .map(|p| {
                CompletedPart::builder()
                    .part_number(p.number)
                    .set_e_tag(p.etag.clone())
                    .checksum_sha256(&p.sha256)
                    .build()
            })
            .collect();
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.error("CompleteMultipartUpload", key, e))?;
        Ok(())
    }

    /// Abandons the upload: S3 discards its parts. An upload that is already gone
    /// (aborted or completed before) is not an error.
    pub async fn multipart_abort(&self, key: &str, upload_id: &str) -> Result<(), BlobError> {
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_upload()) => Ok(()),
            Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(404) => Ok(()),
            Err(e) => Err(self.error("AbortMultipartUpload", key, e)),
        }
    }

    /// How many parts S3 still holds for the upload; `None` once it is gone.
    pub async fn multipart_parts(
        &self,
        key: &str,
        upload_id: &str,
    ) -> Result<Option<usize>, BlobError> {
        match self
            .client
            .list_parts()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
        {
            Ok(out) => Ok(Some(out.parts().len())),
            Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(404) => Ok(None),
            Err(e) => Err(self.error("ListParts", key, e)),
        }
    }
}
