//! `tenant_provisioning`: onboards a customer as a saga. Each resource is made by one
//! step, and a failure anywhere (after retries) or a cancel undoes what was done, newest
//! first, leaving nothing of the tenant but its record, `failed` with the reason.
//!
//! ```text
//! record ─▶ database ─▶ storage ─▶ admin_key ─▶ welcome ─▶ activate ─▶ (completed)
//!   ↺          ↺           ↺           ↺
//! ```
//! (↺: undone by `compensate` — the tenant marked `failed`, the database space dropped,
//! the storage space emptied and removed, the admin key revoked and deleted.)
//!
//! - `record`: the tenant row, `provisioning`, naming this run. The API reserves it in
//!   the transaction that starts the run on PostgreSQL; on SQLite the API inserts it
//!   right after the start and this step inserts it if a crash came between. A slug
//!   another run holds fails the run without touching that tenant.
//! - `database`: schema + NOLOGIN role (PostgreSQL) or a file (SQLite) with the tenant
//!   migration set, the plan's quotas and the admin as first member.
//! - `storage`: the prefix `tenants/<installation>/<slug>/` with a manifest (quota).
//! - `admin_key`: an `operator` key of the tenant, its secret sealed until revealed once
//!   through `POST /v1/keys/{id}/reveal`; it is never emailed.
//! - `welcome`: the welcome email, sent once per visit (the mail ledger).
//! - `activate`: the tenant becomes `active`.
//!
//! Every step finds what an earlier attempt made (by the slug, or by the run for the
//! key) instead of making a second one.

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use waymark_engine::keys::{IssueKey, Scope};
use waymark_engine::{
    Access, Definition, NoSignal, RetryPolicy, StateDef, StepContext, StepError, TenantScope,
    Transition, Workflow, WorkflowState,
};
use waymark_services::Email;

use crate::tenants::names::{self, SYSTEM_TENANT};
use crate::tenants::record::{self, NewTenant, Reservation, ResourceKind};
use crate::tenants::space::{self, SpaceSpec};
use crate::tenants::{keys, storage, TenantDeps, TenantError};

/// The name the admin key is given; it is found again by its creator, `run:<id>`.
pub const ADMIN_KEY_NAME: &str = "tenant admin";

pub struct TenantProvisioning {
    deps: TenantDeps,
}

impl TenantProvisioning {
    pub fn new(deps: TenantDeps) -> Self {
        Self { deps }
    }
}

/// The input: what `POST /v1/tenants` accepted, with the plan's quotas copied in.
pub type ProvisioningInput = NewTenant;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ProvisioningState {
    Record,
    Database,
    Storage,
    AdminKey,
    Welcome { admin_key_id: Uuid },
    Activate { admin_key_id: Uuid },
}

