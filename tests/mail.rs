//! The mailer against a real SMTP server (aiosmtpd, started by `./test.sh` through
//! `scripts/test-services.sh`) that stores what it accepts in a Maildir, and against
//! the outbox folder. Messages are read back from the Maildir and parsed.
//!
//! The ledger tests run through the real engine and runner on both backends: a step
//! that sends and then fails is retried and sends once; a state entered twice sends
//! twice.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mail_parser::{MessageParser, MimeHeaders};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use waymark_engine::workflow::Registry;
use waymark_engine::{
    Definition, ErrorKind, NoSignal, RetryPolicy, RunStatus, StateDef, StepContext, StepError,
    SystemClock, Transition, Workflow, WorkflowState,
};
use waymark_services::mail::{message_id, LedgerStatus};
use waymark_services::{Attachment, Email, MailConfig, MailError, Mailer, SmtpOptions, Templates};

use crate::support::services::service_env;
use crate::support::{
    on_both_backends, spawn_runner, start_req, test_runner_config, wait_for_status, wait_until,
    TestDb,
};

fn smtp_url() -> String {
    format!("smtp://{}", service_env("WAYMARK_TEST_SMTP_ADDR"))
}

fn maildir() -> PathBuf {
    PathBuf::from(service_env("WAYMARK_TEST_MAILDIR")).join("new")
}

fn mailer_with(url: Option<String>, ca_file: Option<PathBuf>, db: &TestDb) -> Mailer {
    Mailer::from_config(
        &MailConfig {
            smtp_url: url,
            smtp: SmtpOptions {
                timeout: Duration::from_secs(10),
                pool_size: 2,
                ca_file,
            },
            outbox_dir: db.data_dir().join("outbox"),
            default_from: "Waymark Tests <tests@waymark.example>".into(),
        },
        db.store.clone(),
    )
    .expect("mailer")
}

fn smtp_mailer(db: &TestDb) -> Mailer {
    mailer_with(Some(smtp_url()), None, db)
}

/// Every message in the Maildir with this Message-ID (angle brackets included), raw.
fn delivered(id: &str) -> Vec<Vec<u8>> {
    let bare = id.trim_start_matches('<').trim_end_matches('>');
    let Ok(entries) = std::fs::read_dir(maildir()) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
        .filter(|raw| {
            MessageParser::default()
                .parse(raw)
                .and_then(|m| m.message_id().map(|m| m == bare))
                .unwrap_or(false)
        })
        .collect()
}

/// Waits until `count` messages with `id` are in the Maildir, and returns them.
async fn wait_delivered(id: &str, count: usize) -> Vec<Vec<u8>> {
    wait_until(
        &format!("{count} message(s) {id} in the Maildir"),
        Duration::from_secs(10),
        || async { delivered(id).len() >= count },
    )
    .await;
    delivered(id)
}

fn unique(local: &str) -> String {
    format!("{local}-{}@example.test", Uuid::now_v7().simple())
}

