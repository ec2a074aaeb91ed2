//! The `waymark` executable as an operator runs it: separate processes, signals,
//! SIGKILL mid-step.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use waymark_engine::{RunStatus, SystemClock, TenantScope};

use crate::support::{
    spawn_runner, start_req, test_runner_config, wait_for_run, wait_for_status, Backend, TestDb,
};

const BIN: &str = env!("CARGO_BIN_EXE_waymark");

/// A `waymark` process; killed when dropped so a failing test leaves nothing behind.
pub(crate) struct Proc {
    pub(crate) child: Child,
    pub(crate) addr: Option<String>,
    /// What it printed before it started.
    pub(crate) printed: Vec<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

pub(crate) fn command(db: &TestDb, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(crate::support::edge_log_env())
        .env("WAYMARK_LISTEN", "127.0.0.1:0")
        .env("WAYMARK_LEASE", "2s")
        .env("WAYMARK_POLL_INTERVAL", "200ms")
        .env("WAYMARK_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    match db.backend {
        Backend::Postgres => {
            cmd.env("DATABASE_URL", &db.location)
                .env("WAYMARK_DATA_DIR", db.data_dir());
        }
        Backend::Sqlite => {
            cmd.env(
                "WAYMARK_DATA_DIR",
                std::path::Path::new(&db.location).parent().unwrap(),
            );
        }
    }
    cmd
}

/// Starts `waymark` and waits for its first stdout line (the listening address, or
/// the worker's start line).
async fn spawn(db: &TestDb, args: &[&str]) -> Proc {
    spawn_with(command(db, args)).await
}

/// Starts `waymark` and reads its stdout up to the line saying it started: the
/// listening address (serve) or the worker's start line. Lines before it (the admin
/// key printed on first start) are kept.
pub(crate) async fn spawn_with(mut command: Command) -> Proc {
    let mut child = command.spawn().expect("spawn waymark");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut printed = Vec::new();
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("waymark did not start within a minute")
            .unwrap()
            .unwrap_or_else(|| panic!("waymark exited before it started; it printed {printed:?}"));
        if let Some(rest) = line.strip_prefix("waymark: listening on http://") {
            break Some(rest.split_whitespace().next().unwrap().to_owned());
        }
        if line.starts_with("waymark: worker ") {
            break None;
        }
        printed.push(line);
    };
    Proc {
        child,
        addr,
        printed,
    }
}

async fn serve_answers_health_and_readiness(backend: Backend) {
    let db = TestDb::new(backend).await;
    let proc = spawn(&db, &["serve"]).await;
    let base = format!("http://{}", proc.addr.as_ref().unwrap());
    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    let expected = match backend {
        Backend::Postgres => "postgres",
        Backend::Sqlite => "sqlite",
    };
    assert_eq!(body, json!({"status": "ready", "backend": expected}));
}

#[tokio::test]
async fn serve_answers_health_and_readiness_on_postgres() {
    serve_answers_health_and_readiness(Backend::Postgres).await
}

#[tokio::test]
async fn serve_answers_health_and_readiness_on_sqlite() {
    serve_answers_health_and_readiness(Backend::Sqlite).await
}

#[tokio::test]
async fn worker_refuses_embedded_sqlite_with_a_clear_message() {
    let db = TestDb::sqlite().await;
    let out = command(&db, &["worker"])
        .stderr(Stdio::piped())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs PostgreSQL"), "{stderr}");
    assert!(stderr.contains("waymark serve"), "{stderr}");
}

#[tokio::test]
async fn migrate_subcommand_migrates_and_exits() {
    let db = TestDb::sqlite().await;
    let out = command(&db, &["migrate"]).output().await.unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "waymark: database migrated (sqlite)"
    );
}

