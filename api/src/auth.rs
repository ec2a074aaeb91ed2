//! Authentication and authorisation: `Authorization: Bearer <key>` on every `/v1`
//! route, scopes checked before anything is loaded, and a per-key rate limit.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use uuid::Uuid;
use waymark_engine::keys::{Scope, Secret};
use waymark_engine::store::KeyRecord;
use waymark_engine::TenantScope;

use crate::error::ApiError;
use crate::AppState;

/// Who is calling: the key that authenticated the request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key: KeyRecord,
    pub address: Option<String>,
}

impl Caller {
    /// 403 unless the key holds `scope` (or a wider one).
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.key.top_scope() >= scope {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this key's scope ({}) is too small; {scope} is needed",
                self.key.top_scope()
            )))
        }
    }

    pub fn is_admin(&self) -> bool {
        self.key.top_scope() == Scope::Admin
    }

    /// What the caller may read: everything for an admin, else its tenant.
    pub fn scope(&self) -> TenantScope {
        if self.is_admin() {
            TenantScope::All
        } else {
            TenantScope::Tenant(self.key.tenant.clone())
        }
    }

    /// For history and audit: `key:<id>`.
    pub fn actor(&self) -> String {
        format!("key:{}", self.key.id)
    }
}

/// Remembers when each key's use was last written, so `last_used_at` costs a write at
/// most once a minute per key, and counts requests per key for the rate limit.
#[derive(Debug, Default)]
pub struct KeyActivity {
    touched: Mutex<HashMap<Uuid, Instant>>,
    /// Per key: the engine-clock second being counted, and requests in it.
    window: Mutex<HashMap<Uuid, (i64, u32)>>,
}

impl KeyActivity {
    fn should_touch(&self, key: Uuid) -> bool {
        let mut touched = self.touched.lock().expect("activity lock");
        let now = Instant::now();
        match touched.get(&key) {
            Some(last) if now.duration_since(*last) < Duration::from_secs(60) => false,
            _ => {
                touched.insert(key, now);
                true
            }
        }
    }

    /// Counts a request in the key's window for the second `second` (by the engine
    /// clock, so tests control it); false when over `limit`.
    fn allow(&self, key: Uuid, limit: u32, second: i64) -> bool {
        let mut window = self.window.lock().expect("activity lock");
        let entry = window.entry(key).or_insert((second, 0));
        if entry.0 != second {
            *entry = (second, 0);
        }
        entry.1 += 1;
        entry.1 <= limit
    }
}

/// Settings of the API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Requests per second per key; 0 turns the limit off.
    pub rate_limit: u32,
    /// Request bodies larger than this are refused with 413.
    pub max_body: usize,
    /// The longest `?wait=` a status request may hold.
    pub max_wait: Duration,
    /// Long polls (`?wait=`) this process holds at once; past it they answer 429.
    pub max_waiting: usize,
    /// Long polls one key may hold at once; past it they answer 429.
    pub max_waiting_per_key: usize,
    /// The long polls in progress (shared by the clones of this config).
    pub waits: Arc<crate::waits::Waits>,
    /// When set, `/metrics` wants `Authorization: Bearer <token>`.
    pub metrics_token: Option<String>,
    /// Opens sealed key secrets for their one reveal.
    pub sealer: waymark_engine::keys::Sealer,
    /// A key rotation's grace when the request names none.
    pub rotation_grace: Duration,
    pub activity: Arc<KeyActivity>,
    /// The dashboard's sessions and login limit.
    pub ui: crate::ui::UiConfig,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            rate_limit: 100,
            max_body: 512 * 1024,
            max_wait: Duration::from_secs(60),
            max_waiting: 1000,
            max_waiting_per_key: 100,
            waits: Arc::default(),
            metrics_token: None,
            // A throwaway master key: nothing sealed under it outlives the process.
            // `main` passes the installation's.
            sealer: waymark_engine::keys::Sealer::random(),
            rotation_grace: Duration::from_secs(24 * 3600),
            activity: Arc::default(),
            ui: crate::ui::UiConfig::default(),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // Authenticated once per request: the router's scope check (see
        // [`require_scope`]) leaves the caller here for the handler.
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let header = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            ApiError::unauthorized("an API key is required: Authorization: Bearer <key>")
        })?;
        let presented = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| ApiError::unauthorized("expected Authorization: Bearer <key>"))?;
        // One answer for every way a key can be wrong, so a caller learns nothing
        // about which keys exist.
        let invalid =
            || ApiError::unauthorized("the API key is not valid, or was revoked or has expired");
        let secret = Secret::parse(presented).ok_or_else(invalid)?;
        let prefix = secret.prefix().ok_or_else(invalid)?;
        let key = state
            .engine
            .store
            .key_by_prefix(prefix)
            .await?
            .ok_or_else(invalid)?;
        let now = state.engine.clock.now();
        if !secret.matches(&key.secret_hash) || !key.is_active(now) {
            return Err(invalid());
        }
        if state.api.rate_limit > 0
            && !state
                .api
                .activity
                .allow(key.id, state.api.rate_limit, now.timestamp())
        {
            return Err(ApiError::rate_limited());
        }
        if state.api.activity.should_touch(key.id) {
            if let Err(error) = state.engine.store.key_touch(key.id, now).await {
                tracing::warn!(error = %crate::error::chain(&error), "cannot record key use");
            }
        }
        let address = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_string());
        Ok(Caller { key, address })
    }
}

/// The scope check the router applies to every route of the table, from the scope the
/// table documents, before the handler (or its body) is looked at: the OpenAPI
/// document's `x-waymark-scope` and what is enforced cannot drift apart.
pub(crate) async fn require_scope(
    axum::extract::State((state, scope)): axum::extract::State<(AppState, Scope)>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (mut parts, body) = request.into_parts();
    let caller = match Caller::from_request_parts(&mut parts, &state).await {
        Ok(caller) => caller,
        Err(problem) => return problem.into_response(),
    };
    if let Err(problem) = caller.require(scope) {
        return problem.into_response();
    }
    parts.extensions.insert(caller);
    next.run(axum::extract::Request::from_parts(parts, body))
        .await
}
