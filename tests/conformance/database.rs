//! What the database itself enforces and records: the lifecycle's constraints, a
//! schema newer than the binary, concurrent migrations, the worker registry.

use serde_json::json;
use uuid::Uuid;
use waymark_engine::{RunStatus, StoreError};

use crate::support::{on_both_backends, TestDb};

use super::*;

on_both_backends!(
    database_rejects_statuses_and_timestamps_the_lifecycle_forbids,
    a_schema_newer_than_the_binary_is_refused,
    worker_registry_records_heartbeats_and_stops,
);

async fn database_rejects_statuses_and_timestamps_the_lifecycle_forbids(db: TestDb) {
    let run = db
        .store
        .run_start(new_run("w", "acme", None, json!({})))
        .await
        .unwrap()
        .run;
    let id = run.id;
    let bad = [
        // Not a status.
        format!("UPDATE waymark_runs SET status = 'done' WHERE id = '{id}'"),
        // Terminal without finished_at.
        format!("UPDATE waymark_runs SET status = 'completed', output = '1', due_at = NULL WHERE id = '{id}'"),
        // Running without a lease.
        format!("UPDATE waymark_runs SET status = 'running' WHERE id = '{id}'"),
        // Failed without an error.
        format!("UPDATE waymark_runs SET status = 'retrying' WHERE id = '{id}'"),
        // Claimable without a due time.
        format!("UPDATE waymark_runs SET due_at = NULL WHERE id = '{id}'"),
        // Waiting for nothing.
        format!("UPDATE waymark_runs SET status = 'waiting' WHERE id = '{id}'"),
        // Compensating without knowing how it will end.
        format!("UPDATE waymark_runs SET status = 'compensating' WHERE id = '{id}'"),
    ];
    for sql in bad {
        assert!(
            db.execute(&sql).await.is_err(),
            "the database accepted: {sql}"
        );
    }
    // Every status the Rust enum knows passes the status check (with the columns its
    // other constraints require); none is missing from the database's list.
    let (finished, lease) = match db.backend {
        crate::support::Backend::Postgres => ("now()", "now()"),
        crate::support::Backend::Sqlite => ("1", "1"),
    };
    for status in RunStatus::ALL {
        let s = status.as_str();
        let terminal = status.is_terminal();
        let sql = format!(
            "UPDATE waymark_runs SET status = '{s}', \
             finished_at = {fin}, due_at = {due}, output = {out}, error = {err}, \
             locked_by = {lb}, lease_expires_at = {le}, waiting_for = {wf}, ending = {end} \
             WHERE id = '{id}'",
            fin = if terminal { finished } else { "NULL" },
            due = if terminal || status == RunStatus::CompensationFailed {
                "NULL"
            } else {
                "due_at"
            },
            wf = if status == RunStatus::Waiting {
                "'{\"signals\":[]}'"
            } else {
                "NULL"
            },
            end = "'{\"status\":\"cancelled\",\"reason\":\"x\",\"actor\":\"t\"}'",
            out = if status == RunStatus::Completed {
                "'1'"
            } else {
                "NULL"
            },
            err = "'{\"kind\":\"fatal\",\"message\":\"x\"}'",
            lb = if status == RunStatus::Running {
                "locked_by"
            } else {
                "NULL"
            },
            le = if status == RunStatus::Running {
                lease
            } else {
                "NULL"
            },
        );
        let sql = if status == RunStatus::Running {
            sql.replace(
                "locked_by = locked_by",
                &format!("locked_by = '{}'", Uuid::now_v7()),
            )
        } else {
            sql
        };
        // Restore a claimable row first so each status starts from a valid one.
        db.execute(&format!(
            "UPDATE waymark_runs SET status = 'pending', finished_at = NULL, output = NULL, error = NULL, \
             locked_by = NULL, lease_expires_at = NULL, due_at = created_at, waiting_for = NULL, \
             ending = NULL WHERE id = '{id}'"
        ))
        .await
        .unwrap();
        if let Err(e) = db.execute(&sql).await {
            panic!("status {s} was refused: {e}\n{sql}");
        }
    }
}

async fn a_schema_newer_than_the_binary_is_refused(db: TestDb) {
    // As if a newer Waymark had migrated this database.
    let checksum = match db.backend {
        crate::support::Backend::Postgres => "'\\x00'",
        crate::support::Backend::Sqlite => "x'00'",
    };
    db.execute(&format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99990101000000, 'from the future', true, {checksum}, 0)"
    ))
    .await
    .unwrap();
    match db.connect_unmigrated().await.migrate().await {
        Err(StoreError::SchemaTooNew { found, known }) => {
            assert_eq!(found, 99990101000000);
            assert!(known < found);
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    assert!(
        !db.store.ready().await.unwrap(),
        "not ready against a schema it does not know"
    );
}

async fn worker_registry_records_heartbeats_and_stops(db: TestDb) {
    let id = Uuid::now_v7();
    let info = waymark_engine::store::WorkerInfo {
        id,
        host: "host-1".into(),
        pid: 42,
        version: "0.1.0".into(),
        capabilities: vec!["gpu".into()],
        workflows: vec!["demo@1".into()],
        started_at: chrono::Utc::now(),
        last_heartbeat_at: chrono::Utc::now(),
        runs_in_hand: 0,
        stopped_at: None,
    };
    db.store.worker_register(&info).await.unwrap();
    db.store.worker_heartbeat(id, 3).await.unwrap();
    let listed = db.store.worker_list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (
            listed[0].host.as_str(),
            listed[0].pid,
            listed[0].runs_in_hand
        ),
        ("host-1", 42, 3)
    );
    assert_eq!(listed[0].capabilities, vec!["gpu".to_owned()]);
    assert!(listed[0].stopped_at.is_none());
    let hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    let live = db.store.workers_live(hour_ago).await.unwrap();
    assert_eq!(live.iter().map(|w| w.id).collect::<Vec<_>>(), vec![id]);
    let in_a_minute = chrono::Utc::now() + chrono::Duration::minutes(1);
    assert!(db.store.workers_live(in_a_minute).await.unwrap().is_empty());
    db.store.worker_stop(id).await.unwrap();
    let listed = db.store.worker_list().await.unwrap();
    assert!(listed[0].stopped_at.is_some());
    assert_eq!(listed[0].runs_in_hand, 0);
    assert!(db.store.workers_live(hour_ago).await.unwrap().is_empty());
    // Pruning forgets workers gone since before the cutoff, and only those.
    assert_eq!(db.store.workers_prune(hour_ago).await.unwrap(), 0);
    assert_eq!(db.store.worker_list().await.unwrap().len(), 1);
    assert_eq!(db.store.workers_prune(in_a_minute).await.unwrap(), 1);
    assert!(db.store.worker_list().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_on_one_postgres_database_all_succeed() {
    use sqlx::Connection;
    let admin_url = crate::support::pg_admin_url();
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    let name = format!("waymark_test_{}", Uuid::now_v7().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let url = format!("{}/{name}", admin_url.rsplit_once('/').unwrap().0);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let store = waymark_engine::Store::connect(&waymark_engine::StoreConfig::Postgres {
                url,
                max_connections: 2,
                worker_connections: 1,
            })
            .await
            .unwrap();
            store.migrate().await.map(|()| store)
        }));
    }
    let mut stores = Vec::new();
    for task in tasks {
        stores.push(
            task.await
                .unwrap()
                .expect("every concurrent migration succeeds"),
        );
    }
    assert!(stores[0].ready().await.unwrap());
    for store in stores {
        if let waymark_engine::Store::Postgres(pg) = store {
            pg.pool().close().await;
        }
    }
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
}
