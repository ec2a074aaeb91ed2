//! `/ui/login`: an API key exchanged for a session cookie; `/ui/logout` ends it.
//! Failed logins are counted per client address and refused with 429 past the limit,
//! like API calls past theirs.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, RawQuery, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use waymark_engine::keys::Secret;

use super::page::layout;
use super::session::{self, check_csrf, check_origin, UiSession};
use super::Form;
use crate::AppState;

/// Where to go after logging in: only a page of the dashboard, never another site.
fn next_page(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/ui/") && !n.contains("//") && !n.contains('\\') => n.to_owned(),
        _ => "/ui/".to_owned(),
    }
}

fn login_page(status: StatusCode, next: &str, error: Option<&str>) -> Response {
    let mut response = layout(
        None,
        "Log in",
        "",
        html! {
            div.login {
                h1 { "Waymark" }
                form method="post" action="/ui/login" {
                    input type="hidden" name="next" value=(next);
                    label for="key" { "API key" }
                    input #key type="password" name="key" required autocomplete="off"
                        autofocus spellcheck="false" aria-describedby=[error.map(|_| "login-error")];
                    @if let Some(error) = error {
                        p #login-error .error role="alert" { (error) }
                    }
                    button type="submit" { "Log in" }
                }
                p.hint { "Use a key made with " code { "waymark keys create" } " or the API." }
            }
        },
    );
    *response.status_mut() = status;
    response
}

pub(super) async fn form(RawQuery(raw): RawQuery) -> Response {
    let query = super::query(raw);
    login_page(
        StatusCode::OK,
        &next_page(crate::routes::param(&query, "next")),
        None,
    )
}

pub(super) async fn submit(State(state): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let connect = parts.extensions.get::<ConnectInfo<SocketAddr>>().cloned();
    if let Err(refusal) = check_origin(&state.api.ui, &headers) {
        return refusal.into_response();
    }
    let form = match Form::read(body, state.api.max_body).await {
        Ok(form) => form,
        Err(response) => return response,
    };
    let next = next_page(form.get("next"));
    let address = connect
        .map(|ConnectInfo(a)| a.ip().to_string())
        .unwrap_or_else(|| "unknown".into());
    let now = state.engine.clock.now();
    let throttle = &state.api.ui.throttle;
    if !throttle.allows(&state.api.ui, &address, now) {
        let mut response = login_page(
            StatusCode::TOO_MANY_REQUESTS,
            &next,
            Some("Too many failed logins from this address: wait a minute and try again."),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("60"));
        return response;
    }
    let presented = form.get("key").unwrap_or_default().trim();
    let key = match Secret::parse(presented) {
        Some(secret) => match secret.prefix() {
            Some(prefix) => match state.engine.store.key_by_prefix(prefix).await {
                Ok(found) => found.filter(|k| secret.matches(&k.secret_hash) && k.is_active(now)),
                Err(error) => return crate::error::ApiError::from(error).into_response(),
            },
            None => None,
        },
        None => None,
    };
    let Some(key) = key else {
        throttle.record_failure(&address, now);
        // One answer for every way a key can be wrong, as the API gives.
        return login_page(
            StatusCode::UNAUTHORIZED,
            &next,
            Some("That key is not valid, or was revoked or has expired."),
        );
    };
    let token = match session::create(&state, key.id, now).await {
        Ok(token) => token,
        Err(error) => return crate::error::ApiError::from(error).into_response(),
    };
    let mut response = Redirect::to(&next).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session::cookie(&state.api.ui, Some(&token))
            .parse()
            .expect("a cookie header"),
    );
    response
}

pub(super) async fn logout(
    State(state): State<AppState>,
    session: UiSession,
    body: Body,
) -> Response {
    let form = match Form::read(body, state.api.max_body).await {
        Ok(form) => form,
        Err(response) => return response,
    };
    if let Err(refusal) = check_csrf(&session, &form) {
        return refusal.into_response();
    }
    if let Err(error) = session::end(&state, session.token()).await {
        return crate::error::ApiError::from(error).into_response();
    }
    let mut response = Redirect::to("/ui/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        session::cookie(&state.api.ui, None)
            .parse()
            .expect("a cookie header"),
    );
    response
}
