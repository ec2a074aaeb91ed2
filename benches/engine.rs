//! Closed-loop engine benchmark on PostgreSQL: `cargo bench --bench engine`.
//!
//! For each K in flight (1, 4, 16) it runs N runs of a three-step workflow with trivial
//! steps through a real runner and reports runs/s, transitions/s, start-to-completion
//! p50/p99 and write transactions per transition. In the same run it measures a raw-SQL
//! ceiling: the same rows written by the same kind of statements, one transaction per
//! transition, K clients, no engine. It prints Waymark's share of that ceiling.
//!
//! It also measures the machine's ceiling with `pgbench` (one UPDATE and one INSERT per
//! transaction, K clients, in its own process) and prints Waymark's steps/s over its
//! tps, then one machine-readable `BENCH …` line per K.
//!
//! Settings: `WAYMARK_BENCH_PG_URL` (default the local server's `postgres` database;
//! a throwaway database is created next to it and dropped), `WAYMARK_BENCH_RUNS`
//! (default 2000 per K), `WAYMARK_BENCH_K` (default `1,4,16`).
//!
//! Completion is observed by the workflow's last step handing the run id to the driver,
//! which then reads the run until it is committed `completed`: one or two reads per run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sqlx::Connection;
use tokio::sync::{mpsc, Mutex};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use waymark_engine::store::StoreConfig;
use waymark_engine::workflow::Registry;
use waymark_engine::{
    Definition, Engine, NoSignal, RunStatus, StartRun, StateDef, StepContext, StepError, Store,
    SystemClock, TenantScope, Transition, Workflow, WorkflowState,
};
use waymark_workers::{Runner, RunnerConfig};

struct Bench3 {
    done: mpsc::UnboundedSender<Uuid>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum S {
    A,
    B,
    C,
}

impl WorkflowState for S {
    fn name(&self) -> &'static str {
        match self {
            S::A => "a",
            S::B => "b",
            S::C => "c",
        }
    }
}

impl Workflow for Bench3 {
    const NAME: &'static str = "bench3";
    type Input = serde_json::Value;
    type State = S;
    type Output = u32;
    type Signal = NoSignal;

    fn definition() -> Definition {
        Definition::new([
            StateDef::new("a").next("b"),
            StateDef::new("b").next("c"),
            StateDef::new("c").completes(),
        ])
    }

    fn initial_state(_: &serde_json::Value) -> S {
        S::A
    }

    async fn step(
        &self,
        ctx: &StepContext,
        _: &serde_json::Value,
        state: S,
    ) -> Result<Transition<S, u32>, StepError> {
        Ok(match state {
            S::A => Transition::next(S::B),
            S::B => Transition::next(S::C),
            S::C => {
                let _ = self.done.send(ctx.run_id);
                Transition::complete(3)
            }
        })
    }
}

