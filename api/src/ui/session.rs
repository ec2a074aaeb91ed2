//! Sessions: an API key exchanged for a cookie at login, kept server-side in
//! `waymark_ui_sessions` (its own [`SCHEMA`]), and the checks every dashboard request
//! passes: the session exists and has not expired, its key is still active (so revoking
//! the key ends the session at once, in every process), and a state-changing request
//! carries the session's CSRF token and a same-origin `Origin`.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;
use waymark_engine::store::sql::Arg;
use waymark_engine::store::{Migration, Schema};
use waymark_engine::TenantScope;

use crate::auth::Caller;
use crate::AppState;

/// The dashboard's table, migrated with the engine's by whoever builds the store.
pub const SCHEMA: Schema = Schema {
    name: "ui",
    postgres: &[Migration::new(
        1,
        "sessions",
        include_str!("migrations/postgres/0001_sessions.sql"),
    )],
    sqlite: &[Migration::new(
        1,
        "sessions",
        include_str!("migrations/sqlite/0001_sessions.sql"),
    )],
};

pub const COOKIE: &str = "waymark_session";

/// Settings of the dashboard.
#[derive(Debug, Clone)]
pub struct UiConfig {
    /// `WAYMARK_PUBLIC_URL`: the only `Origin` accepted when set, and `https` there
    /// makes the cookie `Secure`. Unset: the request's own `Host`.
    pub public_url: Option<String>,
    /// How long a session lasts from login.
    pub session_ttl: std::time::Duration,
    /// Failed logins one address may make per minute (by the engine clock); past it,
    /// every login from it answers 429 until the minute ends. 0 turns the limit off.
    pub login_failures_per_minute: u32,
    pub throttle: std::sync::Arc<LoginThrottle>,
    /// How often a live page looks again when no notification came (a run that started
    /// waiting notifies nobody).
    pub live_fallback: std::time::Duration,
}

impl Default for UiConfig {
    fn default() -> Self {
        Self {
            public_url: None,
            session_ttl: std::time::Duration::from_secs(12 * 3600),
            login_failures_per_minute: 10,
            throttle: Default::default(),
            live_fallback: std::time::Duration::from_secs(5),
        }
    }
}

impl UiConfig {
    pub(crate) fn secure_cookie(&self) -> bool {
        self.public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
    }
}

/// Failed logins per client address in the current minute.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    window: Mutex<HashMap<String, (i64, u32)>>,
}

impl LoginThrottle {
    fn count(&self, address: &str, minute: i64) -> u32 {
        let window = self.window.lock().expect("throttle lock");
        match window.get(address) {
            Some((m, n)) if *m == minute => *n,
            _ => 0,
        }
    }

    fn fail(&self, address: &str, minute: i64) {
        let mut window = self.window.lock().expect("throttle lock");
        // Old minutes are dropped as they are met, so the map holds only this minute's
        // addresses plus those not seen since.
        window.retain(|_, (m, _)| *m == minute);
        window.entry(address.to_owned()).or_insert((minute, 0)).1 += 1;
    }

    /// True while `address` may still try.
    pub(crate) fn allows(&self, config: &UiConfig, address: &str, now: DateTime<Utc>) -> bool {
        config.login_failures_per_minute == 0
            || self.count(address, now.timestamp() / 60) < config.login_failures_per_minute
    }

    pub(crate) fn record_failure(&self, address: &str, now: DateTime<Utc>) {
        self.fail(address, now.timestamp() / 60);
    }
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Constant-time comparison, so a wrong CSRF token's timing says nothing of the right one.
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Creates a session for `key` and returns the token for its cookie.
pub(crate) async fn create(
    state: &AppState,
    key: Uuid,
    now: DateTime<Utc>,
) -> Result<String, waymark_engine::StoreError> {
    let store = &state.engine.store;
    // Expired rows go when someone logs in: no separate sweeper to run.
    store
        .sql_execute(
            "DELETE FROM waymark_ui_sessions WHERE expires_at <= $1",
            &[Arg::time(now)],
        )
        .await?;
    let token = random_token();
    let ttl = chrono::Duration::from_std(state.api.ui.session_ttl)
        .unwrap_or_else(|_| chrono::Duration::hours(12));
    store
        .sql_execute(
            "INSERT INTO waymark_ui_sessions (token_hash, key_id, csrf, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
            &[
                Arg::text(hash(&token)),
                Arg::id(key),
                Arg::text(random_token()),
                Arg::time(now),
                Arg::time(now + ttl),
            ],
        )
        .await?;
    Ok(token)
}

/// Ends the session whose token is `token` (nothing if there is none).
pub(crate) async fn end(state: &AppState, token: &str) -> Result<(), waymark_engine::StoreError> {
    state
        .engine
        .store
        .sql_execute(
            "DELETE FROM waymark_ui_sessions WHERE token_hash = $1",
            &[Arg::text(hash(token))],
        )
        .await?;
    Ok(())
}

/// Ends every session of `key` in the caller's transaction: a rotation started through
/// the API logs the old key's browsers out when it commits, though the old key itself
/// keeps working for API clients through its grace period.
pub(crate) async fn end_for_key_in(
    tx: &mut waymark_engine::store::Tx,
    key: Uuid,
) -> Result<(), waymark_engine::StoreError> {
    tx.execute(
        "DELETE FROM waymark_ui_sessions WHERE key_id = $1",
        &[Arg::id(key)],
    )
    .await?;
    Ok(())
}

/// The `Set-Cookie` value for `token`; `None` clears the cookie.
pub(crate) fn cookie(config: &UiConfig, token: Option<&str>) -> String {
    let secure = if config.secure_cookie() {
        "; Secure"
    } else {
        ""
    };
    match token {
        Some(token) => format!(
            "{COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            config.session_ttl.as_secs()
        ),
        None => format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

/// The session token the request's cookie carries.
pub(crate) fn token_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|v| !v.is_empty())
}

/// A logged-in operator: the key behind the session, as the API's handlers know it.
#[derive(Debug, Clone)]
pub struct UiSession {
    pub caller: Caller,
    /// The token every state-changing request of this session must carry.
    pub csrf: String,
    token: String,
}

impl UiSession {
    pub(crate) fn token(&self) -> &str {
        &self.token
    }
}

/// Why a dashboard request was turned away.
#[derive(Debug)]
pub enum Rejection {
    /// No (live) session: pages send the browser to the login.
    Login {
        next: String,
    },
    Forbidden(&'static str),
    Unavailable,
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        match self {
            Rejection::Login { next } => {
                let next: String = url::form_urlencoded::byte_serialize(next.as_bytes()).collect();
                let mut response = Redirect::to(&format!("/ui/login?next={next}")).into_response();
                response.headers_mut().insert(
                    header::CACHE_CONTROL,
                    header::HeaderValue::from_static("no-store"),
                );
                response
            }
            Rejection::Forbidden(why) => super::page::forbidden(why),
            Rejection::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the database is not reachable; try again shortly",
            )
                .into_response(),
        }
    }
}

