//! Keyset pagination on every list route besides `/v1/runs` (which `api` covers): keys,
//! schedules, workers, tenants, a run's history and its signals. For each, through
//! real HTTP on both backends: walking the pages with a small `limit` yields every item
//! exactly once, in the same order as one big page, with no page over the limit and
//! `next_cursor` null exactly on the last; another tenant's items never appear on any
//! page; and a bad `limit`, a bad `cursor` or an unknown parameter is a 422 naming it.

use std::time::Duration;

use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;
use waymark_engine::store::WorkerInfo;
use waymark_engine::{
    Definition, StateDef, StepContext, StepError, TenantScope, Transition, Workflow, WorkflowState,
};
use waymark_workflows::tenants::plans::Quota;
use waymark_workflows::tenants::record::{self, NewTenant};

use crate::support::app::{problem_type, TestApp};
use crate::support::{on_both_backends, wait_until, TestDb};

on_both_backends!(
    keys_are_paged_by_id_within_the_callers_tenant,
    schedules_are_paged_by_id_within_the_callers_tenant,
    workers_are_paged_newest_first_without_hosts_for_non_admins,
    tenants_are_paged_by_slug_and_an_operator_sees_only_its_own,
    a_runs_history_and_signals_are_paged_oldest_first,
);

/// Walks `path` (which may carry a query already) page by page with `limit`, checking
/// the paging contract on the way; the `field` of every item, in order.
async fn walk(
    api: &TestApp,
    key: &str,
    path: &str,
    items: &str,
    field: &str,
    limit: u32,
) -> Vec<String> {
    let join = if path.contains('?') { '&' } else { '?' };
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let url = match &cursor {
            Some(c) => format!("{path}{join}limit={limit}&cursor={c}"),
            None => format!("{path}{join}limit={limit}"),
        };
        let (status, page) = api.get(&url, key).await;
        assert_eq!(status, StatusCode::OK, "{url}: {page}");
        let list = page[items]
            .as_array()
            .unwrap_or_else(|| panic!("{url}: {page}"));
        assert!(
            list.len() <= limit as usize,
            "{url}: over the limit: {page}"
        );
        for item in list {
            seen.push(match &item[field] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
        }
        match &page["next_cursor"] {
            Value::Null => return seen,
            Value::String(next) => {
                // Only the last page may be short, and none is empty.
                assert_eq!(
                    list.len(),
                    limit as usize,
                    "{url}: a short page with a next one"
                );
                cursor = Some(next.clone());
            }
            other => panic!("{url}: next_cursor {other}"),
        }
    }
    panic!("{path}: the pages never end")
}

/// The `field` of every item of one page of 500: the order the walk must reproduce.
async fn all(api: &TestApp, key: &str, path: &str, items: &str, field: &str) -> Vec<String> {
    walk(api, key, path, items, field, 500).await
}

fn assert_once_each(seen: &[String], what: &str) {
    let mut unique = seen.to_vec();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        seen.len(),
        "{what}: an item came twice: {seen:?}"
    );
}

/// A bad `limit`, a bad `cursor` and an unknown parameter answer 422 naming the field.
async fn refuses_bad_paging(api: &TestApp, key: &str, path: &str, bad_cursor: &str) {
    let join = if path.contains('?') { '&' } else { '?' };
    for (query, field) in [
        ("limit=0".to_owned(), "limit"),
        ("limit=501".to_owned(), "limit"),
        ("limit=x".to_owned(), "limit"),
        (format!("cursor={bad_cursor}"), "cursor"),
        ("limt=2".to_owned(), "limt"),
    ] {
        let url = format!("{path}{join}{query}");
        let (status, body) = api.get(&url, key).await;
        assert_eq!(
            (status, problem_type(&body).as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, "validation"),
            "{url}: {body}"
        );
        assert!(
            body["detail"].as_str().unwrap_or_default().contains(field),
            "{url}: the detail should name {field}: {body}"
        );
    }
}

