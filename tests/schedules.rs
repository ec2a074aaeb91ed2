//! Schedules: CRUD and bad inputs through HTTP, and the scheduler's semantics (every
//! fire time once, overlap policies, catch-up after downtime, the lease) under the
//! manual clock, on both backends.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;
use waymark_engine::store::{CatchUp, Overlap, Schedule};
use waymark_engine::{Clock, Engine, ManualClock, RunStatus, TenantScope};
use waymark_workers::scheduler::{fire_key, Scheduler, SchedulerConfig, LEASE};

use crate::support::app::{problem_type, TestApp};
use crate::support::workflows::{registry, TestWorkflows};
use crate::support::{on_both_backends, spawn_runner, test_runner_config, wait_for_run, TestDb};

on_both_backends!(
    schedules_are_created_read_edited_paused_and_deleted,
    bad_schedule_inputs_are_refused_with_the_field_named,
    every_due_fire_time_fires_once_in_order,
    overlap_skip_starts_nothing_while_the_previous_run_lives,
    overlap_buffer_one_keeps_one_fire_time_for_later,
    overlap_allow_and_cancel_previous,
    missed_fire_times_are_skipped_or_fired_once_after_downtime,
    only_the_lease_holder_fires,
);

async fn schedules_are_created_read_edited_paused_and_deleted(db: TestDb) {
    let api = TestApp::on(db).spawn().await;
    let (_, op) = api.key("acme", &["operator"]).await;
    let (_, reader) = api.key("acme", &["reader"]).await;
    let body = json!({"name": "nightly", "cron": "30 2 * * MON-FRI", "timezone": "Europe/Berlin",
        "workflow": "three_step", "input": {"n": 1}, "overlap": "buffer_one", "catch_up": "run_once"});
    let (status, created) = api.post("/v1/schedules", &op, body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        (
            created["tenant"].as_str(),
            created["overlap"].as_str(),
            created["catch_up"].as_str()
        ),
        (Some("acme"), Some("buffer_one"), Some("run_once"))
    );
    let id = created["id"].as_str().unwrap().to_owned();
    let (status, one) = api.get(&format!("/v1/schedules/{id}"), &reader).await;
    assert_eq!(status, StatusCode::OK);
    let times: Vec<DateTime<Utc>> = serde_json::from_value(one["next_fire_times"].clone()).unwrap();
    assert_eq!(times.len(), 5);
    let berlin: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
    for t in &times {
        let local = t.with_timezone(&berlin);
        // Berlin changes its clocks on Sundays, so weekday 02:30 always exists.
        assert_eq!(local.format("%H:%M").to_string(), "02:30");
        assert!(!matches!(
            chrono::Datelike::weekday(&local),
            chrono::Weekday::Sat | chrono::Weekday::Sun
        ));
    }
    assert!(times.windows(2).all(|w| w[0] < w[1]));
    let (_, list) = api.get("/v1/schedules", &reader).await;
    assert_eq!(list["schedules"].as_array().unwrap().len(), 1);
    // Pause: no fire times shown; resume: they are back.
    let (status, paused) = api
        .call(
            Method::PATCH,
            &format!("/v1/schedules/{id}"),
            Some(&op),
            Some(json!({"paused": true})),
        )
        .await;
    assert_eq!(
        (
            status,
            paused["paused"].clone(),
            paused["next_fire_times"].clone()
        ),
        (StatusCode::OK, json!(true), json!([]))
    );
    let (_, resumed) = api
        .call(
            Method::PATCH,
            &format!("/v1/schedules/{id}"),
            Some(&op),
            Some(json!({"paused": false, "cron": "0 * * * *", "timezone": "UTC"})),
        )
        .await;
    assert_eq!(resumed["next_fire_times"].as_array().unwrap().len(), 5);
    assert_eq!(resumed["cron"], "0 * * * *");
    let (status, _) = api.delete(&format!("/v1/schedules/{id}"), &op).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api.get(&format!("/v1/schedules/{id}"), &op).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, audit) = api.get("/v1/audit", &op).await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in ["schedule.created", "schedule.updated", "schedule.deleted"] {
        assert!(actions.contains(&action), "{actions:?}");
    }
    api.stop().await;
}

