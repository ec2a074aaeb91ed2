//! `GET /play/{token}/{path}`: a video's HLS files behind a signed, expiring playback
//! token that covers the whole video prefix (`videos/<id>/`), so the master playlist's
//! relative paths resolve under the same token and a player plays it as is. Served
//! from the local blob store (proxied); on S3 this route answers 404 for now.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use tokio_util::io::ReaderStream;
use waymark_services::{BlobError, BlobStore};
use waymark_workflows::videos::playback::{self, PlaybackError};

use crate::problem;

pub fn routes<S>(blobs: Option<BlobStore>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/play/{token}/{*path}", get(play))
        .with_state(blobs)
}

async fn play(
    State(blobs): State<Option<BlobStore>>,
    Path((token, path)): Path<(String, String)>,
) -> Response {
    let Some(BlobStore::Local(store)) = blobs else {
        return not_found();
    };
    let video = match playback::verify(store.signer(), &token, Utc::now()) {
        Ok(video) => video,
        Err(e) => {
            return problem(
                StatusCode::FORBIDDEN,
                "forbidden",
                "Forbidden",
                &e.to_string(),
            )
        }
    };
    let key = match playback::blob_key(video, &path) {
        Ok(key) => key,
        Err(e @ PlaybackError::BadPath(_)) => {
            return problem(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                &e.to_string(),
            )
        }
        Err(e) => {
            return problem(
                StatusCode::FORBIDDEN,
                "forbidden",
                "Forbidden",
                &e.to_string(),
            )
        }
    };
    let download = match store.get(&key, None).await {
        Ok(download) => download,
        Err(BlobError::NotFound { .. }) => return not_found(),
        Err(error) => {
            tracing::error!(key, error = %error, "cannot read a video file");
            return problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                "the video file could not be read",
            );
        }
    };
    (
        [
            (
                header::CONTENT_TYPE,
                playback::content_type(&path).to_owned(),
            ),
            (header::CONTENT_LENGTH, download.len().to_string()),
        ],
        Body::from_stream(ReaderStream::new(download.body)),
    )
        .into_response()
}

fn not_found() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        "there is no such file of the video",
    )
}
