//! The dashboard's schedules page and the runs a schedule started, through real HTTP
//! on both backends: each schedule lists its latest runs (found by the
//! `schedule:<id>` tag the scheduler gives them), only from its own tenant.

use chrono::SubsecRound;
use reqwest::{Method, StatusCode};
use uuid::Uuid;
use waymark_engine::store::{CatchUp, Overlap, RunFilter, Schedule};
use waymark_engine::TenantScope;
use waymark_workers::scheduler::{Scheduler, SchedulerConfig, LEASE};

use crate::dashboard::{start, Browser};
use crate::support::app::TestApp;
use crate::support::{on_both_backends, TestDb};

on_both_backends!(schedules_list_their_recent_runs_within_the_tenant);

/// A schedule of `workflow` every minute in UTC for `tenant`, last fired `minutes`
/// whole minutes ago: the next scheduler pass fires that many runs (one more if a
/// minute turns meanwhile).
async fn minutely_schedule(api: &TestApp, tenant: &str, name: &str, minutes: i64) -> Uuid {
    let now = chrono::Utc::now().trunc_subsecs(0);
    let minute = now - chrono::Duration::seconds(chrono::Timelike::second(&now) as i64);
    let last = minute - chrono::Duration::minutes(minutes);
    let cron = waymark_engine::cron::CronSchedule::parse("* * * * *", "UTC").unwrap();
    api.engine
        .store
        .schedule_insert(
            &Schedule {
                id: Uuid::now_v7(),
                tenant: tenant.into(),
                name: name.into(),
                cron: "* * * * *".into(),
                timezone: "UTC".into(),
                workflow: "ledger".into(),
                input: serde_json::json!({}),
                overlap: Overlap::Allow,
                catch_up: CatchUp::Skip,
                paused: false,
                last_fired_at: last,
                next_fire_at: cron.next_after(last),
                last_run_id: None,
                buffered_fire_at: None,
                created_at: last,
                updated_at: last,
                created_by: "test".into(),
            },
            false,
        )
        .await
        .unwrap()
        .unwrap()
        .id
}

/// The run ids listed in a schedule's row of the schedules page, in page order.
fn recent_runs_on(body: &str, schedule: Uuid) -> Vec<String> {
    let at = body
        .find(&format!(r#"data-schedule="{schedule}""#))
        .unwrap_or_else(|| panic!("schedule {schedule} is listed: {body}"));
    let row = &body[at..at + body[at..].find("</tr>").unwrap()];
    row.split(r#"<li data-run=""#)
        .skip(1)
        .map(|s| s[..36].to_owned())
        .collect()
}

async fn schedules_list_their_recent_runs_within_the_tenant(db: TestDb) {
    let (api, _) = start(db).await;
    let (_, acme) = api.key("acme", &["operator"]).await;
    let (_, beta) = api.key("beta", &["operator"]).await;
    let nightly = minutely_schedule(&api, "acme", "acme minutely", 7).await;
    let other = minutely_schedule(&api, "beta", "beta minutely", 2).await;
    // One scheduler pass fires every fire time within the (generous) grace: the runs
    // are the scheduler's own, tagged by it.
    let holder = Uuid::now_v7();
    let scheduler = Scheduler::new(
        api.engine.clone(),
        SchedulerConfig {
            holder,
            lease: std::time::Duration::from_secs(30),
            tick: std::time::Duration::from_millis(50),
            grace: std::time::Duration::from_secs(3600),
        },
    );
    let token = api
        .engine
        .store
        .lease_acquire(LEASE, holder, std::time::Duration::from_secs(30))
        .await
        .unwrap()
        .expect("the only scheduler holds the lease");
    scheduler.tick(token).await.unwrap();
    let fired = |id: Uuid| {
        let store = api.engine.store.clone();
        async move {
            let filter = RunFilter {
                tag: Some(format!("schedule:{id}")),
                ..RunFilter::default()
            };
            let runs = store
                .runs_list(&TenantScope::All, &filter, None, 100)
                .await
                .unwrap();
            runs.into_iter()
                .map(|r| r.id.to_string())
                .collect::<Vec<_>>()
        }
    };
    let acme_runs = fired(nightly).await;
    let beta_runs = fired(other).await;
    assert!(acme_runs.len() >= 7, "{acme_runs:?}");
    assert!((2..5).contains(&beta_runs.len()), "{beta_runs:?}");
    // Runs another tenant tagged with a schedule's id through the API are not its runs.
    let forged = |key: String, id: Uuid| {
        let api = &api;
        async move {
            let (status, run) = api
                .call(
                    Method::POST,
                    &format!("/v1/workflows/ledger/runs?tag=schedule:{id}"),
                    Some(&key),
                    Some(serde_json::json!({})),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{run}");
            run["id"].as_str().unwrap().to_owned()
        }
    };
    let forged_in_acme = forged(beta.clone(), nightly).await;
    let forged_in_beta = forged(acme.clone(), other).await;

    // The operator of acme: the five newest runs, newest first, each linked with its
    // status and start time, and a link to all of them.
    let mut browser = Browser::login(&api, &acme).await;
    let page = browser.get("/ui/schedules").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(recent_runs_on(&page.body, nightly), acme_runs[..5].to_vec());
    let newest = &acme_runs[0];
    let at = page
        .body
        .find(&format!(r#"<li data-run="{newest}""#))
        .unwrap();
    let item = &page.body[at..at + page.body[at..].find("</li>").unwrap()];
    assert!(
        item.contains(&format!(r#"href="/ui/runs/{newest}""#)),
        "{item}"
    );
    assert!(
        item.contains(r#"class="status"#) && item.contains("<time datetime="),
        "{item}"
    );
    let all = format!("/ui/runs?tag=schedule:{nightly}");
    assert!(
        page.body.contains(&format!(r#"href="{all}""#)),
        "{}",
        page.body
    );
    let listed = browser.get(&all).await;
    assert_eq!(listed.status, StatusCode::OK);
    for id in &acme_runs {
        assert!(listed.body.contains(&format!(r#"data-run="{id}""#)), "{id}");
    }
    // Nothing of beta's: its schedule, its runs, nor the run acme tagged with its id.
    assert!(!page.body.contains("beta minutely") && !page.body.contains(&other.to_string()));
    for id in beta_runs.iter().chain([&forged_in_acme, &forged_in_beta]) {
        assert!(!page.body.contains(id.as_str()), "{id}");
    }

    // The operator of beta: fewer than five runs, so no link to more; none of acme's.
    let mut as_beta = Browser::login(&api, &beta).await;
    let page = as_beta.get("/ui/schedules").await;
    assert_eq!(recent_runs_on(&page.body, other), beta_runs);
    assert!(!page.body.contains("All runs of"), "{}", page.body);
    assert!(!page.body.contains("acme minutely"));
    for id in acme_runs.iter().chain([&forged_in_acme, &forged_in_beta]) {
        assert!(!page.body.contains(id.as_str()), "{id}");
    }

    // The admin sees both schedules, each with its own tenant's runs only.
    let mut as_admin = Browser::login(&api, &api.admin).await;
    let page = as_admin.get("/ui/schedules").await;
    assert_eq!(recent_runs_on(&page.body, nightly), acme_runs[..5].to_vec());
    assert_eq!(recent_runs_on(&page.body, other), beta_runs);
    api.stop().await;
}
