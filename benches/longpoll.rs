//! Long-poll load benchmark on PostgreSQL: `cargo bench --bench longpoll`.
//!
//! Starts the API and a runner in this process against a throwaway database, parks W
//! runs on a signal and holds W concurrent `GET /v1/runs/{id}?wait=` requests on them.
//! It counts the database's transactions (`pg_stat_database`, commits + rollbacks;
//! nearly every API or runner query is its own transaction) over four windows: idle and
//! under load without waiters, then idle and under load with the W waiters. Load is
//! other runs (one step of WAYMARK_BENCH_WORK each, under a short lease so that a
//! heartbeat held up behind API reads would lose it) started at R per second until
//! they complete. Then it signals the parked runs and times until every waiter has its
//! answer. It prints transactions per second per window and whether any lease was lost.
//!
//! Settings: `WAYMARK_BENCH_PG_URL` (default the local server's `postgres` database; a
//! throwaway database is created next to it and dropped), `WAYMARK_BENCH_WAITERS`
//! (2000), `WAYMARK_BENCH_WINDOW` (seconds per window, 15), `WAYMARK_BENCH_RATE` (runs
//! started per second during the load window, 20), `WAYMARK_BENCH_WORK` (ms a busy
//! step takes, 1500).
//!
//! pg_stat_database is updated when backends flush their counters, up to 10 s late for
//! an idle one, so every window is counted from a settled start to a settled end. The
//! load window counts until its runs complete (the bench's own reads to see that they
//! did are counted too, a few per run).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use waymark_engine::keys::{IssueKey, Scope};
use waymark_engine::store::StoreConfig;
use waymark_engine::workflow::Registry;
use waymark_engine::{
    Definition, Engine, NoSignal, SendSignal, StartRun, StateDef, StepContext, StepError, Store,
    SystemClock, TenantScope, Transition, Wait, Workflow, WorkflowState,
};
use waymark_workers::{Runner, RunnerConfig};

/// Waits for `go`, then completes.
struct Parked;

#[derive(Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum P {
    Park,
    Done,
}

impl WorkflowState for P {
    fn name(&self) -> &'static str {
        match self {
            P::Park => "park",
            P::Done => "done",
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "signal", content = "payload", rename_all = "snake_case")]
enum Go {
    Go,
}

impl waymark_engine::WorkflowSignal for Go {}

impl Workflow for Parked {
    const NAME: &'static str = "bench_parked";
    type Input = serde_json::Value;
    type State = P;
    type Output = u32;
    type Signal = Go;

    fn definition() -> Definition {
        Definition::new([
            StateDef::new("park").on_signal("go", "done"),
            StateDef::new("done").completes(),
        ])
        .signal("go")
    }

    fn initial_state(_: &serde_json::Value) -> P {
        P::Park
    }

    async fn step(
        &self,
        _: &StepContext,
        _: &serde_json::Value,
        state: P,
    ) -> Result<Transition<P, u32>, StepError> {
        Ok(match state {
            P::Park => Wait::on("go", P::Done).into(),
            P::Done => Transition::complete(1),
        })
    }
}

/// One step that takes `work`, so its lease must be renewed by heartbeats meanwhile.
struct Busy {
    work: Duration,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum B {
    Work,
}

impl WorkflowState for B {
    fn name(&self) -> &'static str {
        "work"
    }
}

impl Workflow for Busy {
    const NAME: &'static str = "bench_busy";
    type Input = serde_json::Value;
    type State = B;
    type Output = u32;
    type Signal = NoSignal;

    fn definition() -> Definition {
        Definition::new([StateDef::new("work").completes()])
    }

    fn initial_state(_: &serde_json::Value) -> B {
        B::Work
    }

    async fn step(
        &self,
        _: &StepContext,
        _: &serde_json::Value,
        _: B,
    ) -> Result<Transition<B, u32>, StepError> {
        tokio::time::sleep(self.work).await;
        Ok(Transition::complete(1))
    }
}

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Transactions committed or rolled back in this database so far.
async fn xacts(conn: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(conn)
    .await
    .expect("pg_stat_database")
}

