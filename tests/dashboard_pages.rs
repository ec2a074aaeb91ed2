//! The dashboard's management pages through real HTTP, on both backends: API keys
//! (create, revoke, rotate through the API's own handlers, each with a table of wrong
//! inputs), and what readers and other tenants may not see or do there.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::dashboard::{start, Browser};
use crate::support::app::TestApp;
use crate::support::{on_both_backends, TestDb};

/// A form's fields beyond the CSRF token.
type Fields<'a> = &'a [(&'a str, &'a str)];

/// A key's prefix, as the admin reads it through the API.
async fn prefix(api: &TestApp, id: &str) -> String {
    let (status, body) = api
        .call(
            Method::GET,
            &format!("/v1/keys/{id}"),
            Some(&api.admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["prefix"].as_str().unwrap().to_owned()
}

/// The value of the one-time secret field on a page.
fn secret_on(body: &str) -> String {
    let at = body
        .find(r#"id="secret-value""#)
        .expect("the page shows the new secret");
    let rest = &body[at..];
    let v = rest.find("value=\"").unwrap() + "value=\"".len();
    rest[v..v + rest[v..].find('"').unwrap()].to_owned()
}

async fn whoami(api: &TestApp, secret: &str) -> (StatusCode, Value) {
    api.call(Method::GET, "/v1/whoami", Some(secret), None)
        .await
}

async fn key_count(api: &TestApp, tenant: &str) -> usize {
    let (status, body) = api
        .call(Method::GET, "/v1/keys?limit=500", Some(&api.admin), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["tenant"] == tenant)
        .count()
}

async fn an_operator_creates_revokes_and_rotates_keys_from_the_page(db: TestDb) {
    let (api, _) = start(db).await;
    let (own_id, operator) = api.key("acme", &["operator"]).await;
    let own_prefix = prefix(&api, &own_id).await;
    let mut browser = Browser::login(&api, &operator).await;
    let page = browser.get("/ui/keys").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.body.contains(&own_prefix));
    assert!(page.body.contains(r#"href="/ui/keys" aria-current="page""#));
    let csrf = page.csrf();

    // Create: the secret is on this answer, and it works.
    let page = browser
        .post(
            "/ui/keys",
            &[
                ("csrf", &csrf),
                ("name", "deploy bot"),
                ("scopes", "reader"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::CREATED, "{}", page.body);
    assert!(page.body.contains("shown") && page.body.contains("this once"));
    let secret = secret_on(&page.body);
    let (status, me) = whoami(&api, &secret).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(
        (me["tenant"].as_str(), me["name"].as_str()),
        (Some("acme"), Some("deploy bot"))
    );
    assert_eq!(me["scopes"], serde_json::json!(["reader"]));
    let new_id = me["key_id"].as_str().unwrap().to_owned();
    // Shown once: the list does not carry it again.
    assert!(!browser.get("/ui/keys").await.body.contains(&secret));

    // Wrong inputs: the API's own checks, shown on the page; nothing is created.
    let before = key_count(&api, "acme").await;
    let cases: &[(Fields<'_>, StatusCode, &str)] = &[
        (&[], StatusCode::UNPROCESSABLE_ENTITY, "at least one scope"),
        (
            &[("scopes", "admin")],
            StatusCode::FORBIDDEN,
            "wider than its own",
        ),
        (
            &[("scopes", "root")],
            StatusCode::UNPROCESSABLE_ENTITY,
            "scopes",
        ),
        (
            &[("scopes", "reader"), ("tenant", "beta")],
            StatusCode::FORBIDDEN,
            "own tenant",
        ),
        (
            &[("scopes", "reader"), ("owner_email", "not an address")],
            StatusCode::UNPROCESSABLE_ENTITY,
            "owner_email",
        ),
        (
            &[("scopes", "reader"), ("expires_at", "2000-01-01T00:00:00Z")],
            StatusCode::UNPROCESSABLE_ENTITY,
            "in the future",
        ),
        (
            &[("scopes", "reader"), ("expires_at", "tomorrow")],
            StatusCode::UNPROCESSABLE_ENTITY,
            "expires_at",
        ),
    ];
    for (fields, status, says) in cases {
        let mut form = vec![("csrf", csrf.as_str())];
        form.extend_from_slice(fields);
        let page = browser.post("/ui/keys", &form).await;
        assert_eq!(page.status, *status, "{fields:?}: {}", page.body);
        assert!(page.body.contains("id=\"key-error\""), "{fields:?}");
        assert!(
            page.body.contains(says),
            "{fields:?} should say {says:?}: {}",
            page.body
        );
        assert!(!page.body.contains("secret-value"), "{fields:?}");
    }
    // Without the CSRF token, or from another origin: refused before anything happens.
    let page = browser.post("/ui/keys", &[("scopes", "reader")]).await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    let page = browser
        .post_from(
            "/ui/keys",
            &[("csrf", &csrf), ("scopes", "reader")],
            Some("https://evil.example"),
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    assert_eq!(key_count(&api, "acme").await, before);

    // Rotate: a new secret, once; the rotation is listed with its grace end.
    let (rotated_id, rotated) = api.key("acme", &["reader"]).await;
    let rotated_prefix = prefix(&api, &rotated_id).await;
    let page = browser
        .post(
            &format!("/ui/keys/{rotated_id}/rotate"),
            &[
                ("csrf", &csrf),
                ("grace_period", "2h"),
                ("reason", "yearly"),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::CREATED, "{}", page.body);
    let successor = secret_on(&page.body);
    assert_eq!(whoami(&api, &successor).await.0, StatusCode::OK);
    assert_eq!(
        whoami(&api, &rotated).await.0,
        StatusCode::OK,
        "the old key works through the grace"
    );
    let at = page
        .body
        .find("The rotation runs as")
        .expect("the rotation's run");
    let at = at + page.body[at..].find("/ui/runs/").unwrap() + "/ui/runs/".len();
    let run_id: uuid::Uuid = page.body[at..at + 36].parse().unwrap();
    crate::support::wait_for_run(&api.db().store, run_id, "grace", |r| r.state == "grace").await;
    let page = browser.get("/ui/keys").await;
    let at = page
        .body
        .find(r#"id="rotations""#)
        .expect("the rotations table");
    let rotations = &page.body[at..];
    assert!(rotations.contains(&run_id.to_string()[..13]), "{rotations}");
    assert!(rotations.contains(&rotated_prefix));
    assert!(
        rotations.contains("in 2 h 0 min") || rotations.contains("in 1 h 59 min"),
        "{rotations}"
    );
    // Wrong rotations.
    for (id, fields, status, says) in [
        (
            rotated_id.as_str(),
            vec![("grace_period", "soon")],
            StatusCode::UNPROCESSABLE_ENTITY,
            "grace_period",
        ),
        (
            rotated_id.as_str(),
            vec![],
            StatusCode::CONFLICT,
            "already being rotated",
        ),
        ("not-a-key", vec![], StatusCode::NOT_FOUND, "not found"),
    ] {
        let mut form = vec![("csrf", csrf.as_str())];
        form.extend(fields.iter().copied());
        let page = browser.post(&format!("/ui/keys/{id}/rotate"), &form).await;
        assert_eq!(page.status, status, "{id} {fields:?}: {}", page.body);
        assert!(page.body.contains(says), "{says}: {}", page.body);
    }

    // Revoke: the key stops working now.
    let page = browser
        .post(&format!("/ui/keys/{new_id}/revoke"), &[("csrf", &csrf)])
        .await;
    assert_eq!(
        (page.status, page.location()),
        (StatusCode::SEE_OTHER, "/ui/keys")
    );
    assert_eq!(whoami(&api, &secret).await.0, StatusCode::UNAUTHORIZED);
    let page = browser
        .post(&format!("/ui/keys/{new_id}/explode"), &[("csrf", &csrf)])
        .await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    // The audit says who did it.
    let (_, audit) = api
        .call(Method::GET, "/v1/audit", Some(&api.admin), None)
        .await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"] == format!("key:{own_id}"))
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in ["key.created", "key.rotated", "key.revoked"] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    api.stop().await;
}

async fn keys_are_for_operators_of_their_own_tenant_only(db: TestDb) {
    let (api, _) = start(db).await;
    let (acme_id, _) = api.key("acme", &["operator"]).await;
    let acme_prefix = prefix(&api, &acme_id).await;
    let (_, reader) = api.key("beta", &["reader"]).await;
    let (_, beta) = api.key("beta", &["operator"]).await;
    let (admin_id, _) = api.key("beta", &["admin"]).await;
    let admin_prefix = prefix(&api, &admin_id).await;

    // A reader: no Keys entry, the page and its forms refused.
    let mut as_reader = Browser::login(&api, &reader).await;
    let home = as_reader.get("/ui/").await;
    assert!(!home.body.contains(r#"href="/ui/keys""#));
    let csrf = home.csrf();
    assert_eq!(
        as_reader.get("/ui/keys").await.status,
        StatusCode::FORBIDDEN
    );
    for path in [
        "/ui/keys".to_owned(),
        format!("/ui/keys/{acme_id}/revoke"),
        format!("/ui/keys/{acme_id}/rotate"),
    ] {
        let page = as_reader
            .post(&path, &[("csrf", &csrf), ("scopes", "reader")])
            .await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{path}");
    }

    // Beta's operator sees beta's keys only, and cannot touch acme's.
    let mut as_beta = Browser::login(&api, &beta).await;
    let page = as_beta.get("/ui/keys").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains(&acme_prefix) && !page.body.contains("acme"));
    // A wider key is listed but offered neither revoke nor rotate.
    assert!(page.body.contains(&admin_prefix));
    assert!(!page.body.contains(&format!("/ui/keys/{admin_id}/revoke")));
    let csrf = page.csrf();
    for action in ["revoke", "rotate"] {
        let page = as_beta
            .post(&format!("/ui/keys/{acme_id}/{action}"), &[("csrf", &csrf)])
            .await;
        assert_eq!(page.status, StatusCode::NOT_FOUND, "{action}");
        let page = as_beta
            .post(&format!("/ui/keys/{admin_id}/{action}"), &[("csrf", &csrf)])
            .await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{action} a wider key");
    }
    let (status, body) = api
        .call(
            Method::GET,
            &format!("/v1/keys/{acme_id}"),
            Some(&api.admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["active"], true);
    // The admin sees every tenant's keys and must name the tenant of a new one.
    let mut as_admin = Browser::login(&api, &api.admin).await;
    let page = as_admin.get("/ui/keys").await;
    assert!(page.body.contains(&acme_prefix) && page.body.contains(&admin_prefix));
    let csrf = page.csrf();
    let page = as_admin
        .post("/ui/keys", &[("csrf", &csrf), ("scopes", "reader")])
        .await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.body.contains("tenant: required"));
    let page = as_admin
        .post(
            "/ui/keys",
            &[("csrf", &csrf), ("scopes", "reader"), ("tenant", "acme")],
        )
        .await;
    assert_eq!(page.status, StatusCode::CREATED);
    api.stop().await;
}

async fn is_paused(api: &TestApp, id: &str) -> bool {
    let (_, s) = api
        .call(
            Method::GET,
            &format!("/v1/schedules/{id}"),
            Some(&api.admin),
            None,
        )
        .await;
    s["paused"].as_bool().unwrap()
}

async fn schedules_show_both_zones_and_pause_and_resume_for_operators(db: TestDb) {
    let (api, _) = start(db).await;
    let (_, operator) = api.key("acme", &["operator"]).await;
    let (_, reader) = api.key("acme", &["reader"]).await;
    let (_, beta) = api.key("beta", &["operator"]).await;
    let (status, schedule) = api
        .call(
            Method::POST,
            "/v1/schedules",
            Some(&operator),
            Some(serde_json::json!({
                "name": "morning ledger", "cron": "0 9 * * *",
                "timezone": "America/New_York", "workflow": "ledger", "input": {}
            })),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{schedule}");
    let id = schedule["id"].as_str().unwrap().to_owned();
    let mut browser = Browser::login(&api, &operator).await;
    let page = browser.get("/ui/schedules").await;
    assert_eq!(page.status, StatusCode::OK);
    // The schedule's zone: 09:00 New York time (EST or EDT), with UTC on hover; the
    // operator's column carries <time> elements the script localises.
    let row = &page.body[page.body.find(&format!(r#"data-schedule="{id}""#)).unwrap()..];
    assert!(row.contains("09:00 E"), "{row}");
    assert!(
        row.contains(r#"<td class="yours"><time datetime="#),
        "{row}"
    );
    let csrf = page.csrf();
    let pause = format!("/ui/schedules/{id}/pause");
    assert!(page.body.contains(&format!(r#"action="{pause}""#)));

    // A reader sees no buttons and cannot forge one; nor can a POST without the token.
    let mut as_reader = Browser::login(&api, &reader).await;
    let page = as_reader.get("/ui/schedules").await;
    assert!(page.body.contains("morning ledger") && !page.body.contains(&pause));
    let reader_csrf = page.csrf();
    assert_eq!(
        as_reader
            .post(&pause, &[("csrf", &reader_csrf)])
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        browser.post(&pause, &[]).await.status,
        StatusCode::FORBIDDEN
    );
    assert!(!is_paused(&api, &id).await);
    // Another tenant neither sees it nor pauses it.
    let mut as_beta = Browser::login(&api, &beta).await;
    let page = as_beta.get("/ui/schedules").await;
    assert!(!page.body.contains("morning ledger") && !page.body.contains("acme"));
    let beta_csrf = page.csrf();
    assert_eq!(
        as_beta.post(&pause, &[("csrf", &beta_csrf)]).await.status,
        StatusCode::NOT_FOUND
    );
    assert!(!is_paused(&api, &id).await);
    // Wrong actions and ids.
    for (path, status) in [
        (format!("/ui/schedules/{id}/explode"), StatusCode::NOT_FOUND),
        (
            "/ui/schedules/not-an-id/pause".to_owned(),
            StatusCode::NOT_FOUND,
        ),
    ] {
        assert_eq!(
            browser.post(&path, &[("csrf", &csrf)]).await.status,
            status,
            "{path}"
        );
    }

    // Pause: no next fire times; resume: they are back.
    let page = browser.post(&pause, &[("csrf", &csrf)]).await;
    assert_eq!(
        (page.status, page.location()),
        (StatusCode::SEE_OTHER, "/ui/schedules")
    );
    assert!(is_paused(&api, &id).await);
    let page = browser.get("/ui/schedules").await;
    let row = &page.body[page.body.find(&format!(r#"data-schedule="{id}""#)).unwrap()..];
    assert!(
        !row[..row.find("</tr>").unwrap()].contains("09:00 E"),
        "{row}"
    );
    let resume = format!("/ui/schedules/{id}/resume");
    assert!(page.body.contains(&format!(r#"action="{resume}""#)));
    let page = browser.post(&resume, &[("csrf", &csrf)]).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert!(!is_paused(&api, &id).await);
    let (_, audit) = api
        .call(Method::GET, "/v1/audit", Some(&api.admin), None)
        .await;
    let updates = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "schedule.updated")
        .count();
    assert_eq!(updates, 2, "{audit}");
    api.stop().await;
}

async fn runs_are_found_by_idempotency_key_within_the_tenant(db: TestDb) {
    let (api, _) = start(db).await;
    let (_, acme) = api.key("acme", &["operator"]).await;
    let (_, beta) = api.key("beta", &["operator"]).await;
    let mut ids = Vec::new();
    for (key, workflow, idem) in [
        (&acme, "doorbell", "order-7"),
        (&acme, "ledger", "order-7"),
        (&acme, "doorbell", "order-8"),
        (&beta, "doorbell", "order-7"),
    ] {
        let (status, run) = api
            .raw(
                Method::POST,
                &format!("/v1/workflows/{workflow}/runs"),
                key,
                Some("application/json"),
                b"{}".to_vec(),
                &[("idempotency-key", idem)],
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{run}");
        ids.push(run["id"].as_str().unwrap().to_owned());
    }
    let mut browser = Browser::login(&api, &acme).await;
    let page = browser.get("/ui/runs?q=order-7").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let rows = |body: &str| body.matches("<tr data-run=").count();
    assert_eq!(
        rows(&page.body),
        2,
        "both of acme's workflows' runs, not beta's"
    );
    assert!(page.body.contains(&ids[0]) && page.body.contains(&ids[1]));
    assert!(!page.body.contains(&ids[2]) && !page.body.contains(&ids[3]));
    assert!(
        !page.body.contains(r#"action="/ui/runs/bulk""#),
        "no bulk action on a search"
    );
    // A run id still opens the run; an unknown key, markup or an overlong key find nothing.
    let page = browser.get(&format!("/ui/runs?q={}", ids[2])).await;
    assert_eq!(
        (page.status, page.location()),
        (
            StatusCode::SEE_OTHER,
            format!("/ui/runs/{}", ids[2]).as_str()
        )
    );
    let page = browser.get("/ui/runs?q=order-9").await;
    assert_eq!((page.status, rows(&page.body)), (StatusCode::OK, 0));
    let page = browser.get("/ui/runs?q=%3Cscript%3Ex%3C%2Fscript%3E").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains("<script>x") && page.body.contains("&lt;script&gt;x"));
    let long = "k".repeat(256);
    let page = browser.get(&format!("/ui/runs?q={long}")).await;
    assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.body.contains("at most 255"));
    // Beta finds its own; the admin finds all three, or one tenant's.
    let mut as_beta = Browser::login(&api, &beta).await;
    let page = as_beta.get("/ui/runs?q=order-7").await;
    assert_eq!(rows(&page.body), 1);
    assert!(page.body.contains(&ids[3]));
    let mut admin = Browser::login(&api, &api.admin).await;
    assert_eq!(rows(&admin.get("/ui/runs?q=order-7").await.body), 3);
    assert_eq!(
        rows(&admin.get("/ui/runs?q=order-7&tenant=beta").await.body),
        1
    );
    api.stop().await;
}

// A workflow with a sensitive field: the card number is in its input, its state data
// and its output, and must show in none of its views.

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum Charge {
    Charge { card: Value },
}

impl waymark_engine::WorkflowState for Charge {
    fn name(&self) -> &'static str {
        "charge"
    }
}

struct Payment;

impl waymark_engine::Workflow for Payment {
    const NAME: &'static str = "payment";
    type Input = Value;
    type State = Charge;
    type Output = Value;
    type Signal = waymark_engine::NoSignal;

    fn definition() -> waymark_engine::Definition {
        waymark_engine::Definition::new([waymark_engine::StateDef::new("charge").completes()])
            .sensitive(["/card/number", "/cards/*/cvc"])
    }

    fn initial_state(input: &Value) -> Charge {
        Charge::Charge {
            card: input["card"].clone(),
        }
    }

    async fn step(
        &self,
        _: &waymark_engine::StepContext,
        input: &Value,
        _: Charge,
    ) -> Result<waymark_engine::Transition<Charge, Value>, waymark_engine::StepError> {
        Ok(waymark_engine::Transition::complete(input.clone()))
    }
}

async fn sensitive_fields_are_redacted_on_the_page_and_in_the_api(db: TestDb) {
    let api = TestApp::on(db)
        .with_workflows(|registry, _, _| {
            registry.register(Payment).unwrap();
        })
        .spawn()
        .await;
    let number = "4242424242424242";
    let input = serde_json::json!({
        "card": {"number": number, "holder": "Ada Lovelace"},
        "cards": [{"cvc": "987"}, {"cvc": "654"}],
        "amount": 1200
    });
    let (status, started) = api
        .call(
            Method::POST,
            "/v1/workflows/payment/runs",
            Some(&api.admin),
            Some(input),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let id: uuid::Uuid = started["id"].as_str().unwrap().parse().unwrap();
    crate::support::wait_for_status(&api.db().store, id, waymark_engine::RunStatus::Completed)
        .await;
    // Stored as given: a step needs the number.
    let run = api
        .engine
        .store
        .run_get(&waymark_engine::TenantScope::All, id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run.output.as_ref().unwrap()["card"]["number"], number);
    let secrets = [number, "987", "654"];
    let (_, one) = api
        .call(
            Method::GET,
            &format!("/v1/runs/{id}"),
            Some(&api.admin),
            None,
        )
        .await;
    let (_, list) = api
        .call(
            Method::GET,
            "/v1/runs?workflow=payment",
            Some(&api.admin),
            None,
        )
        .await;
    for (what, body) in [("start", &started), ("get", &one), ("list", &list)] {
        let text = body.to_string();
        for secret in secrets {
            assert!(!text.contains(secret), "{what} shows {secret}: {text}");
        }
        assert!(
            text.contains("[redacted]") && text.contains("Ada Lovelace"),
            "{what}: {text}"
        );
    }
    assert_eq!(one["input"]["card"]["number"], "[redacted]");
    assert_eq!(one["state_data"]["card"]["number"], "[redacted]");
    assert_eq!(one["output"]["cards"][1]["cvc"], "[redacted]");
    assert_eq!(one["output"]["amount"], 1200);
    let mut browser = Browser::login(&api, &api.admin).await;
    let page = browser.get(&format!("/ui/runs/{id}")).await;
    assert_eq!(page.status, StatusCode::OK);
    for secret in secrets {
        assert!(!page.body.contains(secret), "the run page shows {secret}");
    }
    assert_eq!(
        page.body.matches("[redacted]").count(),
        3 + 3 + 1,
        "input 3, output 3, state 1"
    );
    assert!(page.body.contains("Ada Lovelace"));
    api.stop().await;
}

#[test]
fn a_sensitive_field_must_be_a_pointer_to_a_field() {
    struct Bad;
    impl waymark_engine::Workflow for Bad {
        const NAME: &'static str = "bad";
        type Input = Value;
        type State = Charge;
        type Output = Value;
        type Signal = waymark_engine::NoSignal;
        fn definition() -> waymark_engine::Definition {
            waymark_engine::Definition::new([waymark_engine::StateDef::new("charge").completes()])
                .sensitive(["card/number"])
        }
        fn initial_state(input: &Value) -> Charge {
            Charge::Charge {
                card: input.clone(),
            }
        }
        async fn step(
            &self,
            _: &waymark_engine::StepContext,
            _: &Value,
            _: Charge,
        ) -> Result<waymark_engine::Transition<Charge, Value>, waymark_engine::StepError> {
            Ok(waymark_engine::Transition::complete(Value::Null))
        }
    }
    let mut registry = waymark_engine::workflow::Registry::new();
    let error = registry.register(Bad).unwrap_err().to_string();
    assert!(error.contains("not a JSON pointer"), "{error}");
}

on_both_backends!(
    an_operator_creates_revokes_and_rotates_keys_from_the_page,
    keys_are_for_operators_of_their_own_tenant_only,
    schedules_show_both_zones_and_pause_and_resume_for_operators,
    runs_are_found_by_idempotency_key_within_the_tenant,
    sensitive_fields_are_redacted_on_the_page_and_in_the_api,
);
