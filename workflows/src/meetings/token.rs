//! RSVP links: a token that binds a meeting, one attendee and the sequence the
//! invitation was sent under, signed with HMAC-SHA256 under the installation's meeting
//! secret. No login: holding the link is the permission, and it answers for that one
//! attendee only. A token for an older sequence still verifies (so the page can show
//! what changed); the caller compares sequences.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use super::ical::PartStat;

/// Bytes of the MAC kept: 128 bits is far beyond guessing over HTTP.
const MAC_LEN: usize = 16;
const BODY_LEN: usize = 16 + 16 + 8 + 1;

/// What an RSVP token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RsvpToken {
    pub meeting: Uuid,
    pub attendee: Uuid,
    pub sequence: i64,
    /// The answer the link was for (the page preselects it; only a POST records it).
    pub answer: Option<PartStat>,
}

fn answer_byte(answer: Option<PartStat>) -> u8 {
    match answer {
        None | Some(PartStat::NeedsAction) => 0,
        Some(PartStat::Accepted) => 1,
        Some(PartStat::Tentative) => 2,
        Some(PartStat::Declined) => 3,
    }
}

fn mac(secret: &[u8], body: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(b"waymark-rsvp-v1");
    mac.update(body);
    mac.finalize().into_bytes()[..MAC_LEN].to_vec()
}

impl RsvpToken {
    /// The URL-safe token.
    pub fn sign(&self, secret: &[u8]) -> String {
        let mut body = Vec::with_capacity(BODY_LEN + MAC_LEN);
        body.extend_from_slice(self.meeting.as_bytes());
        body.extend_from_slice(self.attendee.as_bytes());
        body.extend_from_slice(&self.sequence.to_be_bytes());
        body.push(answer_byte(self.answer));
        let tag = mac(secret, &body);
        body.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(body)
    }

    /// The token's claims, or `None` when it is malformed or its MAC does not match
    /// (compared in constant time).
    pub fn verify(token: &str, secret: &[u8]) -> Option<RsvpToken> {
        let bytes = URL_SAFE_NO_PAD.decode(token.trim()).ok()?;
        if bytes.len() != BODY_LEN + MAC_LEN {
            return None;
        }
        let (body, tag) = bytes.split_at(BODY_LEN);
        let mut check = <Hmac<Sha256> as Mac>::new_from_slice(secret).ok()?;
        check.update(b"waymark-rsvp-v1");
        check.update(body);
        check.verify_truncated_left(tag).ok()?;
        let answer = match body[40] {
            0 => None,
            1 => Some(PartStat::Accepted),
            2 => Some(PartStat::Tentative),
            3 => Some(PartStat::Declined),
            _ => return None,
        };
        Some(RsvpToken {
            meeting: Uuid::from_slice(&body[..16]).ok()?,
            attendee: Uuid::from_slice(&body[16..32]).ok()?,
            sequence: i64::from_be_bytes(body[32..40].try_into().ok()?),
            answer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_any_change_breaks_it() {
        let token = RsvpToken {
            meeting: Uuid::now_v7(),
            attendee: Uuid::now_v7(),
            sequence: 3,
            answer: Some(PartStat::Tentative),
        };
        let signed = token.sign(b"secret");
        assert_eq!(RsvpToken::verify(&signed, b"secret"), Some(token));
        assert_eq!(RsvpToken::verify(&signed, b"other secret"), None);
        let mut bytes = URL_SAFE_NO_PAD.decode(&signed).unwrap();
        for i in [0, 20, 39, 40, bytes.len() - 1] {
            bytes[i] ^= 1;
            assert_eq!(
                RsvpToken::verify(&URL_SAFE_NO_PAD.encode(&bytes), b"secret"),
                None,
                "byte {i}"
            );
            bytes[i] ^= 1;
        }
        assert_eq!(RsvpToken::verify("not-a-token", b"secret"), None);
        assert_eq!(
            RsvpToken::verify(&signed[..signed.len() - 2], b"secret"),
            None
        );
    }
}