async fn count(conn: &mut sqlx::PgConnection, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(conn).await.expect(sql)
}

/// PostgreSQL flushes an idle backend's counters to pg_stat_database up to 10 s late
/// (PGSTAT_IDLE_INTERVAL); waiting this long after a burst keeps it out of the next
/// window.
const SETTLE: Duration = Duration::from_secs(11);

/// Transactions per second of `window`: counted from a settled start to a settled end
/// after `during` (which gets the window and returns when its work is done), so a
/// window's own work is counted in full even if it finishes after the window.
async fn measure<F: std::future::Future<Output = ()>>(
    conn: &mut sqlx::PgConnection,
    window: Duration,
    during: impl FnOnce(Duration) -> F,
) -> f64 {
    tokio::time::sleep(SETTLE).await;
    let before = xacts(conn).await;
    let start = Instant::now();
    during(window).await;
    tokio::time::sleep(window.saturating_sub(start.elapsed())).await;
    let ran = start.elapsed();
    tokio::time::sleep(SETTLE).await;
    let after = xacts(conn).await;
    // The background of the settling time (measured separately as the idle rates) is
    // small; this connection's own first read is not load.
    (after - before - 1) as f64 / ran.as_secs_f64()
}

fn start_req(workflow: &str) -> StartRun {
    StartRun {
        tenant: "acme".into(),
        workflow: workflow.into(),
        input: serde_json::json!({}),
        idempotency_key: None,
        tags: vec![],
        actor: "bench".into(),
    }
}

