//! `payment_dispute`: a card payment's dispute, from the processor's `dispute.created`
//! webhook to its close, over weeks or months. It never misses the evidence deadline
//! (a timer concedes at it), never submits twice (the network adapter's idempotency
//! key is the dispute and cycle), never loses an event (the webhook inbox), and keeps
//! a timeline of who did what.
//!
//! ```text
//! opened ─▶ notify_merchant ─▶ awaiting_evidence ─(evidence_submitted)─▶ evidence_received
//!   awaiting_evidence ─(reminder time)─▶ remind ─▶ awaiting_evidence
//!   awaiting_evidence ─(deadline)─▶ conceding ─▶ closed       ("evidence deadline missed")
//!   awaiting_evidence | review ─(accept)─▶ conceding
//! evidence_received ─▶ review ─(approve)─▶ submitting   (at or above the tenant's threshold)
//!                          └─(reject)─▶ rejected ─▶ awaiting_evidence
//! evidence_received ─▶ submitting ─▶ awaiting_decision ─(network_closed)─▶ decided
//!   awaiting_decision ─(no decision in 75 d)─▶ escalated ─(network_closed)─▶ decided
//!   awaiting_decision ─(simulator's delay)─▶ simulated_decision ─▶ awaiting_decision
//!                        (the embedded simulator posts `dispute.closed`, signed)
//! decided ─▶ won ─▶ closed
//! decided ─▶ lost ─(appeal, within 10 d, first cycle only)─▶ appealed ─▶ awaiting_evidence (cycle 2)
//!             └─(window ends)─▶ closed
//! ```
//!
//! # Layout
//! - [`money`]: minor-unit amounts and ISO 4217 exponents;
//! - [`event`]: the webhook event; [`signature`]: its HMAC signature;
//! - [`ingress`]: webhooks in (inbox, start, signals, dead letters);
//! - [`record`]: the tables and their SQL; [`network`]: the card network adapter;
//! - [`files`]: evidence files (their types, limits, blob keys and links);
//! - [`status`]: what a waiting run waits for and until when (the run's status);
//! - `effects.rs`: what the steps share (reading the dispute, its status and timeline,
//!   mail to the merchant, the deadline);
//! - this file: the schema and the workflow.

mod effects;
pub mod event;
pub mod files;
pub mod ingress;
pub mod money;
pub mod network;
pub mod record;
pub mod signature;
pub mod status;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use waymark_engine::store::{Migration, Schema};
use waymark_engine::{
    Access, Definition, OnFailure, ResultExt, RetryPolicy, StateDef, StepContext, StepError, Store,
    Transition, Wait, Workflow, WorkflowSignal, WorkflowState,
};
use waymark_services::Mailer;

use self::effects::{add, sub};
use self::network::Network;

/// The dispute tables (see `waymark_engine::store::schemas`).
/// The tables of [`SCHEMA`] that hold a tenant's rows (a `tenant` column), dependents
/// first: a deleted tenant's rows go from each, in this order.
pub const TENANT_TABLES: &[&str] = &[
    "disputes_evidence_files",
    "disputes_evidence",
    "disputes_funds",
    "disputes_timeline",
    "disputes_dead_letters",
    "disputes_webhook_inbox",
    "disputes_webhook_secrets",
    "disputes_settings",
    "disputes",
];

pub const SCHEMA: Schema = Schema {
    name: "disputes",
    postgres: &[Migration::new(
        1,
        "disputes",
        include_str!("migrations/postgres/0001_disputes.sql"),
    )],
    sqlite: &[Migration::new(
        1,
        "disputes",
        include_str!("migrations/sqlite/0001_disputes.sql"),
    )],
};

/// Reminders go to the merchant this long before the internal evidence deadline.
pub const REMINDERS: [Duration; 4] = [
    Duration::from_secs(7 * 86_400),
    Duration::from_secs(3 * 86_400),
    Duration::from_secs(86_400),
    Duration::from_secs(4 * 3600),
];

/// Why a dispute ended lost without a decision.
pub const DEADLINE_MISSED: &str = "evidence deadline missed";

/// How long things may take.
#[derive(Debug, Clone)]
pub struct DisputeSettings {
    /// No decision this long after submission escalates to an operator.
    pub decision_timeout: Duration,
    /// A lost dispute may be appealed this long after the decision.
    pub appeal_window: Duration,
    /// An appeal's evidence is due this long after it starts.
    pub appeal_evidence_period: Duration,
}

