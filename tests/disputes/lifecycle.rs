//! The `payment_dispute` workflow's paths, one test per way a dispute can go: lost (and
//! closed when the appeal window ends), conceded by the merchant or by the deadline,
//! review approved, rejected or overtaken, appeals, escalation, and the network
//! deciding at any point. Together with the ingress tests they take every edge the
//! workflow declares (`tests/coverage.rs`).

use serde_json::json;
use waymark_engine::RunStatus;

use super::{start, start_with, timeline_has, Disputes, Setup, DAY};
use crate::support::{on_both_backends, spawn_runner, test_runner_config, TestDb};

/// Opens `id` with a new secret, submits its evidence and waits for the decision.
async fn awaiting_decision(d: &Disputes, id: &str) -> (String, uuid::Uuid) {
    let secret = d.secret("acme", None).await;
    let run = d.open(&secret, id).await;
    d.run_in(run, "awaiting_evidence").await;
    d.evidence(id).await;
    d.run_in(run, "awaiting_decision").await;
    (secret, run)
}

/// [`awaiting_decision`], then the network decides against the merchant: the run waits
/// for an appeal.
async fn lost_first_cycle(d: &Disputes, id: &str) -> (String, uuid::Uuid) {
    let (secret, run) = awaiting_decision(d, id).await;
    d.network_says(&secret, id, "dispute.closed", "lost").await;
    d.run_in(run, "lost").await;
    (secret, run)
}

async fn a_lost_dispute_closes_when_its_appeal_window_ends(db: TestDb) {
    let d = start(db).await;
    let (_, run) = lost_first_cycle(&d, "dp_l").await;
    let view = d.dispute("dp_l").await;
    assert_eq!(view["status"], "lost");
    assert!(timeline_has(&view, "lost", None), "{view}");
    // One second short of the window the run still waits for an appeal.
    d.clock
        .advance(10 * DAY - std::time::Duration::from_secs(1));
    let waiting = d.run_in(run, "lost").await;
    assert_eq!(waiting.status, RunStatus::Waiting);
    d.clock.advance(std::time::Duration::from_secs(1));
    let finished = d.finished(run).await;
    assert_eq!(finished.output.as_ref().unwrap()["outcome"], "lost");
    assert_eq!(d.dispute("dp_l").await["status"], "closed");
    d.api.stop().await;
}

async fn the_merchant_concedes_while_evidence_is_awaited(db: TestDb) {
    let d = start(db).await;
    let secret = d.secret("acme", None).await;
    let run = d.open(&secret, "dp_a").await;
    d.run_in(run, "awaiting_evidence").await;
    let (status, answer) = d.accept("dp_a").await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{answer}");
    let finished = d.finished(run).await;
    let output = finished.output.as_ref().unwrap();
    assert_eq!(output["outcome"], "lost");
    assert_eq!(output["reason"], "conceded by the merchant");
    // The network was told once, and nothing was submitted.
    let accepted = d.simulator.as_ref().unwrap().accepted();
    let keys: Vec<&str> = accepted.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["dispute:dp_a:concede"]);
    let view = d.dispute("dp_a").await;
    let by = format!("key:{}", d.operator_id);
    assert!(timeline_has(&view, "conceded", Some(&by)), "{view}");
    // Conceding again, once closed, is refused.
    assert_eq!(d.accept("dp_a").await.0, reqwest::StatusCode::CONFLICT);
    d.api.stop().await;
}

async fn the_merchant_concedes_while_evidence_is_in_review(db: TestDb) {
    let d = start(db).await;
    d.thresholds(json!({"usd": 1000})).await;
    let secret = d.secret("acme", None).await;
    let run = d.open(&secret, "dp_ar").await;
    d.run_in(run, "awaiting_evidence").await;
    d.evidence("dp_ar").await;
    d.run_in(run, "review").await;
    let (status, answer) = d.accept("dp_ar").await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{answer}");
    let finished = d.finished(run).await;
    assert_eq!(
        finished.output.as_ref().unwrap()["reason"],
        "conceded by the merchant"
    );
    let accepted = d.simulator.as_ref().unwrap().accepted();
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    assert_eq!(accepted[0].0, "dispute:dp_ar:concede");
    d.api.stop().await;
}

