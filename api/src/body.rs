//! Reading request bodies after the 401/403/404 checks: over the size limit is 413,
//! not JSON (or not declared as JSON) is 400, JSON of the wrong shape is 422 naming the
//! field.

use axum::body::Body;
use axum::http::{header, HeaderMap};
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ApiResult};

/// Reads at most `limit` bytes.
pub async fn read(body: Body, limit: usize) -> ApiResult<axum::body::Bytes> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::too_large(limit))
}

/// Parses a JSON body into `T`. An empty body is parsed as `{}` when `empty_is_object`.
pub fn json<T: DeserializeOwned>(
    headers: &HeaderMap,
    bytes: &[u8],
    empty_is_object: bool,
) -> ApiResult<T> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) && empty_is_object {
        b"{}"
    } else {
        if !is_json(headers) {
            return Err(ApiError::bad_request(
                "expected Content-Type: application/json",
            ));
        }
        bytes
    };
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    typed(value)
}

/// Checks a JSON value against `T`, naming the path of the first field that does not fit.
pub fn typed<T: DeserializeOwned>(value: serde_json::Value) -> ApiResult<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::invalid(inner.to_string())
        } else {
            ApiError::invalid(format!("{path}: {inner}"))
        }
    })
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            let mime = v
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            mime == "application/json" || mime.ends_with("+json")
        })
        .unwrap_or(false)
}
