//! Multipart arithmetic and streaming helpers shared by the stores: part sizes that
//! real S3 accepts, reading a stream one part at a time, byte ranges, and checksums
//! verified while a body streams.

use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine as _;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

pub const MIB: u64 = 1024 * 1024;
/// S3's smallest part, except for the last one.
pub const MIN_PART_SIZE: u64 = 5 * MIB;
/// S3's largest part.
pub const MAX_PART_SIZE: u64 = 5 * 1024 * MIB;
/// S3's limit on parts per upload.
pub const MAX_PARTS: u64 = 10_000;
/// The default part size: a part is held in memory while it uploads.
pub const DEFAULT_PART_SIZE: u64 = 8 * MIB;
/// What a put reads from its body at a time before handing it to a writer.
pub const COPY_CHUNK: usize = 256 * 1024;

/// The part size to upload with: `configured` clamped to S3's limits, and large enough
/// that `size_hint` bytes fit in 10 000 parts (rounded up to whole MiB).
pub fn part_size(configured: u64, size_hint: Option<u64>) -> u64 {
    let mut size = configured.clamp(MIN_PART_SIZE, MAX_PART_SIZE);
    if let Some(total) = size_hint {
        let needed = total.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
        size = size.max(needed).min(MAX_PART_SIZE);
    }
    size
}

/// The sizes of the parts `total` bytes are cut into: every part `part_size` except a
/// shorter last one. One empty part for an empty blob.
pub fn plan_parts(total: u64, part_size: u64) -> Vec<u64> {
    if total == 0 {
        return vec![0];
    }
    let full = total / part_size;
    let rest = total % part_size;
    let mut parts = vec![part_size; full as usize];
    if rest > 0 {
        parts.push(rest);
    }
    parts
}

/// Reads up to `limit` bytes: fewer only at the end of the stream.
pub async fn read_part<R: AsyncRead + Unpin + ?Sized>(
    reader: &mut R,
    limit: u64,
) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(limit.min(64 * MIB) as usize);
    (&mut *reader).take(limit).read_to_end(&mut buf).await?;
    Ok(buf)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn sha256_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(bytes))
}

/// S3's checksum of a multipart object ("COMPOSITE"): the SHA-256 of the parts' raw
/// SHA-256 digests, base64, then `-` and the number of parts.
pub fn composite_sha256(part_digests: &[[u8; 32]]) -> String {
    let mut outer = Sha256::new();
    for digest in part_digests {
        outer.update(digest);
    }
    format!(
        "{}-{}",
        base64::engine::general_purpose::STANDARD.encode(outer.finalize()),
        part_digests.len()
    )
}

/// A request for part of a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// Bytes `start` to `end`, both included (HTTP's `bytes=start-end`).
    Inclusive { start: u64, end: u64 },
    /// From `start` to the end.
    From { start: u64 },
    /// The last `len` bytes.
    Last { len: u64 },
}

impl ByteRange {
    /// `count` bytes from `start`.
    pub fn new(start: u64, count: u64) -> ByteRange {
        ByteRange::Inclusive {
            start,
            end: start + count.max(1) - 1,
        }
    }

    /// Parses one range of an HTTP `Range` header (`bytes=0-99`, `bytes=100-`,
    /// `bytes=-50`). Several ranges are not supported: `None`, so the caller serves the
    /// whole blob as RFC 9110 allows.
    pub fn parse_http(header: &str) -> Option<ByteRange> {
        let spec = header.trim().strip_prefix("bytes=")?.trim();
        if spec.contains(',') {
            return None;
        }
        let (start, end) = spec.split_once('-')?;
        let (start, end) = (start.trim(), end.trim());
        match (start.is_empty(), end.is_empty()) {
            (false, false) => {
                let (start, end) = (start.parse().ok()?, end.parse().ok()?);
                (start <= end).then_some(ByteRange::Inclusive { start, end })
            }
            (false, true) => Some(ByteRange::From {
                start: start.parse().ok()?,
            }),
            (true, false) => Some(ByteRange::Last {
                len: end.parse().ok()?,
            }),
            (true, true) => None,
        }
    }

    /// The HTTP (and S3) form: `bytes=0-99`.
    pub fn to_http(self) -> String {
        match self {
            ByteRange::Inclusive { start, end } => format!("bytes={start}-{end}"),
            ByteRange::From { start } => format!("bytes={start}-"),
            ByteRange::Last { len } => format!("bytes=-{len}"),
        }
    }

