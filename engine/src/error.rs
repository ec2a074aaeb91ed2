//! Errors of the engine layer: what a step reports, and what the store reports.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Whether trying again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// A passing condition (network, timeout, lock): retried under the state's policy.
    Retryable,
    /// Retrying cannot help (bad data, a business rule): the run fails now.
    Fatal,
}

/// A step's failure, as persisted on the run and in its history: a message and the
/// chain of causes beneath it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    pub kind: ErrorKind,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<String>,
}

impl StepError {
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Retryable,
            message: message.into(),
            causes: Vec::new(),
        }
    }

    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Fatal,
            message: message.into(),
            causes: Vec::new(),
        }
    }

    /// Captures `error` and its whole `source()` chain.
    pub fn from_error(kind: ErrorKind, error: &(dyn std::error::Error + 'static)) -> Self {
        let mut causes = Vec::new();
        let mut source = error.source();
        while let Some(cause) = source {
            causes.push(cause.to_string());
            source = cause.source();
        }
        Self {
            kind,
            message: error.to_string(),
            causes,
        }
    }

    pub fn retryable_from(error: &(dyn std::error::Error + 'static)) -> Self {
        Self::from_error(ErrorKind::Retryable, error)
    }

    pub fn fatal_from(error: &(dyn std::error::Error + 'static)) -> Self {
        Self::from_error(ErrorKind::Fatal, error)
    }

    pub fn is_retryable(&self) -> bool {
        self.kind == ErrorKind::Retryable
    }
}

/// Turns any error into a [`StepError`] of the chosen kind: `op().await.retryable()?`.
pub trait ResultExt<T> {
    fn retryable(self) -> Result<T, StepError>;
    fn fatal(self) -> Result<T, StepError>;
}

impl<T, E: std::error::Error + 'static> ResultExt<T> for Result<T, E> {
    fn retryable(self) -> Result<T, StepError> {
        self.map_err(|e| StepError::retryable_from(&e))
    }

    fn fatal(self) -> Result<T, StepError> {
        self.map_err(|e| StepError::fatal_from(&e))
    }
}

/// What the store reports.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The fence did not match: another worker claimed the run after our lease
    /// expired, or it was released. The write was not applied.
    #[error("lease lost on run {run_id} (token {token}): the write was not applied")]
    LeaseLost { run_id: Uuid, token: i64 },
    #[error("run {0} not found")]
    RunNotFound(Uuid),
    /// The operation does not fit the run's current state (a signal to a finished run,
    /// a retry of a compensated one…).
    #[error("{0}")]
    Conflict(String),
    /// The idempotency key was used before with a different input.
    #[error("idempotency key {key:?} was already used for run {existing} with a different input")]
    IdempotencyConflict { key: String, existing: Uuid },
    #[error("{what} is {size} bytes, over the limit of {limit} bytes")]
    PayloadTooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    /// The database holds migrations this binary does not know: it was migrated by a
    /// newer Waymark. Running older code against it could corrupt runs.
    #[error("the database schema is at version {found}, newer than this binary knows (up to {known}); upgrade Waymark")]
    SchemaTooNew { found: i64, known: i64 },
    /// A workflow schema cannot be applied: the database is newer than this binary, or a
    /// shipped migration is malformed or was edited after it was applied.
    #[error("{0}")]
    Schema(String),
    #[error("stored row is corrupt: {0}")]
    Corrupt(String),
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// For code outside the engine whose functions answer `sqlx::Error` and now use the
/// store's SQL seam (`store::sql`): a database error stays itself, anything else (a
/// column that did not decode) becomes a decode error with its message.
impl From<StoreError> for sqlx::Error {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Database(e) => e,
            other => sqlx::Error::Decode(other.to_string().into()),
        }
    }
}

impl StoreError {
    pub fn is_lease_lost(&self) -> bool {
        matches!(self, StoreError::LeaseLost { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner;

    #[test]
    fn step_error_keeps_the_cause_chain() {
        let e = StepError::retryable_from(&Outer(Inner));
        assert_eq!(e.message, "outer");
        assert_eq!(e.causes, vec!["inner".to_owned()]);
        assert!(e.is_retryable());
        let r: Result<(), Outer> = Err(Outer(Inner));
        assert_eq!(r.fatal().unwrap_err().kind, ErrorKind::Fatal);
    }
}
