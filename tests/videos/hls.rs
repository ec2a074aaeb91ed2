//! HLS packaging of rendition attempts on the local blob store (a building block of the
//! `video_ingest` workflow, not yet driven by it): two rungs of the test video, each
//! attempt under its own prefix, checked with ffprobe; the master playlist names only
//! the committed attempts and plays from a copy of the video's prefix; superseded
//! attempts are deleted.

use std::path::{Path, PathBuf};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use waymark_services::BlobStore;
use waymark_workflows::videos::hls::{self, PackagedRendition};
use waymark_workflows::videos::probe::{self, Rung};

use super::{ffprobe_json, test_video};
use crate::support::app::local_blobs;

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("waymark-hls-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Copies every blob under `prefix` into `dir`, keeping the paths below the prefix.
async fn download_prefix(blobs: &BlobStore, prefix: &str, dir: &Path) {
    for meta in blobs.list(prefix).await.unwrap() {
        let relative = meta.key.strip_prefix(prefix).unwrap();
        let path = dir.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let bytes = blobs.get_bytes(&meta.key, None).await.unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

fn stream<'a>(probe: &'a serde_json::Value, kind: &str) -> Option<&'a serde_json::Value> {
    probe["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["codec_type"] == kind)
}

#[tokio::test]
async fn rendition_attempts_are_packaged_as_hls_under_their_own_prefix_and_the_master_plays() {
    let dir = tempdir();
    let ffmpeg = PathBuf::from("ffmpeg");
    let ffprobe = PathBuf::from("ffprobe");
    let source = test_video(&dir, 2).await;
    let info = probe::probe(&ffprobe, &source).await.unwrap();
    // A small ladder keeps the test short: two rungs under the 720p source.
    let ladder = [
        Rung {
            name: "180p".into(),
            height: 180,
            video_kbps: 200,
            audio_kbps: 64,
        },
        Rung {
            name: "240p".into(),
            height: 240,
            video_kbps: 400,
            audio_kbps: 64,
        },
    ];
    let renditions = probe::renditions(&ladder, &info);
    assert_eq!(renditions.len(), 2);
    let blobs = local_blobs(&dir.join("data"), "http://127.0.0.1:1".into());
    let video = Uuid::now_v7();

    // 240p's first attempt is superseded (say its worker died): its files stay under
    // attempt-1 until the committed attempt-2 replaces them.
    let mut committed: Vec<PackagedRendition> = Vec::new();
    for (rendition, attempts) in renditions.iter().zip([vec![1], vec![1, 2]]) {
        for attempt in attempts {
            let mut reports = Vec::new();
            let packaged = hls::package_rendition(
                &ffmpeg,
                &blobs,
                video,
                &source,
                info.has_audio,
                rendition,
                attempt,
                &dir.join(format!("work-{}-{attempt}", rendition.name)),
                &CancellationToken::new(),
                |p| reports.push(p),
            )
            .await
            .unwrap();
            assert!(reports.last().unwrap().done, "{reports:?}");
            assert_eq!(
                packaged.prefix,
                format!("videos/{video}/{}/attempt-{attempt}/", rendition.name)
            );
            assert_eq!(packaged.files.last().unwrap().name, "index.m3u8");
            assert!(packaged
                .files
                .iter()
                .all(|f| f.sha256.as_deref().is_some_and(|s| s.len() == 64)));
            assert!(
                (packaged.duration_seconds - 2.0).abs() < 0.3,
                "{packaged:?}"
            );
            if attempt == 2 || rendition.name == "180p" {
                committed.push(packaged);
            }
        }
    }
    // Attempt 1's playlist and its segments (one, for 2 s) go.
    let deleted = hls::delete_superseded(&blobs, video, "240p", 2)
        .await
        .unwrap();
    assert!(deleted >= 2, "{deleted}");
    assert!(blobs
        .list(&format!("videos/{video}/240p/attempt-1/"))
        .await
        .unwrap()
        .is_empty());
    hls::publish(&blobs, video, &committed).await.unwrap();

    let master = String::from_utf8(
        blobs
            .get_bytes(&format!("videos/{video}/master.m3u8"), None)
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(master.contains("180p/attempt-1/index.m3u8"), "{master}");
    assert!(master.contains("240p/attempt-2/index.m3u8"), "{master}");
    assert!(!master.contains("240p/attempt-1"), "{master}");
    let manifest: serde_json::Value = serde_json::from_slice(
        &blobs
            .get_bytes(&format!("videos/{video}/manifest.json"), None)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["renditions"].as_array().unwrap().len(), 2);
    assert_eq!(manifest["renditions"][1]["attempt"], 2);

    // Everything a player needs is under the video's prefix, by relative paths.
    let copy = dir.join("copy");
    download_prefix(&blobs, &format!("videos/{video}/"), &copy).await;
    for (name, width, height) in [("180p/attempt-1", 320, 180), ("240p/attempt-2", 426, 240)] {
        let probe = ffprobe_json(&copy.join(name).join("index.m3u8")).await;
        let v = stream(&probe, "video").expect("a video stream");
        assert_eq!(
            (v["width"].as_u64(), v["height"].as_u64()),
            (Some(width), Some(height))
        );
        assert_eq!(v["codec_name"], "h264");
        assert_eq!(stream(&probe, "audio").unwrap()["codec_name"], "aac");
        let duration: f64 = probe["format"]["duration"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((duration - 2.0).abs() < 0.3, "{name}: {duration}");
    }
    let probe = ffprobe_json(&copy.join("master.m3u8")).await;
    let heights: Vec<u64> = probe["streams"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["codec_type"] == "video")
        .filter_map(|s| s["height"].as_u64())
        .collect();
    assert!(heights.contains(&180) && heights.contains(&240), "{probe}");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn a_playback_token_plays_the_master_over_http_and_refuses_what_it_does_not_cover() {
    use reqwest::StatusCode;
    use waymark_workflows::videos::playback;

    let app = crate::support::app::TestApp::on(crate::support::TestDb::sqlite().await)
        .serving_local_blobs()
        .spawn()
        .await;
    let blobs = app.blobs.clone().expect("a blob store");
    let BlobStore::Local(local) = &blobs else {
        panic!("a local blob store")
    };
    let dir = tempdir();
    let source = test_video(&dir, 2).await;
    let info = probe::probe(Path::new("ffprobe"), &source).await.unwrap();
    let rung = Rung {
        name: "180p".into(),
        height: 180,
        video_kbps: 200,
        audio_kbps: 64,
    };
    let rendition = probe::renditions(&[rung], &info).remove(0);
    let video = Uuid::now_v7();
    let packaged = hls::package_rendition(
        Path::new("ffmpeg"),
        &blobs,
        video,
        &source,
        info.has_audio,
        &rendition,
        1,
        &dir.join("work"),
        &CancellationToken::new(),
        |_| {},
    )
    .await
    .unwrap();
    hls::publish(&blobs, video, &[packaged]).await.unwrap();

    let now = chrono::Utc::now();
    let token = playback::issue(local.signer(), video, now + chrono::Duration::hours(1));
    // ffprobe follows the master's relative paths under the same token.
    let url = format!("{}/play/{token}/master.m3u8", app.base);
    let probe = ffprobe_json(Path::new(&url)).await;
    let v = stream(&probe, "video").expect("a video stream");
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(320), Some(180))
    );
    let duration: f64 = probe["format"]["duration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((duration - 2.0).abs() < 0.3, "{duration}");
    let master = app.http.get(&url).send().await.unwrap();
    assert_eq!(master.status(), StatusCode::OK);
    assert_eq!(
        master.headers()["content-type"],
        "application/vnd.apple.mpegurl"
    );

    let expired = playback::issue(local.signer(), video, now - chrono::Duration::seconds(1));
    let other = playback::issue(
        local.signer(),
        Uuid::now_v7(),
        now + chrono::Duration::hours(1),
    );
    let forged = format!("{}0", &token[..token.len() - 1]);
    let cases = [
        (
            format!("/play/{expired}/master.m3u8"),
            StatusCode::FORBIDDEN,
            "expired",
        ),
        (
            format!("/play/{forged}/master.m3u8"),
            StatusCode::FORBIDDEN,
            "not valid",
        ),
        (
            "/play/nonsense/master.m3u8".to_owned(),
            StatusCode::FORBIDDEN,
            "malformed",
        ),
        // Another video's token does not reach this video's files (nothing there).
        (
            format!("/play/{other}/master.m3u8"),
            StatusCode::NOT_FOUND,
            "no such file",
        ),
        (
            format!("/play/{token}/missing.m3u8"),
            StatusCode::NOT_FOUND,
            "no such file",
        ),
        (
            format!("/play/{token}/180p/..%2F..%2Fx"),
            StatusCode::NOT_FOUND,
            "not a file of the video",
        ),
        (
            format!("/play/{token}/a%20b.ts"),
            StatusCode::NOT_FOUND,
            "not a file of the video",
        ),
    ];
    for (path, status, says) in cases {
        let response = app
            .http
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{path}");
        let text = response.text().await.unwrap();
        assert!(text.contains(says), "{path}: {text}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