#[tokio::test]
async fn invalid_settings_are_refused_with_the_setting_named() {
    let db = TestDb::sqlite().await;
    let cases = [
        ("WAYMARK_LEASE", "soon", "--lease"),
        ("WAYMARK_WORKER_CONCURRENCY", "many", "--concurrency"),
        ("WAYMARK_MAX_PAYLOAD", "-1", "--max-payload"),
        // Past the longest duration the engine takes: refused, never an overflow later.
        ("WAYMARK_LEASE", "1000000y", "--lease"),
        ("WAYMARK_RETENTION", "36501d", "--retention"),
        (
            "WAYMARK_TENANT_RETENTION",
            "99999999999999999999y",
            "--tenant-retention",
        ),
    ];
    for (var, value, flag) in cases {
        let out = command(&db, &["migrate"])
            .env(var, value)
            .stderr(Stdio::piped())
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(flag) && stderr.contains(value),
            "{var}={value}: {stderr}"
        );
    }
    let out = command(&db, &["serve"])
        .env("WAYMARK_LISTEN", "not-an-address")
        .stderr(Stdio::piped())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen on not-an-address"));
    let out = command(&db, &["serve"])
        .env("DATABASE_URL", "postgres://127.0.0.1:1/nothing")
        .stderr(Stdio::piped())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open the PostgreSQL database"));
}

/// A `waymark` process is SIGKILLed while its step runs; after the lease expires the
/// run is claimed again and completes, with no duplicated history row.
async fn killed_process_run_completes_after_lease_expiry(backend: Backend) {
    let db = TestDb::new(backend).await;
    let args: &[&str] = match backend {
        Backend::Postgres => &["worker"],
        Backend::Sqlite => &["serve"],
    };
    // Only `demo` is started here; the spawned `waymark` serves the full registry.
    let mut registry = waymark_engine::workflow::Registry::new();
    registry.register(waymark_workflows::demo::Demo).unwrap();
    let engine = db.engine(registry, Arc::new(SystemClock));
    let run = engine
        .start(start_req("demo", json!({"name": "Ada", "work": "3s"})))
        .await
        .unwrap()
        .run;
    let mut first = spawn(&db, args).await;
    let held = wait_for_run(&db.store, run.id, "claimed and working", |r| {
        r.status == RunStatus::Running && r.progress_message.as_deref() == Some("working")
    })
    .await;
    first.child.start_kill().unwrap();
    first.child.wait().await.unwrap();

    // PostgreSQL: a second worker process takes over. SQLite: the one process restarts.
    let second = spawn(&db, args).await;
    let done = wait_for_status(&db.store, run.id, RunStatus::Completed).await;
    drop(second);
    assert_eq!(done.output, Some(json!({"greeting": "Hello, Ada!"})));
    assert!(
        done.lease_token > held.lease_token,
        "claimed again under a new fence"
    );
    let history = db
        .store
        .run_history(&TenantScope::All, run.id)
        .await
        .unwrap()
        .unwrap();
    let path: Vec<_> = history
        .iter()
        .map(|h| (h.to_state.as_str(), h.to_status, h.attempt))
        .collect();
    assert_eq!(
        path,
        vec![
            ("work", RunStatus::Pending, 0),
            // The killed attempt left no row; the second attempt committed once.
            ("greet", RunStatus::Running, 2),
            ("greet", RunStatus::Completed, 1),
        ]
    );
    assert_ne!(
        history[1].worker_id, held.locked_by,
        "a different worker finished it"
    );
}

#[tokio::test]
async fn killed_worker_process_run_completes_after_lease_expiry_on_postgres() {
    killed_process_run_completes_after_lease_expiry(Backend::Postgres).await
}

#[tokio::test]
async fn killed_serve_process_run_completes_after_restart_on_sqlite() {
    killed_process_run_completes_after_lease_expiry(Backend::Sqlite).await
}