/// Finds the session of `token` and checks it and its key against `now`.
pub(crate) async fn lookup(
    state: &AppState,
    token: &str,
    now: DateTime<Utc>,
) -> Result<Option<(waymark_engine::store::KeyRecord, String)>, waymark_engine::StoreError> {
    let rows = state
        .engine
        .store
        .sql_fetch(
            "SELECT key_id, csrf FROM waymark_ui_sessions WHERE token_hash = $1 AND expires_at > $2",
            &[Arg::text(hash(token)), Arg::time(now)],
        )
        .await?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let key_id = row.id("key_id")?;
    let csrf = row.text("csrf")?;
    // The key decides on every request, as for the API: revoked, expired or suspended
    // keys end their sessions now, whichever process revoked them.
    let key = state
        .engine
        .store
        .key_get(&TenantScope::All, key_id)
        .await?
        .filter(|k| k.is_active(now));
    Ok(key.map(|k| (k, csrf)))
}

impl FromRequestParts<AppState> for UiSession {
    type Rejection = Rejection;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if let Some(session) = parts.extensions.get::<UiSession>() {
            return Ok(session.clone());
        }
        let writes = !matches!(parts.method, Method::GET | Method::HEAD);
        if writes {
            check_origin(&state.api.ui, &parts.headers)?;
        }
        let login = || {
            if writes {
                Rejection::Forbidden("no session: log in again")
            } else {
                Rejection::Login {
                    next: parts
                        .uri
                        .path_and_query()
                        .map(|p| p.as_str().to_owned())
                        .unwrap_or_else(|| "/ui/".into()),
                }
            }
        };
        let token = token_of(&parts.headers).ok_or_else(login)?;
        let now = state.engine.clock.now();
        let found = lookup(state, &token, now).await.map_err(|error| {
            tracing::warn!(error = %crate::error::chain(&error), "cannot read a dashboard session");
            Rejection::Unavailable
        })?;
        let (key, csrf) = found.ok_or_else(login)?;
        let address = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|axum::extract::ConnectInfo(addr)| addr.ip().to_string());
        let session = UiSession {
            caller: Caller { key, address },
            csrf,
            token,
        };
        parts.extensions.insert(session.clone());
        Ok(session)
    }
}

/// A state-changing request must come from a page of this server: its `Origin` (or,
/// from browsers that send none, its `Referer`) names this server. SameSite=Strict
/// already keeps the cookie off cross-site requests; this is the second lock.
pub(crate) fn check_origin(config: &UiConfig, headers: &HeaderMap) -> Result<(), Rejection> {
    let presented = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| url::Url::parse(v).ok())
        .ok_or(Rejection::Forbidden(
            "a state-changing request must carry an Origin header",
        ))?;
    let matches = match &config.public_url {
        Some(public) => url::Url::parse(public).is_ok_and(|p| p.origin() == presented.origin()),
        None => {
            let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
            let authority = match (presented.host_str(), presented.port()) {
                (Some(h), Some(p)) => Some(format!("{h}:{p}")),
                (Some(h), None) => Some(h.to_owned()),
                _ => None,
            };
            host.is_some() && authority.as_deref() == host
        }
    };
    if matches {
        Ok(())
    } else {
        Err(Rejection::Forbidden(
            "this request came from another origin",
        ))
    }
}

/// Checks the form's CSRF token against the session's.
pub(crate) fn check_csrf(session: &UiSession, form: &super::Form) -> Result<(), Rejection> {
    match form.get("csrf") {
        Some(token) if same(token, &session.csrf) => Ok(()),
        _ => Err(Rejection::Forbidden(
            "the form's CSRF token is missing or wrong: reload the page and try again",
        )),
    }
}
