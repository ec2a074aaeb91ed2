//! The embedded blob store: files under `$WAYMARK_DATA_DIR/blobs`.
//!
//! ```text
//! blobs/
//!   objects/invoices.d/2026.d/inv-1.pdf.k   one pointer file per key (JSON)
//!   data/0192…                              content, one file per put
//!   tmp/                                    puts in progress
//! ```
//!
//! A key's segments become directories (suffix `.d`) and its last segment the pointer
//! file (suffix `.k`), so `a` and `a/b` can both exist, as on S3. The pointer names the
//! content file and holds size, SHA-256 and content type. A put writes the content, then
//! swaps the pointer in with a rename: readers see the old blob or the new one, never a
//! mix, and metadata and content always belong together.
//!
//! A crash between the two renames leaves an unreferenced content file; it costs disk
//! space and nothing else.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::parts::{Expected, Verifying, COPY_CHUNK};
use super::signing::{SignatureError, UrlSigner};
use super::{validate_key, validate_prefix, BlobError, BlobMeta, ByteRange, Download, PutOptions};

/// Longest key segment: leaves room for the suffix within common 255-byte name limits.
pub(crate) const MAX_SEGMENT_LEN: usize = 200;

const DIR_SUFFIX: &str = ".d";
const KEY_SUFFIX: &str = ".k";

/// Blobs as local files, with download URLs that Waymark signs and serves.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
    signer: UrlSigner,
    public_url: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Pointer {
    key: String,
    size: u64,
    sha256: String,
    content_type: Option<String>,
    /// File name under `data/`.
    data: String,
    created_at: DateTime<Utc>,
}

