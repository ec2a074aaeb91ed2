//! `tenant_deprovisioning`: offboards a tenant, owned by the system (its runs belong to
//! the `system` tenant, started by an admin through `POST /v1/tenants/{slug}/deprovision`).
//!
//! ```text
//! suspend ─▶ export ─▶ retain ──restore──▶ restore ─▶ (completed: restored)
//!    ↺         ↺         └──timer──▶ purge ─▶ delete_keys ─▶ forget ─▶ finish ─▶ (completed: deleted)
//! ```
//! - `suspend`: the run claims the tenant (one deprovisioning at a time), marks it
//!   `suspended`, suspends its keys (they answer 401), pauses its schedules (noting
//!   which, for a restore) and cancels its live runs.
//! - `export`: its database space as JSON Lines per table, a manifest of its stored
//!   objects, its runs with their history, and a `manifest.json` with the SHA-256 of each
//!   file and one checksum over them, under `exports/<installation>/<slug>/<run>/`. The
//!   export is outside the tenant's storage space: it outlives the tenant.
//! - `retain`: waits out the retention period (`WAYMARK_TENANT_RETENTION`); the signal
//!   `restore` (accepted only while waiting) leads to `restore`, which reactivates the
//!   tenant and deletes the export.
//! - `purge` (database and storage space), `delete_keys`, `forget` (the tenant's
//!   schedules, its runs with their history and signals, and their mail ledger rows in
//!   Waymark's own tables),
//!   `finish` (`deleted`, with an audit record, in one transaction).
//!
//! Deleting cannot be undone halfway, so a failure holds the run for an operator to
//! retry (`on_failure: hold`) instead of compensating. Cancelling the run before
//! deletion began (↺) deletes the export and reactivates the tenant; once `purge` has
//! begun, the tenant stays suspended and the export stays.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;
use waymark_engine::store::{HistoryEntry, NewAudit, RunFilter};
use waymark_engine::{
    Access, Definition, OnFailure, RetryPolicy, RunStatus, StateDef, StepContext, StepError,
    StoreError, TenantScope, Transition, Wait, Workflow, WorkflowSignal, WorkflowState,
};
use waymark_services::PutOptions;

use crate::tenants::export::{ExportedFile, JsonlWriter};
use crate::tenants::names::export_prefix;
use crate::tenants::record::{self, DeprovisionClaim, ResourceKind};
use crate::tenants::{keys, space, storage, TenantDeps, TenantError};

pub struct TenantDeprovisioning {
    deps: TenantDeps,
}

