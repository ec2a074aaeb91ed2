//! Long series: continue-as-new keeping each run's history bounded, reminders far
//! ahead of many occurrences, a REPLY for one occurrence (and the feed showing it),
//! moving the whole series, and the organiser's daily digest. Helpers come from the parent module.

use super::*;

on_both_backends!(
    an_endless_series_continues_as_new_so_each_runs_history_stays_bounded,
    a_reply_with_a_recurrence_id_answers_for_that_occurrence_only,
    the_feed_shows_an_answer_for_one_occurrence_as_an_override_with_its_partstat,
    moving_the_whole_series_bumps_sequence_reinvites_and_retargets_every_reminder,
    an_organiser_with_a_daily_digest_gets_one_mail_a_day_with_the_answers,
    reminders_far_ahead_of_many_occurrences_are_all_sent_on_time,
);

/// A daily series without end, reminders an hour before each occurrence, and a run
/// that continues as new after every second occurrence: a week of occurrences leaves
/// a chain of runs whose histories do not grow with the series, every reminder sent
/// once, and answers still reaching the live run through the meeting's row.
async fn an_endless_series_continues_as_new_so_each_runs_history_stays_bounded(db: TestDb) {
    let m = setup_with(
        db,
        MeetingSettings {
            continue_after_occurrences: 2,
            ..MeetingSettings::default()
        },
    )
    .await;
    let (ada, org) = (m.who("ada"), m.who("org"));
    let now = waymark_engine::Clock::now(&m.clock);
    let berlin: chrono_tz::Tz = "Europe/Berlin".parse().unwrap();
    let start = (now + chrono::Duration::days(2))
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
                "title": format!("Daily {}", m.tag),
                "start": start, "end": start + chrono::Duration::minutes(30),
                "timezone": "Europe/Berlin",
                "organizer": {"email": org},
                "attendees": [{"email": ada, "timezone": "Europe/Berlin"}],
                "recurrence": "FREQ=DAILY",
                "reminders": ["1h"]
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let first: Uuid = created["run_id"].as_str().unwrap().parse().unwrap();
    let invite = wait_mails(&ada, "Invitation: Daily", 1).await.remove(0);
    m.settled(first).await;

    let occurrences = 7;
    for k in 0..occurrences {
        let local = start + chrono::Duration::days(k);
        let start_utc = local.and_local_timezone(berlin).single().unwrap();
        m.clock
            .set((start_utc - chrono::Duration::hours(1)).with_timezone(&Utc));
        wait_mails(&ada, "Reminder: Daily", k as usize + 1).await;
        m.chain_settled(first).await;
        if k == 3 {
            // The run that sent the invitation is long gone: the answer reaches the
            // live one through the meeting's row, and the organiser hears of it.
            let runs = chain(&m, first).await;
            assert!(runs.len() >= 2, "continued by now");
            let (status, _) = m
                .page(Method::POST, &link(&invite, "Accept"), Some("accepted"))
                .await;
            assert_eq!(status, StatusCode::OK);
            wait_mails(&org, "accepted: Daily", 1).await;
            m.chain_settled(first).await;
        }
    }
    let runs = chain(&m, first).await;
    // Seven occurrences: the run continued after every second one that ended.
    assert!(runs.len() >= 3, "{} run(s)", runs.len());
    let live = runs.last().unwrap();
    assert_eq!(m.meeting(&id).await["run_id"], json!(live.id));
    let mut sizes = Vec::new();
    for run in &runs {
        let history = m
            .api
            .engine
            .store
            .run_history(&waymark_engine::TenantScope::All, run.id)
            .await
            .unwrap()
            .unwrap();
        sizes.push(history.len());
    }
    // Two occurrences' ticks (a reminder each, an answer) and the run's start and
    // end: a small constant, whatever the length of the series.
    assert!(
        sizes.iter().all(|&n| n <= 16),
        "history rows per run: {sizes:?}"
    );
    for run in &runs[..runs.len() - 1] {
        assert_eq!(run.status, RunStatus::Completed);
    }
    // Every reminder went out once.
    assert_eq!(count_mails(&ada, "Reminder: Daily"), occurrences as usize);
    // A series without end lists its next occurrences, not its first ones: the clock
    // stands an hour before the seventh.
    let shown = m.meeting(&id).await;
    let listed = shown["occurrences"].as_array().unwrap();
    assert_eq!(listed.len(), 20);
    let seventh = (start + chrono::Duration::days(occurrences - 1))
        .and_local_timezone(berlin)
        .single()
        .unwrap()
        .with_timezone(&Utc);
    assert_eq!(listed[0]["start_utc"], json!(seventh), "{shown}");
}

