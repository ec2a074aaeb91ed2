//! The blob store, each test on both stores: local files (with Waymark's API serving
//! the signed links on a real port) and S3 on a real S3-compatible server that checks
//! signatures (SeaweedFS, started by `./test.sh` through `scripts/test-services.sh`).
//!
//! Every test works under its own random prefix of the shared test bucket.

use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use uuid::Uuid;
use waymark_services::blob::parts::{sha256_hex, MIB};
use waymark_services::{
    BlobError, BlobStore, ByteRange, PutOptions, S3Config, S3Credentials, S3Store,
};

use crate::support::app::{test_s3_config, TestApp};
use crate::support::services::service_env;
use crate::support::{wait_until, TestDb};

fn s3_config(credentials: S3Credentials) -> S3Config {
    S3Config {
        // The smallest part S3 allows, so that a 12 MiB blob takes three parts.
        part_size: 5 * MIB,
        credentials: Some(credentials),
        ..test_s3_config(service_env("WAYMARK_TEST_S3_BUCKET"))
    }
}

fn test_credentials() -> S3Credentials {
    S3Credentials {
        access_key_id: service_env("WAYMARK_TEST_S3_ACCESS_KEY"),
        secret_access_key: service_env("WAYMARK_TEST_S3_SECRET_KEY"),
    }
}

/// One test's store and what keeps it alive.
struct Fixture {
    store: BlobStore,
    /// Every key a test writes starts with this.
    prefix: String,
    /// Serves a local store's links.
    _app: Option<TestApp>,
}

impl Fixture {
    /// A local store in a fresh directory, with Waymark's API serving its links.
    async fn local() -> Fixture {
        let app = TestApp::on(TestDb::sqlite().await)
            .serving_local_blobs()
            .without_workers()
            .spawn()
            .await;
        Fixture {
            store: app.blobs.clone().expect("served blobs"),
            prefix: format!("t-{}/", Uuid::now_v7().simple()),
            _app: Some(app),
        }
    }

    async fn s3() -> Fixture {
        let store = BlobStore::S3(
            S3Store::connect(s3_config(test_credentials()))
                .await
                .expect("s3 client"),
        );
        Fixture {
            store,
            prefix: format!("t-{}/", Uuid::now_v7().simple()),
            _app: None,
        }
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }
}

/// Declares each `async fn name(f: Fixture)` as `local::name` and `s3::name`.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Fixture::local().await).await
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Fixture::s3().await).await
                }
            )*
        }
    };
}

on_both_stores!(
    round_trip_with_metadata_overwrite_and_delete,
    a_blob_over_10_mib_goes_up_in_parts_and_comes_back_whole,
    ranged_reads_return_exactly_the_asked_bytes,
    list_and_delete_by_prefix,
    download_urls_work_until_they_expire,
    keys_that_could_escape_are_refused,
    a_writer_streams_a_blob_in_parts_and_hashes_it,
    an_aborted_or_dropped_writer_leaves_the_key_as_it_was,
);

/// Deterministic bytes that differ at every offset a bug could confuse.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64).wrapping_mul(2654435761) >> 7) as u8 ^ seed)
        .collect()
}

async fn round_trip_with_metadata_overwrite_and_delete(f: Fixture) {
    let key = f.key("docs/report.txt");
    let body = b"quarterly numbers".to_vec();
    let put = f
        .store
        .put_bytes(&key, &body, PutOptions::content_type("text/plain"))
        .await
        .unwrap();
    assert_eq!(put.size, body.len() as u64);
    assert_eq!(put.sha256.as_deref(), Some(sha256_hex(&body).as_str()));

    let head = f.store.head(&key).await.unwrap().expect("head finds it");
    assert_eq!(head.size, body.len() as u64);
    assert_eq!(head.content_type.as_deref(), Some("text/plain"));
    assert_eq!(head.sha256, put.sha256);

    let download = f.store.get(&key, None).await.unwrap();
    assert_eq!(download.meta.content_type.as_deref(), Some("text/plain"));
    assert_eq!(download.range, None);
    assert_eq!(download.bytes().await.unwrap(), body);

    // A retried step writing the same key again replaces the blob.
    let newer = b"restated quarterly numbers".to_vec();
    f.store
        .put_bytes(&key, &newer, PutOptions::default())
        .await
        .unwrap();
    assert_eq!(f.store.get_bytes(&key, None).await.unwrap(), newer);
    assert_eq!(f.store.list(&f.prefix).await.unwrap().len(), 1);

    // An empty blob is a blob.
    let empty = f.key("empty");
    f.store
        .put_bytes(&empty, b"", PutOptions::default())
        .await
        .unwrap();
    assert_eq!(f.store.get_bytes(&empty, None).await.unwrap(), b"");

    assert!(f.store.delete(&key).await.unwrap());
    assert!(f.store.head(&key).await.unwrap().is_none());
    assert!(
        !f.store.delete(&key).await.unwrap(),
        "nothing left to delete"
    );
    match f.store.get(&key, None).await {
        Err(BlobError::NotFound { key: missing }) => assert_eq!(missing, key),
        other => panic!("expected NotFound, got {other:?}"),
    }
    f.store.delete_prefix(&f.prefix).await.unwrap();
}