async fn evidence_at_or_over_its_currencys_threshold_waits_for_approval(db: TestDb) {
    let d = start(db).await;
    // USD 42.00 is at the USD threshold; EUR 42.00 is under the EUR one.
    d.thresholds(json!({"usd": 4200, "eur": 4201})).await;
    let secret = d.secret("acme", None).await;
    let usd = d.open(&secret, "dp_usd").await;
    let eur = d
        .open_for(
            &secret,
            "dp_eur",
            (4200, "eur"),
            chrono::Duration::days(20),
            "merchant@example.test",
        )
        .await;
    for (id, run) in [("dp_usd", usd), ("dp_eur", eur)] {
        d.run_in(run, "awaiting_evidence").await;
        d.evidence(id).await;
    }
    d.run_in(eur, "awaiting_decision").await;
    d.run_in(usd, "review").await;
    assert_eq!(d.dispute("dp_usd").await["status"], "review");
    let submitted = || {
        d.simulator
            .as_ref()
            .unwrap()
            .accepted()
            .into_iter()
            .map(|(k, _)| k)
            .collect::<Vec<_>>()
    };
    assert_eq!(submitted(), ["dispute:dp_eur:cycle:1"]);
    d.signal(usd, "approve", json!(null)).await;
    d.run_in(usd, "awaiting_decision").await;
    assert_eq!(
        submitted(),
        ["dispute:dp_eur:cycle:1", "dispute:dp_usd:cycle:1"]
    );
    d.api.stop().await;
}

async fn rejected_evidence_is_asked_for_again_before_the_deadline(db: TestDb) {
    let d = start(db).await;
    d.thresholds(json!({"usd": 1000})).await;
    let secret = d.secret("acme", None).await;
    let run = d.open(&secret, "dp_r").await;
    d.run_in(run, "awaiting_evidence").await;
    d.evidence("dp_r").await;
    let review = d.run_in(run, "review").await;
    d.signal(run, "reject", json!({"reason": "the invoice is missing"}))
        .await;
    d.run_where(run, "awaiting_evidence", |r| r.visit > review.visit)
        .await;
    let view = d.dispute("dp_r").await;
    assert_eq!(view["status"], "awaiting_evidence");
    assert_eq!(
        view["evidence"],
        json!(null),
        "the rejected evidence is gone"
    );
    assert!(timeline_has(&view, "evidence_rejected", None), "{view}");
    // Nothing went to the network; the merchant submits again, and it is approved.
    assert!(d.simulator.as_ref().unwrap().accepted().is_empty());
    d.evidence("dp_r").await;
    d.run_in(run, "review").await;
    d.signal(run, "approve", json!(null)).await;
    d.run_in(run, "awaiting_decision").await;
    assert_eq!(d.simulator.as_ref().unwrap().accepted().len(), 1);
    d.api.stop().await;
}

async fn a_review_not_decided_by_the_deadline_concedes(db: TestDb) {
    let d = start(db).await;
    d.thresholds(json!({"usd": 1000})).await;
    let secret = d.secret("acme", None).await;
    // Due in 3 days: the internal deadline is 2 days away.
    let run = d
        .open_for(
            &secret,
            "dp_rt",
            (4200, "usd"),
            chrono::Duration::days(3),
            "merchant@example.test",
        )
        .await;
    d.run_in(run, "awaiting_evidence").await;
    d.evidence("dp_rt").await;
    d.run_in(run, "review").await;
    d.clock.advance(2 * DAY);
    let finished = d.finished(run).await;
    assert_eq!(
        finished.output.as_ref().unwrap()["reason"],
        "evidence deadline missed"
    );
    d.api.stop().await;
}