impl LocalStore {
    /// A store rooted at `root` (created if missing). `public_url` is where clients
    /// reach Waymark (`http://127.0.0.1:8080`), the base of download URLs.
    pub fn new(
        root: PathBuf,
        signer: UrlSigner,
        public_url: String,
    ) -> Result<LocalStore, BlobError> {
        for dir in ["objects", "data", "tmp"] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path).map_err(|source| BlobError::Io { path, source })?;
        }
        Ok(LocalStore {
            root,
            signer,
            public_url: public_url.trim_end_matches('/').to_owned(),
        })
    }

    pub fn describe(&self) -> String {
        format!("file:{}", self.root.display())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The key that signs this store's links (and other signed paths Waymark serves
    /// from it, such as video playback tokens).
    pub fn signer(&self) -> &UrlSigner {
        &self.signer
    }

    /// A writer for `key`: the content goes to a file under `tmp/`, hashed as it is
    /// written, and becomes the blob only when [`LocalWriter::finish`] renames it in.
    pub async fn writer(&self, key: &str, options: &PutOptions) -> Result<LocalWriter, BlobError> {
        validate_key(key)?;
        let name = uuid::Uuid::now_v7().simple().to_string();
        let tmp = self.root.join("tmp").join(&name);
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|source| BlobError::Io {
                path: tmp.clone(),
                source,
            })?;
        Ok(LocalWriter {
            store: self.clone(),
            key: key.to_owned(),
            options: options.clone(),
            name,
            tmp,
            file: Some(tokio::io::BufWriter::with_capacity(COPY_CHUNK, file)),
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Makes the content file `name` (already under `data/`) the blob at `key`.
    async fn commit(
        &self,
        key: &str,
        name: &str,
        size: u64,
        sha256: String,
        options: &PutOptions,
    ) -> Result<BlobMeta, BlobError> {
        let pointer = Pointer {
            key: key.to_owned(),
            size,
            sha256,
            content_type: options.content_type.clone(),
            data: name.to_owned(),
            created_at: Utc::now(),
        };
        let path = pointer_path(&self.root, key);
        let previous = read_pointer(&path).await?;
        let json = serde_json::to_vec(&pointer).expect("a pointer serialises");
        let pointer_tmp = self.root.join("tmp").join(format!("{name}.k"));
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| BlobError::Io { path, source }
        };
        write_synced(&pointer_tmp, &json)
            .await
            .map_err(io(&pointer_tmp))?;
        // A concurrent delete_prefix may remove an empty parent between create_dir_all
        // and the rename: create it again and retry once.
        let mut attempt = 0;
        loop {
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(io(parent))?;
            }
            match tokio::fs::rename(&pointer_tmp, &path).await {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt == 0 => attempt += 1,
                Err(source) => {
                    let _ = tokio::fs::remove_file(&pointer_tmp).await;
                    return Err(BlobError::Io { path, source });
                }
            }
        }
        if let Some(previous) = previous {
            // Readers that opened it keep reading (unlinked files stay readable).
            let _ = tokio::fs::remove_file(self.root.join("data").join(previous.data)).await;
        }
        Ok(meta(pointer))
    }

    pub async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<Download, BlobError> {
        validate_key(key)?;
        let pointer = read_pointer(&pointer_path(&self.root, key))
            .await?
            .ok_or_else(|| BlobError::NotFound {
                key: key.to_owned(),
            })?;
        let data = self.root.join("data").join(&pointer.data);
        let mut file = match tokio::fs::File::open(&data).await {
            Ok(file) => file,
            // Replaced or deleted between reading the pointer and opening the content.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BlobError::NotFound {
                    key: key.to_owned(),
                })
            }
            Err(source) => return Err(BlobError::Io { path: data, source }),
        };
        let expected = Expected::Sha256Hex(pointer.sha256.clone());
        let meta = meta(pointer);
        match range {
            None => Ok(Download {
                body: Box::pin(Verifying::new(file, expected)),
                range: None,
                meta,
            }),
            Some(range) => {
                let (first, last) = range.resolve(meta.size).ok_or(BlobError::InvalidRange {
                    key: key.to_owned(),
                    range,
                    size: meta.size,
                })?;
                file.seek(std::io::SeekFrom::Start(first))
                    .await
                    .map_err(|source| BlobError::Io { path: data, source })?;
                Ok(Download {
                    body: Box::pin(file.take(last - first + 1)),
                    range: Some((first, last)),
                    meta,
                })
            }
        }
    }

    pub async fn head(&self, key: &str) -> Result<Option<BlobMeta>, BlobError> {
        validate_key(key)?;
        Ok(read_pointer(&pointer_path(&self.root, key))
            .await?
            .map(meta))
    }

    pub async fn list(&self, prefix: &str) -> Result<Vec<BlobMeta>, BlobError> {
        validate_prefix(prefix)?;
        // Walk only below the deepest directory the prefix names in full.
        let (dirs, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let mut start = self.root.join("objects");
        let mut key_base = String::new();
        for segment in dirs.split('/').filter(|s| !s.is_empty()) {
            start.push(format!("{segment}{DIR_SUFFIX}"));
            key_base.push_str(segment);
            key_base.push('/');
        }
        let mut found = Vec::new();
        let mut pending = vec![(start, key_base)];
        while let Some((dir, base)) = pending.pop() {
            let mut entries = match tokio::fs::read_dir(&dir).await {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(BlobError::Io { path: dir, source }),
            };
            while let Some(entry) = entries.next_entry().await.map_err(|source| BlobError::Io {
                path: dir.clone(),
                source,
            })? {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(segment) = name.strip_suffix(DIR_SUFFIX) {
                    let sub = format!("{base}{segment}/");
                    // Descend only where keys can still match the prefix.
                    if sub.starts_with(prefix) || prefix.starts_with(&sub) {
                        pending.push((entry.path(), sub));
                    }
                } else if let Some(segment) = name.strip_suffix(KEY_SUFFIX) {
                    let key = format!("{base}{segment}");
                    if key.starts_with(prefix) {
                        // Deleted since the listing: skip it.
                        if let Some(pointer) = read_pointer(&entry.path()).await? {
                            found.push(meta(pointer));
                        }
                    }
                }
            }
        }
        // S3 lists in byte order of the UTF-8 key; so does this.
        found.sort_by(|a, b| a.key.as_bytes().cmp(b.key.as_bytes()));
        Ok(found)
    }

    pub async fn delete(&self, key: &str) -> Result<bool, BlobError> {
        validate_key(key)?;
        let path = pointer_path(&self.root, key);
        let Some(pointer) = read_pointer(&path).await? else {
            return Ok(false);
        };
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(source) => return Err(BlobError::Io { path, source }),
        }
        let _ = tokio::fs::remove_file(self.root.join("data").join(&pointer.data)).await;
        self.remove_empty_parents(&path).await;
        Ok(true)
    }

    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64, BlobError> {
        let mut deleted = 0;
        for blob in self.list(prefix).await? {
            if self.delete(&blob.key).await? {
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// A signed URL valid from `now` for `expires_in`, served by Waymark's `/blobs/…`.
    pub async fn download_url_at(
        &self,
        key: &str,
        now: DateTime<Utc>,
        expires_in: Duration,
    ) -> Result<String, BlobError> {
        validate_key(key)?;
        let expires = now
            + chrono::Duration::from_std(expires_in)
                .map_err(|_| BlobError::Config(format!("expiry {expires_in:?} is too far away")))?;
        Ok(format!(
            "{}{}",
            self.public_url,
            self.signer.signed_path(key, expires)
        ))
    }

    /// Checks a signed URL's key, expiry and signature at `now` (the HTTP route's job).
    pub fn verify(
        &self,
        key: &str,
        expires: i64,
        signature: &str,
        now: DateTime<Utc>,
    ) -> Result<(), SignatureError> {
        self.signer.verify(key, expires, signature, now)
    }

    /// Removes the directories above a deleted pointer that became empty, so deleted
    /// prefixes leave no folders behind. A directory that is not empty stays.
    async fn remove_empty_parents(&self, pointer: &Path) {
        let objects = self.root.join("objects");
        let mut dir = pointer.parent();
        while let Some(d) = dir {
            if d == objects || tokio::fs::remove_dir(d).await.is_err() {
                break;
            }
            dir = d.parent();
        }
    }
}

/// A blob being written to a local store (see [`LocalStore::writer`]). Nothing is
/// visible at the key until [`LocalWriter::finish`]; [`LocalWriter::abort`], a failed
/// write, or dropping the writer unfinished removes the temporary file.
#[derive(Debug)]
pub struct LocalWriter {
    store: LocalStore,
    key: String,
    options: PutOptions,
    /// The content file's name, in `tmp/` while written and in `data/` after.
    name: String,
    tmp: PathBuf,
    /// `None` once finished or aborted.
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    hasher: Sha256,
    size: u64,
}

impl LocalWriter {
    /// Appends `bytes` to the content file.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), BlobError> {
        let Some(file) = self.file.as_mut() else {
            return Err(self.io(std::io::Error::other("the writer is finished")));
        };
        if let Err(source) = file.write_all(bytes).await {
            self.discard().await;
            return Err(self.io(source));
        }
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Syncs the content to disk and swaps the key's pointer to it; returns the
    /// blob's metadata with its size and SHA-256.
    pub async fn finish(mut self) -> Result<BlobMeta, BlobError> {
        let Some(mut file) = self.file.take() else {
            return Err(self.io(std::io::Error::other("the writer is finished")));
        };
        let synced = async {
            file.flush().await?;
            file.get_ref().sync_all().await
        }
        .await;
        drop(file);
        if let Err(source) = synced {
            let _ = tokio::fs::remove_file(&self.tmp).await;
            return Err(self.io(source));
        }
        let data = self.store.root.join("data").join(&self.name);
        if let Err(source) = tokio::fs::rename(&self.tmp, &data).await {
            let _ = tokio::fs::remove_file(&self.tmp).await;
            return Err(BlobError::Io { path: data, source });
        }
        let sha256 = hex::encode(std::mem::take(&mut self.hasher).finalize());
        self.store
            .commit(&self.key, &self.name, self.size, sha256, &self.options)
            .await
    }

    /// Gives up: the temporary file is removed and the key keeps what it had.
    pub async fn abort(mut self) {
        self.discard().await;
    }

    async fn discard(&mut self) {
        if self.file.take().is_some() {
            let _ = tokio::fs::remove_file(&self.tmp).await;
        }
    }

    fn io(&self, source: std::io::Error) -> BlobError {
        BlobError::Io {
            path: self.tmp.clone(),
            source,
        }
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn meta(pointer: Pointer) -> BlobMeta {
    BlobMeta {
        key: pointer.key,
        size: pointer.size,
        content_type: pointer.content_type,
        etag: Some(format!("\"{}\"", pointer.sha256)),
        sha256: Some(pointer.sha256),
        last_modified: Some(pointer.created_at),
    }
}

fn pointer_path(root: &Path, key: &str) -> PathBuf {
    let mut path = root.join("objects");
    let mut segments = key.split('/').peekable();
    while let Some(segment) = segments.next() {
        if segments.peek().is_some() {
            path.push(format!("{segment}{DIR_SUFFIX}"));
        } else {
            path.push(format!("{segment}{KEY_SUFFIX}"));
        }
    }
    path
}

async fn read_pointer(path: &Path) -> Result<Option<Pointer>, BlobError> {
    match tokio::fs::read(path).await {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| BlobError::Io {
                path: path.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(BlobError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

async fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = tokio::fs::File::create(path).await?;
    file.write_all(bytes).await?;
    file.sync_all().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_paths_that_cannot_collide() {
        let root = Path::new("/r");
        assert_eq!(pointer_path(root, "a"), Path::new("/r/objects/a.k"));
        assert_eq!(pointer_path(root, "a/b"), Path::new("/r/objects/a.d/b.k"));
        // A segment that looks like a suffix still lands on a distinct path.
        assert_ne!(pointer_path(root, "a.d/b"), pointer_path(root, "a/b"));
        assert_ne!(pointer_path(root, "x.k"), pointer_path(root, "x"));
    }

    #[tokio::test]
    async fn a_corrupted_content_file_fails_a_full_read_but_not_a_range() {
        let dir = std::env::temp_dir().join(format!("waymark-local-{}", uuid::Uuid::now_v7()));
        let signer = UrlSigner::new(vec![7u8; 32]).unwrap();
        let store = LocalStore::new(dir.clone(), signer, "http://x".into()).unwrap();
        let mut writer = store.writer("k", &PutOptions::default()).await.unwrap();
        writer.write(b"the original content").await.unwrap();
        writer.finish().await.unwrap();
        let data = std::fs::read_dir(dir.join("data"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::write(&data, b"the 0riginal content").unwrap();
        let err = store
            .get("k", None)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap_err();
        assert!(matches!(err, BlobError::Checksum { .. }), "{err:?}");
        let part = store
            .get("k", Some(ByteRange::new(0, 3)))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(part, b"the");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
