//! The dashboard's dead letters page, on both backends: an operator sees its tenant's
//! dead letters and replays one (refused while its dispute does not exist, applied once
//! it does), a reader and another tenant's operator see and replay nothing.

use reqwest::StatusCode;

use super::{event, start};
use crate::dashboard::Browser;
use crate::support::{on_both_backends, TestDb};

async fn dead_letters_are_listed_and_replayed_from_the_dashboard(db: TestDb) {
    let d = start(db).await;
    let secret = d.secret("acme", None).await;
    let now = d.now();
    let due = now + chrono::Duration::days(20);
    let early = event("evt_early", "dispute.funds_withdrawn", "dp_late", now, due);
    let (status, answer) = d.deliver("acme", &secret, &early).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let letter = answer["result"]["dead_letter_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let replay = format!("/ui/dead-letters/{letter}/replay");

    let mut operator = Browser::login(&d.api, &d.operator).await;
    let page = operator.get("/ui/dead-letters").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page
        .body
        .contains(r#"href="/ui/dead-letters" aria-current="page""#));
    let row = &page.body[page
        .body
        .find(&format!(r#"data-letter="{letter}""#))
        .expect("the letter")..];
    assert!(
        row.contains("evt_early") && row.contains("dp_late") && row.contains("no such dispute")
    );
    assert!(row.contains(&format!(r#"action="{replay}""#)));
    let csrf = page.csrf();

    // A reader: no entry, no page, no replay. Another tenant: nothing of acme's.
    let (_, reader) = d.api.key("acme", &["reader"]).await;
    let mut as_reader = Browser::login(&d.api, &reader).await;
    let home = as_reader.get("/ui/").await;
    assert!(!home.body.contains(r#"href="/ui/dead-letters""#));
    assert_eq!(
        as_reader.get("/ui/dead-letters").await.status,
        StatusCode::FORBIDDEN
    );
    let reader_csrf = home.csrf();
    assert_eq!(
        as_reader
            .post(&replay, &[("csrf", &reader_csrf)])
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let (_, globex) = d.api.key("globex", &["operator"]).await;
    let mut as_globex = Browser::login(&d.api, &globex).await;
    let page = as_globex.get("/ui/dead-letters").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains(&letter) && !page.body.contains("evt_early"));
    let globex_csrf = page.csrf();
    assert_eq!(
        as_globex
            .post(&replay, &[("csrf", &globex_csrf)])
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    // Wrong requests: no token, a malformed or unknown id.
    assert_eq!(
        operator.post(&replay, &[]).await.status,
        StatusCode::FORBIDDEN
    );
    for path in [
        "/ui/dead-letters/not-an-id/replay".to_owned(),
        format!("/ui/dead-letters/{}/replay", uuid::Uuid::now_v7()),
    ] {
        let page = operator.post(&path, &[("csrf", &csrf)]).await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{path}");
        assert!(page.body.contains("not found"), "{path}");
    }
    // Before its dispute exists the replay is refused, and the letter stays.
    let page = operator.post(&replay, &[("csrf", &csrf)]).await;
    assert_eq!(page.status, StatusCode::CONFLICT, "{}", page.body);
    assert!(page.body.contains(r#"id="replay-result""#));
    assert!(page.body.contains(&format!(r#"data-letter="{letter}""#)));

    let created = event("evt_created", "dispute.created", "dp_late", now, due);
    assert_eq!(
        d.deliver("acme", &secret, &created).await.0,
        StatusCode::ACCEPTED
    );
    let page = operator.post(&replay, &[("csrf", &csrf)]).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(
        page.body.contains("replayed: <strong>applied</strong>"),
        "{}",
        page.body
    );
    assert!(!page.body.contains(&format!(r#"data-letter="{letter}""#)));
    let view = d.dispute("dp_late").await;
    assert_eq!(view["funds_movements"][0]["kind"], "withdrawn");
    d.api.stop().await;
}

on_both_backends!(dead_letters_are_listed_and_replayed_from_the_dashboard);