struct Figures {
    seconds: f64,
    runs: usize,
    transitions: usize,
    p50: Duration,
    p99: Duration,
    write_xacts: i64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

/// Write transactions since `before`: PostgreSQL assigns a transaction id only to
/// transactions that write (minus the one this query itself takes).
async fn xid(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(pool)
        .await
        .expect("xid")
}

async fn bench_waymark(url: &str, in_flight: usize, runs: usize) -> Figures {
    let store = Store::connect(&StoreConfig::Postgres {
        url: url.to_owned(),
        max_connections: (in_flight as u32 + 4).min(40),
        worker_connections: (in_flight as u32 + 4).min(40),
    })
    .await
    .expect("connect");
    let pool = match &store {
        Store::Postgres(pg) => pg.pool().clone(),
        Store::Sqlite(_) => unreachable!(),
    };
    sqlx::query("TRUNCATE waymark_runs CASCADE")
        .execute(&pool)
        .await
        .unwrap();
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let mut registry = Registry::new();
    registry.register(Bench3 { done: done_tx }).unwrap();
    let engine = Engine::new(store.clone(), Arc::new(registry), Arc::new(SystemClock));
    let shutdown = CancellationToken::new();
    let runner = Runner::new(
        engine.clone(),
        RunnerConfig {
            concurrency: in_flight,
            ..RunnerConfig::default()
        },
    );
    let runner_task = tokio::spawn(runner.run(shutdown.clone()));

    let started_at = Arc::new(Mutex::new(std::collections::HashMap::new()));
    let done_rx = Arc::new(Mutex::new(done_rx));
    let xid_before = xid(&pool).await;
    let clock = Instant::now();
    let remaining = Arc::new(std::sync::atomic::AtomicUsize::new(runs));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(runs)));
    let mut drivers = Vec::new();
    for _ in 0..in_flight {
        let engine = engine.clone();
        let remaining = remaining.clone();
        let started_at = started_at.clone();
        let done_rx = done_rx.clone();
        let latencies = latencies.clone();
        drivers.push(tokio::spawn(async move {
            loop {
                let left = remaining.fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |n| n.checked_sub(1),
                );
                if left.is_err() {
                    return;
                }
                let begun = Instant::now();
                let run = engine
                    .start(StartRun {
                        tenant: "bench".into(),
                        workflow: "bench3".into(),
                        input: serde_json::json!({}),
                        idempotency_key: None,
                        tags: vec![],
                        actor: "bench".into(),
                    })
                    .await
                    .expect("start")
                    .run;
                started_at.lock().await.insert(run.id, begun);
                // Take any finished run (not necessarily ours): the loop stays closed
                // at K in flight.
                let id = done_rx.lock().await.recv().await.expect("done");
                loop {
                    let run = engine
                        .store
                        .run_get(&TenantScope::All, id)
                        .await
                        .unwrap()
                        .unwrap();
                    if run.status == RunStatus::Completed {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                let begun = started_at.lock().await.remove(&id).expect("started");
                latencies.lock().await.push(begun.elapsed());
            }
        }));
    }
    for driver in drivers {
        driver.await.unwrap();
    }
    let seconds = clock.elapsed().as_secs_f64();
    let write_xacts = xid(&pool).await - xid_before - 1;
    shutdown.cancel();
    runner_task.await.unwrap().unwrap();
    let mut latencies = Arc::try_unwrap(latencies).unwrap().into_inner();
    latencies.sort();
    Figures {
        seconds,
        runs,
        transitions: runs * 4,
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
        write_xacts,
    }
}

/// The same writes with no engine: per run, insert the run with its first history row,
/// then three updates each with a history row, each one statement and transaction.
async fn bench_raw(url: &str, in_flight: usize, runs: usize) -> Figures {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(in_flight as u32 + 2)
        .connect(url)
        .await
        .unwrap();
    sqlx::query("TRUNCATE waymark_runs CASCADE")
        .execute(&pool)
        .await
        .unwrap();
    let remaining = Arc::new(std::sync::atomic::AtomicUsize::new(runs));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(runs)));
    let xid_before = xid(&pool).await;
    let clock = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let pool = pool.clone();
        let remaining = remaining.clone();
        let latencies = latencies.clone();
        tasks.push(tokio::spawn(async move {
            while remaining
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |n| n.checked_sub(1),
                )
                .is_ok()
            {
                let begun = Instant::now();
                let id = Uuid::now_v7();
                sqlx::query(
                    r#"WITH ins AS (
                        INSERT INTO waymark_runs (id, tenant, workflow, workflow_version, status, state,
                            state_data, input, visit, attempt, due_at, created_at, updated_at)
                        VALUES ($1, 'bench', 'bench3', 1, 'pending', 'a', '{"state":"a"}', '{}', 1, 0, now(), now(), now())
                        RETURNING id)
                       INSERT INTO waymark_history (run_id, to_state, to_status, cause, visit, attempt, actor, started_at, committed_at)
                       SELECT id, 'a', 'pending', 'started', 1, 0, 'bench', now(), now() FROM ins"#,
                )
                .bind(id)
                .execute(&pool)
                .await
                .unwrap();
                for (from, to, status) in [("a", "b", "pending"), ("b", "c", "pending"), ("c", "c", "completed")] {
                    let done = status == "completed";
                    sqlx::query(
                        r#"WITH upd AS (
                            UPDATE waymark_runs SET status = $2, state = $3, state_data = jsonb_build_object('state', $3::text),
                                visit = visit + 1, due_at = CASE WHEN $4 THEN NULL ELSE now() END,
                                output = CASE WHEN $4 THEN '3'::jsonb END,
                                finished_at = CASE WHEN $4 THEN now() END, updated_at = now()
                            WHERE id = $1 RETURNING id, visit)
                           INSERT INTO waymark_history (run_id, from_state, to_state, from_status, to_status, cause, visit, attempt, actor, started_at, committed_at)
                           SELECT id, $5, $3, 'running', $2, 'step', visit, 1, 'bench', now(), now() FROM upd"#,
                    )
                    .bind(id)
                    .bind(status)
                    .bind(to)
                    .bind(done)
                    .bind(from)
                    .execute(&pool)
                    .await
                    .unwrap();
                }
                latencies.lock().await.push(begun.elapsed());
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let seconds = clock.elapsed().as_secs_f64();
    let write_xacts = xid(&pool).await - xid_before - 1;
    let mut latencies = Arc::try_unwrap(latencies).unwrap().into_inner();
    latencies.sort();
    Figures {
        seconds,
        runs,
        transitions: runs * 4,
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
        write_xacts,
    }
}

