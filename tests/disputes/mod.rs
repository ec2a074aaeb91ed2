//! Payment disputes through real HTTP on both backends, with a manual clock: the
//! signed webhook ingress (its whole table of wrong inputs, duplicates, secret roll,
//! tenant isolation, out-of-order events, dead letters and their replay) and the
//! `payment_dispute` lifecycle (won through the embedded network simulator, a missed
//! deadline conceded, late evidence refused).
//!
//! The harness is reached only through the helpers at the top ([`start`], [`Disputes`]),
//! so moving to another test app changes them alone.
//!
//! # Layout
//! - this file: the helpers, and a dispute won and one conceded end to end;
//! - [`ingress`]: the signed webhook ingress, its wrong inputs, secret roll, dead letters;
//! - [`files`]: evidence files; [`status`]: deadlines in the run's status;
//! - [`kill`]: a `waymark serve` SIGKILLed during its submission;
//! - [`lifecycle`]: the workflow's paths, one test per way a dispute can go;
//! - [`network`]: the HTTP network adapter against a real HTTP server;
//! - [`mail`]: the merchant's emails read back from the real SMTP server.

mod dashboard;
mod files;
mod ingress;
mod kill;
mod lifecycle;
mod mail;
mod network;
mod status;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;
use waymark_engine::{Clock, ManualClock, RunStatus};
use waymark_services::{BlobStore, MailConfig, Mailer, SmtpOptions};
use waymark_workflows::disputes::network::{Network, Simulator};
use waymark_workflows::disputes::{signature, DisputeSettings, PaymentDispute};

use crate::support::app::TestApp;
use crate::support::{manual_clock, on_both_backends, wait_for_run, TestDb};

const DAY: Duration = Duration::from_secs(86_400);

struct Disputes {
    api: TestApp,
    clock: ManualClock,
    /// An operator key of tenant `acme`.
    operator: String,
    /// The operator key's id, as actors name it (`key:<id>`).
    operator_id: String,
    /// The embedded network simulator, unless the app talks HTTP to a network.
    simulator: Option<Arc<Simulator>>,
    /// Where evidence files go, shared by the API and the workflow.
    blobs: BlobStore,
    /// Seconds past the clock's now of the next event [`Disputes::event_for`] makes, so
    /// each is newer than the last.
    event_seq: AtomicI64,
}

fn outbox_mailer(store: &waymark_engine::Store) -> Mailer {
    Mailer::from_config(
        &MailConfig {
            smtp_url: None,
            smtp: SmtpOptions {
                timeout: Duration::from_secs(10),
                pool_size: 1,
                ca_file: None,
            },
            outbox_dir: std::env::temp_dir()
                .join(format!("waymark-disputes-{}", Uuid::now_v7().simple())),
            default_from: "Waymark <disputes@waymark.example>".into(),
        },
        store.clone(),
    )
    .expect("mailer")
}

/// How [`start_with`] sets the app up.
struct Setup {
    network: Network,
    mailer: fn(&waymark_engine::Store) -> Mailer,
    /// Without a runner, runs stay where they are until the test spawns one.
    workers: bool,
    /// `None`: a local store of the test's own (see [`LOCAL_LINKS`]).
    blobs: Option<BlobStore>,
}

/// The origin of a local store's links in these tests: the app's port is not known
/// when the store is made, so a test opens a link at the app's own address instead.
const LOCAL_LINKS: &str = "http://127.0.0.1:1";

impl Default for Setup {
    fn default() -> Self {
        Setup {
            network: Network::simulator(),
            mailer: outbox_mailer,
            workers: true,
            blobs: None,
        }
    }
}

async fn start(db: TestDb) -> Disputes {
    start_with(db, Setup::default()).await
}

