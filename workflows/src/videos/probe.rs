//! What ffprobe says about an upload, and the rendition ladder that follows from it.
//!
//! A file that is not a playable video fails clearly: "unreadable container" when
//! ffprobe cannot open it, "no video stream" when it opens but holds no video. Both are
//! fatal for the ingest (a retry would read the same bytes), and the upload is kept for
//! an operator.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The parts of a probe the ingest uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VideoInfo {
    pub duration_seconds: f64,
    /// As stored, before rotation.
    pub width: u32,
    pub height: u32,
    /// Degrees clockwise a player turns the picture (0, 90, 180, 270).
    pub rotation: i32,
    pub video_codec: String,
    pub has_audio: bool,
}

impl VideoInfo {
    /// Width and height as displayed, after rotation.
    pub fn display_size(&self) -> (u32, u32) {
        if self.rotation.rem_euclid(180) == 90 {
            (self.height, self.width)
        } else {
            (self.width, self.height)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("unreadable container: ffprobe could not read the file as a media container ({0})")]
    UnreadableContainer(String),
    #[error("no video stream: the file holds no video to transcode")]
    NoVideoStream,
    #[error("ffprobe could not run: {0}")]
    Tool(String),
}

/// Runs `ffprobe` on `file`.
pub async fn probe(ffprobe: &Path, file: &Path) -> Result<VideoInfo, ProbeError> {
    let out = tokio::process::Command::new(ffprobe)
        .args([
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_format",
            "-show_streams",
        ])
        .arg(file)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| ProbeError::Tool(format!("{}: {e}", ffprobe.display())))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let reason = stderr.lines().last().unwrap_or("no reason given").trim();
        return Err(ProbeError::UnreadableContainer(reason.to_owned()));
    }
    let json: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| ProbeError::Tool(format!("ffprobe printed no JSON: {e}")))?;
    parse(&json)
}

/// Reads ffprobe's `-show_format -show_streams` JSON.
pub fn parse(json: &Value) -> Result<VideoInfo, ProbeError> {
    let streams = json["streams"].as_array().cloned().unwrap_or_default();
    // Cover art is a video stream too (an attached picture): not a video.
    let video = streams
        .iter()
        .find(|s| s["codec_type"] == "video" && s["disposition"]["attached_pic"] != 1)
        .ok_or(ProbeError::NoVideoStream)?;
    let width = video["width"].as_u64().unwrap_or(0) as u32;
    let height = video["height"].as_u64().unwrap_or(0) as u32;
    if width == 0 || height == 0 {
        return Err(ProbeError::NoVideoStream);
    }
    let number = |v: &Value| {
        v.as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .or_else(|| v.as_f64())
    };
    let duration_seconds = number(&json["format"]["duration"])
        .or_else(|| number(&video["duration"]))
        .unwrap_or(0.0);
    // Rotation: the display matrix side data (ffmpeg 5+) or the older `rotate` tag. The
    // matrix's rotation is counter-clockwise; players turn the other way.
    let rotation = video["side_data_list"]
        .as_array()
        .and_then(|list| list.iter().find_map(|d| d["rotation"].as_f64()))
        .map(|r| -(r.round() as i32))
        .or_else(|| {
            video["tags"]["rotate"]
                .as_str()
                .and_then(|r| r.parse::<i32>().ok())
        })
        .unwrap_or(0)
        .rem_euclid(360);
    Ok(VideoInfo {
        duration_seconds,
        width,
        height,
        rotation,
        video_codec: video["codec_name"].as_str().unwrap_or("unknown").to_owned(),
        has_audio: streams.iter().any(|s| s["codec_type"] == "audio"),
    })
}

/// One rung of the ladder: a height and the bitrates to encode it at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rung {
    pub name: String,
    pub height: u32,
    pub video_kbps: u32,
    pub audio_kbps: u32,
}

/// The default ladder: 240p to 1080p.
pub fn default_ladder() -> Vec<Rung> {
    [
        ("240p", 240, 400),
        ("360p", 360, 800),
        ("480p", 480, 1400),
        ("720p", 720, 2800),
        ("1080p", 1080, 5000),
    ]
    .into_iter()
    .map(|(name, height, video_kbps)| Rung {
        name: name.into(),
        height,
        video_kbps,
        audio_kbps: if height <= 360 { 64 } else { 128 },
    })
    .collect()
}

