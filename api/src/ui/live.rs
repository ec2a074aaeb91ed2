//! Live pages: `/ui/events` is a server-sent event stream that says `change` when what a
//! page shows may have changed, and the page's script then fetches the page again and
//! swaps its live regions (leaving the filters, the scroll position and any half-typed
//! field alone).
//!
//! The stream is fed by the store's own notifications, the ones that wake workers: runs
//! becoming due (a start, a retry, a timer, a release) and runs ending (any run's, and,
//! through the sweep that catches lost notifications, those the page shows, `?run=<id>`).
//! Transitions that notify nobody (a run starting to wait) are caught by a slow
//! fallback tick. An event carries no data:
//! the page is fetched again through the session, so it can only ever show what the
//! session may see. Before each event the session is checked again, and a stream whose
//! session ended (logout, expiry, a revoked key) says `end` and closes.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::{watch, Notify};
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

use super::session::{self, UiSession};
use crate::AppState;

/// The most runs one stream watches (a page of the runs list, and some).
const MAX_WATCHED: usize = 100;

struct Live {
    state: AppState,
    token: String,
    due: watch::Receiver<u64>,
    any_ended: watch::Receiver<u64>,
    ended: Arc<Notify>,
    fallback: Duration,
    /// Stops the tasks watching the runs' endings when the stream is dropped.
    _watching: DropGuard,
    done: bool,
}

/// Waits for the next reason to look again.
async fn next_change(live: &mut Live) {
    // A notifier that is gone (shutting down) leaves the others and the tick.
    let due = async {
        if live.due.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let any_ended = async {
        if live.any_ended.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = due => {}
        _ = any_ended => {}
        _ = live.ended.notified() => {}
        _ = tokio::time::sleep(live.fallback) => {}
    }
}

pub(super) async fn events(
    State(state): State<AppState>,
    session: UiSession,
    RawQuery(raw): RawQuery,
) -> Response {
    let query = super::query(raw);
    let ids: Vec<Uuid> = query
        .iter()
        .filter(|(k, _)| k == "run")
        .filter_map(|(_, v)| v.parse().ok())
        .take(MAX_WATCHED)
        .collect();
    let stop = CancellationToken::new();
    let ended = Arc::new(Notify::new());
    for id in ids {
        let Ok(mut watch) = state.engine.store.run_watch(id).await else {
            // The page's fallback timer still refreshes it.
            continue;
        };
        let (ended, stop) = (ended.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = watch.changed() => ended.notify_one(),
                _ = stop.cancelled() => {}
            }
        });
    }
    let live = Live {
        due: state.engine.store.subscribe(),
        any_ended: state.engine.store.runs_ended(),
        fallback: state.api.ui.live_fallback,
        token: session.token().to_owned(),
        state,
        ended,
        _watching: stop.drop_guard(),
        done: false,
    };
    let stream = futures_util::stream::unfold(live, |mut live| async move {
        if live.done {
            return None;
        }
        next_change(&mut live).await;
        let now = live.state.engine.clock.now();
        let still = session::lookup(&live.state, &live.token, now).await;
        let event = match still {
            // Browsers drop events with empty data, so each says its name once more.
            Ok(Some(_)) => Event::default().event("change").data("change"),
            // Ended, or the database cannot say: the page reloads and finds out.
            _ => {
                live.done = true;
                Event::default().event("end").data("end")
            }
        };
        Some((Ok::<_, std::convert::Infallible>(event), live))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