impl TenantDeprovisioning {
    pub fn new(deps: TenantDeps) -> Self {
        Self { deps }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeprovisioningInput {
    pub slug: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DeprovisioningState {
    Suspend,
    Export,
    Retain { purge_at: DateTime<Utc> },
    Restore,
    Purge,
    DeleteKeys,
    Forget,
    Finish,
}

impl WorkflowState for DeprovisioningState {
    fn name(&self) -> &'static str {
        match self {
            DeprovisioningState::Suspend => "suspend",
            DeprovisioningState::Export => "export",
            DeprovisioningState::Retain { .. } => "retain",
            DeprovisioningState::Restore => "restore",
            DeprovisioningState::Purge => "purge",
            DeprovisioningState::DeleteKeys => "delete_keys",
            DeprovisioningState::Forget => "forget",
            DeprovisioningState::Finish => "finish",
        }
    }
}

/// `restore`: keep the tenant (sent to the run while it waits out the retention).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "signal", content = "payload", rename_all = "snake_case")]
pub enum DeprovisioningSignal {
    Restore,
}

impl WorkflowSignal for DeprovisioningSignal {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeprovisioningOutcome {
    Restored,
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeprovisioningOutput {
    pub slug: String,
    pub outcome: DeprovisioningOutcome,
    /// Where the export is kept (after a deletion).
    pub export_prefix: Option<String>,
}

/// Runs deleted per transaction by `forget`.
const FORGET_BATCH: u32 = 500;
/// Runs read per page when cancelling or exporting.
const PAGE: u32 = 200;

impl Workflow for TenantDeprovisioning {
    const NAME: &'static str = "tenant_deprovisioning";
    type Input = DeprovisioningInput;
    type State = DeprovisioningState;
    type Output = DeprovisioningOutput;
    type Signal = DeprovisioningSignal;

    fn definition() -> Definition {
        Definition::new([
            StateDef::new("suspend").next("export").compensates(),
            StateDef::new("export").next("retain").compensates(),
            StateDef::new("retain")
                .on_signal("restore", "restore")
                .timer("purge"),
            StateDef::new("restore").completes(),
            StateDef::new("purge").next("delete_keys"),
            StateDef::new("delete_keys").next("forget"),
            StateDef::new("forget").next("finish"),
            StateDef::new("finish").completes(),
        ])
        .signal_only_while_waiting("restore")
        .on_failure(OnFailure::Hold)
        // Suspends and deletes another tenant: only `POST /v1/tenants/{slug}/deprovision`.
        .access(Access::System)
        .with_retry(RetryPolicy {
            max_attempts: 8,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            jitter: 0.2,
            step_timeout: Duration::from_secs(600),
        })
    }

    fn initial_state(_: &DeprovisioningInput) -> DeprovisioningState {
        DeprovisioningState::Suspend
    }

    async fn step(
        &self,
        ctx: &StepContext,
        input: &DeprovisioningInput,
        state: DeprovisioningState,
    ) -> Result<Transition<DeprovisioningState, DeprovisioningOutput>, StepError> {
        let deps = &self.deps;
        let store = deps.store();
        let slug = input.slug.as_str();
        let now = ctx.clock.now();
        match state {
            DeprovisioningState::Suspend => {
                match record::claim_deprovision(store, slug, ctx.run_id, now)
                    .await
                    .map_err(TenantError::from)?
                {
                    DeprovisionClaim::Claimed(_) => {}
                    DeprovisionClaim::HeldBy(other) => {
                        return Err(StepError::fatal(format!(
                            "tenant {slug:?} is being deprovisioned by run {other}"
                        )))
                    }
                    DeprovisionClaim::NotActive(status) => {
                        return Err(StepError::fatal(format!(
                            "tenant {slug:?} is {status}; only an active tenant is deprovisioned"
                        )))
                    }
                    DeprovisionClaim::NotFound => {
                        return Err(StepError::fatal(format!("tenant {slug:?} not found")))
                    }
                }
                record::suspend(store, slug, ctx.run_id, now)
                    .await
                    .map_err(TenantError::from)?;
                store
                    .keys_suspend(slug, Some(now))
                    .await
                    .map_err(TenantError::from)?;
                pause_schedules(deps, slug, ctx.run_id, now).await?;
                cancel_runs(deps, slug, ctx.run_id, now).await?;
                Ok(Transition::next(DeprovisioningState::Export))
            }
            DeprovisioningState::Export => {
                let prefix = self.export(ctx, slug).await?;
                record::set_export(store, slug, ctx.run_id, Some(&prefix), now)
                    .await
                    .map_err(TenantError::from)?;
                record::resource_add(store, slug, ResourceKind::Export, &prefix, ctx.run_id, now)
                    .await
                    .map_err(TenantError::from)?;
                let retention =
                    chrono::Duration::from_std(deps.retention()).unwrap_or(chrono::Duration::MAX);
                Ok(Transition::next(DeprovisioningState::Retain {
                    purge_at: now
                        .checked_add_signed(retention)
                        .unwrap_or(DateTime::<Utc>::MAX_UTC),
                }))
            }
            DeprovisioningState::Retain { purge_at } => {
                Ok(Wait::on("restore", DeprovisioningState::Restore)
                    .timeout_at(purge_at, DeprovisioningState::Purge)
                    .into())
            }
            DeprovisioningState::Restore => {
                // The export first: clearing it is fenced by this run's hold on the tenant,
                // which the reactivation releases.
                self.remove_export(ctx, slug).await?;
                let restored = self.undo_suspension(ctx, slug).await?;
                if restored {
                    audit(deps, slug, ctx.run_id, "tenant.restored", json!({}), now).await?;
                }
                Ok(Transition::complete(DeprovisioningOutput {
                    slug: slug.to_owned(),
                    outcome: DeprovisioningOutcome::Restored,
                    export_prefix: None,
                }))
            }
            DeprovisioningState::Purge => {
                record::begin_purge(store, slug, ctx.run_id, now).await?;
                space::remove(deps, slug).await?;
                storage::remove(deps, slug).await?;
                Ok(Transition::next(DeprovisioningState::DeleteKeys))
            }
            DeprovisioningState::DeleteKeys => {
                keys::remove(deps, slug, None, ctx.run_id, "tenant deleted", now).await?;
                Ok(Transition::next(DeprovisioningState::Forget))
            }
            DeprovisioningState::Forget => {
                let scope = TenantScope::Tenant(slug.to_owned());
                for schedule in store
                    .schedule_list(&scope)
                    .await
                    .map_err(TenantError::from)?
                {
                    store
                        .schedule_delete(&scope, schedule.id)
                        .await
                        .map_err(TenantError::from)?;
                }
                terminate_runs(deps, slug, ctx.run_id, now).await?;
                let live = store
                    .runs_live_count(slug)
                    .await
                    .map_err(TenantError::from)?;
                if live > 0 {
                    return Err(TenantError::NotYet(format!(
                        "{live} runs of tenant {slug:?} have not ended yet"
                    ))
                    .into());
                }
                let (_, messages) = record::forget_runs(store, slug, FORGET_BATCH)
                    .await
                    .map_err(TenantError::from)?;
                remove_outbox_files(deps, &messages).await?;
                record::forget_workflow_rows(store, slug)
                    .await
                    .map_err(TenantError::from)?;
                Ok(Transition::next(DeprovisioningState::Finish))
            }
            DeprovisioningState::Finish => {
                let tenant = record::get(store, slug)
                    .await
                    .map_err(TenantError::from)?
                    .ok_or_else(|| StepError::fatal(format!("tenant {slug:?} not found")))?;
                let export_prefix = tenant.export_prefix.clone();
                if tenant.status != record::TenantStatus::Deleted {
                    record::mark_deleted(
                        store,
                        slug,
                        ctx.run_id,
                        json!({ "export_prefix": export_prefix, "run": ctx.run_id }),
                        now,
                    )
                    .await
                    .map_err(TenantError::from)?;
                    let after = record::get(store, slug)
                        .await
                        .map_err(TenantError::from)?
                        .map(|t| t.status);
                    if after != Some(record::TenantStatus::Deleted) {
                        return Err(StepError::fatal(format!(
                            "tenant {slug:?} is {after:?}, not suspended by run {}",
                            ctx.run_id
                        )));
                    }
                }
                Ok(Transition::complete(DeprovisioningOutput {
                    slug: slug.to_owned(),
                    outcome: DeprovisioningOutcome::Deleted,
                    export_prefix,
                }))
            }
        }
    }

    async fn compensate(
        &self,
        ctx: &StepContext,
        input: &DeprovisioningInput,
        state: DeprovisioningState,
    ) -> Result<(), StepError> {
        match state {
            DeprovisioningState::Suspend => {
                self.undo_suspension(ctx, &input.slug).await?;
            }
            DeprovisioningState::Export => {
                let purging = record::get(self.deps.store(), &input.slug)
                    .await
                    .map_err(TenantError::from)?
                    .is_some_and(|t| t.purge_started_at.is_some());
                // Once deletion has begun the export is all that will remain: keep it.
                if !purging {
                    self.remove_export(ctx, &input.slug).await?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl TenantDeprovisioning {
    /// Reactivates the tenant and its keys if this run still holds it and deletion has
    /// not begun. True if it did; tolerates a tenant this run never claimed.
    async fn undo_suspension(&self, ctx: &StepContext, slug: &str) -> Result<bool, StepError> {
        let store = self.deps.store();
        let now = ctx.clock.now();
        let tenant = record::get(store, slug).await.map_err(TenantError::from)?;
        let Some(paused) = tenant
            .filter(|t| t.deprovision_run_id == Some(ctx.run_id) && t.purge_started_at.is_none())
            .map(|t| t.paused_schedules)
        else {
            return Ok(false);
        };
        // Keys and schedules first: if we stop before the row is reactivated, it still
        // names this run (and the paused schedules) and the next attempt does it all again.
        store
            .keys_suspend(slug, None)
            .await
            .map_err(TenantError::from)?;
        let scope = TenantScope::Tenant(slug.to_owned());
        for id in &paused {
            let schedule = store
                .schedule_get(&scope, *id)
                .await
                .map_err(TenantError::from)?;
            if let Some(mut schedule) = schedule.filter(|s| s.paused) {
                schedule.paused = false;
                store
                    .schedule_update(&schedule)
                    .await
                    .map_err(TenantError::from)?;
            }
        }
        Ok(record::reactivate(store, slug, ctx.run_id, now)
            .await
            .map_err(TenantError::from)?)
    }

    async fn remove_export(&self, ctx: &StepContext, slug: &str) -> Result<(), StepError> {
        let deps = &self.deps;
        let prefix = export_prefix(deps.installation().await?, slug, ctx.run_id);
        storage::delete_prefix(deps.blobs(), &prefix).await?;
        record::set_export(deps.store(), slug, ctx.run_id, None, ctx.clock.now())
            .await
            .map_err(TenantError::from)?;
        record::resource_remove(deps.store(), slug, ResourceKind::Export, Some(&prefix))
            .await
            .map_err(TenantError::from)?;
        Ok(())
    }

    /// Writes the export and returns its prefix. Every file is rewritten by a retry, so
    /// a crash mid-export leaves no partial manifest behind a complete-looking one: the
    /// manifest is written last.
    async fn export(&self, ctx: &StepContext, slug: &str) -> Result<String, StepError> {
        let deps = &self.deps;
        let installation = deps.installation().await?;
        let prefix = export_prefix(installation, slug, ctx.run_id);
        let mut files: Vec<ExportedFile> =
            space::export(deps, slug, &format!("{prefix}tables/")).await?;

        let objects = storage::objects(deps, slug).await?;
        let mut file = JsonlWriter::create(deps.blobs(), &format!("{prefix}objects.jsonl")).await?;
        let filled = object_lines(&objects, &mut file).await;
        files.push(file.finish_if(filled).await?);

        let mut file = JsonlWriter::create(deps.blobs(), &format!("{prefix}runs.jsonl")).await?;
        let filled = run_lines(deps, slug, &mut file).await;
        files.push(file.finish_if(filled).await?);

        let mut summary = String::new();
        for file in &files {
            summary.push_str(&format!("{}  {}\n", file.sha256, file.key));
        }
        let manifest = json!({
            "tenant": slug,
            "installation": installation,
            "run": ctx.run_id,
            "exported_at": ctx.clock.now(),
            "files": files.iter().map(ExportedFile::manifest_entry).collect::<Vec<_>>(),
            // SHA-256 over `<sha256>  <key>\n` per file, in this order (sha256sum's format).
            "checksum": hex::encode(Sha256::digest(summary.as_bytes())),
        });
        deps.blobs()
            .put_bytes(
                &format!("{prefix}manifest.json"),
                serde_json::to_vec_pretty(&manifest).expect("manifest serialises"),
                PutOptions::content_type("application/json"),
            )
            .await
            .map_err(TenantError::from)?;
        Ok(prefix)
    }
}

/// The tenant's stored objects, one per line.
async fn object_lines(
    objects: &[waymark_services::BlobMeta],
    file: &mut JsonlWriter,
) -> Result<(), TenantError> {
    for object in objects {
        let line = json!({
            "key": object.key,
            "size": object.size,
            "etag": object.etag,
            "sha256": object.sha256,
            "last_modified": object.last_modified,
        });
        file.line(&line.to_string()).await?;
    }
    Ok(())
}

/// The tenant's runs, newest first, one per line with its history: a page of runs and
/// their histories at a time, written before the next page is read.
async fn run_lines(
    deps: &TenantDeps,
    slug: &str,
    file: &mut JsonlWriter,
) -> Result<(), TenantError> {
    let store = deps.store();
    let scope = TenantScope::Tenant(slug.to_owned());
    let mut before = None;
    loop {
        let page = store
            .runs_list(&scope, &RunFilter::default(), before, PAGE)
            .await?;
        let ids: Vec<Uuid> = page.iter().map(|r| r.id).collect();
        let mut histories: HashMap<Uuid, Vec<HistoryEntry>> = HashMap::new();
        for entry in store.runs_history(&scope, &ids).await? {
            histories.entry(entry.run_id).or_default().push(entry);
        }
        for run in &page {
            let history = histories.remove(&run.id).unwrap_or_default();
            file.line(&json!({ "run": run, "history": history }).to_string())
                .await?;
        }
        match page.last() {
            Some(last) if page.len() == PAGE as usize => before = Some(last.id),
            _ => return Ok(()),
        }
    }
}

/// Every live run of the tenant (any page), for `act` to end.
async fn live_run_ids(deps: &TenantDeps, slug: &str) -> Result<Vec<(Uuid, RunStatus)>, StepError> {
    let scope = TenantScope::Tenant(slug.to_owned());
    let (mut live, mut before) = (Vec::new(), None);
    loop {
        let page = deps
            .store()
            .runs_list(&scope, &RunFilter::default(), before, PAGE)
            .await
            .map_err(TenantError::from)?;
        live.extend(
            page.iter()
                .filter(|r| !r.status.is_terminal())
                .map(|r| (r.id, r.status)),
        );
        match page.last() {
            Some(last) if page.len() == PAGE as usize => before = Some(last.id),
            _ => return Ok(live),
        }
    }
}

/// Pauses the tenant's running schedules, noting them first so a restore resumes
/// exactly those (and not the ones its operators had paused themselves).
async fn pause_schedules(
    deps: &TenantDeps,
    slug: &str,
    run: Uuid,
    now: DateTime<Utc>,
) -> Result<(), StepError> {
    let store = deps.store();
    let running: Vec<_> = store
        .schedule_list(&TenantScope::Tenant(slug.to_owned()))
        .await
        .map_err(TenantError::from)?
        .into_iter()
        .filter(|s| !s.paused)
        .collect();
    let ids: Vec<Uuid> = running.iter().map(|s| s.id).collect();
    record::remember_paused(store, slug, run, &ids, now)
        .await
        .map_err(TenantError::from)?;
    for mut schedule in running {
        schedule.paused = true;
        store
            .schedule_update(&schedule)
            .await
            .map_err(TenantError::from)?;
    }
    Ok(())
}

/// Cancels the tenant's live runs (they compensate, then end). Runs already
/// compensating, or ended meanwhile, are left as they are.
async fn cancel_runs(
    deps: &TenantDeps,
    slug: &str,
    run: Uuid,
    now: DateTime<Utc>,
) -> Result<(), StepError> {
    let scope = TenantScope::Tenant(slug.to_owned());
    let reason = format!("tenant {slug} suspended for deprovisioning");
    for (id, status) in live_run_ids(deps, slug).await? {
        if matches!(
            status,
            RunStatus::Compensating | RunStatus::CompensationFailed
        ) {
            continue;
        }
        match deps
            .store()
            .run_cancel(&scope, id, &format!("run:{run}"), &reason, None, now)
            .await
        {
            Ok(_) | Err(StoreError::Conflict(_) | StoreError::RunNotFound(_)) => {}
            Err(e) => return Err(TenantError::from(e).into()),
        }
    }
    Ok(())
}

/// Ends whatever of the tenant still runs at once, without compensation: its space is
/// gone, so there is nothing left to compensate against.
async fn terminate_runs(
    deps: &TenantDeps,
    slug: &str,
    run: Uuid,
    now: DateTime<Utc>,
) -> Result<(), StepError> {
    let scope = TenantScope::Tenant(slug.to_owned());
    let reason = format!("tenant {slug} deleted");
    for (id, _) in live_run_ids(deps, slug).await? {
        match deps
            .store()
            .run_terminate(&scope, id, &format!("run:{run}"), &reason, None, now)
            .await
        {
            Ok(_) | Err(StoreError::Conflict(_) | StoreError::RunNotFound(_)) => {}
            Err(e) => return Err(TenantError::from(e).into()),
        }
    }
    Ok(())
}

/// Deletes the embedded outbox's `.eml` files of those messages, if any. The mailer
/// names each file after its `Message-ID` (`<stem@domain>` → `stem.eml`, see
/// `waymark_services::Mailer::send`); with SMTP there are none. A crash after the
/// ledger rows went leaves files behind; they hold no more than the relay was sent.
async fn remove_outbox_files(deps: &TenantDeps, messages: &[String]) -> Result<(), StepError> {
    let dir = deps.data_dir().join("outbox");
    for id in messages {
        let stem = id.trim_start_matches('<').split('@').next().unwrap_or("");
        if stem.is_empty() || stem.contains(['/', '\\']) || stem.starts_with('.') {
            continue;
        }
        let path = dir.join(format!("{stem}.eml"));
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(TenantError::Io {
                    action: "remove",
                    path,
                    source,
                }
                .into())
            }
        }
    }
    Ok(())
}

async fn audit(
    deps: &TenantDeps,
    slug: &str,
    run: Uuid,
    action: &str,
    detail: serde_json::Value,
    now: DateTime<Utc>,
) -> Result<(), StepError> {
    deps.store()
        .audit_append(&NewAudit {
            tenant: slug.to_owned(),
            actor: format!("run:{run}"),
            action: action.to_owned(),
            target: Some(format!("tenant:{slug}")),
            detail,
            address: None,
            at: now,
        })
        .await
        .map_err(TenantError::from)?;
    Ok(())
}
