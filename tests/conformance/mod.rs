//! The store conformance suite: every fact here holds on PostgreSQL and on SQLite.
//!
//! # Layout
//! - this module: builders of the store's requests.
//! - [`runs`]: starting runs idempotently and reading them within a tenant.
//! - [`claims`]: claiming, committing, fencing, heartbeats and release.
//! - [`database`]: the lifecycle's constraints, schema versions, migrations, workers.
//! - [`retention`]: deleting finished runs, and what it keeps.
//! - [`watches`]: waking waiters on a run's end.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;
use waymark_engine::store::{Cause, ClaimRequest, Commit, NewRun, Next, Outcome, Target};

mod claims;
mod database;
mod retention;
mod runs;
mod watches;

fn new_run(workflow: &str, tenant: &str, key: Option<&str>, input: serde_json::Value) -> NewRun {
    NewRun {
        id: Uuid::now_v7(),
        tenant: tenant.into(),
        workflow: workflow.into(),
        workflow_version: 1,
        input,
        state: "a".into(),
        state_data: json!({"state": "a"}),
        capability: None,
        compensable: false,
        idempotency_key: key.map(str::to_owned),
        tags: vec![],
        actor: "key:test".into(),
        now: chrono::Utc::now(),
    }
}

fn claim(worker: Uuid, workflows: &[(&str, u32)], caps: &[&str], lease: Duration) -> ClaimRequest {
    ClaimRequest {
        worker_id: worker,
        workflows: workflows.iter().map(|(n, v)| (n.to_string(), *v)).collect(),
        capabilities: caps.iter().map(|c| c.to_string()).collect(),
        limit: 10,
        lease,
        now: chrono::Utc::now(),
        exclude: vec![],
    }
}

fn enter(state: &str, next: Next) -> Commit {
    let now = chrono::Utc::now();
    Commit {
        from_state: "a".into(),
        from_position: (1, 1),
        outcome: Outcome::Enter {
            target: Target {
                state: state.into(),
                data: json!({"state": state}),
                capability: None,
                compensable: false,
            },
            next,
        },
        cause: Cause::Step,
        actor: "worker:test".into(),
        step_started_at: now,
        now,
        lease: Duration::from_secs(30),
        upgrade: None,
    }
}
