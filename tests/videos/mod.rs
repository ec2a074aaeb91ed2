//! Video ingest (issue 16). So far the tus 1.0 uploads at `/v1/uploads`: the
//! protocol's answers to wrong requests, a real tus client (tuspy) uploading in chunks
//! with an interruption and a refused checksum, on the local store and the S3 test
//! server, and abandoned uploads expiring under a manual clock.

mod tus;

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
