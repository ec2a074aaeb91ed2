//! The one test application: a Waymark as the binary wires it (engine, runner, API on a
//! loopback port) over a fresh test database, with an admin key and request helpers.
//!
//! ```ignore
//! let app = TestApp::spawn(Backend::Sqlite).await;              // all defaults
//! let app = TestApp::on(db)                                     // a database a test made
//!     .with_clock(&clock)                                       // a manual clock
//!     .with_services(Services::test_servers())                  // the shipped workflows, SMTP, S3
//!     .without_workers()                                        // the test drives runs itself
//!     .spawn()
//!     .await;
//! let (status, body) = app.get("/v1/runs", &app.admin).await;
//! ```
//!
//! Every app registers the test workflows (`support::workflows`) and the demo; with
//! [`TestAppBuilder::with_services`] it registers every shipped workflow instead of only
//! the demo, wired to the mail and blob services given.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use waymark_api::ApiConfig;
use waymark_engine::keys::{IssueKey, Scope, Sealer};
use waymark_engine::workflow::Registry;
use waymark_engine::{Engine, ManualClock, SharedClock, Store, SystemClock};
use waymark_services::{
    BlobStore, LocalStore, MailConfig, Mailer, S3Config, S3Credentials, S3Store, SmtpOptions,
    UrlSigner,
};

use super::services::service_env;
use super::workflows::{self, TestWorkflows};
use super::{spawn_runner, test_runner_config, Backend, RunnerHandle, TestDb};

/// Registers more workflows, given the app's store and the API's sealer.
type Extra = Box<dyn FnOnce(&mut Registry, &Store, &Sealer)>;

/// How the app's shipped workflows send mail and keep blobs.
pub struct Services {
    mail: Mail,
    blobs: Blobs,
    /// `WAYMARK_TENANT_RETENTION`.
    pub tenant_retention: Duration,
}

enum Mail {
    /// Into `<data dir>/outbox` only.
    Outbox,
    /// Through the SMTP server at this address, waiting at most the timeout.
    Smtp(Option<String>, Duration),
}

enum Blobs {
    /// A local store in `<data dir>/blobs`.
    Local,
    /// The S3 test server's bucket.
    TestS3,
    Given(BlobStore),
}

impl Services {
    /// The SMTP and S3 servers `./test.sh` starts (`scripts/test-services.sh`).
    pub fn test_servers() -> Services {
        Services {
            mail: Mail::Smtp(None, Duration::from_secs(10)),
            blobs: Blobs::TestS3,
            tenant_retention: Duration::from_secs(30 * 86_400),
        }
    }

    /// Nothing outside the process: mail to the outbox directory, blobs on local disk.
    pub fn local() -> Services {
        Services {
            mail: Mail::Outbox,
            blobs: Blobs::Local,
            tenant_retention: Duration::from_secs(86_400),
        }
    }

    /// Mail through the SMTP server at `addr` (`host:port`), waiting at most `timeout`.
    pub fn smtp(mut self, addr: Option<String>, timeout: Duration) -> Services {
        self.mail = Mail::Smtp(addr, timeout);
        self
    }

    /// Blobs in `store` (a bucket that does not exist, a server behind a proxy).
    pub fn blobs(mut self, store: BlobStore) -> Services {
        self.blobs = Blobs::Given(store);
        self
    }

    pub fn tenant_retention(mut self, retention: Duration) -> Services {
        self.tenant_retention = retention;
        self
    }

    async fn deps(
        self,
        store: &Store,
        sealer: &Sealer,
        data_dir: &std::path::Path,
    ) -> waymark_workflows::Deps {
        let mailer = match self.mail {
            Mail::Outbox => mailer(store, data_dir, None, Duration::from_secs(5)),
            Mail::Smtp(addr, timeout) => {
                let addr = addr.unwrap_or_else(|| service_env("WAYMARK_TEST_SMTP_ADDR"));
                mailer(store, data_dir, Some(format!("smtp://{addr}")), timeout)
            }
        };
        let blobs = match self.blobs {
            Blobs::Local => local_blobs(data_dir, "http://127.0.0.1:1".into()),
            Blobs::TestS3 => test_s3().await,
            Blobs::Given(store) => store,
        };
        waymark_workflows::Deps {
            store: store.clone(),
            mailer,
            blobs,
            sealer: sealer.clone(),
            data_dir: data_dir.to_owned(),
            tenant_retention: self.tenant_retention,
            rotation: Default::default(),
            dispute_network: waymark_workflows::disputes::network::Network::simulator(),
            disputes: Default::default(),
            meetings: Default::default(),
        }
    }
}

fn mailer(
    store: &Store,
    data_dir: &std::path::Path,
    smtp_url: Option<String>,
    timeout: Duration,
) -> Mailer {
    Mailer::from_config(
        &MailConfig {
            smtp_url,
            smtp: SmtpOptions {
                timeout,
                pool_size: 2,
                ca_file: None,
            },
            outbox_dir: data_dir.join("outbox"),
            default_from: "Waymark Tests <tests@waymark.example>".into(),
        },
        store.clone(),
    )
    .expect("mailer")
}

