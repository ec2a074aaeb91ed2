//! `waymark.retention`: Waymark's own housekeeping, run by a built-in schedule an
//! operator can see, pause or retime like any other (`GET /v1/schedules`).
//!
//! ```text
//! sweep ──▶ (completed: how many finished runs were deleted)
//! ```
//! Deletes runs that finished more than `older_than` ago, with their history, and the
//! mail ledger's entries of messages sent before then, in batches; and, given the
//! video uploads, aborts unfinished uploads that have expired (their S3 multipart
//! uploads and staging data; an expired upload already answers 410 until then).
//! Idempotent by nature: a retried sweep deletes what is left.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use waymark_engine::{
    Access, Definition, NoSignal, ResultExt, StateDef, StepContext, StepError, Store, Transition,
    Workflow, WorkflowState,
};

/// The built-in schedule: daily at 03:17 UTC, in the `system` tenant.
pub const SCHEDULE_NAME: &str = "retention";
pub const SCHEDULE_CRON: &str = "17 3 * * *";
pub const TENANT: &str = waymark_engine::SYSTEM_TENANT;

pub struct Retention {
    store: Store,
    uploads: Option<crate::videos::uploads::Uploads>,
}

impl Retention {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            uploads: None,
        }
    }

    /// Also expires abandoned video uploads.
    pub fn with_uploads(mut self, uploads: crate::videos::uploads::Uploads) -> Self {
        self.uploads = Some(uploads);
        self
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionInput {
    /// Finished runs older than this are deleted (e.g. `"30d"`).
    #[serde(with = "humantime_duration")]
    pub older_than: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RetentionState {
    Sweep,
}

impl WorkflowState for RetentionState {
    fn name(&self) -> &'static str {
        "sweep"
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Swept {
    /// Finished runs deleted, with their history.
    pub deleted: u64,
    /// Mail ledger entries of messages sent before the cutoff.
    pub mail_ledger_pruned: u64,
    /// Abandoned video uploads aborted and deleted (when this process keeps uploads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploads_expired: Option<u64>,
}

const BATCH: u32 = 500;

impl Workflow for Retention {
    const NAME: &'static str = "waymark.retention";
    type Input = RetentionInput;
    type State = RetentionState;
    type Output = Swept;
    type Signal = NoSignal;

    fn definition() -> Definition {
        // Deletes every tenant's old runs: the built-in schedule starts it, and an admin
        // may run it by hand.
        Definition::new([StateDef::new("sweep").completes()])
            .access(Access::System)
            .admin_may_start()
    }

    fn initial_state(_: &RetentionInput) -> RetentionState {
        RetentionState::Sweep
    }

    async fn step(
        &self,
        ctx: &StepContext,
        input: &RetentionInput,
        _: RetentionState,
    ) -> Result<Transition<RetentionState, Swept>, StepError> {
        let older_than = chrono::Duration::from_std(input.older_than)
            .map_err(|_| StepError::fatal("older_than is too large"))?;
        let cutoff = ctx.clock.now() - older_than;
        let mut deleted = 0;
        loop {
            let batch = self
                .store
                .runs_delete_finished(ctx.scope(), cutoff, BATCH)
                .await
                .retryable()?;
            deleted += batch;
            if batch < BATCH as u64 {
                break;
            }
        }
        let mut mail_ledger_pruned = 0;
        loop {
            let batch =
                waymark_services::mail::ledger::prune_sent_before(&self.store, cutoff, BATCH)
                    .await
                    .retryable()?;
            mail_ledger_pruned += batch;
            if batch < BATCH as u64 {
                break;
            }
        }
        let uploads_expired = match &self.uploads {
            Some(uploads) => {
                let mut expired = 0;
                loop {
                    // A batch of at most 500 per call; an error is worth a retry (S3,
                    // the disk), and what was done stays done.
                    let batch = uploads
                        .expire_due(ctx.clock.now())
                        .await
                        .map_err(|e| StepError::retryable_from(&e))?;
                    expired += batch;
                    if batch < 500 {
                        break;
                    }
                }
                Some(expired)
            }
            None => None,
        };
        Ok(Transition::complete(Swept {
            deleted,
            mail_ledger_pruned,
            uploads_expired,
        }))
    }
}

/// A required human-friendly duration (`"30d"`).
pub(crate) mod humantime_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| format!("invalid duration {text:?}: {e}"))
            .and_then(waymark_engine::workflow::check_duration)
            .map_err(serde::de::Error::custom)
    }
}
