//! What the API shows of the engine's records.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;
use waymark_engine::store::{Ending, HistoryEntry, KeyRecord, Run};
use waymark_engine::{RunStatus, StepError};

#[derive(Debug, Serialize)]
pub struct Progress {
    pub fraction: f32,
    pub message: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Waiting {
    pub signals: Vec<String>,
    /// When the wait (or timer) gives up or fires.
    pub until: Option<DateTime<Utc>>,
    pub children: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct ParentView {
    pub id: Uuid,
    pub visit: i64,
    pub index: i32,
}

#[derive(Debug, Serialize)]
pub struct RunView {
    pub id: Uuid,
    pub workflow: String,
    pub workflow_version: u32,
    pub tenant: String,
    pub status: RunStatus,
    pub state: String,
    pub state_data: Value,
    pub input: Value,
    pub output: Option<Value>,
    pub error: Option<StepError>,
    pub ending: Option<Ending>,
    pub attempt: i32,
    pub visit: i64,
    pub progress: Option<Progress>,
    pub tags: Vec<String>,
    /// What the run waits for, when `sleeping` or `waiting`.
    pub waiting: Option<Waiting>,
    pub cancel_requested: bool,
    pub held_for_retry: bool,
    pub parent: Option<ParentView>,
    pub children: Vec<Uuid>,
    /// Why a claimable run is not being picked up, when the worker registry says.
    pub pending_reason: Option<String>,
    /// What the workflow adds to its status (a key rotation: its keys and when the old
    /// one was last used).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
    pub due_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl RunView {
    /// The view with the fields its workflow marks sensitive redacted (see
    /// [`waymark_engine::workflow::sensitive`]); every run answer goes through this.
    pub fn redacted(mut self, registry: &waymark_engine::workflow::Registry) -> Self {
        if let Some(workflow) = registry.get(&self.workflow) {
            let definition = workflow.definition();
            definition.redact(&mut self.input);
            definition.redact(&mut self.state_data);
            if let Some(output) = &mut self.output {
                definition.redact(output);
            }
        }
        self
    }

    pub fn new(run: Run) -> Self {
        let waiting = match run.status {
            RunStatus::Waiting => run.waiting_for.as_ref().map(|w| Waiting {
                signals: w.signal_names(),
                until: run.due_at,
                children: w.children.as_ref().map(|c| c.count),
            }),
            RunStatus::Sleeping => Some(Waiting {
                signals: Vec::new(),
                until: run.due_at,
                children: None,
            }),
            _ => None,
        };
        RunView {
            id: run.id,
            workflow: run.workflow,
            workflow_version: run.workflow_version,
            tenant: run.tenant,
            status: run.status,
            state: run.state,
            state_data: run.state_data,
            input: run.input,
            output: run.output,
            error: run.error,
            ending: run.ending,
            attempt: run.attempt,
            visit: run.visit,
            progress: run.progress_pct.map(|fraction| Progress {
                fraction,
                message: run.progress_message,
            }),
            tags: run.tags,
            waiting,
            cancel_requested: run.cancel_request.is_some(),
            held_for_retry: run.held,
            parent: match (run.parent_id, run.parent_visit, run.child_index) {
                (Some(id), Some(visit), Some(index)) => Some(ParentView { id, visit, index }),
                _ => None,
            },
            children: Vec::new(),
            pending_reason: None,
            details: None,
            due_at: run.due_at,
            created_at: run.created_at,
            updated_at: run.updated_at,
            finished_at: run.finished_at,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct HistoryView {
    pub history: Vec<HistoryEntry>,
    /// The `cursor` of the next page; `None` on the last.
    pub next_cursor: Option<String>,
}

/// A key as listed: never its secret or hash.
#[derive(Debug, Serialize)]
pub struct KeyView {
    pub id: Uuid,
    pub tenant: String,
    pub prefix: String,
    pub scopes: Vec<waymark_engine::keys::Scope>,
    pub name: Option<String>,
    pub owner_email: Option<String>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub awaiting_reveal: bool,
    pub revealed_at: Option<DateTime<Utc>>,
    pub suspended: bool,
    pub active: bool,
}

impl KeyView {
    pub fn new(key: KeyRecord, now: DateTime<Utc>) -> Self {
        KeyView {
            active: key.is_active(now),
            id: key.id,
            tenant: key.tenant,
            prefix: key.prefix,
            scopes: key.scopes,
            name: key.name,
            owner_email: key.owner_email,
            created_at: key.created_at,
            created_by: key.created_by,
            expires_at: key.expires_at,
            revoked_at: key.revoked_at,
            last_used_at: key.last_used_at,
            awaiting_reveal: key.awaiting_reveal,
            revealed_at: key.revealed_at,
            suspended: key.suspended_at.is_some(),
        }
    }
}
