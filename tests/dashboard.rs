//! The operator dashboard's server side through real HTTP, on both backends: redirects,
//! login and its limit, cookies, sessions ended by logout and by revoking the key, CSRF
//! and `Origin` checks with a table of wrong inputs, scopes (a reader sees no actions
//! and cannot forge one), tenant isolation, escaping of run data, the run page (why it
//! waits, the diagram with the path taken, signal validation) and its actions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;
use waymark_engine::{
    Definition, NoSignal, OnFailure, RetryPolicy, RunStatus, StateDef, StepContext, StepError,
    TenantScope, Transition, Workflow, WorkflowState,
};

use crate::support::app::TestApp;
use crate::support::{manual_clock, on_both_backends, wait_for_run, wait_for_status, TestDb};

/// A browser without JavaScript: follows no redirects, keeps the session cookie.
pub(crate) struct Browser {
    base: String,
    http: reqwest::Client,
    pub(crate) cookie: Option<String>,
}

pub(crate) struct Page {
    pub(crate) status: StatusCode,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) body: String,
}

impl Page {
    pub(crate) fn location(&self) -> &str {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// The CSRF token the page's forms carry.
    pub(crate) fn csrf(&self) -> String {
        let at = self
            .body
            .find(r#"name="csrf" value=""#)
            .expect("a form with a CSRF token");
        let rest = &self.body[at + r#"name="csrf" value=""#.len()..];
        rest[..rest.find('"').unwrap()].to_owned()
    }
}

impl Browser {
    pub(crate) fn new(api: &TestApp) -> Browser {
        Browser {
            base: api.base.clone(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookie: None,
        }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Page {
        let request = match &self.cookie {
            Some(c) => request.header("cookie", c),
            None => request,
        };
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        if let Some(set) = headers.get("set-cookie").and_then(|v| v.to_str().ok()) {
            let pair = set.split(';').next().unwrap().to_owned();
            self.cookie = (!pair.ends_with('=')).then_some(pair);
        }
        let body = response.text().await.unwrap();
        Page {
            status,
            headers,
            body,
        }
    }

    pub(crate) async fn get(&mut self, path: &str) -> Page {
        let request = self.http.get(format!("{}{path}", self.base));
        self.send(request).await
    }

    /// A form POST from a page of this server (`Origin` set as a browser sets it).
    pub(crate) async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let origin = self.base.clone();
        self.post_from(path, form, Some(&origin)).await
    }

    pub(crate) async fn post_from(
        &mut self,
        path: &str,
        form: &[(&str, &str)],
        origin: Option<&str>,
    ) -> Page {
        let body: String = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        self.send(request).await
    }

    pub(crate) async fn login(api: &TestApp, key: &str) -> Browser {
        let mut browser = Browser::new(api);
        let page = browser.post("/ui/login", &[("key", key)]).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
        assert!(browser.cookie.is_some(), "a session cookie");
        browser
    }
}

// ---------------------------------------------------------------------------------
// Two small workflows for the operator's actions: one held after failing, one whose
// compensation fails while a switch is on.

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum Step {
    One,
    Two,
}

impl WorkflowState for Step {
    fn name(&self) -> &'static str {
        match self {
            Step::One => "one",
            Step::Two => "two",
        }
    }
}

fn one_try() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::default()
    }
}

/// Fails while `failing` is on, and is then held for an operator.
struct Ledger {
    failing: Arc<AtomicBool>,
}

impl Workflow for Ledger {
    const NAME: &'static str = "ledger";
    type Input = Value;
    type State = Step;
    type Output = String;
    type Signal = NoSignal;

    fn definition() -> Definition {
        Definition::new([StateDef::new("one").completes()])
            .on_failure(OnFailure::Hold)
            .with_retry(one_try())
    }

    fn initial_state(_: &Value) -> Step {
        Step::One
    }

    async fn step(
        &self,
        _: &StepContext,
        _: &Value,
        _: Step,
    ) -> Result<Transition<Step, String>, StepError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StepError::fatal("the ledger is locked"));
        }
        Ok(Transition::complete("posted".into()))
    }
}

/// `one` (compensable) → `two`, which fails; undoing `one` fails too, so the run stops
/// in `compensation_failed`.
struct Booking;

impl Workflow for Booking {
    const NAME: &'static str = "booking";
    type Input = Value;
    type State = Step;
    type Output = String;
    type Signal = NoSignal;

