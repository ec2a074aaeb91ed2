//! The signed webhook ingress: its whole table of wrong inputs, duplicates, the secret
//! roll, tenant isolation, dead letters and their replay, and out-of-order events.

use super::*;

async fn webhooks_refuse_bad_signatures_and_bodies_and_store_before_answering(db: TestDb) {
    let d = start(db).await;
    let secret = d.secret("acme", None).await;
    let other = d.secret("globex", None).await;
    let now = d.now();
    let created = event(
        "evt_1",
        "dispute.created",
        "dp_1",
        now,
        now + chrono::Duration::days(20),
    );
    let body = created.to_string().into_bytes();
    let t = now.timestamp();
    // (what, tenant URL, body, signature header, expected status)
    type Case<'a> = (&'a str, &'a str, Vec<u8>, Option<String>, StatusCode);
    let cases: Vec<Case<'_>> = vec![
        (
            "wrong secret",
            "acme",
            body.clone(),
            Some(signature::sign(&["whsec_wrong"], t, &body)),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "stale timestamp",
            "acme",
            body.clone(),
            Some(signature::sign(&[&secret], t - 301, &body)),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "future timestamp",
            "acme",
            body.clone(),
            Some(signature::sign(&[&secret], t + 301, &body)),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "missing header",
            "acme",
            body.clone(),
            None,
            StatusCode::UNAUTHORIZED,
        ),
        (
            "malformed header",
            "acme",
            body.clone(),
            Some("v1=abc".into()),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "tenant A's secret at B's URL",
            "globex",
            body.clone(),
            Some(signature::sign(&[&secret], t, &body)),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "B's secret at A's URL",
            "acme",
            body.clone(),
            Some(signature::sign(&[&other], t, &body)),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "unknown tenant",
            "nobody",
            body.clone(),
            Some(signature::sign(&[&secret], t, &body)),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "malformed body",
            "acme",
            b"{not json".to_vec(),
            Some(signature::sign(&[&secret], t, b"{not json")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "float amount",
            "acme",
            {
                let mut e = created.clone();
                e["data"]["dispute"]["amount"] = json!(42.5);
                e.to_string().into_bytes()
            },
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            "oversized body",
            "acme",
            vec![b' '; 64 * 1024 + 1],
            None,
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (what, tenant, body, header, expected) in cases {
        // A case without a header but expecting 400 is signed here, over its own body.
        let header = match (header, expected) {
            (None, StatusCode::BAD_REQUEST) => Some(signature::sign(&[&secret], t, &body)),
            (header, _) => header,
        };
        let (status, answer) = d.post_raw(tenant, body, header).await;
        assert_eq!(status, expected, "{what}: {answer}");
        if expected == StatusCode::UNAUTHORIZED {
            assert_eq!(answer["detail"], "bad or stale signature", "{what}");
        }
    }
    assert_eq!(
        d.api
            .db()
            .scalar_i64("SELECT COUNT(*) FROM disputes_webhook_inbox")
            .await,
        0
    );
    assert_eq!(
        d.api.db().scalar_i64("SELECT COUNT(*) FROM disputes").await,
        0
    );

    let (status, answer) = d.deliver("acme", &secret, &created).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["result"]["outcome"], "started");
    let run = run_id(&answer);
    let (status, again) = d.deliver("acme", &secret, &created).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["duplicate"], true);
    assert_eq!(
        d.api
            .db()
            .scalar_i64("SELECT COUNT(*) FROM disputes_webhook_inbox")
            .await,
        1
    );
    assert_eq!(
        d.api
            .db()
            .scalar_i64("SELECT COUNT(*) FROM waymark_runs WHERE workflow = 'payment_dispute'")
            .await,
        1
    );
    // The same dispute created by another event id starts nothing more.
    let mut twin = created.clone();
    twin["id"] = json!("evt_1b");
    let (status, answer) = d.deliver("acme", &secret, &twin).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["result"]["outcome"], "stale");
    assert_eq!(
        d.api
            .db()
            .scalar_i64("SELECT COUNT(*) FROM waymark_runs WHERE workflow = 'payment_dispute'")
            .await,
        1
    );
    d.run_in(run, "awaiting_evidence").await;
    let view = d.dispute("dp_1").await;
    assert_eq!(view["amount_formatted"], "USD 42.00");
    assert_eq!(view["run"]["id"], json!(run));
    d.api.stop().await;
}

