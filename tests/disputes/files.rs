//! Evidence files: uploaded raw, checked by content and size, kept in the blob store
//! under the tenant's prefix with their SHA-256, listed on the dispute, named by the
//! evidence, and linked in the submission packet with links the network can open
//! (a local store's signed `/blobs` links, or S3's presigned ones).

use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Digest;
use uuid::Uuid;
use waymark_workflows::disputes::files::{MAX_FILE, MAX_PER_CYCLE};

use super::{start, start_with, Disputes, Setup, DAY, LOCAL_LINKS};
use crate::support::app::test_s3;
use crate::support::{on_both_backends, TestDb};

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01";
const PDF: &[u8] = b"%PDF-1.4\n1 0 obj << >> endobj\n%%EOF\n";
const JPEG: &[u8] = b"\xff\xd8\xff\xe0\0\x10JFIF\0\x01";

impl Disputes {
    /// Uploads `bytes` as an evidence file of dispute `id` with `content_type`, as `key`.
    async fn upload_as(
        &self,
        key: &str,
        id: &str,
        content_type: Option<&str>,
        bytes: Vec<u8>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .api
            .http
            .post(format!("{}/v1/disputes/{id}/evidence/files", self.api.base))
            .bearer_auth(key)
            .body(bytes);
        if let Some(t) = content_type {
            request = request.header("content-type", t);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn upload(&self, id: &str, content_type: &str, bytes: &[u8]) -> (StatusCode, Value) {
        self.upload_as(&self.operator, id, Some(content_type), bytes.to_vec())
            .await
    }

    /// Submits evidence naming `files`.
    async fn evidence_with(&self, id: &str, files: Value) -> (StatusCode, Value) {
        self.api
            .call(
                reqwest::Method::POST,
                &format!("/v1/disputes/{id}/evidence"),
                Some(&self.operator),
                Some(json!({"product_description": "A red bicycle", "file_ids": files})),
            )
            .await
    }

    /// The packet the simulator accepted for `id`'s first submission.
    fn submitted_packet(&self, id: &str) -> Value {
        let key = format!("dispute:{id}:cycle:1");
        self.simulator
            .as_ref()
            .unwrap()
            .accepted()
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, packet)| packet)
            .unwrap_or_else(|| panic!("no submission {key}"))
    }