async fn bad_schedule_inputs_are_refused_with_the_field_named(db: TestDb) {
    let api = TestApp::on(db)
        .with_api(waymark_api::ApiConfig {
            max_body: 4096,
            ..Default::default()
        })
        .spawn()
        .await;
    let (_, op) = api.key("acme", &["operator"]).await;
    let (_, other) = api.key("globex", &["operator"]).await;
    let (_, reader) = api.key("acme", &["reader"]).await;
    let good =
        json!({"name": "hourly", "cron": "0 * * * *", "workflow": "three_step", "input": {"n": 1}});
    let (status, created) = api.post("/v1/schedules", &op, good.clone()).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = created["id"].as_str().unwrap();
    let with = |patch: Value| {
        let mut body = good.clone();
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (
            with(json!({"name": "other", "cron": "61 * * * *"})),
            422,
            "validation",
            "cron",
        ),
        (
            with(json!({"name": "other", "cron": "* * *"})),
            422,
            "validation",
            "cron",
        ),
        (
            with(json!({"name": "other", "cron": "@reboot"})),
            422,
            "validation",
            "cron",
        ),
        (
            with(json!({"name": "other", "timezone": "Mars/Olympus"})),
            422,
            "validation",
            "Mars/Olympus",
        ),
        (
            with(json!({"name": "other", "workflow": "nope"})),
            422,
            "validation",
            "workflow",
        ),
        (
            with(json!({"name": "other", "input": {"n": "one"}})),
            422,
            "validation",
            "input",
        ),
        (
            with(json!({"name": "other", "overlap": "sometimes"})),
            422,
            "validation",
            "overlap",
        ),
        (
            with(json!({"name": "other", "catch_up": "all"})),
            422,
            "validation",
            "catch_up",
        ),
        (
            with(json!({"name": "other", "colour": "red"})),
            422,
            "validation",
            "colour",
        ),
        (with(json!({"name": ""})), 422, "validation", "name"),
        (
            json!({"cron": "0 * * * *", "workflow": "three_step"}),
            422,
            "validation",
            "name",
        ),
        (with(json!({})), 409, "conflict", "hourly"),
    ];
    for (body, status, kind, needle) in cases {
        let (got, answer) = api.post("/v1/schedules", &op, body.clone()).await;
        assert_eq!(
            (got.as_u16(), problem_type(&answer).as_str()),
            (status, kind),
            "{body}: {answer}"
        );
        assert!(
            answer["detail"].as_str().unwrap().contains(needle),
            "{body}: {answer}"
        );
    }
    let raw = |method: Method, path: String, body: Vec<u8>| {
        let api = &api;
        let op = op.clone();
        async move {
            api.raw(method, &path, &op, Some("application/json"), body, &[])
                .await
        }
    };
    let (status, _) = raw(Method::POST, "/v1/schedules".into(), b"{\"name\":".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = raw(Method::POST, "/v1/schedules".into(), vec![b' '; 5000]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _) = raw(
        Method::PATCH,
        format!("/v1/schedules/{id}"),
        b"{\"cron\": \"bad\"}".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    for path in [
        "/v1/schedules/nope".to_owned(),
        format!("/v1/schedules/{}", Uuid::now_v7()),
    ] {
        for method in [Method::GET, Method::PATCH, Method::DELETE] {
            let (status, _) = api
                .call(method.clone(), &path, Some(&op), Some(json!({})))
                .await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}");
        }
    }
    // Another tenant's schedule does not exist for them; a reader may not write.
    for method in [Method::GET, Method::PATCH, Method::DELETE] {
        let (status, _) = api
            .call(
                method.clone(),
                &format!("/v1/schedules/{id}"),
                Some(&other),
                Some(json!({})),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method}");
    }
    let (status, _) = api
        .post("/v1/schedules", &reader, with(json!({"name": "r"})))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, list) = api.get("/v1/schedules", &other).await;
    assert!(list["schedules"].as_array().unwrap().is_empty());
    api.stop().await;
}

/// A schedule stored directly, with the scheduler's clock.
struct Fixture {
    clock: ManualClock,
    engine: Engine,
    handles: TestWorkflows,
    scheduler: Scheduler,
    holder: Uuid,
    start: DateTime<Utc>,
}

fn fixture(db: &TestDb) -> Fixture {
    // On a whole minute, so minute schedules fire at known instants.
    let start = (Utc::now() - chrono::Duration::days(1)).trunc_subsecs(0);
    let start = start - chrono::Duration::seconds(chrono::Timelike::second(&start) as i64);
    let clock = ManualClock::new(start);
    let (registry, handles) = registry();
    let engine = db.engine(registry, Arc::new(clock.clone()));
    let holder = Uuid::now_v7();
    let scheduler = Scheduler::new(
        engine.clone(),
        SchedulerConfig {
            holder,
            lease: Duration::from_secs(30),
            tick: Duration::from_millis(50),
            grace: Duration::from_secs(60),
        },
    );
    Fixture {
        clock,
        engine,
        handles,
        scheduler,
        holder,
        start,
    }
}