impl WorkflowState for ProvisioningState {
    fn name(&self) -> &'static str {
        match self {
            ProvisioningState::Record => "record",
            ProvisioningState::Database => "database",
            ProvisioningState::Storage => "storage",
            ProvisioningState::AdminKey => "admin_key",
            ProvisioningState::Welcome { .. } => "welcome",
            ProvisioningState::Activate { .. } => "activate",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProvisioningOutput {
    pub slug: String,
    pub admin_key_id: Uuid,
}

/// Who made the admin key: how a retried step finds it.
fn key_creator(run: Uuid) -> String {
    format!("run:{run}")
}

impl Workflow for TenantProvisioning {
    const NAME: &'static str = "tenant_provisioning";
    type Input = ProvisioningInput;
    type State = ProvisioningState;
    type Output = ProvisioningOutput;
    type Signal = NoSignal;

    fn definition() -> Definition {
        Definition::new([
            StateDef::new("record").next("database").compensates(),
            StateDef::new("database").next("storage").compensates(),
            StateDef::new("storage").next("admin_key").compensates(),
            StateDef::new("admin_key").next("welcome").compensates(),
            StateDef::new("welcome").next("activate"),
            StateDef::new("activate").completes(),
        ])
        // Reserves slugs and creates another tenant's resources: only `POST
        // /v1/tenants` starts it, after checking the slug and plan.
        .access(Access::System)
        .with_retry(RetryPolicy {
            max_attempts: 5,
            initial_delay: std::time::Duration::from_secs(1),
            max_delay: std::time::Duration::from_secs(60),
            jitter: 0.2,
            step_timeout: std::time::Duration::from_secs(120),
        })
    }

    fn initial_state(_: &ProvisioningInput) -> ProvisioningState {
        ProvisioningState::Record
    }

    async fn step(
        &self,
        ctx: &StepContext,
        input: &ProvisioningInput,
        state: ProvisioningState,
    ) -> Result<Transition<ProvisioningState, ProvisioningOutput>, StepError> {
        let deps = &self.deps;
        let now = ctx.clock.now();
        match state {
            ProvisioningState::Record => {
                if let Some(problem) = slug_problem(&input.slug) {
                    return Err(StepError::fatal(problem));
                }
                match record::reserve_for_run(deps.store(), input, ctx.run_id, now).await? {
                    Reservation::Ours(_) => Ok(Transition::next(ProvisioningState::Database)),
                    Reservation::Taken(other) => Err(StepError::fatal(format!(
                        "slug {:?} is taken (tenant {}, run {:?})",
                        input.slug, other.status, other.run_id
                    ))),
                }
            }
            ProvisioningState::Database => {
                space::create(
                    deps,
                    &SpaceSpec {
                        slug: &input.slug,
                        plan: &input.plan,
                        quota: input.quota,
                        admin_email: &input.admin_email,
                        run: ctx.run_id,
                        now,
                    },
                )
                .await?;
                Ok(Transition::next(ProvisioningState::Storage))
            }
            ProvisioningState::Storage => {
                storage::create(deps, &input.slug, &input.plan, input.quota, ctx.run_id, now)
                    .await?;
                Ok(Transition::next(ProvisioningState::AdminKey))
            }
            ProvisioningState::AdminKey => {
                let admin_key_id = self.admin_key(ctx, input).await?;
                Ok(Transition::next(ProvisioningState::Welcome {
                    admin_key_id,
                }))
            }
            ProvisioningState::Welcome { admin_key_id } => {
                deps.mailer()
                    .send(&ctx.idempotency_key(0), welcome_email(input, admin_key_id))
                    .await?;
                Ok(Transition::next(ProvisioningState::Activate {
                    admin_key_id,
                }))
            }
            ProvisioningState::Activate { admin_key_id } => {
                record::activate(deps.store(), &input.slug, ctx.run_id, admin_key_id, now).await?;
                Ok(Transition::complete(ProvisioningOutput {
                    slug: input.slug.clone(),
                    admin_key_id,
                }))
            }
        }
    }

    async fn compensate(
        &self,
        ctx: &StepContext,
        input: &ProvisioningInput,
        state: ProvisioningState,
    ) -> Result<(), StepError> {
        let deps = &self.deps;
        let now = ctx.clock.now();
        match state {
            ProvisioningState::Record => {
                let reason = failure_reason(deps, ctx.run_id).await?;
                record::fail(deps.store(), &input.slug, ctx.run_id, &reason, now)
                    .await
                    .map_err(TenantError::from)?;
            }
            ProvisioningState::Database => space::remove(deps, &input.slug).await?,
            ProvisioningState::Storage => {
                storage::remove(deps, &input.slug).await?;
            }
            ProvisioningState::AdminKey => {
                keys::remove(
                    deps,
                    &input.slug,
                    Some(&key_creator(ctx.run_id)),
                    ctx.run_id,
                    "tenant provisioning undone",
                    now,
                )
                .await?;
            }
            // Mail cannot be unsent; activation completes the run, so is never undone.
            ProvisioningState::Welcome { .. } | ProvisioningState::Activate { .. } => {}
        }
        Ok(())
    }
}

impl TenantProvisioning {
    /// Issues the tenant's admin key, or finds the one an earlier attempt of this run
    /// issued. Two attempts racing (a lost lease) may both issue: the oldest key is kept
    /// and the others revoked, so every attempt settles on the same key.
    async fn admin_key(
        &self,
        ctx: &StepContext,
        input: &ProvisioningInput,
    ) -> Result<Uuid, StepError> {
        let deps = &self.deps;
        let store = deps.store();
        let scope = TenantScope::Tenant(input.slug.clone());
        let creator = key_creator(ctx.run_id);
        let now = ctx.clock.now();
        let mine = |keys: Vec<waymark_engine::store::KeyRecord>| -> Vec<_> {
            let mut keys: Vec<_> = keys
                .into_iter()
                .filter(|k| k.created_by == creator && k.revoked_at.is_none())
                .collect();
            keys.sort_by_key(|k| k.id);
            keys
        };
        let mut found = mine(store.key_list(&scope).await.map_err(TenantError::from)?);
        if found.is_empty() {
            waymark_engine::keys::issue_sealed(
                store,
                deps.sealer(),
                IssueKey {
                    tenant: input.slug.clone(),
                    scopes: vec![Scope::Operator],
                    name: Some(ADMIN_KEY_NAME.into()),
                    owner_email: Some(input.admin_email.clone()),
                    expires_at: None,
                    actor: creator.clone(),
                    address: None,
                },
                now,
            )
            .await
            .map_err(TenantError::from)?;
            found = mine(store.key_list(&scope).await.map_err(TenantError::from)?);
        }
        let Some(kept) = found.first() else {
            return Err(StepError::retryable(
                "the admin key just issued is not listed",
            ));
        };
        for extra in &found[1..] {
            keys::revoke(
                deps,
                &input.slug,
                extra.id,
                &creator,
                "duplicate admin key",
                now,
            )
            .await?;
        }
        record::resource_add(
            store,
            &input.slug,
            ResourceKind::ApiKey,
            &kept.id.to_string(),
            ctx.run_id,
            now,
        )
        .await
        .map_err(TenantError::from)?;
        Ok(kept.id)
    }
}

/// The welcome message: where the tenant stands and how its admin key is revealed. It
/// never carries a secret.
pub fn welcome_email(input: &ProvisioningInput, admin_key_id: Uuid) -> Email {
    let runs = input
        .quota
        .runs
        .map_or_else(|| "unlimited".to_owned(), |r| r.to_string());
    Email::new()
        .to(input.admin_email.clone())
        .subject(format!("Welcome to Waymark, {}", input.name))
        .text(format!(
            "Hello,\n\n\
             your Waymark tenant \"{slug}\" ({name}) is ready on the {plan} plan \
             ({storage} bytes of storage, {runs} runs).\n\n\
             Its admin API key is {admin_key_id}. For your safety this message does not \
             contain the key's secret: it is revealed exactly once, to whoever calls\n\n\
             POST /v1/keys/{admin_key_id}/reveal\n\n\
             with an authorised key (ask the person who created your tenant). Keep the \
             secret somewhere safe: it cannot be shown again.\n",
            slug = input.slug,
            name = input.name,
            plan = input.plan,
            storage = input.quota.storage_bytes,
        ))
}

/// The reason a failed or cancelled run gives, as its ending records it.
async fn failure_reason(deps: &TenantDeps, run: Uuid) -> Result<String, StepError> {
    let run = deps
        .store()
        .run_get(&TenantScope::All, run)
        .await
        .map_err(TenantError::from)?;
    Ok(match run.and_then(|r| r.ending.map(|e| (r.state, e))) {
        Some((state, ending)) => format!("{} in {state}: {}", ending.status, ending.reason),
        None => "provisioning was undone".to_owned(),
    })
}

/// Whether `slug` could be provisioned as far as its shape goes: valid and not reserved.
pub fn slug_problem(slug: &str) -> Option<String> {
    names::check_slug(slug).err().or_else(|| {
        (slug == SYSTEM_TENANT || names::RESERVED_SLUGS.contains(&slug))
            .then(|| format!("slug {slug:?} is reserved"))
    })
}
