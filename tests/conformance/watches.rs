//! Watches on a run's end: woken when it completes or fails, and by the sweep when it
//! vanished unannounced.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;
use waymark_engine::store::{Next, Outcome};
use waymark_engine::StepError;

use waymark_engine::Store;

use crate::support::{on_both_backends, wait_until, Backend, TestDb};

use super::*;

on_both_backends!(
    a_watch_wakes_when_its_run_completes_or_fails,
    the_sweep_wakes_a_watch_whose_run_vanished_unannounced,
);

/// Claims the run of workflow `workflow` and commits `outcome` for it.
async fn end_run(db: &TestDb, workflow: &str, outcome: Outcome) {
    let run = db
        .store
        .run_claim(&claim(
            Uuid::now_v7(),
            &[(workflow, 1)],
            &[],
            Duration::from_secs(30),
        ))
        .await
        .unwrap()
        .remove(0);
    let mut commit = enter("a", Next::Release);
    commit.outcome = outcome;
    db.store
        .run_commit(&run.lease().unwrap(), &commit)
        .await
        .unwrap();
}

/// The deadline of a wait on a watch; the sweep (every 5 s) would wake it well before.
const WATCH_DEADLINE: Duration = Duration::from_secs(30);

async fn a_watch_wakes_when_its_run_completes_or_fails(db: TestDb) {
    // On PostgreSQL the first watch starts the LISTEN connection, which wakes every
    // watcher once it listens (endings before it were not heard); wait for that, so
    // what wakes the watches below is the ending itself.
    let mut keeper = db.store.run_watch(Uuid::now_v7()).await.unwrap();
    if db.backend == Backend::Postgres {
        tokio::time::timeout(WATCH_DEADLINE, keeper.changed())
            .await
            .expect("the listener starts");
    }
    // Completing and failing: both end the run, and both announce it.
    for (workflow, outcome) in [
        (
            "done",
            Outcome::Complete {
                output: json!("ok"),
            },
        ),
        (
            "broken",
            Outcome::Fail {
                error: StepError::fatal("boom"),
                hold: false,
            },
        ),
    ] {
        let run = db
            .store
            .run_start(new_run(workflow, "acme", None, json!({})))
            .await
            .unwrap()
            .run;
        let mut watch = db.store.run_watch(run.id).await.unwrap();
        assert_eq!(
            db.store.runs_unfinished(&[run.id]).await.unwrap(),
            vec![run.id]
        );
        end_run(&db, workflow, outcome).await;
        tokio::time::timeout(WATCH_DEADLINE, watch.changed())
            .await
            .unwrap_or_else(|_| panic!("the watch on the {workflow} run was not woken"));
        assert!(db
            .store
            .runs_unfinished(&[run.id])
            .await
            .unwrap()
            .is_empty());
    }
    drop(keeper);
}

async fn the_sweep_wakes_a_watch_whose_run_vanished_unannounced(db: TestDb) {
    let live = db
        .store
        .run_start(new_run("w", "acme", None, json!({})))
        .await
        .unwrap()
        .run;
    let gone = db
        .store
        .run_start(new_run("w", "acme", None, json!({})))
        .await
        .unwrap()
        .run;
    let mut watch = db.store.run_watch(gone.id).await.unwrap();
    if db.backend == Backend::Postgres {
        // The LISTEN connection's start wakes every watcher once; not what is tested.
        tokio::time::timeout(WATCH_DEADLINE, watch.changed())
            .await
            .expect("the listener starts");
    }
    // Behind the store's back, as another process or a lost NOTIFY would leave it.
    for table in ["waymark_history", "waymark_run_tags"] {
        db.execute(&format!("DELETE FROM {table} WHERE run_id = '{}'", gone.id))
            .await
            .unwrap();
    }
    db.execute(&format!(
        "DELETE FROM waymark_runs WHERE id = '{}'",
        gone.id
    ))
    .await
    .unwrap();
    assert_eq!(
        db.store.runs_unfinished(&[live.id, gone.id]).await.unwrap(),
        vec![live.id]
    );
    tokio::time::timeout(WATCH_DEADLINE, watch.changed())
        .await
        .expect("the sweep wakes the watch");
}

/// PostgreSQL serialises every committing transaction that sends a NOTIFY, so an ending
/// is announced only when someone may listen: a watch on that run, or a process that
/// follows every ending (the dashboard's live pages). Notifications arrive in commit
/// order, so "the first one heard is the watched run's" proves the unwatched ending
/// before it sent none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_announces_only_endings_someone_waits_for() {
    let db = TestDb::postgres().await;
    let Store::Postgres(pg) = &db.store else {
        unreachable!("a PostgreSQL test database")
    };
    let mut listener = sqlx::postgres::PgListener::connect_with(pg.pool())
        .await
        .unwrap();
    listener.listen("waymark_run_ended").await.unwrap();
    let start = || db.store.run_start(new_run("done", "acme", None, json!({})));
    let complete = || Outcome::Complete {
        output: json!("ok"),
    };

    let unwatched = start().await.unwrap().run;
    end_run(&db, "done", complete()).await;
    let watched = start().await.unwrap().run;
    let _watch = db.store.run_watch(watched.id).await.unwrap();
    end_run(&db, "done", complete()).await;
    assert_eq!(
        next_ended(&mut listener).await,
        watched.id,
        "the unwatched run {} ended silently",
        unwatched.id
    );

    // While a dashboard follows every ending, an unwatched one is announced too.
    let follower = db.store.runs_ended();
    wait_until(
        "this process is recorded as a follower",
        WATCH_DEADLINE,
        || async {
            db.scalar_i64("SELECT count(*) FROM waymark_followers WHERE expires_at > now()")
                .await
                == 1
        },
    )
    .await;
    let followed = start().await.unwrap().run;
    end_run(&db, "done", complete()).await;
    assert_eq!(next_ended(&mut listener).await, followed.id);
    drop(follower);
    wait_until("the follower's row is removed", WATCH_DEADLINE, || async {
        db.scalar_i64("SELECT count(*) FROM waymark_followers")
            .await
            == 0
    })
    .await;
}

/// The next run id announced on the endings channel.
async fn next_ended(listener: &mut sqlx::postgres::PgListener) -> Uuid {
    let note = tokio::time::timeout(WATCH_DEADLINE, listener.recv())
        .await
        .expect("an ending is announced")
        .unwrap();
    note.payload().parse().unwrap()
}