async fn keys_are_paged_by_id_within_the_callers_tenant(db: TestDb) {
    let api = TestApp::on(db).spawn().await;
    let (op_id, op) = api.key("acme", &["operator"]).await;
    let mut acme = vec![op_id];
    for _ in 0..4 {
        acme.push(api.key("acme", &["reader"]).await.0);
    }
    let mut globex = Vec::new();
    for _ in 0..3 {
        globex.push(api.key("globex", &["reader"]).await.0);
    }
    // Ids are time-ordered: creation order is id order.
    let seen = walk(&api, &op, "/v1/keys", "keys", "id", 2).await;
    assert_eq!(seen, acme, "the tenant's keys, oldest first, each once");
    assert_eq!(seen, all(&api, &op, "/v1/keys", "keys", "id").await);
    let every = walk(&api, &api.admin, "/v1/keys", "keys", "id", 3).await;
    assert_once_each(&every, "keys");
    assert_eq!(every, all(&api, &api.admin, "/v1/keys", "keys", "id").await);
    assert!(acme.iter().chain(&globex).all(|k| every.contains(k)));
    // A cursor from the admin's walk does not let the tenant past its own keys.
    let (_, page) = api.get(&format!("/v1/keys?cursor={}", every[0]), &op).await;
    let listed: Vec<&str> = page["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["tenant"].as_str().unwrap())
        .collect();
    assert!(listed.iter().all(|t| *t == "acme"), "{page}");
    refuses_bad_paging(&api, &op, "/v1/keys", "not-a-cursor").await;
    api.stop().await;
}

async fn schedules_are_paged_by_id_within_the_callers_tenant(db: TestDb) {
    let api = TestApp::on(db).spawn().await;
    let (_, acme_op) = api.key("acme", &["operator"]).await;
    let (_, acme_reader) = api.key("acme", &["reader"]).await;
    let (_, globex_op) = api.key("globex", &["operator"]).await;
    let create = |key: String, name: String| {
        let api = &api;
        async move {
            let body = json!({"name": name, "cron": "0 0 1 1 *", "workflow": "three_step",
                "input": {"n": 1}, "paused": true});
            let (status, created) = api.post("/v1/schedules", &key, body).await;
            assert_eq!(status, StatusCode::CREATED, "{created}");
            created["id"].as_str().unwrap().to_owned()
        }
    };
    let mut acme = Vec::new();
    // Names against creation order, so a list by name would not pass for one by id.
    for name in ["e", "d", "c", "b", "a"] {
        acme.push(create(acme_op.clone(), format!("nightly-{name}")).await);
    }
    let mut globex = Vec::new();
    for n in 0..2 {
        globex.push(create(globex_op.clone(), format!("nightly-{n}")).await);
    }
    let seen = walk(&api, &acme_reader, "/v1/schedules", "schedules", "id", 2).await;
    assert_eq!(
        seen, acme,
        "the tenant's schedules, oldest first, each once"
    );
    assert_eq!(
        seen,
        all(&api, &acme_reader, "/v1/schedules", "schedules", "id").await
    );
    let theirs = walk(&api, &globex_op, "/v1/schedules", "schedules", "id", 1).await;
    assert_eq!(theirs, globex);
    let every = walk(&api, &api.admin, "/v1/schedules", "schedules", "id", 3).await;
    assert_once_each(&every, "schedules");
    assert_eq!(
        every,
        all(&api, &api.admin, "/v1/schedules", "schedules", "id").await
    );
    assert!(acme.iter().chain(&globex).all(|s| every.contains(s)));
    refuses_bad_paging(&api, &acme_reader, "/v1/schedules", "nightly-a").await;
    api.stop().await;
}

async fn workers_are_paged_newest_first_without_hosts_for_non_admins(db: TestDb) {
    let api = TestApp::on(db).spawn().await;
    let (_, op) = api.key("acme", &["operator"]).await;
    let mut registered = Vec::new();
    for n in 0..5 {
        let worker = WorkerInfo {
            id: Uuid::now_v7(),
            host: format!("host-{n}"),
            pid: 1000 + n,
            version: "test".into(),
            capabilities: Vec::new(),
            workflows: vec!["three_step@1".into()],
            started_at: chrono::Utc::now(),
            last_heartbeat_at: chrono::Utc::now(),
            runs_in_hand: 0,
            stopped_at: None,
        };
        api.engine.store.worker_register(&worker).await.unwrap();
        registered.push(worker.id.to_string());
    }
    let seen = walk(&api, &op, "/v1/workers", "workers", "id", 2).await;
    assert_once_each(&seen, "workers");
    assert_eq!(seen, all(&api, &op, "/v1/workers", "workers", "id").await);
    // The harness's own runner is registered too; ours are the newest, newest first.
    registered.reverse();
    assert_eq!(seen[..5], registered[..], "{seen:?}");
    assert!(seen.len() > 5, "the runner's worker is missing: {seen:?}");
    // Hosts and process ids stay hidden from a tenant on every page.
    let mut cursor = String::new();
    loop {
        let (_, page) = api.get(&format!("/v1/workers?limit=2{cursor}"), &op).await;
        for worker in page["workers"].as_array().unwrap() {
            assert!(
                worker.get("host").is_none() && worker.get("pid").is_none(),
                "{page}"
            );
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    let hosts = walk(&api, &api.admin, "/v1/workers", "workers", "host", 2).await;
    assert!(hosts.contains(&"host-0".to_owned()), "{hosts:?}");
    refuses_bad_paging(&api, &op, "/v1/workers", "host-0").await;
    api.stop().await;
}

async fn tenants_are_paged_by_slug_and_an_operator_sees_only_its_own(db: TestDb) {
    let api = TestApp::on(db).spawn().await;
    // Reserved out of slug order, so a list by creation would not pass for one by slug.
    for slug in ["umbrella", "acme", "initech", "globex", "hooli"] {
        let new = NewTenant {
            slug: slug.into(),
            name: slug.into(),
            plan: "free".into(),
            admin_email: format!("admin@{slug}.test"),
            quota: Quota {
                storage_bytes: 0,
                runs: None,
            },
        };
        record::reserve_for_run(&api.engine.store, &new, Uuid::now_v7(), chrono::Utc::now())
            .await
            .unwrap();
    }
    let (_, op) = api.key("acme", &["operator"]).await;
    let every = walk(&api, &api.admin, "/v1/tenants", "tenants", "slug", 2).await;
    assert_eq!(
        every,
        all(&api, &api.admin, "/v1/tenants", "tenants", "slug").await
    );
    let mut sorted = every.clone();
    sorted.sort();
    assert_eq!(every, sorted, "by slug");
    assert_once_each(&every, "tenants");
    for slug in ["acme", "globex", "hooli", "initech", "umbrella"] {
        assert!(
            every.contains(&slug.to_owned()),
            "{slug} missing: {every:?}"
        );
    }
    // An operator's pages hold its own tenant alone, whatever the cursor.
    assert_eq!(
        walk(&api, &op, "/v1/tenants", "tenants", "slug", 1).await,
        ["acme"]
    );
    let (status, page) = api.get("/v1/tenants?cursor=aaa", &op).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["tenants"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["tenants"][0]["slug"], "acme");
    let (_, page) = api.get("/v1/tenants?cursor=acme", &op).await;
    assert_eq!(page, json!({"tenants": [], "next_cursor": null}));
    refuses_bad_paging(&api, &op, "/v1/tenants", "Not%20A%20Slug").await;
    api.stop().await;
}

async fn a_runs_history_and_signals_are_paged_oldest_first(db: TestDb) {
    let api = TestApp::on(db)
        .with_workflows(|registry, _, _| {
            registry.register(Guestbook).unwrap();
        })
        .spawn()
        .await;
    let (_, acme) = api.key("acme", &["operator"]).await;
    let (_, globex) = api.key("globex", &["operator"]).await;
    let (ours, our_signals) = signed_guestbook(&api, &acme, 5).await;
    let (theirs, their_signals) = signed_guestbook(&api, &globex, 2).await;

    let signals = format!("/v1/runs/{ours}/signals");
    let seen = walk(&api, &acme, &signals, "signals", "id", 2).await;
    assert_eq!(seen, our_signals, "oldest first, each once");
    assert_eq!(seen, all(&api, &acme, &signals, "signals", "id").await);
    assert!(!seen.iter().any(|s| their_signals.contains(s)));

    let history = format!("/v1/runs/{ours}/history");
    let seen = walk(&api, &acme, &history, "history", "id", 2).await;
    assert_once_each(&seen, "history");
    assert_eq!(seen, all(&api, &acme, &history, "history", "id").await);
    // Start, then one transition per signal at least.
    assert!(seen.len() > 5, "{seen:?}");
    let ids: Vec<i64> = seen.iter().map(|h| h.parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first: {ids:?}");
    let (_, page) = api.get(&history, &acme).await;
    assert!(page["history"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["run_id"] == json!(ours)));

    // Another tenant's run stays absent, with or without a cursor.
    for path in [
        format!(
            "/v1/runs/{theirs}/signals?limit=1&cursor={}",
            our_signals[0]
        ),
        format!("/v1/runs/{theirs}/history?limit=1&cursor={}", ids[0]),
    ] {
        let (status, body) = api.get(&path, &acme).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    refuses_bad_paging(&api, &acme, &signals, "42").await;
    refuses_bad_paging(&api, &acme, &history, "not-a-cursor").await;
    refuses_bad_paging(&api, &acme, &history, "0").await;
    api.stop().await;
}

/// Starts a guestbook run, signs it `n` times and waits until every signature is taken
/// (so its history stops growing); the run's id and the signals' ids, oldest first.
async fn signed_guestbook(api: &TestApp, key: &str, n: usize) -> (String, Vec<String>) {
    let run = api.start_run(key, "guestbook", json!({})).await;
    let id = run["id"].as_str().unwrap().to_owned();
    let mut signals = Vec::new();
    for n in 0..n {
        let (status, sent) = api
            .post(
                &format!("/v1/runs/{id}/signals/sign"),
                key,
                json!({"by": format!("guest {n}")}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{sent}");
        signals.push(sent["id"].as_str().unwrap().to_owned());
    }
    let store = api.engine.store.clone();
    let run_id: Uuid = id.parse().unwrap();
    wait_until("every signature is taken", Duration::from_secs(30), || {
        let store = store.clone();
        async move {
            let run = store
                .run_get(&TenantScope::All, run_id)
                .await
                .unwrap()
                .unwrap();
            let signals = store.run_signals(&TenantScope::All, run_id).await.unwrap();
            run.status == waymark_engine::RunStatus::Waiting
                && signals.unwrap().iter().all(|s| s.status == "consumed")
        }
    })
    .await;
    (id, signals)
}

/// `open` takes a `sign` signal and waits for the next, forever: a run whose signals
/// and history grow one by one.
struct Guestbook;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum Book {
    Open,
}

impl WorkflowState for Book {
    fn name(&self) -> &'static str {
        "open"
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "signal", content = "payload", rename_all = "snake_case")]
enum Entry {
    Sign {
        // Never read: it is the shape the API checks a `sign` payload against.
        #[allow(dead_code)]
        by: String,
    },
}

impl waymark_engine::WorkflowSignal for Entry {}

impl Workflow for Guestbook {
    const NAME: &'static str = "guestbook";
    type Input = Value;
    type State = Book;
    type Output = String;
    type Signal = Entry;

    fn definition() -> Definition {
        Definition::new([StateDef::new("open").on_signal("sign", "open")]).signal("sign")
    }

    fn initial_state(_: &Value) -> Book {
        Book::Open
    }

    async fn step(
        &self,
        _: &StepContext,
        _: &Value,
        _: Book,
    ) -> Result<Transition<Book, String>, StepError> {
        Ok(waymark_engine::Wait::on("sign", Book::Open).into())
    }
}
