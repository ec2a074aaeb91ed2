//! Video ingest (issue 16). So far the tus 1.0 uploads at `/v1/uploads`: the
//! protocol's answers to wrong requests, a real tus client (tuspy) uploading in chunks
//! with an interruption and a refused checksum, on the local store and the S3 test
//! server, and abandoned uploads expiring under a manual clock.

mod ffmpeg;
mod hls;
mod tus;

use std::path::{Path, PathBuf};

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};

use crate::support::app::TestApp;

/// A tus request: `method path` with `key`, the headers given and a body; the status,
/// the answer's headers and its text.
pub async fn tus_call(
    app: &TestApp,
    method: &str,
    path: &str,
    key: Option<&str>,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, HeaderMap, String) {
    let url = if path.starts_with("http") {
        path.to_owned()
    } else {
        format!("{}{path}", app.base)
    };
    let mut request = app
        .http
        .request(Method::from_bytes(method.as_bytes()).unwrap(), url)
        .body(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap_or_default();
    (status, headers, text)
}

pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A `seconds`-long 1280x720 H.264/AAC clip made from ffmpeg's lavfi test sources
/// (`testsrc2` and a sine tone), small and quick: `<dir>/source.mp4`.
pub async fn test_video(dir: &Path, seconds: u32) -> PathBuf {
    let out = dir.join("source.mp4");
    let video = format!("testsrc2=size=1280x720:rate=30:duration={seconds}");
    let audio = format!("sine=frequency=440:duration={seconds}");
    let status = tokio::process::Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            &video,
        ])
        .args(["-f", "lavfi", "-i", &audio])
        .args([
            "-c:v", "libx264", "-preset", "veryfast", "-b:v", "600k", "-pix_fmt", "yuv420p",
        ])
        .args(["-c:a", "aac", "-b:a", "64k", "-shortest"])
        .arg(&out)
        .status()
        .await
        .expect("ffmpeg: run scripts/ensure-ffmpeg.sh (./test.sh does)");
    assert!(status.success(), "ffmpeg could not make the test video");
    out
}

/// ffprobe's JSON description (format and streams) of `target`, a file or a URL.
pub async fn ffprobe_json(target: &Path) -> serde_json::Value {
    let out = tokio::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_format",
            "-show_streams",
        ])
        .arg(target)
        .output()
        .await
        .expect("ffprobe: run scripts/ensure-ffmpeg.sh (./test.sh does)");
    assert!(
        out.status.success(),
        "ffprobe failed on {}: {}",
        target.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
