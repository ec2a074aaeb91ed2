//! Key rotation end to end through HTTP, on Waymark's own keys: both keys work through
//! the grace and the old one stops after; emergency, confirm, abort, revoke_now; one
//! rotation at a time; scheduled rotation with reveal-once; the emails read back from
//! the real SMTP server; and no secret anywhere in rows or emails.

use std::path::PathBuf;
use std::time::Duration;

use mail_parser::MessageParser;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;
use waymark_engine::{Clock, ManualClock, RunStatus, TenantScope};
use waymark_services::{MailConfig, Mailer, SmtpOptions};
use waymark_workers::scheduler::{Scheduler, SchedulerConfig, LEASE};
use waymark_workflows::key_rotation::{KeyRotation, RotationSettings};

use crate::support::app::{problem_type, TestApp};
use crate::support::services::service_env;
use crate::support::{
    manual_clock, on_both_backends, wait_for_run, wait_for_status, wait_until, Backend, TestDb,
};

fn mailer(store: &waymark_engine::Store) -> Mailer {
    Mailer::from_config(
        &MailConfig {
            smtp_url: Some(format!("smtp://{}", service_env("WAYMARK_TEST_SMTP_ADDR"))),
            smtp: SmtpOptions {
                timeout: Duration::from_secs(10),
                pool_size: 2,
                ca_file: None,
            },
            outbox_dir: std::env::temp_dir().join("waymark-rotation-outbox"),
            default_from: "Waymark <keys@waymark.example>".into(),
        },
        store.clone(),
    )
    .expect("mailer")
}

/// Every delivered message to `to`, as (subject, text body, raw).
fn mails_to(to: &str) -> Vec<(String, String, String)> {
    let dir = PathBuf::from(service_env("WAYMARK_TEST_MAILDIR")).join("new");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(String, String, String)> = entries
        .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
        .filter_map(|raw| {
            let message = MessageParser::default().parse(&raw)?;
            let addressed = message
                .to()
                .and_then(|a| a.first())
                .and_then(|a| a.address())
                .is_some_and(|a| a == to);
            addressed.then(|| {
                (
                    message.subject().unwrap_or_default().to_owned(),
                    message
                        .body_text(0)
                        .map(|t| t.into_owned())
                        .unwrap_or_default(),
                    String::from_utf8_lossy(&raw).into_owned(),
                )
            })
        })
        .collect();
    found.sort();
    found
}

async fn wait_mail(to: &str, subject_part: &str) -> (String, String, String) {
    wait_until(
        &format!("a mail to {to} about {subject_part:?}"),
        Duration::from_secs(20),
        || async {
            mails_to(to)
                .iter()
                .any(|(s, _, _)| s.contains(subject_part))
        },
    )
    .await;
    mails_to(to)
        .into_iter()
        .find(|(s, _, _)| s.contains(subject_part))
        .unwrap()
}

struct Rotation {
    api: TestApp,
    clock: ManualClock,
    owner: String,
    old_id: String,
    old: String,
    db_backend: Backend,
}

