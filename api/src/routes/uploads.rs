//! `/v1/uploads`: the tus 1.0.0 resumable upload protocol (core, `creation`,
//! `creation-with-upload`, `checksum` with sha1, `termination`, `expiration`), so tus
//! clients (tus-js-client, Uppy, tuspy) upload videos unchanged, with the API key as
//! their `Authorization` header. The bytes and records are
//! `waymark_workflows::videos::uploads`'; this module speaks HTTP.
//!
//! Status codes are the protocol's: 412 without a supported `Tus-Resumable`, 415 for a
//! PATCH whose `Content-Type` is not `application/offset+octet-stream`, 409 for a wrong
//! `Upload-Offset`, 460 for a checksum mismatch, 413 past `Tus-Max-Size` or the chunk
//! limit, 410 for an expired upload, 404 for an unknown one.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, head, options, patch, post};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use uuid::Uuid;
use waymark_engine::keys::Scope;
use waymark_workflows::videos::uploads::{Upload, UploadError, UploadSettings, Uploads};

use super::{acting_tenant, param, params, Auth, Route};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::AppState;

const TUS_VERSION: &str = "1.0.0";
const EXTENSIONS: &str = "creation,creation-with-upload,termination,checksum,expiration";
const OFFSET_STREAM: &str = "application/offset+octet-stream";

pub fn routes() -> Vec<Route> {
    vec![
        Route {
            method: Method::OPTIONS,
            path: "/v1/uploads",
            summary: "tus discovery: `Tus-Version`, `Tus-Extension`, `Tus-Max-Size` and \
                      `Tus-Checksum-Algorithm` (sha1).",
            auth: Auth::Key(Scope::Operator),
            success: &[204],
            body: None,
            handler: options(discover),
        },
        Route {
            method: Method::POST,
            path: "/v1/uploads",
            summary: "tus creation (and creation-with-upload): `Upload-Length` and \
                      `Upload-Metadata` (`filename`, `filetype`); answers 201 with the \
                      upload's `Location` and `Upload-Expires`.",
            auth: Auth::Key(Scope::Operator),
            success: &[201],
            body: None,
            handler: post(create),
        },
        Route {
            method: Method::HEAD,
            path: "/v1/uploads/{id}",
            summary: "tus: the offset to resume from (`Upload-Offset`), `Upload-Length`, \
                      `Upload-Metadata`, `Upload-Expires`.",
            auth: Auth::Key(Scope::Operator),
            success: &[200],
            body: None,
            handler: head(status),
        },
        Route {
            method: Method::PATCH,
            path: "/v1/uploads/{id}",
            summary: "tus: appends the body (`application/offset+octet-stream`) at \
                      `Upload-Offset`, checked against `Upload-Checksum: sha1 <base64>` \
                      when given (460 on a mismatch, nothing stored).",
            auth: Auth::Key(Scope::Operator),
            success: &[204],
            body: None,
            handler: patch(append),
        },
        Route {
            method: Method::DELETE,
            path: "/v1/uploads/{id}",
            summary: "tus termination: deletes the upload and everything it stored.",
            auth: Auth::Key(Scope::Operator),
            success: &[204],
            body: None,
            handler: delete(terminate),
        },
    ]
}

/// The uploads of this process: its blob store and the default limits.
fn uploads(state: &AppState) -> Result<Uploads, Tus> {
    let blobs = state.blobs.clone().ok_or_else(|| {
        Tus::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no blob store is configured for uploads in this process",
        )
    })?;
    Ok(Uploads {
        store: state.engine.store.clone(),
        blobs,
        settings: UploadSettings::default(),
    })
}

/// A tus answer that is not a success: a status, a plain-text reason, and the
/// `Tus-Resumable` header every tus response carries.
#[derive(Debug)]
struct Tus {
    status: StatusCode,
    detail: String,
}

impl Tus {
    fn new(status: StatusCode, detail: impl Into<String>) -> Tus {
        Tus {
            status,
            detail: detail.into(),
        }
    }

    fn bad(detail: impl Into<String>) -> Tus {
        Tus::new(StatusCode::BAD_REQUEST, detail)
    }
}