async fn reminders_go_out_and_then_the_deadline_concedes_by_timer(db: TestDb) {
    let d = start(db).await;
    let secret = d.secret("acme", None).await;
    // Due in 3 days: the internal deadline is 2 days away, so the 7 d and 3 d reminders
    // are skipped and the 1 d and 4 h ones are ahead.
    let run = d
        .open_for(
            &secret,
            "dp_t",
            (4200, "usd"),
            chrono::Duration::days(3),
            "merchant@example.test",
        )
        .await;
    d.run_in(run, "awaiting_evidence").await;
    d.clock.advance(DAY);
    d.run_where(run, "awaiting_evidence", |r| r.state_data["reminders"] == 3)
        .await;
    d.clock
        .advance(DAY - std::time::Duration::from_secs(4 * 3600));
    d.run_where(run, "awaiting_evidence", |r| r.state_data["reminders"] == 4)
        .await;
    d.clock.advance(std::time::Duration::from_secs(4 * 3600));
    let finished = d.finished(run).await;
    assert_eq!(
        finished.output.as_ref().unwrap()["reason"],
        "evidence deadline missed"
    );
    let view = d.dispute("dp_t").await;
    let reminders: Vec<_> = view["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["what"] == "reminder_sent")
        .map(|t| t["detail"]["before_deadline"].clone())
        .collect();
    assert_eq!(reminders, [json!("1day"), json!("4h")]);
    assert!(timeline_has(&view, "conceded", Some("timer")), "{view}");
    d.api.stop().await;
}

async fn evidence_recorded_before_the_run_waits_for_it_is_still_found(db: TestDb) {
    // No runner yet: the run has not reached `awaiting_evidence` when the evidence
    // comes, so the signal finds no wait and the run must find the evidence itself.
    let d = start_with(
        db,
        Setup {
            workers: false,
            ..Setup::default()
        },
    )
    .await;
    let secret = d.secret("acme", None).await;
    let run = d.open(&secret, "dp_e").await;
    d.evidence("dp_e").await;
    let runner = spawn_runner(d.api.engine.clone(), test_runner_config());
    d.run_in(run, "awaiting_decision").await;
    assert_eq!(d.simulator.as_ref().unwrap().accepted().len(), 1);
    runner.stop().await;
    d.api.stop().await;
}

async fn a_review_resumed_after_the_deadline_concedes(db: TestDb) {
    // The evidence came in time, but no runner ran until the deadline had passed (an
    // outage): the review it resumes in is already too late.
    let d = start_with(
        db,
        Setup {
            workers: false,
            ..Setup::default()
        },
    )
    .await;
    d.thresholds(json!({"usd": 1000})).await;
    let secret = d.secret("acme", None).await;
    let run = d.open(&secret, "dp_o").await;
    d.evidence("dp_o").await;
    d.clock.advance(19 * DAY);
    let runner = spawn_runner(d.api.engine.clone(), test_runner_config());
    let finished = d.finished(run).await;
    assert_eq!(
        finished.output.as_ref().unwrap()["reason"],
        "evidence deadline missed"
    );
    let accepted = d.simulator.as_ref().unwrap().accepted();
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    assert_eq!(accepted[0].0, "dispute:dp_o:concede");
    runner.stop().await;
    d.api.stop().await;
}

async fn an_appeal_is_a_second_cycle_with_its_own_submission(db: TestDb) {
    let d = start(db).await;
    let (secret, run) = lost_first_cycle(&d, "dp_ap").await;
    d.signal(run, "appeal", json!(null)).await;
    d.run_where(run, "awaiting_evidence", |r| r.state_data["cycle"] == 2)
        .await;
    let view = d.dispute("dp_ap").await;
    assert_eq!(view["cycle"], 2);
    assert!(timeline_has(&view, "appealed", None), "{view}");
    d.evidence("dp_ap").await;
    d.run_where(run, "awaiting_decision", |r| r.state_data["cycle"] == 2)
        .await;
    let keys: Vec<String> = d
        .simulator
        .as_ref()
        .unwrap()
        .accepted()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, ["dispute:dp_ap:cycle:1", "dispute:dp_ap:cycle:2"]);
    d.network_says(&secret, "dp_ap", "dispute.closed", "won")
        .await;
    let finished = d.finished(run).await;
    assert_eq!(finished.output.as_ref().unwrap()["outcome"], "won");
    d.api.stop().await;
}

