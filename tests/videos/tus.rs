//! tus 1.0 at `/v1/uploads`: a table of wrong requests and their protocol status codes,
//! a real client (tuspy) uploading in chunks with a cut-off PATCH and a refused
//! checksum, on both blob stores, and abandoned uploads expired by the sweep.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use rand::RngCore;
use reqwest::StatusCode;
use serde_json::Value;
use sha1::Digest;
use uuid::Uuid;
use waymark_engine::Clock;
use waymark_services::{BlobStore, S3Config, S3Store};
use waymark_workflows::videos::uploads::{data_key, UploadSettings, Uploads};

use super::{header, tus_call};
use crate::support::app::{test_s3_config, TestApp};
use crate::support::services::service_env;
use crate::support::{manual_clock, on_both_backends, TestDb};

const TUS: (&str, &str) = ("tus-resumable", "1.0.0");
const OCTETS: (&str, &str) = ("content-type", "application/offset+octet-stream");

type Headers<'a> = Vec<(&'a str, &'a str)>;
/// A wrong creation: what, key, headers, status, what the answer says.
type CreateCase<'a> = (&'a str, Option<&'a str>, Headers<'a>, StatusCode, &'a str);
/// A wrong PATCH: what, path, key, headers, body, status, what the answer says.
type PatchCase<'a> = (
    &'a str,
    String,
    Option<&'a str>,
    Headers<'a>,
    Vec<u8>,
    StatusCode,
    &'a str,
);

fn sha1_header(bytes: &[u8]) -> String {
    format!(
        "sha1 {}",
        base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(bytes))
    )
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// The S3 test server's bucket with S3's smallest part size, so a few MiB make parts.
async fn test_s3() -> BlobStore {
    let config = S3Config {
        part_size: 5 << 20,
        ..test_s3_config(service_env("WAYMARK_TEST_S3_BUCKET"))
    };
    BlobStore::S3(S3Store::connect(config).await.expect("s3 client"))
}

fn uploads(app: &TestApp, blobs: BlobStore) -> Uploads {
    Uploads {
        store: app.store().clone(),
        blobs,
        settings: UploadSettings::default(),
    }
}