impl Fixture {
    async fn schedule(
        &self,
        workflow: &str,
        input: Value,
        overlap: Overlap,
        catch_up: CatchUp,
    ) -> Schedule {
        let cron = waymark_engine::cron::CronSchedule::parse("* * * * *", "UTC").unwrap();
        self.engine
            .store
            .schedule_insert(
                &Schedule {
                    id: Uuid::now_v7(),
                    tenant: "acme".into(),
                    name: format!("s-{}", Uuid::now_v7()),
                    cron: "* * * * *".into(),
                    timezone: "UTC".into(),
                    workflow: workflow.into(),
                    input,
                    overlap,
                    catch_up,
                    paused: false,
                    last_fired_at: self.start,
                    next_fire_at: cron.next_after(self.start),
                    last_run_id: None,
                    buffered_fire_at: None,
                    created_at: self.start,
                    updated_at: self.start,
                    created_by: "test".into(),
                },
                false,
            )
            .await
            .unwrap()
            .unwrap()
    }

    /// Moves the clock on by `minutes` whole minutes and runs one scheduler pass.
    async fn minutes(&self, minutes: i64) {
        let now = self.clock.now();
        self.clock.set(now + chrono::Duration::minutes(minutes));
        self.tick().await;
    }

    async fn tick(&self) {
        let token = self
            .engine
            .store
            .lease_acquire(LEASE, self.holder, Duration::from_secs(30))
            .await
            .unwrap()
            .expect("the only scheduler holds the lease");
        self.scheduler.tick(token).await.unwrap();
    }

    async fn runs(&self, schedule: &Schedule) -> Vec<waymark_engine::Run> {
        let filter = waymark_engine::store::RunFilter {
            tag: Some(format!("schedule:{}", schedule.id)),
            ..Default::default()
        };
        let mut runs = self
            .engine
            .store
            .runs_list(&TenantScope::All, &filter, None, 1000)
            .await
            .unwrap();
        runs.reverse();
        runs
    }

    fn at(&self, minutes: i64) -> String {
        (self.start + chrono::Duration::minutes(minutes))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }
}

fn keys(runs: &[waymark_engine::Run]) -> Vec<String> {
    runs.iter()
        .map(|r| r.idempotency_key.clone().unwrap())
        .collect()
}

async fn every_due_fire_time_fires_once_in_order(db: TestDb) {
    let f = fixture(&db);
    let s = f
        .schedule("three_step", json!({"n": 1}), Overlap::Allow, CatchUp::Skip)
        .await;
    f.tick().await;
    assert!(f.runs(&s).await.is_empty(), "nothing is due at the start");
    // One minute at a time, then a jump of 59 s past two fire times within the grace.
    f.minutes(1).await;
    f.minutes(1).await;
    f.tick().await; // a second pass at the same instant fires nothing more
    f.clock.set(f.clock.now() + chrono::Duration::seconds(119));
    f.tick().await;
    let runs = f.runs(&s).await;
    assert_eq!(
        keys(&runs),
        vec![
            fire_key(s.id, f.start + chrono::Duration::minutes(1)),
            fire_key(s.id, f.start + chrono::Duration::minutes(2)),
            fire_key(s.id, f.start + chrono::Duration::minutes(3))
        ]
    );
    assert!(runs
        .iter()
        .all(|r| r.tenant == "acme" && r.workflow == "three_step"));
    let stored = f
        .engine
        .store
        .schedule_get(&TenantScope::All, s.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.last_fired_at, f.start + chrono::Duration::minutes(3));
    assert_eq!(
        stored.next_fire_at,
        Some(f.start + chrono::Duration::minutes(4))
    );
    assert_eq!(stored.last_run_id, Some(runs[2].id));
    let _ = f.at(0);
}

async fn overlap_skip_starts_nothing_while_the_previous_run_lives(db: TestDb) {
    let f = fixture(&db);
    let s = f
        .schedule("gated", json!({}), Overlap::Skip, CatchUp::Skip)
        .await;
    let runner = spawn_runner(f.engine.clone(), test_runner_config());
    f.minutes(1).await;
    let first = f.runs(&s).await.remove(0);
    wait_for_run(&f.engine.store, first.id, "running", |r| {
        r.status == RunStatus::Running
    })
    .await;
    f.minutes(1).await;
    f.minutes(1).await;
    assert_eq!(f.runs(&s).await.len(), 1, "skipped while the first lives");
    f.handles.gate.add_permits(1);
    wait_for_run(&f.engine.store, first.id, "completed", |r| {
        r.status == RunStatus::Completed
    })
    .await;
    f.minutes(1).await;
    let runs = f.runs(&s).await;
    assert_eq!(runs.len(), 2);
    assert_eq!(
        runs[1].idempotency_key,
        Some(fire_key(s.id, f.start + chrono::Duration::minutes(4)))
    );
    f.handles.gate.add_permits(1);
    runner.stop().await;
}