async fn an_appeal_awaits_a_response_and_late_first_cycle_events_keep_its_deadline(db: TestDb) {
    let d = start(db).await;
    let (secret, run) = lost_first_cycle(&d, "dp_lt").await;
    let first = d.dispute("dp_lt").await;
    let first_due = first["evidence_due_by"].clone();
    let lost_at: chrono::DateTime<chrono::Utc> =
        first["last_event_at"].as_str().unwrap().parse().unwrap();
    d.clock.advance(DAY);
    let appealed = d.now();
    d.signal(run, "appeal", json!(null)).await;
    d.run_where(run, "awaiting_evidence", |r| r.state_data["cycle"] == 2)
        .await;
    let view = d.dispute("dp_lt").await;
    // The appeal awaits a response: the network's status no longer says `lost`.
    assert_eq!(view["network_status"], "needs_response", "{view}");
    let appeal_due = view["evidence_due_by"].clone();
    let due: chrono::DateTime<chrono::Utc> = appeal_due.as_str().unwrap().parse().unwrap();
    assert_eq!(due, appealed + chrono::Duration::days(14));

    // An update created after the first decision but before the appeal, arriving late,
    // is recorded and not applied.
    let mut late = d.event_for("dp_lt", "dispute.updated", "lost").await;
    late["created"] = json!((lost_at + chrono::Duration::hours(1)).to_rfc3339());
    late["data"]["dispute"]["evidence_due_by"] = first_due.clone();
    let (status, answer) = d.deliver("acme", &secret, &late).await;
    assert_eq!(
        (status, answer["result"]["outcome"].clone()),
        (reqwest::StatusCode::ACCEPTED, json!("stale")),
        "{answer}"
    );
    // An update created after the appeal still carrying the first cycle's due date moves
    // the network's status, never the appeal's deadline.
    let mut newer = d
        .event_for("dp_lt", "dispute.updated", "under_review")
        .await;
    newer["data"]["dispute"]["evidence_due_by"] = first_due;
    let (status, answer) = d.deliver("acme", &secret, &newer).await;
    assert_eq!(
        (status, answer["result"]["outcome"].clone()),
        (reqwest::StatusCode::ACCEPTED, json!("applied")),
        "{answer}"
    );
    let view = d.dispute("dp_lt").await;
    assert_eq!(view["network_status"], "under_review", "{view}");
    assert_eq!(view["evidence_due_by"], appeal_due, "{view}");
    d.run_where(run, "awaiting_evidence", |r| r.state_data["cycle"] == 2)
        .await;
    // The appeal's evidence is still taken against its own deadline.
    d.evidence("dp_lt").await;
    d.run_where(run, "awaiting_decision", |r| r.state_data["cycle"] == 2)
        .await;
    d.api.stop().await;
}