/// A rendition to make: its rung and its exact size, aspect ratio kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rendition {
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub video_kbps: u32,
    pub audio_kbps: u32,
}

/// The renditions of `ladder` for a source of `info`: never above the source's
/// displayed height (a source smaller than every rung gets one rendition at its own
/// size), widths from the aspect ratio rounded to even numbers as H.264 needs.
pub fn renditions(ladder: &[Rung], info: &VideoInfo) -> Vec<Rendition> {
    let (src_w, src_h) = info.display_size();
    let even = |x: f64| ((x / 2.0).round() as u32).max(1) * 2;
    let make = |rung: &Rung, height: u32| Rendition {
        name: rung.name.clone(),
        width: even(src_w as f64 * height as f64 / src_h as f64),
        height: even(height as f64),
        video_kbps: rung.video_kbps,
        audio_kbps: rung.audio_kbps,
    };
    let mut out: Vec<Rendition> = ladder
        .iter()
        .filter(|rung| rung.height <= src_h)
        .map(|rung| make(rung, rung.height))
        .collect();
    if out.is_empty() {
        if let Some(lowest) = ladder.iter().min_by_key(|r| r.height) {
            out.push(make(lowest, src_h));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn info(width: u32, height: u32, rotation: i32) -> VideoInfo {
        VideoInfo {
            duration_seconds: 2.0,
            width,
            height,
            rotation,
            video_codec: "h264".into(),
            has_audio: true,
        }
    }

    #[test]
    fn the_ladder_never_goes_above_the_source_and_keeps_its_aspect_ratio() {
        let ladder = default_ladder();
        let names = |r: Vec<Rendition>| {
            r.into_iter()
                .map(|r| (r.name, r.width, r.height))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(renditions(&ladder, &info(1280, 720, 0))),
            vec![
                ("240p".into(), 426, 240),
                ("360p".into(), 640, 360),
                ("480p".into(), 854, 480),
                ("720p".into(), 1280, 720),
            ]
        );
        // A portrait phone video stored landscape with a 90° rotation: heights follow
        // the displayed picture.
        let portrait = renditions(&ladder, &info(1280, 720, 90));
        // The tallest rung that fits under the 1280 displayed lines.
        assert_eq!(portrait.last().unwrap().height, 1080);
        assert_eq!(
            portrait[0],
            Rendition {
                name: "240p".into(),
                width: 136,
                height: 240,
                video_kbps: 400,
                audio_kbps: 64
            }
        );
        // Smaller than every rung: one rendition at its own size.
        assert_eq!(
            names(renditions(&ladder, &info(320, 180, 0))),
            vec![("240p".into(), 320, 180)]
        );
    }

    #[test]
    fn probes_say_what_is_wrong_with_a_file_that_is_not_a_video() {
        let audio_only =
            json!({"streams": [{"codec_type": "audio"}], "format": {"duration": "3.0"}});
        assert_eq!(parse(&audio_only), Err(ProbeError::NoVideoStream));
        let cover_art = json!({"streams": [{"codec_type": "video", "width": 500, "height": 500, "disposition": {"attached_pic": 1}}]});
        assert_eq!(parse(&cover_art), Err(ProbeError::NoVideoStream));
        let rotated = json!({
            "streams": [{"codec_type": "video", "codec_name": "h264", "width": 1920, "height": 1080,
                         "side_data_list": [{"rotation": -90}]}],
            "format": {"duration": "4.5"}});
        let info = parse(&rotated).unwrap();
        assert_eq!(
            (info.rotation, info.duration_seconds, info.has_audio),
            (90, 4.5, false)
        );
        assert_eq!(info.display_size(), (1080, 1920));
        assert!(ProbeError::NoVideoStream
            .to_string()
            .starts_with("no video stream"));
        assert!(ProbeError::UnreadableContainer("x".into())
            .to_string()
            .starts_with("unreadable container"));
    }
}
