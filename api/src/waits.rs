//! Long polls (`GET /v1/runs/{id}?wait=`): how many may wait at once, per key and per
//! process. A waiting request costs no query while it waits (the store wakes it when
//! its run ends), but each holds a socket, a task and a slot in the store's watch map,
//! so past a cap the answer is 429 with `Retry-After` rather than one more waiter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::http::StatusCode;
use uuid::Uuid;

use crate::error::ApiError;

/// Seconds a refused long poll is told to wait: slots free as runs end or waits time
/// out, which takes a while, so an immediate retry would mostly be refused again.
pub const RETRY_AFTER_SECS: u64 = 5;

/// The long polls in progress in this process.
#[derive(Debug, Default)]
pub struct Waits {
    inner: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_key: HashMap<Uuid, usize>,
}

impl Waits {
    fn lock(&self) -> MutexGuard<'_, Counts> {
        // Every change is a few integer updates under the lock; a poisoned lock still
        // holds consistent counts.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a slot for `key`, or explains which cap refused it (429).
    pub fn enter(
        self: &Arc<Self>,
        key: Uuid,
        max_total: usize,
        max_per_key: usize,
    ) -> Result<WaitSlot, ApiError> {
        let mut counts = self.lock();
        let mine = counts.per_key.get(&key).copied().unwrap_or(0);
        if mine >= max_per_key {
            return Err(refused(format!(
                "this key already holds {mine} waiting requests (?wait=), the most allowed per key; \
                 retry later or ask without wait"
            )));
        }
        if counts.total >= max_total {
            return Err(refused(format!(
                "this server already holds {} waiting requests (?wait=), the most it allows; \
                 retry later or ask without wait",
                counts.total
            )));
        }
        counts.total += 1;
        *counts.per_key.entry(key).or_insert(0) += 1;
        Ok(WaitSlot {
            waits: self.clone(),
            key,
        })
    }

    /// How many requests wait now (the `/metrics` gauge).
    pub fn current(&self) -> usize {
        self.lock().total
    }
}

fn refused(detail: String) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too-many-waits",
        "Too many waiting requests",
        detail,
    )
    .retry_after(RETRY_AFTER_SECS)
}

/// A long poll's slot, given back when the request ends (answered or dropped).
#[derive(Debug)]
pub struct WaitSlot {
    waits: Arc<Waits>,
    key: Uuid,
}

impl Drop for WaitSlot {
    fn drop(&mut self) {
        let mut counts = self.waits.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_key.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.per_key.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_key_and_in_total_and_given_back() {
        let waits = Arc::new(Waits::default());
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let first = waits.enter(a, 3, 2).unwrap();
        let _second = waits.enter(a, 3, 2).unwrap();
        let refused = waits.enter(a, 3, 2).unwrap_err();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(refused.detail.contains("per key"), "{}", refused.detail);
        let _third = waits.enter(b, 3, 2).unwrap();
        let refused = waits.enter(b, 3, 2).unwrap_err();
        assert!(refused.detail.contains("this server"), "{}", refused.detail);
        drop(first);
        assert_eq!(waits.current(), 2);
        waits.enter(a, 3, 2).unwrap();
    }
}
