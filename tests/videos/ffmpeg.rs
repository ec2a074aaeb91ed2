//! ffmpeg as the project installs it (scripts/ensure-ffmpeg.sh): the test video made
//! from lavfi sources, and a `transcode` process that refuses to start without ffmpeg
//! while the rest of Waymark starts as usual.

use std::process::Stdio;

use super::{ffprobe_json, test_video};
use crate::binary::{command, spawn_with};
use crate::support::TestDb;

#[tokio::test]
async fn the_test_video_is_a_short_720p_clip_with_audio() {
    let dir = tempdir();
    let video = test_video(&dir, 2).await;
    let probe = ffprobe_json(&video).await;
    let streams = probe["streams"].as_array().unwrap();
    let video_stream = streams.iter().find(|s| s["codec_type"] == "video").unwrap();
    assert_eq!(video_stream["width"], 1280);
    assert_eq!(video_stream["height"], 720);
    assert_eq!(video_stream["codec_name"], "h264");
    assert!(
        streams.iter().any(|s| s["codec_type"] == "audio"),
        "{probe}"
    );
    let duration: f64 = probe["format"]["duration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((duration - 2.0).abs() < 0.2, "{duration}");
    std::fs::remove_dir_all(&dir).ok();
}

async fn refused(db: &TestDb, env: &[(&str, &str)]) -> String {
    let mut cmd = command(db, &["serve", "--capabilities", "transcode"]);
    cmd.stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    stderr
}

#[tokio::test]
async fn a_transcode_process_without_ffmpeg_refuses_to_start_saying_how_to_install_it() {
    let db = TestDb::sqlite().await;
    let empty = tempdir();
    let no_path = empty.to_str().unwrap();
    let stderr = refused(&db, &[("PATH", no_path)]).await;
    assert!(stderr.contains("cannot offer `transcode`"), "{stderr}");
    assert!(stderr.contains("ffmpeg was not found"), "{stderr}");
    assert!(stderr.contains("apt-get install ffmpeg"), "{stderr}");
    assert!(stderr.contains("WAYMARK_FFMPEG"), "{stderr}");

    // ffmpeg given, ffprobe missing: still refused, naming ffprobe.
    let ffmpeg = which("ffmpeg");
    let stderr = refused(&db, &[("PATH", no_path), ("WAYMARK_FFMPEG", &ffmpeg)]).await;
    assert!(stderr.contains("ffprobe was not found"), "{stderr}");
    let stderr = refused(&db, &[("WAYMARK_FFPROBE", "/nonexistent/ffprobe")]).await;
    assert!(
        stderr.contains("WAYMARK_FFPROBE=/nonexistent/ffprobe"),
        "{stderr}"
    );

    // Without `transcode` the same environment serves as usual.
    let mut cmd = command(&db, &["serve"]);
    cmd.env("PATH", no_path);
    let proc = spawn_with(cmd).await;
    assert!(proc.addr.is_some());
    drop(proc);

    // With both found through the variables, `transcode` starts.
    let mut cmd = command(&db, &["serve", "--capabilities", "transcode"]);
    cmd.env("PATH", no_path)
        .env("WAYMARK_FFMPEG", &ffmpeg)
        .env("WAYMARK_FFPROBE", which("ffprobe"));
    let proc = spawn_with(cmd).await;
    assert!(proc.addr.is_some());
    std::fs::remove_dir_all(&empty).ok();
}

fn which(name: &str) -> String {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} is not on PATH: run scripts/ensure-ffmpeg.sh (./test.sh does)")
        })
        .to_string_lossy()
        .into_owned()
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("waymark-ffmpeg-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn ffprobe_reads_the_test_video_and_refuses_what_is_not_a_video_clearly() {
    use waymark_workflows::videos::probe::{self, ProbeError};
    let dir = tempdir();
    let ffprobe = std::path::PathBuf::from(which("ffprobe"));
    let video = test_video(&dir, 2).await;
    let info = probe::probe(&ffprobe, &video).await.unwrap();
    assert_eq!((info.width, info.height, info.rotation), (1280, 720, 0));
    assert_eq!(info.video_codec, "h264");
    assert!(info.has_audio);
    assert!((info.duration_seconds - 2.0).abs() < 0.2, "{info:?}");
    let ladder = probe::renditions(&probe::default_ladder(), &info);
    assert_eq!(ladder.last().unwrap().height, 720, "never above the source");

    let text = dir.join("notes.txt");
    std::fs::write(&text, "this is a text file, not a video\n").unwrap();
    let refused = probe::probe(&ffprobe, &text).await.unwrap_err();
    assert!(
        matches!(refused, ProbeError::UnreadableContainer(_)),
        "{refused:?}"
    );
    assert!(
        refused.to_string().starts_with("unreadable container"),
        "{refused}"
    );

    let audio = dir.join("tone.m4a");
    let status = tokio::process::Command::new(which("ffmpeg"))
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi"])
        .args(["-i", "sine=frequency=440:duration=1", "-c:a", "aac"])
        .arg(&audio)
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let refused = probe::probe(&ffprobe, &audio).await.unwrap_err();
    assert_eq!(refused, ProbeError::NoVideoStream);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn ffmpeg_reports_progress_and_dies_with_its_whole_group_when_cancelled() {
    use std::ffi::OsString;
    use tokio_util::sync::CancellationToken;
    use waymark_workflows::videos::transcode::{group_alive, run_ffmpeg, TranscodeError};
    let dir = tempdir();
    let ffmpeg = std::path::PathBuf::from(which("ffmpeg"));

    // A short encode runs to the end, reporting progress up to its duration.
    let out = dir.join("short.mp4");
    let args: Vec<OsString> = [
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=320x180:rate=25:duration=1",
    ]
    .iter()
    .map(OsString::from)
    .chain(
        ["-c:v", "libx264", "-preset", "ultrafast"]
            .iter()
            .map(OsString::from),
    )
    .chain([out.clone().into_os_string()])
    .collect();
    let mut reports = Vec::new();
    run_ffmpeg(&ffmpeg, &args, &CancellationToken::new(), |p| {
        reports.push(p)
    })
    .await
    .unwrap();
    let last = reports.last().expect("progress reports");
    assert!(last.done, "{reports:?}");
    assert!((last.out_time_seconds - 1.0).abs() < 0.2, "{reports:?}");
    assert!(out.exists());

    // An endless encode at real time: cancelled once it has reported progress, it is
    // killed with its process group and nothing of it is left running.
    let endless: Vec<OsString> = ["-re", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25"]
        .iter()
        .map(OsString::from)
        .chain(
            ["-c:v", "libx264", "-preset", "ultrafast", "-f", "null", "-"]
                .iter()
                .map(OsString::from),
        )
        .collect();
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    let outcome = run_ffmpeg(&ffmpeg, &endless, &cancel, move |p| {
        if p.out_time_seconds > 0.0 {
            trigger.cancel();
        }
    })
    .await;
    let pgid = match outcome {
        Err(TranscodeError::Cancelled { pgid }) => pgid,
        other => panic!("expected a cancelled ffmpeg, got {other:?}"),
    };
    assert!(pgid > 0);
    assert!(
        !group_alive(pgid),
        "ffmpeg's process group {pgid} is still alive"
    );

    // A failure carries ffmpeg's own reason.
    let missing: Vec<OsString> = ["-i", "/nonexistent/input.mp4", "-f", "null", "-"]
        .iter()
        .map(OsString::from)
        .collect();
    let failed = run_ffmpeg(&ffmpeg, &missing, &CancellationToken::new(), |_| {})
        .await
        .unwrap_err();
    assert!(failed.to_string().contains("No such file"), "{failed}");
    std::fs::remove_dir_all(&dir).ok();
}