/// Creates an upload of `length` bytes; its path.
async fn create(app: &TestApp, key: &str, length: u64) -> String {
    let length = length.to_string();
    let metadata = format!("filename {},filetype {}", b64("clip.mp4"), b64("video/mp4"));
    let (status, headers, text) = tus_call(
        app,
        "POST",
        "/v1/uploads",
        Some(key),
        &[
            TUS,
            ("upload-length", &length),
            ("upload-metadata", &metadata),
        ],
        vec![],
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    header(&headers, "location").expect("a Location").to_owned()
}

async fn tus_refuses_wrong_requests_with_the_protocol_status(db: TestDb) {
    let app = TestApp::on(db).serving_local_blobs().spawn().await;
    let (_, key) = app.key("acme", &["operator"]).await;
    let (_, other) = app.key("globex", &["operator"]).await;

    // Discovery.
    let (status, headers, _) =
        tus_call(&app, "OPTIONS", "/v1/uploads", Some(&key), &[], vec![]).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(header(&headers, "tus-version"), Some("1.0.0"));
    assert_eq!(header(&headers, "tus-checksum-algorithm"), Some("sha1"));
    let extensions = header(&headers, "tus-extension").unwrap();
    for ext in [
        "creation",
        "creation-with-upload",
        "termination",
        "checksum",
        "expiration",
    ] {
        assert!(
            extensions.split(',').any(|e| e == ext),
            "{ext} in {extensions}"
        );
    }
    assert!(header(&headers, "tus-max-size")
        .unwrap()
        .parse::<u64>()
        .is_ok());

    // Creation: wrong inputs.
    let meta_text = format!(
        "filename {},filetype {}",
        b64("notes.txt"),
        b64("text/plain")
    );
    let cases: Vec<CreateCase<'_>> = vec![
        (
            "no key",
            None,
            vec![TUS, ("upload-length", "10")],
            StatusCode::UNAUTHORIZED,
            "",
        ),
        (
            "no Tus-Resumable",
            Some(&key),
            vec![("upload-length", "10")],
            StatusCode::PRECONDITION_FAILED,
            "Tus-Resumable",
        ),
        (
            "old Tus-Resumable",
            Some(&key),
            vec![("tus-resumable", "0.2.2"), ("upload-length", "10")],
            StatusCode::PRECONDITION_FAILED,
            "not supported",
        ),
        (
            "no Upload-Length",
            Some(&key),
            vec![TUS],
            StatusCode::BAD_REQUEST,
            "Upload-Length is required",
        ),
        (
            "Upload-Length not a number",
            Some(&key),
            vec![TUS, ("upload-length", "ten")],
            StatusCode::BAD_REQUEST,
            "non-negative integer",
        ),
        (
            "negative Upload-Length",
            Some(&key),
            vec![TUS, ("upload-length", "-1")],
            StatusCode::BAD_REQUEST,
            "non-negative integer",
        ),
        (
            "deferred length",
            Some(&key),
            vec![TUS, ("upload-defer-length", "1")],
            StatusCode::BAD_REQUEST,
            "Upload-Defer-Length",
        ),
        (
            "over the size limit",
            Some(&key),
            vec![TUS, ("upload-length", "99999999999999")],
            StatusCode::PAYLOAD_TOO_LARGE,
            "over the limit",
        ),
        (
            "metadata not base64",
            Some(&key),
            vec![
                TUS,
                ("upload-length", "10"),
                ("upload-metadata", "filename !!!"),
            ],
            StatusCode::BAD_REQUEST,
            "not base64",
        ),
        (
            "metadata key twice",
            Some(&key),
            vec![
                TUS,
                ("upload-length", "10"),
                ("upload-metadata", "a YQ==,a Yg=="),
            ],
            StatusCode::BAD_REQUEST,
            "twice",
        ),
        (
            "type not allowed",
            Some(&key),
            vec![
                TUS,
                ("upload-length", "10"),
                ("upload-metadata", &meta_text),
            ],
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "text/plain",
        ),
        (
            "another tenant",
            Some(&key),
            vec![TUS, ("upload-length", "10")],
            StatusCode::FORBIDDEN,
            "",
        ),
    ];
    for (what, key, headers, expected, says) in cases {
        let path = if what == "another tenant" {
            "/v1/uploads?tenant=globex"
        } else {
            "/v1/uploads"
        };
        let (status, answer_headers, text) =
            tus_call(&app, "POST", path, key, &headers, vec![]).await;
        assert_eq!(status, expected, "{what}: {text}");
        assert!(text.contains(says), "{what}: {text:?} should say {says:?}");
        if expected == StatusCode::PRECONDITION_FAILED {
            assert_eq!(
                header(&answer_headers, "tus-version"),
                Some("1.0.0"),
                "{what}"
            );
        }
    }

    // A good upload of ten bytes.
    let data = b"0123456789".to_vec();
    let path = create(&app, &key, 10).await;
    assert!(path.starts_with("/v1/uploads/"), "{path}");
    let (status, headers, _) = tus_call(&app, "HEAD", &path, Some(&key), &[TUS], vec![]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "upload-offset"), Some("0"));
    assert_eq!(header(&headers, "upload-length"), Some("10"));
    assert_eq!(header(&headers, "cache-control"), Some("no-store"));
    assert!(header(&headers, "upload-expires")
        .unwrap()
        .ends_with(" GMT"));
    assert!(header(&headers, "upload-metadata")
        .unwrap()
        .contains("filename "));

    // PATCH: wrong inputs, none of which moves the offset.
    let wrong_sha1 = sha1_header(b"something else");
    let cases: Vec<PatchCase<'_>> = vec![
        (
            "no Tus-Resumable",
            path.clone(),
            Some(&key),
            vec![OCTETS, ("upload-offset", "0")],
            data[..4].to_vec(),
            StatusCode::PRECONDITION_FAILED,
            "Tus-Resumable",
        ),
        (
            "wrong content type",
            path.clone(),
            Some(&key),
            vec![
                TUS,
                ("content-type", "application/json"),
                ("upload-offset", "0"),
            ],
            data[..4].to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "offset+octet-stream",
        ),
        (
            "no content type",
            path.clone(),
            Some(&key),
            vec![TUS, ("upload-offset", "0")],
            data[..4].to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "offset+octet-stream",
        ),
        (
            "no Upload-Offset",
            path.clone(),
            Some(&key),
            vec![TUS, OCTETS],
            data[..4].to_vec(),
            StatusCode::BAD_REQUEST,
            "Upload-Offset is required",
        ),
        (
            "Upload-Offset not a number",
            path.clone(),
            Some(&key),
            vec![TUS, OCTETS, ("upload-offset", "x")],
            data[..4].to_vec(),
            StatusCode::BAD_REQUEST,
            "non-negative integer",
        ),
        (
            "wrong offset",
            path.clone(),
            Some(&key),
            vec![TUS, OCTETS, ("upload-offset", "3")],
            data[3..6].to_vec(),
            StatusCode::CONFLICT,
            "resume from the offset HEAD returns",
        ),
        (
            "unsupported checksum",
            path.clone(),
            Some(&key),
            vec![
                TUS,
                OCTETS,
                ("upload-offset", "0"),
                ("upload-checksum", "md5 AAAA"),
            ],
            data[..4].to_vec(),
            StatusCode::BAD_REQUEST,
            "not supported",
        ),
        (
            "malformed checksum",
            path.clone(),
            Some(&key),
            vec![
                TUS,
                OCTETS,
                ("upload-offset", "0"),
                ("upload-checksum", "sha1"),
            ],
            data[..4].to_vec(),
            StatusCode::BAD_REQUEST,
            "Upload-Checksum",
        ),
        (
            "checksum mismatch",
            path.clone(),
            Some(&key),
            vec![
                TUS,
                OCTETS,
                ("upload-offset", "0"),
                ("upload-checksum", &wrong_sha1),
            ],
            data[..4].to_vec(),
            StatusCode::from_u16(460).unwrap(),
            "send the chunk again",
        ),
        (
            "past Upload-Length",
            path.clone(),
            Some(&key),
            vec![TUS, OCTETS, ("upload-offset", "0")],
            b"0123456789X".to_vec(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "past the Upload-Length",
        ),
        (
            "unknown upload",
            format!("/v1/uploads/{}", Uuid::now_v7()),
            Some(&key),
            vec![TUS, OCTETS, ("upload-offset", "0")],
            data[..4].to_vec(),
            StatusCode::NOT_FOUND,
            "not found",
        ),
        (
            "malformed id",
            "/v1/uploads/not-an-id".into(),
            Some(&key),
            vec![TUS, OCTETS, ("upload-offset", "0")],
            data[..4].to_vec(),
            StatusCode::NOT_FOUND,
            "not found",
        ),
        (
            "another tenant's upload",
            path.clone(),
            Some(&other),
            vec![TUS, OCTETS, ("upload-offset", "0")],
            data[..4].to_vec(),
            StatusCode::NOT_FOUND,
            "not found",
        ),
    ];
    for (what, target, key, headers, body, expected, says) in cases {
        let (status, answer_headers, text) =
            tus_call(&app, "PATCH", &target, key, &headers, body).await;
        assert_eq!(status, expected, "{what}: {text}");
        assert!(text.contains(says), "{what}: {text:?} should say {says:?}");
        if expected != StatusCode::PRECONDITION_FAILED {
            assert_eq!(
                header(&answer_headers, "tus-resumable"),
                Some("1.0.0"),
                "{what}"
            );
        }
        let (_, headers, _) = tus_call(&app, "HEAD", &path, Some(&app.admin), &[TUS], vec![]).await;
        assert_eq!(
            header(&headers, "upload-offset"),
            Some("0"),
            "{what} moved the offset"
        );
    }
    let (status, _, _) = tus_call(&app, "HEAD", &path, Some(&other), &[TUS], vec![]).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another tenant cannot see it"
    );

    // Two good chunks, the second with a checksum; then the upload is complete.
    let (status, headers, text) = tus_call(
        &app,
        "PATCH",
        &path,
        Some(&key),
        &[TUS, OCTETS, ("upload-offset", "0")],
        data[..4].to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{text}");
    assert_eq!(header(&headers, "upload-offset"), Some("4"));
    assert!(header(&headers, "upload-expires").is_some());
    let checksum = sha1_header(&data[4..]);
    let (status, headers, text) = tus_call(
        &app,
        "PATCH",
        &path,
        Some(&key),
        &[
            TUS,
            OCTETS,
            ("upload-offset", "4"),
            ("upload-checksum", &checksum),
        ],
        data[4..].to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{text}");
    assert_eq!(header(&headers, "upload-offset"), Some("10"));
    assert_eq!(
        header(&headers, "upload-expires"),
        None,
        "a complete upload does not expire"
    );
    let (status, _, text) = tus_call(
        &app,
        "PATCH",
        &path,
        Some(&key),
        &[TUS, OCTETS, ("upload-offset", "10")],
        b"more".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{text}");
    assert!(text.contains("already complete"), "{text}");
    let id: Uuid = path.rsplit('/').next().unwrap().parse().unwrap();
    let blobs = app.blobs.clone().unwrap();
    assert_eq!(blobs.get_bytes(&data_key(id), None).await.unwrap(), data);

    // creation-with-upload: the body is the first chunk, and must be typed as one.
    let (status, headers, text) = tus_call(
        &app,
        "POST",
        "/v1/uploads",
        Some(&key),
        &[TUS, OCTETS, ("upload-length", "10")],
        data[..6].to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    assert_eq!(header(&headers, "upload-offset"), Some("6"));
    let (status, _, text) = tus_call(
        &app,
        "POST",
        "/v1/uploads",
        Some(&key),
        &[TUS, ("content-type", "text/plain"), ("upload-length", "10")],
        data[..6].to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{text}");

    // Termination: gone with its data; another tenant cannot terminate it.
    let (status, _, _) = tus_call(&app, "DELETE", &path, Some(&other), &[TUS], vec![]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, headers, _) = tus_call(&app, "DELETE", &path, Some(&key), &[TUS], vec![]).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(header(&headers, "tus-resumable"), Some("1.0.0"));
    let (status, _, _) = tus_call(&app, "HEAD", &path, Some(&key), &[TUS], vec![]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(blobs.head(&data_key(id)).await.unwrap().is_none());
    app.stop().await;
}

/// tuspy uploads `size` random bytes in `chunk`-byte chunks (see tus_client.py); the
/// stored blob must be exactly the file.
async fn tuspy_upload(app: &TestApp, blobs: &BlobStore, size: usize, chunk: usize) {
    let (_, key) = app.key("acme", &["operator"]).await;
    let mut data = vec![0u8; size];
    rand::rng().fill_bytes(&mut data);
    let dir = std::env::temp_dir().join(format!("waymark-tus-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("clip.mp4");
    std::fs::write(&file, &data).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/videos/tus_client.py");
    let out = tokio::process::Command::new(service_env("WAYMARK_TEST_PYTHON"))
        .arg(script)
        .args([
            &app.base,
            &key,
            file.to_str().unwrap(),
            &chunk.to_string(),
            "video/mp4",
        ])
        .output()
        .await
        .expect("python");
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        out.status.success(),
        "tuspy failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let before = report["offset_before_interruption"].as_u64().unwrap();
    assert_eq!(before, 2 * chunk as u64, "{report}");
    assert_eq!(
        report["offset_after_interruption"].as_u64(),
        Some(before),
        "the cut-off PATCH stored nothing, and HEAD said to resume where it was: {report}"
    );
    assert_eq!(report["checksum_status"], 460, "{report}");
    assert_eq!(
        report["final_offset"].as_u64(),
        Some(size as u64),
        "{report}"
    );
    let id: Uuid = report["url"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let stored = blobs.get_bytes(&data_key(id), None).await.unwrap();
    assert!(stored == data, "the stored upload differs from the file");
    let upload = uploads(app, blobs.clone())
        .get(None, id)
        .await
        .unwrap()
        .unwrap();
    assert!(upload.complete);
    assert_eq!(upload.metadata["filename"], "clip.mp4");
    // Nothing staged is left: no buffers on S3, no staging file locally.
    let left: Vec<String> = blobs
        .list(&format!("uploads/{id}/"))
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.key)
        .collect();
    assert_eq!(left, vec![data_key(id)]);
    if let BlobStore::S3(s3) = blobs {
        // Parts of the store's size, the last shorter.
        let part = s3.part_size();
        assert!(part >= 5 << 20);
        assert_eq!(
            upload.parts.len() as u64,
            (size as u64).div_ceil(part),
            "{:?}",
            upload.parts
        );
        assert!(upload.parts.iter().rev().skip(1).all(|p| p.size == part));
    }
    if let BlobStore::Local(local) = blobs {
        assert!(!local.root().join("staging").join(id.to_string()).exists());
    }
}

async fn tuspy_uploads_to_local_files_resuming_after_an_interruption(db: TestDb) {
    let app = TestApp::on(db).serving_local_blobs().spawn().await;
    let blobs = app.blobs.clone().unwrap();
    tuspy_upload(&app, &blobs, 3 * 1024 * 1024 + 17, 256 * 1024).await;
    app.stop().await;
}

async fn tuspy_uploads_to_s3_in_multipart_parts_resuming_after_an_interruption(db: TestDb) {
    let blobs = test_s3().await;
    let app = TestApp::on(db).serving_blobs(blobs.clone()).spawn().await;
    // Chunks far smaller than a part: buffered until a part is full, across requests.
    tuspy_upload(&app, &blobs, 11 * 1024 * 1024 + 5, 1024 * 1024).await;
    app.stop().await;
}

async fn expire_abandoned(db: TestDb, blobs: BlobStore, first_chunk: usize) {
    let (clock, _) = manual_clock();
    let app = TestApp::on(db)
        .with_clock(&clock)
        .serving_blobs(blobs.clone())
        .without_workers()
        .spawn()
        .await;
    let (_, key) = app.key("acme", &["operator"]).await;
    let path = create(&app, &key, first_chunk as u64 + 100).await;
    let id: Uuid = path.rsplit('/').next().unwrap().parse().unwrap();
    let mut chunk = vec![0u8; first_chunk];
    rand::rng().fill_bytes(&mut chunk);
    let (status, _, text) = tus_call(
        &app,
        "PATCH",
        &path,
        Some(&key),
        &[TUS, OCTETS, ("upload-offset", "0")],
        chunk,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{text}");
    let sweep = uploads(&app, blobs.clone());
    let upload = sweep.get(None, id).await.unwrap().unwrap();
    assert!(
        !blobs
            .list(&format!("uploads/{id}/"))
            .await
            .unwrap()
            .is_empty()
            || matches!(blobs, BlobStore::Local(_))
    );

    // Not yet: a day has not passed since the last write.
    clock.advance(Duration::from_secs(23 * 3600));
    assert_eq!(sweep.expire_due(clock.now()).await.unwrap(), 0);
    let (status, _, _) = tus_call(&app, "HEAD", &path, Some(&key), &[TUS], vec![]).await;
    assert_eq!(status, StatusCode::OK);

    clock.advance(Duration::from_secs(3600));
    let (status, _, text) = tus_call(&app, "HEAD", &path, Some(&key), &[TUS], vec![]).await;
    assert_eq!(status, StatusCode::GONE, "{text}");
    let (status, _, _) = tus_call(
        &app,
        "PATCH",
        &path,
        Some(&key),
        &[TUS, OCTETS, ("upload-offset", &first_chunk.to_string())],
        vec![1; 100],
    )
    .await;
    assert_eq!(status, StatusCode::GONE);
    assert_eq!(sweep.expire_due(clock.now()).await.unwrap(), 1);
    assert!(
        sweep.get(None, id).await.unwrap().is_none(),
        "the record is gone"
    );
    assert!(
        blobs
            .list(&format!("uploads/{id}/"))
            .await
            .unwrap()
            .is_empty(),
        "its blobs are gone"
    );
    match &blobs {
        BlobStore::S3(s3) => {
            let upload_id = upload.s3_upload_id.as_deref().unwrap();
            assert_eq!(
                s3.multipart_parts(&data_key(id), upload_id).await.unwrap(),
                None,
                "the multipart upload was aborted"
            );
        }
        BlobStore::Local(local) => {
            assert!(!local.root().join("staging").join(id.to_string()).exists());
        }
    }
    let (status, _, _) = tus_call(&app, "HEAD", &path, Some(&key), &[TUS], vec![]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(sweep.expire_due(clock.now()).await.unwrap(), 0);
    app.stop().await;
}

async fn abandoned_uploads_expire_and_their_local_staging_is_deleted(db: TestDb) {
    let dir = db.data_dir();
    let blobs = crate::support::app::local_blobs(&dir, "http://127.0.0.1:1".into());
    expire_abandoned(db, blobs, 4096).await;
}

async fn abandoned_uploads_expire_and_their_s3_multipart_upload_is_aborted(db: TestDb) {
    // More than a part, so S3 holds a part and a buffer when it expires.
    expire_abandoned(db, test_s3().await, (5 << 20) + 1000).await;
}

on_both_backends!(
    tus_refuses_wrong_requests_with_the_protocol_status,
    tuspy_uploads_to_local_files_resuming_after_an_interruption,
    tuspy_uploads_to_s3_in_multipart_parts_resuming_after_an_interruption,
    abandoned_uploads_expire_and_their_local_staging_is_deleted,
    abandoned_uploads_expire_and_their_s3_multipart_upload_is_aborted,
    the_retention_sweep_expires_abandoned_uploads,
);

/// The built-in `waymark.retention` sweep expires abandoned uploads of the process's
/// blob store, run by hand here with a manual clock.
async fn the_retention_sweep_expires_abandoned_uploads(db: TestDb) {
    let (clock, _) = manual_clock();
    let dir = db.data_dir();
    let blobs = crate::support::app::local_blobs(&dir, "http://127.0.0.1:1".into());
    let app = TestApp::on(db)
        .with_clock(&clock)
        .with_services(crate::support::app::Services::local().blobs(blobs.clone()))
        .serving_blobs(blobs.clone())
        .spawn()
        .await;
    let (_, key) = app.key("acme", &["operator"]).await;
    let abandoned = create(&app, &key, 100).await;
    let (status, _, text) = tus_call(
        &app,
        "PATCH",
        &abandoned,
        Some(&key),
        &[TUS, OCTETS, ("upload-offset", "0")],
        vec![7; 40],
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{text}");
    let id: Uuid = abandoned.rsplit('/').next().unwrap().parse().unwrap();
    let staging = match &blobs {
        BlobStore::Local(local) => local.root().join("staging").join(id.to_string()),
        BlobStore::S3(_) => unreachable!(),
    };
    assert!(staging.exists());
    clock.advance(Duration::from_secs(25 * 3600));
    let run = app
        .engine
        .start(waymark_engine::StartRun {
            tenant: waymark_engine::SYSTEM_TENANT.into(),
            ..crate::support::start_req(
                "waymark.retention",
                serde_json::json!({"older_than": "30d"}),
            )
        })
        .await
        .unwrap()
        .run;
    let done =
        crate::support::wait_for_status(app.store(), run.id, waymark_engine::RunStatus::Completed)
            .await;
    assert_eq!(
        done.output.as_ref().unwrap()["uploads_expired"],
        1,
        "{:?}",
        done.output
    );
    assert!(!staging.exists(), "its staging file is deleted");
    let (status, _, _) = tus_call(&app, "HEAD", &abandoned, Some(&key), &[TUS], vec![]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.stop().await;
}