async fn setup(db: TestDb) -> Rotation {
    let (clock, _) = manual_clock();
    let backend = db.backend;
    let api = TestApp::on(db)
        .with_clock(&clock)
        .with_workflows(|registry, store, sealer| {
            registry
                .register(KeyRotation {
                    store: store.clone(),
                    mailer: mailer(store),
                    sealer: sealer.clone(),
                    settings: RotationSettings {
                        reveal_max_wait: Duration::from_secs(2 * 3600),
                        remind_when_grace_at_least: Duration::from_secs(3600),
                    },
                })
                .unwrap();
        })
        .spawn()
        .await;
    let owner = format!("owner-{}@example.test", Uuid::now_v7().simple());
    let (status, key) = api
        .post("/v1/keys", &api.admin, json!({"tenant": "acme", "scopes": ["operator"], "name": "billing", "owner_email": owner}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    Rotation {
        old_id: key["id"].as_str().unwrap().to_owned(),
        old: key["secret"].as_str().unwrap().to_owned(),
        api,
        clock,
        owner,
        db_backend: backend,
    }
}

impl Rotation {
    async fn whoami(&self, key: &str) -> StatusCode {
        self.api.get("/v1/whoami", key).await.0
    }

    async fn rotate(&self, body: Value) -> (String, String, Uuid) {
        let (status, rotated) = self
            .api
            .post(&format!("/v1/keys/{}/rotate", self.old_id), &self.old, body)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{rotated}");
        (
            rotated["id"].as_str().unwrap().to_owned(),
            rotated["secret"].as_str().unwrap().to_owned(),
            rotated["run_id"].as_str().unwrap().parse().unwrap(),
        )
    }

    async fn run_state(&self, run: Uuid, state: &'static str) -> waymark_engine::Run {
        wait_for_run(&self.api.engine.store, run, state, |r| {
            r.state == state && r.status == RunStatus::Waiting
        })
        .await
    }

    async fn signal(&self, run: Uuid, name: &str, payload: Value) -> StatusCode {
        self.api
            .post(
                &format!("/v1/runs/{run}/signals/{name}"),
                &self.old,
                payload,
            )
            .await
            .0
    }

    async fn wait_unauthorized(&self, key: &str) {
        let (http, url, key) = (
            self.api.http.clone(),
            format!("{}/v1/whoami", self.api.base),
            key.to_owned(),
        );
        wait_until("the key stops working", Duration::from_secs(20), || {
            let (http, url, key) = (http.clone(), url.clone(), key.clone());
            async move {
                http.get(url)
                    .bearer_auth(key)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    == StatusCode::UNAUTHORIZED
            }
        })
        .await;
    }

    /// No secret part of `secrets` in any run, history, signal or audit row, nor in any
    /// mail to the owner.
    async fn assert_no_secrets(&self, secrets: &[&str], db: &TestDb) {
        let cast = if self.db_backend == Backend::Postgres {
            "::text"
        } else {
            ""
        };
        let sql = format!(
            "SELECT input{cast} || state_data{cast} || coalesce(output{cast}, '') || coalesce(error{cast}, '') FROM waymark_runs \
             UNION ALL SELECT coalesce(error{cast}, '') || actor FROM waymark_history \
             UNION ALL SELECT payload{cast} FROM waymark_signals \
             UNION ALL SELECT detail{cast} || coalesce(target, '') FROM waymark_audit"
        );
        let rows = db.texts(&sql).await;
        assert!(!rows.is_empty());
        let mails = mails_to(&self.owner);
        for secret in secrets {
            let part = secret.splitn(3, '_').nth(2).unwrap();
            assert!(
                rows.iter().all(|r| !r.contains(part)),
                "a secret is in a database row"
            );
            assert!(
                mails.iter().all(|(_, _, raw)| !raw.contains(part)),
                "a secret is in an email"
            );
        }
    }
}

on_both_backends!(
    both_keys_work_through_the_grace_and_the_old_one_stops_after,
    an_emergency_rotation_revokes_the_old_key_at_once,
    confirm_ends_the_grace_early_and_revoke_now_revokes_at_once,
    abort_revokes_the_new_key_and_keeps_the_old_one,
    a_second_rotation_and_bad_requests_are_refused,
    a_scheduled_rotation_keeps_the_secret_sealed_and_starts_the_grace_at_the_reveal,
    without_an_owner_email_the_tenants_admin_is_told,
    a_policy_rotation_fired_while_another_rotates_the_key_is_skipped,
);

/// A rotation policy's schedule can fire while a rotation of the key is already under
/// way (one started by hand, say): the fired run sees it and ends without issuing a key.
async fn a_policy_rotation_fired_while_another_rotates_the_key_is_skipped(db: TestDb) {
    let r = setup(db).await;
    let (new_id, _, active) = r.rotate(json!({"grace_period": "24h"})).await;
    // What the policy's schedule starts: no new key yet, so the run begins at `issue`.
    let fired = r
        .api
        .engine
        .start(waymark_engine::StartRun {
            tenant: "acme".into(),
            workflow: "key_rotation".into(),
            input: json!({"key_id": r.old_id, "grace_period": "1h"}),
            idempotency_key: None,
            tags: vec![],
            actor: "test".into(),
        })
        .await
        .unwrap()
        .run
        .id;
    let run = wait_for_status(&r.api.engine.store, fired, RunStatus::Completed).await;
    assert_eq!(
        run.output.unwrap()["outcome"],
        format!("skipped: run {active} was already rotating this key")
    );
    let keys = r
        .api
        .engine
        .store
        .run_get(&TenantScope::All, active)
        .await
        .unwrap()
        .expect("the active rotation");
    assert!(!keys.status.is_terminal(), "the active rotation goes on");
    let (status, listed) = r.api.get("/v1/keys?limit=100", &r.old).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let ids: Vec<&str> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|k| k["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 2, "no third key was issued: {listed}");
    assert!(ids.contains(&new_id.as_str()) && ids.contains(&r.old_id.as_str()));
    r.api.stop().await;
}

async fn without_an_owner_email_the_tenants_admin_is_told(db: TestDb) {
    let r = setup(db).await;
    let admin_email = format!("admin-{}@example.test", Uuid::now_v7().simple());
    let now = if r.db_backend == Backend::Postgres {
        "now()".to_owned()
    } else {
        "1".to_owned()
    };
    r.api
        .db()
        .execute(&format!(
            "INSERT INTO waymark_tenants (slug, name, plan, admin_email, storage_quota_bytes, runs_quota, \
             status, activated_at, created_at, updated_at) \
             VALUES ('initech', 'Initech', 'free', '{admin_email}', 1000, NULL, 'active', {now}, {now}, {now})"
        ))
        .await
        .unwrap();
    let (_, key) = r
        .api
        .post(
            "/v1/keys",
            &r.api.admin,
            json!({"tenant": "initech", "scopes": ["reader"]}),
        )
        .await;
    let (status, rotated) = r
        .api
        .post(
            &format!("/v1/keys/{}/rotate", key["id"].as_str().unwrap()),
            &r.api.admin,
            json!({"emergency": true}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let run: Uuid = rotated["run_id"].as_str().unwrap().parse().unwrap();
    let done = wait_for_run(&r.api.engine.store, run, "ended", |x| {
        x.status.is_terminal()
    })
    .await;
    assert_eq!(done.status, RunStatus::Completed, "{:?}", done.error);
    let (subject, _, _) = wait_mail(&admin_email, "is being rotated").await;
    assert!(subject.contains(&key["prefix"].as_str().unwrap().to_owned()));
    r.api.stop().await;
}

async fn both_keys_work_through_the_grace_and_the_old_one_stops_after(db: TestDb) {
    let r = setup(db).await;
    let (new_id, new, run) = r
        .rotate(json!({"grace_period": "2h", "reason": "quarterly"}))
        .await;
    assert_eq!(r.whoami(&r.old).await, StatusCode::OK);
    let (status, who) = r.api.get("/v1/whoami", &new).await;
    assert_eq!(
        (status, who["key_id"].as_str()),
        (StatusCode::OK, Some(new_id.as_str()))
    );
    assert_eq!(
        who["scopes"],
        json!(["operator"]),
        "the new key inherits the scopes"
    );
    let grace = r.run_state(run, "grace").await;
    // The status shows whether clients still use the old key.
    let (_, status_view) = r.api.get(&format!("/v1/runs/{run}"), &r.old).await;
    assert!(
        status_view["details"]["old_key"]["last_used_at"].is_string(),
        "{status_view}"
    );
    assert_eq!(status_view["details"]["new_key"]["id"], new_id);
    let (subject, text, _) = wait_mail(&r.owner, "is being rotated").await;
    assert!(subject.contains(&r.old[4..16]), "{subject}");
    assert!(
        text.contains(&new_id) && text.contains("quarterly"),
        "{text}"
    );
    // A reminder when a fifth of the grace is left.
    r.clock
        .set(grace.updated_at + chrono::Duration::minutes(96));
    let (_, reminder, _) = wait_mail(&r.owner, "Reminder").await;
    assert!(reminder.contains("last used at"), "{reminder}");
    r.run_state(run, "grace").await;
    assert_eq!(r.whoami(&r.old).await, StatusCode::OK, "still in the grace");
    r.clock.set(grace.updated_at + chrono::Duration::hours(2));
    r.wait_unauthorized(&r.old).await;
    assert_eq!(r.whoami(&new).await, StatusCode::OK);
    let done = wait_for_run(&r.api.engine.store, run, "completed", |x| {
        x.status == RunStatus::Completed
    })
    .await;
    assert_eq!(done.output.unwrap()["outcome"], "rotated");
    wait_mail(&r.owner, "has been revoked").await;
    r.assert_no_secrets(&[&r.old, &new], r.api.db()).await;
    r.api.stop().await;
}

async fn an_emergency_rotation_revokes_the_old_key_at_once(db: TestDb) {
    let r = setup(db).await;
    let (_, new, run) = r
        .rotate(json!({"emergency": true, "reason": "leaked in a log"}))
        .await;
    r.wait_unauthorized(&r.old).await;
    assert_eq!(r.whoami(&new).await, StatusCode::OK);
    wait_for_run(&r.api.engine.store, run, "completed", |x| {
        x.status == RunStatus::Completed
    })
    .await;
    let (_, text, _) = wait_mail(&r.owner, "is being rotated").await;
    assert!(text.contains("emergency"), "{text}");
    r.api.stop().await;
}

async fn confirm_ends_the_grace_early_and_revoke_now_revokes_at_once(db: TestDb) {
    let r = setup(db).await;
    let (_, new, run) = r.rotate(json!({"grace_period": "24h"})).await;
    r.run_state(run, "grace").await;
    assert_eq!(
        r.signal(run, "confirm", Value::Null).await,
        StatusCode::CREATED
    );
    r.wait_unauthorized(&r.old).await;
    wait_for_run(&r.api.engine.store, run, "completed", |x| {
        x.status == RunStatus::Completed
    })
    .await;
    // Now rotate the new key and revoke it mid-grace (a leak found during the rotation).
    let (status, second) = r
        .api
        .post(
            &format!("/v1/keys/{}/rotate", who(&r, &new).await),
            &new,
            json!({"grace_period": "24h"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    let run2: Uuid = second["run_id"].as_str().unwrap().parse().unwrap();
    r.run_state(run2, "grace").await;
    let status = r
        .api
        .call(
            Method::POST,
            &format!("/v1/runs/{run2}/signals/revoke_now"),
            Some(&new),
            None,
        )
        .await
        .0;
    assert_eq!(status, StatusCode::CREATED);
    r.wait_unauthorized(&new).await;
    assert_eq!(
        r.whoami(second["secret"].as_str().unwrap()).await,
        StatusCode::OK
    );
    r.api.stop().await;
}

async fn who(r: &Rotation, key: &str) -> String {
    r.api.get("/v1/whoami", key).await.1["key_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn abort_revokes_the_new_key_and_keeps_the_old_one(db: TestDb) {
    let r = setup(db).await;
    let (_, new, run) = r.rotate(json!({"grace_period": "24h"})).await;
    r.run_state(run, "grace").await;
    assert_eq!(
        r.signal(run, "abort", json!({"reason": "wrong key"})).await,
        StatusCode::CREATED
    );
    let cancelled = wait_for_run(&r.api.engine.store, run, "cancelled", |x| {
        x.status == RunStatus::Cancelled
    })
    .await;
    assert_eq!(cancelled.ending.unwrap().reason, "wrong key");
    r.wait_unauthorized(&new).await;
    assert_eq!(
        r.whoami(&r.old).await,
        StatusCode::OK,
        "the old key stays valid"
    );
    r.api.stop().await;
}

async fn a_second_rotation_and_bad_requests_are_refused(db: TestDb) {
    let r = setup(db).await;
    let (_, _, run) = r.rotate(json!({"grace_period": "24h"})).await;
    let path = format!("/v1/keys/{}/rotate", r.old_id);
    let (status, body) = r.api.post(&path, &r.old, json!({})).await;
    assert_eq!(
        (status, problem_type(&body).as_str()),
        (StatusCode::CONFLICT, "conflict")
    );
    assert!(
        body["detail"].as_str().unwrap().contains(&run.to_string()),
        "names the active run: {body}"
    );
    for (payload, expected) in [
        (json!({"grace_period": "0s"}), 422),
        (json!({"grace_period": "soon"}), 422),
        (json!({"grace_period": 5}), 422),
        (json!({"emergency": "yes"}), 422),
        (json!({"colour": "red"}), 422),
    ] {
        let (status, body) = r.api.post(&path, &r.old, payload.clone()).await;
        assert_eq!(status.as_u16(), expected, "{payload}: {body}");
    }
    let (_, reader) = r.api.key("acme", &["reader"]).await;
    let (_, other) = r.api.key("globex", &["operator"]).await;
    assert_eq!(
        r.api.call(Method::POST, &path, Some(&reader), None).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        r.api.call(Method::POST, &path, Some(&other), None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        r.api
            .call(
                Method::POST,
                &format!("/v1/keys/{}/rotate", Uuid::now_v7()),
                Some(&r.old),
                None
            )
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        r.api
            .call(Method::POST, "/v1/keys/nope/rotate", Some(&r.old), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    // Signals that only make sense during the grace are conflicts otherwise.
    r.run_state(run, "grace").await;
    assert_eq!(
        r.signal(run, "abort", json!({"reason": 7})).await,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    r.api.stop().await;
}

async fn a_scheduled_rotation_keeps_the_secret_sealed_and_starts_the_grace_at_the_reveal(
    db: TestDb,
) {
    let r = setup(db).await;
    let (status, policy) = r
        .api
        .call(
            Method::PUT,
            &format!("/v1/keys/{}/rotation-policy", r.old_id),
            Some(&r.old),
            Some(json!({"cron": "0 4 * * *", "grace_period": "1h"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{policy}");
    let schedule: Uuid = policy["id"].as_str().unwrap().parse().unwrap();
    // Fire it: the clock reaches 04:00 UTC and the scheduler looks.
    let config = SchedulerConfig::default();
    let holder = config.holder;
    let scheduler = Scheduler::new(r.api.engine.clone(), config);
    let next: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(policy["next_fire_times"][0].clone()).unwrap();
    r.clock.set(next + chrono::Duration::seconds(1));
    let token = r
        .api
        .engine
        .store
        .lease_acquire(LEASE, holder, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    scheduler.tick(token).await.unwrap();
    let stored = r
        .api
        .engine
        .store
        .schedule_get(&TenantScope::All, schedule)
        .await
        .unwrap()
        .unwrap();
    let run = stored.last_run_id.expect("the policy fired");
    let waiting = r.run_state(run, "await_reveal").await;
    let new_id = waiting.state_data["new_key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, new_key) = r.api.get(&format!("/v1/keys/{new_id}"), &r.old).await;
    assert_eq!(new_key["awaiting_reveal"], true);
    // Nobody has seen the new key: hours pass, the old key keeps working.
    r.clock.set(r.clock.now() + chrono::Duration::hours(1));
    assert_eq!(r.whoami(&r.old).await, StatusCode::OK);
    // Past the maximum wait the owner is reminded and the rotation escalates, revoking nothing.
    r.clock.set(r.clock.now() + chrono::Duration::hours(2));
    let (_, text, _) = wait_mail(&r.owner, "Action needed").await;
    assert!(
        text.contains(&format!("/v1/keys/{new_id}/reveal")),
        "{text}"
    );
    r.run_state(run, "await_reveal").await;
    assert_eq!(r.whoami(&r.old).await, StatusCode::OK);
    // The owner reveals it, once; the grace starts now.
    let (status, revealed) = r
        .api
        .call(
            Method::POST,
            &format!("/v1/keys/{new_id}/reveal"),
            Some(&r.old),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let new = revealed["secret"].as_str().unwrap().to_owned();
    assert_eq!(r.whoami(&new).await, StatusCode::OK);
    assert_eq!(
        r.api
            .call(
                Method::POST,
                &format!("/v1/keys/{new_id}/reveal"),
                Some(&r.old),
                None
            )
            .await
            .0,
        StatusCode::CONFLICT
    );
    let grace = r.run_state(run, "grace").await;
    assert_eq!(r.whoami(&r.old).await, StatusCode::OK);
    r.clock.set(grace.updated_at + chrono::Duration::hours(1));
    r.wait_unauthorized(&r.old).await;
    wait_for_run(&r.api.engine.store, run, "completed", |x| {
        x.status == RunStatus::Completed
    })
    .await;
    // The policy moves on to the new key.
    let moved = r
        .api
        .engine
        .store
        .schedule_get(&TenantScope::All, schedule)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(moved.input["key_id"], json!(new_id));
    let sealed_rows = r
        .api
        .engine
        .store
        .key_get(&TenantScope::All, new_id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(!sealed_rows.awaiting_reveal, "only the hash remains");
    r.api.stop().await;
}

/// A server killed with SIGKILL mid-grace still revokes the old key on time after it
/// restarts, and nothing it logged holds a secret.
#[tokio::test]
async fn a_server_killed_mid_grace_still_revokes_the_old_key_on_time() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let db = TestDb::sqlite().await;
    let data_dir = std::path::Path::new(&db.location)
        .parent()
        .unwrap()
        .to_path_buf();
    let admin = waymark_engine::keys::Secret::generate();
    let spawn = || {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_waymark"));
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(crate::support::edge_log_env())
            .env("WAYMARK_DATA_DIR", &data_dir)
            .env("WAYMARK_LISTEN", "127.0.0.1:0")
            .env("WAYMARK_LEASE", "2s")
            .env("WAYMARK_POLL_INTERVAL", "200ms")
            .env("WAYMARK_LOG", "debug")
            .env("WAYMARK_BOOTSTRAP_KEY", admin.expose())
            .env(
                "WAYMARK_SMTP_URL",
                format!("smtp://{}", service_env("WAYMARK_TEST_SMTP_ADDR")),
            )
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        cmd.spawn().expect("spawn waymark")
    };
    async fn started(child: &mut tokio::process::Child) -> String {
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                .await
                .expect("waymark did not start")
                .unwrap()
                .expect("waymark exited");
            if let Some(rest) = line.strip_prefix("waymark: listening on http://") {
                return format!("http://{}", rest.split_whitespace().next().unwrap());
            }
        }
    }
    // Drain stderr while the process runs: a full pipe would stall its logging.
    fn drain(child: &mut tokio::process::Child) -> tokio::task::JoinHandle<String> {
        let mut stderr = child.stderr.take().unwrap();
        tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        })
    }
    let mut logs = String::new();
    let mut first = spawn();
    let first_logs = drain(&mut first);
    let base = started(&mut first).await;
    let http = reqwest::Client::new();
    let owner = format!("owner-{}@example.test", Uuid::now_v7().simple());
    let old: Value = http
        .post(format!("{base}/v1/keys"))
        .bearer_auth(admin.expose())
        .json(&json!({"tenant": "acme", "scopes": ["operator"], "owner_email": owner}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let old_secret = old["secret"].as_str().unwrap().to_owned();
    let rotated: Value = http
        .post(format!(
            "{base}/v1/keys/{}/rotate",
            old["id"].as_str().unwrap()
        ))
        .bearer_auth(&old_secret)
        .json(&json!({"grace_period": "4s"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run: Uuid = rotated["run_id"].as_str().unwrap().parse().unwrap();
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    let grace = wait_for_run(&db.store, run, "grace", |r| {
        r.state == "grace" && r.status == RunStatus::Waiting
    })
    .await;
    let ends_at: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(grace.state_data["ends_at"].clone()).unwrap();
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    logs.push_str(&first_logs.await.unwrap());
    let mut second = spawn();
    let second_logs = drain(&mut second);
    let base = started(&mut second).await;
    let url = format!("{base}/v1/whoami");
    wait_until(
        "the old key is revoked after the restart",
        Duration::from_secs(60),
        || {
            let (http, url, key) = (http.clone(), url.clone(), old_secret.clone());
            async move {
                http.get(url)
                    .bearer_auth(key)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    == StatusCode::UNAUTHORIZED
            }
        },
    )
    .await;
    let revoked = db
        .store
        .key_get(
            &TenantScope::All,
            old["id"].as_str().unwrap().parse().unwrap(),
        )
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .unwrap();
    assert!(
        revoked >= ends_at,
        "revoked at {revoked}, before the grace ended at {ends_at}"
    );
    assert_eq!(
        http.get(&url)
            .bearer_auth(&new_secret)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    wait_for_run(&db.store, run, "completed", |r| {
        r.status == RunStatus::Completed
    })
    .await;
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(second.id().unwrap().to_string())
        .status()
        .unwrap();
    second.wait().await.unwrap();
    logs.push_str(&second_logs.await.unwrap());
    assert!(logs.contains("DEBUG"));
    for secret in [&old_secret, &new_secret, &admin.expose().to_owned()] {
        let part = secret.splitn(3, '_').nth(2).unwrap();
        assert!(!logs.contains(part), "a secret is in the logs");
    }
    wait_mail(&owner, "has been revoked").await;
}
