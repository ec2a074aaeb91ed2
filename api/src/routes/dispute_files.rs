//! `POST /v1/disputes/{id}/evidence/files`: one evidence file, the raw bytes as the
//! body with its `Content-Type`. The type is checked against the content (see
//! `waymark_workflows::disputes::files::sniff`), the size against 5 MiB per file and
//! 10 MiB per cycle; the file goes to the blob store under the tenant's prefix, then
//! its row (with the SHA-256 the store computed) commits under the dispute's lock, so
//! two uploads cannot both pass the cycle's limit. Evidence then names it by id.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Json;
use serde_json::json;
use uuid::Uuid;
use waymark_engine::keys::Scope;
use waymark_services::PutOptions;
use waymark_workflows::disputes::files::{self, EvidenceFile, MAX_FILE, MAX_PER_CYCLE, TYPES};
use waymark_workflows::disputes::record;

use super::disputes::{evidence_open, load};
use super::{Auth, Route};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::AppState;

pub fn routes() -> Vec<Route> {
    vec![Route {
        method: Method::POST,
        path: "/v1/disputes/{id}/evidence/files",
        summary: "Uploads one evidence file for the dispute's current cycle: the body is \
                  the file, its `Content-Type` one of application/pdf, image/png, \
                  image/jpeg or text/plain, and the content must be of that type (415 \
                  otherwise). At most 5 MiB per file and 10 MiB per cycle (413); 409 after \
                  the evidence deadline. Answers the file's id and SHA-256, which \
                  `POST /v1/disputes/{id}/evidence` names in `file_ids`.",
        auth: Auth::Key(Scope::Operator),
        success: &[201],
        body: None,
        handler: post(upload),
    }]
}

fn unsupported(detail: String) -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported-media-type",
        "Unsupported media type",
        detail,
    )
}

fn too_large(detail: String) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload-too-large",
        "Payload too large",
        detail,
    )
}

async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    request_body: Body,
) -> ApiResult<Response> {
    let d = load(&state, &caller, &id, query).await?;
    let declared = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let Some(declared) = TYPES.into_iter().find(|t| *t == declared) else {
        return Err(unsupported(format!(
            "Content-Type {declared:?} is not an evidence type; expected one of {}",
            TYPES.join(", ")
        )));
    };
    let bytes = axum::body::to_bytes(request_body, MAX_FILE)
        .await
        .map_err(|_| {
            too_large(format!(
                "an evidence file may be at most {MAX_FILE} bytes (5 MiB)"
            ))
        })?;
    if bytes.is_empty() {
        return Err(ApiError::invalid("the file is empty"));
    }
    match files::sniff(&bytes) {
        Some(found) if found == declared => {}
        Some(found) => {
            return Err(unsupported(format!(
                "the content is {found}, not the {declared} its Content-Type says"
            )))
        }
        None => {
            return Err(unsupported(format!(
                "the content is not {declared} (nor any evidence type: PDF, PNG, JPEG \
                 or UTF-8 text without NUL)"
            )))
        }
    }
    evidence_open(&state, &d).await?;
    let blobs = state
        .blobs
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("this server has no blob store for evidence"))?;
    let store = &state.engine.store;
    let installation = waymark_workflows::tenants::record::installation_id(store)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let file_id = Uuid::now_v7();
    let key = files::blob_key(&installation, &d.tenant, &d.dispute_id, file_id);
    let size = bytes.len() as i64;
    let meta = blobs
        .put_bytes(&key, bytes, PutOptions::content_type(declared))
        .await
        .map_err(|e| match e.is_retryable() {
            true => {
                tracing::warn!(error = %e, "evidence upload to the blob store failed");
                ApiError::unavailable("the blob store is unavailable; retry the upload")
            }
            false => ApiError::internal(&e),
        })?;
    let sha256 = match meta.sha256 {
        Some(sha) => sha,
        None => {
            use sha2::Digest;
            // Not expected (both stores hash a one-part put), but the row needs one.
            let body = blobs
                .get_bytes(&key, None)
                .await
                .map_err(|e| ApiError::internal(&e))?;
            hex::encode(sha2::Sha256::digest(&body))
        }
    };
    let file = EvidenceFile {
        id: file_id,
        dispute_id: d.dispute_id.clone(),
        cycle: d.cycle,
        content_type: declared.to_owned(),
        size,
        sha256,
        blob_key: key.clone(),
        created_at: state.engine.clock.now(),
    };
    let mut tx = store.begin().await?;
    let locked = record::get_locked(&mut tx, &d.tenant, &d.dispute_id).await?;
    let refusal = match locked {
        Some(now) if now.cycle != d.cycle => Some(ApiError::conflict(format!(
            "dispute {id:?} moved to cycle {} during the upload; upload again",
            now.cycle
        ))),
        Some(_) => {
            let total = files::cycle_total(&mut tx, &d.tenant, &d.dispute_id, d.cycle).await?;
            (total + size > MAX_PER_CYCLE).then(|| {
                too_large(format!(
                    "the files of cycle {} would total {} bytes, over the limit of \
                     {MAX_PER_CYCLE} bytes (10 MiB) per cycle ({total} bytes already uploaded)",
                    d.cycle,
                    total + size
                ))
            })
        }
        None => Some(ApiError::not_found(format!("dispute {id:?} not found"))),
    };
    if let Some(refusal) = refusal {
        drop(tx);
        if let Err(e) = blobs.delete(&key).await {
            tracing::warn!(key, error = %e, "cannot delete a refused evidence file");
        }
        return Err(refusal);
    }
    files::insert(&mut tx, &d.tenant, &file).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(json!(file))).into_response())
}
