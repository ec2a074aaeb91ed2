//! Every waiting state of a dispute run shows its deadline in the run's status
//! (`details.deadline`) and its why-waiting line (`details.why`, the line the
//! dashboard's run page shows): evidence, review, decision, escalation, appeal window,
//! and the appeal cycle's own evidence deadline.

use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::{json, Value};

use super::{start, Disputes, DAY};
use crate::support::{on_both_backends, TestDb};

fn at(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .unwrap_or_else(|| panic!("not a time: {v}"))
        .parse()
        .unwrap()
}

impl Disputes {
    /// The run's status details.
    async fn details(&self, run: uuid::Uuid) -> Value {
        let (status, view) = self
            .api
            .call(
                Method::GET,
                &format!("/v1/runs/{run}"),
                Some(&self.operator),
                None,
            )
            .await;
        assert!(status.is_success(), "{view}");
        view["details"].clone()
    }

    /// Asserts the run's deadline is `waiting_for` until `until` (`kind`), and that
    /// the why-waiting line says so.
    async fn assert_deadline(
        &self,
        run: uuid::Uuid,
        waiting_for: &str,
        until: Option<DateTime<Utc>>,
        kind: &str,
    ) {
        let details = self.details(run).await;
        let deadline = &details["deadline"];
        assert_eq!(deadline["waiting_for"], waiting_for, "{details}");
        assert_eq!(deadline["kind"], kind, "{details}");
        let why = details["why"].as_str().unwrap();
        match until {
            Some(until) => {
                assert_eq!(time(&deadline["until"]), until, "{details}");
                let said = format!("Waiting for {waiting_for} until {} ({kind}, ", at(until));
                assert!(why.starts_with(&said), "{why:?} is not {said:?}…");
            }
            None => {
                assert_eq!(deadline["until"], Value::Null, "{details}");
                assert!(
                    why.starts_with(&format!("Waiting for {waiting_for} ({kind})")),
                    "{why}"
                );
            }
        }
    }
}

async fn every_waiting_state_of_a_dispute_shows_its_deadline_and_why(db: TestDb) {
    let d = start(db).await;
    d.thresholds(json!({"usd": 1000})).await;
    let secret = d.secret("acme", None).await;
    let opened = d.now();
    let run = d.open(&secret, "dp_st").await;
    d.run_in(run, "awaiting_evidence").await;
    // Due in 20 days, less the 24 h margin (the first reminder fires earlier: the line
    // names the deadline, not the reminder).
    let internal = opened + chrono::Duration::days(19);
    d.assert_deadline(run, "evidence", Some(internal), "internal deadline")
        .await;

    d.evidence("dp_st").await;
    d.run_in(run, "review").await;
    d.assert_deadline(
        run,
        "an operator's approval of the evidence",
        Some(internal),
        "internal evidence deadline",
    )
    .await;

    d.signal(run, "approve", json!({})).await;
    let waiting = d.run_in(run, "awaiting_decision").await;
    let escalates = time(&waiting.state_data["escalates_at"]);
    assert_eq!(escalates, d.now() + chrono::Duration::days(75));
    d.assert_deadline(
        run,
        "the network's decision",
        Some(escalates),
        "then escalated to an operator",
    )
    .await;

    d.clock.advance(75 * DAY);
    d.run_in(run, "escalated").await;
    d.assert_deadline(
        run,
        "the network's decision",
        None,
        "escalated to an operator, no deadline",
    )
    .await;

    d.network_says(&secret, "dp_st", "dispute.closed", "lost")
        .await;
    let lost = d.run_in(run, "lost").await;
    let window = time(&lost.state_data["appeal_until"]);
    assert_eq!(window, d.now() + chrono::Duration::days(10));
    d.assert_deadline(run, "an appeal", Some(window), "appeal window")
        .await;

    // The appeal's own evidence deadline: 14 days from the appeal, less the margin.
    let appealed = d.now();
    d.signal(run, "appeal", json!({})).await;
    d.run_where(run, "awaiting_evidence", |r| r.state_data["cycle"] == 2)
        .await;
    d.assert_deadline(
        run,
        "evidence",
        Some(appealed + chrono::Duration::days(13)),
        "internal deadline",
    )
    .await;
    d.api.stop().await;
}

on_both_backends!(every_waiting_state_of_a_dispute_shows_its_deadline_and_why);
