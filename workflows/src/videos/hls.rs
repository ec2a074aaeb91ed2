//! HLS packaging of one rendition attempt, and the master playlist and manifest that
//! reference the committed attempts.
//!
//! Each attempt of a rendition writes under a prefix of its own,
//! `videos/<video>/<rendition>/attempt-<n>/`, so a retried or re-claimed attempt never
//! overwrites files a previous one may still be writing; the master playlist
//! (`videos/<video>/master.m3u8`) names only the committed attempt's playlist, by a path
//! relative to itself, so a player that fetched the master through any base URL
//! (a signed playback prefix) resolves every segment under that same base.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use waymark_services::{BlobError, BlobStore, PutOptions};

use super::probe::Rendition;
use super::transcode::{run_ffmpeg, Progress, TranscodeError};

/// HLS segment length, in seconds (keyframes are forced on this grid).
pub const SEGMENT_SECONDS: u32 = 6;
/// A rendition's media playlist, inside its attempt prefix.
pub const MEDIA_PLAYLIST: &str = "index.m3u8";
/// The master playlist, inside the video's prefix.
pub const MASTER_PLAYLIST: &str = "master.m3u8";
/// The manifest JSON, inside the video's prefix.
pub const MANIFEST: &str = "manifest.json";

/// Everything of a video lives under this prefix.
pub fn video_prefix(video: Uuid) -> String {
    format!("videos/{video}/")
}

/// Where attempt `attempt` of `rendition` writes (relative to the store's root).
pub fn attempt_prefix(video: Uuid, rendition: &str, attempt: u32) -> String {
    format!("videos/{video}/{rendition}/attempt-{attempt}/")
}

/// ffmpeg's arguments to package `input` as `rendition` in HLS under `out_dir`:
/// H.264 (keyframes every [`SEGMENT_SECONDS`], so segments cut evenly) and, when the
/// source has sound, AAC stereo.
pub fn ffmpeg_args(
    input: &Path,
    rendition: &Rendition,
    has_audio: bool,
    out_dir: &Path,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["-y".into(), "-i".into(), input.into()];
    let s = |v: &str| OsString::from(v);
    let k = rendition.video_kbps;
    args.extend(
        [
            "-map".to_owned(),
            "0:v:0".into(),
            // ffmpeg turns a rotated source upright before the filter, so the size
            // asked for is the displayed one.
            "-vf".into(),
            format!("scale={}:{}", rendition.width, rendition.height),
            "-c:v".into(),
            "libx264".into(),
            "-preset".into(),
            "veryfast".into(),
            "-profile:v".into(),
            "main".into(),
            "-pix_fmt".into(),
            "yuv420p".into(),
            "-b:v".into(),
            format!("{k}k"),
            "-maxrate".into(),
            format!("{}k", k * 107 / 100),
            "-bufsize".into(),
            format!("{}k", k * 3 / 2),
            "-sc_threshold".into(),
            "0".into(),
            "-force_key_frames".into(),
            format!("expr:gte(t,n_forced*{SEGMENT_SECONDS})"),
        ]
        .iter()
        .map(|a| s(a)),
    );
    if has_audio {
        args.extend(
            [
                "-map".to_owned(),
                "0:a:0".into(),
                "-c:a".into(),
                "aac".into(),
                "-ac".into(),
                "2".into(),
                "-b:a".into(),
                format!("{}k", rendition.audio_kbps),
            ]
            .iter()
            .map(|a| s(a)),
        );
    } else {
        args.push("-an".into());
    }
    args.extend(
        [
            "-f",
            "hls",
            "-hls_time",
            &SEGMENT_SECONDS.to_string(),
            "-hls_playlist_type",
            "vod",
            "-hls_segment_filename",
        ]
        .iter()
        .map(|a| s(a)),
    );
    args.push(out_dir.join("segment-%05d.ts").into_os_string());
    args.push(out_dir.join(MEDIA_PLAYLIST).into_os_string());
    args
}

/// A file of a committed attempt, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    /// Relative to the attempt's prefix.
    pub name: String,
    pub size: u64,
    pub sha256: Option<String>,
}

/// One rendition attempt, packaged and stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackagedRendition {
    pub rendition: Rendition,
    pub attempt: u32,
    /// `videos/<video>/<rendition>/attempt-<n>/`.
    pub prefix: String,
    pub duration_seconds: f64,
    pub files: Vec<StoredFile>,
}

