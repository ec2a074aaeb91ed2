//! `waymark`: wires configuration, tracing, the store, the API and the workers.

mod config;

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use waymark_engine::store::StoreConfig;
use waymark_engine::{Engine, Limits, Store, SystemClock};
use waymark_workers::{Runner, RunnerConfig};

use crate::config::{Cli, Command, Config};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.config.log);
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            // `{:#}` prints the whole cause chain on one line.
            tracing::error!("{error:#}");
            eprintln!("waymark: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let config = cli.config;
    let command = cli.command.unwrap_or(Command::Serve);
    let store_config = config.store();
    if matches!(command, Command::Worker) {
        if let StoreConfig::Sqlite { .. } = store_config {
            eprintln!(
                "waymark: `waymark worker` needs PostgreSQL (set DATABASE_URL=postgres://…). \
                 Embedded SQLite mode is a single process: use `waymark serve`, which runs the workers too."
            );
            return Ok(std::process::ExitCode::from(2));
        }
    }
    let store = Store::connect(&store_config)
        .await
        .with_context(|| format!("cannot open the {} database", config.backend_name()))?;
    store
        .migrate()
        .await
        .context("cannot migrate the database")?;
    if matches!(command, Command::Migrate) {
        println!("waymark: database migrated ({})", store.backend());
        return Ok(std::process::ExitCode::SUCCESS);
    }

    // Built before the workflows so that a malformed SMTP URL, sender or signing key
    // stops the process now rather than failing a step later. (S3 is first contacted by
    // the first blob operation, so an S3 outage does not keep Waymark from starting.)
    let mailer = waymark_services::Mailer::from_config(&config.mail(), store.clone())
        .context("invalid mail configuration")?;
    let blobs = waymark_services::BlobStore::from_config(config.blobs())
        .await
        .context("invalid blob store configuration")?;
    tracing::info!(mail = %mailer.describe(), blobs = %blobs.describe(), "services configured");

    let registry = waymark_workflows::registry().context("invalid built-in workflow")?;
    let engine =
        Engine::new(store, Arc::new(registry), Arc::new(SystemClock)).with_limits(Limits {
            max_payload: config.max_payload,
        });
    let shutdown = CancellationToken::new();
    tokio::spawn(wait_for_signal(shutdown.clone()));

    let runner = Runner::new(engine.clone(), runner_config(&config));
    let worker_id = runner.worker_id();
    let workers = tokio::spawn(runner.run(shutdown.clone()));
    let retention = tokio::spawn(waymark_workers::retention::run(
        engine.clone(),
        config.retention,
        config.retention_interval,
        shutdown.clone(),
    ));

    if matches!(command, Command::Serve) {
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        // Tests and scripts read this line to find a port chosen by the OS.
        println!(
            "waymark: listening on http://{addr} ({})",
            engine.store.backend()
        );
        let app = waymark_api::app(waymark_api::AppState {
            engine: engine.clone(),
            blobs: Some(blobs.clone()),
        });
        let stop = shutdown.clone();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .context("HTTP server failed")?;
    } else {
        println!(
            "waymark: worker {worker_id} started ({})",
            engine.store.backend()
        );
        shutdown.cancelled().await;
    }

    workers.await?.context("worker failed")?;
    retention.await?;
    Ok(std::process::ExitCode::SUCCESS)
}

fn runner_config(config: &Config) -> RunnerConfig {
    RunnerConfig {
        concurrency: config.concurrency,
        lease: config.lease,
        poll_interval: config.poll_interval,
        capabilities: config.capabilities.clone(),
        shutdown_grace: config.shutdown_grace,
        ..RunnerConfig::default()
    }
}

/// SIGINT or SIGTERM starts a graceful shutdown.
async fn wait_for_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("cannot install the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
    shutdown.cancel();
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