impl Default for DisputeSettings {
    fn default() -> Self {
        Self {
            decision_timeout: Duration::from_secs(75 * 86_400),
            appeal_window: Duration::from_secs(10 * 86_400),
            appeal_evidence_period: Duration::from_secs(14 * 86_400),
        }
    }
}

/// What the workflow needs besides its input.
#[derive(Debug, Clone)]
pub struct PaymentDispute {
    pub store: Store,
    pub mailer: Mailer,
    pub network: Network,
    /// Where evidence files are (the submission packet links to them).
    pub blobs: waymark_services::BlobStore,
    /// Opens the tenant's webhook secret for the simulator's signed decision.
    pub sealer: waymark_engine::keys::Sealer,
    pub settings: DisputeSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisputeInput {
    pub dispute_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DisputeState {
    Opened,
    NotifyMerchant,
    /// `reminders`: how many of [`REMINDERS`] were sent or skipped this cycle.
    AwaitingEvidence {
        cycle: i64,
        reminders: usize,
        /// The internal deadline, shown in the run's status.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadline: Option<DateTime<Utc>>,
    },
    Remind {
        cycle: i64,
        reminder: usize,
    },
    EvidenceReceived {
        cycle: i64,
    },
    Review {
        cycle: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadline: Option<DateTime<Utc>>,
    },
    Rejected {
        cycle: i64,
    },
    Submitting {
        cycle: i64,
    },
    AwaitingDecision {
        cycle: i64,
        /// When it escalates.
        escalates_at: DateTime<Utc>,
        /// When the embedded network simulator decides (see `network::Simulator`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        simulate_at: Option<DateTime<Utc>>,
    },
    /// The embedded simulator sends its decision through the signed webhook route.
    SimulatedDecision {
        cycle: i64,
        escalates_at: DateTime<Utc>,
    },
    Escalated {
        cycle: i64,
    },
    Decided {
        cycle: i64,
    },
    Won,
    Lost {
        cycle: i64,
        /// The appeal window's end (none after an appeal).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        appeal_until: Option<DateTime<Utc>>,
    },
    Appealed,
    Conceding {
        reason: String,
    },
    Closed,
}

impl WorkflowState for DisputeState {
    fn name(&self) -> &'static str {
        match self {
            DisputeState::Opened => "opened",
            DisputeState::NotifyMerchant => "notify_merchant",
            DisputeState::AwaitingEvidence { .. } => "awaiting_evidence",
            DisputeState::Remind { .. } => "remind",
            DisputeState::EvidenceReceived { .. } => "evidence_received",
            DisputeState::Review { .. } => "review",
            DisputeState::Rejected { .. } => "rejected",
            DisputeState::Submitting { .. } => "submitting",
            DisputeState::AwaitingDecision { .. } => "awaiting_decision",
            DisputeState::SimulatedDecision { .. } => "simulated_decision",
            DisputeState::Escalated { .. } => "escalated",
            DisputeState::Decided { .. } => "decided",
            DisputeState::Won => "won",
            DisputeState::Lost { .. } => "lost",
            DisputeState::Appealed => "appealed",
            DisputeState::Conceding { .. } => "conceding",
            DisputeState::Closed => "closed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "signal", content = "payload", rename_all = "snake_case")]
pub enum DisputeSignal {
    /// The webhook ingress: a newer `dispute.updated` was applied to the record.
    NetworkUpdate { event_id: String },
    /// The webhook ingress: `dispute.closed` (won or lost) was applied.
    NetworkClosed { event_id: String },
    /// `POST /v1/disputes/{id}/evidence` recorded the cycle's evidence.
    EvidenceSubmitted { cycle: i64 },
    /// The merchant concedes (`POST /v1/disputes/{id}/accept`).
    Accept,
    /// An operator approves the evidence of a dispute over the threshold.
    Approve,
    /// An operator rejects it; the merchant may submit again before the deadline.
    Reject {
        #[serde(default)]
        reason: Option<String>,
    },
    /// Appeal a lost dispute (once, within the window).
    Appeal,
}

impl WorkflowSignal for DisputeSignal {}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DisputeOutput {
    pub dispute_id: String,
    /// `won` or `lost`.
    pub outcome: String,
    pub reason: Option<String>,
}

impl Workflow for PaymentDispute {
    const NAME: &'static str = "payment_dispute";
    type Input = DisputeInput;
    type State = DisputeState;
    type Output = DisputeOutput;
    type Signal = DisputeSignal;

    fn definition() -> Definition {
        Definition::new([
            StateDef::new("opened").next("notify_merchant"),
            StateDef::new("notify_merchant").next("awaiting_evidence"),
            StateDef::new("awaiting_evidence")
                .next("evidence_received")
                .next("conceding")
                .on_signal("evidence_submitted", "evidence_received")
                .on_signal("accept", "conceding")
                .on_signal("network_update", "awaiting_evidence")
                .on_signal("network_closed", "decided")
                .timer("remind")
                .timer("conceding"),
            StateDef::new("remind").next("awaiting_evidence"),
            StateDef::new("evidence_received")
                .next("review")
                .next("submitting"),
            StateDef::new("review")
                .next("conceding")
                .on_signal("approve", "submitting")
                .on_signal("reject", "rejected")
                .on_signal("accept", "conceding")
                .on_signal("network_closed", "decided")
                .timer("conceding"),
            StateDef::new("rejected").next("awaiting_evidence"),
            StateDef::new("submitting")
                .next("awaiting_decision")
                // The network's 5xx and silences are retried for about a day, with backoff.
                .retry(RetryPolicy {
                    max_attempts: 20,
                    initial_delay: Duration::from_secs(2),
                    max_delay: Duration::from_secs(3600),
                    jitter: 0.2,
                    step_timeout: Duration::from_secs(60),
                }),
            StateDef::new("awaiting_decision")
                .next("decided")
                .on_signal("network_closed", "decided")
                .on_signal("network_update", "awaiting_decision")
                .timer("escalated")
                .timer("simulated_decision"),
            StateDef::new("simulated_decision").next("awaiting_decision"),
            StateDef::new("escalated")
                .on_signal("network_closed", "decided")
                .on_signal("network_update", "escalated"),
            StateDef::new("decided")
                .next("won")
                .next("lost")
                .next("awaiting_decision"),
            StateDef::new("won").next("closed"),
            StateDef::new("lost")
                .next("closed")
                .on_signal("appeal", "appealed")
                .timer("closed"),
            StateDef::new("appealed").next("awaiting_evidence"),
            StateDef::new("conceding").next("closed"),
            StateDef::new("closed").completes(),
        ])
        .signal("network_update")
        .signal("network_closed")
        .signal_only_while_waiting("evidence_submitted")
        .signal_only_while_waiting("accept")
        .signal_only_while_waiting("approve")
        .signal_only_while_waiting("reject")
        .signal_only_while_waiting("appeal")
        // Started by the webhook ingress only, in the tenant the webhook names.
        .access(Access::Internal)
        // A network that refuses a packet (4xx) holds the run for an operator.
        .on_failure(OnFailure::Hold)
    }

    fn initial_state(_input: &DisputeInput) -> DisputeState {
        DisputeState::Opened
    }

    async fn step(
        &self,
        ctx: &StepContext,
        input: &DisputeInput,
        state: DisputeState,
    ) -> Result<Transition<DisputeState, DisputeOutput>, StepError> {
        let d = self.dispute(ctx, input).await?;
        let now = ctx.clock.now();
        match state {
            DisputeState::Opened => Ok(Transition::next(DisputeState::NotifyMerchant)),
            DisputeState::NotifyMerchant => {
                let deadline = self.deadline(ctx, &d).await?;
                self.tell_merchant(
                    ctx,
                    &d,
                    format!("Dispute opened: {} on charge {}", d.formatted_amount(), d.charge),
                    format!(
                        "A customer disputed charge {} ({}), reason: {}.\n\
                         Submit evidence for dispute {} before {} (POST /v1/disputes/{}/evidence).\n\
                         Without evidence by then the dispute is conceded.\n",
                        d.charge,
                        d.formatted_amount(),
                        d.reason,
                        d.dispute_id,
                        deadline.to_rfc3339(),
                        d.dispute_id
                    ),
                )
                .await?;
                Ok(Transition::next(Self::awaiting_evidence(d.cycle, 0)))
            }
            DisputeState::AwaitingEvidence {
                cycle, reminders, ..
            } => {
                self.status(ctx, &d, "awaiting_evidence", None).await?;
                if record::evidence(&self.store, &ctx.tenant, &d.dispute_id, cycle)
                    .await
                    .retryable()?
                    .is_some()
                {
                    // Evidence recorded while this step was away from its wait.
                    return Ok(Transition::next(DisputeState::EvidenceReceived { cycle }));
                }
                let deadline = self.deadline(ctx, &d).await?;
                if now >= deadline {
                    return Ok(Transition::next(DisputeState::Conceding {
                        reason: DEADLINE_MISSED.into(),
                    }));
                }
                // The next reminder still ahead; reminders already in the past are skipped.
                let next =
                    (reminders..REMINDERS.len()).find(|&i| sub(deadline, REMINDERS[i]) > now);
                let wait = Wait::on(
                    "evidence_submitted",
                    DisputeState::EvidenceReceived { cycle },
                )
                .or(
                    "accept",
                    DisputeState::Conceding {
                        reason: "conceded by the merchant".into(),
                    },
                )
                .or(
                    "network_update",
                    DisputeState::AwaitingEvidence {
                        cycle,
                        reminders: next.unwrap_or(REMINDERS.len()),
                        deadline: Some(deadline),
                    },
                )
                .or("network_closed", DisputeState::Decided { cycle });
                Ok(match next {
                    Some(i) => wait.timeout_at(
                        sub(deadline, REMINDERS[i]),
                        DisputeState::Remind { cycle, reminder: i },
                    ),
                    None => wait.timeout_at(
                        deadline,
                        DisputeState::Conceding {
                            reason: DEADLINE_MISSED.into(),
                        },
                    ),
                }
                .into())
            }
            DisputeState::Remind { cycle, reminder } => {
                let deadline = self.deadline(ctx, &d).await?;
                let left = humantime::format_duration(REMINDERS[reminder]);
                self.tell_merchant(
                    ctx,
                    &d,
                    format!(
                        "Reminder: evidence for dispute {} is due in {left}",
                        d.dispute_id
                    ),
                    format!(
                        "Dispute {} ({}, charge {}) needs evidence before {}.\n\
                         Without it the dispute is conceded automatically.\n",
                        d.dispute_id,
                        d.formatted_amount(),
                        d.charge,
                        deadline.to_rfc3339()
                    ),
                )
                .await?;
                self.note(
                    ctx,
                    &d,
                    "timer",
                    "reminder_sent",
                    json!({"before_deadline": left.to_string()}),
                )
                .await?;
                Ok(Transition::next(Self::awaiting_evidence(
                    cycle,
                    reminder + 1,
                )))
            }
            DisputeState::EvidenceReceived { cycle } => {
                self.note(
                    ctx,
                    &d,
                    &Self::actor(ctx, false),
                    "evidence_received",
                    json!({"cycle": cycle}),
                )
                .await?;
                self.tell_merchant(
                    ctx,
                    &d,
                    format!("Evidence received for dispute {}", d.dispute_id),
                    format!(
                        "We received your evidence for dispute {} ({}).\n",
                        d.dispute_id,
                        d.formatted_amount()
                    ),
                )
                .await?;
                let settings = record::settings(&self.store, &ctx.tenant)
                    .await
                    .retryable()?;
                Ok(if settings.needs_review(d.amount, &d.currency) {
                    Transition::next(DisputeState::Review {
                        cycle,
                        deadline: None,
                    })
                } else {
                    Transition::next(DisputeState::Submitting { cycle })
                })
            }
            DisputeState::Review { cycle, .. } => {
                self.status(ctx, &d, "review", None).await?;
                let deadline = self.deadline(ctx, &d).await?;
                if now >= deadline {
                    return Ok(Transition::next(DisputeState::Conceding {
                        reason: DEADLINE_MISSED.into(),
                    }));
                }
                Ok(Wait::on("approve", DisputeState::Submitting { cycle })
                    .or("reject", DisputeState::Rejected { cycle })
                    .or(
                        "accept",
                        DisputeState::Conceding {
                            reason: "conceded by the merchant".into(),
                        },
                    )
                    .or("network_closed", DisputeState::Decided { cycle })
                    .timeout_at(
                        deadline,
                        DisputeState::Conceding {
                            reason: DEADLINE_MISSED.into(),
                        },
                    )
                    .into())
            }
            DisputeState::Rejected { cycle } => {
                let reason = match ctx.signal::<DisputeSignal>()? {
                    Some(DisputeSignal::Reject {
                        reason: Some(reason),
                    }) => reason,
                    _ => "not given".to_owned(),
                };
                files::evidence_delete(&self.store, &ctx.tenant, &d.dispute_id, cycle)
                    .await
                    .retryable()?;
                self.note(
                    ctx,
                    &d,
                    &Self::actor(ctx, false),
                    "evidence_rejected",
                    json!({"reason": reason}),
                )
                .await?;
                self.tell_merchant(
                    ctx,
                    &d,
                    format!("Evidence for dispute {} needs another look", d.dispute_id),
                    format!("Your evidence for dispute {} was not approved: {reason}.\nSubmit again before the deadline.\n", d.dispute_id),
                )
                .await?;
                Ok(Transition::next(Self::awaiting_evidence(cycle, 0)))
            }
            DisputeState::Submitting { cycle } => {
                self.status(ctx, &d, "submitting", None).await?;
                let (fields, file_ids) =
                    record::evidence(&self.store, &ctx.tenant, &d.dispute_id, cycle)
                        .await
                        .retryable()?
                        .ok_or_else(|| {
                            StepError::fatal(format!("no evidence recorded for cycle {cycle}"))
                        })?;
                let ids: Vec<uuid::Uuid> = file_ids
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().and_then(|s| s.parse().ok()))
                    .collect();
                let evidence_files =
                    files::of_cycle(&self.store, &ctx.tenant, &d.dispute_id, cycle, &ids)
                        .await
                        .retryable()?
                        .map_err(|id| {
                            StepError::fatal(format!("evidence file {id} is not of cycle {cycle}"))
                        })?;
                // Links signed now, valid for a week: the network downloads them from
                // the blob store without a key.
                let links = files::packet_links(&self.blobs, &evidence_files).await?;
                let packet = json!({
                    "dispute_id": d.dispute_id,
                    "charge": d.charge,
                    "cycle": cycle,
                    "evidence": fields,
                    "files": links,
                });
                self.network.submit(&d.dispute_id, cycle, &packet).await?;
                self.note(
                    ctx,
                    &d,
                    &Self::actor(ctx, false),
                    "submitted",
                    json!({"cycle": cycle}),
                )
                .await?;
                self.tell_merchant(
                    ctx,
                    &d,
                    format!("Evidence submitted for dispute {}", d.dispute_id),
                    format!(
                        "Your evidence for dispute {} was submitted to the card network.\n",
                        d.dispute_id
                    ),
                )
                .await?;
                Ok(Transition::next(DisputeState::AwaitingDecision {
                    cycle,
                    escalates_at: add(now, self.settings.decision_timeout),
                    simulate_at: self.network.simulated_decision().map(|s| add(now, s.delay)),
                }))
            }
            DisputeState::SimulatedDecision {
                cycle,
                escalates_at,
            } => {
                self.simulate_decision(ctx, &d, cycle).await?;
                Ok(Transition::next(DisputeState::AwaitingDecision {
                    cycle,
                    escalates_at,
                    simulate_at: None,
                }))
            }
            DisputeState::AwaitingDecision {
                cycle,
                escalates_at,
                simulate_at,
            } => {
                self.status(ctx, &d, "awaiting_decision", None).await?;
                if matches!(d.network_status.as_str(), "won" | "lost")
                    && ctx.received_signal().is_some()
                {
                    return Ok(Transition::next(DisputeState::Decided { cycle }));
                }
                let wait = Wait::on("network_closed", DisputeState::Decided { cycle }).or(
                    "network_update",
                    DisputeState::AwaitingDecision {
                        cycle,
                        escalates_at,
                        simulate_at,
                    },
                );
                Ok(match simulate_at {
                    Some(at) if at < escalates_at => wait.timeout_at(
                        at,
                        DisputeState::SimulatedDecision {
                            cycle,
                            escalates_at,
                        },
                    ),
                    _ => wait.timeout_at(escalates_at, DisputeState::Escalated { cycle }),
                }
                .into())
            }
            DisputeState::Escalated { cycle } => {
                if d.status != "escalated" {
                    self.status(ctx, &d, "escalated", None).await?;
                    self.note(ctx, &d, "timer", "escalated", json!({"cycle": cycle}))
                        .await?;
                    self.tell_merchant(
                        ctx,
                        &d,
                        format!("Dispute {} escalated: no decision yet", d.dispute_id),
                        format!(
                            "The card network has not decided dispute {} within {}. An operator is looking into it.\n",
                            d.dispute_id,
                            humantime::format_duration(self.settings.decision_timeout)
                        ),
                    )
                    .await?;
                }
                Ok(Wait::on("network_closed", DisputeState::Decided { cycle })
                    .or("network_update", DisputeState::Escalated { cycle })
                    .into())
            }
            DisputeState::Decided { cycle } => match d.network_status.as_str() {
                "won" => Ok(Transition::next(DisputeState::Won)),
                "lost" => Ok(Transition::next(DisputeState::Lost {
                    cycle,
                    appeal_until: (cycle == 1).then(|| add(now, self.settings.appeal_window)),
                })),
                // A `dispute.closed` without a decision: keep waiting for one.
                _ => Ok(Transition::next(DisputeState::AwaitingDecision {
                    cycle,
                    escalates_at: add(now, self.settings.decision_timeout),
                    simulate_at: None,
                })),
            },
            DisputeState::Won => {
                self.status(ctx, &d, "won", Some("won")).await?;
                self.note(ctx, &d, &Self::actor(ctx, false), "won", json!({}))
                    .await?;
                self.tell_merchant(
                    ctx,
                    &d,
                    format!("Dispute {} won", d.dispute_id),
                    format!(
                        "The card network decided dispute {} ({}) in your favour.\n",
                        d.dispute_id,
                        d.formatted_amount()
                    ),
                )
                .await?;
                Ok(Transition::next(DisputeState::Closed))
            }
            DisputeState::Lost {
                cycle,
                appeal_until,
            } => {
                if d.status != "lost" {
                    self.status(ctx, &d, "lost", Some("lost by the network's decision"))
                        .await?;
                    self.note(
                        ctx,
                        &d,
                        &Self::actor(ctx, false),
                        "lost",
                        json!({"cycle": cycle}),
                    )
                    .await?;
                    let appeal = match appeal_until {
                        Some(until) => format!(
                            "You may appeal once until {} (signal `appeal`).\n",
                            until.to_rfc3339()
                        ),
                        None => String::new(),
                    };
                    self.tell_merchant(
                        ctx,
                        &d,
                        format!("Dispute {} lost", d.dispute_id),
                        format!(
                            "The card network decided dispute {} ({}) against you.\n{appeal}",
                            d.dispute_id,
                            d.formatted_amount()
                        ),
                    )
                    .await?;
                }
                Ok(match appeal_until {
                    Some(until) if until > now => Wait::on("appeal", DisputeState::Appealed)
                        .timeout_at(until, DisputeState::Closed)
                        .into(),
                    _ => Transition::next(DisputeState::Closed),
                })
            }
            DisputeState::Appealed => {
                let due = add(now, self.settings.appeal_evidence_period);
                record::start_cycle(
                    &self.store,
                    &ctx.tenant,
                    &d.dispute_id,
                    2,
                    due,
                    d.last_event_at.max(now),
                    now,
                )
                .await
                .retryable()?;
                self.note(
                    ctx,
                    &d,
                    &Self::actor(ctx, false),
                    "appealed",
                    json!({"evidence_due_by": due}),
                )
                .await?;
                Ok(Transition::next(Self::awaiting_evidence(2, 0)))
            }
            DisputeState::Conceding { reason } => {
                self.network.concede(&d.dispute_id, &reason).await?;
                let timer = reason == DEADLINE_MISSED;
                self.status(ctx, &d, "lost", Some(&reason)).await?;
                self.note(
                    ctx,
                    &d,
                    &Self::actor(ctx, timer),
                    "conceded",
                    json!({"reason": reason}),
                )
                .await?;
                self.tell_merchant(
                    ctx,
                    &d,
                    format!("Dispute {} conceded: {reason}", d.dispute_id),
                    format!(
                        "Dispute {} ({}) was conceded to the customer: {reason}.\n",
                        d.dispute_id,
                        d.formatted_amount()
                    ),
                )
                .await?;
                Ok(Transition::next(DisputeState::Closed))
            }
            DisputeState::Closed => {
                let outcome = if d.outcome_reason.as_deref() == Some("won") {
                    "won"
                } else {
                    "lost"
                };
                let reason = d.outcome_reason.clone();
                self.status(ctx, &d, "closed", None).await?;
                Ok(Transition::complete(DisputeOutput {
                    dispute_id: d.dispute_id,
                    outcome: outcome.into(),
                    reason,
                }))
            }
        }
    }
}
