//! Meeting invites end to end over HTTP with a manual clock, on both backends: the
//! invitation read back from the real SMTP server, RSVPs through the pages (GET shows,
//! POST records; tampered, stale and replayed tokens), reminders in each attendee's
//! zone across the March weeks when only New York has changed to summer time, updates
//! and cancellations of one occurrence, a removed attendee's CANCEL, a REPLY posted as
//! text/calendar, the feed and its revocation, a DST-gap start refused, completion with
//! an attendance summary. Every calendar mailed or served is read back by Python's
//! `icalendar` (scripts/check_ics.py), a parser that did not write it.
//!
//! The HTTP calls go through the few helpers below, so moving to the shared test app
//! harness later touches only them.

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use mail_parser::{MessageParser, MimeHeaders};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;
use waymark_engine::{ManualClock, RunStatus};
use waymark_services::{MailConfig, Mailer, SmtpOptions};
use waymark_workflows::meetings::{MeetingInvite, MeetingSettings};

use crate::support::app::TestApp;
use crate::support::services::service_env;
use crate::support::{manual_clock, on_both_backends, wait_for_run, wait_until, TestDb};

mod series;

/// One delivered message.
#[derive(Debug, Clone)]
struct Mail {
    subject: String,
    text: String,
    calendars: Vec<String>,
}

fn mails_to(to: &str) -> Vec<Mail> {
    let dir = PathBuf::from(service_env("WAYMARK_TEST_MAILDIR")).join("new");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
        .filter_map(|raw| {
            let message = MessageParser::default().parse(&raw)?;
            let addressed = message
                .to()
                .and_then(|a| a.first())
                .and_then(|a| a.address())
                .is_some_and(|a| a.eq_ignore_ascii_case(to));
            addressed.then(|| Mail {
                subject: message.subject().unwrap_or_default().to_owned(),
                text: message
                    .body_text(0)
                    .map(|t| t.into_owned())
                    .unwrap_or_default(),
                // The inline text/calendar alternative (the invite.ics attachment holds
                // the same text; the mailer's unit test checks both).
                calendars: message
                    .parts
                    .iter()
                    .filter(|p| {
                        p.content_type()
                            .is_some_and(|c| c.subtype() == Some("calendar"))
                    })
                    .map(|p| String::from_utf8_lossy(p.contents()).into_owned())
                    .collect(),
            })
        })
        .collect()
}

async fn wait_mails(to: &str, subject_part: &str, count: usize) -> Vec<Mail> {
    wait_until(
        &format!("{count} mail(s) to {to} about {subject_part:?}"),
        Duration::from_secs(30),
        || async {
            mails_to(to)
                .iter()
                .filter(|m| m.subject.contains(subject_part))
                .count()
                >= count
        },
    )
    .await;
    mails_to(to)
        .into_iter()
        .filter(|m| m.subject.contains(subject_part))
        .collect()
}

fn count_mails(to: &str, subject_part: &str) -> usize {
    mails_to(to)
        .iter()
        .filter(|m| m.subject.contains(subject_part))
        .count()
}