    /// The first and last byte (included) this range selects from a blob of `size`
    /// bytes, or `None` if it selects nothing (HTTP 416).
    pub fn resolve(self, size: u64) -> Option<(u64, u64)> {
        if size == 0 {
            return None;
        }
        match self {
            ByteRange::Inclusive { start, end } if start < size => Some((start, end.min(size - 1))),
            ByteRange::From { start } if start < size => Some((start, size - 1)),
            ByteRange::Last { len } if len > 0 => Some((size - len.min(size), size - 1)),
            _ => None,
        }
    }
}

impl std::fmt::Display for ByteRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_http())
    }
}

/// What a full read must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// SHA-256 of the whole blob, hex.
    Sha256Hex(String),
    /// An S3 composite checksum of parts of `part_size` bytes.
    Composite { part_size: u64, checksum: String },
}

/// A downloaded body whose bytes did not hash to what was stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("checksum mismatch: stored {expected}, read {actual}")]
pub struct ChecksumMismatch {
    pub expected: String,
    pub actual: String,
}

/// Hashes a body as it is read and fails the read at the end if it does not match:
/// a corrupted blob never reads as a successful download.
pub struct Verifying<R> {
    inner: R,
    expected: Expected,
    whole: Sha256,
    part: Sha256,
    part_filled: u64,
    part_digests: Vec<[u8; 32]>,
    finished: bool,
}

impl<R> Verifying<R> {
    pub fn new(inner: R, expected: Expected) -> Self {
        Self {
            inner,
            expected,
            whole: Sha256::new(),
            part: Sha256::new(),
            part_filled: 0,
            part_digests: Vec::new(),
            finished: false,
        }
    }

    fn update(&mut self, mut bytes: &[u8]) {
        match self.expected {
            Expected::Sha256Hex(_) => self.whole.update(bytes),
            Expected::Composite { part_size, .. } => {
                while !bytes.is_empty() {
                    let room = (part_size - self.part_filled) as usize;
                    let (now, rest) = bytes.split_at(room.min(bytes.len()));
                    self.part.update(now);
                    self.part_filled += now.len() as u64;
                    if self.part_filled == part_size {
                        let digest = std::mem::take(&mut self.part).finalize();
                        self.part_digests.push(digest.into());
                        self.part_filled = 0;
                    }
                    bytes = rest;
                }
            }
        }
    }

