//! What the dispute's steps share: reading the dispute, recording its status and
//! timeline, telling the merchant, and its evidence deadline.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use waymark_engine::{ResultExt, StepContext, StepError};
use waymark_services::Email;

use super::network::Network;
use super::record::{self, Dispute};
use super::{DisputeInput, DisputeState, PaymentDispute};

pub(super) fn add(at: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    at + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

pub(super) fn sub(at: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    at - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero())
}

impl PaymentDispute {
    pub(super) async fn dispute(
        &self,
        ctx: &StepContext,
        input: &DisputeInput,
    ) -> Result<Dispute, StepError> {
        record::get(&self.store, &ctx.tenant, &input.dispute_id)
            .await
            .retryable()?
            .ok_or_else(|| StepError::fatal(format!("dispute {} does not exist", input.dispute_id)))
    }

    pub(super) async fn status(
        &self,
        ctx: &StepContext,
        d: &Dispute,
        status: &str,
        reason: Option<&str>,
    ) -> Result<(), StepError> {
        if d.status == status && reason.is_none() {
            return Ok(());
        }
        record::set_status(
            &self.store,
            &ctx.tenant,
            &d.dispute_id,
            status,
            reason,
            ctx.clock.now(),
        )
        .await
        .retryable()
    }

    /// The actor of this transition for the timeline: the signal's sender, else the
    /// timer or the run itself.
    pub(super) fn actor(ctx: &StepContext, timer: bool) -> String {
        match ctx.received_signal() {
            Some(signal) => signal.actor.clone(),
            None if timer => "timer".to_owned(),
            None => format!("run:{}", ctx.run_id),
        }
    }

    pub(super) async fn note(
        &self,
        ctx: &StepContext,
        d: &Dispute,
        actor: &str,
        what: &str,
        detail: serde_json::Value,
    ) -> Result<(), StepError> {
        // Keyed by the visit so a retried step does not write it twice.
        let mut detail = detail;
        detail["visit"] = json!(ctx.idempotency_key(9));
        let rows = self
            .store
            .sql_fetch(
                "SELECT 1 AS one FROM disputes_timeline WHERE tenant = $1 AND dispute_id = $2 AND what = $3 AND detail ->> 'visit' = $4",
                &[
                    waymark_engine::store::Arg::text(&ctx.tenant),
                    waymark_engine::store::Arg::text(&d.dispute_id),
                    waymark_engine::store::Arg::text(what),
                    waymark_engine::store::Arg::text(ctx.idempotency_key(9)),
                ],
            )
            .await
            .retryable()?;
        if !rows.is_empty() {
            return Ok(());
        }
        record::timeline(
            &self.store,
            &ctx.tenant,
            &d.dispute_id,
            actor,
            what,
            detail,
            ctx.clock.now(),
        )
        .await
        .retryable()
    }

    /// Mails the merchant once per visit (the mailer's ledger keeps a retried step from
    /// sending again).
    pub(super) async fn tell_merchant(
        &self,
        ctx: &StepContext,
        d: &Dispute,
        subject: String,
        text: String,
    ) -> Result<(), StepError> {
        let email = Email::new()
            .to(d.merchant_email.clone())
            .subject(subject)
            .text(text);
        self.mailer.send(&ctx.idempotency_key(0), email).await?;
        Ok(())
    }

    /// The internal evidence deadline: the network's, less the tenant's margin.
    pub(super) async fn deadline(
        &self,
        ctx: &StepContext,
        d: &Dispute,
    ) -> Result<DateTime<Utc>, StepError> {
        let settings = record::settings(&self.store, &ctx.tenant)
            .await
            .retryable()?;
        Ok(sub(d.evidence_due_by, settings.safety_margin))
    }

    /// The embedded simulator's decision: `dispute.closed` with its outcome, sent to
    /// the tenant's webhook route signed with the tenant's current secret. The event id
    /// is the dispute's and cycle's, so a retried step sends a duplicate Waymark ignores.
    pub(super) async fn simulate_decision(
        &self,
        ctx: &StepContext,
        d: &Dispute,
        cycle: i64,
    ) -> Result<(), StepError> {
        let Network::Simulator(sim) = &self.network else {
            return Ok(());
        };
        let Some(decision) = sim.decision() else {
            return Ok(());
        };
        let now = ctx.clock.now();
        // The newest valid secret: ids are time-ordered.
        let secret = record::secrets_valid(&self.store, &ctx.tenant, now)
            .await
            .retryable()?
            .iter()
            .rev()
            .find_map(|s| self.sealer.open_text(s.id, &s.sealed))
            .ok_or_else(|| {
                StepError::retryable(format!(
                    "tenant {} has no webhook secret this process can open",
                    ctx.tenant
                ))
            })?;
        let event = json!({
            "id": format!("evt_sim_{}_{cycle}", d.dispute_id),
            "type": "dispute.closed",
            "created": now.to_rfc3339(),
            "data": {"dispute": {
                "id": d.dispute_id, "charge": d.charge, "amount": d.amount,
                "currency": d.currency.to_ascii_lowercase(), "reason": d.reason,
                "status": decision.outcome, "evidence_due_by": d.evidence_due_by.to_rfc3339(),
                "merchant": {"email": d.merchant_email, "name": d.merchant_name},
            }},
        });
        let body = serde_json::to_vec(&event).expect("an event serialises");
        sim.send_decision(&ctx.tenant, &secret, now.timestamp(), &body)
            .await
    }

    pub(super) fn awaiting_evidence(cycle: i64, reminders: usize) -> DisputeState {
        DisputeState::AwaitingEvidence {
            cycle,
            reminders,
            deadline: None,
        }
    }
}
