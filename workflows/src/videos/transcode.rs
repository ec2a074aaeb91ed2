//! Running ffmpeg for one rendition attempt: in a process group of its own, killed
//! (the whole group, at once) when the step's cancellation fires — the run was
//! cancelled or the lease lost — or when the future is dropped, so no ffmpeg outlives
//! the attempt that started it. Progress comes from `-progress pipe:1`.

use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio_util::sync::CancellationToken;

/// One `-progress` report.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// How far into the output ffmpeg is, in seconds.
    pub out_time_seconds: f64,
    /// The last report (`progress=end`).
    pub done: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TranscodeError {
    #[error("ffmpeg could not start: {0}")]
    Spawn(std::io::Error),
    #[error(
        "ffmpeg was killed (process group {pgid}): the attempt was cancelled or its lease lost"
    )]
    Cancelled { pgid: i32 },
    #[error("ffmpeg failed ({status}): {stderr}")]
    Failed { status: String, stderr: String },
    #[error("reading ffmpeg's output: {0}")]
    Io(std::io::Error),
}

/// Kills the process group when dropped, unless disarmed after a normal exit.
struct GroupGuard {
    pgid: i32,
    armed: bool,
}

impl GroupGuard {
    fn kill(&self) {
        // A group that is gone already answers ESRCH: nothing left to kill.
        let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            self.kill();
        }
    }
}

/// Runs `ffmpeg` with `args` (the input, filters, outputs; `-progress pipe:1 -nostats`
/// are added), calling `on_progress` for each report, until it exits or `cancel` fires.
pub async fn run_ffmpeg(
    ffmpeg: &Path,
    args: &[OsString],
    cancel: &CancellationToken,
    mut on_progress: impl FnMut(Progress),
) -> Result<(), TranscodeError> {
    let mut child = tokio::process::Command::new(ffmpeg)
        .args([
            "-hide_banner",
            "-nostdin",
            "-nostats",
            "-progress",
            "pipe:1",
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group: killing the group reaches anything ffmpeg starts, and a signal
        // to the worker's terminal group does not reach ffmpeg behind its back.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(TranscodeError::Spawn)?;
    let pgid = child.id().map(|id| id as i32).unwrap_or(0);
    let mut guard = GroupGuard { pgid, armed: true };
    let stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    // Keep ffmpeg's complaints for the error, without letting a full pipe stall it.
    let stderr_task = tokio::spawn(async move {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text).await;
        let text = String::from_utf8_lossy(&text).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" / ")
    });
    let mut lines = BufReader::new(stdout).lines();
    let mut out_time = 0.0;
    let outcome = loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                guard.kill();
                let _ = child.wait().await;
                break Err(TranscodeError::Cancelled { pgid });
            }
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    let Some((key, value)) = line.split_once('=') else { continue };
                    match key {
                        // Microseconds, despite the name `_ms` in older builds.
                        "out_time_us" | "out_time_ms" => {
                            if let Ok(us) = value.trim().parse::<i64>() {
                                out_time = us.max(0) as f64 / 1_000_000.0;
                            }
                        }
                        "progress" => on_progress(Progress {
                            out_time_seconds: out_time,
                            done: value.trim() == "end",
                        }),
                        _ => {}
                    }
                }
                Ok(None) => {
                    let status = child.wait().await.map_err(TranscodeError::Io)?;
                    break if status.success() {
                        Ok(())
                    } else {
                        Err(TranscodeError::Failed {
                            status: status.to_string(),
                            stderr: String::new(),
                        })
                    };
                }
                Err(e) => break Err(TranscodeError::Io(e)),
            }
        }
    };
    if outcome.is_ok() {
        guard.armed = false;
    } else {
        guard.kill();
    }
    let tail = stderr_task.await.unwrap_or_default();
    match outcome {
        Err(TranscodeError::Failed { status, .. }) => Err(TranscodeError::Failed {
            status,
            stderr: tail,
        }),
        other => other,
    }
}

/// Whether any process of group `pgid` is still alive.
pub fn group_alive(pgid: i32) -> bool {
    // No signal: only checks that the group exists and may be signalled.
    killpg(Pid::from_raw(pgid), None).is_ok()
}
