//! The run lifecycle.
//!
//! Written once here and mirrored by the CHECK constraints in `migrations/*/0001_runs.sql`
//! and the diagram in README.md; a conformance test inserts every status this enum
//! knows and checks that the database accepts exactly these.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Due now (or at `due_at`), waiting for a worker to claim it.
    Pending,
    /// A worker holds its lease and is executing the current state's step.
    Running,
    /// Parked on a durable timer until `due_at`.
    Sleeping,
    /// Waiting for something outside: a signal or child runs.
    Waiting,
    /// The step failed with a retryable error; it runs again at `due_at`.
    Retrying,
    /// Undoing completed states in reverse after a failure or cancellation.
    Compensating,
    /// Finished with an output.
    Completed,
    /// Finished with an error after its retries (and compensation, if any).
    Failed,
    /// Stopped by an operator or by the workflow itself.
    Cancelled,
    /// A compensation exhausted its retries; an operator must retry or skip it.
    CompensationFailed,
}

impl RunStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [RunStatus; 10] = [
        RunStatus::Pending,
        RunStatus::Running,
        RunStatus::Sleeping,
        RunStatus::Waiting,
        RunStatus::Retrying,
        RunStatus::Compensating,
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Cancelled,
        RunStatus::CompensationFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Sleeping => "sleeping",
            RunStatus::Waiting => "waiting",
            RunStatus::Retrying => "retrying",
            RunStatus::Compensating => "compensating",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::CompensationFailed => "compensation_failed",
        }
    }

    /// Terminal runs never change again (retention deletes them eventually).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled
        )
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown run status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for RunStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_round_trips_through_its_name() {
        for status in RunStatus::ALL {
            assert_eq!(status.as_str().parse::<RunStatus>().unwrap(), status);
            let json = serde_json::to_string(&status).unwrap();
            assert_eq!(json, format!("\"{}\"", status.as_str()));
        }
        assert!("done".parse::<RunStatus>().is_err());
    }
}