    fn definition() -> Definition {
        Definition::new([
            StateDef::new("one").next("two").compensates(),
            StateDef::new("two").completes(),
        ])
        .with_retry(one_try())
    }

    fn initial_state(_: &Value) -> Step {
        Step::One
    }

    async fn step(
        &self,
        _: &StepContext,
        _: &Value,
        state: Step,
    ) -> Result<Transition<Step, String>, StepError> {
        match state {
            Step::One => Ok(Transition::next(Step::Two)),
            Step::Two => Err(StepError::fatal("the bank said no")),
        }
    }

    async fn compensate(&self, _: &StepContext, _: &Value, _: Step) -> Result<(), StepError> {
        Err(StepError::fatal("cannot release the room"))
    }
}

pub(crate) async fn start(db: TestDb) -> (TestApp, Arc<AtomicBool>) {
    let failing = Arc::new(AtomicBool::new(true));
    let switch = failing.clone();
    let api = TestApp::on(db)
        .with_workflows(move |registry, store, sealer| {
            registry.register(Ledger { failing: switch }).unwrap();
            registry.register(Booking).unwrap();
            // Key rotation, with mail to an outbox: its mails are not what is tested here.
            let mailer = waymark_services::Mailer::from_config(
                &waymark_services::MailConfig {
                    smtp_url: None,
                    smtp: waymark_services::SmtpOptions {
                        timeout: std::time::Duration::from_secs(10),
                        pool_size: 1,
                        ca_file: None,
                    },
                    outbox_dir: std::env::temp_dir()
                        .join(format!("waymark-dashboard-outbox-{}", Uuid::now_v7())),
                    default_from: "Waymark <keys@waymark.example>".into(),
                },
                store.clone(),
            )
            .expect("mailer");
            registry
                .register(waymark_workflows::key_rotation::KeyRotation {
                    store: store.clone(),
                    mailer,
                    sealer: sealer.clone(),
                    settings: Default::default(),
                })
                .unwrap();
        })
        .spawn()
        .await;
    (api, failing)
}

pub(crate) fn id_of(run: &Value) -> Uuid {
    run["id"].as_str().unwrap().parse().unwrap()
}

async fn status_of(api: &TestApp, id: Uuid) -> RunStatus {
    api.engine
        .store
        .run_get(&TenantScope::All, id)
        .await
        .unwrap()
        .unwrap()
        .status
}

// ---------------------------------------------------------------------------------

async fn pages_redirect_to_the_login_without_a_session(db: TestDb) {
    let (api, _) = start(db).await;
    let mut browser = Browser::new(&api);
    let root = browser.get("/").await;
    assert_eq!(
        (root.status, root.location()),
        (StatusCode::SEE_OTHER, "/ui/")
    );
    for path in [
        "/ui/",
        "/ui/runs?status=failed",
        "/ui/workflows",
        "/ui/audit",
    ] {
        let page = browser.get(path).await;
        assert_eq!(page.status, StatusCode::SEE_OTHER, "{path}");
        let next: String = url::form_urlencoded::byte_serialize(path.as_bytes()).collect();
        assert_eq!(page.location(), format!("/ui/login?next={next}"), "{path}");
    }
    let login = browser.get("/ui/login").await;
    assert_eq!(login.status, StatusCode::OK);
    assert!(login.body.contains(r#"name="key""#) && login.body.contains(r#"<label for="key">"#));
    assert_eq!(login.header("cache-control"), "no-store");
    assert!(login
        .header("content-security-policy")
        .contains("script-src 'self'"));
    assert_eq!(login.header("x-frame-options"), "DENY");
    let css = browser.get("/ui/assets/style.css").await;
    assert_eq!(css.status, StatusCode::OK);
    assert!(css.header("content-type").starts_with("text/css"));
    assert!(css.header("cache-control").contains("max-age"));
    api.stop().await;
}

async fn login_sets_a_strict_cookie_and_logout_ends_the_session(db: TestDb) {
    let (api, _) = start(db).await;
    let mut browser = Browser::new(&api);
    let page = browser
        .post(
            "/ui/login",
            &[
                ("key", api.admin.as_str()),
                ("next", "/ui/runs?status=failed"),
            ],
        )
        .await;
    assert_eq!(
        (page.status, page.location()),
        (StatusCode::SEE_OTHER, "/ui/runs?status=failed")
    );
    let cookie = page.header("set-cookie").to_owned();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age="] {
        assert!(cookie.contains(part), "{part} missing from {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain http: no Secure");
    let stored = api
        .db()
        .texts("SELECT token_hash FROM waymark_ui_sessions")
        .await;
    let token = browser.cookie.clone().unwrap();
    let token = token.split_once('=').unwrap().1;
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0], token, "only a hash of the token is stored");

    // Only the dashboard's own pages may be the next page.
    for next in ["https://evil.example/", "//evil.example/ui/", "/v1/keys"] {
        let mut other = Browser::new(&api);
        let page = other
            .post("/ui/login", &[("key", api.admin.as_str()), ("next", next)])
            .await;
        assert_eq!(page.location(), "/ui/", "{next}");
    }

    let overview = browser.get("/ui/").await;
    assert_eq!(overview.status, StatusCode::OK);
    let csrf = overview.csrf();
    let old_cookie = browser.cookie.clone();
    let out = browser.post("/ui/logout", &[("csrf", &csrf)]).await;
    assert_eq!(
        (out.status, out.location()),
        (StatusCode::SEE_OTHER, "/ui/login")
    );
    assert!(out.header("set-cookie").contains("Max-Age=0"));
    browser.cookie = old_cookie;
    assert_eq!(browser.get("/ui/").await.status, StatusCode::SEE_OTHER);
    api.stop().await;
}