    /// Downloads a packet's link as the network would (a local store's link at the
    /// app's own address, see [`LOCAL_LINKS`]).
    async fn download(&self, url: &str) -> Vec<u8> {
        let url = url.replace(LOCAL_LINKS, &self.api.base);
        let response = reqwest::get(&url).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{url}");
        response.bytes().await.unwrap().to_vec()
    }
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Uploads a PNG and a text file, submits evidence naming both, and checks the
/// packet's links download exactly those bytes.
async fn upload_submit_and_download(d: &Disputes, id: &str) {
    let secret = d.secret("acme", None).await;
    let run = d.open(&secret, id).await;
    d.run_in(run, "awaiting_evidence").await;
    let text = "Order 42 shipped on 2026-11-02, tracking 1Z999.".as_bytes();
    let (status, png) = d.upload(id, "image/png", PNG).await;
    assert_eq!(status, StatusCode::CREATED, "{png}");
    assert_eq!(png["sha256"], sha256(PNG));
    assert_eq!(png["size"], PNG.len());
    assert_eq!(png["cycle"], 1);
    let (status, txt) = d.upload(id, "text/plain; charset=utf-8", text).await;
    assert_eq!(status, StatusCode::CREATED, "{txt}");
    assert_eq!(txt["content_type"], "text/plain");

    // Listed on the dispute, and kept under the tenant's prefix with their hash.
    let view = d.dispute(id).await;
    let listed: Vec<&Value> = view["evidence_files"].as_array().unwrap().iter().collect();
    assert_eq!(listed.len(), 2, "{view}");
    assert_eq!(listed[0]["id"], png["id"]);
    assert_eq!(listed[1]["sha256"], sha256(text));
    let stored = d.blobs.list("tenants/").await.unwrap();
    let png_id = png["id"].as_str().unwrap();
    let blob = stored
        .iter()
        .find(|b| b.key.ends_with(png_id))
        .unwrap_or_else(|| panic!("no blob for {png_id} in {stored:?}"));
    assert!(
        blob.key.contains(&format!("/acme/disputes/{id}/")),
        "{}",
        blob.key
    );
    assert_eq!(blob.size, PNG.len() as u64);

    let (status, answer) = d.evidence_with(id, json!([png["id"], txt["id"]])).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    d.run_in(run, "awaiting_decision").await;
    let packet = d.submitted_packet(id);
    let files = packet["files"].as_array().unwrap();
    assert_eq!(files.len(), 2, "{packet}");
    for (file, bytes) in files.iter().zip([PNG, text]) {
        assert_eq!(file["sha256"], sha256(bytes));
        let url = file["url"].as_str().unwrap();
        assert_eq!(d.download(url).await, bytes, "{url}");
    }
}

async fn evidence_files_are_stored_with_their_hash_and_reach_the_network_as_signed_links(
    db: TestDb,
) {
    let d = start(db).await;
    upload_submit_and_download(&d, "dp_files").await;
    d.api.stop().await;
}

async fn evidence_files_in_s3_reach_the_network_as_presigned_links(db: TestDb) {
    let d = start_with(
        db,
        Setup {
            blobs: Some(test_s3().await),
            ..Setup::default()
        },
    )
    .await;
    // Another test's dispute of the same id may share the bucket: a fresh id.
    let id = format!("dp_s3_{}", Uuid::now_v7().simple());
    upload_submit_and_download(&d, &id).await;
    d.api.stop().await;
}

async fn evidence_file_uploads_and_references_refuse_wrong_inputs(db: TestDb) {
    let d = start(db).await;
    let secret = d.secret("acme", None).await;
    let run = d.open(&secret, "dp_w").await;
    d.open(&secret, "dp_other").await;
    d.run_in(run, "awaiting_evidence").await;
    let (_, globex) = d.api.key("globex", &["operator"]).await;
    let (_, reader) = d.api.key("acme", &["reader"]).await;
    let mut with_nul = b"plain words".to_vec();
    with_nul.push(0);
    // (what, key, dispute, Content-Type, body, status, words the answer has)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        Option<&'a str>,
        Vec<u8>,
        StatusCode,
        &'a str,
    );
    let op = d.operator.as_str();
    let cases: Vec<Case<'_>> = vec![
        (
            "PNG sent as a PDF",
            op,
            "dp_w",
            Some("application/pdf"),
            PNG.to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the content is image/png, not the application/pdf",
        ),
        (
            "PDF sent as a JPEG",
            op,
            "dp_w",
            Some("image/jpeg"),
            PDF.to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not the image/jpeg",
        ),
        (
            "JPEG sent as text",
            op,
            "dp_w",
            Some("text/plain"),
            JPEG.to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the content is image/jpeg",
        ),
        (
            "binary sent as a PDF",
            op,
            "dp_w",
            Some("application/pdf"),
            vec![0, 1, 2, 3],
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the content is not application/pdf",
        ),
        (
            "text with a NUL",
            op,
            "dp_w",
            Some("text/plain"),
            with_nul,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the content is not text/plain",
        ),
        (
            "text that is not UTF-8",
            op,
            "dp_w",
            Some("text/plain"),
            b"caf\xe9".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the content is not text/plain",
        ),
        (
            "a type evidence cannot be",
            op,
            "dp_w",
            Some("application/zip"),
            PDF.to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "is not an evidence type",
        ),
        (
            "no Content-Type",
            op,
            "dp_w",
            None,
            PDF.to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "is not an evidence type",
        ),
        (
            "an empty file",
            op,
            "dp_w",
            Some("text/plain"),
            Vec::new(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "the file is empty",
        ),
        (
            "one byte over 5 MiB",
            op,
            "dp_w",
            Some("text/plain"),
            vec![b'a'; MAX_FILE + 1],
            StatusCode::PAYLOAD_TOO_LARGE,
            "at most 5242880 bytes",
        ),
        (
            "another tenant's dispute",
            &globex,
            "dp_w",
            Some("application/pdf"),
            PDF.to_vec(),
            StatusCode::NOT_FOUND,
            "not found",
        ),
        (
            "no such dispute",
            op,
            "dp_none",
            Some("application/pdf"),
            PDF.to_vec(),
            StatusCode::NOT_FOUND,
            "not found",
        ),
        (
            "a reader key",
            &reader,
            "dp_w",
            Some("application/pdf"),
            PDF.to_vec(),
            StatusCode::FORBIDDEN,
            "",
        ),
    ];
    for (what, key, id, content_type, body, status, words) in cases {
        let (got, answer) = d.upload_as(key, id, content_type, body).await;
        assert_eq!(got, status, "{what}: {answer}");
        let detail = answer["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(words), "{what}: {detail:?} lacks {words:?}");
    }
    assert_eq!(d.dispute("dp_w").await["evidence_files"], json!([]));

    // The cycle's total: two files of 5 MiB fill it, one more byte is refused.
    let five = vec![b'x'; MAX_FILE];
    for _ in 0..2 {
        let (status, answer) = d.upload("dp_w", "text/plain", &five).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
    }
    let (status, answer) = d.upload("dp_w", "text/plain", b"y").await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert!(
        answer["detail"].as_str().unwrap().contains(&format!(
            "would total {} bytes, over the limit of {MAX_PER_CYCLE} bytes (10 MiB) per cycle",
            MAX_PER_CYCLE + 1
        )),
        "{answer}"
    );
    assert_eq!(
        d.dispute("dp_w").await["evidence_files"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // The refused file left nothing behind in the blob store.
    let stored = d.blobs.list("tenants/").await.unwrap();
    assert_eq!(stored.len(), 2, "{stored:?}");

    // Evidence may name only this dispute's files.
    let (_, other) = d.upload("dp_other", "application/pdf", PDF).await;
    let unknown = Uuid::now_v7().to_string();
    for (what, files, words) in [
        ("an unknown file id", json!([unknown]), unknown.as_str()),
        (
            "another dispute's file",
            json!([other["id"]]),
            "is not an evidence file of dispute \"dp_w\"",
        ),
        (
            "not an id",
            json!(["passport.pdf"]),
            "expected ids of uploaded evidence files",
        ),
    ] {
        let (status, answer) = d.evidence_with("dp_w", files).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {answer}");
        assert!(
            answer["detail"].as_str().unwrap().contains(words),
            "{what}: {answer}"
        );
    }

    // After the internal deadline (20 days less the 24 h margin) uploads are refused.
    d.clock.advance(19 * DAY);
    let (status, answer) = d.upload("dp_other", "application/pdf", PDF).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(
        answer["detail"]
            .as_str()
            .unwrap()
            .contains("the evidence deadline passed at"),
        "{answer}"
    );
    d.api.stop().await;
}

on_both_backends!(
    evidence_files_are_stored_with_their_hash_and_reach_the_network_as_signed_links,
    evidence_files_in_s3_reach_the_network_as_presigned_links,
    evidence_file_uploads_and_references_refuse_wrong_inputs,
);
