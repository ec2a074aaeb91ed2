//! Signed, expiring playback tokens: one token covers a video's whole prefix
//! (`videos/<id>/`), so `/play/{token}/master.m3u8` and every playlist and segment it
//! names by a relative path (`/play/{token}/240p/attempt-1/segment-00000.ts`) are
//! served with the same token, and an HLS player plays the master as is.
//!
//! A token is `<video>.<expires>.<signature>`: the video id (hex, no dashes), Unix
//! seconds, and the HMAC of the blob [`UrlSigner`] over the prefix under a purpose of
//! its own (a line break no blob key may hold), so a token is never a valid blob link
//! nor a blob link a token.

use chrono::{DateTime, Utc};
use uuid::Uuid;
use waymark_services::UrlSigner;

use super::hls;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaybackError {
    #[error("the playback token is malformed")]
    Malformed,
    #[error("the playback link has expired")]
    Expired,
    #[error("the playback token's signature is not valid")]
    Invalid,
    #[error("the path {0:?} is not a file of the video")]
    BadPath(String),
}

fn signed_text(video: Uuid) -> String {
    format!("playback\n{}", hls::video_prefix(video))
}

/// A token for `video` valid until `expires` (rounded up to the second).
pub fn issue(signer: &UrlSigner, video: Uuid, expires: DateTime<Utc>) -> String {
    let expires = expires.timestamp() + i64::from(expires.timestamp_subsec_nanos() > 0);
    format!(
        "{}.{expires}.{}",
        video.simple(),
        signer.sign(&signed_text(video), expires)
    )
}

/// The video a token covers, if its signature holds and it has not expired at `now`.
pub fn verify(signer: &UrlSigner, token: &str, now: DateTime<Utc>) -> Result<Uuid, PlaybackError> {
    let mut parts = token.split('.');
    let (Some(video), Some(expires), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(PlaybackError::Malformed);
    };
    let video = Uuid::try_parse(video).map_err(|_| PlaybackError::Malformed)?;
    let expires: i64 = expires.parse().map_err(|_| PlaybackError::Malformed)?;
    signer
        .verify(&signed_text(video), expires, signature, now)
        .map_err(|e| match e {
            waymark_services::blob::SignatureError::Expired => PlaybackError::Expired,
            waymark_services::blob::SignatureError::Invalid => PlaybackError::Invalid,
        })?;
    Ok(video)
}

/// The blob key of `path` (what follows the token in the URL) under `video`'s prefix:
/// plain relative segments only, so no path leaves the prefix the token covers.
pub fn blob_key(video: Uuid, path: &str) -> Result<String, PlaybackError> {
    let bad = || PlaybackError::BadPath(path.to_owned());
    if path.is_empty() || path.ends_with('/') {
        return Err(bad());
    }
    for segment in path.split('/') {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if segment.is_empty() || segment == "." || segment == ".." || !segment.chars().all(allowed)
        {
            return Err(bad());
        }
    }
    Ok(format!("{}{path}", hls::video_prefix(video)))
}

/// The content type a player expects for `path`.
pub fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("m3u8") => "application/vnd.apple.mpegurl",
        Some("ts") => "video/mp2t",
        Some("json") => "application/json",
        Some("jpg" | "jpeg") => "image/jpeg",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn a_token_covers_its_video_until_it_expires_and_nothing_else() {
        let signer = UrlSigner::new(vec![3u8; 32]).unwrap();
        let video = Uuid::now_v7();
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap();
        let token = issue(&signer, video, now + chrono::Duration::hours(1));
        assert_eq!(verify(&signer, &token, now), Ok(video));
        assert_eq!(
            verify(&signer, &token, now + chrono::Duration::hours(1)),
            Err(PlaybackError::Expired)
        );
        // Another video's id with this signature, a longer expiry, another key: refused.
        let (_, rest) = token.split_once('.').unwrap();
        let other = format!("{}.{rest}", Uuid::now_v7().simple());
        assert_eq!(verify(&signer, &other, now), Err(PlaybackError::Invalid));
        let parts: Vec<&str> = token.split('.').collect();
        let longer = format!(
            "{}.{}.{}",
            parts[0],
            parts[1].parse::<i64>().unwrap() + 9,
            parts[2]
        );
        assert_eq!(verify(&signer, &longer, now), Err(PlaybackError::Invalid));
        let stranger = UrlSigner::new(vec![4u8; 32]).unwrap();
        assert_eq!(verify(&stranger, &token, now), Err(PlaybackError::Invalid));
        // Not a blob link either: the blob route signs the prefix as a key.
        assert!(signer
            .verify(
                &hls::video_prefix(video),
                parts[1].parse().unwrap(),
                parts[2],
                now
            )
            .is_err());
        for malformed in [
            "",
            "abc",
            "a.b.c",
            &format!("{}.x.y", video.simple()),
            &format!("{token}.x"),
        ] {
            assert_eq!(
                verify(&signer, malformed, now),
                Err(PlaybackError::Malformed),
                "{malformed}"
            );
        }
    }

    #[test]
    fn paths_stay_inside_the_videos_prefix() {
        let video = Uuid::nil();
        assert_eq!(
            blob_key(video, "240p/attempt-2/segment-00000.ts").unwrap(),
            format!("videos/{video}/240p/attempt-2/segment-00000.ts")
        );
        assert_eq!(
            blob_key(video, "master.m3u8").unwrap(),
            format!("videos/{video}/master.m3u8")
        );
        for bad in [
            "",
            "/master.m3u8",
            "../other/master.m3u8",
            "240p/../../x",
            "240p//index.m3u8",
            "240p/",
            "./master.m3u8",
            "a b.ts",
            "%2e%2e/x",
        ] {
            assert!(
                matches!(blob_key(video, bad), Err(PlaybackError::BadPath(_))),
                "{bad}"
            );
        }
        assert_eq!(content_type("master.m3u8"), "application/vnd.apple.mpegurl");
        assert_eq!(content_type("a/segment-00001.ts"), "video/mp2t");
    }
}
