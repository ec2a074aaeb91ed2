//! Waymark's API keys: generation, the public prefix used for lookup, and the hash
//! that is all the database keeps of a secret.
//!
//! A key reads `wmk_<prefix>_<secret>`: the 12-hex-digit prefix finds the row, the whole
//! string's SHA-256 must match the stored hash (compared in constant time). A fast
//! hash is enough: the secret is 256 random bits, not a password anyone could guess.
//!
//! This file is the key model (scopes, secrets, the sealer, the records the store keeps)
//! and does not use the store: the store depends on it, not the other way round. The
//! use cases that need the store, issuing and revealing keys, are in `issue.rs`
//! (re-exported here).

mod issue;

pub use issue::{issue, issue_sealed, prepare_key, reveal};

use std::fmt;

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::StoreError;

/// What a key may do. Each scope includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Read runs, workflows and its own identity.
    Reader,
    /// Its tenant's runs, signals, operator actions and keys.
    Operator,
    /// Everything, every tenant.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Reader, Scope::Operator, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Reader => "reader",
            Scope::Operator => "operator",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key's secret. Its `Debug` and `Display` print only the public prefix, so a
/// secret that reaches a log line, an error or a trace shows nothing usable.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// A new random key.
    pub fn generate() -> Secret {
        let mut prefix = [0u8; 6];
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut prefix);
        rand::rng().fill_bytes(&mut secret);
        use base64::Engine as _;
        Secret(format!(
            "wmk_{}_{}",
            hex::encode(prefix),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
        ))
    }

    /// Wraps a presented key after checking its shape.
    pub fn parse(presented: &str) -> Option<Secret> {
        let secret = Secret(presented.to_owned());
        secret.prefix()?;
        let rest = presented.splitn(3, '_').nth(2)?;
        (rest.len() >= 32
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        .then_some(secret)
    }

    /// The public part that finds the key's row.
    pub fn prefix(&self) -> Option<&str> {
        let mut parts = self.0.splitn(3, '_');
        if parts.next()? != "wmk" {
            return None;
        }
        let prefix = parts.next()?;
        (prefix.len() == 12
            && prefix
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .then_some(prefix)
    }

    /// What the database stores: hex SHA-256 of the whole key.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }

    /// Whether this key hashes to `stored`, compared in constant time.
    pub fn matches(&self, stored: &str) -> bool {
        constant_time_eq(self.hash().as_bytes(), stored.as_bytes())
    }

    /// The secret itself, for the one response that shows it to its owner.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(wmk_{}_…)", self.prefix().unwrap_or("?"))
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a new key is for.
#[derive(Debug, Clone)]
pub struct IssueKey {
    pub tenant: String,
    pub scopes: Vec<Scope>,
    pub name: Option<String>,
    pub owner_email: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Who asked (`key:<id>`, `cli`, `bootstrap`), for the key and the audit log.
    pub actor: String,
    pub address: Option<String>,
}

impl IssueKey {
    /// The successor of `old` in a rotation: the same tenant, scopes, name and owner,
    /// no expiry; `actor` is who rotates it.
    pub fn successor_of(old: &KeyRecord, actor: String, address: Option<String>) -> IssueKey {
        IssueKey {
            tenant: old.tenant.clone(),
            scopes: old.scopes.clone(),
            name: old.name.clone(),
            owner_email: old.owner_email.clone(),
            expires_at: None,
            actor,
            address,
        }
    }
}

/// A key to store: only the hash of its secret.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub id: Uuid,
    pub tenant: String,
    pub prefix: String,
    pub secret_hash: String,
    pub scopes: Vec<Scope>,
    pub name: Option<String>,
    pub owner_email: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_by: String,
    /// The secret sealed for a later one-time reveal, when nobody saw it at creation.
    pub sealed_secret: Option<SealedSecret>,
    pub now: DateTime<Utc>,
}

/// A key's secret sealed under a master key, as stored until its one reveal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSecret {
    /// `base64(nonce || ciphertext)`.
    pub ciphertext: String,
    /// The id of the master key that sealed it ([`Sealer::key_id`]);
    /// `None` for secrets sealed before ids were recorded.
    pub master_key_id: Option<String>,
}

/// A stored key (never its secret).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyRecord {
    pub id: Uuid,
    pub tenant: String,
    pub prefix: String,
    #[serde(skip)]
    pub secret_hash: String,
    pub scopes: Vec<Scope>,
    pub name: Option<String>,
    pub owner_email: Option<String>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
    pub last_used_at: Option<DateTime<Utc>>,
    /// Whether a sealed secret waits to be revealed (the ciphertext never leaves the store).
    pub awaiting_reveal: bool,
    pub revealed_at: Option<DateTime<Utc>>,
    pub suspended_at: Option<DateTime<Utc>>,
}