async fn the_embedded_simulator_decides_through_the_signed_webhook_route(db: TestDb) {
    use waymark_workflows::disputes::network::{Network, SimulatedDecision};
    let d = start_with(
        db,
        Setup {
            network: Network::simulator_deciding(SimulatedDecision {
                outcome: "won".into(),
                delay: std::time::Duration::from_secs(3600),
            }),
            ..Setup::default()
        },
    )
    .await;
    let sim = d.simulator.clone().unwrap();
    sim.set_webhook_base(d.api.base.parse().unwrap());
    let (_, run) = awaiting_decision(&d, "dp_sim").await;
    let waiting = d.run_in(run, "awaiting_decision").await;
    let submitted = d.now();
    assert_eq!(
        waiting.state_data["simulate_at"],
        json!((submitted + chrono::Duration::hours(1))
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
        "{}",
        waiting.state_data
    );
    // The decision waits on the run's own timer, not in the simulator's memory.
    d.clock.advance(std::time::Duration::from_secs(3599));
    d.run_in(run, "awaiting_decision").await;
    d.clock.advance(std::time::Duration::from_secs(1));
    let finished = d.finished(run).await;
    assert_eq!(finished.output.as_ref().unwrap()["outcome"], "won");
    let view = d.dispute("dp_sim").await;
    assert_eq!(view["network_status"], "won");
    // It came in as a webhook: the real route verified its signature and applied it.
    assert!(
        timeline_has(&view, "dispute.closed", Some("webhook:evt_sim_dp_sim_1")),
        "{view}"
    );
    let history = d
        .api
        .engine
        .store
        .run_history(&waymark_engine::TenantScope::All, run)
        .await
        .unwrap()
        .unwrap();
    assert!(
        history.iter().any(|h| h.to_state == "simulated_decision"),
        "{history:?}"
    );
    d.api.stop().await;
}

async fn a_dispute_lost_again_after_its_appeal_closes_at_once(db: TestDb) {
    let d = start(db).await;
    let (secret, run) = lost_first_cycle(&d, "dp_ll").await;
    d.signal(run, "appeal", json!(null)).await;
    d.run_where(run, "awaiting_evidence", |r| r.state_data["cycle"] == 2)
        .await;
    d.evidence("dp_ll").await;
    d.run_where(run, "awaiting_decision", |r| r.state_data["cycle"] == 2)
        .await;
    d.network_says(&secret, "dp_ll", "dispute.closed", "lost")
        .await;
    // No second appeal: the run closes without waiting.
    let finished = d.finished(run).await;
    assert_eq!(finished.output.as_ref().unwrap()["outcome"], "lost");
    d.api.stop().await;
}

async fn no_decision_in_75_days_escalates_and_only_the_network_closes_it(db: TestDb) {
    let d = start(db).await;
    let (secret, run) = awaiting_decision(&d, "dp_x").await;
    let before = d.run_in(run, "awaiting_decision").await;
    // An update that decides nothing keeps the run waiting, with the same escalation.
    d.network_says(&secret, "dp_x", "dispute.updated", "under_review")
        .await;
    let after = d
        .run_where(run, "awaiting_decision", |r| r.visit > before.visit)
        .await;
    assert_eq!(
        after.state_data["escalates_at"],
        before.state_data["escalates_at"]
    );
    d.clock.advance(75 * DAY);
    let escalated = d.run_in(run, "escalated").await;
    let view = d.dispute("dp_x").await;
    assert_eq!(view["status"], "escalated");
    assert!(timeline_has(&view, "escalated", Some("timer")), "{view}");
    d.network_says(&secret, "dp_x", "dispute.updated", "under_review")
        .await;
    d.run_where(run, "escalated", |r| r.visit > escalated.visit)
        .await;
    // Escalated is not closed: a year on it still waits for the network.
    d.clock.advance(365 * DAY);
    d.run_in(run, "escalated").await;
    d.network_says(&secret, "dp_x", "dispute.closed", "won")
        .await;
    let finished = d.finished(run).await;
    assert_eq!(finished.output.as_ref().unwrap()["outcome"], "won");
    d.api.stop().await;
}

async fn a_close_without_a_decision_waits_and_an_update_with_one_decides(db: TestDb) {
    let d = start(db).await;
    let (secret, run) = awaiting_decision(&d, "dp_u").await;
    let first = d.run_in(run, "awaiting_decision").await;
    d.network_says(&secret, "dp_u", "dispute.closed", "under_review")
        .await;
    let second = d
        .run_where(run, "awaiting_decision", |r| r.visit > first.visit)
        .await;
    // Waiting again restarts the decision timeout from the close.
    assert_eq!(second.status, RunStatus::Waiting);
    d.network_says(&secret, "dp_u", "dispute.updated", "lost")
        .await;
    d.run_in(run, "lost").await;
    assert_eq!(d.dispute("dp_u").await["status"], "lost");
    d.api.stop().await;
}

async fn the_network_closing_a_dispute_awaiting_evidence_decides_it(db: TestDb) {
    let d = start(db).await;
    let secret = d.secret("acme", None).await;
    let run = d.open(&secret, "dp_ne").await;
    d.run_in(run, "awaiting_evidence").await;
    d.network_says(&secret, "dp_ne", "dispute.closed", "lost")
        .await;
    d.run_in(run, "lost").await;
    assert!(d.simulator.as_ref().unwrap().accepted().is_empty());
    d.api.stop().await;
}

async fn the_network_closing_a_dispute_in_review_decides_it(db: TestDb) {
    let d = start(db).await;
    d.thresholds(json!({"usd": 1000})).await;
    let secret = d.secret("acme", None).await;
    let run = d.open(&secret, "dp_nr").await;
    d.run_in(run, "awaiting_evidence").await;
    d.evidence("dp_nr").await;
    d.run_in(run, "review").await;
    d.network_says(&secret, "dp_nr", "dispute.closed", "won")
        .await;
    let finished = d.finished(run).await;
    assert_eq!(finished.output.as_ref().unwrap()["outcome"], "won");
    assert!(d.simulator.as_ref().unwrap().accepted().is_empty());
    d.api.stop().await;
}

on_both_backends!(
    a_lost_dispute_closes_when_its_appeal_window_ends,
    the_merchant_concedes_while_evidence_is_awaited,
    the_merchant_concedes_while_evidence_is_in_review,
    evidence_at_or_over_its_currencys_threshold_waits_for_approval,
    rejected_evidence_is_asked_for_again_before_the_deadline,
    a_review_not_decided_by_the_deadline_concedes,
    reminders_go_out_and_then_the_deadline_concedes_by_timer,
    evidence_recorded_before_the_run_waits_for_it_is_still_found,
    a_review_resumed_after_the_deadline_concedes,
    an_appeal_is_a_second_cycle_with_its_own_submission,
    an_appeal_awaits_a_response_and_late_first_cycle_events_keep_its_deadline,
    a_dispute_lost_again_after_its_appeal_closes_at_once,
    the_embedded_simulator_decides_through_the_signed_webhook_route,
    no_decision_in_75_days_escalates_and_only_the_network_closes_it,
    a_close_without_a_decision_waits_and_an_update_with_one_decides,
    the_network_closing_a_dispute_awaiting_evidence_decides_it,
    the_network_closing_a_dispute_in_review_decides_it,
);
