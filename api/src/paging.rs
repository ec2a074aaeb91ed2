//! Keyset pagination, the same on every list route: `limit` (1 to 500, 50 when absent)
//! and `cursor`, which a client copies unread from the previous page's `next_cursor`.
//! The answer carries `next_cursor: null` on the last page.
//!
//! The store does the paging in SQL (`WHERE key > cursor ORDER BY key LIMIT n`); this
//! only reads the two parameters and decides whether another page follows, by asking
//! the store for one item more than the page holds. So `next_cursor` is null exactly
//! on the last page, and a client never fetches an empty one.

use std::fmt::Display;

use crate::error::{ApiError, ApiResult};

pub(crate) const DEFAULT_LIMIT: u32 = 50;
pub(crate) const MAX_LIMIT: u32 = 500;

/// The page a request asks for: after the item `after` (exclusive), `limit` at most.
#[derive(Debug, Clone)]
pub(crate) struct Page<C> {
    pub after: Option<C>,
    pub limit: u32,
}

impl<C> Page<C> {
    /// Reads `limit` and `cursor` from the query; `parse` turns a cursor back into the
    /// key it was made from (`None`: not a cursor this route hands out).
    pub(crate) fn from_query(
        query: &[(String, String)],
        parse: impl FnOnce(&str) -> Option<C>,
    ) -> ApiResult<Page<C>> {
        let value = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let limit = match value("limit") {
            None => DEFAULT_LIMIT,
            Some(text) => text
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_LIMIT).contains(n))
                .ok_or_else(|| {
                    ApiError::invalid(format!("limit: expected 1 to {MAX_LIMIT}, got {text:?}"))
                })?,
        };
        let after = match value("cursor") {
            None => None,
            Some(text) => Some(parse(text).ok_or_else(|| {
                ApiError::invalid(format!(
                    "cursor: {text:?} is not a cursor from a previous page"
                ))
            })?),
        };
        Ok(Page { after, limit })
    }

    /// The page of a list route that takes no parameter but `limit` and `cursor`: reads
    /// them from the raw query and refuses any other.
    pub(crate) fn only(
        raw: Option<String>,
        parse: impl FnOnce(&str) -> Option<C>,
    ) -> ApiResult<Page<C>> {
        let query = crate::routes::params(raw);
        known_only(&query, &["cursor", "limit"])?;
        Self::from_query(&query, parse)
    }

    /// How many items to ask the store for: one more than the page, to learn whether
    /// another page follows.
    pub(crate) fn fetch(&self) -> u32 {
        self.limit + 1
    }

    /// Cuts what the store answered to the page and names the cursor of the next page
    /// (the key of the page's last item), `None` when nothing follows.
    pub(crate) fn finish<T, K: Display>(
        &self,
        mut items: Vec<T>,
        key: impl Fn(&T) -> K,
    ) -> (Vec<T>, Option<String>) {
        let more = items.len() > self.limit as usize;
        items.truncate(self.limit as usize);
        let next = more
            .then(|| items.last().map(|item| key(item).to_string()))
            .flatten();
        (items, next)
    }
}

/// Refuses query parameters a route does not know, so a misspelt `limt=10` is an error
/// rather than a silently full page.
pub(crate) fn known_only(query: &[(String, String)], known: &[&str]) -> ApiResult<()> {
    match query.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        Some((other, _)) => Err(ApiError::invalid(format!(
            "unknown query parameter {other:?}"
        ))),
        None => Ok(()),
    }
}
