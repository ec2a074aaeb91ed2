//! Configuration: every setting is a flag and an environment variable with a documented
//! default; `waymark --help` lists them all.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, Parser, Subcommand};
use waymark_engine::store::StoreConfig;
use waymark_services::{BlobConfig, MailConfig, S3Config, SmtpOptions};

#[derive(Debug, Parser)]
#[command(
    name = "waymark",
    version,
    about = "Durable workflow engine: explicit state machines checkpointed in PostgreSQL or embedded SQLite.",
    long_about = None,
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// API, workers and schedules in one process (the default).
    Serve,
    /// Workers only, to scale out over PostgreSQL (refused on embedded SQLite).
    Worker,
    /// Manage API keys directly in the database (run on the server).
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Apply database migrations and exit.
    Migrate,
}

#[derive(Debug, Clone, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print its secret once (recovers from a lost admin key).
    Create {
        /// An admin key (all tenants, everything).
        #[arg(long)]
        admin: bool,
        /// The key's tenant.
        #[arg(long, default_value = "system")]
        tenant: String,
        /// Scopes when not --admin: reader, operator.
        #[arg(long, value_delimiter = ',', default_value = "reader")]
        scopes: Vec<String>,
        /// A name to recognise it by.
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct Config {
    /// PostgreSQL URL (postgres://…). Unset: embedded SQLite in the data directory.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// Where embedded data lives (the SQLite database, the mail outbox, blobs and the
    /// blob signing key).
    #[arg(
        long,
        env = "WAYMARK_DATA_DIR",
        default_value = "./waymark-data",
        global = true
    )]
    pub data_dir: PathBuf,

    /// Address the HTTP API listens on (port 0 picks a free port).
    #[arg(
        long,
        env = "WAYMARK_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen: String,

    /// Steps a process executes at once.
    #[arg(
        long,
        env = "WAYMARK_WORKER_CONCURRENCY",
        default_value_t = 16,
        global = true
    )]
    pub concurrency: usize,

    /// Lease on a claimed run; heartbeats renew it every third of it.
    #[arg(long, env = "WAYMARK_LEASE", default_value = "30s", value_parser = bounded_duration, global = true)]
    pub lease: Duration,

    /// Fallback poll for due runs (notifications wake workers at once).
    #[arg(long, env = "WAYMARK_POLL_INTERVAL", default_value = "5s", value_parser = bounded_duration, global = true)]
    pub poll_interval: Duration,

    /// Comma-separated capabilities this process advertises (e.g. transcode).
    #[arg(
        long,
        env = "WAYMARK_CAPABILITIES",
        value_delimiter = ',',
        global = true
    )]
    pub capabilities: Vec<String>,

    /// How long running steps may finish after SIGTERM before their runs are released.
    #[arg(long, env = "WAYMARK_SHUTDOWN_GRACE", default_value = "10s", value_parser = bounded_duration, global = true)]
    pub shutdown_grace: Duration,

    /// Workers stopped or silent this long leave the worker registry.
    #[arg(long, env = "WAYMARK_WORKER_RETENTION", default_value = "24h", value_parser = bounded_duration, global = true)]
    pub worker_retention: Duration,

    /// Size limit in bytes for a run's input, state data and output.
    #[arg(long, env = "WAYMARK_MAX_PAYLOAD", default_value_t = 256 * 1024, global = true)]
    pub max_payload: usize,

    /// Finished runs are deleted this long after they finish (by the built-in
    /// `retention` schedule, daily at 03:17 UTC, whose input this sets).
    #[arg(long, env = "WAYMARK_RETENTION", default_value = "30d", value_parser = bounded_duration, global = true)]
    pub retention: Duration,

    /// Deprovisioned tenants stay suspended (and restorable) this long before deletion.
    #[arg(long, env = "WAYMARK_TENANT_RETENTION", default_value = "30d", value_parser = bounded_duration, global = true)]
    pub tenant_retention: Duration,

    /// Tenant plans and their quotas: comma-separated `name:storage:runs` (storage in B,
    /// KB, MB, GB, TB or KiB, MiB, GiB, TiB; runs a count or `unlimited`).
    #[arg(long, env = "WAYMARK_TENANT_PLANS", default_value = waymark_workflows::tenants::plans::DEFAULT_PLANS, global = true)]
    pub tenant_plans: String,

    /// PostgreSQL pool size per process.
    #[arg(
        long,
        env = "WAYMARK_DB_MAX_CONNECTIONS",
        default_value_t = 10,
        global = true
    )]
    pub db_max_connections: u32,

    /// PostgreSQL connections per process kept for the runner's claims, commits and
    /// heartbeats, apart from the main pool, so API load cannot starve them.
    #[arg(
        long,
        env = "WAYMARK_DB_WORKER_CONNECTIONS",
        default_value_t = 4,
        value_parser = clap::value_parser!(u32).range(1..),
        global = true
    )]
    pub db_worker_connections: u32,

    /// SMTP relay: `smtp://host:25`, `smtp://user:pass@host:587?tls=required` (STARTTLS)
    /// or `smtps://user:pass@host:465`. Unset: messages are written as .eml files to
    /// DATA_DIR/outbox.
    #[arg(long, env = "WAYMARK_SMTP_URL", global = true, hide_env_values = true)]
    pub smtp_url: Option<String>,

    /// PEM file with an extra CA certificate to trust for SMTP TLS (a private relay).
    #[arg(long, env = "WAYMARK_SMTP_CA_FILE", global = true)]
    pub smtp_ca_file: Option<PathBuf>,

    /// Time limit for handing one message to the SMTP relay.
    #[arg(long, env = "WAYMARK_SMTP_TIMEOUT", default_value = "30s", value_parser = bounded_duration, global = true)]
    pub smtp_timeout: Duration,

    /// SMTP connections kept open per process.
    #[arg(
        long,
        env = "WAYMARK_SMTP_POOL_SIZE",
        default_value_t = 4,
        global = true
    )]
    pub smtp_pool_size: u32,

    /// Sender of messages that name none.
    #[arg(
        long,
        env = "WAYMARK_MAIL_FROM",
        default_value = "Waymark <waymark@localhost>",
        global = true
    )]
    pub mail_from: String,

    /// S3 bucket for blobs. Unset: blobs are files in DATA_DIR/blobs. Credentials come
    /// from the standard AWS sources (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, profiles…).
    #[arg(long, env = "WAYMARK_S3_BUCKET", global = true)]
    pub s3_bucket: Option<String>,

    /// S3-compatible endpoint (`http://127.0.0.1:8333`). Unset: AWS.
    #[arg(long, env = "WAYMARK_S3_ENDPOINT", global = true)]
    pub s3_endpoint: Option<String>,

    /// S3 region. Unset: AWS_REGION or the AWS profile, else us-east-1.
    #[arg(long, env = "WAYMARK_S3_REGION", global = true)]
    pub s3_region: Option<String>,

    /// Path-style S3 addressing (`endpoint/bucket/key`), as most S3-compatible servers need.
    #[arg(long, env = "WAYMARK_S3_PATH_STYLE", default_value = "false", action = ArgAction::Set, value_parser = BoolishValueParser::new(), global = true)]
    pub s3_path_style: bool,

    /// Part size in bytes for multipart uploads (at least 5 MiB); larger blobs use parts.
    #[arg(long, env = "WAYMARK_S3_PART_SIZE", default_value_t = 8 * 1024 * 1024, global = true)]
    pub s3_part_size: u64,

    /// Key (32+ characters) that signs local blob download links. Unset: a random key
    /// kept in DATA_DIR/blob-signing.key.
    #[arg(
        long,
        env = "WAYMARK_BLOB_SIGNING_KEY",
        global = true,
        hide_env_values = true
    )]
    pub blob_signing_key: Option<String>,

    /// Where clients reach this server, for local blob download links. Unset:
    /// http://WAYMARK_LISTEN.
    #[arg(long, env = "WAYMARK_PUBLIC_URL", global = true)]
    pub public_url: Option<String>,

    /// The master key sealing secrets kept for a one-time reveal: 32 bytes, base64.
    /// Unset: generated into `$WAYMARK_DATA_DIR/master.key` (owner-only) on first use.
    #[arg(
        long,
        env = "WAYMARK_MASTER_KEY",
        global = true,
        hide_env_values = true
    )]
    pub master_key: Option<String>,

    /// A key rotation's grace when the request names none.
    #[arg(long, env = "WAYMARK_ROTATION_GRACE", default_value = "24h", value_parser = bounded_duration, global = true)]
    pub rotation_grace: Duration,

    /// How long a scheduled rotation waits for its new secret to be revealed before it
    /// reminds the owner (it never revokes a key whose successor nobody has seen).
    #[arg(long, env = "WAYMARK_ROTATION_REVEAL_MAX_WAIT", default_value = "7d", value_parser = bounded_duration, global = true)]
    pub rotation_reveal_max_wait: Duration,

    /// The card network's dispute API (`POST {url}/disputes/{id}/submissions`); unset,
    /// an embedded simulator accepts every submission.
    #[arg(long, env = "WAYMARK_DISPUTE_NETWORK_URL", global = true)]
    pub dispute_network_url: Option<url::Url>,

    /// Without WAYMARK_DISPUTE_NETWORK_URL: what the embedded network simulator decides
    /// for each submission (`won`, `lost`, or `none` to accept and never decide). It
    /// sends `dispute.closed` to this server's own signed webhook route.
    #[arg(long, env = "WAYMARK_DISPUTE_SIMULATOR_DECISION", default_value = "won",
          value_parser = ["won", "lost", "none"], global = true)]
    pub dispute_simulator_decision: String,

    /// How long after a submission the simulator decides (a durable timer of the run).
    #[arg(long, env = "WAYMARK_DISPUTE_SIMULATOR_DELAY", default_value = "1m", value_parser = bounded_duration, global = true)]
    pub dispute_simulator_delay: Duration,

    /// A dispute with no decision this long after its submission escalates to an operator.
    #[arg(long, env = "WAYMARK_DISPUTE_DECISION_TIMEOUT", default_value = "75d", value_parser = bounded_duration, global = true)]
    pub dispute_decision_timeout: Duration,

    /// A lost dispute may be appealed (once) this long after the decision.
    #[arg(long, env = "WAYMARK_DISPUTE_APPEAL_WINDOW", default_value = "10d", value_parser = bounded_duration, global = true)]
    pub dispute_appeal_window: Duration,

    /// When set, `GET /metrics` requires `Authorization: Bearer <token>`.
    #[arg(
        long,
        env = "WAYMARK_METRICS_TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub metrics_token: Option<String>,

    /// API requests per second allowed per key (0: no limit).
    #[arg(long, env = "WAYMARK_RATE_LIMIT", default_value_t = 100, global = true)]
    pub rate_limit: u32,

    /// Status requests with `?wait=` this process holds at once; past it they answer 429.
    #[arg(
        long,
        env = "WAYMARK_MAX_WAITING",
        default_value_t = 1000,
        global = true
    )]
    pub max_waiting: usize,

    /// Status requests with `?wait=` one API key may hold at once; past it they answer 429.
    #[arg(
        long,
        env = "WAYMARK_MAX_WAITING_PER_KEY",
        default_value_t = 100,
        global = true
    )]
    pub max_waiting_per_key: usize,

    /// The admin key to create on first start, instead of a generated one
    /// (`wmk_<12 hex>_<secret>`). Unset: a key is generated, printed once and written to
    /// `$WAYMARK_DATA_DIR/admin.key`.
    #[arg(
        long,
        env = "WAYMARK_BOOTSTRAP_KEY",
        global = true,
        hide_env_values = true
    )]
    pub bootstrap_key: Option<String>,

    /// Log filter (tracing EnvFilter syntax, e.g. `info,waymark_workers=debug`).
    #[arg(long, env = "WAYMARK_LOG", default_value = "info", global = true)]
    pub log: String,
}

