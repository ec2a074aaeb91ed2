//! `key_rotation`: replaces one of Waymark's own API keys with a new one, both valid
//! through a grace period while clients migrate, then revokes the old one.
//!
//! ```text
//! issue ─▶ await_reveal ─(revealed)─▶ notify_new        (scheduled: nobody saw the secret yet)
//!            └─(max wait)─▶ remind_reveal ─▶ await_reveal (escalates; never revokes unseen)
//! notify_new ─▶ grace ─(timeout)─▶ revoke_old ─▶ notify_done ─▶ (completed)
//!   │            ├─(confirm | revoke_now)─▶ revoke_old
//!   │            ├─(reminder time)─▶ remind_grace ─▶ grace
//!   │            └─(abort)─▶ aborting ─▶ (abort: compensation revokes the new key)
//!   └─(emergency: no grace)─▶ revoke_old
//! ```
//! The secret never passes through the run: a rotation started over HTTP issues the new
//! key in the same transaction as the run and answers the secret once; a scheduled one
//! issues it sealed, to be revealed once with `POST /v1/keys/{id}/reveal`, and the grace
//! starts at the reveal. Only key ids and prefixes appear in input, state, history and
//! email.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use waymark_engine::keys::{IssueKey, Sealer};
use waymark_engine::store::{Arg, KeyRecord, NewAudit, Store, TenantScope, Tx};
use waymark_engine::{
    Access, Definition, ResultExt, StateDef, StepContext, StepError, StoreError, Transition, Wait,
    Workflow, WorkflowSignal, WorkflowState,
};
use waymark_services::{Email, Mailer};

/// The live rotation of a key: a run of this workflow whose input names it and that
/// has not ended. `->>` reads a JSON field alike on PostgreSQL's `jsonb` and SQLite's
/// JSON text, so one statement serves both.
const ACTIVE: &str = "SELECT id FROM waymark_runs WHERE workflow = 'key_rotation' \
    AND input ->> 'key_id' = $1 AND finished_at IS NULL ORDER BY id LIMIT 1";

/// The run rotating `key_id` now, if any.
pub async fn active(store: &Store, key_id: Uuid) -> Result<Option<Uuid>, StoreError> {
    let rows = store
        .sql_fetch(ACTIVE, &[Arg::text(key_id.to_string())])
        .await?;
    rows.first().map(|row| row.id("id")).transpose()
}

/// Locks the key's row for the caller's transaction (so two rotations of one key are
/// decided one after the other) and answers the run already rotating it, if any.
pub async fn lock_for_rotation(tx: &mut Tx, key_id: Uuid) -> Result<Option<Uuid>, StoreError> {
    let lock = format!(
        "SELECT id FROM waymark_keys WHERE id = $1 {}",
        tx.for_update()
    );
    tx.fetch(&lock, &[Arg::id(key_id)]).await?;
    let rows = tx.fetch(ACTIVE, &[Arg::text(key_id.to_string())]).await?;
    rows.first().map(|row| row.id("id")).transpose()
}

/// What a rotation needs besides its input.
#[derive(Clone)]
pub struct KeyRotation {
    pub store: Store,
    pub mailer: Mailer,
    pub sealer: Sealer,
    pub settings: RotationSettings,
}

#[derive(Debug, Clone)]
pub struct RotationSettings {
    /// A scheduled rotation waits this long for its new secret to be revealed before
    /// it reminds the owner and escalates.
    pub reveal_max_wait: Duration,
    /// Graces at least this long get a reminder before they end.
    pub remind_when_grace_at_least: Duration,
}

