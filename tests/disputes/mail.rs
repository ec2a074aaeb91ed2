//! The merchant's emails over one lifecycle (opened, a reminder, evidence received,
//! submitted, decision), read back from the real SMTP test server's Maildir, with
//! amounts in currencies of 0 and 3 decimals.

use std::path::PathBuf;
use std::time::Duration;

use mail_parser::MessageParser;
use uuid::Uuid;
use waymark_services::{MailConfig, Mailer, SmtpOptions};

use super::{start_with, Setup, DAY};
use crate::support::services::service_env;
use crate::support::{on_both_backends, poll_until, TestDb};

fn smtp_mailer(store: &waymark_engine::Store) -> Mailer {
    Mailer::from_config(
        &MailConfig {
            smtp_url: Some(format!("smtp://{}", service_env("WAYMARK_TEST_SMTP_ADDR"))),
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

/// (subject, text) of every message the SMTP server delivered to `to`.
fn delivered_to(to: &str) -> Vec<(String, String)> {
    let dir = PathBuf::from(service_env("WAYMARK_TEST_MAILDIR")).join("new");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
        .filter_map(|raw| {
            let message = MessageParser::default().parse(&raw)?;
            let addressed = message
                .to()?
                .iter()
                .any(|a| a.address.as_deref() == Some(to));
            addressed.then(|| {
                (
                    message.subject().unwrap_or_default().to_owned(),
                    message.body_text(0).unwrap_or_default().into_owned(),
                )
            })
        })
        .collect()
}

/// Waits until the messages to `to` include one whose subject starts with each of
/// `subjects`, and returns them all.
async fn wait_for_mail(to: &str, subjects: &[&str]) -> Vec<(String, String)> {
    poll_until(
        &format!("mail to {to}: {subjects:?}"),
        Duration::from_secs(10),
        || async {
            let got = delivered_to(to);
            let missing: Vec<_> = subjects
                .iter()
                .filter(|s| !got.iter().any(|(subject, _)| subject.starts_with(*s)))
                .collect();
            if missing.is_empty() {
                Ok(got)
            } else {
                Err(format!("; missing {missing:?}, got {got:?}"))
            }
        },
    )
    .await
}

async fn the_merchant_is_mailed_at_each_step_with_amounts_in_the_currencys_units(db: TestDb) {
    let d = start_with(
        db,
        Setup {
            mailer: smtp_mailer,
            ..Setup::default()
        },
    )
    .await;
    let secret = d.secret("acme", None).await;
    let merchant = format!("shop-{}@example.test", Uuid::now_v7().simple());
    // Due in 3 days: the 1 d reminder is the first ahead.
    let run = d
        .open_for(
            &secret,
            "dp_jpy",
            (4200, "jpy"),
            chrono::Duration::days(3),
            &merchant,
        )
        .await;
    d.run_in(run, "awaiting_evidence").await;
    d.clock.advance(DAY);
    d.run_where(run, "awaiting_evidence", |r| r.state_data["reminders"] == 3)
        .await;
    d.evidence("dp_jpy").await;
    d.run_in(run, "awaiting_decision").await;
    d.network_says(&secret, "dp_jpy", "dispute.closed", "won")
        .await;
    d.finished(run).await;
    let mail = wait_for_mail(
        &merchant,
        &[
            "Dispute opened: JPY 4200 on charge ch_1",
            "Reminder: evidence for dispute dp_jpy is due in 1day",
            "Evidence received for dispute dp_jpy",
            "Evidence submitted for dispute dp_jpy",
            "Dispute dp_jpy won",
        ],
    )
    .await;
    // One message each: the mailer's ledger keeps retries from sending twice.
    assert_eq!(mail.len(), 5, "{mail:?}");
    let text = |prefix: &str| {
        mail.iter()
            .find(|(s, _)| s.starts_with(prefix))
            .map(|(_, t)| t.clone())
            .unwrap()
    };
    assert!(text("Evidence received").contains("(JPY 4200)"));
    assert!(text("Dispute dp_jpy won").contains("(JPY 4200)"));

    let kwd_merchant = format!("shop-{}@example.test", Uuid::now_v7().simple());
    let kwd = d
        .open_for(
            &secret,
            "dp_kwd",
            (12_345, "kwd"),
            chrono::Duration::days(20),
            &kwd_merchant,
        )
        .await;
    d.run_in(kwd, "awaiting_evidence").await;
    let mail = wait_for_mail(
        &kwd_merchant,
        &["Dispute opened: KWD 12.345 on charge ch_1"],
    )
    .await;
    assert!(mail[0].1.contains("(KWD 12.345)"), "{mail:?}");
    d.api.stop().await;
}

on_both_backends!(the_merchant_is_mailed_at_each_step_with_amounts_in_the_currencys_units,);
