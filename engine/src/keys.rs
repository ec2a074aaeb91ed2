//! Waymark's API keys: generation, the public prefix used for lookup, and the hash
//! that is all the database keeps of a secret.
//!
//! A key reads `wmk_<prefix>_<secret>`: the 12-hex-digit prefix finds the row, the whole
//! string's SHA-256 must match the stored hash (compared in constant time). A fast
//! hash is enough: the secret is 256 random bits, not a password anyone could guess.

use std::fmt;

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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
        let secret_part = key.expose().rsplit('_').next().unwrap().to_owned();
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
    fn scopes_are_ordered_by_power() {
        assert!(Scope::Admin > Scope::Operator && Scope::Operator > Scope::Reader);
        assert_eq!(Scope::parse("operator"), Some(Scope::Operator));
        assert_eq!(Scope::parse("root"), None);
    }
}

/// What a new key is for.
#[derive(Debug, Clone)]
pub struct IssueKey {
    pub tenant: String,
    pub scopes: Vec<Scope>,
    pub name: Option<String>,
    pub owner_email: Option<String>,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Who asked (`key:<id>`, `cli`, `bootstrap`), for the key and the audit log.
    pub actor: String,
    pub address: Option<String>,
}

/// Issues a key: a fresh secret (or `secret`, e.g. a bootstrap key given by the
/// operator), stored as a hash with its audit record in one transaction. The secret is
/// returned once and never stored.
pub async fn issue(
    store: &crate::store::Store,
    request: IssueKey,
    secret: Option<Secret>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(crate::store::KeyRecord, Secret), crate::StoreError> {
    let secret = secret.unwrap_or_else(Secret::generate);
    let prefix = secret
        .prefix()
        .expect("secrets are made or parsed with a prefix")
        .to_owned();
    let id = uuid::Uuid::now_v7();
    let key = crate::store::NewKey {
        id,
        tenant: request.tenant.clone(),
        prefix: prefix.clone(),
        secret_hash: secret.hash(),
        scopes: request.scopes.clone(),
        name: request.name.clone(),
        owner_email: request.owner_email.clone(),
        expires_at: request.expires_at,
        created_by: request.actor.clone(),
        now,
    };
    let audit = crate::store::NewAudit {
        tenant: request.tenant,
        actor: request.actor,
        action: "key.created".into(),
        target: Some(format!("key:{id}")),
        detail: serde_json::json!({
            "prefix": prefix,
            "scopes": request.scopes,
            "name": request.name,
            "expires_at": request.expires_at,
        }),
        address: request.address,
        at: now,
    };
    let record = store.key_insert(&key, &audit).await?;
    Ok((record, secret))
}
