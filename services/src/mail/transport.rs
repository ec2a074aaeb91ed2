//! Where messages go: an SMTP relay (pooled connections, TLS through rustls) or the
//! outbox folder of `.eml` files that embedded mode uses.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use waymark_engine::ErrorKind;

use super::MailError;

#[derive(Clone)]
pub(crate) enum Transport {
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        /// The URL without credentials, for logs and the ledger.
        endpoint: String,
        timeout: Duration,
    },
    Outbox {
        dir: PathBuf,
    },
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// SMTP settings beside the URL.
#[derive(Debug, Clone)]
pub struct SmtpOptions {
    /// Bounds one whole send (connect, TLS, AUTH, every command and the body).
    pub timeout: Duration,
    /// Connections kept open to the relay.
    pub pool_size: u32,
    /// A PEM file with an extra root certificate to trust for TLS (a private relay's
    /// CA), on top of the standard web roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for SmtpOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            pool_size: 4,
            ca_file: None,
        }
    }
}

impl Transport {
    /// `smtp://host:port` (plain), `smtp://…?tls=required` (STARTTLS), `smtps://…`
    /// (TLS from the first byte); `user:password@` in front of the host authenticates.
    pub fn smtp(url: &str, options: &SmtpOptions) -> Result<Transport, MailError> {
        let config = |message: String| MailError::Config(message);
        let parsed = url::Url::parse(url)
            .map_err(|e| config(format!("WAYMARK_SMTP_URL is not a URL: {e}")))?;
        let host = parsed
            .host_str()
            .ok_or_else(|| config("WAYMARK_SMTP_URL has no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| config(format!("WAYMARK_SMTP_URL {}: {e}", redact(&parsed))))?;
        if let Some(ca_file) = &options.ca_file {
            let tls = tls_parameters(&host, ca_file)?;
            let tls_mode = parsed
                .query_pairs()
                .find(|(k, _)| k == "tls")
                .map(|(_, v)| v.into_owned());
            // Same mapping as lettre's `from_url`, with the extra root added.
            builder = match (parsed.scheme(), tls_mode.as_deref()) {
                ("smtps", _) => builder.tls(Tls::Wrapper(tls)),
                ("smtp", Some("required")) => builder.tls(Tls::Required(tls)),
                ("smtp", Some("opportunistic")) => builder.tls(Tls::Opportunistic(tls)),
                _ => builder,
            };
        }
        let transport = builder
            .timeout(Some(options.timeout))
            .pool_config(PoolConfig::new().max_size(options.pool_size.max(1)))
            .build();
        Ok(Transport::Smtp {
            transport,
            endpoint: redact(&parsed),
            timeout: options.timeout,
        })
    }

    pub fn outbox(dir: PathBuf) -> Transport {
        Transport::Outbox { dir }
    }

    /// `smtp://host:port` or `outbox:/path`, never with credentials.
    pub fn describe(&self) -> String {
        match self {
            Transport::Smtp { endpoint, .. } => endpoint.clone(),
            Transport::Outbox { dir } => format!("outbox:{}", dir.display()),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Transport::Smtp { .. } => "smtp",
            Transport::Outbox { .. } => "outbox",
        }
    }

    /// Hands `message` over. `file_stem` names the outbox file: one file per key, so a
    /// resend in the crash window replaces the first instead of adding a second.
    pub async fn send(&self, message: &Message, file_stem: &str) -> Result<(), MailError> {
        match self {
            Transport::Smtp {
                transport, timeout, ..
            } => match tokio::time::timeout(*timeout, transport.send(message.clone())).await {
                Ok(Ok(_response)) => Ok(()),
                Ok(Err(error)) => Err(classify(error)),
                Err(_) => Err(MailError::Timeout(*timeout)),
            },
            Transport::Outbox { dir } => write_eml(dir, file_stem, &message.formatted())
                .await
                .map_err(|source| MailError::Outbox {
                    path: dir.join(format!("{file_stem}.eml")),
                    source,
                }),
        }
    }
}

fn tls_parameters(host: &str, ca_file: &Path) -> Result<TlsParameters, MailError> {
    let pem = std::fs::read(ca_file).map_err(|e| {
        MailError::Config(format!(
            "cannot read WAYMARK_SMTP_CA_FILE {}: {e}",
            ca_file.display()
        ))
    })?;
    let certificate = Certificate::from_pem(&pem).map_err(|e| {
        MailError::Config(format!(
            "WAYMARK_SMTP_CA_FILE {} is not a PEM certificate: {e}",
            ca_file.display()
        ))
    })?;
    TlsParameters::builder(host.to_owned())
        .add_root_certificate(certificate)
        .build_rustls()
        .map_err(|e| MailError::Config(format!("SMTP TLS settings: {e}")))
}

fn redact(url: &url::Url) -> String {
    let mut url = url.clone();
    let _ = url.set_password(None);
    let _ = url.set_username("");
    url.to_string()
}

/// Writes `bytes` to `dir/stem.eml` through a temporary file and a rename, so a reader
/// (or a crash) never sees half a message.
async fn write_eml(dir: &Path, stem: &str, bytes: &[u8]) -> std::io::Result<()> {
    tokio::fs::create_dir_all(dir).await?;
    let tmp = dir.join(format!(".{stem}.{}.tmp", uuid::Uuid::now_v7().simple()));
    let result = async {
        let mut file = tokio::fs::File::create(&tmp).await?;
        tokio::io::AsyncWriteExt::write_all(&mut file, bytes).await?;
        file.sync_all().await?;
        tokio::fs::rename(&tmp, dir.join(format!("{stem}.eml"))).await
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}

/// Whether an SMTP reply code means "try again later" or "never".
///
/// 4xx is transient and 5xx permanent (RFC 5321 §4.2.1), with one exception: RFC 5321
/// §4.5.3.1.10 says a 552 for "too many recipients" is really a 452 and clients should
/// treat it as temporary.
pub fn reply_kind(code: u16) -> ErrorKind {
    match code {
        552 => ErrorKind::Retryable,
        500..=599 => ErrorKind::Fatal,
        _ => ErrorKind::Retryable,
    }
}

fn classify(error: lettre::transport::smtp::Error) -> MailError {
    if let Some(code) = error.status() {
        let code = u16::from(code);
        let message = std::error::Error::source(&error)
            .map(|s| s.to_string())
            .unwrap_or_default();
        return match reply_kind(code) {
            ErrorKind::Fatal => MailError::Rejected { code, message },
            ErrorKind::Retryable => MailError::Deferred { code, message },
        };
    }
    if error.is_client() {
        // Raised before anything is sent when the relay cannot do what the URL asks
        // (no STARTTLS, no usable AUTH mechanism): the same request would fail again.
        return MailError::Config(format!(
            "the SMTP relay cannot be used as configured: {error}"
        ));
    }
    MailError::Connection(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_codes_are_classified_by_rfc_5321() {
        for code in [421, 450, 451, 452, 454] {
            assert_eq!(reply_kind(code), ErrorKind::Retryable, "{code}");
        }
        for code in [500, 501, 530, 535, 550, 551, 553, 554] {
            assert_eq!(reply_kind(code), ErrorKind::Fatal, "{code}");
        }
        assert_eq!(
            reply_kind(552),
            ErrorKind::Retryable,
            "552 is a 452 in disguise"
        );
    }

    // The pool spawns its reaper on the runtime, so building a transport needs one.
    #[tokio::test]
    async fn smtp_urls_are_checked_and_credentials_never_shown() {
        let t = Transport::smtp(
            "smtps://user:s3cret@mail.example.com:465",
            &SmtpOptions::default(),
        )
        .unwrap();
        assert_eq!(t.describe(), "smtps://mail.example.com:465");
        let t = Transport::smtp(
            "smtp://user:s3cret@mail.example.com:587?tls=required",
            &SmtpOptions::default(),
        )
        .unwrap();
        assert!(!t.describe().contains("s3cret"));
        for bad in [
            "not a url",
            "ftp://mail.example.com",
            "smtp://host?tls=sometimes",
        ] {
            let err = Transport::smtp(bad, &SmtpOptions::default()).unwrap_err();
            assert!(matches!(err, MailError::Config(_)), "{bad}: {err:?}");
            assert!(!err.to_string().contains("s3cret"));
        }
        let err = Transport::smtp(
            "smtp://127.0.0.1:25?tls=required",
            &SmtpOptions {
                ca_file: Some("/nonexistent/ca.pem".into()),
                ..SmtpOptions::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("WAYMARK_SMTP_CA_FILE"), "{err}");
    }

    #[tokio::test]
    async fn outbox_files_are_written_whole_and_replaced_per_key() {
        let dir = std::env::temp_dir().join(format!("waymark-outbox-{}", uuid::Uuid::now_v7()));
        write_eml(&dir, "abc", b"first").await.unwrap();
        write_eml(&dir, "abc", b"second").await.unwrap();
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec!["abc.eml".to_owned()]);
        assert_eq!(std::fs::read(dir.join("abc.eml")).unwrap(), b"second");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
