//! Waiting for runs to end without reading each one in a loop.
//!
//! A long-poll request registers a [`RunWatch`] for its run; the store wakes it when the
//! run ends. On PostgreSQL the transaction that ends a run sends `pg_notify` with the run
//! id, and each process's one LISTEN connection (the one that wakes its workers) hands it
//! to [`RunEndings::ended`]; on SQLite the store calls it right after the commit.
//!
//! Notifications can be lost: NOTIFYs sent while a LISTEN connection is down or not yet
//! open never reach it, and an SQLite file may be written by another process. So the
//! store wakes every watcher whenever its listener (re)connects, and one sweep per
//! process checks all watched runs in a single query every [`SWEEP`]. The sweep costs
//! one query per interval however many requests wait, where a re-read per waiter would
//! cost one query per waiter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use uuid::Uuid;

/// How often the safety sweep looks at the watched runs.
pub const SWEEP: Duration = Duration::from_secs(5);

/// The runs someone waits on in this process, each with the channel that wakes its
/// waiters.
#[derive(Debug)]
pub struct RunEndings {
    runs: Mutex<HashMap<Uuid, watch::Sender<()>>>,
    /// How many runs are watched; the listener and the sweep stop when it is 0.
    count: watch::Sender<usize>,
    /// Whether the sweep task runs (one per process).
    pub(super) sweeping: AtomicBool,
    /// Bumped on every ending this process hears of, watched or not, for those who
    /// follow all runs (the dashboard's live pages).
    any: watch::Sender<u64>,
}

impl Default for RunEndings {
    fn default() -> Self {
        Self {
            runs: Mutex::default(),
            count: watch::channel(0).0,
            sweeping: AtomicBool::new(false),
            any: watch::channel(0).0,
        }
    }
}

impl RunEndings {
    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, watch::Sender<()>>> {
        // A panic while holding the lock cannot leave the map half-updated (every
        // change is one insert or remove), so a poisoned lock is still usable.
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers interest in `id`. Anything [`Self::ended`] or [`Self::wake_all`] sends
    /// after this returns wakes the watch, so a caller registers first and reads the
    /// run second, and cannot miss an ending that happens in between.
    pub fn watch(self: &Arc<Self>, id: Uuid) -> RunWatch {
        let mut runs = self.lock();
        let rx = runs
            .entry(id)
            .or_insert_with(|| watch::channel(()).0)
            .subscribe();
        self.count.send_replace(runs.len());
        RunWatch {
            hub: self.clone(),
            id,
            rx,
        }
    }

    /// Run `id` ended (or may have): its waiters re-read it.
    pub fn ended(&self, id: Uuid) {
        if let Some(tx) = self.lock().get(&id) {
            tx.send_replace(());
        }
        self.any.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Wakes when any run ends (or may have), coalesced like [`Store::subscribe`]'s.
    ///
    /// [`Store::subscribe`]: super::Store::subscribe
    pub fn any_ended(&self) -> watch::Receiver<u64> {
        self.any.subscribe()
    }

    /// Resolves once nobody follows every ending ([`Self::any_ended`]'s receivers are
    /// all gone).
    pub(super) async fn unfollowed(&self) {
        self.any.closed().await
    }

    pub(super) fn followed(&self) -> bool {
        self.any.receiver_count() > 0
    }

    /// Every waiter re-reads its run: after a gap in which notifications may be lost.
    pub fn wake_all(&self) {
        for tx in self.lock().values() {
            tx.send_replace(());
        }
        self.any.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The runs waited on now.
    pub fn watched(&self) -> Vec<Uuid> {
        self.lock().keys().copied().collect()
    }

    pub fn is_empty(&self) -> bool {
        *self.count.borrow() == 0
    }

    /// Resolves once no run is watched.
    pub async fn unwatched(&self) {
        let mut count = self.count.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = count.wait_for(|n| *n == 0).await;
    }

    pub(super) fn stop_sweeping(&self) {
        self.sweeping.store(false, Ordering::SeqCst);
    }
}

/// One waiter's interest in one run; dropping it withdraws the interest.
#[derive(Debug)]
pub struct RunWatch {
    hub: Arc<RunEndings>,
    id: Uuid,
    rx: watch::Receiver<()>,
}

impl RunWatch {
    pub fn run_id(&self) -> Uuid {
        self.id
    }

    /// Resolves when the run may have ended since the last call (or since the watch was
    /// made): the caller re-reads it.
    pub async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            // The sender stays in the map while any receiver lives, so this cannot
            // happen; never resolve rather than spin if it ever did.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for RunWatch {
    fn drop(&mut self) {
        let mut runs = self.hub.lock();
        // Our receiver is still alive here (fields drop after this body): the last
        // watcher sees a count of 1.
        if runs
            .get(&self.id)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            runs.remove(&self.id);
            self.hub.count.send_replace(runs.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_ending_wakes_only_the_watchers_of_that_run() {
        let hub = Arc::new(RunEndings::default());
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let mut first = hub.watch(a);
        let mut second = hub.watch(a);
        let mut other = hub.watch(b);
        hub.ended(a);
        first.changed().await;
        second.changed().await;
        assert!(!other.rx.has_changed().unwrap());
        hub.wake_all();
        other.changed().await;
    }

    #[tokio::test]
    async fn the_last_watcher_gone_forgets_the_run() {
        let hub = Arc::new(RunEndings::default());
        let id = Uuid::now_v7();
        let first = hub.watch(id);
        let second = hub.watch(id);
        assert_eq!(hub.watched(), vec![id]);
        drop(first);
        assert_eq!(hub.watched(), vec![id]);
        drop(second);
        assert!(hub.watched().is_empty());
        assert!(hub.is_empty());
        hub.unwatched().await;
    }
}
