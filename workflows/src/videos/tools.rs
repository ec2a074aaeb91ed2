//! Finding ffmpeg and ffprobe: `WAYMARK_FFMPEG` / `WAYMARK_FFPROBE` when set, otherwise
//! the first executable of that name on `PATH`. A process that offers the `transcode`
//! capability looks for them at start and refuses to start without them, so a worker
//! never claims a rendition it cannot make.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The capability a worker must offer to claim rendition runs.
pub const TRANSCODE: &str = "transcode";

/// Where ffmpeg and ffprobe are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    pub ffmpeg: PathBuf,
    pub ffprobe: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ToolsError {
    #[error(
        "{name} was not found ({how}). A process offering the `transcode` capability needs \
         ffmpeg and ffprobe: install them (Debian/Ubuntu: `apt-get install ffmpeg`; or run \
         scripts/ensure-ffmpeg.sh), or point WAYMARK_FFMPEG and WAYMARK_FFPROBE at them, or \
         start this process without `transcode` in WAYMARK_CAPABILITIES / --capabilities"
    )]
    Missing { name: &'static str, how: String },
}

impl Tools {
    /// Looks in the process's environment.
    pub fn locate() -> Result<Tools, ToolsError> {
        Tools::locate_in(
            std::env::var_os("WAYMARK_FFMPEG"),
            std::env::var_os("WAYMARK_FFPROBE"),
            std::env::var_os("PATH"),
        )
    }

    /// Looks with explicit settings, as [`Tools::locate`] does with the environment's.
    pub fn locate_in(
        ffmpeg: Option<OsString>,
        ffprobe: Option<OsString>,
        path: Option<OsString>,
    ) -> Result<Tools, ToolsError> {
        Ok(Tools {
            ffmpeg: find("ffmpeg", "WAYMARK_FFMPEG", ffmpeg, path.as_ref())?,
            ffprobe: find("ffprobe", "WAYMARK_FFPROBE", ffprobe, path.as_ref())?,
        })
    }
}

fn find(
    name: &'static str,
    variable: &str,
    explicit: Option<OsString>,
    path: Option<&OsString>,
) -> Result<PathBuf, ToolsError> {
    if let Some(explicit) = explicit.filter(|e| !e.is_empty()) {
        let candidate = PathBuf::from(&explicit);
        return if is_executable(&candidate) {
            Ok(candidate)
        } else {
            Err(ToolsError::Missing {
                name,
                how: format!(
                    "{variable}={} is not an executable file",
                    candidate.display()
                ),
            })
        };
    }
    let found = path
        .map(|p| std::env::split_paths(p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate));
    found.ok_or_else(|| ToolsError::Missing {
        name,
        how: format!("not on PATH and {variable} is not set"),
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_come_from_the_variables_or_path_and_their_absence_says_how_to_install() {
        let dir = std::env::temp_dir().join(format!("waymark-tools-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["ffmpeg", "ffprobe"] {
            let file = dir.join(name);
            std::fs::write(&file, "#!/bin/sh\n").unwrap();
            let mut perms = std::fs::metadata(&file).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
            std::fs::set_permissions(&file, perms).unwrap();
        }
        let on_path = Tools::locate_in(None, None, Some(dir.clone().into_os_string())).unwrap();
        assert_eq!(on_path.ffmpeg, dir.join("ffmpeg"));
        let explicit = Tools::locate_in(
            Some(dir.join("ffprobe").into_os_string()),
            Some(dir.join("ffprobe").into_os_string()),
            None,
        )
        .unwrap();
        assert_eq!(explicit.ffmpeg, dir.join("ffprobe"));
        let missing = Tools::locate_in(None, None, Some("/nonexistent".into()))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("ffmpeg was not found"), "{missing}");
        assert!(missing.contains("apt-get install ffmpeg"), "{missing}");
        let wrong = Tools::locate_in(Some("/nonexistent/ffmpeg".into()), None, None)
            .unwrap_err()
            .to_string();
        assert!(
            wrong.contains("WAYMARK_FFMPEG=/nonexistent/ffmpeg"),
            "{wrong}"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