impl IntoResponse for Tus {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (HeaderName::from_static("tus-resumable"), TUS_VERSION),
            ],
            format!("{}\n", self.detail),
        )
            .into_response();
        if self.status == StatusCode::PRECONDITION_FAILED {
            response.headers_mut().insert(
                HeaderName::from_static("tus-version"),
                HeaderValue::from_static(TUS_VERSION),
            );
        }
        response
    }
}

impl From<UploadError> for Tus {
    fn from(error: UploadError) -> Tus {
        let status = match &error {
            UploadError::NotFound(_) => StatusCode::NOT_FOUND,
            UploadError::Expired(_) => StatusCode::GONE,
            UploadError::OffsetMismatch { .. } | UploadError::Complete(_) => StatusCode::CONFLICT,
            UploadError::ChecksumMismatch { .. } => {
                StatusCode::from_u16(460).expect("460 is a valid status code")
            }
            UploadError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            UploadError::TypeNotAllowed(..) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            UploadError::Blob(_) | UploadError::Store(_) | UploadError::Io { .. } => {
                tracing::error!(error = %crate::error::chain(&error), "upload failed");
                return Tus::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the upload could not be stored; HEAD for the offset and try again",
                );
            }
        };
        Tus::new(status, error.to_string())
    }
}

impl From<ApiError> for Tus {
    fn from(error: ApiError) -> Tus {
        Tus::new(error.status, error.detail)
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Tus> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map(str::trim)
                .map_err(|_| Tus::bad(format!("{name} must be visible ASCII")))
        })
        .transpose()
}

/// Every request but OPTIONS must say it speaks tus 1.0.0.
fn check_resumable(headers: &HeaderMap) -> Result<(), Tus> {
    match header_str(headers, "tus-resumable")? {
        Some(TUS_VERSION) => Ok(()),
        Some(other) => Err(Tus::new(
            StatusCode::PRECONDITION_FAILED,
            format!("Tus-Resumable {other:?} is not supported; this server speaks {TUS_VERSION}"),
        )),
        None => Err(Tus::new(
            StatusCode::PRECONDITION_FAILED,
            format!("Tus-Resumable: {TUS_VERSION} is required"),
        )),
    }
}

fn number_header(headers: &HeaderMap, name: &str) -> Result<Option<u64>, Tus> {
    header_str(headers, name)?
        .map(|v| {
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Tus::bad(format!(
                    "{name} must be a non-negative integer, got {v:?}"
                )));
            }
            v.parse()
                .map_err(|_| Tus::bad(format!("{name} {v:?} is too large")))
        })
        .transpose()
}

/// `Upload-Metadata`: comma-separated `key base64value` pairs (the value may be
/// absent); keys unique, without spaces or commas.
fn parse_metadata(raw: Option<&str>) -> Result<BTreeMap<String, String>, Tus> {
    let mut out = BTreeMap::new();
    let Some(raw) = raw.filter(|r| !r.is_empty()) else {
        return Ok(out);
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    for pair in raw.split(',') {
        let pair = pair.trim();
        let (key, value) = match pair.split_once(' ') {
            Some((k, v)) => (k, v.trim()),
            None => (pair, ""),
        };
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Tus::bad(format!(
                "Upload-Metadata: invalid key in {pair:?} (expected `key base64value` pairs separated by commas)"
            )));
        }
        let decoded = b64.decode(value).map_err(|_| {
            Tus::bad(format!(
                "Upload-Metadata: the value of {key:?} is not base64"
            ))
        })?;
        let value = String::from_utf8(decoded).map_err(|_| {
            Tus::bad(format!(
                "Upload-Metadata: the value of {key:?} is not UTF-8"
            ))
        })?;
        if out.insert(key.to_owned(), value).is_some() {
            return Err(Tus::bad(format!(
                "Upload-Metadata: key {key:?} appears twice"
            )));
        }
    }
    Ok(out)
}

fn encode_metadata(metadata: &BTreeMap<String, String>) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    metadata
        .iter()
        .map(|(k, v)| format!("{k} {}", b64.encode(v)))
        .collect::<Vec<_>>()
        .join(",")
}