/// Starts a busy run every 1/`rate` s for `window`, then waits until all completed.
async fn busy_runs(engine: Engine, window: Duration, rate: u64, work: Duration) {
    let every = Duration::from_micros(1_000_000 / rate.max(1));
    let mut tick = tokio::time::interval(every);
    let start = Instant::now();
    let mut started = Vec::new();
    while start.elapsed() < window {
        tick.tick().await;
        started.push(engine.start(start_req("bench_busy")).await.unwrap().run.id);
    }
    // Until the last of them completes: their work belongs to this window.
    let deadline = Instant::now() + work * 4 + Duration::from_secs(30);
    for id in started {
        loop {
            let run = engine.store.run_get(&TenantScope::All, id).await.unwrap();
            if run.is_some_and(|r| r.status.is_terminal()) {
                break;
            }
            assert!(Instant::now() < deadline, "busy run {id} did not complete");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn bench(url: &str) {
    let waiters: usize = setting("WAYMARK_BENCH_WAITERS", 2000);
    let window = Duration::from_secs(setting("WAYMARK_BENCH_WINDOW", 15));
    let rate: u64 = setting("WAYMARK_BENCH_RATE", 20);
    let work = Duration::from_millis(setting("WAYMARK_BENCH_WORK", 1500));

    // The binary's default pool sizes.
    let store = Store::connect(&StoreConfig::Postgres {
        url: url.to_owned(),
        max_connections: 10,
        worker_connections: 4,
    })
    .await
    .expect("connect");
    store.migrate().await.expect("migrate");
    let mut registry = Registry::new();
    registry
        .register(Parked)
        .unwrap()
        .register(Busy { work })
        .unwrap();
    let engine = Engine::new(store.clone(), Arc::new(registry), Arc::new(SystemClock));
    let shutdown = CancellationToken::new();
    // A lease twice the step's work: heartbeats (every third of it) that waited behind
    // API reads for more than that would lose it.
    let lease = work * 2;
    let runner = Runner::new(
        engine.clone(),
        RunnerConfig {
            concurrency: 64,
            lease,
            ..RunnerConfig::default()
        },
    );
    let runner = tokio::spawn(runner.run(shutdown.clone()));

    let (_, secret) = waymark_engine::keys::issue(
        &store,
        IssueKey {
            tenant: "system".into(),
            scopes: vec![Scope::Admin],
            name: Some("bench".into()),
            owner_email: None,
            expires_at: None,
            actor: "bench".into(),
            address: None,
        },
        None,
        chrono::Utc::now(),
    )
    .await
    .expect("admin key");
    let api = waymark_api::ApiConfig {
        rate_limit: 0,
        max_wait: Duration::from_secs(3600),
        max_waiting: waiters,
        max_waiting_per_key: waiters,
        ..waymark_api::ApiConfig::default()
    };
    let waits = api.waits.clone();
    let app = waymark_api::app(waymark_api::AppState {
        engine: engine.clone(),
        blobs: None,
        api,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = shutdown.clone();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
        .unwrap()
    });

    let mut stats = sqlx::PgConnection::connect(url).await.expect("connect");
    let mut parked = Vec::with_capacity(waiters);
    for _ in 0..waiters {
        parked.push(
            engine
                .start(start_req("bench_parked"))
                .await
                .unwrap()
                .run
                .id,
        );
    }
    while count(
        &mut stats,
        "SELECT count(*) FROM waymark_runs WHERE status = 'waiting'",
    )
    .await
        < waiters as i64
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("{waiters} runs parked on a signal; lease {lease:?}, busy step {work:?}");

    let idle = measure(&mut stats, window, |_| async {}).await;
    println!("idle, no waiters:                 {idle:8.1} transactions/s");
    let baseline = measure(&mut stats, window, |window| {
        busy_runs(engine.clone(), window, rate, work)
    })
    .await;
    println!("no waiters, {rate} busy runs/s:     {baseline:8.1} transactions/s");

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut answers = Vec::with_capacity(waiters);
    for chunk in parked.chunks(200) {
        for id in chunk {
            let request = http
                .get(format!("{base}/v1/runs/{id}?wait=3600s"))
                .bearer_auth(secret.expose());
            answers.push(tokio::spawn(async move {
                let response = request.send().await.expect("long poll");
                let status = response.status();
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                (status, body["status"].as_str().map(str::to_owned))
            }));
        }
        // Let the server accept a batch before sending the next.
        while waits.current() + 50 < answers.len() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    while waits.current() < waiters {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let waiting = measure(&mut stats, window, |_| async {}).await;
    println!("idle, {waiters} waiters:            {waiting:8.1} transactions/s");

    let loaded = measure(&mut stats, window, |window| {
        busy_runs(engine.clone(), window, rate, work)
    })
    .await;
    println!("{waiters} waiters + {rate} busy runs/s:  {loaded:8.1} transactions/s");
    let early = answers.iter().filter(|a| a.is_finished()).count();

    let rung = Instant::now();
    for id in &parked {
        engine
            .signal(
                &TenantScope::All,
                SendSignal {
                    run_id: *id,
                    name: "go".into(),
                    payload: serde_json::json!(null),
                    idempotency_key: None,
                    actor: "bench".into(),
                },
            )
            .await
            .expect("signal");
    }
    let signalled = rung.elapsed();
    let mut completed = 0;
    for answer in answers {
        let (status, run_status) = answer.await.unwrap();
        if status.is_success() && run_status.as_deref() == Some("completed") {
            completed += 1;
        }
    }
    let answered = rung.elapsed();

    let metrics = engine.metrics.render(0, None);
    let lost: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("waymark_lease_losses_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let reclaimed = count(
        &mut stats,
        "SELECT count(*) FROM waymark_runs WHERE workflow = 'bench_busy' AND attempt > 1",
    )
    .await;
    println!(
        "waiters answered before their run ended: {early}; after signalling all \
         ({signalled:.1?}), {completed}/{waiters} answered `completed` within {answered:.1?}"
    );
    println!(
        "leases lost: {lost} (runner), busy runs claimed more than once: {reclaimed}; \
         the waiters' cost: {:.1} transactions/s idle, {:.1} under load",
        waiting - idle,
        loaded - baseline
    );
    shutdown.cancel();
    let _ = runner.await;
}

fn main() {
    // `cargo test --all-targets` builds and runs this target too; only `cargo bench`
    // (which passes --bench) measures.
    if !std::env::args().any(|a| a == "--bench") {
        println!("long-poll benchmark: run it with `cargo bench --bench longpoll`");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let admin = std::env::var("WAYMARK_BENCH_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("waymark_bench_{}", Uuid::now_v7().simple());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("connect to PostgreSQL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
        bench(&url).await;
        sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await
            .unwrap();
    });
}