impl Config {
    pub fn store(&self) -> StoreConfig {
        match &self.database_url {
            Some(url) if !url.is_empty() => StoreConfig::Postgres {
                url: url.clone(),
                max_connections: self.db_max_connections,
                worker_connections: self.db_worker_connections,
            },
            _ => StoreConfig::Sqlite {
                path: self.data_dir.join("waymark.db"),
            },
        }
    }

    pub fn mail(&self) -> MailConfig {
        MailConfig {
            smtp_url: self.smtp_url.clone().filter(|u| !u.is_empty()),
            smtp: SmtpOptions {
                timeout: self.smtp_timeout,
                pool_size: self.smtp_pool_size,
                ca_file: self.smtp_ca_file.clone(),
            },
            outbox_dir: self.data_dir.join("outbox"),
            default_from: self.mail_from.clone(),
        }
    }

    pub fn blobs(&self) -> BlobConfig {
        BlobConfig {
            local_dir: self.data_dir.join("blobs"),
            public_url: self
                .public_url
                .clone()
                .unwrap_or_else(|| format!("http://{}", self.listen)),
            signing_key: self.blob_signing_key.clone(),
            signing_key_file: self.data_dir.join("blob-signing.key"),
            s3: self
                .s3_bucket
                .clone()
                .filter(|b| !b.is_empty())
                .map(|bucket| S3Config {
                    endpoint: self.s3_endpoint.clone(),
                    region: self.s3_region.clone(),
                    path_style: self.s3_path_style,
                    part_size: self.s3_part_size,
                    credentials: None,
                    ..S3Config::new(bucket)
                }),
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self.store() {
            StoreConfig::Postgres { .. } => "PostgreSQL",
            StoreConfig::Sqlite { .. } => "SQLite",
        }
    }
}

/// A duration setting: `humantime` syntax, at most the engine's longest duration, so no
/// setting can overflow the arithmetic of leases, timers and retention.
fn bounded_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    waymark_engine::workflow::check_duration(duration)
}