/// `Upload-Checksum: sha1 <base64 digest>`; other algorithms are refused with 400 as
/// the checksum extension says.
fn parse_checksum(headers: &HeaderMap) -> Result<Option<Vec<u8>>, Tus> {
    let Some(raw) = header_str(headers, "upload-checksum")? else {
        return Ok(None);
    };
    let (algorithm, digest) = raw
        .split_once(' ')
        .ok_or_else(|| Tus::bad("Upload-Checksum must be `<algorithm> <base64 digest>`"))?;
    if !algorithm.eq_ignore_ascii_case("sha1") {
        return Err(Tus::bad(format!(
            "Upload-Checksum algorithm {algorithm:?} is not supported (Tus-Checksum-Algorithm: sha1)"
        )));
    }
    let digest = base64::engine::general_purpose::STANDARD
        .decode(digest.trim())
        .ok()
        .filter(|d| d.len() == 20)
        .ok_or_else(|| Tus::bad("Upload-Checksum: the sha1 digest must be 20 bytes, base64"))?;
    Ok(Some(digest))
}

fn http_date(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// The headers of an upload's state: offset, length, and expiry while unfinished.
fn state_headers(upload: &Upload) -> Vec<(HeaderName, String)> {
    let mut out = vec![
        (HeaderName::from_static("tus-resumable"), TUS_VERSION.into()),
        (
            HeaderName::from_static("upload-offset"),
            upload.offset.to_string(),
        ),
    ];
    if !upload.complete {
        out.push((
            HeaderName::from_static("upload-expires"),
            http_date(upload.expires_at),
        ));
    }
    out
}

fn respond(status: StatusCode, headers: Vec<(HeaderName, String)>) -> Response {
    let mut response = status.into_response();
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

fn upload_id(raw: &str) -> Result<Uuid, Tus> {
    raw.parse()
        .map_err(|_| Tus::new(StatusCode::NOT_FOUND, format!("upload {raw:?} not found")))
}

/// The caller's upload (any tenant's for an admin); 404 otherwise, 410 once expired.
async fn load(
    state: &AppState,
    uploads: &Uploads,
    caller: &Caller,
    raw: &str,
) -> Result<Upload, Tus> {
    let id = upload_id(raw)?;
    let tenant = (!caller.is_admin()).then_some(caller.key.tenant.as_str());
    let upload = uploads
        .get(tenant, id)
        .await?
        .ok_or(UploadError::NotFound(id))?;
    if upload.expired(state.engine.clock.now()) {
        return Err(UploadError::Expired(id).into());
    }
    Ok(upload)
}

/// Reads a body of at most the chunk limit (413 beyond it).
async fn read_body(body: Body, limit: u64) -> Result<Vec<u8>, Tus> {
    use futures_util::StreamExt as _;
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Tus::bad(format!("the body could not be read: {e}")))?;
        if (out.len() + chunk.len()) as u64 > limit {
            return Err(Tus::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a request body may carry at most {limit} bytes: send smaller chunks"),
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

async fn discover() -> Response {
    let settings = UploadSettings::default();
    respond(
        StatusCode::NO_CONTENT,
        vec![
            (HeaderName::from_static("tus-resumable"), TUS_VERSION.into()),
            (HeaderName::from_static("tus-version"), TUS_VERSION.into()),
            (HeaderName::from_static("tus-extension"), EXTENSIONS.into()),
            (
                HeaderName::from_static("tus-max-size"),
                settings.max_size.to_string(),
            ),
            (
                HeaderName::from_static("tus-checksum-algorithm"),
                "sha1".into(),
            ),
        ],
    )
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Tus> {
    check_resumable(&headers)?;
    let query = params(query);
    let tenant = acting_tenant(&caller, param(&query, "tenant"))?;
    let uploads = uploads(&state)?;
    if header_str(&headers, "upload-defer-length")?.is_some() {
        return Err(Tus::bad(
            "Upload-Defer-Length is not supported (creation-defer-length): send Upload-Length",
        ));
    }
    let length = number_header(&headers, "upload-length")?
        .ok_or_else(|| Tus::bad("Upload-Length is required"))?;
    let metadata = parse_metadata(header_str(&headers, "upload-metadata")?)?;
    let content_type = header_str(&headers, "content-type")?;
    let checksum = parse_checksum(&headers)?;
    // creation-with-upload: the body, if any, is the first chunk.
    let first = read_body(body, uploads.settings.max_chunk).await?;
    if !first.is_empty() && content_type != Some(OFFSET_STREAM) {
        return Err(Tus::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("a body sent with the creation must be {OFFSET_STREAM}"),
        ));
    }
    let now = state.engine.clock.now();
    let mut upload = uploads.create(&tenant, length, metadata, now).await?;
    if !first.is_empty() {
        upload = uploads
            .append_checked(&upload, 0, &first, checksum.as_deref(), now)
            .await?;
    }
    let mut out = state_headers(&upload);
    out.push((header::LOCATION, format!("/v1/uploads/{}", upload.id)));
    Ok(respond(StatusCode::CREATED, out))
}

async fn status(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Tus> {
    check_resumable(&headers)?;
    let uploads = uploads(&state)?;
    let upload = load(&state, &uploads, &caller, &id).await?;
    let mut out = state_headers(&upload);
    out.push((
        HeaderName::from_static("upload-length"),
        upload.length.to_string(),
    ));
    if !upload.metadata.is_empty() {
        out.push((
            HeaderName::from_static("upload-metadata"),
            encode_metadata(&upload.metadata),
        ));
    }
    out.push((header::CACHE_CONTROL, "no-store".into()));
    Ok(respond(StatusCode::OK, out))
}

async fn append(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Tus> {
    check_resumable(&headers)?;
    if header_str(&headers, "content-type")? != Some(OFFSET_STREAM) {
        return Err(Tus::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be {OFFSET_STREAM}"),
        ));
    }
    let offset = number_header(&headers, "upload-offset")?
        .ok_or_else(|| Tus::bad("Upload-Offset is required"))?;
    let checksum = parse_checksum(&headers)?;
    let uploads = uploads(&state)?;
    let upload = load(&state, &uploads, &caller, &id).await?;
    if offset != upload.offset {
        // Refused before reading the body, which belongs elsewhere.
        return Err(UploadError::OffsetMismatch {
            expected: upload.offset,
            got: offset,
        }
        .into());
    }
    let bytes = read_body(body, uploads.settings.max_chunk).await?;
    let now = state.engine.clock.now();
    let upload = uploads
        .append_checked(&upload, offset, &bytes, checksum.as_deref(), now)
        .await?;
    Ok(respond(StatusCode::NO_CONTENT, state_headers(&upload)))
}

async fn terminate(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Tus> {
    check_resumable(&headers)?;
    let uploads = uploads(&state)?;
    let id = upload_id(&id)?;
    let tenant = (!caller.is_admin()).then_some(caller.key.tenant.as_str());
    let upload = uploads
        .get(tenant, id)
        .await?
        .ok_or(UploadError::NotFound(id))?;
    uploads.delete(&upload).await?;
    Ok(respond(
        StatusCode::NO_CONTENT,
        vec![(HeaderName::from_static("tus-resumable"), TUS_VERSION.into())],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_and_refuses_what_is_malformed() {
        let parsed = parse_metadata(Some(
            "filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential",
        ))
        .unwrap();
        assert_eq!(parsed["filename"], "world_domination_plan.pdf");
        assert_eq!(parsed["is_confidential"], "");
        assert_eq!(
            parse_metadata(Some(&encode_metadata(&parsed))).unwrap(),
            parsed
        );
        for bad in ["filename !!!", "a YQ==,a YQ==", ",a YQ==", "a b c"] {
            assert!(parse_metadata(Some(bad)).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn http_dates_are_imf_fixdate() {
        let t = DateTime::parse_from_rfc3339("2026-12-01T10:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(http_date(t), "Tue, 01 Dec 2026 10:04:05 GMT");
    }
}