impl Default for RotationSettings {
    fn default() -> Self {
        Self {
            reveal_max_wait: Duration::from_secs(7 * 86_400),
            remind_when_grace_at_least: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotationInput {
    pub key_id: Uuid,
    /// Both keys work this long (at least 1 s); ignored for an emergency.
    #[serde(with = "crate::housekeeping::humantime_duration")]
    pub grace_period: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A leaked key: no grace, the old key is revoked at once.
    #[serde(default)]
    pub emergency: bool,
    /// Set when the new key was issued with the run (over HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_key_id: Option<Uuid>,
    /// The rotation policy's schedule, moved on to the new key when done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_schedule: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RotationState {
    Issue,
    AwaitReveal {
        new_key_id: Uuid,
        escalated: bool,
    },
    RemindReveal {
        new_key_id: Uuid,
    },
    NotifyNew {
        new_key_id: Uuid,
    },
    Grace {
        new_key_id: Uuid,
        ends_at: DateTime<Utc>,
        reminded: bool,
    },
    RemindGrace {
        new_key_id: Uuid,
        ends_at: DateTime<Utc>,
    },
    Aborting {
        new_key_id: Uuid,
    },
    RevokeOld {
        new_key_id: Uuid,
        why: String,
    },
    NotifyDone {
        new_key_id: Uuid,
    },
    /// Another rotation of the same key was live: nothing done.
    Skipped {
        active_run: Uuid,
    },
}

impl WorkflowState for RotationState {
    fn name(&self) -> &'static str {
        match self {
            RotationState::Issue => "issue",
            RotationState::AwaitReveal { .. } => "await_reveal",
            RotationState::RemindReveal { .. } => "remind_reveal",
            RotationState::NotifyNew { .. } => "notify_new",
            RotationState::Grace { .. } => "grace",
            RotationState::RemindGrace { .. } => "remind_grace",
            RotationState::Aborting { .. } => "aborting",
            RotationState::RevokeOld { .. } => "revoke_old",
            RotationState::NotifyDone { .. } => "notify_done",
            RotationState::Skipped { .. } => "skipped",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "signal", content = "payload", rename_all = "snake_case")]
pub enum RotationSignal {
    /// Clients have migrated: end the grace now.
    Confirm,
    /// Stop: the new key is revoked, the old one stays.
    Abort {
        #[serde(default)]
        reason: Option<String>,
    },
    /// The old key leaked mid-rotation: revoke it at once.
    RevokeNow,
    /// The new secret was revealed (sent by the reveal endpoint).
    Revealed,
}

impl WorkflowSignal for RotationSignal {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RotationOutput {
    pub old_key_id: Uuid,
    pub new_key_id: Option<Uuid>,
    pub outcome: String,
}

impl KeyRotation {
    async fn key(&self, ctx: &StepContext, id: Uuid) -> Result<KeyRecord, StepError> {
        self.store
            .key_get(ctx.scope(), id)
            .await
            .retryable()?
            .ok_or_else(|| StepError::fatal(format!("key {id} does not exist")))
    }

    async fn revoke(&self, ctx: &StepContext, id: Uuid, why: &str) -> Result<(), StepError> {
        let key = self.key(ctx, id).await?;
        let actor = format!("run:{}", ctx.run_id);
        let audit = NewAudit {
            tenant: key.tenant.clone(),
            actor: actor.clone(),
            action: "key.revoked".into(),
            target: Some(format!("key:{id}")),
            detail: serde_json::json!({ "prefix": key.prefix, "by": "key_rotation", "why": why }),
            address: None,
            at: ctx.clock.now(),
        };
        self.store
            .key_revoke(ctx.scope(), id, &actor, ctx.clock.now(), &audit)
            .await
            .retryable()?;
        Ok(())
    }

    /// Mails the old key's owner (its `owner_email`, else its tenant's admin email),
    /// once per visit: the mailer's ledger makes a retried step send nothing more. With
    /// neither address nothing is sent, and the log says so.
    async fn tell_owner(
        &self,
        ctx: &StepContext,
        old: &KeyRecord,
        subject: String,
        text: String,
    ) -> Result<(), StepError> {
        let owner = match old.owner_email.clone() {
            Some(owner) => Some(owner),
            None => crate::tenants::record::get(&self.store, &old.tenant)
                .await
                .retryable()?
                .map(|tenant| tenant.admin_email),
        };
        let Some(owner) = owner else {
            tracing::warn!(key = %old.id, "key has no owner_email and its tenant no admin email; rotation notice not sent");
            return Ok(());
        };
        let email = Email::new().to(owner).subject(subject).text(text);
        self.mailer.send(&ctx.idempotency_key(0), email).await?;
        Ok(())
    }
}

fn describe(key: &KeyRecord) -> String {
    format!("{} (wmk_{}_…)", key.id, key.prefix)
}

impl Workflow for KeyRotation {
    const NAME: &'static str = "key_rotation";
    type Input = RotationInput;
    type State = RotationState;
    type Output = RotationOutput;
    type Signal = RotationSignal;

    fn definition() -> Definition {
        Definition::new([
            StateDef::new("issue")
                .next("await_reveal")
                .next("skipped")
                .compensates(),
            StateDef::new("await_reveal")
                .on_signal("revealed", "notify_new")
                .timer("remind_reveal"),
            StateDef::new("remind_reveal").next("await_reveal"),
            StateDef::new("notify_new")
                .next("grace")
                .next("revoke_old")
                .compensates(),
            StateDef::new("grace")
                .on_signal("confirm", "revoke_old")
                .on_signal("revoke_now", "revoke_old")
                .on_signal("abort", "aborting")
                .timer("remind_grace")
                .timer("revoke_old"),
            StateDef::new("remind_grace").next("grace"),
            StateDef::new("aborting"),
            StateDef::new("revoke_old").next("notify_done"),
            StateDef::new("notify_done").completes(),
            StateDef::new("skipped").completes(),
        ])
        .signal_only_while_waiting("confirm")
        .signal_only_while_waiting("abort")
        .signal_only_while_waiting("revoke_now")
        .signal("revealed")
        // Only `POST /v1/keys/{id}/rotate` and a key's rotation policy start it, after
        // checking that the caller may manage that key; its steps reach the key's tenant
        // only, so not even a forged input can touch another tenant's keys.
        .access(Access::Internal)
    }

    fn initial_state(input: &RotationInput) -> RotationState {
        match input.new_key_id {
            Some(new_key_id) => RotationState::NotifyNew { new_key_id },
            None => RotationState::Issue,
        }
    }

    async fn step(
        &self,
        ctx: &StepContext,
        input: &RotationInput,
        state: RotationState,
    ) -> Result<Transition<RotationState, RotationOutput>, StepError> {
        match state {
            RotationState::Issue => {
                if let Some(active) = active(&self.store, input.key_id).await.retryable()? {
                    if active != ctx.run_id {
                        return Ok(Transition::next(RotationState::Skipped {
                            active_run: active,
                        }));
                    }
                }
                let old = self.key(ctx, input.key_id).await?;
                if !old.is_active(ctx.clock.now()) {
                    return Err(StepError::fatal(format!(
                        "key {} is revoked or expired; nothing to rotate",
                        old.id
                    )));
                }
                // A retried visit finds the key it made instead of making a second.
                let actor = format!("run:{}", ctx.run_id);
                let made = self
                    .store
                    .key_list(&TenantScope::Tenant(old.tenant.clone()))
                    .await
                    .retryable()?
                    .into_iter()
                    .find(|k| k.created_by == actor);
                let new = match made {
                    Some(key) => key,
                    None => waymark_engine::keys::issue_sealed(
                        &self.store,
                        &self.sealer,
                        IssueKey::successor_of(&old, actor, None),
                        ctx.clock.now(),
                    )
                    .await
                    .retryable()?,
                };
                Ok(Transition::next(RotationState::AwaitReveal {
                    new_key_id: new.id,
                    escalated: false,
                }))
            }
            RotationState::AwaitReveal {
                new_key_id,
                escalated,
            } => {
                let new = self.key(ctx, new_key_id).await?;
                if !new.awaiting_reveal {
                    return Ok(Transition::next(RotationState::NotifyNew { new_key_id }));
                }
                let wait = Wait::on("revealed", RotationState::NotifyNew { new_key_id });
                // Escalated once: keep waiting, never revoke a key whose successor
                // nobody has seen.
                Ok(if escalated {
                    wait.into()
                } else {
                    wait.timeout_after(
                        self.settings.reveal_max_wait,
                        RotationState::RemindReveal { new_key_id },
                    )
                    .into()
                })
            }
            RotationState::RemindReveal { new_key_id } => {
                let old = self.key(ctx, input.key_id).await?;
                let new = self.key(ctx, new_key_id).await?;
                self.tell_owner(
                    ctx,
                    &old,
                    format!("Action needed: reveal the new Waymark API key replacing wmk_{}_…", old.prefix),
                    format!(
                        "A scheduled rotation created key {} to replace {}, but its secret has not been revealed.\n\
                         Reveal it once with POST /v1/keys/{}/reveal. The old key keeps working until then.\n",
                        describe(&new),
                        describe(&old),
                        new.id
                    ),
                )
                .await?;
                Ok(Transition::next(RotationState::AwaitReveal {
                    new_key_id,
                    escalated: true,
                }))
            }
            RotationState::NotifyNew { new_key_id } => {
                let old = self.key(ctx, input.key_id).await?;
                let new = self.key(ctx, new_key_id).await?;
                if new.awaiting_reveal {
                    // A `revealed` signal without a reveal: keep waiting for the real one.
                    return Ok(Transition::next(RotationState::AwaitReveal {
                        new_key_id,
                        escalated: false,
                    }));
                }
                let now = ctx.clock.now();
                let ends_at = waymark_engine::workflow::checked_after(now, input.grace_period)
                    .ok_or_else(|| {
                        StepError::fatal(format!(
                            "grace_period {:?} ends beyond any date",
                            input.grace_period
                        ))
                    })?;
                let until = if input.emergency {
                    "It was an emergency rotation: the old key is revoked now.".to_owned()
                } else {
                    format!(
                        "Both keys work until {}; then the old key stops working.",
                        ends_at.to_rfc3339()
                    )
                };
                self.tell_owner(
                    ctx,
                    &old,
                    format!("Waymark API key wmk_{}_… is being rotated", old.prefix),
                    format!(
                        "Key {} is being replaced by key {}.\n{}\nReason: {}\n",
                        describe(&old),
                        describe(&new),
                        until,
                        input.reason.as_deref().unwrap_or("not given")
                    ),
                )
                .await?;
                Ok(if input.emergency {
                    Transition::next(RotationState::RevokeOld {
                        new_key_id,
                        why: "emergency".into(),
                    })
                } else {
                    Transition::next(RotationState::Grace {
                        new_key_id,
                        ends_at,
                        reminded: false,
                    })
                })
            }
            RotationState::Grace {
                new_key_id,
                ends_at,
                reminded,
            } => {
                let wait = Wait::on(
                    "confirm",
                    RotationState::RevokeOld {
                        new_key_id,
                        why: "confirmed".into(),
                    },
                )
                .or(
                    "revoke_now",
                    RotationState::RevokeOld {
                        new_key_id,
                        why: "revoke_now".into(),
                    },
                )
                .or("abort", RotationState::Aborting { new_key_id });
                let long = input.grace_period >= self.settings.remind_when_grace_at_least;
                Ok(if long && !reminded {
                    // Remind when a fifth of the grace is left.
                    let lead =
                        chrono::Duration::from_std(input.grace_period / 5).unwrap_or_default();
                    wait.timeout_at(
                        ends_at - lead,
                        RotationState::RemindGrace {
                            new_key_id,
                            ends_at,
                        },
                    )
                    .into()
                } else {
                    wait.timeout_at(
                        ends_at,
                        RotationState::RevokeOld {
                            new_key_id,
                            why: "grace ended".into(),
                        },
                    )
                    .into()
                })
            }
            RotationState::RemindGrace {
                new_key_id,
                ends_at,
            } => {
                let old = self.key(ctx, input.key_id).await?;
                let last_used = old
                    .last_used_at
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_else(|| "never".into());
                self.tell_owner(
                    ctx,
                    &old,
                    format!(
                        "Reminder: Waymark API key wmk_{}_… stops working soon",
                        old.prefix
                    ),
                    format!(
                        "Key {} stops working at {}. It was last used at {}.\n",
                        describe(&old),
                        ends_at.to_rfc3339(),
                        last_used
                    ),
                )
                .await?;
                Ok(Transition::next(RotationState::Grace {
                    new_key_id,
                    ends_at,
                    reminded: true,
                }))
            }
            RotationState::Aborting { .. } => {
                let reason = match ctx.signal::<RotationSignal>()? {
                    Some(RotationSignal::Abort {
                        reason: Some(reason),
                    }) => reason,
                    _ => "aborted by its owner".to_owned(),
                };
                Ok(Transition::Abort(reason))
            }
            RotationState::RevokeOld { new_key_id, why } => {
                self.revoke(ctx, input.key_id, &why).await?;
                Ok(Transition::next(RotationState::NotifyDone { new_key_id }))
            }
            RotationState::NotifyDone { new_key_id } => {
                let old = self.key(ctx, input.key_id).await?;
                let new = self.key(ctx, new_key_id).await?;
                self.tell_owner(
                    ctx,
                    &old,
                    format!("Waymark API key wmk_{}_… has been revoked", old.prefix),
                    format!(
                        "Key {} is revoked. Key {} replaces it.\n",
                        describe(&old),
                        describe(&new)
                    ),
                )
                .await?;
                if let Some(schedule_id) = input.policy_schedule {
                    self.move_policy(ctx, schedule_id, new_key_id).await?;
                }
                Ok(Transition::complete(RotationOutput {
                    old_key_id: input.key_id,
                    new_key_id: Some(new_key_id),
                    outcome: "rotated".into(),
                }))
            }
            RotationState::Skipped { active_run } => Ok(Transition::complete(RotationOutput {
                old_key_id: input.key_id,
                new_key_id: None,
                outcome: format!("skipped: run {active_run} was already rotating this key"),
            })),
        }
    }

    async fn compensate(
        &self,
        ctx: &StepContext,
        _input: &RotationInput,
        state: RotationState,
    ) -> Result<(), StepError> {
        // The new key goes; the old one stays valid. A key never made is fine.
        let new_key_id = match state {
            RotationState::NotifyNew { new_key_id } => Some(new_key_id),
            RotationState::Issue => {
                // Keys this run issued, in its own tenant; nothing to find when the old
                // key was never there (a failed first visit).
                let actor = format!("run:{}", ctx.run_id);
                self.store
                    .key_list(ctx.scope())
                    .await
                    .retryable()?
                    .into_iter()
                    .find(|k| k.created_by == actor)
                    .map(|k| k.id)
            }
            _ => None,
        };
        if let Some(id) = new_key_id {
            self.revoke(ctx, id, "rotation aborted").await?;
        }
        Ok(())
    }
}

impl KeyRotation {
    /// The policy's schedule rotates the new key from now on.
    async fn move_policy(
        &self,
        ctx: &StepContext,
        schedule_id: Uuid,
        new_key_id: Uuid,
    ) -> Result<(), StepError> {
        let now = ctx.clock.now();
        let Some(mut schedule) = self
            .store
            .schedule_get(ctx.scope(), schedule_id)
            .await
            .retryable()?
        else {
            return Ok(());
        };
        schedule.input["key_id"] = serde_json::json!(new_key_id);
        schedule.updated_at = now;
        self.store.schedule_update(&schedule).await.retryable()?;
        Ok(())
    }
}