async fn a_rolled_secret_works_through_its_grace_and_then_stops(db: TestDb) {
    let d = start(db).await;
    let first = d.secret("acme", None).await;
    let second = d.secret("acme", Some("1h")).await;
    let now = d.now();
    let due = now + chrono::Duration::days(20);
    for (n, secret) in [&first, &second].into_iter().enumerate() {
        let e = event(
            &format!("evt_roll_{n}"),
            "dispute.created",
            &format!("dp_roll_{n}"),
            now,
            due,
        );
        let (status, answer) = d.deliver("acme", secret, &e).await;
        assert_eq!(
            status,
            StatusCode::ACCEPTED,
            "secret {n} in the grace: {answer}"
        );
    }
    d.clock.advance(Duration::from_secs(3601));
    let now = d.now();
    let e = event(
        "evt_roll_late_old",
        "dispute.created",
        "dp_roll_x",
        now,
        due,
    );
    let (status, _) = d.deliver("acme", &first, &e).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the old secret after its grace"
    );
    let (status, answer) = d.deliver("acme", &second, &e).await;
    assert_eq!(status, StatusCode::ACCEPTED, "the new secret: {answer}");
    d.api.stop().await;
}

async fn events_for_unknown_disputes_are_dead_letters_replayed_once_it_exists(db: TestDb) {
    let d = start(db).await;
    let secret = d.secret("acme", None).await;
    let now = d.now();
    let due = now + chrono::Duration::days(20);
    let early = event("evt_early", "dispute.funds_withdrawn", "dp_late", now, due);
    let (status, answer) = d.deliver("acme", &secret, &early).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["result"]["outcome"], "dead_letter");
    let letter = answer["result"]["dead_letter_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, list) = d
        .api
        .call(
            Method::GET,
            "/v1/webhooks/dead-letters",
            Some(&d.operator),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["dead_letters"][0]["id"], json!(letter));
    assert_eq!(list["dead_letters"][0]["why"], "no such dispute");
    let replay = format!("/v1/webhooks/dead-letters/{letter}/replay");
    let (status, answer) = d
        .api
        .call(Method::POST, &replay, Some(&d.operator), Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    // Another tenant's operator does not see it at all.
    let (_, globex) = d.api.key("globex", &["operator"]).await;
    let (status, _) = d
        .api
        .call(Method::POST, &replay, Some(&globex), Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let created = event("evt_created", "dispute.created", "dp_late", now, due);
    assert_eq!(
        d.deliver("acme", &secret, &created).await.0,
        StatusCode::ACCEPTED
    );
    let (status, answer) = d
        .api
        .call(Method::POST, &replay, Some(&d.operator), Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["result"]["outcome"], "applied");
    let (_, list) = d
        .api
        .call(
            Method::GET,
            "/v1/webhooks/dead-letters",
            Some(&d.operator),
            None,
        )
        .await;
    assert_eq!(list["dead_letters"], json!([]));
    let view = d.dispute("dp_late").await;
    assert_eq!(view["funds_movements"][0]["kind"], "withdrawn");
    assert_eq!(view["funds_movements"][0]["formatted"], "USD 42.00");
    d.api.stop().await;
}

async fn an_older_event_arriving_late_is_recorded_but_does_not_move_the_dispute_back(db: TestDb) {
    let d = start(db).await;
    let secret = d.secret("acme", None).await;
    let now = d.now();
    let due = now + chrono::Duration::days(20);
    let created = event("evt_c", "dispute.created", "dp_o", now, due);
    let (_, answer) = d.deliver("acme", &secret, &created).await;
    let run = run_id(&answer);
    d.run_in(run, "awaiting_evidence").await;
    let mut newer = event(
        "evt_new",
        "dispute.updated",
        "dp_o",
        now + chrono::Duration::seconds(20),
        due,
    );
    newer["data"]["dispute"]["status"] = json!("under_review");
    let older = event(
        "evt_old",
        "dispute.updated",
        "dp_o",
        now + chrono::Duration::seconds(10),
        due,
    );
    let (status, answer) = d.deliver("acme", &secret, &newer).await;
    assert_eq!(
        (status, answer["result"]["outcome"].clone()),
        (StatusCode::ACCEPTED, json!("applied"))
    );
    let (status, answer) = d.deliver("acme", &secret, &older).await;
    assert_eq!(
        (status, answer["result"]["outcome"].clone()),
        (StatusCode::ACCEPTED, json!("stale"))
    );
    let view = d.dispute("dp_o").await;
    assert_eq!(view["network_status"], "under_review");
    assert_eq!(view["last_event_id"], "evt_new");
    assert!(view["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["what"] == "stale_event_recorded" && t["actor"] == "webhook:evt_old"));
    d.api.stop().await;
}

on_both_backends!(
    webhooks_refuse_bad_signatures_and_bodies_and_store_before_answering,
    a_rolled_secret_works_through_its_grace_and_then_stops,
    events_for_unknown_disputes_are_dead_letters_replayed_once_it_exists,
    an_older_event_arriving_late_is_recorded_but_does_not_move_the_dispute_back,
);
