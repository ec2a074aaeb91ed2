//! `waymark`: wires configuration, tracing, the store, the API and the workers.

mod config;

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use waymark_engine::store::StoreConfig;
use waymark_engine::{Engine, Limits, Store, SystemClock};
use waymark_workers::scheduler::{Scheduler, SchedulerConfig};
use waymark_workers::{Runner, RunnerConfig};
use waymark_workflows::disputes::network::{Network, SimulatedDecision};

use crate::config::{Cli, Command, Config, KeysCommand};
use waymark_engine::keys::{IssueKey, Scope, Sealer, Secret};

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
    if matches!(command, Command::Serve | Command::Worker)
        && config
            .capabilities
            .iter()
            .any(|c| c == waymark_workflows::videos::tools::TRANSCODE)
    {
        // A worker offering `transcode` without ffmpeg would claim renditions it cannot make.
        match waymark_workflows::videos::tools::Tools::locate() {
            Ok(tools) => {
                tracing::info!(ffmpeg = %tools.ffmpeg.display(), ffprobe = %tools.ffprobe.display(), "transcode tools found")
            }
            Err(error) => {
                eprintln!("waymark: cannot offer `transcode`: {error}");
                return Ok(std::process::ExitCode::from(2));
            }
        }
    }
    let store = Store::connect(&store_config)
        .await
        .with_context(|| format!("cannot open the {} database", config.backend_name()))?
        .with_schemas([waymark_workflows::schemas(), waymark_api::schemas()].concat());
    store
        .migrate()
        .await
        .context("cannot migrate the database")?;
    if matches!(command, Command::Migrate) {
        println!("waymark: database migrated ({})", store.backend());
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if let Command::Keys(KeysCommand::Create {
        admin,
        tenant,
        scopes,
        name,
    }) = &command
    {
        return keys_create(&store, *admin, tenant, scopes, name.clone()).await;
    }
    if matches!(command, Command::Serve) {
        bootstrap_admin_key(&store, &config).await?;
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

    let master_key_file = config.data_dir.join("master.key");
    let sealer = match &config.master_key {
        Some(text) => Sealer::from_base64(text).context("invalid WAYMARK_MASTER_KEY")?,
        None => Sealer::load_or_create(&master_key_file).context("cannot load the master key")?,
    };
    let shared_database = matches!(store_config, StoreConfig::Postgres { .. });
    if let Some(refusal) = check_master_key(
        &store,
        &sealer,
        config.master_key.is_some(),
        shared_database,
        &master_key_file,
    )
    .await?
    {
        eprintln!("waymark: {refusal}");
        return Ok(std::process::ExitCode::from(2));
    }

    // Tenants: the plans every process and the API agree on, and what the sagas need.
    let plans = waymark_workflows::tenants::plans::parse_plans(&config.tenant_plans)
        .map_err(anyhow::Error::msg)
        .context("invalid WAYMARK_TENANT_PLANS")?;
    waymark_workflows::tenants::plans::sync(&store, &plans, chrono::Utc::now())
        .await
        .context("cannot store the tenant plans")?;
    let dispute_network = dispute_network(&config)?;
    let registry = waymark_workflows::registry(waymark_workflows::Deps {
        store: store.clone(),
        mailer: mailer.clone(),
        blobs: blobs.clone(),
        sealer: sealer.clone(),
        data_dir: config.data_dir.clone(),
        tenant_retention: config.tenant_retention,
        rotation: waymark_workflows::key_rotation::RotationSettings {
            reveal_max_wait: config.rotation_reveal_max_wait,
            ..Default::default()
        },
        dispute_network: dispute_network.clone(),
        disputes: waymark_workflows::disputes::DisputeSettings {
            decision_timeout: config.dispute_decision_timeout,
            appeal_window: config.dispute_appeal_window,
            ..Default::default()
        },
        meetings: waymark_workflows::meetings::MeetingSettings {
            public_url: config.blobs().public_url,
            ..Default::default()
        },
    })
    .context("invalid built-in workflow")?;
    let engine =
        Engine::new(store, Arc::new(registry), Arc::new(SystemClock)).with_limits(Limits {
            max_payload: config.max_payload,
        });
    let shutdown = CancellationToken::new();
    tokio::spawn(wait_for_signal(shutdown.clone()));

    let runner = Runner::new(engine.clone(), runner_config(&config));
    let worker_id = runner.worker_id();
    let workers = tokio::spawn(runner.run(shutdown.clone()));
    ensure_housekeeping(&engine, config.retention).await?;
    let scheduler = tokio::spawn(
        Scheduler::new(engine.clone(), SchedulerConfig::default()).run(shutdown.clone()),
    );

    if matches!(command, Command::Serve) {
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let addr = listener.local_addr()?;
        if let (Network::Simulator(sim), None) = (&dispute_network, &config.public_url) {
            // The simulator's decisions come back to this server's own address.
            let host = match addr.ip() {
                ip if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
                ip => ip,
            };
            let base = format!("http://{}", std::net::SocketAddr::new(host, addr.port()));
            sim.set_webhook_base(url::Url::parse(&base)?);
        }
        // Tests and scripts read this line to find a port chosen by the OS.
        println!(
            "waymark: listening on http://{addr} ({})",
            engine.store.backend()
        );
        let app = waymark_api::app(waymark_api::AppState {
            engine: engine.clone(),
            blobs: Some(blobs.clone()),
            api: waymark_api::ApiConfig {
                rate_limit: config.rate_limit,
                max_waiting: config.max_waiting,
                max_waiting_per_key: config.max_waiting_per_key,
                metrics_token: config.metrics_token.clone(),
                sealer: sealer.clone(),
                rotation_grace: config.rotation_grace,
                ui: waymark_api::ui::UiConfig {
                    public_url: config.public_url.clone(),
                    ..Default::default()
                },
                ..waymark_api::ApiConfig::default()
            },
        });
        let stop = shutdown.clone();
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
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
    scheduler.await?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// The card network disputes go to: over HTTP, or the embedded simulator (deciding as
/// configured, its decisions sent to `WAYMARK_PUBLIC_URL` when set, else to the address
/// `serve` binds).
fn dispute_network(config: &Config) -> anyhow::Result<Network> {
    let network = match (
        &config.dispute_network_url,
        config.dispute_simulator_decision.as_str(),
    ) {
        (Some(url), _) => Network::http(url.clone(), std::time::Duration::from_secs(30)),
        (None, "none") => Network::simulator(),
        (None, outcome) => Network::simulator_deciding(SimulatedDecision {
            outcome: outcome.to_owned(),
            delay: config.dispute_simulator_delay,
        }),
    };
    if let (Network::Simulator(sim), Some(public)) = (&network, &config.public_url) {
        sim.set_webhook_base(url::Url::parse(public).context("invalid WAYMARK_PUBLIC_URL")?);
    }
    Ok(network)
}

/// Why this process must not start with its master key, if it must not. With
/// PostgreSQL, processes on several hosts would each generate their own `master.key`,
/// and a secret one sealed could not be revealed through another: so once a sealed
/// secret exists, `serve` and `worker` need the master key shared through
/// `WAYMARK_MASTER_KEY`. (A reveal by a process with another key is refused and keeps
/// the secret, so nothing is lost meanwhile.) Secrets sealed by a master key this
/// process lacks are reported either way.
async fn check_master_key(
    store: &Store,
    sealer: &Sealer,
    from_env: bool,
    shared_database: bool,
    key_file: &std::path::Path,
) -> anyhow::Result<Option<String>> {
    let sealed_by = store
        .keys_sealed_by()
        .await
        .context("cannot count the sealed key secrets")?;
    let name = |id: &Option<String>| match id {
        Some(id) => id.clone(),
        None => "unrecorded (sealed before master key ids were kept)".to_owned(),
    };
    let total: i64 = sealed_by.iter().map(|(_, n)| n).sum();
    if shared_database && !from_env {
        if total == 0 {
            tracing::warn!(master_key = sealer.key_id(), file = %key_file.display(),
                "PostgreSQL without WAYMARK_MASTER_KEY: give every process the same master key \
                 before a secret is sealed, or `serve` and `worker` will refuse to start");
            return Ok(None);
        }
        let ids: Vec<String> = sealed_by.iter().map(|(id, _)| name(id)).collect();
        let held_here = sealed_by
            .iter()
            .any(|(id, _)| id.as_deref() == Some(sealer.key_id()));
        let hint = if held_here {
            format!(
                "this host's {} is that key (id {}): give its contents to every process",
                key_file.display(),
                sealer.key_id()
            )
        } else {
            format!(
                "this host's {} has id {}; the key is the master.key of the host that sealed them",
                key_file.display(),
                sealer.key_id()
            )
        };
        return Ok(Some(format!(
            "{total} sealed key secret(s) wait to be revealed (sealed by master key {}). With PostgreSQL \
             every `waymark serve` and `waymark worker` must share one master key, or a secret sealed \
             by one process cannot be revealed through another: set WAYMARK_MASTER_KEY (32 bytes, \
             base64) on every process; {hint}.",
            ids.join(", ")
        )));
    }
    for (id, count) in sealed_by
        .iter()
        .filter(|(id, _)| id.as_deref() != Some(sealer.key_id()))
    {
        tracing::warn!(sealed_by = %name(id), count, master_key = sealer.key_id(),
            "sealed key secrets were sealed by another master key: this process cannot reveal them");
    }
    Ok(None)
}

/// Waymark's own housekeeping is a schedule an operator can see and change: created
/// on first start, its retention input kept in step with `WAYMARK_RETENTION`.
async fn ensure_housekeeping(
    engine: &Engine,
    retention: std::time::Duration,
) -> anyhow::Result<()> {
    use waymark_engine::store::{CatchUp, Overlap, Schedule};
    use waymark_workflows::housekeeping as hk;
    let now = chrono::Utc::now();
    let input =
        serde_json::json!({ "older_than": humantime::format_duration(retention).to_string() });
    let cron = waymark_engine::cron::CronSchedule::parse(hk::SCHEDULE_CRON, "UTC")?;
    let schedule = Schedule {
        id: uuid::Uuid::now_v7(),
        tenant: hk::TENANT.into(),
        name: hk::SCHEDULE_NAME.into(),
        cron: hk::SCHEDULE_CRON.into(),
        timezone: "UTC".into(),
        workflow: "waymark.retention".into(),
        input: input.clone(),
        overlap: Overlap::Skip,
        catch_up: CatchUp::RunOnce,
        paused: false,
        last_fired_at: now,
        next_fire_at: cron.next_after(now),
        last_run_id: None,
        buffered_fire_at: None,
        created_at: now,
        updated_at: now,
        created_by: "waymark".into(),
    };
    if engine
        .store
        .schedule_insert(&schedule, true)
        .await?
        .is_none()
    {
        let scope = waymark_engine::TenantScope::Tenant(hk::TENANT.into());
        let existing = engine
            .store
            .schedule_list(&scope)
            .await?
            .into_iter()
            .find(|s| s.name == hk::SCHEDULE_NAME);
        if let Some(mut existing) = existing.filter(|s| s.input != input) {
            existing.input = input;
            existing.updated_at = now;
            engine.store.schedule_update(&existing).await?;
        }
    }
    Ok(())
}

/// On first start with no key at all, creates the admin key: the one given in
/// `WAYMARK_BOOTSTRAP_KEY`, or a new one printed once and written to
/// `$WAYMARK_DATA_DIR/admin.key` (readable by the owner only).
async fn bootstrap_admin_key(store: &Store, config: &Config) -> anyhow::Result<()> {
    if store.keys_count().await? > 0 {
        return Ok(());
    }
    let given = match &config.bootstrap_key {
        Some(text) => Some(Secret::parse(text).context(
            "WAYMARK_BOOTSTRAP_KEY must look like wmk_<12 lowercase hex>_<at least 32 characters of A-Z a-z 0-9 - _>",
        )?),
        None => None,
    };
    let from_env = given.is_some();
    let (record, secret) = waymark_engine::keys::issue(
        store,
        IssueKey {
            tenant: "system".into(),
            scopes: vec![Scope::Admin],
            name: Some("bootstrap admin".into()),
            owner_email: None,
            expires_at: None,
            actor: "bootstrap".into(),
            address: None,
        },
        given,
        chrono::Utc::now(),
    )
    .await
    .context("cannot create the bootstrap admin key")?;
    if from_env {
        tracing::info!(key = %record.id, "created the admin key from WAYMARK_BOOTSTRAP_KEY");
        return Ok(());
    }
    let path = config.data_dir.join("admin.key");
    write_private(&path, secret.expose())
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!(
        "waymark: created the admin key (shown once, also in {}): {}",
        path.display(),
        secret.expose()
    );
    Ok(())
}

/// Writes `content` to a new file only its owner can read.
fn write_private(path: &std::path::Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    // `mode` applies only when the file is created: one left from before keeps its
    // permissions unless they are set again.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    writeln!(file, "{content}")
}

async fn keys_create(
    store: &Store,
    admin: bool,
    tenant: &str,
    scopes: &[String],
    name: Option<String>,
) -> anyhow::Result<std::process::ExitCode> {
    if !waymark_engine::is_valid_tenant(tenant) {
        eprintln!(
            "waymark: --tenant {tenant:?} is not a valid slug (expected ^[a-z][a-z0-9-]{{2,39}}$)"
        );
        return Ok(std::process::ExitCode::from(2));
    }
    let scopes = if admin {
        vec![Scope::Admin]
    } else {
        let mut parsed = Vec::new();
        for scope in scopes {
            match Scope::parse(scope) {
                Some(Scope::Admin) | None => {
                    eprintln!("waymark: --scopes {scope:?} is not reader or operator (use --admin for an admin key)");
                    return Ok(std::process::ExitCode::from(2));
                }
                Some(s) => parsed.push(s),
            }
        }
        parsed
    };
    let (record, secret) = waymark_engine::keys::issue(
        store,
        IssueKey {
            tenant: tenant.to_owned(),
            scopes,
            name,
            owner_email: None,
            expires_at: None,
            actor: "cli".into(),
            address: None,
        },
        None,
        chrono::Utc::now(),
    )
    .await
    .context("cannot create the key")?;
    println!(
        "waymark: created key {} (tenant {}); its secret, shown once:",
        record.id, record.tenant
    );
    println!("{}", secret.expose());
    Ok(std::process::ExitCode::SUCCESS)
}

fn runner_config(config: &Config) -> RunnerConfig {
    RunnerConfig {
        concurrency: config.concurrency,
        lease: config.lease,
        poll_interval: config.poll_interval,
        capabilities: config.capabilities.clone(),
        shutdown_grace: config.shutdown_grace,
        worker_retention: config.worker_retention,
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
