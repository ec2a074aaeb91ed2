//! `GET /blobs/{key}?expires=…&signature=…`: serves the local blob store's signed
//! download URLs (S3 serves its own presigned ones). No API key: the signature is the
//! permission, and it ends at `expires`.
//!
//! Supports one `Range` (206 with `Content-Range`, 416 when outside the blob). A full
//! download is checked against the blob's SHA-256 as it streams; a mismatch aborts the
//! response instead of completing it with bad bytes.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::Utc;
use futures_util::TryStreamExt;
use serde::Deserialize;
use tokio_util::io::ReaderStream;
use waymark_services::blob::SignatureError;
use waymark_services::{BlobError, BlobStore, ByteRange};

use crate::problem;

/// The route, with the blob store it serves (`None`: every link is 404).
pub fn routes<S>(blobs: Option<BlobStore>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/blobs/{*key}", get(download))
        .with_state(blobs)
}

#[derive(Debug, Deserialize)]
struct Signed {
    expires: Option<i64>,
    signature: Option<String>,
}

async fn download(
    State(blobs): State<Option<BlobStore>>,
    Path(key): Path<String>,
    Query(signed): Query<Signed>,
    headers: HeaderMap,
) -> Response {
    // S3 links point at S3; only the local store's links land here.
    let Some(BlobStore::Local(store)) = blobs else {
        return not_found();
    };
    let (Some(expires), Some(signature)) = (signed.expires, signed.signature) else {
        return forbidden("the link is not signed (expires and signature are required)");
    };
    match store.verify(&key, expires, &signature, Utc::now()) {
        Ok(()) => {}
        Err(SignatureError::Expired) => return forbidden("the link has expired"),
        Err(SignatureError::Invalid) => return forbidden("the link's signature is not valid"),
    }
    // An unparseable or multi-range header is ignored, as RFC 9110 allows: full body.
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(ByteRange::parse_http);
    let download = match store.get(&key, range).await {
        Ok(download) => download,
        Err(BlobError::NotFound { .. }) => return not_found(),
        Err(BlobError::InvalidRange { size, .. }) => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{size}"))],
            )
                .into_response();
        }
        Err(error) => {
            tracing::error!(key, error = %error, cause = ?std::error::Error::source(&error), "cannot read blob");
            return problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
                "the blob could not be read",
            );
        }
    };
    let mut response = Response::builder()
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, download.len())
        .header(
            header::CONTENT_TYPE,
            download
                .meta
                .content_type
                .as_deref()
                .and_then(|t| HeaderValue::from_str(t).ok())
                .unwrap_or(HeaderValue::from_static("application/octet-stream")),
        );
    if let Some(etag) = &download.meta.etag {
        response = response.header(header::ETAG, etag);
    }
    response = match download.range {
        Some((first, last)) => response.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {first}-{last}/{}", download.meta.size),
        ),
        None => response.status(StatusCode::OK),
    };
    // A body error (checksum mismatch, I/O) aborts the response mid-stream, which
    // the client sees as a failed download; the log says why.
    let stream = ReaderStream::new(download.body).inspect_err(move |error| {
        tracing::error!(key, error = %error, "blob download aborted");
    });
    response
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| not_found())
}

fn not_found() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        "there is no blob at this link",
    )
}

fn forbidden(detail: &str) -> Response {
    problem(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
}
