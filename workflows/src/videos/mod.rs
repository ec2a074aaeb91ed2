//! Video ingest and transcode (issue 16). So far: resumable uploads over tus 1.0
//! ([`uploads`]), which the API serves at `/v1/uploads`.
//!
//! # Layout
//! - [`uploads`]: upload records (`video_uploads`) and their bytes: a staging file on
//!   the local store, an S3 multipart upload on S3; expiry of abandoned uploads.
//! - [`probe`]: ffprobe's view of an upload (clear errors for what is not a video) and
//!   the rendition ladder it allows (never above the source, aspect ratio kept).
//! - [`tools`]: finding ffmpeg and ffprobe; the `transcode` capability needs them.
//! - [`transcode`]: ffmpeg in its own process group, killed with the attempt; progress.
//! - [`hls`]: packaging a rendition attempt as HLS under its own prefix; the master
//!   playlist and manifest naming the committed attempts; deleting superseded ones.
//! - `migrations/`: the `videos` schema.

pub mod hls;
pub mod playback;
pub mod probe;
pub mod tools;
pub mod transcode;
pub mod uploads;

use waymark_engine::store::{Migration, Schema};

/// The tables of [`SCHEMA`] that hold a tenant's rows (a `tenant` column).
pub const TENANT_TABLES: &[&str] = &["video_uploads"];

pub const SCHEMA: Schema = Schema {
    name: "videos",
    postgres: &[Migration::new(
        1,
        "uploads",
        include_str!("migrations/postgres/0001_uploads.sql"),
    )],
    sqlite: &[Migration::new(
        1,
        "uploads",
        include_str!("migrations/sqlite/0001_uploads.sql"),
    )],
};