/// A calendar REPLY with `RECURRENCE-ID`, as a client sends when one declines a single
/// occurrence.
fn occurrence_reply(uid: &str, sequence: i64, email: &str, partstat: &str, rid: &str) -> String {
    format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Test//Client//EN\r\nMETHOD:REPLY\r\nBEGIN:VEVENT\r\n\
         UID:{uid}\r\nSEQUENCE:{sequence}\r\nDTSTAMP:20270101T000000Z\r\n\
         RECURRENCE-ID;TZID=Europe/Berlin:{rid}\r\n\
         ATTENDEE;PARTSTAT={partstat}:mailto:{email}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    )
}

impl Meetings {
    async fn post_reply(&self, id: &str, text: String) -> (StatusCode, Value) {
        let response = self
            .api
            .http
            .post(format!(
                "{}/v1/meetings/{id}/replies?tenant=acme",
                self.api.base
            ))
            .bearer_auth(&self.api.admin)
            .header("content-type", "text/calendar; method=REPLY; charset=UTF-8")
            .body(text)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Creates a weekly series of three Tuesdays from 2027-05-04, 10:00 Berlin, with a
    /// reminder 24 hours before; answers (id, uid, first run).
    async fn weekly(&self, title: &str, attendees: &[&str]) -> (String, String, Uuid) {
        let (status, created) = self
            .call(
                Method::POST,
                "/v1/meetings",
                Some(json!({
                    "title": format!("{title} {}", self.tag),
                    "start": "2027-05-04T10:00:00", "end": "2027-05-04T11:00:00",
                    "timezone": "Europe/Berlin",
                    "organizer": {"email": self.who("org")},
                    "attendees": attendees.iter().map(|a| json!({"email": a})).collect::<Vec<_>>(),
                    "recurrence": "FREQ=WEEKLY;BYDAY=TU;COUNT=3",
                    "reminders": ["24h"]
                })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        (
            created["id"].as_str().unwrap().to_owned(),
            created["uid"].as_str().unwrap().to_owned(),
            created["run_id"].as_str().unwrap().parse().unwrap(),
        )
    }
}

fn occurrence_answer(meeting: &Value, original: &str, email: &str) -> String {
    let occurrence = meeting["occurrences"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["original_start"] == original)
        .unwrap_or_else(|| panic!("no occurrence {original} in {meeting}"));
    occurrence["answers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["email"] == email)
        .map(|a| a["answer"].as_str().unwrap().to_owned())
        .unwrap()
}

async fn a_reply_with_a_recurrence_id_answers_for_that_occurrence_only(db: TestDb) {
    let m = setup(db).await;
    m.clock.set("2027-05-01T00:00:00Z".parse().unwrap());
    let (ada, bob, org) = (m.who("ada"), m.who("bob"), m.who("org"));
    let (id, uid, run) = m.weekly("Sync", &[&ada, &bob]).await;
    wait_mails(&ada, "Invitation: Sync", 1).await;
    m.settled(run).await;

    // Ada declines the second Tuesday only.
    let (status, body) = m
        .post_reply(
            &id,
            occurrence_reply(&uid, 0, &ada, "DECLINED", "20270511T100000"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (&body["recorded"], &body["answer"], &body["occurrence"]),
        (
            &json!(true),
            &json!("declined"),
            &json!("2027-05-11T10:00:00")
        )
    );
    let meeting = m.meeting(&id).await;
    assert_eq!(
        Meetings::answer_of(&meeting, &ada),
        "needs-action",
        "the series answer stays"
    );
    assert_eq!(
        occurrence_answer(&meeting, "2027-05-11T10:00:00", &ada),
        "declined"
    );
    assert_eq!(
        occurrence_answer(&meeting, "2027-05-04T10:00:00", &ada),
        "needs-action"
    );
    assert_eq!(
        occurrence_answer(&meeting, "2027-05-18T10:00:00", &ada),
        "needs-action"
    );
    assert_eq!(
        occurrence_answer(&meeting, "2027-05-11T10:00:00", &bob),
        "needs-action"
    );
    let told = wait_mails(&org, "declined: Sync", 1).await.remove(0);
    assert!(
        told.subject
            .contains("the occurrence of 2027-05-11 10:00:00"),
        "{}",
        told.subject
    );
    // The same reply again is recorded once; a RECURRENCE-ID that is no occurrence
    // of the series is refused, naming it.
    let (status, body) = m
        .post_reply(
            &id,
            occurrence_reply(&uid, 0, &ada, "DECLINED", "20270511T100000"),
        )
        .await;
    assert_eq!(
        (status, &body["recorded"]),
        (StatusCode::OK, &json!(false)),
        "{body}"
    );
    let (status, body) = m
        .post_reply(
            &id,
            occurrence_reply(&uid, 0, &ada, "DECLINED", "20270512T100000"),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body.to_string()
            .contains("2027-05-12 10:00:00 is not an occurrence"),
        "{body}"
    );
    m.settled(run).await;
    assert_eq!(count_mails(&org, "declined: Sync"), 1);

    // Reminders: Ada gets the first and third Tuesdays', not the second's; Bob all.
    for (k, day) in ["2027-05-03", "2027-05-10", "2027-05-17"]
        .iter()
        .enumerate()
    {
        m.clock.set(format!("{day}T08:00:00Z").parse().unwrap());
        wait_mails(&bob, "Reminder: Sync", k + 1).await;
        m.settled(run).await;
    }
    let ada_reminders = wait_mails(&ada, "Reminder: Sync", 2).await;
    assert_eq!(ada_reminders.len(), 2);
    assert!(
        ada_reminders
            .iter()
            .all(|r| !r.subject.contains("2027-05-11")),
        "{:?}",
        ada_reminders.iter().map(|r| &r.subject).collect::<Vec<_>>()
    );
}

/// The attendee's feed read back by Python's icalendar: an answer for one occurrence is
/// an override VEVENT (`RECURRENCE-ID`) with that `PARTSTAT`, the series keeps the
/// series answer, and a cancelled occurrence is an `EXDATE`, not an override.
async fn the_feed_shows_an_answer_for_one_occurrence_as_an_override_with_its_partstat(db: TestDb) {
    let m = setup(db).await;
    m.clock.set("2027-05-01T00:00:00Z".parse().unwrap());
    let (ada, bob) = (m.who("ada"), m.who("bob"));
    let (id, uid, run) = m.weekly("Feed", &[&ada, &bob]).await;
    m.settled(run).await;
    for (partstat, rid) in [
        ("DECLINED", "20270511T100000"),
        ("TENTATIVE", "20270518T100000"),
    ] {
        let (status, body) = m
            .post_reply(&id, occurrence_reply(&uid, 0, &ada, partstat, rid))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, body) = m
        .call(
            Method::POST,
            &format!("/v1/meetings/{id}/cancel"),
            Some(json!({"occurrence": "2027-05-18T10:00:00"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    m.settled(run).await;

    let feed_of = |email: String| {
        let m = &m;
        async move {
            let (status, feed) = m
                .call(
                    Method::POST,
                    "/v1/meetings/feeds",
                    Some(json!({"email": email})),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{feed}");
            let url = format!("{}{}", m.api.base, feed["path"].as_str().unwrap());
            let response = m.api.http.get(&url).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            parse_ics(&[response.text().await.unwrap()]).remove(0)
        }
    };
    let cal = feed_of(ada.clone()).await;
    assert_eq!(cal["method"], "PUBLISH");
    let events = cal["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "the series and one override: {cal}");
    let series = &events[0];
    assert_eq!(series["uid"], uid.as_str());
    assert_eq!(series["recurrence_id"], Value::Null);
    assert_eq!(series["rrule"], "FREQ=WEEKLY;COUNT=3;BYDAY=TU");
    assert_eq!(series["exdate"], json!(["20270518T100000"]));
    assert_eq!(series["attendees"][0]["email"], ada.to_lowercase());
    assert_eq!(series["attendees"][0]["partstat"], "NEEDS-ACTION");
    let declined = &events[1];
    assert_eq!(declined["uid"], uid.as_str());
    assert_eq!(declined["sequence"], series["sequence"]);
    assert_eq!(declined["recurrence_id"], "20270511T100000");
    assert_eq!(declined["dtstart"], "20270511T100000");
    assert_eq!(declined["tzid"], "Europe/Berlin");
    assert_eq!(declined["dtstart_utc"], "20270511T080000Z");
    assert_eq!(declined["attendees"][0]["partstat"], "DECLINED");
    // Bob answered nothing on his own: his feed has the series alone.
    let cal = feed_of(bob.clone()).await;
    let events = cal["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{cal}");
    assert_eq!(events[0]["attendees"][0]["partstat"], "NEEDS-ACTION");
}

async fn moving_the_whole_series_bumps_sequence_reinvites_and_retargets_every_reminder(db: TestDb) {
    let m = setup(db).await;
    m.clock.set("2027-05-01T00:00:00Z".parse().unwrap());
    let (ada, bob) = (m.who("ada"), m.who("bob"));
    let (id, uid, run) = m.weekly("Standup", &[&ada, &bob]).await;
    wait_mails(&ada, "Invitation: Standup", 1).await;
    wait_mails(&bob, "Invitation: Standup", 1).await;
    // Bob declines the last Tuesday: the answer must follow the series when it moves.
    let (status, body) = m
        .post_reply(
            &id,
            occurrence_reply(&uid, 0, &bob, "DECLINED", "20270518T100000"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    m.settled(run).await;

    // The whole series moves from Tuesdays 10:00 to Wednesdays 14:00.
    let (status, body) = m
        .call(
            Method::PATCH,
            &format!("/v1/meetings/{id}"),
            Some(json!({"start": "2027-05-05T14:00:00", "end": "2027-05-05T15:00:00"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["sequence"], 1);
    // Both attendees are re-invited with SEQUENCE 1 and the new DTSTART.
    for who in [&ada, &bob] {
        let update = wait_mails(who, "Updated invitation: Standup", 1)
            .await
            .remove(0);
        let cal = &parse_ics(&update.calendars)[0];
        assert_eq!(cal["method"], "REQUEST");
        let event = &cal["events"][0];
        assert_eq!(
            (&event["uid"], &event["sequence"]),
            (&json!(uid), &json!(1))
        );
        assert_eq!(event["dtstart"], "20270505T140000");
        assert_eq!(event["tzid"], "Europe/Berlin");
        assert_eq!(event["rrule"], "FREQ=WEEKLY;COUNT=3;BYDAY=WE");
    }
    // Every attendee's next reminder is 24 h before the new first occurrence (12:00
    // UTC on 4 May, Berlin being UTC+2), and Bob's decline names the new last one.
    let meeting = m.meeting(&id).await;
    let next = meeting["next_reminders"].as_array().unwrap();
    assert_eq!(next.len(), 2, "{meeting}");
    for r in next {
        assert_eq!(r["at"], "2027-05-04T12:00:00Z", "{r}");
        assert_eq!(r["occurrence"], "2027-05-05T14:00:00");
    }
    assert_eq!(
        occurrence_answer(&meeting, "2027-05-19T14:00:00", &bob),
        "declined"
    );
    // The run's durable timer is re-targeted too: it no longer wakes at the old
    // reminder instant (08:00 UTC on 3 May) but at the new one.
    let settled = m.settled(run).await;
    assert_eq!(
        settled.due_at,
        Some("2027-05-04T12:00:00Z".parse().unwrap())
    );
    // The new ones go out, for every occurrence at its new time.
    for (k, at) in [
        "2027-05-04T12:00:00Z",
        "2027-05-11T12:00:00Z",
        "2027-05-18T12:00:00Z",
    ]
    .iter()
    .enumerate()
    {
        m.clock.set(at.parse().unwrap());
        let reminders = wait_mails(&ada, "Reminder: Standup", k + 1).await;
        assert!(
            reminders.iter().all(|r| r.subject.contains("14:00")),
            "{:?}",
            reminders.iter().map(|r| &r.subject).collect::<Vec<_>>()
        );
        m.settled(run).await;
    }
    // Bob declined the (moved) last one: two reminders, not three.
    assert_eq!(count_mails(&bob, "Reminder: Standup"), 2);
}

async fn an_organiser_with_a_daily_digest_gets_one_mail_a_day_with_the_answers(db: TestDb) {
    let m = setup(db).await;
    // 10:00 in Berlin (UTC+2) on 1 May; the digest goes out at 18:00 Berlin time.
    m.clock.set("2027-05-01T08:00:00Z".parse().unwrap());
    let (ada, bob, org) = (m.who("ada"), m.who("bob"), m.who("org"));
    let (status, created) = m
        .call(
            Method::POST,
            "/v1/meetings",
            Some(json!({
                "title": format!("Review {}", m.tag),
                "start": "2027-05-10T10:00:00", "end": "2027-05-10T11:00:00",
                "timezone": "Europe/Berlin",
                "organizer": {"email": org},
                "attendees": [{"email": ada, "name": "Ada"}, {"email": bob}],
                "organizer_digest": {"daily_at": "18:00"}
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["organizer_digest"], json!({"daily_at": "18:00:00"}));
    // Wrong digests are refused, naming the field.
    for wrong in [
        json!("daily"),
        json!({"daily_at": "25:00"}),
        json!({"weekly_at": "18:00"}),
    ] {
        let (status, body) = m
            .call(
                Method::POST,
                "/v1/meetings",
                Some(json!({
                    "title": "Bad digest",
                    "start": "2027-05-10T10:00:00", "end": "2027-05-10T11:00:00",
                    "timezone": "Europe/Berlin", "organizer": {"email": org},
                    "attendees": [{"email": ada}], "organizer_digest": wrong
                })),
            )
            .await;
        assert!(status.is_client_error(), "{wrong}: {status} {body}");
        assert!(
            body.to_string().contains("organizer_digest"),
            "{wrong}: {body}"
        );
    }
    let run: Uuid = created["run_id"].as_str().unwrap().parse().unwrap();
    let ada_invite = wait_mails(&ada, "Invitation: Review", 1).await.remove(0);
    let bob_invite = wait_mails(&bob, "Invitation: Review", 1).await.remove(0);
    for (invite, answer) in [(&ada_invite, "accepted"), (&bob_invite, "declined")] {
        let label = if answer == "accepted" {
            "Accept"
        } else {
            "Decline"
        };
        let (status, html) = m
            .page(Method::POST, &link(invite, label), Some(answer))
            .await;
        assert_eq!(status, StatusCode::OK, "{html}");
    }
    let settled = m.settled(run).await;
    // No mail per answer; the run's timer is at 18:00 Berlin (16:00 UTC).
    assert_eq!(mails_to(&org).len(), 0);
    assert_eq!(
        settled.due_at,
        Some("2027-05-01T16:00:00Z".parse().unwrap())
    );

    m.clock.set("2027-05-01T16:00:00Z".parse().unwrap());
    let digest = wait_mails(&org, "Daily answers: Review", 1).await.remove(0);
    assert!(
        digest.subject.contains("2027-05-01, 2 answer(s)"),
        "{}",
        digest.subject
    );
    assert!(
        digest.text.contains(&format!("Ada <{ada}> accepted"))
            && digest.text.contains(&format!("{bob} declined")),
        "{}",
        digest.text
    );
    m.settled(run).await;

    // Bob changes his mind the next morning: one more digest, that evening, with his
    // answer only; nothing in between.
    m.clock.set("2027-05-02T07:00:00Z".parse().unwrap());
    let (status, _) = m
        .page(
            Method::POST,
            &link(&bob_invite, "Tentative"),
            Some("tentative"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    m.settled(run).await;
    assert_eq!(count_mails(&org, "Daily answers"), 1);
    m.clock.set("2027-05-02T16:00:00Z".parse().unwrap());
    let digests = wait_mails(&org, "Daily answers: Review", 2).await;
    let second = digests
        .iter()
        .find(|d| d.subject.contains("2027-05-02"))
        .expect("the second day's digest");
    assert!(second.subject.contains("1 answer(s)"), "{}", second.subject);
    assert!(
        second.text.contains(&format!("{bob} tentative")),
        "{}",
        second.text
    );
    assert!(!second.text.contains(&ada), "{}", second.text);
    m.settled(run).await;
    // Only digests reached the organiser: no single-answer mail.
    assert_eq!(mails_to(&org).len(), 2);
}

/// A reminder 12 days ahead of a daily series: when it falls due, more than eight
/// occurrences (the tick's first look) lie between now and its meeting. Each one is
/// sent, at its instant.
async fn reminders_far_ahead_of_many_occurrences_are_all_sent_on_time(db: TestDb) {
    let m = setup(db).await;
    m.clock.set("2027-06-01T00:00:00Z".parse().unwrap());
    let ada = m.who("ada");
    let (status, created) = m
        .call(
            Method::POST,
            "/v1/meetings",
            Some(json!({
                "title": format!("Daily far {}", m.tag),
                "start": "2027-06-21T09:00:00", "end": "2027-06-21T09:15:00",
                "timezone": "UTC",
                "organizer": {"email": m.who("org")},
                "attendees": [{"email": ada}],
                "recurrence": "FREQ=DAILY;COUNT=12",
                "reminders": ["12d"]
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let run: Uuid = created["run_id"].as_str().unwrap().parse().unwrap();
    wait_mails(&ada, "Invitation: Daily far", 1).await;
    let settled = m.settled(run).await;
    assert_eq!(
        settled.due_at,
        Some("2027-06-09T09:00:00Z".parse().unwrap())
    );
    for k in 0..12 {
        let at = chrono::DateTime::parse_from_rfc3339("2027-06-09T09:00:00Z").unwrap()
            + chrono::Duration::days(k);
        m.clock.set(at.with_timezone(&Utc));
        let sent = wait_mails(&ada, "Reminder: Daily far", k as usize + 1).await;
        let day = (at + chrono::Duration::days(12))
            .format("%Y-%m-%d")
            .to_string();
        assert!(
            sent.iter().any(|r| r.subject.contains(&day)),
            "no reminder for {day}: {:?}",
            sent.iter().map(|r| &r.subject).collect::<Vec<_>>()
        );
        m.settled(run).await;
    }
    assert_eq!(count_mails(&ada, "Reminder: Daily far"), 12);
}