/// Parses calendars with Python's icalendar; one JSON summary per calendar.
fn parse_ics(calendars: &[String]) -> Vec<Value> {
    let dir = std::env::temp_dir().join(format!("waymark-ics-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let paths: Vec<PathBuf> = calendars
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let path = dir.join(format!("{i}.ics"));
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/check_ics.py");
    let out = std::process::Command::new(service_env("WAYMARK_TEST_PYTHON"))
        .arg(script)
        .args(&paths)
        .output()
        .expect("python");
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        out.status.success(),
        "icalendar refused a calendar: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        calendars.join("\n----\n")
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

fn mailer(store: &waymark_engine::Store) -> Mailer {
    Mailer::from_config(
        &MailConfig {
            smtp_url: Some(format!("smtp://{}", service_env("WAYMARK_TEST_SMTP_ADDR"))),
            smtp: SmtpOptions {
                timeout: Duration::from_secs(10),
                pool_size: 2,
                ca_file: None,
            },
            outbox_dir: std::env::temp_dir().join("waymark-meetings-outbox"),
            default_from: "Waymark <meetings@waymark.example>".into(),
        },
        store.clone(),
    )
    .expect("mailer")
}

struct Meetings {
    api: TestApp,
    clock: ManualClock,
    /// Unique per test, so mailboxes of parallel tests never mix.
    tag: String,
}

async fn setup(db: TestDb) -> Meetings {
    setup_with(db, MeetingSettings::default()).await
}

async fn setup_with(db: TestDb, settings: MeetingSettings) -> Meetings {
    let (clock, _) = manual_clock();
    let api = TestApp::on(db)
        .with_clock(&clock)
        .with_workflows(move |registry, store, _| {
            registry
                .register(MeetingInvite {
                    store: store.clone(),
                    mailer: mailer(store),
                    settings: settings.clone(),
                })
                .unwrap();
        })
        .spawn()
        .await;
    Meetings {
        api,
        clock,
        tag: Uuid::now_v7().simple().to_string(),
    }
}

impl Meetings {
    fn who(&self, name: &str) -> String {
        format!("{name}-{}@example.test", self.tag)
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let sep = if path.contains('?') { '&' } else { '?' };
        self.api
            .call(
                method,
                &format!("{path}{sep}tenant=acme"),
                Some(&self.api.admin),
                body,
            )
            .await
    }

    async fn page(&self, method: Method, link: &str, answer: Option<&str>) -> (StatusCode, String) {
        let path = &link[link.find("/rsvp/").expect("an RSVP link")..];
        let mut request = self
            .api
            .http
            .request(method, format!("{}{path}", self.api.base));
        if let Some(answer) = answer {
            request = request
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("answer={answer}"));
        }
        let response = request.send().await.unwrap();
        (response.status(), response.text().await.unwrap())
    }

    async fn meeting(&self, id: &str) -> Value {
        let (status, body) = self
            .call(Method::GET, &format!("/v1/meetings/{id}"), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    fn answer_of(meeting: &Value, email: &str) -> String {
        meeting["attendees"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["email"] == email)
            .map(|a| a["partstat"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    }

    /// Waits until the run has handled everything up to the clock's now and waits again.
    async fn settled(&self, run: Uuid) -> waymark_engine::Run {
        let now = waymark_engine::Clock::now(&self.clock);
        wait_for_run(&self.api.engine.store, run, "tick, settled", |r| {
            // The tick it waits to enter starts from the instant the last one handled.
            r.status == RunStatus::Waiting
                && r.waiting_for
                    .as_ref()
                    .and_then(|w| w.signals.first())
                    .and_then(|s| s.target.data["since"].as_str())
                    .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                    .is_some_and(|t| t.with_timezone(&Utc) >= now)
        })
        .await
    }
}

/// The runs that carried a meeting, from the first, following `continued_as`.
async fn chain(m: &Meetings, first: Uuid) -> Vec<waymark_engine::Run> {
    let mut runs = Vec::new();
    let mut id = Some(first);
    while let Some(next) = id {
        let run = m
            .api
            .engine
            .store
            .run_get(&waymark_engine::TenantScope::All, next)
            .await
            .unwrap()
            .unwrap();
        id = run.continued_as();
        runs.push(run);
    }
    runs
}

impl Meetings {
    /// Like [`Meetings::settled`], for whichever run of the chain is live.
    async fn chain_settled(&self, first: Uuid) -> waymark_engine::Run {
        let now = waymark_engine::Clock::now(&self.clock);
        wait_until(
            "the live run to settle",
            Duration::from_secs(30),
            || async {
                let live = chain(self, first).await.pop().unwrap();
                live.status == RunStatus::Waiting
                    && live
                        .waiting_for
                        .as_ref()
                        .and_then(|w| w.signals.first())
                        .and_then(|s| s.target.data["since"].as_str())
                        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                        .is_some_and(|t| t.with_timezone(&Utc) >= now)
            },
        )
        .await;
        chain(self, first).await.pop().unwrap()
    }
}

fn links(mail: &Mail) -> Vec<(String, String)> {
    mail.text
        .lines()
        .filter_map(|l| {
            let (label, link) = l.trim().split_once(": ")?;
            link.contains("/rsvp/")
                .then(|| (label.to_owned(), link.trim().to_owned()))
        })
        .collect()
}

fn link(mail: &Mail, label: &str) -> String {
    links(mail)
        .into_iter()
        .find(|(l, _)| l == label)
        .unwrap_or_else(|| panic!("no {label} link in {}", mail.text))
        .1
}

async fn invite_rsvp_reminder_and_completion(db: TestDb) {
    let m = setup(db).await;
    let (ada, bob, org) = (m.who("ada"), m.who("bob"), m.who("org"));
    let now = waymark_engine::Clock::now(&m.clock);
    let berlin: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
    let start = (now + chrono::Duration::days(3))
        .with_timezone(&berlin)
        .naive_local()
        .date()
        .and_hms_opt(10, 0, 0)
        .unwrap();
    let (status, created) = m
        .call(
            Method::POST,
            "/v1/meetings",
            Some(json!({
                "title": format!("Kickoff {}", m.tag),
                "start": start, "end": start + chrono::Duration::hours(1),
                "timezone": "Europe/Berlin",
                "organizer": {"email": org, "name": "Org"},
                "attendees": [{"email": ada, "name": "Ada", "timezone": "America/New_York"}, {"email": bob}],
                "location": "Room 1",
                "reminders": ["24h"]
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let run: Uuid = created["run_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(created["sequence"], 0);

    let invite = wait_mails(&ada, "Invitation: Kickoff", 1).await.remove(0);
    wait_mails(&bob, "Invitation: Kickoff", 1).await;
    let parsed = parse_ics(&invite.calendars);
    let cal = &parsed[0];
    assert_eq!(cal["method"], "REQUEST");
    assert_eq!(cal["timezones"], json!(["Europe/Berlin"]));
    let event = &cal["events"][0];
    assert_eq!(event["uid"], created["uid"]);
    assert_eq!(event["sequence"], 0);
    assert_eq!(event["tzid"], "Europe/Berlin");
    assert_eq!(event["dtstart"], start.format("%Y%m%dT%H%M%S").to_string());
    assert!(event["attendees"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["partstat"] == "NEEDS-ACTION" && a["rsvp"] == "TRUE"));

    // GET shows the page and records nothing.
    let accept = link(&invite, "Accept");
    let (status, html) = m.page(Method::GET, &accept, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("method=\"post\"") && html.contains("Decline"),
        "{html}"
    );
    assert_eq!(
        Meetings::answer_of(&m.meeting(&id).await, &ada),
        "needs-action"
    );
    // POST records; the same answer again is recorded once.
    let (status, html) = m.page(Method::POST, &accept, Some("accepted")).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("is recorded"), "{html}");
    let (status, html) = m.page(Method::POST, &accept, Some("accepted")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("already your answer"), "{html}");
    assert_eq!(Meetings::answer_of(&m.meeting(&id).await, &ada), "accepted");
    // A tampered token: a plain error page.
    let mut tampered = accept.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let (status, html) = m.page(Method::POST, &tampered, Some("declined")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(html.contains("not valid"), "{html}");
    assert_eq!(Meetings::answer_of(&m.meeting(&id).await, &ada), "accepted");

    let bob_invite = mails_to(&bob).remove(0);
    let (status, _) = m
        .page(
            Method::POST,
            &link(&bob_invite, "Decline"),
            Some("declined"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    wait_mails(&org, "accepted: Kickoff", 1).await;
    wait_mails(&org, "declined: Kickoff", 1).await;
    m.settled(run).await;
    assert_eq!(
        count_mails(&org, "accepted: Kickoff"),
        1,
        "the replayed answer is told once"
    );

    // The reminder 24 h before, to Ada only: Bob declined.
    let meeting = m.meeting(&id).await;
    let next = &meeting["next_reminders"];
    assert_eq!(next.as_array().unwrap().len(), 1, "{next}");
    let at: DateTime<Utc> = serde_json::from_value(next[0]["at"].clone()).unwrap();
    let start_utc: DateTime<Utc> =
        serde_json::from_value(meeting["occurrences"][0]["start_utc"].clone()).unwrap();
    assert_eq!(at, start_utc - chrono::Duration::hours(24));
    m.clock.set(at);
    let reminder = wait_mails(&ada, "Reminder: Kickoff", 1).await.remove(0);
    assert!(
        reminder.subject.contains("America/New_York"),
        "{}",
        reminder.subject
    );
    m.settled(run).await;
    assert_eq!(count_mails(&bob, "Reminder"), 0);

    // After the meeting's end the run completes with the attendance summary.
    m.clock.set(start_utc + chrono::Duration::hours(2));
    let done = wait_for_run(&m.api.engine.store, run, "completed", |r| {
        r.status == RunStatus::Completed
    })
    .await;
    let output = done.output.unwrap();
    assert_eq!(output["outcome"], "completed");
    assert_eq!(
        (output["accepted"].as_u64(), output["declined"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(output["occurrences"], 1);
    assert_eq!(m.meeting(&id).await["status"], "completed");
}

async fn weekly_series_in_two_zones_changes_cancels_replies_and_feeds(db: TestDb) {
    let m = setup(db).await;
    let (ny, be, carol, org) = (m.who("ny"), m.who("be"), m.who("carol"), m.who("org"));
    // A DST-gap start is refused, naming the field.
    let (status, refused) = m
        .call(
            Method::POST,
            "/v1/meetings",
            Some(json!({
                "title": "Gap", "start": "2027-03-28T02:30:00", "end": "2027-03-28T03:30:00",
                "timezone": "Europe/Berlin", "organizer": {"email": org}, "attendees": [{"email": ny}]
            })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("start: 2027-03-28 02:30:00 does not exist"),
        "{refused}"
    );
    // A COUNT beyond what one walk from the start may cost is refused, naming the rule.
    let (status, refused) = m
        .call(
            Method::POST,
            "/v1/meetings",
            Some(json!({
                "title": "Long", "start": "2027-03-02T16:00:00", "end": "2027-03-02T17:00:00",
                "timezone": "Europe/Berlin", "organizer": {"email": org}, "attendees": [{"email": ny}],
                "recurrence": "FREQ=DAILY;COUNT=5001"
            })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("recurrence: COUNT may be at most 5000"),
        "{refused}"
    );

    // Tuesdays 16:00 in Berlin through March 2027: New York moves to summer time on
    // 14 March, Berlin on 28 March.
    let (status, created) = m
        .call(
            Method::POST,
            "/v1/meetings",
            Some(json!({
                "title": format!("Weekly {}", m.tag),
                "start": "2027-03-02T16:00:00", "end": "2027-03-02T17:00:00",
                "timezone": "Europe/Berlin",
                "organizer": {"email": org},
                "attendees": [
                    {"email": ny, "timezone": "America/New_York"},
                    {"email": be, "timezone": "Europe/Berlin"},
                    {"email": carol}
                ],
                "recurrence": "FREQ=WEEKLY;BYDAY=TU;COUNT=5",
                "reminders": [{"day_before_at": "09:00"}]
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let run: Uuid = created["run_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(created["occurrences"].as_array().unwrap().len(), 5);
    let invite = wait_mails(&ny, "Invitation: Weekly", 1).await.remove(0);
    wait_mails(&be, "Invitation: Weekly", 1).await;
    wait_mails(&carol, "Invitation: Weekly", 1).await;
    let cal = &parse_ics(&invite.calendars)[0];
    assert_eq!(cal["events"][0]["rrule"], "FREQ=WEEKLY;COUNT=5;BYDAY=TU");
    assert!(
        cal["observances"]["Europe/Berlin"].as_u64().unwrap() >= 2,
        "{cal}"
    );
    m.settled(run).await;

    // 15 March: Berlin's 09:00 (CET, 08:00 UTC) comes first; New York's 09:00 is now
    // EDT, 13:00 UTC (it was 14:00 UTC the week before).
    m.clock.set("2027-03-15T12:59:59Z".parse().unwrap());
    let be_reminder = wait_mails(&be, "Reminder: Weekly", 1).await.remove(0);
    assert!(
        be_reminder
            .subject
            .contains("2027-03-16 16:00 Europe/Berlin"),
        "{}",
        be_reminder.subject
    );
    m.settled(run).await;
    assert_eq!(
        count_mails(&ny, "Reminder: Weekly"),
        0,
        "New York's 09:00 is 13:00 UTC"
    );
    m.clock.set("2027-03-15T13:00:00Z".parse().unwrap());
    let ny_reminder = wait_mails(&ny, "Reminder: Weekly", 1).await.remove(0);
    assert!(
        ny_reminder
            .subject
            .contains("2027-03-16 11:00 America/New_York"),
        "{}",
        ny_reminder.subject
    );
    m.settled(run).await;

    // Cancel the occurrence of 23 March: a CANCEL naming it by RECURRENCE-ID.
    let (status, body) = m
        .call(
            Method::POST,
            &format!("/v1/meetings/{id}/cancel"),
            Some(json!({"occurrence": "2027-03-23T16:00:00"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["sequence"], 1);
    let cancel = wait_mails(&be, "Cancelled: Weekly", 1).await.remove(0);
    let cal = &parse_ics(&cancel.calendars)[0];
    assert_eq!(cal["method"], "CANCEL");
    assert_eq!(cal["events"][0]["recurrence_id"], "20270323T160000");
    assert_eq!(cal["events"][0]["sequence"], 1);
    // Its reminders are dropped: the next one is for 30 March.
    let meeting = m.meeting(&id).await;
    for next in meeting["next_reminders"].as_array().unwrap() {
        assert_eq!(next["occurrence"], "2027-03-30T16:00:00", "{next}");
    }

    // Move the occurrence of 30 March to Wednesday 31 March 10:00: everyone gets the
    // updated series with EXDATE and a RECURRENCE-ID override, SEQUENCE 2.
    let (status, body) = m
        .call(
            Method::PATCH,
            &format!("/v1/meetings/{id}"),
            Some(json!({"occurrence": "2027-03-30T16:00:00", "start": "2027-03-31T10:00:00"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["sequence"], 2);
    let update = wait_mails(&ny, "Updated invitation: Weekly", 1)
        .await
        .remove(0);
    let cal = &parse_ics(&update.calendars)[0];
    assert_eq!(cal["method"], "REQUEST");
    let events = cal["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{cal}");
    assert_eq!(events[0]["exdate"], json!(["20270323T160000"]));
    assert_eq!(events[1]["recurrence_id"], "20270330T160000");
    assert_eq!(events[1]["dtstart"], "20270331T100000");
    assert!(events
        .iter()
        .all(|e| e["sequence"] == 2 && e["uid"] == created["uid"]));
    // The reminders follow: Berlin's is the day before the new date.
    let meeting = m.meeting(&id).await;
    let be_next = meeting["next_reminders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["attendee"] == be)
        .unwrap()
        .clone();
    assert_eq!(be_next["local"], "2027-03-30T09:00");
    m.settled(run).await;

    // Remove Carol: she alone gets a CANCEL; nobody else is mailed, SEQUENCE stays.
    let before = (mails_to(&ny).len(), mails_to(&be).len());
    let (status, body) = m
        .call(
            Method::PATCH,
            &format!("/v1/meetings/{id}"),
            Some(json!({"attendees_removed": [carol]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["sequence"], 2);
    let removed = wait_mails(&carol, "Removed from: Weekly", 1)
        .await
        .remove(0);
    let cal = &parse_ics(&removed.calendars)[0];
    assert_eq!(cal["method"], "CANCEL");
    assert_eq!(
        cal["events"][0]["attendees"][0]["email"],
        carol.to_ascii_lowercase()
    );
    m.settled(run).await;
    assert_eq!((mails_to(&ny).len(), mails_to(&be).len()), before);

    // The first invitation's link is stale now: it shows the change, records nothing.
    let stale = link(&invite, "Accept");
    let (status, html) = m.page(Method::GET, &stale, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("has changed"), "{html}");
    let (status, _) = m.page(Method::POST, &stale, Some("accepted")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        Meetings::answer_of(&m.meeting(&id).await, &ny),
        "needs-action"
    );

    // A calendar client's REPLY, posted as text/calendar.
    let reply = |sequence: i64, partstat: &str| {
        format!(
            "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Test//Client//EN\r\nMETHOD:REPLY\r\nBEGIN:VEVENT\r\n\
             UID:{}\r\nSEQUENCE:{sequence}\r\nDTSTAMP:20270101T000000Z\r\n\
             ATTENDEE;PARTSTAT={partstat}:mailto:{be}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
            created["uid"].as_str().unwrap()
        )
    };
    let post_reply = |text: String| {
        let request = m
            .api
            .http
            .post(format!(
                "{}/v1/meetings/{id}/replies?tenant=acme",
                m.api.base
            ))
            .bearer_auth(&m.api.admin)
            .header("content-type", "text/calendar; method=REPLY; charset=UTF-8")
            .body(text);
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(
        post_reply(reply(1, "DECLINED")).await,
        StatusCode::CONFLICT,
        "an outdated SEQUENCE"
    );
    assert_eq!(post_reply(reply(2, "ACCEPTED")).await, StatusCode::OK);
    assert_eq!(Meetings::answer_of(&m.meeting(&id).await, &be), "accepted");
    wait_mails(&org, "accepted: Weekly", 1).await;

    // The feed lists the meeting with Berlin's answer; once revoked it is gone.
    let (status, feed) = m
        .call(
            Method::POST,
            "/v1/meetings/feeds",
            Some(json!({"email": be})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{feed}");
    let url = format!("{}{}", m.api.base, feed["path"].as_str().unwrap());
    let response = m.api.http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    let cal = &parse_ics(&[text])[0];
    assert_eq!(cal["events"][0]["uid"], created["uid"]);
    assert_eq!(cal["events"][0]["attendees"][0]["partstat"], "ACCEPTED");
    let (status, _) = m
        .call(
            Method::DELETE,
            &format!("/v1/meetings/feeds/{}", feed["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        m.api.http.get(&url).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );

    // Cancelling the series: everyone current gets a CANCEL and the run completes.
    let (status, _) = m
        .call(
            Method::POST,
            &format!("/v1/meetings/{id}/cancel"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let done = wait_for_run(&m.api.engine.store, run, "completed", |r| {
        r.status == RunStatus::Completed
    })
    .await;
    assert_eq!(done.output.unwrap()["outcome"], "cancelled");
    let cancel = wait_mails(&ny, &format!("Cancelled: Weekly {}", m.tag), 2).await;
    let series = cancel.iter().find(|c| !c.subject.contains(" on ")).unwrap();
    let cal = &parse_ics(&series.calendars)[0];
    assert_eq!(cal["method"], "CANCEL");
    assert_eq!(cal["events"][0]["status"], "CANCELLED");
    // A link of a cancelled meeting says so.
    let (status, html) = m.page(Method::GET, &stale, None).await;
    assert_eq!(status, StatusCode::GONE);
    assert!(html.contains("cancelled"), "{html}");
}

on_both_backends!(
    invite_rsvp_reminder_and_completion,
    weekly_series_in_two_zones_changes_cancels_replies_and_feeds,
);