impl KeyRecord {
    /// Usable now: not revoked, not expired, its tenant not suspended.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none()
            && self.suspended_at.is_none()
            && self.expires_at.is_none_or(|e| e > now)
    }

    /// The widest scope the key holds.
    pub fn top_scope(&self) -> Scope {
        self.scopes.iter().copied().max().unwrap_or(Scope::Reader)
    }
}

/// Why a reveal did not return a secret. Every refusal keeps the sealed secret.
#[derive(Debug, thiserror::Error)]
pub enum RevealError {
    #[error("key not found")]
    NotFound,
    #[error("this key has no secret waiting to be revealed (it was shown when created, or revealed already)")]
    NothingToReveal,
    #[error("this key's secret was sealed by master key {sealed_by}, and this process has master key {ours}; \
             the secret is kept: set WAYMARK_MASTER_KEY to the same master key on every Waymark process")]
    OtherMasterKey { sealed_by: String, ours: String },
    #[error("this key's secret does not open with this process's master key {ours} (sealed before master key \
             ids were recorded, by another master key, or damaged); the secret is kept: set WAYMARK_MASTER_KEY \
             to the master key that sealed it")]
    Unsealable { ours: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Seals secrets with ChaCha20-Poly1305 under the installation's master key. The
/// key's id is the associated data, so a sealed secret moved to another row does not
/// open.
#[derive(Clone)]
pub struct Sealer {
    cipher: chacha20poly1305::ChaCha20Poly1305,
    key_id: String,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealer({})", self.key_id)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    #[error("the master key must be 32 bytes, base64-encoded (got {0} bytes)")]
    Length(usize),
    #[error("the master key is not valid base64")]
    Encoding,
    #[error("cannot read or create the master key file {path}")]
    File {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Sealer {
    pub fn from_bytes(key: [u8; 32]) -> Sealer {
        use chacha20poly1305::KeyInit;
        Sealer {
            cipher: chacha20poly1305::ChaCha20Poly1305::new(&key.into()),
            key_id: hex::encode(&Sha256::digest(key)[..8]),
        }
    }

    /// Names the master key without revealing it: the first 8 bytes of its SHA-256,
    /// in hex. Stored with every secret it seals, and shown in errors and logs, so
    /// that processes whose master keys differ can say so.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Opens a stored sealed secret, refusing one sealed by another master key
    /// without trying it.
    pub fn open_sealed(&self, key_id: Uuid, sealed: &SealedSecret) -> Result<Secret, RevealError> {
        if let Some(sealed_by) = sealed
            .master_key_id
            .as_ref()
            .filter(|by| **by != self.key_id)
        {
            return Err(RevealError::OtherMasterKey {
                sealed_by: sealed_by.clone(),
                ours: self.key_id.clone(),
            });
        }
        self.open(key_id, &sealed.ciphertext)
            .ok_or_else(|| RevealError::Unsealable {
                ours: self.key_id.clone(),
            })
    }

    /// A random master key that lives as long as the process (tests, defaults).
    pub fn random() -> Sealer {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Sealer::from_bytes(key)
    }

    /// From base64 (as `WAYMARK_MASTER_KEY` holds it).
    pub fn from_base64(text: &str) -> Result<Sealer, MasterKeyError> {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| MasterKeyError::Encoding)?;
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| MasterKeyError::Length(bytes.len()))?;
        Ok(Sealer::from_bytes(key))
    }

    /// Reads the key file, creating it (owner-only) with a random key if missing.
    pub fn load_or_create(path: &std::path::Path) -> Result<Sealer, MasterKeyError> {
        use base64::Engine as _;
        let file_error = |source| MasterKeyError::File {
            path: path.to_owned(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Sealer::from_base64(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::rng().fill_bytes(&mut key);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(file_error)?;
                }
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    options.mode(0o600);
                }
                use std::io::Write;
                let mut file = options.open(path).map_err(file_error)?;
                writeln!(
                    file,
                    "{}",
                    base64::engine::general_purpose::STANDARD.encode(key)
                )
                .map_err(file_error)?;
                Ok(Sealer::from_bytes(key))
            }
            Err(e) => Err(file_error(e)),
        }
    }

    /// `base64(nonce || ciphertext)`.
    pub fn seal(&self, key_id: Uuid, secret: &Secret) -> String {
        self.seal_text(key_id, secret.expose())
    }

    pub fn open(&self, key_id: Uuid, sealed: &str) -> Option<Secret> {
        Secret::parse(&self.open_text(key_id, sealed)?)
    }

    /// Seals any short secret text (a webhook signing secret, say) bound to the id of
    /// the row that keeps it: `base64(nonce || ciphertext)`.
    pub fn seal_text(&self, row_id: Uuid, text: &str) -> String {
        use base64::Engine as _;
        use chacha20poly1305::aead::{Aead, Payload};
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                (&nonce).into(),
                Payload {
                    msg: text.as_bytes(),
                    aad: row_id.as_bytes(),
                },
            )
            .expect("sealing cannot fail for short secrets");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ciphertext);
        base64::engine::general_purpose::STANDARD.encode(out)
    }

    /// Opens what [`Sealer::seal_text`] sealed for `row_id`; `None` when it was sealed
    /// for another row or under another master key.
    pub fn open_text(&self, row_id: Uuid, sealed: &str) -> Option<String> {
        use base64::Engine as _;
        use chacha20poly1305::aead::{Aead, Payload};
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .ok()?;
        if bytes.len() < 12 {
            return None;
        }
        let (nonce, ciphertext) = bytes.split_at(12);
        let plain = self
            .cipher
            .decrypt(
                nonce.into(),
                Payload {
                    msg: ciphertext,
                    aad: row_id.as_bytes(),
                },
            )
            .ok()?;
        String::from_utf8(plain).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_match_only_their_hash() {
        let key = Secret::generate();
        let parsed = Secret::parse(key.expose()).expect("own format");
        assert_eq!(parsed.prefix(), key.prefix());
        assert!(parsed.matches(&key.hash()));
        assert!(!Secret::generate().matches(&key.hash()));
        assert_ne!(Secret::generate().prefix(), key.prefix());
    }

    #[test]
    fn debug_and_display_never_show_the_secret() {
        let key = Secret::generate();
        let secret_part = key.expose().splitn(3, '_').nth(2).unwrap().to_owned();
        for shown in [format!("{key:?}"), format!("{key}")] {
            assert!(!shown.contains(&secret_part), "{shown}");
            assert!(shown.contains(key.prefix().unwrap()));
        }
    }

    #[test]
    fn malformed_keys_are_refused() {
        for bad in [
            "",
            "wmk_",
            "wmk_abc_defghijklmnopqrstuvwxyz0123456789abc",
            "xyz_0123456789ab_defghijklmnopqrstuvwxyz0123456789abc",
            "wmk_0123456789AB_defghijklmnopqrstuvwxyz0123456789abc",
            "wmk_0123456789ab_short",
            "wmk_0123456789ab_has spaces in it which are not allowed!!",
        ] {
            assert!(Secret::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn sealed_secrets_open_only_with_their_key_and_row() {
        let sealer = Sealer::from_bytes([7; 32]);
        let secret = Secret::generate();
        let id = uuid::Uuid::now_v7();
        let sealed = sealer.seal(id, &secret);
        assert!(!sealed.contains(secret.expose()));
        assert_eq!(sealer.open(id, &sealed), Some(secret.clone()));
        assert_eq!(
            sealer.open(uuid::Uuid::now_v7(), &sealed),
            None,
            "bound to its row"
        );
        assert_eq!(
            Sealer::from_bytes([8; 32]).open(id, &sealed),
            None,
            "bound to the master key"
        );
        assert!(Sealer::from_base64("c2hvcnQ=").is_err());
        assert_eq!(sealer.key_id(), Sealer::from_bytes([7; 32]).key_id());
        assert_ne!(sealer.key_id(), Sealer::from_bytes([8; 32]).key_id());
        assert_eq!(sealer.key_id().len(), 16);
        assert!(!format!("{sealer:?}").contains(&hex::encode([7u8; 32])));
        let dir = std::env::temp_dir().join(format!("waymark-master-{}", uuid::Uuid::now_v7()));
        let path = dir.join("master.key");
        let first = Sealer::load_or_create(&path).unwrap();
        let again = Sealer::load_or_create(&path).unwrap();
        assert_eq!(again.open(id, &first.seal(id, &secret)), Some(secret));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_secret_sealed_by_another_master_key_is_refused_by_name() {
        let (ours, theirs) = (Sealer::from_bytes([1; 32]), Sealer::from_bytes([2; 32]));
        let id = uuid::Uuid::now_v7();
        let secret = Secret::generate();
        let sealed = SealedSecret {
            ciphertext: theirs.seal(id, &secret),
            master_key_id: Some(theirs.key_id().to_owned()),
        };
        match ours.open_sealed(id, &sealed) {
            Err(RevealError::OtherMasterKey {
                sealed_by,
                ours: mine,
            }) => {
                assert_eq!(
                    (sealed_by.as_str(), mine.as_str()),
                    (theirs.key_id(), ours.key_id())
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(theirs.open_sealed(id, &sealed).unwrap(), secret);
        // Sealed before ids were recorded: tried, and refused if it does not open.
        let legacy = SealedSecret {
            master_key_id: None,
            ..sealed
        };
        assert!(matches!(
            ours.open_sealed(id, &legacy),
            Err(RevealError::Unsealable { .. })
        ));
        assert_eq!(theirs.open_sealed(id, &legacy).unwrap(), secret);
    }

    #[test]
    fn scopes_are_ordered_by_power() {
        assert!(Scope::Admin > Scope::Operator && Scope::Operator > Scope::Reader);
        assert_eq!(Scope::parse("operator"), Some(Scope::Operator));
        assert_eq!(Scope::parse("root"), None);
    }
}