async fn start_with(db: TestDb, setup: Setup) -> Disputes {
    let (clock, _) = manual_clock();
    let simulator = match &setup.network {
        Network::Simulator(sim) => Some(sim.clone()),
        Network::Http { .. } => None,
    };
    let network = setup.network;
    let mailer = setup.mailer;
    let blobs = setup.blobs.unwrap_or_else(|| {
        let dir =
            std::env::temp_dir().join(format!("waymark-evidence-{}", Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        crate::support::app::local_blobs(&dir, LOCAL_LINKS.into())
    });
    let workflow_blobs = blobs.clone();
    let app = TestApp::on(db)
        .with_clock(&clock)
        .serving_blobs(blobs.clone())
        .with_workflows(move |registry, store, sealer| {
            registry
                .register(PaymentDispute {
                    store: store.clone(),
                    mailer: mailer(store),
                    network,
                    blobs: workflow_blobs,
                    sealer: sealer.clone(),
                    settings: DisputeSettings::default(),
                })
                .unwrap();
        });
    let app = if setup.workers {
        app
    } else {
        app.without_workers()
    };
    let api = app.spawn().await;
    let (operator_id, operator) = api.key("acme", &["operator"]).await;
    Disputes {
        api,
        clock,
        operator,
        operator_id,
        simulator,
        blobs,
        event_seq: AtomicI64::new(1),
    }
}

fn event(id: &str, kind: &str, dispute: &str, created: DateTime<Utc>, due: DateTime<Utc>) -> Value {
    json!({"id": id, "type": kind, "created": created.to_rfc3339(),
           "data": {"dispute": {"id": dispute, "charge": "ch_1", "amount": 4200, "currency": "usd",
                    "reason": "fraudulent", "status": "needs_response", "evidence_due_by": due.to_rfc3339(),
                    "merchant": {"email": "merchant@example.test", "name": "Shop"}}}})
}

impl Disputes {
    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// A new signing secret (or a roll) for `tenant`, by the admin.
    async fn secret(&self, tenant: &str, grace: Option<&str>) -> String {
        let body = match grace {
            Some(grace) => json!({ "grace": grace }),
            None => json!({}),
        };
        let (status, answer) = self
            .api
            .call(
                Method::POST,
                &format!("/v1/disputes/webhook-secret?tenant={tenant}"),
                Some(&self.api.admin),
                Some(body),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        answer["secret"].as_str().unwrap().to_owned()
    }

    /// Posts `body` raw to `tenant`'s webhook URL with `signature` as the header.
    async fn post_raw(
        &self,
        tenant: &str,
        body: Vec<u8>,
        signature: Option<String>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .api
            .http
            .post(format!("{}/v1/webhooks/{tenant}/disputes", self.api.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(signature) = signature {
            request = request.header(signature::HEADER, signature);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Posts `event` signed with `secret` at the engine clock's now.
    async fn deliver(&self, tenant: &str, secret: &str, event: &Value) -> (StatusCode, Value) {
        let body = event.to_string().into_bytes();
        let header = signature::sign(&[secret], self.now().timestamp(), &body);
        self.post_raw(tenant, body, Some(header)).await
    }

    async fn dispute(&self, id: &str) -> Value {
        let (status, body) = self
            .api
            .call(
                Method::GET,
                &format!("/v1/disputes/{id}"),
                Some(&self.operator),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    async fn run_in(&self, run: Uuid, state: &'static str) -> waymark_engine::Run {
        wait_for_run(&self.api.engine.store, run, state, |r| {
            r.state == state && r.status == RunStatus::Waiting
        })
        .await
    }

    /// Waits until `run` completed, and returns it.
    async fn finished(&self, run: Uuid) -> waymark_engine::Run {
        wait_for_run(&self.api.engine.store, run, "completed", |r| {
            r.status == RunStatus::Completed
        })
        .await
    }

    /// Opens dispute `id` (`dispute.created` for `amount` minor units of `currency`, its
    /// evidence due `due_in` from now, the merchant at `email`) and returns its run.
    async fn open_for(
        &self,
        secret: &str,
        id: &str,
        (amount, currency): (i64, &str),
        due_in: chrono::Duration,
        email: &str,
    ) -> Uuid {
        let now = self.now();
        let mut created = event(
            &format!("evt_{id}_created"),
            "dispute.created",
            id,
            now,
            now + due_in,
        );
        created["data"]["dispute"]["amount"] = json!(amount);
        created["data"]["dispute"]["currency"] = json!(currency);
        created["data"]["dispute"]["merchant"]["email"] = json!(email);
        let (status, answer) = self.deliver("acme", secret, &created).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        run_id(&answer)
    }

    /// [`Disputes::open_for`] USD 42.00 due in 20 days.
    async fn open(&self, secret: &str, id: &str) -> Uuid {
        self.open_for(
            secret,
            id,
            (4200, "usd"),
            chrono::Duration::days(20),
            "merchant@example.test",
        )
        .await
    }

    /// A `kind` event for dispute `id` saying `status`, newer than every event before it,
    /// carrying what the dispute already records (amount, due date, merchant).
    async fn event_for(&self, id: &str, kind: &str, status: &str) -> Value {
        let view = self.dispute(id).await;
        let seq = self.event_seq.fetch_add(1, Ordering::Relaxed);
        json!({"id": format!("evt_{id}_{seq}"), "type": kind,
               "created": (self.now() + chrono::Duration::seconds(seq)).to_rfc3339(),
               "data": {"dispute": {"id": id, "charge": view["charge"], "amount": view["amount"],
                        "currency": view["currency"], "reason": view["reason"], "status": status,
                        "evidence_due_by": view["evidence_due_by"],
                        "merchant": {"email": view["merchant_email"],
                                     "name": view["merchant_name"].as_str().unwrap_or("Shop")}}}})
    }

    /// The network says `status` about dispute `id` in a `kind` event; asserts the
    /// event was applied.
    async fn network_says(&self, secret: &str, id: &str, kind: &str, status: &str) {
        let e = self.event_for(id, kind, status).await;
        let (code, answer) = self.deliver("acme", secret, &e).await;
        assert_eq!(
            (code, answer["result"]["outcome"].clone()),
            (StatusCode::ACCEPTED, json!("applied")),
            "{kind} {status}: {answer}"
        );
    }

    /// Submits the merchant's evidence for dispute `id`: the answer.
    async fn try_evidence(&self, id: &str) -> (StatusCode, Value) {
        self.api
            .call(
                Method::POST,
                &format!("/v1/disputes/{id}/evidence"),
                Some(&self.operator),
                Some(json!({"product_description": "A red bicycle", "refund_policy": "30 days"})),
            )
            .await
    }

    /// Submits the merchant's evidence for dispute `id`; asserts it was taken.
    async fn evidence(&self, id: &str) {
        let (status, answer) = self.try_evidence(id).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    }

    /// The merchant concedes dispute `id`: the answer.
    async fn accept(&self, id: &str) -> (StatusCode, Value) {
        self.api
            .call(
                Method::POST,
                &format!("/v1/disputes/{id}/accept"),
                Some(&self.operator),
                Some(json!({})),
            )
            .await
    }

    /// An operator sends `signal` to `run`; asserts it was delivered.
    async fn signal(&self, run: Uuid, signal: &str, payload: Value) {
        let (status, answer) = self
            .api
            .call(
                Method::POST,
                &format!("/v1/runs/{run}/signals/{signal}"),
                Some(&self.operator),
                Some(payload),
            )
            .await;
        assert!(status.is_success(), "{signal}: {status} {answer}");
    }

    /// Sets the tenant's per-currency approval thresholds (minor units).
    async fn thresholds(&self, thresholds: Value) {
        let (status, answer) = self
            .api
            .call(
                Method::PUT,
                "/v1/disputes/settings",
                Some(&self.operator),
                Some(json!({ "approval_thresholds": thresholds })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }

    /// Waits until `run` waits in `state` and `condition` holds of it.
    async fn run_where(
        &self,
        run: Uuid,
        state: &'static str,
        condition: impl Fn(&waymark_engine::Run) -> bool,
    ) -> waymark_engine::Run {
        wait_for_run(&self.api.engine.store, run, state, |r| {
            r.state == state && r.status == RunStatus::Waiting && condition(r)
        })
        .await
    }
}

/// Whether the dispute's timeline has `what` done by `actor` (any actor when `None`).
fn timeline_has(view: &Value, what: &str, actor: Option<&str>) -> bool {
    view["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["what"] == what && actor.is_none_or(|a| t["actor"] == a))
}

fn run_id(answer: &Value) -> Uuid {
    answer["result"]["run_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn a_dispute_is_won_through_evidence_submission_and_the_network_decision(db: TestDb) {
    let d = start(db).await;
    let secret = d.secret("acme", None).await;
    let now = d.now();
    let due = now + chrono::Duration::days(20);
    let (_, answer) = d
        .deliver(
            "acme",
            &secret,
            &event("evt_w1", "dispute.created", "dp_w", now, due),
        )
        .await;
    let run = run_id(&answer);
    d.run_in(run, "awaiting_evidence").await;
    let (status, answer) = d
        .api
        .call(
            Method::POST,
            "/v1/disputes/dp_w/evidence",
            Some(&d.operator),
            Some(json!({"product_description": "A red bicycle", "refund_policy": "30 days"})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    d.run_in(run, "awaiting_decision").await;
    let (status, answer) = d
        .api
        .call(
            Method::POST,
            "/v1/disputes/dp_w/evidence",
            Some(&d.operator),
            Some(json!({"product_description": "again"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    let mut closed = event(
        "evt_w2",
        "dispute.closed",
        "dp_w",
        d.now() + chrono::Duration::seconds(1),
        due,
    );
    closed["data"]["dispute"]["status"] = json!("won");
    let (status, answer) = d.deliver("acme", &secret, &closed).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let finished = wait_for_run(&d.api.engine.store, run, "completed", |r| {
        r.status == RunStatus::Completed
    })
    .await;
    assert_eq!(finished.output.as_ref().unwrap()["outcome"], "won");
    let view = d.dispute("dp_w").await;
    assert_eq!(view["status"], "closed");
    assert_eq!(
        view["evidence"]["fields"]["product_description"],
        "A red bicycle"
    );
    // A late event for the closed dispute is a dead letter, not a silent drop.
    let late = event(
        "evt_w3",
        "dispute.updated",
        "dp_w",
        d.now() + chrono::Duration::seconds(2),
        due,
    );
    let (_, answer) = d.deliver("acme", &secret, &late).await;
    assert_eq!(answer["result"]["why"], "the dispute is closed");
    d.api.stop().await;
}

async fn a_missed_deadline_concedes_and_late_evidence_is_refused(db: TestDb) {
    let d = start(db).await;
    let secret = d.secret("acme", None).await;
    let now = d.now();
    // Due in 3 days: the internal deadline is 2 days away (24 h margin).
    let due = now + chrono::Duration::days(3);
    let (_, answer) = d
        .deliver(
            "acme",
            &secret,
            &event("evt_m1", "dispute.created", "dp_m", now, due),
        )
        .await;
    let run = run_id(&answer);
    d.run_in(run, "awaiting_evidence").await;
    d.clock.advance(2 * DAY);
    let finished = wait_for_run(&d.api.engine.store, run, "completed", |r| {
        r.status == RunStatus::Completed
    })
    .await;
    assert_eq!(finished.output.as_ref().unwrap()["outcome"], "lost");
    assert_eq!(
        finished.output.as_ref().unwrap()["reason"],
        "evidence deadline missed"
    );
    let (status, answer) = d
        .api
        .call(
            Method::POST,
            "/v1/disputes/dp_m/evidence",
            Some(&d.operator),
            Some(json!({"product_description": "late"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    let detail = answer["detail"].as_str().unwrap();
    assert!(
        detail.contains("deadline passed")
            && detail.contains(&(due - chrono::Duration::days(1)).to_rfc3339()),
        "{detail}"
    );
    let view = d.dispute("dp_m").await;
    assert_eq!(view["outcome_reason"], "evidence deadline missed");
    assert!(view["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["what"] == "conceded" && t["actor"] == "timer"));
    d.api.stop().await;
}

on_both_backends!(
    a_dispute_is_won_through_evidence_submission_and_the_network_decision,
    a_missed_deadline_concedes_and_late_evidence_is_refused,
);