fn key() -> String {
    format!("{}:1:0", Uuid::now_v7())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_delivers_headers_both_parts_and_the_attachment() {
    let db = TestDb::sqlite().await;
    let mailer = smtp_mailer(&db);
    let mut templates = Templates::new();
    templates
        .add(
            "invite",
            "Meeting with {{ name }}",
            "Hello {{ name }}, see the invitation attached.",
            Some("<p>Hello <b>{{ name }}</b>, see the invitation attached.</p>"),
        )
        .unwrap();
    let to = unique("ada");
    let cc = unique("charles");
    let bcc = unique("audit");
    let ics = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nMETHOD:REQUEST\r\nEND:VCALENDAR\r\n";
    let key = key();
    let email = Email::new()
        .from("Scheduling <schedule@waymark.example>")
        .to(format!("Ada Lovelace <{to}>"))
        .cc(cc.clone())
        .bcc(bcc.clone())
        .reply_to("help@waymark.example")
        .content(
            templates
                .render("invite", serde_json::json!({ "name": "Ada & co" }))
                .unwrap(),
        )
        .attach(Attachment::new(
            "invite.ics",
            "text/calendar; charset=utf-8; method=REQUEST",
            ics.as_bytes().to_vec(),
        ));

    let sent = mailer.send(&key, email).await.expect("send");
    assert!(sent.delivered_now);
    assert_eq!(sent.message_id, message_id(&key, "waymark.example"));

    let raw = wait_delivered(&sent.message_id, 1).await;
    assert_eq!(raw.len(), 1, "one message with the id");
    let message = MessageParser::default().parse(&raw[0]).unwrap();
    assert_eq!(message.subject(), Some("Meeting with Ada & co"));
    assert_eq!(
        message
            .from()
            .and_then(|a| a.first())
            .and_then(|a| a.address()),
        Some("schedule@waymark.example")
    );
    let first_to = message.to().and_then(|a| a.first()).unwrap();
    assert_eq!(first_to.address(), Some(to.as_str()));
    assert_eq!(first_to.name(), Some("Ada Lovelace"));
    assert!(message.bcc().is_none(), "Bcc is not in the headers");
    let envelope_to = message.header_raw("X-Envelope-To").unwrap();
    for rcpt in [&to, &cc, &bcc] {
        assert!(
            envelope_to.contains(rcpt.as_str()),
            "{rcpt} in envelope {envelope_to}"
        );
    }
    assert_eq!(
        message.body_text(0).unwrap().trim(),
        "Hello Ada & co, see the invitation attached."
    );
    assert_eq!(
        message.body_html(0).unwrap().trim(),
        "<p>Hello <b>Ada &amp; co</b>, see the invitation attached.</p>"
    );
    let attachment = message.attachments().next().expect("an attachment");
    assert_eq!(attachment.attachment_name(), Some("invite.ics"));
    let content_type = attachment.content_type().unwrap();
    assert_eq!(
        (content_type.ctype(), content_type.subtype()),
        ("text", Some("calendar"))
    );
    assert_eq!(content_type.attribute("method"), Some("REQUEST"));
    assert_eq!(attachment.contents(), ics.as_bytes());

    let entry = mailer.ledger_entry(&key).await.unwrap().unwrap();
    assert_eq!(entry.status, LedgerStatus::Sent);
    assert_eq!(entry.message_id, sent.message_id);
    assert_eq!(entry.attempts, 1);
    assert_eq!(entry.transport, "smtp");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_gets_one_eml_file_per_key() {
    let db = TestDb::sqlite().await;
    let mailer = mailer_with(None, None, &db);
    let outbox = db.data_dir().join("outbox");
    let key = key();
    let email = Email::new()
        .to("ada@example.test")
        .subject("Embedded mode")
        .text("text part")
        .html("<p>html part</p>");

    let sent = mailer.send(&key, email.clone()).await.unwrap();
    assert!(sent.delivered_now);
    let again = mailer.send(&key, email).await.unwrap();
    assert!(!again.delivered_now, "the retry found it sent");
    assert_eq!(again.message_id, sent.message_id);

    let files: Vec<PathBuf> = std::fs::read_dir(&outbox)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].extension().unwrap(), "eml");
    let raw = std::fs::read(&files[0]).unwrap();
    let message = MessageParser::default().parse(&raw).unwrap();
    assert_eq!(
        Some(message.message_id().unwrap()),
        sent.message_id
            .strip_prefix('<')
            .and_then(|m| m.strip_suffix('>'))
    );
    assert_eq!(message.subject(), Some("Embedded mode"));
    assert_eq!(message.body_text(0).unwrap().trim(), "text part");
    assert_eq!(message.body_html(0).unwrap().trim(), "<p>html part</p>");
    assert_eq!(
        message
            .from()
            .and_then(|a| a.first())
            .and_then(|a| a.address()),
        Some("tests@waymark.example"),
        "the default sender"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_lost_from_the_ledger_is_resent_with_the_same_message_id() {
    // The crash window: the server accepted the message, the ledger never heard.
    let db = TestDb::sqlite().await;
    let mailer = smtp_mailer(&db);
    let key = key();
    let email = Email::new().to(unique("ada")).subject("twice").text("body");
    let first = mailer.send(&key, email.clone()).await.unwrap();
    db.execute(&format!(
        "UPDATE waymark_mail_ledger SET status = 'sending', sent_at = NULL \
         WHERE idempotency_key = '{key}'"
    ))
    .await
    .unwrap();

    let second = mailer.send(&key, email).await.unwrap();
    assert!(second.delivered_now);
    assert_eq!(second.message_id, first.message_id);
    let copies = wait_delivered(&first.message_id, 2).await;
    assert_eq!(
        copies.len(),
        2,
        "receivers see two copies with one Message-ID"
    );
    assert_eq!(
        mailer.ledger_entry(&key).await.unwrap().unwrap().attempts,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_550_fails_the_run_fatally_without_retrying() {
    let db = TestDb::sqlite().await;
    let (registry, calls) = notify_registry(smtp_mailer(&db));
    let engine = db.engine(registry, Arc::new(SystemClock));
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req(
            Notify::NAME,
            serde_json::json!({ "to": unique("reject"), "rounds": 1 }),
        ))
        .await
        .unwrap()
        .run;
    let failed = wait_for_status(&db.store, run.id, RunStatus::Failed).await;
    runner.stop().await;

    let error = failed.error.expect("an error");
    assert_eq!(error.kind, ErrorKind::Fatal);
    assert!(error.message.contains("550"), "{error:?}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a permanent rejection is not retried"
    );
    let entry = smtp_mailer(&db)
        .ledger_entry(&format!("{}:1:0", run.id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(entry.status, LedgerStatus::Sending, "never marked sent");
    assert!(entry.last_error.unwrap().contains("550"));
    assert!(entry.claimed_until.is_none(), "the claim was given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_errors_are_classified_for_the_engine() {
    let db = TestDb::sqlite().await;
    let mailer = smtp_mailer(&db);
    let send = |to: &str| {
        let mailer = mailer.clone();
        let email = Email::new().to(to).subject("s").text("t");
        async move { mailer.send(&key(), email).await.unwrap_err() }
    };

    let rejected = send(&unique("reject")).await;
    assert!(
        matches!(rejected, MailError::Rejected { code: 550, .. }),
        "{rejected:?}"
    );
    assert!(!StepError::from(rejected).is_retryable());

    let deferred = send(&unique("tempfail")).await;
    assert!(
        matches!(deferred, MailError::Deferred { code: 451, .. }),
        "{deferred:?}"
    );
    assert!(StepError::from(deferred).is_retryable());

    // Validation happens before anything is recorded or sent.
    let key = key();
    let invalid = mailer
        .send(&key, Email::new().to("not an address").subject("s"))
        .await
        .unwrap_err();
    assert!(
        matches!(invalid, MailError::InvalidAddress { field: "to", .. }),
        "{invalid:?}"
    );
    assert!(!StepError::from(invalid).is_retryable());
    assert!(mailer.ledger_entry(&key).await.unwrap().is_none());

    // Nothing listens on port 1: a connection failure, worth retrying.
    let down = mailer_with(Some("smtp://127.0.0.1:1".into()), None, &db);
    let error = down
        .send(
            &self::key(),
            Email::new().to("ada@example.test").subject("s"),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, MailError::Connection(_)), "{error:?}");
    assert!(StepError::from(error).is_retryable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_and_smtps_with_credentials_deliver() {
    let db = TestDb::sqlite().await;
    let user = service_env("WAYMARK_TEST_SMTP_USER");
    let password = service_env("WAYMARK_TEST_SMTP_PASSWORD");
    let ca = PathBuf::from(service_env("WAYMARK_TEST_SMTP_CA"));
    for url in [
        format!(
            "smtp://{user}:{password}@{}?tls=required",
            service_env("WAYMARK_TEST_SMTP_STARTTLS_ADDR")
        ),
        format!(
            "smtps://{user}:{password}@{}",
            service_env("WAYMARK_TEST_SMTPS_ADDR")
        ),
    ] {
        let mailer = mailer_with(Some(url.clone()), Some(ca.clone()), &db);
        assert!(
            !mailer.describe().contains(&password),
            "credentials stay out of logs"
        );
        let sent = mailer
            .send(
                &key(),
                Email::new().to(unique("tls")).subject("over TLS").text("t"),
            )
            .await
            .unwrap_or_else(|e| panic!("{}: {e:?}", mailer.describe()));
        let raw = wait_delivered(&sent.message_id, 1).await;
        let message = MessageParser::default().parse(&raw[0]).unwrap();
        assert_eq!(
            message.header_raw("X-Authenticated-As").map(str::trim),
            Some(user.as_str())
        );
    }

    // A wrong password is refused with 535: fatal, the configuration must change.
    let wrong = format!(
        "smtp://{user}:wrong@{}?tls=required",
        service_env("WAYMARK_TEST_SMTP_STARTTLS_ADDR")
    );
    let error = mailer_with(Some(wrong), Some(ca.clone()), &db)
        .send(&key(), Email::new().to(unique("tls")).subject("s"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, MailError::Rejected { code: 535, .. }),
        "{error:?}"
    );

    // Without the test CA the server's certificate is not trusted.
    let untrusted = format!(
        "smtps://{user}:{password}@{}",
        service_env("WAYMARK_TEST_SMTPS_ADDR")
    );
    let error = mailer_with(Some(untrusted), None, &db)
        .send(&key(), Email::new().to(unique("tls")).subject("s"))
        .await
        .unwrap_err();
    assert!(error.is_retryable(), "{error:?}");
}

// ---------------------------------------------------------------------------------
// Through the engine, on both backends.

on_both_backends!(
    a_retried_step_sends_one_message,
    a_revisited_state_sends_a_second_message,
    concurrent_attempts_with_one_key_send_once,
);

/// Sends one message per visit of `send`, to `to`, `rounds` times; with
/// `fail_after_send` the first attempt of each visit fails retryably after sending,
/// as a step does when something after its side effect breaks.
struct Notify {
    mailer: Mailer,
    calls: Arc<AtomicU32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct NotifyInput {
    to: String,
    rounds: u32,
    #[serde(default)]
    fail_after_send: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum NotifyState {
    Send { round: u32 },
}

impl WorkflowState for NotifyState {
    fn name(&self) -> &'static str {
        "send"
    }
}

impl Workflow for Notify {
    const NAME: &'static str = "notify";
    type Input = NotifyInput;
    type State = NotifyState;
    type Output = Vec<String>;
    type Signal = NoSignal;

    fn definition() -> Definition {
        Definition::new([StateDef::new("send").next("send").completes()]).with_retry(RetryPolicy {
            max_attempts: 3,
            initial_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(20),
            jitter: 0.0,
            step_timeout: Duration::from_secs(20),
        })
    }

    fn initial_state(_: &NotifyInput) -> NotifyState {
        NotifyState::Send { round: 1 }
    }

    async fn step(
        &self,
        ctx: &StepContext,
        input: &NotifyInput,
        state: NotifyState,
    ) -> Result<Transition<NotifyState, Vec<String>>, StepError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let NotifyState::Send { round } = state;
        let email = Email::new()
            .to(input.to.clone())
            .subject(format!("Round {round}"))
            .text(format!("round {round}, visit {}", ctx.visit));
        let sent = self.mailer.send(&ctx.idempotency_key(0), email).await?;
        if input.fail_after_send && ctx.attempt == 1 {
            return Err(StepError::retryable("the step broke after sending"));
        }
        Ok(if round < input.rounds {
            Transition::next(NotifyState::Send { round: round + 1 })
        } else {
            Transition::complete(vec![sent.message_id])
        })
    }
}

fn notify_registry(mailer: Mailer) -> (Registry, Arc<AtomicU32>) {
    let calls = Arc::new(AtomicU32::new(0));
    let mut registry = Registry::new();
    registry
        .register(Notify {
            mailer,
            calls: calls.clone(),
        })
        .unwrap();
    (registry, calls)
}

/// Runs Notify to completion; returns (run id, step calls).
async fn run_notify(db: &TestDb, input: serde_json::Value) -> (Uuid, u32) {
    let (registry, calls) = notify_registry(smtp_mailer(db));
    let engine = db.engine(registry, Arc::new(SystemClock));
    let runner = spawn_runner(engine.clone(), test_runner_config());
    let run = engine
        .start(start_req(Notify::NAME, input))
        .await
        .unwrap()
        .run;
    wait_for_status(&db.store, run.id, RunStatus::Completed).await;
    runner.stop().await;
    (run.id, calls.load(Ordering::SeqCst))
}

async fn a_retried_step_sends_one_message(db: TestDb) {
    let to = unique("retried");
    let (run, calls) = run_notify(
        &db,
        serde_json::json!({ "to": to, "rounds": 1, "fail_after_send": true }),
    )
    .await;
    assert_eq!(calls, 2, "the step ran twice");
    let key = format!("{run}:1:0");
    let entry = smtp_mailer(&db).ledger_entry(&key).await.unwrap().unwrap();
    assert_eq!(entry.status, LedgerStatus::Sent);
    assert_eq!(entry.attempts, 1, "the retry did not send");
    let copies = wait_delivered(&entry.message_id, 1).await;
    assert_eq!(copies.len(), 1, "one message for two attempts");
}

async fn a_revisited_state_sends_a_second_message(db: TestDb) {
    let to = unique("revisited");
    let (run, calls) = run_notify(&db, serde_json::json!({ "to": to, "rounds": 2 })).await;
    assert_eq!(calls, 2);
    let mailer = smtp_mailer(&db);
    let first = mailer
        .ledger_entry(&format!("{run}:1:0"))
        .await
        .unwrap()
        .unwrap();
    let second = mailer
        .ledger_entry(&format!("{run}:2:0"))
        .await
        .unwrap()
        .unwrap();
    assert_ne!(first.message_id, second.message_id);
    for (entry, subject) in [(first, "Round 1"), (second, "Round 2")] {
        assert_eq!(entry.status, LedgerStatus::Sent);
        let copies = wait_delivered(&entry.message_id, 1).await;
        assert_eq!(copies.len(), 1);
        let message = MessageParser::default().parse(&copies[0]).unwrap();
        assert_eq!(message.subject(), Some(subject));
    }
}

async fn concurrent_attempts_with_one_key_send_once(db: TestDb) {
    // Two workers on one visit (one lost its lease but still runs): one sends, the
    // other waits for the outcome instead of sending in parallel.
    let mailer = smtp_mailer(&db);
    let other = smtp_mailer(&db);
    let key = key();
    let email = Email::new().to(unique("race")).subject("race").text("t");
    let (a, b) = tokio::join!(mailer.send(&key, email.clone()), other.send(&key, email));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.message_id, b.message_id);
    assert_eq!(
        [a.delivered_now, b.delivered_now]
            .iter()
            .filter(|d| **d)
            .count(),
        1,
        "exactly one of them sent"
    );
    assert_eq!(wait_delivered(&a.message_id, 1).await.len(), 1);
    assert_eq!(
        mailer.ledger_entry(&key).await.unwrap().unwrap().attempts,
        1
    );
}