/// The machine's own ceiling: `pgbench` (PostgreSQL's client package) running one
/// UPDATE of a run and one INSERT of its history row per transaction, `k` clients, as
/// many transactions as Waymark's runs commit. It runs in its own process, so unlike
/// the in-process raw-SQL figure it does not share this benchmark's tokio threads.
/// `None` (with a note) when pgbench is not installed.
async fn bench_pgbench(url: &str, k: usize, transactions: usize) -> Option<f64> {
    let pgbench = ["pgbench", "/usr/lib/postgresql/15/bin/pgbench"]
        .into_iter()
        .find(|p| {
            std::process::Command::new(p)
                .arg("--version")
                .output()
                .is_ok()
        })?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap();
    sqlx::query("TRUNCATE waymark_runs CASCADE")
        .execute(&pool)
        .await
        .unwrap();
    // Runs that nothing will claim (due in a century), and a numbered index to pick one.
    for statement in [
        "DROP TABLE IF EXISTS bench_ids",
        "CREATE TABLE bench_ids (n int PRIMARY KEY, id uuid NOT NULL)",
        "INSERT INTO bench_ids SELECT g, gen_random_uuid() FROM generate_series(1, 1000) g",
        r#"INSERT INTO waymark_runs (id, tenant, workflow, workflow_version, status, state,
               state_data, input, visit, attempt, due_at, created_at, updated_at)
           SELECT id, 'bench', 'bench3', 1, 'sleeping', 'a', '{"state":"a"}', '{}', 1, 0,
                  now() + interval '100 years', now(), now() FROM bench_ids"#,
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    let script = std::env::temp_dir().join(format!("waymark-pgbench-{}.sql", Uuid::now_v7()));
    std::fs::write(
        &script,
        r#"\set n random(1, 1000)
BEGIN;
UPDATE waymark_runs SET visit = visit + 1, state_data = '{"state":"b"}', updated_at = now() WHERE id = (SELECT id FROM bench_ids WHERE n = :n);
INSERT INTO waymark_history (run_id, from_state, to_state, from_status, to_status, cause, visit, attempt, actor, started_at, committed_at) SELECT id, 'a', 'b', 'running', 'sleeping', 'step', 1, 1, 'bench', now(), now() FROM bench_ids WHERE n = :n;
END;
"#,
    )
    .unwrap();
    let output = tokio::process::Command::new(pgbench)
        .args(["-n", "-c", &k.to_string(), "-j", &k.min(2).to_string()])
        .args(["-t", &(transactions / k).max(1).to_string(), "-f"])
        .arg(&script)
        .arg(url)
        .output()
        .await
        .expect("run pgbench");
    let _ = std::fs::remove_file(&script);
    sqlx::query("DROP TABLE bench_ids")
        .execute(&pool)
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let tps = stdout
        .lines()
        .find(|l| l.starts_with("tps = ") && l.contains("without initial connection time"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|t| t.parse().ok());
    if tps.is_none() {
        eprintln!(
            "pgbench gave no tps: {}{}",
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    tps
}

fn line(label: &str, k: usize, f: &Figures) {
    println!(
        "{label:<8} K={k:<3} {:>8.0} runs/s {:>9.0} transitions/s   p50 {:>7.2} ms   p99 {:>7.2} ms   {:.2} write xacts/transition",
        f.runs as f64 / f.seconds,
        f.transitions as f64 / f.seconds,
        f.p50.as_secs_f64() * 1000.0,
        f.p99.as_secs_f64() * 1000.0,
        f.write_xacts as f64 / f.transitions as f64,
    );
}

fn main() {
    // `cargo test --all-targets` builds and runs this target too; only `cargo bench`
    // (which passes --bench) measures.
    if !std::env::args().any(|a| a == "--bench") {
        println!("engine benchmark: run it with `cargo bench --bench engine`");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let admin = std::env::var("WAYMARK_BENCH_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let runs: usize = std::env::var("WAYMARK_BENCH_RUNS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2000);
        let name = format!("waymark_bench_{}", Uuid::now_v7().simple());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .expect("connect to PostgreSQL");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
        Store::connect(&StoreConfig::Postgres {
            url: url.clone(),
            max_connections: 2,
            worker_connections: 1,
        })
        .await
        .unwrap()
        .migrate()
        .await
        .unwrap();
        let ks: Vec<usize> = std::env::var("WAYMARK_BENCH_K")
            .ok()
            .map(|list| {
                list.split(',')
                    .map(|k| k.trim().parse().expect("WAYMARK_BENCH_K: a list like 1,4,16"))
                    .collect()
            })
            .unwrap_or_else(|| vec![1, 4, 16]);
        println!(
            "{runs} runs of a 3-step workflow (4 transitions each) per K, PostgreSQL, closed loop"
        );
        let mut machine_lines = Vec::new();
        for k in ks {
            let raw = bench_raw(&url, k, runs).await;
            let waymark = bench_waymark(&url, k, runs).await;
            let pgbench = bench_pgbench(&url, k, runs * 4).await;
            line("raw SQL", k, &raw);
            line("waymark", k, &waymark);
            let per_s = |f: &Figures| f.transitions as f64 / f.seconds;
            let ratio = per_s(&waymark) / per_s(&raw);
            // `scripts/bench-compare.sh` reads this line's last field.
            println!("ratio    K={k:<3} waymark / in-process raw-SQL = {ratio:.2}");
            // Steps are the workflow's three; the start is a fourth transaction.
            let steps_per_s = waymark.runs as f64 * 3.0 / waymark.seconds;
            match pgbench {
                Some(tps) => println!(
                    "ceiling  K={k:<3} pgbench {tps:.0} tps; waymark steps/s / pgbench tps = {:.2}",
                    steps_per_s / tps
                ),
                None => println!("ceiling  K={k:<3} pgbench not found (Debian's postgresql-client)"),
            }
            machine_lines.push(format!(
                "BENCH backend=postgres k={k} n={runs} steps=3 runs_per_s={:.0} steps_per_s={steps_per_s:.0} \
                 p50_ms={:.2} p99_ms={:.2} wtx_per_step={:.2} ceiling_tps={} ratio={}",
                waymark.runs as f64 / waymark.seconds,
                waymark.p50.as_secs_f64() * 1000.0,
                waymark.p99.as_secs_f64() * 1000.0,
                waymark.write_xacts as f64 / (waymark.runs as f64 * 3.0),
                pgbench.map_or("none".into(), |t| format!("{t:.0}")),
                pgbench.map_or("none".into(), |t| format!("{:.2}", steps_per_s / t)),
            ));
        }
        for l in machine_lines {
            println!("{l}");
        }
        sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await
            .unwrap();
    });
}