/// A local blob store in `<data_dir>/blobs` whose links point at `base`.
pub fn local_blobs(data_dir: &std::path::Path, base: String) -> BlobStore {
    let signer =
        UrlSigner::load_or_create(None, &data_dir.join("blob-signing.key")).expect("signing key");
    BlobStore::Local(LocalStore::new(data_dir.join("blobs"), signer, base).expect("local blobs"))
}

/// The S3 test server's settings for `bucket`.
pub fn test_s3_config(bucket: String) -> S3Config {
    S3Config {
        endpoint: Some(service_env("WAYMARK_TEST_S3_ENDPOINT")),
        region: Some("us-east-1".into()),
        path_style: true,
        credentials: Some(S3Credentials {
            access_key_id: service_env("WAYMARK_TEST_S3_ACCESS_KEY"),
            secret_access_key: service_env("WAYMARK_TEST_S3_SECRET_KEY"),
        }),
        ..S3Config::new(bucket)
    }
}

/// The S3 test server's bucket.
pub async fn test_s3() -> BlobStore {
    BlobStore::S3(
        S3Store::connect(test_s3_config(service_env("WAYMARK_TEST_S3_BUCKET")))
            .await
            .expect("s3 client"),
    )
}

/// What the API's `/blobs` links route serves.
enum ServedBlobs {
    None,
    /// A local store made for this app, its links pointing at the app's own address.
    Local,
    Store(BlobStore),
}

/// Options of a [`TestApp`] before it starts; [`TestAppBuilder::spawn`] starts it.
pub struct TestAppBuilder {
    db: Arc<TestDb>,
    api: ApiConfig,
    clock: Option<ManualClock>,
    workers: bool,
    services: Option<Services>,
    served_blobs: ServedBlobs,
    extra: Vec<Extra>,
}

impl TestAppBuilder {
    /// The API's settings (limits, master key, metrics token).
    pub fn with_api(mut self, api: ApiConfig) -> Self {
        self.api = api;
        self
    }

    /// Time from `clock` for the engine, runner and API, which a test moves by hand.
    pub fn with_clock(mut self, clock: &ManualClock) -> Self {
        self.clock = Some(clock.clone());
        self
    }

    /// Every shipped workflow, sending mail and keeping blobs as `services` says.
    pub fn with_services(mut self, services: Services) -> Self {
        self.services = Some(services);
        self
    }

    /// Registers more workflows, given the store and the API's sealer.
    pub fn with_workflows(
        mut self,
        extra: impl FnOnce(&mut Registry, &Store, &Sealer) + 'static,
    ) -> Self {
        self.extra.push(Box::new(extra));
        self
    }

    /// No runner: runs stay where they are until the test drives them.
    pub fn without_workers(mut self) -> Self {
        self.workers = false;
        self
    }

    /// The API serves signed `/blobs` links from a local store of its own
    /// ([`TestApp::blobs`]).
    pub fn serving_local_blobs(mut self) -> Self {
        self.served_blobs = ServedBlobs::Local;
        self
    }

    /// The API's `/blobs` links route is given `store`.
    pub fn serving_blobs(mut self, store: BlobStore) -> Self {
        self.served_blobs = ServedBlobs::Store(store);
        self
    }

    pub async fn spawn(self) -> TestApp {
        let db = self.db;
        let data_dir = db.data_dir();
        // The pattern of `TestDb::data_dir`: PostgreSQL tests get a fresh directory,
        // which this app deletes when it ends; SQLite's goes with its database.
        let own_data_dir = (db.backend == Backend::Postgres).then(|| data_dir.clone());
        let clock: SharedClock = match &self.clock {
            Some(manual) => Arc::new(manual.clone()),
            None => Arc::new(SystemClock),
        };
        let sealer = self.api.sealer.clone();
        let deps = match self.services {
            Some(services) => Some(services.deps(&db.store, &sealer, &data_dir).await),
            None => None,
        };
        let mut registry = match &deps {
            Some(deps) => waymark_workflows::registry(deps.clone()).expect("shipped workflows"),
            None => {
                let mut registry = Registry::new();
                registry.register(waymark_workflows::demo::Demo).unwrap();
                registry
            }
        };
        let handles = workflows::register(&mut registry);
        for extra in self.extra {
            extra(&mut registry, &db.store, &sealer);
        }
        let engine = db.engine(registry, clock);
        let (_, secret) = waymark_engine::keys::issue(
            &engine.store,
            IssueKey {
                tenant: "system".into(),
                scopes: vec![Scope::Admin],
                name: Some("test admin".into()),
                owner_email: None,
                expires_at: None,
                actor: "test".into(),
                address: None,
            },
            None,
            chrono::Utc::now(),
        )
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let blobs = match self.served_blobs {
            ServedBlobs::None => None,
            ServedBlobs::Local => Some(local_blobs(&data_dir, base.clone())),
            ServedBlobs::Store(store) => Some(store),
        };
        let app = waymark_api::app(waymark_api::AppState {
            engine: engine.clone(),
            blobs: blobs.clone(),
            api: self.api,
        });
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
            )
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await
            .unwrap()
        });
        let runner = self
            .workers
            .then(|| spawn_runner(engine.clone(), test_runner_config()));
        TestApp {
            base,
            http: reqwest::Client::new(),
            admin: secret.expose().to_owned(),
            engine,
            handles,
            sealer,
            clock: self.clock,
            data_dir,
            deps,
            blobs,
            runner,
            stop,
            own_data_dir,
            db,
        }
    }
}