async fn wrong_keys_are_refused_alike_and_then_rate_limited(db: TestDb) {
    let (manual, _) = manual_clock();
    let api = TestApp::on(db)
        .with_api(waymark_api::ApiConfig {
            ui: waymark_api::ui::UiConfig {
                login_failures_per_minute: 6,
                ..Default::default()
            },
            ..Default::default()
        })
        .with_clock(&manual)
        .spawn()
        .await;
    let (revoked_id, revoked) = api.key("acme", &["operator"]).await;
    let (status, _) = api
        .call(
            Method::DELETE,
            &format!("/v1/keys/{revoked_id}"),
            Some(&api.admin),
            None,
        )
        .await;
    assert!(status.is_success(), "{status}");
    let (prefix, _) = api.admin.rsplit_once('_').unwrap();
    let wrong_secret = format!("{prefix}_{}", "A".repeat(43));
    let unknown = "wmk_0123456789ab_".to_owned() + &"B".repeat(43);
    let cases: [(&str, &str); 6] = [
        ("empty", ""),
        ("garbage", "let me in"),
        ("unknown prefix", &unknown),
        ("right prefix, wrong secret", &wrong_secret),
        ("revoked key", &revoked),
        ("key with spaces inside", "wmk_ abc"),
    ];
    let mut browser = Browser::new(&api);
    let mut messages = Vec::new();
    for (what, key) in cases {
        let page = browser.post("/ui/login", &[("key", key)]).await;
        assert_eq!(page.status, StatusCode::UNAUTHORIZED, "{what}");
        assert!(browser.cookie.is_none(), "{what}: no cookie");
        let at = page.body.find(r#"role="alert""#).expect("an error message");
        messages.push(page.body[at..at + 80].to_owned());
    }
    messages.dedup();
    assert_eq!(messages.len(), 1, "one message for every wrong key");
    // Six failures this minute: even the right key waits.
    let page = browser
        .post("/ui/login", &[("key", api.admin.as_str())])
        .await;
    assert_eq!(page.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(page.header("retry-after"), "60");
    assert!(browser.cookie.is_none());
    // The next minute, it may try again.
    manual.advance(std::time::Duration::from_secs(61));
    let page = browser
        .post("/ui/login", &[("key", api.admin.as_str())])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    api.stop().await;
}

async fn state_changing_requests_need_the_csrf_token_and_this_origin(db: TestDb) {
    let (api, _) = start(db).await;
    let run = api.start_run(&api.admin, "doorbell", json!({})).await;
    let id = id_of(&run);
    wait_for_status(&api.db().store, id, RunStatus::Waiting).await;
    let mut browser = Browser::login(&api, &api.admin).await;
    let page = browser.get(&format!("/ui/runs/{id}")).await;
    let csrf = page.csrf();
    let mut other = Browser::login(&api, &api.admin).await;
    let other_csrf = other.get("/ui/").await.csrf();
    assert_ne!(csrf, other_csrf, "each session has its own token");
    let path = format!("/ui/runs/{id}/cancel");
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Option<&'a str>);
    let cases: [Case<'_>; 6] = [
        ("no token", vec![("reason", "x")], Some(&api.base)),
        (
            "empty token",
            vec![("csrf", ""), ("reason", "x")],
            Some(&api.base),
        ),
        (
            "wrong token",
            vec![("csrf", "forged"), ("reason", "x")],
            Some(&api.base),
        ),
        (
            "another session's token",
            vec![("csrf", &other_csrf)],
            Some(&api.base),
        ),
        ("no Origin", vec![("csrf", &csrf)], None),
        (
            "another Origin",
            vec![("csrf", &csrf)],
            Some("http://evil.example"),
        ),
    ];
    for (what, form, origin) in cases {
        let page = browser.post_from(&path, &form, origin).await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{what}");
        assert_eq!(
            status_of(&api, id).await,
            RunStatus::Waiting,
            "{what}: unchanged"
        );
    }
    // A login from another origin is refused too.
    let page = Browser::new(&api)
        .post_from(
            "/ui/login",
            &[("key", api.admin.as_str())],
            Some("http://evil.example"),
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);

    let page = browser
        .post(&path, &[("csrf", &csrf), ("reason", "customer left")])
        .await;
    assert_eq!(
        (page.status, page.location()),
        (StatusCode::SEE_OTHER, format!("/ui/runs/{id}").as_str())
    );
    let run = wait_for_status(&api.db().store, id, RunStatus::Cancelled).await;
    let ending = run.ending.unwrap();
    assert_eq!(ending.reason, "customer left");
    assert!(ending.actor.starts_with("key:"), "{}", ending.actor);
    api.stop().await;
}

async fn a_reader_sees_no_actions_and_cannot_forge_one(db: TestDb) {
    let (api, _) = start(db).await;
    let (_, reader) = api.key("acme", &["reader"]).await;
    let (_, operator) = api.key("acme", &["operator"]).await;
    let run = api.start_run(&operator, "doorbell", json!({})).await;
    let id = id_of(&run);
    wait_for_status(&api.db().store, id, RunStatus::Waiting).await;

    let mut as_operator = Browser::login(&api, &operator).await;
    let page = as_operator.get(&format!("/ui/runs/{id}")).await;
    assert!(page
        .body
        .contains(&format!(r#"action="/ui/runs/{id}/cancel""#)));
    assert!(page.body.contains(r#"id="signal-payload""#));

    let mut as_reader = Browser::login(&api, &reader).await;
    let page = as_reader.get(&format!("/ui/runs/{id}")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(!page.body.contains("/cancel\""), "no cancel for a reader");
    assert!(!page.body.contains("signal-payload"), "no signal form");
    assert!(!page.body.contains("id=\"actions\""));
    let csrf = page.csrf(); // the logout form's
    for action in [
        "cancel",
        "terminate",
        "retry",
        "skip-compensation",
        "signal",
    ] {
        let page = as_reader
            .post(
                &format!("/ui/runs/{id}/{action}"),
                &[
                    ("csrf", &csrf),
                    ("name", "ring"),
                    ("payload", r#"{"by":"x"}"#),
                ],
            )
            .await;
        assert_eq!(page.status, StatusCode::FORBIDDEN, "{action}");
    }
    assert_eq!(status_of(&api, id).await, RunStatus::Waiting);
    api.stop().await;
}

async fn revoking_the_key_ends_its_session(db: TestDb) {
    let (api, _) = start(db).await;
    let (id, operator) = api.key("acme", &["operator"]).await;
    let mut browser = Browser::login(&api, &operator).await;
    assert_eq!(browser.get("/ui/runs").await.status, StatusCode::OK);
    let (status, _) = api
        .call(
            Method::DELETE,
            &format!("/v1/keys/{id}"),
            Some(&api.admin),
            None,
        )
        .await;
    assert!(status.is_success());
    let page = browser.get("/ui/runs").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    assert!(page.location().starts_with("/ui/login"));
    api.stop().await;
}

async fn rotating_the_key_ends_its_sessions(db: TestDb) {
    let (api, _) = start(db).await;
    let (id, operator) = api.key("acme", &["operator"]).await;
    let mut browser = Browser::login(&api, &operator).await;
    let mut bystander = Browser::login(&api, &api.admin).await;
    assert_eq!(browser.get("/ui/runs").await.status, StatusCode::OK);
    let (status, body) = api
        .call(
            Method::POST,
            &format!("/v1/keys/{id}/rotate"),
            Some(&api.admin),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let page = browser.get("/ui/runs").await;
    assert_eq!(
        page.status,
        StatusCode::SEE_OTHER,
        "the old key's session ended"
    );
    // The old key still works for API clients through its grace period; the new key
    // logs in; other keys' sessions are untouched.
    let (status, _) = api
        .call(Method::GET, "/v1/runs", Some(&operator), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    Browser::login(&api, body["secret"].as_str().unwrap()).await;
    assert_eq!(bystander.get("/ui/runs").await.status, StatusCode::OK);
    api.stop().await;
}

async fn an_operator_sees_nothing_of_another_tenant(db: TestDb) {
    let (api, _) = start(db).await;
    let (_, acme) = api.key("acme", &["operator"]).await;
    let (_, beta) = api.key("beta", &["operator"]).await;
    let theirs = id_of(
        &api.start_run(&acme, "doorbell", json!({"who": "acme"}))
            .await,
    );
    let ours = id_of(
        &api.start_run(&beta, "doorbell", json!({"who": "beta"}))
            .await,
    );
    wait_for_status(&api.db().store, theirs, RunStatus::Waiting).await;
    let mut browser = Browser::login(&api, &beta).await;
    for path in [
        "/ui/runs",
        "/ui/runs?tenant=acme",
        "/ui/",
        "/ui/audit",
        "/ui/runs?status=waiting",
    ] {
        let page = browser.get(path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        assert!(
            !page.body.contains(&theirs.to_string()),
            "{path} shows acme's run"
        );
        assert!(!page.body.contains("acme"), "{path} names acme");
    }
    assert!(browser
        .get("/ui/runs")
        .await
        .body
        .contains(&ours.to_string()));
    let page = browser.get(&format!("/ui/runs/{theirs}")).await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    let csrf = browser.get("/ui/").await.csrf();
    let page = browser
        .post(&format!("/ui/runs/{theirs}/cancel"), &[("csrf", &csrf)])
        .await;
    assert_eq!(page.status, StatusCode::NOT_FOUND);
    assert_eq!(status_of(&api, theirs).await, RunStatus::Waiting);
    // The backlog counts every tenant: an admin's only.
    assert!(!browser.get("/ui/").await.body.contains("Backlog"));
    let mut admin = Browser::login(&api, &api.admin).await;
    let page = admin.get("/ui/").await;
    assert!(page.body.contains("Backlog"));
    let page = admin.get("/ui/runs?tenant=acme").await;
    assert!(page.body.contains(&theirs.to_string()) && !page.body.contains(&ours.to_string()));
    api.stop().await;
}

async fn run_data_is_shown_as_text_never_as_markup(db: TestDb) {
    let (api, _) = start(db).await;
    let evil = "<script>alert('x')</script>";
    let run = api
        .start_run(
            &api.admin,
            "doorbell",
            json!({ "name": evil, "\"><img src=x>": 1 }),
        )
        .await;
    let id = id_of(&run);
    wait_for_status(&api.db().store, id, RunStatus::Waiting).await;
    let mut browser = Browser::login(&api, &api.admin).await;
    let page = browser.get(&format!("/ui/runs/{id}")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        !page.body.contains("<script>alert"),
        "raw script in the page"
    );
    assert!(!page.body.contains("<img src=x>"));
    assert!(page.body.contains("&lt;script&gt;alert"));
    // A malformed id is a 404 page, like an unknown one.
    for path in [
        "/ui/runs/not-a-uuid",
        &format!("/ui/runs/{}", Uuid::now_v7()),
    ] {
        assert_eq!(
            browser.get(path).await.status,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    api.stop().await;
}

async fn the_run_page_says_why_it_waits_draws_its_path_and_checks_signals(db: TestDb) {
    let (api, _) = start(db).await;
    let sleeping = id_of(
        &api.start_run(&api.admin, "sleeper", json!({"days": 2}))
            .await,
    );
    let waiting = id_of(&api.start_run(&api.admin, "doorbell", json!({})).await);
    wait_for_status(&api.db().store, sleeping, RunStatus::Sleeping).await;
    wait_for_status(&api.db().store, waiting, RunStatus::Waiting).await;
    let mut browser = Browser::login(&api, &api.admin).await;

    let page = browser.get(&format!("/ui/runs/{sleeping}")).await;
    assert!(page.body.contains(r#"id="why""#), "{}", page.body);
    assert!(page.body.contains("Sleeping until ") && page.body.contains("(in 1 d)"));
    let list = browser.get("/ui/runs?workflow=sleeper").await;
    assert!(
        list.body.contains("Sleeping until"),
        "the list's short line"
    );

    let page = browser.get(&format!("/ui/runs/{waiting}")).await;
    assert!(page.body.contains("Waiting for signal `ring` since"));
    assert_eq!(
        page.body.matches(r#"class="current""#).count(),
        1,
        "current state marked"
    );
    assert!(page
        .body
        .contains(r#"<g class="current"><title>current state</title><rect"#));
    assert!(page.body.contains(r#"class="timeline""#));

    // A payload the signal's type refuses: the error next to the field, the text kept.
    let csrf = page.csrf();
    let path = format!("/ui/runs/{waiting}/signal");
    for (payload, expected) in [
        (r#"{"by": 42}"#, "expected a string"),
        ("{not json", "not JSON"),
    ] {
        let page = browser
            .post(
                &path,
                &[("csrf", &csrf), ("name", "ring"), ("payload", payload)],
            )
            .await;
        assert_eq!(page.status, StatusCode::UNPROCESSABLE_ENTITY, "{payload}");
        let at = page
            .body
            .find(r#"id="signal-error""#)
            .expect("an error by the field");
        assert!(
            page.body[at..].contains(expected),
            "{payload}: {}",
            &page.body[at..at + 300]
        );
        let kept = payload
            .replace('&', "&amp;")
            .replace('"', "&quot;")
            .replace('<', "&lt;");
        assert!(page.body.contains(&kept), "the typed payload is kept");
    }
    let page = browser
        .post(
            &path,
            &[
                ("csrf", &csrf),
                ("name", "ring"),
                ("payload", r#"{"by": "Ada"}"#),
            ],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let done = wait_for_status(&api.db().store, waiting, RunStatus::Completed).await;
    assert_eq!(done.output, Some(json!("opened for Ada")));
    let page = browser.get(&format!("/ui/runs/{waiting}")).await;
    assert!(page.body.contains(r#"class="taken""#), "the path taken");
    assert!(
        page.body.contains("signal ring ×1"),
        "edges labelled with counts"
    );
    assert!(
        !page.body.contains(r#"id="actions""#),
        "no actions on a completed run"
    );
    api.stop().await;
}

async fn an_operator_retries_a_held_run_and_skips_a_failed_compensation(db: TestDb) {
    let (api, failing) = start(db).await;
    let held = id_of(&api.start_run(&api.admin, "ledger", json!({})).await);
    let stuck = id_of(&api.start_run(&api.admin, "booking", json!({})).await);
    wait_for_run(&api.db().store, held, "held", |r| r.held).await;
    wait_for_status(&api.db().store, stuck, RunStatus::CompensationFailed).await;
    let mut browser = Browser::login(&api, &api.admin).await;

    let page = browser.get(&format!("/ui/runs/{held}")).await;
    assert!(page.body.contains("Held for an operator"));
    assert!(page
        .body
        .contains(&format!(r#"action="/ui/runs/{held}/retry""#)));
    assert!(!page
        .body
        .contains(&format!(r#"action="/ui/runs/{held}/skip-compensation""#)));
    failing.store(false, Ordering::SeqCst);
    let csrf = page.csrf();
    let page = browser
        .post(&format!("/ui/runs/{held}/retry"), &[("csrf", &csrf)])
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    wait_for_status(&api.db().store, held, RunStatus::Completed).await;

    let page = browser.get(&format!("/ui/runs/{stuck}")).await;
    assert!(page
        .body
        .contains("A compensation failed (cannot release the room)"));
    assert!(!page
        .body
        .contains(&format!(r#"action="/ui/runs/{stuck}/cancel""#)));
    let page = browser
        .post(
            &format!("/ui/runs/{stuck}/skip-compensation"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    let failed = wait_for_status(&api.db().store, stuck, RunStatus::Failed).await;
    assert_eq!(failed.error.unwrap().message, "the bank said no");
    // Acting where the status does not allow it: a conflict page, nothing changes.
    let page = browser
        .post(
            &format!("/ui/runs/{stuck}/skip-compensation"),
            &[("csrf", &csrf)],
        )
        .await;
    assert_eq!(page.status, StatusCode::CONFLICT);
    // Each action is in the audit log under the operator's key.
    let audit = browser.get("/ui/audit").await;
    assert!(audit.body.contains(&format!("run:{held}")));
    api.stop().await;
}

async fn the_overview_counts_each_tenants_runs_and_draws_their_activity(db: TestDb) {
    let (api, _) = start(db).await;
    let (_, acme) = api.key("acme", &["operator"]).await;
    let (_, beta) = api.key("beta", &["operator"]).await;
    let mut ours = Vec::new();
    for _ in 0..2 {
        ours.push(id_of(&api.start_run(&acme, "doorbell", json!({})).await));
    }
    let held = id_of(&api.start_run(&acme, "ledger", json!({})).await);
    let theirs = id_of(&api.start_run(&beta, "doorbell", json!({})).await);
    for id in ours.iter().chain([&theirs]) {
        wait_for_status(&api.db().store, *id, RunStatus::Waiting).await;
    }
    wait_for_run(&api.db().store, held, "held", |r| r.held).await;

    let mut browser = Browser::login(&api, &acme).await;
    let page = browser.get("/ui/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body.contains("status=waiting\">2</a>"),
        "two waiting doorbells"
    );
    assert!(
        page.body.contains("status=failed\">1</a>"),
        "one failed ledger"
    );
    assert!(
        page.body.contains("started 3 · completed 0 · failed 1"),
        "the chart's totals"
    );
    assert!(page.body.contains("100.0 %"), "every ended run failed");
    assert_eq!(page.body.matches(r#"class="chart""#).count(), 2);

    let mut other = Browser::login(&api, &beta).await;
    let page = other.get("/ui/").await;
    assert!(
        page.body.contains("status=waiting\">1</a>"),
        "beta counts its own only"
    );
    assert!(
        !page.body.contains("ledger"),
        "not even acme's workflow names"
    );
    assert!(page.body.contains("started 1 · completed 0 · failed 0"));
    assert!(page.body.contains("no runs ended"));
    api.stop().await;
}

async fn bulk_cancel_counts_first_and_stays_in_the_tenant(db: TestDb) {
    let (api, _) = start(db).await;
    let (_, acme) = api.key("acme", &["operator"]).await;
    let (_, reader) = api.key("acme", &["reader"]).await;
    let (_, beta) = api.key("beta", &["operator"]).await;
    let ours: Vec<Uuid> = vec![
        id_of(&api.start_run(&acme, "doorbell", json!({})).await),
        id_of(&api.start_run(&acme, "doorbell", json!({})).await),
    ];
    let theirs = id_of(&api.start_run(&beta, "doorbell", json!({})).await);
    for id in ours.iter().chain([&theirs]) {
        wait_for_status(&api.db().store, *id, RunStatus::Waiting).await;
    }
    let mut browser = Browser::login(&api, &acme).await;
    let list = browser.get("/ui/runs?workflow=doorbell").await;
    assert!(list.body.contains(r#"action="/ui/runs/bulk""#));
    let csrf = list.csrf();
    let form = [
        ("csrf", csrf.as_str()),
        ("workflow", "doorbell"),
        ("action", "cancel"),
    ];
    let page = browser.post("/ui/runs/bulk", &form).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page
        .body
        .contains("2 run(s) matching this filter can be cancelled"));
    for id in ours.iter().chain([&theirs]) {
        assert_eq!(status_of(&api, *id).await, RunStatus::Waiting, "a dry run");
    }
    let mut apply = form.to_vec();
    apply.push(("apply", "yes"));
    let page = browser.post("/ui/runs/bulk", &apply).await;
    assert!(page.body.contains("2 of 2 run(s) done"), "{}", page.body);
    for id in &ours {
        wait_for_status(&api.db().store, *id, RunStatus::Cancelled).await;
    }
    assert_eq!(
        status_of(&api, theirs).await,
        RunStatus::Waiting,
        "beta's is untouched"
    );
    // A reader gets no bulk form and no bulk action.
    let mut as_reader = Browser::login(&api, &reader).await;
    let list = as_reader.get("/ui/runs").await;
    assert!(!list.body.contains("/ui/runs/bulk"));
    let csrf = list.csrf();
    let page = as_reader
        .post(
            "/ui/runs/bulk",
            &[("csrf", csrf.as_str()), ("action", "cancel")],
        )
        .await;
    assert_eq!(page.status, StatusCode::FORBIDDEN);
    api.stop().await;
}

/// Reads the event stream until an event named `name`, within a deadline.
async fn next_event(stream: &mut reqwest::Response, seen: &mut String, name: &str) {
    let wanted = format!("event: {name}");
    let deadline = std::time::Duration::from_secs(30);
    tokio::time::timeout(deadline, async {
        while !seen.contains(&wanted) {
            let chunk = stream.chunk().await.unwrap().expect("the stream is open");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {name} event within {deadline:?}; saw {seen:?}"));
    // Consumed: the next wait looks for a new one.
    *seen = seen.split_once(&wanted).unwrap().1.to_owned();
}

async fn live_events_follow_the_stores_notifications_and_end_with_the_session(db: TestDb) {
    let api = TestApp::on(db)
        .with_api(waymark_api::ApiConfig {
            ui: waymark_api::ui::UiConfig {
                // No fallback tick during the test: every event comes from a notification.
                live_fallback: std::time::Duration::from_secs(3600),
                ..Default::default()
            },
            ..Default::default()
        })
        .spawn()
        .await;
    let (key_id, operator) = api.key("acme", &["operator"]).await;
    let run = id_of(&api.start_run(&operator, "doorbell", json!({})).await);
    wait_for_status(&api.db().store, run, RunStatus::Waiting).await;
    let browser = Browser::login(&api, &operator).await;
    let mut stream = browser
        .http
        .get(format!("{}/ui/events?run={run}", api.base))
        .header("cookie", browser.cookie.clone().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert_eq!(
        stream.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut seen = String::new();
    // The watched run ends after its signal: the page hears of it.
    let (status, body) = api
        .call(
            Method::POST,
            &format!("/v1/runs/{run}/signals/ring"),
            Some(&operator),
            Some(json!({"by": "Ada"})),
        )
        .await;
    assert!(status.is_success(), "{body}");
    next_event(&mut stream, &mut seen, "change").await;
    wait_for_status(&api.db().store, run, RunStatus::Completed).await;
    // A new run becomes due: another change.
    api.start_run(&operator, "doorbell", json!({})).await;
    next_event(&mut stream, &mut seen, "change").await;
    // The key is revoked: the next notification ends the stream instead.
    let (status, _) = api
        .call(
            Method::DELETE,
            &format!("/v1/keys/{key_id}"),
            Some(&api.admin),
            None,
        )
        .await;
    assert!(status.is_success());
    api.start_run(&api.admin, "doorbell", json!({})).await;
    next_event(&mut stream, &mut seen, "end").await;
    let rest = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(chunk) = stream.chunk().await.unwrap() {
            assert!(!String::from_utf8_lossy(&chunk).contains("event:"));
        }
    })
    .await;
    assert!(rest.is_ok(), "the stream closes after `end`");
    // Without a session there is no stream.
    let page = Browser::new(&api).get("/ui/events").await;
    assert_eq!(page.status, StatusCode::SEE_OTHER);
    api.stop().await;
}

on_both_backends!(
    the_overview_counts_each_tenants_runs_and_draws_their_activity,
    bulk_cancel_counts_first_and_stays_in_the_tenant,
    live_events_follow_the_stores_notifications_and_end_with_the_session,
    pages_redirect_to_the_login_without_a_session,
    login_sets_a_strict_cookie_and_logout_ends_the_session,
    wrong_keys_are_refused_alike_and_then_rate_limited,
    state_changing_requests_need_the_csrf_token_and_this_origin,
    a_reader_sees_no_actions_and_cannot_forge_one,
    revoking_the_key_ends_its_session,
    rotating_the_key_ends_its_sessions,
    an_operator_sees_nothing_of_another_tenant,
    run_data_is_shown_as_text_never_as_markup,
    the_run_page_says_why_it_waits_draws_its_path_and_checks_signals,
    an_operator_retries_a_held_run_and_skips_a_failed_compensation,
);
