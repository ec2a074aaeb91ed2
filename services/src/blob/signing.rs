//! Signed download URLs for the local store: an HMAC-SHA256 over the key and the expiry,
//! checked by Waymark's `/blobs/…` route. The key comes from `WAYMARK_BLOB_SIGNING_KEY`
//! or a random one kept in `$WAYMARK_DATA_DIR/blob-signing.key`.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::Sha256;

use super::BlobError;

/// Where Waymark serves signed local blobs: `/blobs/<key>?expires=…&signature=…`.
pub const ROUTE_PREFIX: &str = "/blobs/";

/// A configured key shorter than this is refused: it could be guessed.
const MIN_KEY_LEN: usize = 32;

/// Characters kept as they are in a URL path segment (RFC 3986 unreserved).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Why a signed URL was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the link has expired")]
    Expired,
    #[error("the link's signature is not valid")]
    Invalid,
}

/// Signs and verifies download URLs. Cheap to clone.
#[derive(Clone)]
pub struct UrlSigner {
    key: Arc<[u8]>,
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UrlSigner(..)")
    }
}

impl UrlSigner {
    /// A signer with `key` (at least 32 bytes).
    pub fn new(key: impl Into<Vec<u8>>) -> Result<UrlSigner, BlobError> {
        let key = key.into();
        if key.len() < MIN_KEY_LEN {
            return Err(BlobError::Config(format!(
                "the blob signing key must be at least {MIN_KEY_LEN} bytes"
            )));
        }
        Ok(UrlSigner { key: key.into() })
    }

    /// The configured key if there is one (`WAYMARK_BLOB_SIGNING_KEY`), else the key in
    /// `path`, created with 32 random bytes (hex, mode 0600) if missing. Every process
    /// sharing the data directory then signs alike, and links survive restarts.
    pub fn load_or_create(configured: Option<&str>, path: &Path) -> Result<UrlSigner, BlobError> {
        if let Some(key) = configured.filter(|k| !k.is_empty()) {
            return UrlSigner::new(key.as_bytes().to_vec()).map_err(|_| {
                BlobError::Config(format!(
                    "WAYMARK_BLOB_SIGNING_KEY must be at least {MIN_KEY_LEN} characters"
                ))
            });
        }
        let io = |e: std::io::Error| BlobError::Io {
            path: path.to_owned(),
            source: e,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let key: [u8; 32] = rand::random();
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        match options.open(path) {
            Ok(mut file) => {
                file.write_all(hex::encode(key).as_bytes()).map_err(io)?;
                file.sync_all().map_err(io)?;
                Ok(UrlSigner { key: key.into() })
            }
            // Another process created it first (or an earlier run did): use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = std::fs::read_to_string(path).map_err(io)?;
                let key = hex::decode(text.trim()).map_err(|_| {
                    BlobError::Config(format!("{} does not hold a hex key", path.display()))
                })?;
                UrlSigner::new(key)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The signature of a link to `key` valid until `expires` (Unix seconds), hex.
    pub fn sign(&self, key: &str, expires: i64) -> String {
        hex::encode(self.mac(key, expires).finalize().into_bytes())
    }

    /// Checks a link's signature, then its expiry against `now`.
    pub fn verify(
        &self,
        key: &str,
        expires: i64,
        signature: &str,
        now: DateTime<Utc>,
    ) -> Result<(), SignatureError> {
        let signature = hex::decode(signature).map_err(|_| SignatureError::Invalid)?;
        // verify_slice compares in constant time.
        self.mac(key, expires)
            .verify_slice(&signature)
            .map_err(|_| SignatureError::Invalid)?;
        if now.timestamp() >= expires {
            return Err(SignatureError::Expired);
        }
        Ok(())
    }

    /// The path and query of a link to `key` that expires at `expires`.
    pub fn signed_path(&self, key: &str, expires: DateTime<Utc>) -> String {
        // Rounded up to the second: a link never expires before the time asked for.
        let expires = expires.timestamp() + i64::from(expires.timestamp_subsec_nanos() > 0);
        format!(
            "{ROUTE_PREFIX}{}?expires={expires}&signature={}",
            encode_key(key),
            self.sign(key, expires)
        )
    }

    fn mac(&self, key: &str, expires: i64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        // A version tag and separators that cannot occur in keys (validated to hold no
        // control characters), so no two (key, expires) pairs sign the same bytes.
        mac.update(b"waymark-blob-url-v1\n");
        mac.update(key.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        mac
    }
}

/// `key` as a URL path: each segment percent-encoded, slashes kept.
pub fn encode_key(key: &str) -> String {
    key.split('/')
        .map(|segment| utf8_percent_encode(segment, SEGMENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn signer() -> UrlSigner {
        UrlSigner::new(b"0123456789abcdef0123456789abcdef".to_vec()).unwrap()
    }

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(secs, 0).unwrap()
    }

    #[test]
    fn a_signature_verifies_until_it_expires() {
        let s = signer();
        let sig = s.sign("reports/q3.pdf", 1_000);
        assert_eq!(s.verify("reports/q3.pdf", 1_000, &sig, at(999)), Ok(()));
        assert_eq!(
            s.verify("reports/q3.pdf", 1_000, &sig, at(1_000)),
            Err(SignatureError::Expired)
        );
    }

    #[test]
    fn tampering_with_key_expiry_or_signature_is_refused() {
        let s = signer();
        let sig = s.sign("reports/q3.pdf", 1_000);
        let now = at(0);
        assert_eq!(
            s.verify("reports/q4.pdf", 1_000, &sig, now),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            s.verify("reports/q3.pdf", 9_999, &sig, now),
            Err(SignatureError::Invalid)
        );
        let mut flipped = sig.clone().into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(
            s.verify("reports/q3.pdf", 1_000, &flipped, now),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            s.verify("reports/q3.pdf", 1_000, "not hex", now),
            Err(SignatureError::Invalid)
        );
        let other = UrlSigner::new(b"another key that is long enough!!".to_vec()).unwrap();
        assert_eq!(
            other.verify("reports/q3.pdf", 1_000, &sig, now),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(UrlSigner::new(b"short".to_vec()).is_err());
        assert!(UrlSigner::load_or_create(Some("short"), Path::new("/nonexistent")).is_err());
    }

    #[test]
    fn paths_encode_segments_and_keep_slashes() {
        assert_eq!(encode_key("a b/ü?.txt"), "a%20b/%C3%BC%3F.txt");
        let path = signer().signed_path("x/y.txt", at(1_000));
        assert!(
            path.starts_with("/blobs/x/y.txt?expires=1000&signature="),
            "{path}"
        );
    }

    #[test]
    fn the_key_file_is_created_once_private_and_reused() {
        let dir = std::env::temp_dir().join(format!("waymark-signing-{}", uuid::Uuid::now_v7()));
        let path = dir.join("blob-signing.key");
        let first = UrlSigner::load_or_create(None, &path).unwrap();
        let second = UrlSigner::load_or_create(None, &path).unwrap();
        assert_eq!(first.sign("k", 1), second.sign("k", 1));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