/// Idle runners wake on NOTIFY, and after their LISTEN connection is killed they
/// reconnect and sweep: with the fallback poll set to an hour, only notifications can
/// get these runs done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_notifications_wake_idle_workers_and_survive_killed_connections() {
    let db = TestDb::postgres().await;
    let (registry, _) = crate::support::workflows::registry();
    let engine = db.engine(registry, Arc::new(SystemClock));
    let mut config = test_runner_config();
    config.poll_interval = Duration::from_secs(3600);
    let runner = spawn_runner(engine.clone(), config);
    // The runner is registered and idle before the first start.
    let store = db.store.clone();
    crate::support::wait_until("worker registered", Duration::from_secs(10), || {
        let store = store.clone();
        async move { !store.worker_list().await.unwrap().is_empty() }
    })
    .await;
    let first = engine
        .start(start_req("three_step", json!({"n": 1})))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, first.id, RunStatus::Completed).await;

    // Kill every other connection to this database, the LISTEN one included.
    let killed = db
        .scalar_i64(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()) t",
        )
        .await;
    assert!(killed >= 1, "the LISTEN connection was among those killed");
    for n in 0..5 {
        let run = engine
            .start(start_req("three_step", json!({"n": n})))
            .await
            .unwrap()
            .run;
        wait_for_status(&db.store, run.id, RunStatus::Completed).await;
    }
    runner.stop().await;
}

/// Under load, every connection to the database is killed repeatedly; every run still
/// completes exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_killed_under_load_every_run_still_completes() {
    let db = TestDb::postgres().await;
    let (registry, _) = crate::support::workflows::registry();
    let engine = db.engine(registry, Arc::new(SystemClock));
    let runners: Vec<_> = (0..2)
        .map(|_| spawn_runner(engine.clone(), test_runner_config()))
        .collect();
    let mut ids = Vec::new();
    for n in 0..60u32 {
        // Starting may hit a killed connection too: retry like a client would.
        let run = loop {
            match engine.start(start_req("three_step", json!({"n": n}))).await {
                Ok(started) => break started.run,
                Err(_) => tokio::task::yield_now().await,
            }
        };
        ids.push(run.id);
        if n % 10 == 5 {
            let _ = db
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                     WHERE datname = current_database() AND pid <> pg_backend_pid()",
                )
                .await;
        }
    }
    let store = db.reopen().await;
    for id in &ids {
        let done = wait_for_status(&store, *id, RunStatus::Completed).await;
        let history = store
            .run_history(&TenantScope::All, *id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            history.len(),
            4,
            "run {id}: one row per transition, none repeated"
        );
        assert!(done.output.is_some());
    }
    for runner in runners {
        runner.stop().await;
    }
}

#[tokio::test]
async fn help_lists_every_setting_with_its_environment_variable() {
    let out = Command::new(BIN).arg("--help").output().await.unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "DATABASE_URL",
        "WAYMARK_DATA_DIR",
        "WAYMARK_LISTEN",
        "WAYMARK_WORKER_CONCURRENCY",
        "WAYMARK_LEASE",
        "WAYMARK_POLL_INTERVAL",
        "WAYMARK_CAPABILITIES",
        "WAYMARK_SHUTDOWN_GRACE",
        "WAYMARK_MAX_PAYLOAD",
        "WAYMARK_RETENTION",
        "WAYMARK_DB_MAX_CONNECTIONS",
        "WAYMARK_LOG",
        "WAYMARK_RATE_LIMIT",
        "WAYMARK_BOOTSTRAP_KEY",
    ] {
        assert!(
            help.contains(&format!("env: {var}")),
            "--help does not list {var}"
        );
    }
    for command in ["serve", "worker", "migrate", "keys"] {
        assert!(help.contains(command), "--help does not list {command}");
    }
}

