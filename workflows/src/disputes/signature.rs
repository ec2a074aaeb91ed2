//! Webhook signatures: `Waymark-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` over
//! `"<t>.<raw body>"`, keyed by the tenant's signing secret. Several `v1=` may be
//! present (a sender that holds two secrets during a roll signs with both); one that
//! matches any valid secret is enough. Compared in constant time, and refused when `t`
//! is more than [`TOLERANCE`] from the engine's clock either way.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a signature's timestamp may be from now, in either direction.
pub const TOLERANCE_SECONDS: i64 = 5 * 60;

/// The header's name.
pub const HEADER: &str = "Waymark-Signature";

/// Why a signature was refused. The HTTP answer never says which (a 401 that says
/// no more than "bad or stale signature"); the log does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no Waymark-Signature header")]
    Missing,
    #[error("the Waymark-Signature header is malformed")]
    Malformed,
    #[error("the signature's timestamp is more than 5 minutes from now")]
    Stale,
    #[error("no signature matches a valid secret")]
    Mismatch,
}

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value that signs `body` at `timestamp` with each of `secrets`.
pub fn sign(secrets: &[&str], timestamp: i64, body: &[u8]) -> String {
    let mut header = format!("t={timestamp}");
    for secret in secrets {
        let tag = mac(secret, timestamp, body).finalize().into_bytes();
        header.push_str(&format!(",v1={}", hex::encode(tag)));
    }
    header
}

/// Checks `header` (absent: `None`) against `secrets` at `now`.
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secrets: &[String],
    now: DateTime<Utc>,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut tags = Vec::new();
    for part in header.split(',') {
        let (name, value) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        match name {
            "t" if timestamp.is_none() => {
                timestamp = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| SignatureError::Malformed)?,
                )
            }
            "t" => return Err(SignatureError::Malformed),
            // A tag that is not hex can never match; skip it like a scheme we do not know.
            "v1" => tags.extend(hex::decode(value).ok()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if tags.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if (now.timestamp() - timestamp).abs() > TOLERANCE_SECONDS {
        return Err(SignatureError::Stale);
    }
    // Every secret against every tag, without stopping early: the time taken says
    // nothing about which one matched.
    let mut matched = false;
    for secret in secrets {
        for tag in &tags {
            matched |= mac(secret, timestamp, body).verify_slice(tag).is_ok();
        }
    }
    if matched {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, 0).unwrap()
    }

    #[test]
    fn a_signature_from_any_valid_secret_within_the_tolerance_is_accepted() {
        let body = br#"{"id":"evt_1"}"#;
        let secrets = vec!["old".to_owned(), "new".to_owned()];
        let t = 1_700_000_000;
        for header in [
            sign(&["new"], t, body),
            sign(&["old"], t, body),
            sign(&["other", "new"], t, body),
        ] {
            assert_eq!(verify(Some(&header), body, &secrets, at(t)), Ok(()));
        }
        let header = sign(&["new"], t, body);
        assert_eq!(verify(Some(&header), body, &secrets, at(t + 300)), Ok(()));
        assert_eq!(verify(Some(&header), body, &secrets, at(t - 300)), Ok(()));
    }

    #[test]
    fn wrong_stale_future_missing_and_malformed_signatures_are_refused() {
        let body = br#"{"id":"evt_1"}"#;
        let secrets = vec!["right".to_owned()];
        let t = 1_700_000_000;
        let good = sign(&["right"], t, body);
        assert_eq!(
            verify(Some(&sign(&["wrong"], t, body)), body, &secrets, at(t)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(&good), b"{\"id\":\"evt_2\"}", &secrets, at(t)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(&good), body, &secrets, at(t + 301)),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(Some(&good), body, &secrets, at(t - 301)),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(None, body, &secrets, at(t)),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(Some(&good), body, &[], at(t)),
            Err(SignatureError::Mismatch)
        );
        for malformed in [
            "",
            "t=abc,v1=00",
            "v1=00",
            &format!("t={t}"),
            "t=1,t=2,v1=00",
        ] {
            assert_eq!(
                verify(Some(malformed), body, &secrets, at(t)),
                Err(SignatureError::Malformed),
                "{malformed}"
            );
        }
    }
}