    fn check(&mut self) -> Result<(), ChecksumMismatch> {
        let (expected, actual) = match &self.expected {
            Expected::Sha256Hex(expected) => (
                expected.clone(),
                hex::encode(std::mem::take(&mut self.whole).finalize()),
            ),
            Expected::Composite { checksum, .. } => {
                if self.part_filled > 0 || self.part_digests.is_empty() {
                    let digest = std::mem::take(&mut self.part).finalize();
                    self.part_digests.push(digest.into());
                }
                (checksum.clone(), composite_sha256(&self.part_digests))
            }
        };
        if expected.eq_ignore_ascii_case(&actual) {
            Ok(())
        } else {
            Err(ChecksumMismatch { expected, actual })
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Verifying<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.finished {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                if read.is_empty() && buf.remaining() > 0 {
                    this.finished = true;
                    if let Err(mismatch) = this.check() {
                        return Poll::Ready(Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            mismatch,
                        )));
                    }
                } else {
                    let read = read.to_vec();
                    this.update(&read);
                }
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_size_respects_s3_limits() {
        assert_eq!(part_size(1, None), MIN_PART_SIZE, "never below 5 MiB");
        assert_eq!(part_size(8 * MIB, None), 8 * MIB);
        assert_eq!(part_size(u64::MAX, None), MAX_PART_SIZE);
        // 100 GiB in 8 MiB parts would be 12 800 parts: grow the part instead.
        let big = 100 * 1024 * MIB;
        let size = part_size(8 * MIB, Some(big));
        assert!(big.div_ceil(size) <= MAX_PARTS, "{size}");
        assert_eq!(size % MIB, 0);
        assert_eq!(part_size(8 * MIB, Some(12 * MIB)), 8 * MIB);
    }

    #[test]
    fn parts_are_full_size_except_the_last() {
        assert_eq!(
            plan_parts(12 * MIB, 5 * MIB),
            vec![5 * MIB, 5 * MIB, 2 * MIB]
        );
        assert_eq!(plan_parts(10 * MIB, 5 * MIB), vec![5 * MIB, 5 * MIB]);
        assert_eq!(plan_parts(1, 5 * MIB), vec![1]);
        assert_eq!(plan_parts(0, 5 * MIB), vec![0]);
        for total in [1, MIB, 5 * MIB - 1, 5 * MIB, 5 * MIB + 1, 31 * MIB + 7] {
            let parts = plan_parts(total, 5 * MIB);
            assert_eq!(parts.iter().sum::<u64>(), total);
            let (last, rest) = parts.split_last().unwrap();
            assert!(rest.iter().all(|p| *p == 5 * MIB));
            assert!(*last > 0 && *last <= 5 * MIB);
        }
    }

    #[tokio::test]
    async fn a_stream_is_read_in_parts_of_the_plan() {
        let data: Vec<u8> = (0..25u32).map(|i| i as u8).collect();
        let mut reader = &data[..];
        let mut sizes = Vec::new();
        loop {
            let part = read_part(&mut reader, 10).await.unwrap();
            if part.is_empty() {
                break;
            }
            sizes.push(part.len() as u64);
        }
        assert_eq!(sizes, plan_parts(25, 10));
    }

    #[test]
    fn http_ranges_parse_and_resolve() {
        let r = ByteRange::parse_http("bytes=0-99").unwrap();
        assert_eq!(r, ByteRange::Inclusive { start: 0, end: 99 });
        assert_eq!(r.resolve(50), Some((0, 49)), "clipped to the blob");
        assert_eq!(
            ByteRange::parse_http("bytes=10-").unwrap().resolve(20),
            Some((10, 19))
        );
        assert_eq!(
            ByteRange::parse_http("bytes=-5").unwrap().resolve(20),
            Some((15, 19))
        );
        assert_eq!(
            ByteRange::parse_http("bytes=-50").unwrap().resolve(20),
            Some((0, 19))
        );
        assert_eq!(
            ByteRange::parse_http("bytes=20-").unwrap().resolve(20),
            None
        );
        assert_eq!(ByteRange::parse_http("bytes=-0").unwrap().resolve(20), None);
        for bad in [
            "items=0-1",
            "bytes=5-1",
            "bytes=-",
            "bytes=a-b",
            "bytes=0-1,5-6",
        ] {
            assert_eq!(ByteRange::parse_http(bad), None, "{bad}");
        }
        assert_eq!(ByteRange::new(3, 4).to_http(), "bytes=3-6");
    }

    async fn read_all(reader: impl AsyncRead + Unpin) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut reader = reader;
        reader.read_to_end(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn verifying_reader_accepts_the_right_bytes_and_fails_wrong_ones() {
        let data = b"hello blob".to_vec();
        let good = Verifying::new(&data[..], Expected::Sha256Hex(sha256_hex(&data)));
        assert_eq!(read_all(good).await.unwrap(), data);

        let bad = Verifying::new(&b"hello blub"[..], Expected::Sha256Hex(sha256_hex(&data)));
        let err = read_all(bad).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(err.get_ref().unwrap().is::<ChecksumMismatch>());
    }

    #[tokio::test]
    async fn composite_checksums_follow_part_boundaries() {
        let data: Vec<u8> = (0..23u32).map(|i| (i * 7) as u8).collect();
        let digests: Vec<[u8; 32]> = data.chunks(10).map(|c| Sha256::digest(c).into()).collect();
        let checksum = composite_sha256(&digests);
        assert!(checksum.ends_with("-3"));
        let expected = Expected::Composite {
            part_size: 10,
            checksum: checksum.clone(),
        };
        assert_eq!(
            read_all(Verifying::new(&data[..], expected.clone()))
                .await
                .unwrap(),
            data
        );
        let mut corrupt = data.clone();
        corrupt[15] ^= 1;
        assert!(read_all(Verifying::new(&corrupt[..], expected))
            .await
            .is_err());
        // The same bytes cut differently give another checksum.
        let wrong_cut = Expected::Composite {
            part_size: 5,
            checksum,
        };
        assert!(read_all(Verifying::new(&data[..], wrong_cut))
            .await
            .is_err());
    }
}