/// A running Waymark for one test; [`TestApp::stop`] stops its runner and server.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    pub http: reqwest::Client,
    /// The secret of an admin key of the `system` tenant.
    pub admin: String,
    pub engine: Engine,
    /// The test workflows' counters and gates.
    pub handles: TestWorkflows,
    /// The API's master key.
    pub sealer: Sealer,
    /// The manual clock given to [`TestAppBuilder::with_clock`].
    pub clock: Option<ManualClock>,
    pub data_dir: PathBuf,
    /// What the shipped workflows were given, with [`TestAppBuilder::with_services`].
    pub deps: Option<waymark_workflows::Deps>,
    /// The store behind the API's `/blobs` links, if it serves any.
    pub blobs: Option<BlobStore>,
    runner: Option<RunnerHandle>,
    stop: CancellationToken,
    own_data_dir: Option<PathBuf>,
    /// Shared with the apps started beside this one by [`TestApp::beside`].
    db: Arc<TestDb>,
}

impl TestApp {
    /// An app with every default on a fresh database of `backend`.
    // Today every test gets its database from `on_both_backends!` and uses `on`; this
    // is the short form for a test written for one backend.
    #[allow(dead_code)]
    pub async fn spawn(backend: Backend) -> TestApp {
        Self::on(TestDb::new(backend).await).spawn().await
    }

    /// An app to configure over `db`.
    pub fn on(db: TestDb) -> TestAppBuilder {
        Self::builder(Arc::new(db))
    }

    fn builder(db: Arc<TestDb>) -> TestAppBuilder {
        TestAppBuilder {
            db,
            api: ApiConfig::default(),
            clock: None,
            workers: true,
            services: None,
            served_blobs: ServedBlobs::None,
            extra: Vec::new(),
        }
    }

    /// Another Waymark process on this one's database (another host, say), to
    /// configure: its own engine, runner, port and API settings.
    pub fn beside(&self) -> TestAppBuilder {
        Self::builder(self.db.clone())
    }

    pub fn db(&self) -> &TestDb {
        &self.db
    }

    pub fn store(&self) -> &Store {
        &self.engine.store
    }

    /// Stops the runner (gracefully) and the server.
    pub async fn stop(mut self) {
        if let Some(runner) = self.runner.take() {
            runner.stop().await;
        }
        self.stop.cancel();
    }

    /// `method path` with `key` as the bearer and `body` as JSON: the status and the
    /// answer as JSON (a non-JSON answer as a string, an empty one as null).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str, key: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(key), None).await
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(key), Some(body)).await
    }

    pub async fn delete(&self, path: &str, key: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, Some(key), None).await
    }

    /// A request with the admin key.
    pub async fn admin_call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.call(method, path, Some(&self.admin), body).await
    }

    /// A request with any body bytes, content type and headers; the answer as JSON
    /// (null unless it is JSON).
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        key: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key)
            .body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let value = response.json().await.unwrap_or(Value::Null);
        (status, value)
    }

    /// A key of `tenant` with `scopes`, made by the admin: (id, secret).
    pub async fn key(&self, tenant: &str, scopes: &[&str]) -> (String, String) {
        let (status, body) = self
            .call(
                Method::POST,
                "/v1/keys",
                Some(&self.admin),
                Some(json!({"tenant": tenant, "scopes": scopes, "name": "test"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (
            body["id"].as_str().unwrap().to_owned(),
            body["secret"].as_str().unwrap().to_owned(),
        )
    }

    /// Starts a run of `workflow` with `key`; asserts 201 and returns the run.
    pub async fn start_run(&self, key: &str, workflow: &str, input: Value) -> Value {
        let (status, body) = self
            .call(
                Method::POST,
                &format!("/v1/workflows/{workflow}/runs"),
                Some(key),
                Some(input),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(dir) = self.own_data_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The problem type of an error answer, without its common prefix.
pub fn problem_type(body: &Value) -> String {
    body["type"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("https://waymark.dev/problems/")
        .to_owned()
}