async fn a_blob_over_10_mib_goes_up_in_parts_and_comes_back_whole(f: Fixture) {
    let data = pattern(12 * MIB as usize + 123, 7);
    let dir = std::env::temp_dir().join(format!("waymark-blob-{}", Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let path: PathBuf = dir.join("big.bin");
    std::fs::write(&path, &data).unwrap();

    // From a file (size known) and from a stream (size unknown).
    let from_file = f.key("big/from-file.bin");
    let put = f
        .store
        .put_file(
            &from_file,
            &path,
            PutOptions::content_type("application/x-test"),
        )
        .await
        .unwrap();
    assert_eq!(put.size, data.len() as u64);
    assert_eq!(put.sha256.as_deref(), Some(sha256_hex(&data).as_str()));
    let streamed = f.key("big/streamed.bin");
    let file = tokio::fs::File::open(&path).await.unwrap();
    f.store
        .put(&streamed, file, PutOptions::default())
        .await
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    for key in [&from_file, &streamed] {
        let head = f.store.head(key).await.unwrap().unwrap();
        assert_eq!(head.size, data.len() as u64);
        // The full read verifies the checksum as it streams (composite for parts).
        let back = f.store.get_bytes(key, None).await.unwrap();
        assert!(
            back == data,
            "{key}: {} bytes back, content differs",
            back.len()
        );
        // A range across the boundary between the first and second part.
        let across = ByteRange::new(5 * MIB - 10, 20);
        let part = f.store.get_bytes(key, Some(across)).await.unwrap();
        assert_eq!(
            part,
            &data[(5 * MIB - 10) as usize..(5 * MIB + 10) as usize]
        );
    }
    if let BlobStore::S3(_) = &f.store {
        // S3's ETag of a multipart object ends in the number of parts.
        let etag = f
            .store
            .head(&from_file)
            .await
            .unwrap()
            .unwrap()
            .etag
            .unwrap();
        assert!(
            etag.trim_matches('"').ends_with("-3"),
            "12 MiB in 5 MiB parts: {etag}"
        );
    }
    f.store.delete_prefix(&f.prefix).await.unwrap();
}

async fn ranged_reads_return_exactly_the_asked_bytes(f: Fixture) {
    let key = f.key("ranged.bin");
    let data = pattern(1000, 3);
    f.store
        .put_bytes(&key, &data, PutOptions::default())
        .await
        .unwrap();

    let middle = f
        .store
        .get(&key, Some(ByteRange::new(100, 50)))
        .await
        .unwrap();
    assert_eq!(middle.range, Some((100, 149)));
    assert_eq!(middle.meta.size, 1000, "the size is the whole blob's");
    assert_eq!(middle.len(), 50);
    assert_eq!(middle.bytes().await.unwrap(), &data[100..150]);

    let tail = f
        .store
        .get_bytes(&key, Some(ByteRange::From { start: 990 }))
        .await
        .unwrap();
    assert_eq!(tail, &data[990..]);
    let last = f
        .store
        .get_bytes(&key, Some(ByteRange::Last { len: 7 }))
        .await
        .unwrap();
    assert_eq!(last, &data[993..]);
    let clipped = f
        .store
        .get_bytes(
            &key,
            Some(ByteRange::Inclusive {
                start: 995,
                end: 5000,
            }),
        )
        .await
        .unwrap();
    assert_eq!(clipped, &data[995..]);

    match f
        .store
        .get(&key, Some(ByteRange::From { start: 5000 }))
        .await
    {
        Err(BlobError::InvalidRange { size, .. }) => assert_eq!(size, 1000),
        other => panic!("expected InvalidRange, got {other:?}"),
    }
    f.store.delete_prefix(&f.prefix).await.unwrap();
}

async fn list_and_delete_by_prefix(f: Fixture) {
    for (rest, len) in [
        ("a/1", 1),
        ("a/2", 2),
        ("a/sub/3", 3),
        ("ab", 4),
        ("b/1", 5),
    ] {
        f.store
            .put_bytes(&f.key(rest), vec![b'x'; len], PutOptions::default())
            .await
            .unwrap();
    }
    let keys = |list: Vec<waymark_services::BlobMeta>| -> Vec<String> {
        list.into_iter()
            .map(|b| b.key.strip_prefix(&f.prefix).unwrap().to_owned())
            .collect()
    };
    let in_a = f.store.list(&f.key("a/")).await.unwrap();
    assert_eq!(
        in_a.iter().map(|b| b.size).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(keys(in_a), vec!["a/1", "a/2", "a/sub/3"]);
    assert_eq!(
        keys(f.store.list(&f.key("a")).await.unwrap()),
        vec!["a/1", "a/2", "a/sub/3", "ab"],
        "a prefix is a string prefix, not a folder"
    );
    assert!(f.store.list(&f.key("nothing/")).await.unwrap().is_empty());

    assert_eq!(f.store.delete_prefix(&f.key("a/")).await.unwrap(), 3);
    assert_eq!(
        keys(f.store.list(&f.prefix).await.unwrap()),
        vec!["ab", "b/1"]
    );
    assert_eq!(f.store.delete_prefix(&f.prefix).await.unwrap(), 2);
    assert!(f.store.list(&f.prefix).await.unwrap().is_empty());
    assert_eq!(f.store.delete_prefix(&f.prefix).await.unwrap(), 0);
}

async fn download_urls_work_until_they_expire(f: Fixture) {
    let key = f.key("share/file name ü.pdf");
    let data = pattern(3000, 9);
    f.store
        .put_bytes(&key, &data, PutOptions::content_type("application/pdf"))
        .await
        .unwrap();
    let http = reqwest::Client::new();

    let url = f
        .store
        .download_url(&key, Duration::from_secs(300))
        .await
        .unwrap();
    let response = http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/pdf"
    );
    assert_eq!(response.bytes().await.unwrap(), data);

    let partial = http
        .get(&url)
        .header("Range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(partial.status(), 206);
    assert_eq!(
        partial.headers()["content-range"].to_str().unwrap(),
        "bytes 10-19/3000"
    );
    assert_eq!(partial.bytes().await.unwrap(), &data[10..20]);

    // Signed two minutes ago for one minute: expired on arrival.
    let signed_earlier = Utc::now() - chrono::Duration::minutes(2);
    let expired = f
        .store
        .download_url_at(&key, signed_earlier, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        http.get(&expired).send().await.unwrap().status(),
        403,
        "{expired}"
    );

    // A link with a short life stops working once it has passed (waiting on the
    // condition, not on a fixed sleep).
    let short = f
        .store
        .download_url(&key, Duration::from_secs(1))
        .await
        .unwrap();
    wait_until(
        "the 1 s link to be refused",
        Duration::from_secs(30),
        || {
            let (http, short) = (http.clone(), short.clone());
            async move { http.get(&short).send().await.unwrap().status() == 403 }
        },
    )
    .await;

    // A link for one key does not open another.
    let other = f.key("share/other.pdf");
    f.store
        .put_bytes(&other, b"secret", PutOptions::default())
        .await
        .unwrap();
    let tampered = url.replacen("file%20name%20%C3%BC.pdf", "other.pdf", 1);
    assert_ne!(tampered, url, "{url}");
    assert_eq!(http.get(&tampered).send().await.unwrap().status(), 403);
    f.store.delete_prefix(&f.prefix).await.unwrap();
}

async fn keys_that_could_escape_are_refused(f: Fixture) {
    for bad in ["../escape", "a/../../b", "/absolute", "a//b", ""] {
        match f.store.put_bytes(bad, b"x", PutOptions::default()).await {
            Err(BlobError::InvalidKey { key, .. }) => assert_eq!(key, bad),
            other => panic!("{bad:?}: expected InvalidKey, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_s3_credentials_fail_with_a_clear_error() {
    let right = test_credentials();
    for credentials in [
        S3Credentials {
            secret_access_key: "not-the-secret".into(),
            ..right.clone()
        },
        S3Credentials {
            access_key_id: "no-such-access-key".into(),
            ..right.clone()
        },
    ] {
        let store = BlobStore::S3(S3Store::connect(s3_config(credentials)).await.unwrap());
        let key = format!("t-{}/denied.txt", Uuid::now_v7().simple());
        let put = store.put_bytes(&key, b"x", PutOptions::default()).await;
        let error = put.expect_err("a put with wrong credentials must fail");
        assert!(matches!(error, BlobError::Unauthorized { .. }), "{error:?}");
        assert!(!error.is_retryable());
        let message = error.to_string();
        assert!(message.contains("AWS_ACCESS_KEY_ID"), "{message}");
        assert!(message.contains("PutObject"), "{message}");
        let get = store
            .get(&key, None)
            .await
            .expect_err("a get must fail too");
        assert!(matches!(get, BlobError::Unauthorized { .. }), "{get:?}");
        let head = store.head(&key).await.expect_err("so must a head");
        assert!(matches!(head, BlobError::Unauthorized { .. }), "{head:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_links_are_not_served_for_an_s3_store() {
    // The route exists on every Waymark; it serves nothing unless blobs are local.
    let s3 = BlobStore::S3(
        S3Store::connect(s3_config(test_credentials()))
            .await
            .unwrap(),
    );
    let app = TestApp::on(TestDb::sqlite().await)
        .serving_blobs(s3)
        .without_workers()
        .spawn()
        .await;
    let status = reqwest::get(format!(
        "{}/blobs/a/b?expires=9999999999&signature=00",
        app.base
    ))
    .await
    .unwrap()
    .status();
    app.stop().await;
    assert_eq!(status, 404);
}

async fn a_writer_streams_a_blob_in_parts_and_hashes_it(f: Fixture) {
    // 12 MiB in uneven pieces: on S3, three 5 MiB parts whose boundaries fall inside
    // pieces.
    let data = pattern(12 * MIB as usize + 123, 5);
    let key = f.key("streamed/writer.bin");
    let mut writer = f
        .store
        .writer(&key, PutOptions::content_type("application/x-ndjson"))
        .await
        .unwrap();
    for piece in data.chunks(999_983) {
        writer.write(piece).await.unwrap();
    }
    let meta = writer.finish().await.unwrap();
    assert_eq!(meta.size, data.len() as u64);
    assert_eq!(meta.sha256.as_deref(), Some(sha256_hex(&data).as_str()));
    let head = f.store.head(&key).await.unwrap().expect("written");
    assert_eq!(head.size, data.len() as u64);
    assert_eq!(head.content_type.as_deref(), Some("application/x-ndjson"));
    // The full read verifies the stored checksum (composite over the parts on S3).
    let back = f.store.get_bytes(&key, None).await.unwrap();
    assert!(back == data, "{} bytes back, content differs", back.len());
    if let BlobStore::S3(_) = &f.store {
        let etag = head.etag.unwrap();
        assert!(etag.trim_matches('"').ends_with("-3"), "{etag}");
    }

    // What fits in one part (or nothing at all) is one plain object.
    for small in [b"one line\n".to_vec(), Vec::new()] {
        let key = f.key("streamed/small");
        let mut writer = f.store.writer(&key, PutOptions::default()).await.unwrap();
        writer.write(&small).await.unwrap();
        let meta = writer.finish().await.unwrap();
        assert_eq!(meta.sha256.as_deref(), Some(sha256_hex(&small).as_str()));
        assert_eq!(f.store.get_bytes(&key, None).await.unwrap(), small);
    }
    f.store.delete_prefix(&f.prefix).await.unwrap();
}

async fn an_aborted_or_dropped_writer_leaves_the_key_as_it_was(f: Fixture) {
    let key = f.key("kept.txt");
    f.store
        .put_bytes(&key, b"the original", PutOptions::default())
        .await
        .unwrap();
    // More than one part, so that S3 has a multipart upload under way.
    let data = pattern(6 * MIB as usize, 1);
    let mut aborted = f.store.writer(&key, PutOptions::default()).await.unwrap();
    aborted.write(&data).await.unwrap();
    aborted.write(&data).await.unwrap();
    aborted.abort().await;
    let mut dropped = f.store.writer(&key, PutOptions::default()).await.unwrap();
    dropped.write(&data).await.unwrap();
    drop(dropped);
    let fresh = f.key("never.txt");
    let mut never = f.store.writer(&fresh, PutOptions::default()).await.unwrap();
    never.write(b"half").await.unwrap();
    never.abort().await;

    assert_eq!(
        f.store.get_bytes(&key, None).await.unwrap(),
        b"the original"
    );
    assert_eq!(f.store.head(&fresh).await.unwrap(), None);
    assert_eq!(f.store.list(&f.prefix).await.unwrap().len(), 1);
    if let BlobStore::Local(local) = &f.store {
        let leftovers: Vec<_> = std::fs::read_dir(local.root().join("tmp"))
            .unwrap()
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }
    match f.store.writer("../escape", PutOptions::default()).await {
        Err(BlobError::InvalidKey { .. }) => {}
        other => panic!("expected InvalidKey, got {other:?}"),
    }
    f.store.delete_prefix(&f.prefix).await.unwrap();
}
