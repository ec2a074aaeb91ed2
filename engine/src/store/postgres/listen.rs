//! The process's one LISTEN connection: `waymark_runs` notifications wake the workers,
//! [`ENDED_CHANNEL`](super::ENDED_CHANNEL) ones wake the long polls waiting for those
//! runs. It runs only while someone in the process wants it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use super::{PgStore, CHANNEL, ENDED_CHANNEL};
use crate::store::RunEndings;
use crate::store::StoreResult;

impl PgStore {
    /// Starts this process's LISTEN connection unless it runs; it stops when neither
    /// workers nor waiters want it.
    pub(in crate::store) fn ensure_listening(&self) {
        if !self.listening.swap(true, Ordering::SeqCst) {
            tokio::spawn(listen(
                self.pool.clone(),
                self.wake.clone(),
                self.endings.clone(),
                self.listening.clone(),
            ));
        }
    }
}

/// Whether anyone in this process wants notifications: workers or long-poll waiters.
fn wanted(wake: &watch::Sender<u64>, endings: &RunEndings) -> bool {
    wake.receiver_count() > 0 || !endings.is_empty()
}

/// Resolves once neither workers nor waiters want notifications.
async fn unwanted(wake: &watch::Sender<u64>, endings: &RunEndings) {
    loop {
        wake.closed().await;
        endings.unwatched().await;
        if !wanted(wake, endings) {
            return;
        }
    }
}

/// The process's one LISTEN connection: due runs wake the workers, endings wake the
/// long polls waiting on them. Runs while anyone wants it.
async fn listen(
    pool: PgPool,
    wake: Arc<watch::Sender<u64>>,
    endings: Arc<RunEndings>,
    listening: Arc<AtomicBool>,
) {
    loop {
        listen_while_wanted(&pool, &wake, &endings).await;
        listening.store(false, Ordering::SeqCst);
        // A subscriber or watch that came between the last check and the store above
        // saw the flag still set and started no listener: carry on for it.
        if pool.is_closed() || !wanted(&wake, &endings) || listening.swap(true, Ordering::SeqCst) {
            return;
        }
    }
}

/// After any connection loss it reconnects and wakes everyone once, so workers sweep
/// for runs that became due and waiters re-read runs that may have ended while nobody
/// was listening.
async fn listen_while_wanted(pool: &PgPool, wake: &watch::Sender<u64>, endings: &RunEndings) {
    let bump = || wake.send_modify(|n| *n = n.wrapping_add(1));
    let lost = || {
        bump();
        endings.wake_all();
    };
    let mut backoff = Duration::from_millis(100);
    while !pool.is_closed() && wanted(wake, endings) {
        let mut listener = match PgListener::connect_with(pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(error = %error, "cannot open the LISTEN connection; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        if let Err(error) = listener.listen_all([CHANNEL, ENDED_CHANNEL]).await {
            tracing::warn!(error = %error, "LISTEN failed; retrying");
            tokio::time::sleep(backoff).await;
            continue;
        }
        backoff = Duration::from_millis(100);
        lost();
        loop {
            tokio::select! {
                received = listener.try_recv() => match received {
                    Ok(Some(note)) if note.channel() == ENDED_CHANNEL => {
                        match note.payload().parse::<Uuid>() {
                            Ok(id) => endings.ended(id),
                            Err(_) => endings.wake_all(),
                        }
                    }
                    Ok(Some(_)) => bump(),
                    Ok(None) => {
                        // The connection dropped and was re-established (LISTEN
                        // included), but notifications in between are gone.
                        tracing::warn!("LISTEN connection lost; reconnected, sweeping");
                        lost();
                    }
                    Err(error) => {
                        tracing::warn!(error = %error, "LISTEN connection failed; reconnecting");
                        lost();
                        break;
                    }
                },
                _ = unwanted(wake, endings) => return,
            }
        }
    }
}

/// How long a follower's row stays valid without a refresh; refreshed at a third of it.
const FOLLOW_TTL_SECS: f64 = 60.0;

impl PgStore {
    /// Marks run `id` as waited for, so the transaction that ends it sends a NOTIFY.
    /// The mark stays: a later, unwatched ending costs one NOTIFY nobody hears.
    pub(in crate::store) async fn run_mark_watched(&self, id: Uuid) -> StoreResult<()> {
        sqlx::query("UPDATE waymark_runs SET watched = true WHERE id = $1 AND NOT watched")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records this process as following every ending while anyone in it does (the
    /// dashboard's live pages), refreshing its row, and removes the row after.
    pub(in crate::store) fn ensure_following(&self) {
        if !self.following.swap(true, Ordering::SeqCst) {
            tokio::spawn(follow(self.clone()));
        }
    }
}

async fn follow(store: PgStore) {
    loop {
        while store.endings.followed() && !store.pool.is_closed() {
            let refreshed = sqlx::query(
                r#"INSERT INTO waymark_followers (process, expires_at)
                   VALUES ($1, now() + make_interval(secs => $2))
                   ON CONFLICT (process) DO UPDATE SET expires_at = EXCLUDED.expires_at"#,
            )
            .bind(store.process)
            .bind(FOLLOW_TTL_SECS)
            .execute(&store.pool)
            .await;
            if let Err(error) = refreshed {
                // Endings are then not announced to this process's pages until the
                // next refresh; their fallback timer still refreshes them.
                tracing::warn!(error = %error, "cannot record this process as following endings");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(FOLLOW_TTL_SECS / 3.0)) => {}
                _ = store.endings.unfollowed() => {}
            }
        }
        // Nobody follows: stop announcing every ending to this process. A failure
        // leaves the row to lapse at its expiry.
        let _ = sqlx::query("DELETE FROM waymark_followers WHERE process = $1 OR expires_at < now() - interval '1 hour'")
            .bind(store.process)
            .execute(&store.pool)
            .await;
        store.following.store(false, Ordering::SeqCst);
        // A follower that came between the last check and the store above saw the flag
        // still set and started nothing: carry on for it.
        if store.pool.is_closed()
            || !store.endings.followed()
            || store.following.swap(true, Ordering::SeqCst)
        {
            return;
        }
    }
}