async fn overlap_buffer_one_keeps_one_fire_time_for_later(db: TestDb) {
    let f = fixture(&db);
    let s = f
        .schedule("gated", json!({}), Overlap::BufferOne, CatchUp::Skip)
        .await;
    let runner = spawn_runner(f.engine.clone(), test_runner_config());
    f.minutes(1).await;
    let first = f.runs(&s).await.remove(0);
    wait_for_run(&f.engine.store, first.id, "running", |r| {
        r.status == RunStatus::Running
    })
    .await;
    f.minutes(1).await;
    f.minutes(1).await;
    let stored = f
        .engine
        .store
        .schedule_get(&TenantScope::All, s.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.buffered_fire_at,
        Some(f.start + chrono::Duration::minutes(3)),
        "the newer fire time replaced the older"
    );
    assert_eq!(f.runs(&s).await.len(), 1);
    f.handles.gate.add_permits(1);
    wait_for_run(&f.engine.store, first.id, "completed", |r| {
        r.status == RunStatus::Completed
    })
    .await;
    f.tick().await;
    let runs = f.runs(&s).await;
    assert_eq!(
        keys(&runs)[1],
        fire_key(s.id, f.start + chrono::Duration::minutes(3))
    );
    let stored = f
        .engine
        .store
        .schedule_get(&TenantScope::All, s.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.buffered_fire_at, None);
    f.handles.gate.add_permits(1);
    runner.stop().await;
}

async fn overlap_allow_and_cancel_previous(db: TestDb) {
    let f = fixture(&db);
    let allow = f
        .schedule("gated", json!({}), Overlap::Allow, CatchUp::Skip)
        .await;
    let cancel = f
        .schedule("gated", json!({}), Overlap::CancelPrevious, CatchUp::Skip)
        .await;
    f.minutes(1).await;
    f.minutes(1).await;
    f.minutes(1).await;
    assert_eq!(f.runs(&allow).await.len(), 3, "allow: runs overlap");
    let replaced = f.runs(&cancel).await;
    assert_eq!(replaced.len(), 3);
    // No runner: the first two were pending, so cancelling ends them at once.
    for run in &replaced[..2] {
        let run = f
            .engine
            .store
            .run_get(&TenantScope::All, run.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(run.status, RunStatus::Cancelled);
        assert_eq!(run.ending.unwrap().actor, format!("schedule:{}", cancel.id));
    }
    let last = f
        .engine
        .store
        .run_get(&TenantScope::All, replaced[2].id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(last.status, RunStatus::Pending);
}

async fn missed_fire_times_are_skipped_or_fired_once_after_downtime(db: TestDb) {
    let f = fixture(&db);
    let skip = f
        .schedule("three_step", json!({"n": 1}), Overlap::Allow, CatchUp::Skip)
        .await;
    let once = f
        .schedule(
            "three_step",
            json!({"n": 1}),
            Overlap::Allow,
            CatchUp::RunOnce,
        )
        .await;
    // Down for 10½ minutes: fire times 1..9 are late by more than 60 s; 10 is not.
    f.clock.set(f.start + chrono::Duration::seconds(630));
    f.tick().await;
    assert_eq!(
        keys(&f.runs(&skip).await),
        vec![fire_key(skip.id, f.start + chrono::Duration::minutes(10))]
    );
    assert_eq!(
        keys(&f.runs(&once).await),
        vec![
            fire_key(once.id, f.start + chrono::Duration::minutes(9)),
            fire_key(once.id, f.start + chrono::Duration::minutes(10))
        ]
    );
    for s in [&skip, &once] {
        let stored = f
            .engine
            .store
            .schedule_get(&TenantScope::All, s.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            stored.last_fired_at,
            f.start + chrono::Duration::minutes(10)
        );
    }
}

async fn only_the_lease_holder_fires(db: TestDb) {
    let f = fixture(&db);
    let other = Uuid::now_v7();
    let store = &f.engine.store;
    let token = store
        .lease_acquire(LEASE, f.holder, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store
            .lease_acquire(LEASE, other, Duration::from_secs(30))
            .await
            .unwrap(),
        None,
        "held by another"
    );
    assert_eq!(
        store
            .lease_acquire(LEASE, f.holder, Duration::from_secs(30))
            .await
            .unwrap(),
        Some(token),
        "renewal keeps the token"
    );
    // A scheduler that lost the lease cannot advance a schedule.
    let s = f
        .schedule("three_step", json!({"n": 1}), Overlap::Allow, CatchUp::Skip)
        .await;
    store.lease_release(LEASE, f.holder).await.unwrap();
    let taken = store
        .lease_acquire(LEASE, other, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert!(taken > token, "the token only increases");
    f.clock.set(f.start + chrono::Duration::minutes(1));
    let err = f.scheduler.tick(token).await.unwrap_err();
    assert!(err.is_lease_lost(), "{err}");
    assert!(f.runs(&s).await.is_empty());
}