/// First start creates an admin key, prints it once and writes it to the data
/// directory readable by the owner only; it authenticates; a second start creates no
/// other. `waymark keys create --admin` recovers from a lost one.
#[tokio::test]
async fn first_start_creates_a_bootstrap_admin_key_and_keys_create_recovers_it() {
    let db = TestDb::sqlite().await;
    let data_dir = std::path::Path::new(&db.location)
        .parent()
        .unwrap()
        .to_path_buf();
    // A world-readable file left from an earlier installation is overwritten, and its
    // permissions are not kept.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let stale = data_dir.join("admin.key");
        std::fs::write(&stale, "stale").unwrap();
        std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let proc = spawn(&db, &["serve"]).await;
    let line = proc
        .printed
        .iter()
        .find(|l| l.starts_with("waymark: created the admin key"))
        .unwrap_or_else(|| panic!("no admin key line in {:?}", proc.printed))
        .clone();
    let secret = line.rsplit(' ').next().unwrap().to_owned();
    let file = data_dir.join("admin.key");
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), secret);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let base = format!("http://{}", proc.addr.as_ref().unwrap());
    let whoami: serde_json::Value = reqwest::Client::new()
        .get(format!("{base}/v1/whoami"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(whoami["scopes"], json!(["admin"]));
    drop(proc);

    let again = spawn(&db, &["serve"]).await;
    assert!(
        again.printed.iter().all(|l| !l.contains("admin key")),
        "{:?}",
        again.printed
    );
    drop(again);

    let out = command(&db, &["keys", "create", "--admin", "--name", "recovery"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let recovered = stdout.lines().last().unwrap().trim().to_owned();
    assert!(recovered.starts_with("wmk_") && recovered != secret);
    let proc = spawn(&db, &["serve"]).await;
    let base = format!("http://{}", proc.addr.as_ref().unwrap());
    let status = reqwest::Client::new()
        .get(format!("{base}/v1/whoami"))
        .bearer_auth(&recovered)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    // Bad arguments are refused with the argument named.
    for (args, needle) in [
        (vec!["keys", "create", "--tenant", "Bad Tenant"], "--tenant"),
        (vec!["keys", "create", "--scopes", "root"], "--scopes"),
        (vec!["keys", "create", "--scopes", "admin"], "--admin"),
    ] {
        let out = command(&db, &args)
            .stderr(Stdio::piped())
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(needle),
            "{args:?}"
        );
    }
}

/// `WAYMARK_BOOTSTRAP_KEY` becomes the admin key and is not printed; a malformed one
/// stops the start with a message naming the variable.
#[tokio::test]
async fn a_given_bootstrap_key_is_used_and_a_malformed_one_refused() {
    let db = TestDb::sqlite().await;
    let given = waymark_engine::keys::Secret::generate();
    let mut cmd = command(&db, &["serve"]);
    cmd.env("WAYMARK_BOOTSTRAP_KEY", given.expose());
    let proc = spawn_with(cmd).await;
    assert!(proc.printed.iter().all(|l| !l.contains(given.expose())));
    let base = format!("http://{}", proc.addr.as_ref().unwrap());
    let status = reqwest::Client::new()
        .get(format!("{base}/v1/whoami"))
        .bearer_auth(given.expose())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    drop(proc);
    let other = TestDb::sqlite().await;
    let out = command(&other, &["serve"])
        .env("WAYMARK_BOOTSTRAP_KEY", "letmein")
        .stderr(Stdio::piped())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("WAYMARK_BOOTSTRAP_KEY must look like"));
}

/// Secrets never reach the logs: with debug logging, create a key, use it, present a
/// wrong one; neither the new key's secret nor the admin key's appears on stderr.
#[tokio::test]
async fn secrets_are_absent_from_the_logs() {
    let db = TestDb::sqlite().await;
    let admin = waymark_engine::keys::Secret::generate();
    let mut cmd = command(&db, &["serve"]);
    cmd.env("WAYMARK_BOOTSTRAP_KEY", admin.expose())
        .env("WAYMARK_LOG", "debug")
        .stderr(Stdio::piped());
    let mut proc = spawn_with(cmd).await;
    let mut stderr = proc.child.stderr.take().unwrap();
    let collected = tokio::spawn(async move {
        let mut text = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text)
            .await
            .unwrap();
        text
    });
    let base = format!("http://{}", proc.addr.as_ref().unwrap());
    let http = reqwest::Client::new();
    let created: serde_json::Value = http
        .post(format!("{base}/v1/keys"))
        .bearer_auth(admin.expose())
        .json(&json!({"tenant": "acme", "scopes": ["operator"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = created["secret"].as_str().unwrap().to_owned();
    let run = http
        .post(format!("{base}/v1/workflows/demo/runs"))
        .bearer_auth(&secret)
        .json(&json!({"name": "Ada"}))
        .send()
        .await
        .unwrap();
    assert_eq!(run.status(), 201);
    let wrong = format!("{}x", &secret[..secret.len() - 1]);
    assert_eq!(
        http.get(format!("{base}/v1/whoami"))
            .bearer_auth(&wrong)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // Stop it gracefully so everything it logged is flushed.
    let pid = proc.child.id().unwrap();
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    proc.child.wait().await.unwrap();
    let logs = collected.await.unwrap();
    assert!(logs.contains("DEBUG"), "debug logging was on");
    for (what, value) in [
        ("new key", secret.as_str()),
        ("admin key", admin.expose()),
        ("wrong key", wrong.as_str()),
    ] {
        // Everything after `wmk_<prefix>_` (the secret itself may contain `_`).
        let secret_part = value.splitn(3, '_').nth(2).unwrap();
        assert!(secret_part.len() >= 32);
        assert!(
            !logs.contains(secret_part),
            "the {what}'s secret is in the logs"
        );
    }
}

/// Two `waymark serve` processes on one PostgreSQL share a one-second schedule; one of
/// them stops halfway (handing the scheduler lease over). Every second between the
/// first and the last fire has exactly one run: no duplicate, no gap.
#[tokio::test]
async fn two_processes_fire_a_one_second_schedule_exactly_once() {
    let db = TestDb::postgres().await;
    let admin = waymark_engine::keys::Secret::generate();
    let mut first = command(&db, &["serve"]);
    first.env("WAYMARK_BOOTSTRAP_KEY", admin.expose());
    let mut first = spawn_with(first).await;
    let mut second = command(&db, &["serve"]);
    second.env("WAYMARK_BOOTSTRAP_KEY", admin.expose());
    let second = spawn_with(second).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", second.addr.as_ref().unwrap());
    let created: serde_json::Value = http
        .post(format!("{base}/v1/schedules?tenant=acme"))
        .bearer_auth(admin.expose())
        .json(
            &json!({"name": "every-second", "cron": "* * * * * *", "workflow": "demo",
                      "input": {"name": "tick"}, "overlap": "allow"}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let filter = waymark_engine::store::RunFilter {
        tag: Some(format!("schedule:{id}")),
        ..Default::default()
    };
    let count = |store: waymark_engine::Store, filter: waymark_engine::store::RunFilter| async move {
        store
            .runs_list(&TenantScope::All, &filter, None, 1000)
            .await
            .unwrap()
            .len()
    };
    crate::support::wait_until("four fires", Duration::from_secs(60), || {
        let (store, filter) = (db.store.clone(), filter.clone());
        async move { count(store, filter).await >= 4 }
    })
    .await;
    // Stop one process gracefully: if it held the scheduler lease it hands it over.
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(first.child.id().unwrap().to_string())
        .status()
        .unwrap();
    first.child.wait().await.unwrap();
    let before = count(db.store.clone(), filter.clone()).await;
    crate::support::wait_until("four more fires", Duration::from_secs(60), || {
        let (store, filter) = (db.store.clone(), filter.clone());
        async move { count(store, filter).await >= before + 4 }
    })
    .await;
    let paused = http
        .patch(format!("{base}/v1/schedules/{id}"))
        .bearer_auth(admin.expose())
        .json(&json!({"paused": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(paused.status(), 200);
    drop(second);
    let runs = db
        .store
        .runs_list(&TenantScope::All, &filter, None, 1000)
        .await
        .unwrap();
    let mut times: Vec<chrono::DateTime<chrono::Utc>> = runs
        .iter()
        .map(|r| {
            let key = r.idempotency_key.as_deref().unwrap();
            let at = key.strip_prefix(&format!("schedule:{id}:")).unwrap();
            chrono::DateTime::parse_from_rfc3339(at)
                .unwrap()
                .with_timezone(&chrono::Utc)
        })
        .collect();
    times.sort();
    let distinct: std::collections::BTreeSet<_> = times.iter().collect();
    assert_eq!(distinct.len(), times.len(), "a fire time ran twice");
    for pair in times.windows(2) {
        assert_eq!(
            (pair[1] - pair[0]).num_seconds(),
            1,
            "a fire time is missing between {} and {}",
            pair[0],
            pair[1]
        );
    }
    assert!(times.len() >= 8);
}

/// Housekeeping is a schedule like any other: visible to an admin after start.
#[tokio::test]
async fn the_retention_housekeeping_schedule_is_visible() {
    let db = TestDb::sqlite().await;
    let admin = waymark_engine::keys::Secret::generate();
    let mut cmd = command(&db, &["serve"]);
    cmd.env("WAYMARK_BOOTSTRAP_KEY", admin.expose())
        .env("WAYMARK_RETENTION", "14d");
    let proc = spawn_with(cmd).await;
    let base = format!("http://{}", proc.addr.as_ref().unwrap());
    let list: serde_json::Value = reqwest::Client::new()
        .get(format!("{base}/v1/schedules"))
        .bearer_auth(admin.expose())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let housekeeping = list["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "retention")
        .unwrap_or_else(|| panic!("no retention schedule in {list}"));
    assert_eq!(
        (
            housekeeping["tenant"].as_str(),
            housekeeping["workflow"].as_str()
        ),
        (Some("system"), Some("waymark.retention"))
    );
    assert_eq!(housekeeping["input"], json!({"older_than": "14days"}));
    assert_eq!(housekeeping["next_fire_times"].as_array().unwrap().len(), 5);
}

/// With PostgreSQL, processes that each generated their own `master.key` could not
/// reveal each other's sealed secrets. Once one exists, `serve` and `worker` refuse to
/// start without `WAYMARK_MASTER_KEY`, naming the master key that sealed it; given
/// that key, `serve` starts and reveals the secret.
#[tokio::test]
async fn postgres_processes_need_a_shared_master_key_once_a_secret_is_sealed() {
    use waymark_engine::keys::{IssueKey, Scope, Sealer};
    const MASTER_KEY: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=";
    let db = TestDb::postgres().await;
    let request = |tenant: &str, scopes| IssueKey {
        tenant: tenant.into(),
        scopes,
        name: None,
        owner_email: None,
        expires_at: None,
        actor: "test".into(),
        address: None,
    };
    let (_, admin) = waymark_engine::keys::issue(
        &db.store,
        request("system", vec![Scope::Admin]),
        None,
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    let sealer = Sealer::from_base64(MASTER_KEY).unwrap();
    let sealed = waymark_engine::keys::issue_sealed(
        &db.store,
        &sealer,
        request("acme", vec![Scope::Reader]),
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    for args in [["serve"], ["worker"]] {
        // Each command gets a data directory of its own, as on another host.
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            command(&db, &args).stderr(Stdio::piped()).output(),
        )
        .await
        .unwrap_or_else(|_| panic!("{args:?} started instead of refusing"))
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("WAYMARK_MASTER_KEY") && stderr.contains(sealer.key_id()),
            "{args:?}: {stderr}"
        );
    }
    let mut cmd = command(&db, &["serve"]);
    cmd.env("WAYMARK_MASTER_KEY", MASTER_KEY);
    let proc = spawn_with(cmd).await;
    let response = reqwest::Client::new()
        .post(format!(
            "http://{}/v1/keys/{}/reveal",
            proc.addr.as_ref().unwrap(),
            sealed.id
        ))
        .bearer_auth(admin.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["secret"].as_str().unwrap().starts_with("wmk_"));
}