#[derive(Debug, thiserror::Error)]
pub enum HlsError {
    #[error(transparent)]
    Transcode(#[from] TranscodeError),
    #[error("reading the packaged files in {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("storing the packaged rendition: {0}")]
    Blob(#[from] BlobError),
    #[error("ffmpeg wrote no media playlist in {0}")]
    NoPlaylist(PathBuf),
}

/// Transcodes `input` into `rendition` in the scratch directory `work` (emptied first),
/// then stores every file under the attempt's prefix: the media playlist last, so a
/// prefix with a playlist holds all its segments.
#[allow(clippy::too_many_arguments)]
pub async fn package_rendition(
    ffmpeg: &Path,
    blobs: &BlobStore,
    video: Uuid,
    input: &Path,
    has_audio: bool,
    rendition: &Rendition,
    attempt: u32,
    work: &Path,
    cancel: &CancellationToken,
    on_progress: impl FnMut(Progress),
) -> Result<PackagedRendition, HlsError> {
    let io = |source| HlsError::Io {
        path: work.to_owned(),
        source,
    };
    if work.exists() {
        tokio::fs::remove_dir_all(work).await.map_err(io)?;
    }
    tokio::fs::create_dir_all(work).await.map_err(io)?;
    let args = ffmpeg_args(input, rendition, has_audio, work);
    run_ffmpeg(ffmpeg, &args, cancel, on_progress).await?;
    let playlist = tokio::fs::read_to_string(work.join(MEDIA_PLAYLIST))
        .await
        .map_err(|_| HlsError::NoPlaylist(work.to_owned()))?;
    let mut names = Vec::new();
    let mut entries = tokio::fs::read_dir(work).await.map_err(io)?;
    while let Some(entry) = entries.next_entry().await.map_err(io)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != MEDIA_PLAYLIST {
            names.push(name);
        }
    }
    names.sort();
    names.push(MEDIA_PLAYLIST.to_owned());
    let prefix = attempt_prefix(video, &rendition.name, attempt);
    let mut files = Vec::new();
    for name in names {
        let content_type = if name.ends_with(".m3u8") {
            "application/vnd.apple.mpegurl"
        } else {
            "video/mp2t"
        };
        let meta = blobs
            .put_file(
                &format!("{prefix}{name}"),
                &work.join(&name),
                PutOptions::content_type(content_type),
            )
            .await?;
        files.push(StoredFile {
            name,
            size: meta.size,
            sha256: meta.sha256,
        });
    }
    Ok(PackagedRendition {
        rendition: rendition.clone(),
        attempt,
        prefix,
        duration_seconds: playlist_duration(&playlist),
        files,
    })
}

/// The sum of a media playlist's `#EXTINF` durations.
pub fn playlist_duration(playlist: &str) -> f64 {
    playlist
        .lines()
        .filter_map(|l| l.strip_prefix("#EXTINF:"))
        .filter_map(|rest| rest.split(',').next()?.trim().parse::<f64>().ok())
        .sum()
}

/// The master playlist for `renditions` (lowest first), at `videos/<video>/master.m3u8`:
/// each variant by its committed attempt's playlist, relative to the master.
pub fn master_playlist(video: Uuid, renditions: &[PackagedRendition]) -> String {
    let base = video_prefix(video);
    let mut sorted: Vec<&PackagedRendition> = renditions.iter().collect();
    sorted.sort_by_key(|r| r.rendition.height);
    let mut out = String::from("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    for r in sorted {
        let bandwidth = (r.rendition.video_kbps + r.rendition.audio_kbps) as u64 * 1000;
        let relative = r.prefix.strip_prefix(&base).unwrap_or(&r.prefix);
        out.push_str(&format!(
            "#EXT-X-STREAM-INF:BANDWIDTH={bandwidth},RESOLUTION={}x{},NAME=\"{}\"\n{relative}{MEDIA_PLAYLIST}\n",
            r.rendition.width, r.rendition.height, r.rendition.name
        ));
    }
    out
}

/// The manifest JSON: each rendition's size, bitrates, duration, committed prefix and
/// files with their checksums.
pub fn manifest(video: Uuid, renditions: &[PackagedRendition]) -> serde_json::Value {
    serde_json::json!({
        "video": video,
        "master": format!("{}{MASTER_PLAYLIST}", video_prefix(video)),
        "segment_seconds": SEGMENT_SECONDS,
        "renditions": renditions,
    })
}

/// Stores the master playlist and the manifest of a video whose renditions are all
/// committed.
pub async fn publish(
    blobs: &BlobStore,
    video: Uuid,
    renditions: &[PackagedRendition],
) -> Result<(), BlobError> {
    let base = video_prefix(video);
    blobs
        .put_bytes(
            &format!("{base}{MANIFEST}"),
            serde_json::to_vec_pretty(&manifest(video, renditions)).expect("JSON"),
            PutOptions::content_type("application/json"),
        )
        .await?;
    blobs
        .put_bytes(
            &format!("{base}{MASTER_PLAYLIST}"),
            master_playlist(video, renditions),
            PutOptions::content_type("application/vnd.apple.mpegurl"),
        )
        .await?;
    Ok(())
}

/// Deletes every attempt of `rendition` but the committed one (superseded attempts).
pub async fn delete_superseded(
    blobs: &BlobStore,
    video: Uuid,
    rendition: &str,
    committed: u32,
) -> Result<u64, BlobError> {
    let keep = attempt_prefix(video, rendition, committed);
    let all = format!("videos/{video}/{rendition}/");
    let mut prefixes: Vec<String> = blobs
        .list(&all)
        .await?
        .into_iter()
        .filter(|m| !m.key.starts_with(&keep))
        .filter_map(|m| {
            let rest = m.key.strip_prefix(&all)?;
            let attempt = rest.split('/').next()?;
            Some(format!("{all}{attempt}/"))
        })
        .collect();
    prefixes.dedup();
    let mut deleted = 0;
    for prefix in prefixes {
        deleted += blobs.delete_prefix(&prefix).await?;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packaged(name: &str, width: u32, height: u32, attempt: u32) -> PackagedRendition {
        let video = Uuid::nil();
        PackagedRendition {
            rendition: Rendition {
                name: name.into(),
                width,
                height,
                video_kbps: 400,
                audio_kbps: 64,
            },
            attempt,
            prefix: attempt_prefix(video, name, attempt),
            duration_seconds: 2.0,
            files: vec![],
        }
    }

    #[test]
    fn the_master_playlist_names_each_committed_attempt_relative_to_itself() {
        let video = Uuid::nil();
        let master = master_playlist(
            video,
            &[packaged("360p", 640, 360, 2), packaged("240p", 426, 240, 1)],
        );
        assert_eq!(
            master,
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-INDEPENDENT-SEGMENTS\n\
             #EXT-X-STREAM-INF:BANDWIDTH=464000,RESOLUTION=426x240,NAME=\"240p\"\n\
             240p/attempt-1/index.m3u8\n\
             #EXT-X-STREAM-INF:BANDWIDTH=464000,RESOLUTION=640x360,NAME=\"360p\"\n\
             360p/attempt-2/index.m3u8\n"
        );
        assert_eq!(
            attempt_prefix(video, "240p", 3),
            format!("videos/{video}/240p/attempt-3/")
        );
    }

    #[test]
    fn playlist_durations_add_up_the_segments() {
        let playlist = "#EXTM3U\n#EXT-X-TARGETDURATION:6\n#EXTINF:6.000000,\nsegment-00000.ts\n\
                        #EXTINF:1.500000,\nsegment-00001.ts\n#EXT-X-ENDLIST\n";
        assert_eq!(playlist_duration(playlist), 7.5);
    }

    #[test]
    fn ffmpeg_is_asked_for_h264_aac_hls_in_six_second_segments() {
        let r = packaged("240p", 426, 240, 1).rendition;
        let args: Vec<String> = ffmpeg_args(Path::new("in.mp4"), &r, true, Path::new("/w"))
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        for part in [
            "-vf scale=426:240",
            "-c:v libx264",
            "-c:a aac",
            "-b:a 64k",
            "-hls_time 6",
            "-hls_playlist_type vod",
            "/w/segment-%05d.ts /w/index.m3u8",
        ] {
            assert!(joined.contains(part), "{part} missing in {joined}");
        }
        let silent: Vec<OsString> = ffmpeg_args(Path::new("in.mp4"), &r, false, Path::new("/w"));
        assert!(silent.contains(&OsString::from("-an")));
        assert!(!silent.contains(&OsString::from("aac")));
    }
}
