//! Configuration: every setting is a flag and an environment variable with a documented
//! default; `waymark --help` lists them all.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use waymark_engine::store::StoreConfig;

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

#[derive(Debug, Clone, Copy, Subcommand)]
pub enum Command {
    /// API, workers and schedules in one process (the default).
    Serve,
    /// Workers only, to scale out over PostgreSQL (refused on embedded SQLite).
    Worker,
    /// Apply database migrations and exit.
    Migrate,
}

#[derive(Debug, Args)]
pub struct Config {
    /// PostgreSQL URL (postgres://…). Unset: embedded SQLite in the data directory.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    /// Where embedded data lives (the SQLite database, later outbox and blobs).
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
    #[arg(long, env = "WAYMARK_LEASE", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    pub lease: Duration,

    /// Fallback poll for due runs (notifications wake workers at once).
    #[arg(long, env = "WAYMARK_POLL_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration, global = true)]
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
    #[arg(long, env = "WAYMARK_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub shutdown_grace: Duration,

    /// Size limit in bytes for a run's input, state data and output.
    #[arg(long, env = "WAYMARK_MAX_PAYLOAD", default_value_t = 256 * 1024, global = true)]
    pub max_payload: usize,

    /// Finished runs are deleted this long after they finish.
    #[arg(long, env = "WAYMARK_RETENTION", default_value = "30d", value_parser = humantime::parse_duration, global = true)]
    pub retention: Duration,

    /// How often the retention sweep runs.
    #[arg(long, env = "WAYMARK_RETENTION_INTERVAL", default_value = "1h", value_parser = humantime::parse_duration, global = true)]
    pub retention_interval: Duration,

    /// PostgreSQL pool size per process.
    #[arg(
        long,
        env = "WAYMARK_DB_MAX_CONNECTIONS",
        default_value_t = 10,
        global = true
    )]
    pub db_max_connections: u32,

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
            },
            _ => StoreConfig::Sqlite {
                path: self.data_dir.join("waymark.db"),
            },
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self.store() {
            StoreConfig::Postgres { .. } => "PostgreSQL",
            StoreConfig::Sqlite { .. } => "SQLite",
        }
    }
}
