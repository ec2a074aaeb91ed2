//! The frame every page shares (head, navigation, the logged-in key, logout), the
//! pieces pages repeat (times, status badges, JSON), and the headers every dashboard
//! answer carries.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use waymark_engine::keys::Scope;
use waymark_engine::RunStatus;

use super::session::UiSession;

/// The navigation: path, label, and the scope a key needs to see the entry (the
/// page itself checks again).
const NAV: &[(&str, &str, Scope)] = &[
    ("/ui/", "Overview", Scope::Reader),
    ("/ui/runs", "Runs", Scope::Reader),
    ("/ui/workflows", "Workflows", Scope::Reader),
    ("/ui/schedules", "Schedules", Scope::Reader),
    ("/ui/workers", "Workers", Scope::Reader),
    ("/ui/audit", "Audit", Scope::Reader),
    ("/ui/dead-letters", "Dead letters", Scope::Operator),
    ("/ui/keys", "Keys", Scope::Operator),
    ("/ui/tenants", "Tenants", Scope::Admin),
];

/// A whole page: `current` is the navigation entry to mark.
pub(crate) fn layout(
    session: Option<&UiSession>,
    title: &str,
    current: &str,
    body: Markup,
) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Waymark" }
                link rel="stylesheet" href=(super::asset_path("style.css"));
                script src=(super::asset_path("app.js")) defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                @if let Some(session) = session {
                    header.top {
                        a.brand href="/ui/" { "Waymark" }
                        nav aria-label="Main" {
                            ul {
                                @for (path, label, needs) in NAV {
                                    @if session.caller.key.top_scope() >= *needs { li {
                                        @if *path == current {
                                            a href=(path) aria-current="page" { (label) }
                                        } @else {
                                            a href=(path) { (label) }
                                        }
                                    } }
                                }
                            }
                        }
                        div.who {
                            span title="the key this session uses" {
                                (session.caller.key.prefix) " · " (session.caller.key.tenant)
                                " · " (session.caller.key.top_scope().as_str())
                            }
                            form method="post" action="/ui/logout" {
                                input type="hidden" name="csrf" value=(session.csrf);
                                button type="submit" { "Log out" }
                            }
                        }
                    }
                }
                main #main { (body) }
            }
        }
    };
    html_response(StatusCode::OK, markup)
}

pub(crate) fn html_response(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        )],
        markup.into_string(),
    )
        .into_response()
}

/// A small page of its own for refusals (403), so a forged request learns nothing but
/// that it was refused.
pub(crate) fn forbidden(why: &str) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "Forbidden · Waymark" }
                link rel="stylesheet" href=(super::asset_path("style.css")); }
            body { main #main { h1 { "Forbidden" } p.error { (why) } p { a href="/ui/" { "Back to the dashboard" } } } }
        }
    };
    html_response(StatusCode::FORBIDDEN, markup)
}

/// A page-level message (404, 409, 422): the frame, a heading and the detail.
pub(crate) fn message(
    session: &UiSession,
    status: StatusCode,
    heading: &str,
    detail: &str,
) -> Response {
    let mut response = layout(
        Some(session),
        heading,
        "",
        html! { h1 { (heading) } p.error role="alert" { (detail) } p { a href="/ui/runs" { "Back to runs" } } },
    );
    *response.status_mut() = status;
    response
}

/// A time as UTC text; the page's script rewrites it into the browser's zone and
/// leaves UTC in the tooltip.
pub(crate) fn time(at: DateTime<Utc>) -> Markup {
    let utc = at.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    html! { time datetime=(at.to_rfc3339()) title=(utc) { (utc) } }
}

pub(crate) fn opt_time(at: Option<DateTime<Utc>>) -> Markup {
    match at {
        Some(at) => time(at),
        None => html! { "—" },
    }
}

pub(crate) fn status(status: RunStatus) -> Markup {
    html! { span class={ "status s-" (status.as_str()) } { (status.as_str()) } }
}

/// Pretty-printed JSON in a `<pre>`; maud escapes it, so data can never become markup.
pub(crate) fn json(value: &serde_json::Value) -> Markup {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    html! { pre.json { (text) } }
}

/// An SVG the server drew (its text is escaped where it is written).
pub(crate) fn svg(text: String) -> Markup {
    PreEscaped(text)
}

/// "in 5 minutes" / "3 minutes ago", from the engine clock's `now`.
pub(crate) fn relative(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let seconds = (at - now).num_seconds();
    let amount = |s: i64| match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        3600..=86_399 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d", s / 86_400),
    };
    if seconds >= 0 {
        format!("in {}", amount(seconds))
    } else {
        format!("{} ago", amount(-seconds))
    }
}
